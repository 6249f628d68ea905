"""The runner's part of the ``peft-zoo`` parser: ``--root``, the subcommands and their handlers.

Each subcommand names its handler with ``set_defaults(func=...)``; :func:`run` calls it (no
subcommand is the status screen).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..manifest import BY_NUMBER, CHALLENGES, TRACK, Challenge
from .commands import cmd_build, cmd_check, cmd_hint, cmd_list, cmd_reset, cmd_solution, cmd_status
from .constants import DEFAULT_TIMEOUT, ROOT_ENV, RunnerError
from .interview_cmd import add_interview_arguments
from .output import emit
from .paths import Paths, find_root
from .practice import cmd_practice_status
from .watch import cmd_watch

COMMANDS = ("status", "list", "check", "hint", "watch", "solution", "reset", "build", "interview", "review")


def challenge_arg(value: str) -> Challenge:
    """argparse type: ``1``, ``01``, ``ex01`` or ``lora_linear``; a clear error otherwise."""
    text = value.strip().lower()
    for ch in CHALLENGES:
        if text in (ch.name, ch.stem):
            return ch
    digits = text[2:] if text.startswith("ex") else text
    if digits.isdigit() and int(digits) in BY_NUMBER:
        return BY_NUMBER[int(digits)]
    numbers = ", ".join(str(ch.number) for ch in CHALLENGES)
    raise argparse.ArgumentTypeError(
        f"no challenge {value!r}; valid numbers: {numbers} (see `peft-zoo list`)"
    )


def positive(value: str) -> float:
    """argparse type: a number > 0."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if number <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return number


# ----------------------------------------------------------------------------- handlers


def _paths(args: argparse.Namespace) -> Paths:
    return Paths(find_root(args.root))


def _timeout(args: argparse.Namespace) -> float:
    return getattr(args, "timeout", DEFAULT_TIMEOUT)  # a bare `peft-zoo` has no --timeout


def run_status(args: argparse.Namespace) -> int:
    return cmd_status(_paths(args), timeout=_timeout(args))


def run_practice_status(args: argparse.Namespace) -> int:
    return cmd_practice_status(_paths(args), timeout=_timeout(args))


def run_list(args: argparse.Namespace) -> int:
    return cmd_list(_paths(args), timeout=_timeout(args))


def run_check(args: argparse.Namespace) -> int:
    return cmd_check(_paths(args), args.n, timeout=_timeout(args), full=args.full)


def run_hint(args: argparse.Namespace) -> int:
    return cmd_hint(_paths(args), args.n, show_all=args.all)


def run_watch(args: argparse.Namespace) -> int:
    return cmd_watch(_paths(args), interval=args.interval, max_rounds=args.max_rounds, timeout=_timeout(args))


def run_solution(args: argparse.Namespace) -> int:
    return cmd_solution(_paths(args), args.n, force=args.force, timeout=_timeout(args))


def run_reset(args: argparse.Namespace) -> int:
    return cmd_reset(_paths(args), args.n)


def run_build(args: argparse.Namespace) -> int:
    return cmd_build(find_root(args.root, require_practice=False), check_only=args.check)


# ----------------------------------------------------------------------------- wiring


def add_arguments(parser: argparse.ArgumentParser, sub: Any) -> None:
    """Add ``--root`` and the exercise subcommands to the ``peft-zoo`` parser."""
    root_help = f"project root holding practice/{TRACK} (default: ${ROOT_ENV}, else found from the cwd)"
    parser.add_argument("--root", metavar="DIR", default=None, help=root_help)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", metavar="DIR", default=argparse.SUPPRESS, help=root_help)
    timed = argparse.ArgumentParser(add_help=False)
    timed.add_argument(
        "--timeout",
        type=positive,
        default=DEFAULT_TIMEOUT,
        help=f"seconds per grading run (default {DEFAULT_TIMEOUT:g})",
    )

    def challenge(p: argparse.ArgumentParser) -> None:
        p.add_argument("n", metavar="N", type=challenge_arg, help="challenge number (see `peft-zoo list`)")

    p = sub.add_parser(
        "status",
        parents=[common, timed],
        help="your practice log: per challenge passed, tries, hints, time spent, estimate",
        description=(
            "The practice log, one row per challenge: status, grading runs (tries), hints revealed, "
            "time from the first try to the first pass (or how long it is in progress), 'no hints' "
            "when it passed before any hint was revealed, difficulty and a time estimate "
            "(★ 10, ★★ 20, ★★★ 35 min). A bare `peft-zoo` shows the short dashboard. Colour only on "
            "a terminal and never when NO_COLOR is set."
        ),
    )
    p.set_defaults(func=run_practice_status)
    p = sub.add_parser(
        "list", parents=[common, timed], help="challenges with difficulty, prerequisites, status"
    )
    p.set_defaults(func=run_list)
    p = sub.add_parser("check", parents=[common, timed], help="grade challenge N now and say what next")
    challenge(p)
    p.add_argument(
        "--full", action="store_true", help="run every property (do not stop at the first failure)"
    )
    p.set_defaults(func=run_check)
    p = sub.add_parser("hint", parents=[common], help="reveal the next hint for challenge N")
    challenge(p)
    p.add_argument("--all", action="store_true", help="show every hint")
    p.set_defaults(func=run_hint)
    p = sub.add_parser("watch", parents=[common, timed], help="re-grade the current challenge on every save")
    p.add_argument("--interval", type=positive, default=1.0, help="seconds between polls (default 1.0)")
    p.add_argument("--max-rounds", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=run_watch)
    p = sub.add_parser("solution", parents=[common, timed], help="show the reference answer once N passes")
    challenge(p)
    p.add_argument("--force", action="store_true", help="show it even if N has not passed")
    p.set_defaults(func=run_solution)
    p = sub.add_parser("reset", parents=[common], help="back up your file for N, then restore the stub")
    challenge(p)
    p.set_defaults(func=run_reset)
    p = sub.add_parser("build", parents=[common], help="write the generated stubs, answers and README")
    p.add_argument("--check", action="store_true", help="only list drifted files; exit 1 if any")
    p.set_defaults(func=run_build)
    add_interview_arguments(sub, common, timed)


def run(args: argparse.Namespace, *, no_root: Callable[[], int] | None = None) -> int:
    """Run the exercise command in ``args``; no command is the status screen, or ``no_root()``
    when no exercises can be found and none were asked for explicitly."""
    handler: Callable[[argparse.Namespace], int] | None = (
        run_status if args.command is None else getattr(args, "func", None)
    )
    if handler is None:
        raise ValueError(f"unknown command {args.command!r}")
    try:
        if args.command is None and no_root is not None and _root_or_none(args.root) is None:
            return no_root()
        return handler(args)
    except RunnerError as err:
        emit(f"peft-zoo: error: {err}", stream=sys.stderr)
        return 2
    except BrokenPipeError:  # `peft-zoo | head`: the reader left; stop quietly
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _root_or_none(explicit: str | None) -> Path | None:
    """The root if one can be found (for the bare ``peft-zoo`` command), else None."""
    try:
        return find_root(explicit)
    except RunnerError:
        if explicit is not None or os.environ.get(ROOT_ENV):
            raise
        return None
