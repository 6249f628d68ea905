"""``peft-zoo interview`` and ``peft-zoo review``: argparse wiring and the two commands.

Exit codes: 0 finished (or nothing to review), 2 bad arguments or a session problem,
3 interrupted with the answers so far saved.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..interview import session as sessions
from ..interview.console import Console
from ..interview.questions import TOPICS
from ..interview.review import review_state
from .constants import RunnerError
from .paths import Paths, find_root

EPILOG = (
    "exit codes: 0 finished, 2 bad arguments or session file, 3 interrupted (answers saved; --resume goes on)"
)


def minutes_arg(value: str) -> float:
    try:
        minutes = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--minutes takes a number of minutes, got {value!r}") from None
    if not 3 <= minutes <= 240:
        raise argparse.ArgumentTypeError(f"--minutes must be between 3 and 240, got {value}")
    return minutes


def seed_arg(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"--seed takes a non-negative whole number, got {value!r}")
    return int(value)


def now_arg(value: str) -> dt.datetime:
    try:
        stamp = dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--now takes an ISO date or time, got {value!r}") from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.timezone.utc)


def add_interview_arguments(
    sub: Any, common: argparse.ArgumentParser, timed: argparse.ArgumentParser
) -> None:
    """Register ``interview`` and ``review`` on the runner's subparsers (``timed``: --timeout)."""
    answers = argparse.ArgumentParser(add_help=False)
    answers.add_argument(
        "--answers", metavar="FILE", help="read answers from FILE, one per line ('-': stdin)"
    )
    p = sub.add_parser(
        "interview", parents=[common, timed, answers], epilog=EPILOG, help="a timed mock interview"
    )
    p.add_argument("--minutes", type=minutes_arg, default=45.0, help="length of the interview (default 45)")
    p.add_argument("--topic", choices=[*TOPICS, "all"], default="all", help="what to ask about (default all)")
    p.add_argument("--seed", type=seed_arg, help="repeat an interview exactly (printed at the start)")
    p.add_argument("--no-coding", action="store_true", help="leave out the timed coding question")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="go on with the interrupted interview")
    group.add_argument("--discard", action="store_true", help="forget the interrupted interview first")
    p.set_defaults(func=run_interview)
    p = sub.add_parser(
        "review", parents=[common, timed, answers], epilog=EPILOG, help="re-ask the questions you missed"
    )
    p.add_argument("--now", type=now_arg, help=argparse.SUPPRESS)  # tests: pretend it is this time
    p.set_defaults(func=run_review)


def _console(args: argparse.Namespace) -> Console:
    if args.answers is None:
        return Console()
    if args.answers == "-":
        return Console(iter(sys.stdin.readline, ""))
    try:
        lines: Iterator[str] = iter(Path(args.answers).read_text(encoding="utf-8").splitlines())
    except (OSError, UnicodeDecodeError) as err:
        raise RunnerError(f"--answers {args.answers}: cannot read it ({err})") from None
    return Console(lines)


def _load_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunnerError(f"{path.name} cannot be read ({err}); start again with --discard") from None
    keys = {"seed", "topic", "minutes", "plan", "results", "started", "coding_started"}
    if not isinstance(state, dict) or not keys <= set(state) or not isinstance(state["plan"], list):
        raise RunnerError(f"{path.name} is not an interview session; start again with --discard")
    return state


def run_interview(args: argparse.Namespace) -> int:
    paths, timeout = Paths(find_root(args.root)), args.timeout
    path = paths.practice / sessions.SESSION_NAME
    console = _console(args)
    if args.discard:
        path.unlink(missing_ok=True)
    if args.resume:
        if not path.exists():
            raise RunnerError("no interrupted interview to resume; start one with `peft-zoo interview`")
        state = _load_state(path)
        console.say(
            f"Resuming the interview of seed {state['seed']} at question {len(state['results']) + 1}."
        )
    else:
        if path.exists():
            raise RunnerError(
                "an interrupted interview is saved: go on with --resume, or drop it with --discard"
            )
        seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
        plan = sessions.build_plan(seed, args.topic, args.minutes, not args.no_coding)
        if not plan:
            raise RunnerError(
                f"{args.minutes:g} minutes hold no question on {args.topic}; give more --minutes"
            )
        state = sessions.new_state(seed, args.topic, args.minutes, plan, sessions.CLOCK())
        counts = {t: sum(i["type"] == t for i in plan) for t in ("concept", "numeric", "coding")}
        console.say(
            f"Mock interview, seed {seed} (repeat it with --seed {seed}), topic {args.topic}, "
            f"{args.minutes:g} min: {counts['concept']} concept, {counts['numeric']} numeric, "
            f"{counts['coding']} coding question(s)."
        )
    return sessions.Session(paths, console, state, clock=sessions.CLOCK, timeout=timeout).run()


def run_review(args: argparse.Namespace) -> int:
    paths, timeout = Paths(find_root(args.root)), args.timeout
    now = args.now or sessions.CLOCK()
    state, line = review_state(paths.practice, now)
    console = _console(args)
    console.say(line)
    if state is None:
        return 0
    session = sessions.Session(paths, console, state, clock=lambda: now, timeout=timeout, kind="review")
    return session.run()
