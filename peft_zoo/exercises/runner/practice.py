"""The practice log view, ``peft-zoo status``: per challenge passed, attempts, hints used, time
spent, a "solved without hints" mark and a time estimate; and where a challenge's worked
interview answers live in the docs.

Colour follows the usual conventions: none when ``NO_COLOR`` is set (to anything non-empty,
see https://no-color.org) or when the output is not a terminal, so pipes and logs never
hold ANSI escape codes.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from typing import TextIO

from ..manifest import TRACK, Challenge
from ..readme import GUIDES
from .constants import DEFAULT_TIMEOUT
from .output import dot, emit, fancy, marks, progress_bar
from .paths import Paths
from .progress import Progress
from .status import Status, next_line, next_status, statuses

# Minutes a learner new to the idea typically needs, by difficulty (1 warm-up .. 3 hard).
ESTIMATE_MINUTES = {1: 10, 2: 20, 3: 35}
GUIDE_ANCHOR = "interview-questions"  # every guide's "## Interview questions" heading

_COLOURS = {"passed": "32", "failing": "31", "changed": "33", "missing": "2", "not_started": "2"}


def estimate_minutes(ch: Challenge) -> int:
    """The time estimate of ``ch`` in minutes, from its difficulty (see ``ESTIMATE_MINUTES``)."""
    return ESTIMATE_MINUTES.get(ch.difficulty, ESTIMATE_MINUTES[max(ESTIMATE_MINUTES)])


def guide_link(ch: Challenge) -> str:
    """``docs/<guide>.md#interview-questions``: the worked answers to ``ch``'s interview questions."""
    guide, _notebook = GUIDES[ch.number]
    return f"docs/{guide}#{GUIDE_ANCHOR}"


def use_colour(stream: TextIO | None = None) -> bool:
    """Whether to colour ``stream`` (default stdout): a terminal, and ``NO_COLOR`` unset or empty."""
    if os.environ.get("NO_COLOR"):
        return False
    stream = stream if stream is not None else sys.stdout
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except (OSError, ValueError):  # a closed or detached stream
        return False


def paint(text: str, state: str, enabled: bool) -> str:
    """``text`` in the colour of ``state`` when ``enabled``, else unchanged."""
    code = _COLOURS.get(state)
    return f"\033[{code}m{text}\033[0m" if enabled and code else text


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``2 h 05 min``, ``3 d 4 h``: a learner-readable length of time."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def time_spent(progress: Progress, stem: str, now: dt.datetime) -> str:
    """From the first attempt to the first pass, or ``since <start>`` while still in progress."""
    first, passed = progress.first_attempt(stem), progress.passed_at(stem)
    if first is None:
        return "-"
    if passed is not None:
        return duration((passed - first).total_seconds())
    return f"since {duration((now - first).total_seconds())}"


def status_row(progress: Progress, status: Status, now: dt.datetime, colour: bool) -> str:
    """One line of the ``peft-zoo status`` table (columns as in :func:`cmd_practice_status`)."""
    ch, stem = status.challenge, status.challenge.stem
    mark = marks()[status.state]
    hints = f"{progress.hint_level(stem)}/{len(ch.hints)}"
    at_pass = progress.hints_at_pass(stem)
    unaided = ("yes" if at_pass == 0 else "no") if status.passed and at_pass is not None else "-"
    stars = ("★" if fancy() else "*") * ch.difficulty
    state = paint(f"{mark} {status.detail:<13}", status.state, colour)
    return (
        f"{ch.number:2d}  {state} {progress.attempts(stem):>5}  {hints:>5}  "
        f"{time_spent(progress, stem, now):<14} {unaided:<8} {stars:<5} {estimate_minutes(ch):>3} min  "
        f"{ch.title}"
    )


def cmd_practice_status(
    paths: Paths, *, timeout: float = DEFAULT_TIMEOUT, progress: Progress | None = None
) -> int:
    """``peft-zoo status``: the practice log table (changed files are graded first)."""
    progress = progress if progress is not None else Progress(paths.state_file)
    all_statuses = statuses(paths, progress, timeout=timeout)
    now, colour = progress.now(), use_colour()
    done = sum(s.passed for s in all_statuses)
    emit(f"peft_zoo exercises {dot()} {TRACK}   ({paths.show(paths.practice)})")
    emit(progress_bar(done, len(all_statuses)))
    emit()
    emit(
        f" #  {'status':<15} {'tries':>5}  {'hints':>5}  {'time spent':<14} {'no hints':<8} {'level':<5} {'est.':>7}  title"
    )
    for status in all_statuses:
        emit(status_row(progress, status, now, colour))
    emit()
    left = sum(estimate_minutes(s.challenge) for s in all_statuses if s.available and not s.passed)
    scale = ", ".join(f"{'★' * d if fancy() else '*' * d} {m}" for d, m in ESTIMATE_MINUTES.items())
    emit(f"Estimated time for the rest: about {duration(left * 60)} ({scale} min each).")
    emit(next_line(paths, next_status(all_statuses), all_statuses))
    return 0
