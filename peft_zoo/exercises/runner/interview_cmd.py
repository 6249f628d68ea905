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
from typing import TYPE_CHECKING, Any

from ..interview.questions import TOPICS
from .constants import RunnerError
from .paths import Paths, find_root

if TYPE_CHECKING:
    from ..interview.console import Console

# The interview engine is imported inside the run functions: the runner package's __init__
# imports this module (through cli.py), and the engine imports runner modules, so a
# top-level import here would make the import order matter.

INTERVIEW_HELP = (
    "A mock interview: concept questions (answer, then tick the key points you covered), numeric "
    "questions graded exactly, and one timed coding question, sized to --minutes. With --answers "
    "each answer is one line of FILE. Interrupted (Ctrl-C, or the answers file ends) it is saved in "
    "practice/<track>/.interview-session.json; the summary goes to .interview-history.jsonl."
)
INTERVIEW_EPILOG = (
    "exit codes: 0 finished (or its time is up), 2 bad arguments or an unusable session file, "
    "3 interrupted, answers so far saved (go on with --resume)"
)
DEFAULT_MINUTES = 45.0
REVIEW_HELP = (
    "Asks again the questions your interviews missed, when they are due: a day after a miss, then "
    "3, 7 and 16 days after each right answer (a miss starts over). A numeric question comes back "
    "with new numbers of the same kind."
)
REVIEW_EPILOG = (
    "exit codes: 0 finished or nothing due (it says when the next one is), 2 bad arguments, "
    "3 interrupted (the answers given are recorded; the rest stay due)"
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
        "interview",
        parents=[common, timed, answers],
        help="a timed mock interview",
        description=INTERVIEW_HELP,
        epilog=INTERVIEW_EPILOG,
    )
    p.add_argument(
        "--minutes",
        type=minutes_arg,
        default=DEFAULT_MINUTES,
        help="length of the interview, 3 to 240 (default 45)",
    )
    p.add_argument("--topic", choices=[*TOPICS, "all"], default="all", help="what to ask about (default all)")
    p.add_argument("--seed", type=seed_arg, help="repeat an interview exactly (printed at the start)")
    p.add_argument("--no-coding", action="store_true", help="leave out the timed coding question")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="go on with the interrupted interview")
    group.add_argument("--discard", action="store_true", help="forget the interrupted interview first")
    p.set_defaults(func=run_interview)
    p = sub.add_parser(
        "review",
        parents=[common, timed, answers],
        help="re-ask the questions you missed",
        description=REVIEW_HELP,
        epilog=REVIEW_EPILOG,
    )
    p.add_argument(
        "--now",
        type=now_arg,
        metavar="ISO-DATE",
        help="pretend it is this date or time (for scripts and tests)",
    )
    p.set_defaults(func=run_review)


def _console(args: argparse.Namespace) -> Console:
    from ..interview.console import Console

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
    """The saved session, checked; a clear error (naming --discard) when it cannot be resumed."""
    from ..interview import session as sessions

    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunnerError(f"{path.name} cannot be read ({err}); start again with --discard") from None
    problems = sessions.state_problems(state)
    if problems:
        raise RunnerError(f"{path.name} cannot be resumed ({problems[0]}); start again with --discard")
    return dict(state)


def _new_state(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """A fresh session from the arguments; its plan announced (seed, counts, minutes)."""
    from ..interview import session as sessions

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    plan = sessions.build_plan(seed, args.topic, args.minutes, not args.no_coding)
    if not plan:
        raise RunnerError(f"{args.minutes:g} minutes hold no question on {args.topic}; give more --minutes")
    counts = {t: sum(i["type"] == t for i in plan) for t in sessions.ITEM_TYPES}
    console.say(
        f"Mock interview, seed {seed} (repeat it with --seed {seed}), topic {args.topic}, "
        f"{args.minutes:g} min: {len(plan)} questions ({counts['concept']} concept, "
        f"{counts['numeric']} numeric, {counts['coding']} coding)."
    )
    return sessions.new_state(seed, args.topic, args.minutes, plan, sessions.CLOCK())


def run_interview(args: argparse.Namespace) -> int:
    """``peft-zoo interview``: a new interview, or the saved one with ``--resume``."""
    from ..interview import session as sessions

    paths, timeout = Paths(find_root(args.root)), args.timeout
    path = paths.practice / sessions.SESSION_NAME
    console = _console(args)
    if args.resume:
        if not path.exists():
            raise RunnerError("no interrupted interview to resume; start one with `peft-zoo interview`")
        state = _load_state(path)
        if args.seed is not None or args.topic != "all" or args.minutes != DEFAULT_MINUTES or args.no_coding:
            console.say("(--seed, --topic, --minutes and --no-coding are those of the saved interview)")
    else:
        if path.exists() and not args.discard:
            raise RunnerError(
                "an interrupted interview is saved: go on with --resume, or drop it with --discard"
            )
        state = _new_state(args, console)
        path.unlink(missing_ok=True)
    session = sessions.Session(paths, console, state, clock=sessions.CLOCK, timeout=timeout)
    if args.resume:
        console.say(
            f"Resuming the interview of seed {state['seed']} at question {len(state['results']) + 1} "
            f"of {len(state['plan'])}; {session.minutes_left():.1f} of {state['minutes']:g} min left."
        )
    return session.run()


def run_review(args: argparse.Namespace) -> int:
    """``peft-zoo review``: the missed questions that are due now, or when the next one is."""
    from ..interview import session as sessions
    from ..interview.review import review_state

    paths, timeout = Paths(find_root(args.root)), args.timeout
    now = args.now or sessions.CLOCK()
    state, line = review_state(paths.practice, now)
    console = _console(args)
    console.say(line)
    if state is None:
        return 0
    session = sessions.Session(paths, console, state, clock=lambda: now, timeout=timeout, kind="review")
    return session.run()
