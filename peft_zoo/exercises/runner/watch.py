"""``peft-zoo watch``: re-grade the current challenge on every save, move on when it passes."""

from __future__ import annotations

import time
from pathlib import Path

from ..manifest import Challenge
from .commands import check
from .constants import DEFAULT_TIMEOUT
from .output import emit
from .paths import Paths, sha256_bytes
from .progress import Progress
from .status import next_line, next_status, statuses


def signature(path: Path) -> tuple[int, int, str] | None:
    """What tells one save of ``path`` from another: mtime, size and content hash."""
    try:
        stat = path.stat()
        return (stat.st_mtime_ns, stat.st_size, sha256_bytes(path.read_bytes()))
    except OSError:
        return None


def sleep(seconds: float) -> None:
    """``time.sleep``; the tests replace it to play the learner saving a file."""
    time.sleep(seconds)


def wait_until_stable(path: Path, interval: float, tries: int = 10) -> None:
    """Editors often save in steps (truncate, then write): wait until the file stops changing."""
    last = signature(path)
    for _ in range(tries):
        sleep(min(interval, 0.2))
        again = signature(path)
        if again == last:
            return
        last = again


def cmd_watch(
    paths: Paths, *, interval: float = 1.0, max_rounds: int | None = None, timeout: float = DEFAULT_TIMEOUT
) -> int:
    """Re-grade the current challenge whenever its file changes; move on when it passes."""
    progress = Progress(paths.state_file)
    emit(f"Watching {paths.show(paths.practice)} (every {interval:g} s). Press Ctrl-C to stop.")
    current: Challenge | None = None
    seen: tuple[int, int, str] | None = None
    rounds = 0
    try:
        while max_rounds is None or rounds < max_rounds:
            if current is not None and seen is not None and signature(paths.exercise(current)) != seen:
                wait_until_stable(paths.exercise(current), interval)  # let the save finish
            progress.refresh()  # `peft-zoo check` in another terminal may have written it
            all_statuses = statuses(paths, progress, grade=False)
            status = next_status(all_statuses)
            if status is None:
                emit(next_line(paths, None, all_statuses))
                return 0
            ch = status.challenge
            now = signature(paths.exercise(ch))
            if ch != current:
                current, seen = ch, None
                emit()
                emit(next_line(paths, status, all_statuses, watching=True))
            if now != seen:
                first_look = seen is None
                seen = now
                if status.state == "not_started":
                    emit(f"  (not started: waiting for you to save {ch.stem}.py)")
                elif status.state == "missing":
                    pass  # next_line already said how to restore it
                elif status.state == "failing" and first_look:
                    emit("  (last check failed: save the file to grade it again)")
                else:
                    emit()
                    result = check(paths, progress, ch, timeout=timeout, watching=True)
                    if result is None:
                        continue  # saved again meanwhile: grade the new version
                    if result:
                        continue  # straight on to the next challenge
                    emit(f"Waiting for the next save of {ch.stem}.py...")
            rounds += 1
            if max_rounds is None or rounds < max_rounds:
                sleep(interval)
    except KeyboardInterrupt:
        emit()
        emit("Stopped watching. Run `peft-zoo` to see your progress.")
    return 0
