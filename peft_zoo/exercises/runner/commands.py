"""The learner's commands, one function each: status, list, check, hint, solution, reset, build.

``watch`` lives in :mod:`.watch`; the argparse wiring in :mod:`.cli`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
from pathlib import Path

from ...core.io import atomic_write
from .. import builder
from ..interview.guides import GuideSyncError, guide_pages
from ..interview.questions import TOPIC_OF
from ..manifest import TRACK, Challenge
from ..readme import generated_pages
from .constants import DEFAULT_TIMEOUT, LEVELS, NOT_IMPLEMENTED, RunnerError
from .grade import grade_one
from .output import dot, emit, marks, progress_bar
from .paths import Paths, grader_fingerprint, pristine_stub, sha256_bytes, sha256_file
from .practice import guide_link
from .progress import Progress
from .status import next_line, next_status, statuses

# ----------------------------------------------------------------------------- status and list


def cmd_status(paths: Paths, *, timeout: float = DEFAULT_TIMEOUT) -> int:
    progress = Progress(paths.state_file)
    all_statuses = statuses(paths, progress, timeout=timeout)
    m = marks()
    done = sum(s.passed for s in all_statuses)
    emit(f"peft_zoo exercises {dot()} {TRACK}   ({paths.show(paths.practice)})")
    emit(progress_bar(done, len(all_statuses)))
    emit()
    for s in all_statuses:
        emit(f"  {m[s.state]} {s.challenge.number:2d}  {s.detail:<14} {s.challenge.title}")
    emit()
    emit(next_line(paths, next_status(all_statuses), all_statuses))
    emit(
        "Commands: peft-zoo status | check N | hint N | watch | solution N | reset N | list | build   "
        "(new here? peft-zoo tour)"
    )
    return 0


def cmd_list(paths: Paths, *, timeout: float = DEFAULT_TIMEOUT) -> int:
    progress = Progress(paths.state_file)
    all_statuses = statuses(paths, progress, timeout=timeout)
    m = marks()
    emit(f" #  {'level':<9} {'needs':<8} {'status':<15} title")
    for s in all_statuses:
        ch = s.challenge
        needs = ", ".join(str(n) for n in ch.prerequisites) or "-"
        level = f"{ch.difficulty} {LEVELS.get(ch.difficulty, '')}"
        emit(f"{ch.number:2d}  {level:<9} {needs:<8} {m[s.state]} {s.detail:<13} {ch.title}")
    return 0


# ----------------------------------------------------------------------------- check


def hint_reminder(progress: Progress, ch: Challenge) -> str:
    total = len(ch.hints)
    if not total:
        return "Re-read the docstring of the stub: it says what each attribute must be."
    level = progress.hint_level(ch.stem)
    if level >= total:
        return f"All {total} hints are out (`peft-zoo hint {ch.number} --all` shows them again)."
    return f"Stuck? `peft-zoo hint {ch.number}` reveals hint {level + 1}/{total}."


def cmd_check(paths: Paths, ch: Challenge, *, timeout: float = DEFAULT_TIMEOUT, full: bool = False) -> int:
    progress = Progress(paths.state_file)
    passed = bool(check(paths, progress, ch, timeout=timeout, full=full))
    if passed:
        after = statuses(paths, progress, grade=False)
        emit(next_line(paths, next_status(after), after))
    return 0 if passed else 1


def check(
    paths: Paths,
    progress: Progress,
    ch: Challenge,
    *,
    timeout: float,
    full: bool = False,
    watching: bool = False,
) -> bool | None:
    """Grade ``ch`` with streamed output, record it and say what to do next.

    Returns None when watching and the file changed while it was graded (grade it again).
    """
    exercise = paths.exercise(ch)
    if not paths.grader(ch).is_file():
        raise RunnerError(
            f"challenge {ch.number} has no grader here ({paths.show(paths.grader(ch))} missing)"
        )
    try:
        data = exercise.read_bytes()
    except OSError:
        emit(f"{paths.show(exercise)} is missing: run `peft-zoo reset {ch.number}` to restore the stub.")
        return False
    emit(f"Grading challenge {ch.number} {dot()} {ch.title}  ({paths.show(exercise)})")
    fingerprint = grader_fingerprint(paths, ch)
    messages: list[str] = []
    passed = grade_one(paths, ch, timeout=timeout, full=full, messages=messages)
    if passed is not None:
        progress.note_attempt(ch.stem, passed)  # an attempt, even if its result is not kept
    if sha256_file(exercise) != sha256_bytes(data):
        emit("(the file changed while it was being graded: this result is not recorded)")
        if passed is not None:
            progress.save()
        if watching:
            return None
    elif passed is not None:
        progress.record(ch.stem, passed, sha256_bytes(data), fingerprint)
        progress.save()
    emit()
    if passed:
        _report_pass(ch)
        return True
    _report_failure(paths, progress, ch, data, messages, full=full, watching=watching)
    return False


def _report_pass(ch: Challenge) -> None:
    emit(f"PASSED {marks()['passed']}  challenge {ch.number} {dot()} {ch.title}")
    if ch.interview:
        emit("Interview practice: can you now answer these out loud?")
        for question in ch.interview:
            emit(f"  - {question}")
    emit(f"Worked interview answers: {guide_link(ch)}")
    emit(f"Rehearse them against the clock: `peft-zoo interview --topic {TOPIC_OF[ch.number]}`")
    emit(f"Compare with the reference answer: `peft-zoo solution {ch.number}`")


def _report_failure(
    paths: Paths,
    progress: Progress,
    ch: Challenge,
    data: bytes,
    messages: list[str],
    *,
    full: bool,
    watching: bool,
) -> None:
    """What failed and what to do about it: start, finish, stop crashing, or read the failure."""
    exercise = paths.show(paths.exercise(ch))
    emit(f"FAILED {marks()['failing']}  challenge {ch.number} {dot()} {ch.title}")
    unfinished = bool(messages) and all(NOT_IMPLEMENTED in m for m in messages)
    if data == pristine_stub(ch):
        emit(f"You have not started yet: replace each TODO({ch.tag}) in {exercise}.")
    elif unfinished:
        emit(f"Part of it is not implemented yet: replace every TODO({ch.tag}) in {exercise}.")
    elif any("process died" in m for m in messages):
        emit("Your code ended the grading process (see above): remove the exit, abort or crash.")
    else:
        emit(
            "Read the failure above: 'drawn' is the input the grader picked, 'expected' and 'got' "
            "show the difference, 'likely' names the probable bug."
        )
        if not full:
            emit(
                f"(grading stopped at the first failing property; `peft-zoo check {ch.number} --full` runs them all)"
            )
    if not watching:
        emit(
            f"Fix {exercise} and run `peft-zoo check {ch.number}` again "
            "(or `peft-zoo watch` to re-grade on every save)."
        )
    emit(hint_reminder(progress, ch))


# ----------------------------------------------------------------------------- hint


def cmd_hint(paths: Paths, ch: Challenge, *, show_all: bool = False) -> int:
    progress = Progress(paths.state_file)
    total = len(ch.hints)
    emit(f"Challenge {ch.number} {dot()} {ch.title}")
    if not total:
        emit("This challenge has no hints: the stub's docstrings and the grader's messages are your guide.")
        return 0
    before = progress.hint_level(ch.stem)
    level = total if show_all else min(before + 1, total)
    for i, text in enumerate(ch.hints[:level], start=1):
        emit(f"  hint {i}/{total}: {text}")
    if level != before:
        progress.set_hint_level(ch.stem, level)
        progress.save()
    if level < total:
        emit(f"Run `peft-zoo hint {ch.number}` again for hint {level + 1}/{total}.")
    else:
        if not show_all and before >= total:
            emit("(that was already every hint)")
        emit(
            f"That is every hint. Once `peft-zoo check {ch.number}` passes, `peft-zoo solution {ch.number}` "
            "shows the reference answer."
        )
    return 0


# ----------------------------------------------------------------------------- solution


def verified_pass(paths: Paths, progress: Progress, ch: Challenge, *, timeout: float) -> bool:
    """Whether the learner's current file passes: from the state file, re-graded if it changed."""
    try:
        data = paths.exercise(ch).read_bytes()
    except OSError:
        return False
    if data == pristine_stub(ch) or not paths.grader(ch).is_file():
        return False
    sha, fingerprint = sha256_bytes(data), grader_fingerprint(paths, ch)
    recorded = progress.result(ch.stem, sha, fingerprint)
    if recorded is not None:
        return recorded
    emit(f"Your {ch.stem}.py changed since it was last graded; grading it first...")
    passed = grade_one(paths, ch, timeout=timeout, stream=False)
    if passed is not None:
        progress.note_attempt(ch.stem, passed)
        if sha256_file(paths.exercise(ch)) == sha:
            progress.record(ch.stem, passed, sha, fingerprint)
        progress.save()
    return bool(passed)


def cmd_solution(
    paths: Paths, ch: Challenge, *, force: bool = False, timeout: float = DEFAULT_TIMEOUT
) -> int:
    progress = Progress(paths.state_file)
    source = paths.solution(ch)
    if source.is_file():
        text = source.read_text(encoding="utf-8")
    elif pristine_stub(ch) is not None:
        text = builder.answer_text(ch)
    else:
        raise RunnerError(
            f"no reference answer for challenge {ch.number} here ({paths.show(source)} missing)"
        )
    if not force and not verified_pass(paths, progress, ch, timeout=timeout):
        emit(f"The solution to challenge {ch.number} {dot()} {ch.title} is locked until your code passes.")
        emit(
            f"Run `peft-zoo check {ch.number}` (stuck? `peft-zoo hint {ch.number}`), or "
            f"`peft-zoo solution {ch.number} --force` to see it anyway."
        )
        return 1
    emit(f"# ----- {paths.show(source)} (reference answer to challenge {ch.number}) -----")
    emit(text.rstrip("\n"))
    emit(f"# ----- compare: diff {paths.show(paths.exercise(ch))} {paths.show(source)}")
    return 0


# ----------------------------------------------------------------------------- reset


def backup_file(paths: Paths, ch: Challenge, data: bytes, now: dt.datetime | None = None) -> Path:
    """Save ``data`` as ``.backups/<stem>.<YYYYmmdd-HHMMSS>.py`` (with a counter if taken),
    read it back, and return its path. Never overwrites an existing backup.

    Raises :class:`RunnerError` (nothing written) when the backup folder cannot be made."""
    folder = paths.backups
    if folder.exists() and not folder.is_dir():
        raise RunnerError(
            f"{paths.show(folder)} is a file, not a folder, so your work cannot be backed up there: "
            "rename or move it, then run the reset again (nothing was changed)"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunnerError(
            f"cannot create the backup folder {paths.show(folder)} ({err.strerror or err}); nothing was changed"
        ) from None
    stamp = (now or dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    for counter in range(10_000):
        suffix = "" if counter == 0 else f"-{counter}"
        target = paths.backups / f"{ch.stem}.{stamp}{suffix}.py"
        try:
            with open(target, "xb") as handle:  # x: fails if the name is taken
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except FileExistsError:
            continue
        except OSError as err:
            with contextlib.suppress(OSError):
                target.unlink()  # a partial copy must not pass for a backup
            raise RunnerError(
                f"cannot write the backup {paths.show(target)} ({err.strerror or err}); your file was left as it is"
            ) from None
        if target.read_bytes() != data:
            raise RunnerError(
                f"the backup {target} does not read back identical; your file was left as it is"
            )
        return target
    raise RunnerError(f"too many backups named {ch.stem}.{stamp}*.py in {paths.backups}")


def cmd_reset(paths: Paths, ch: Challenge) -> int:
    stub = pristine_stub(ch)
    if stub is None:
        raise RunnerError(f"this installation has no source for challenge {ch.number}, so no stub to restore")
    exercise = paths.exercise(ch)
    try:
        current: bytes | None = exercise.read_bytes()
    except FileNotFoundError:
        current = None
    if current == stub:
        emit(f"{paths.show(exercise)} is already the untouched stub: nothing to reset, nothing written.")
        return 0
    if current is not None:
        backup = backup_file(paths, ch, current)
        emit(f"Backed up your file to {paths.show(backup)}")
    atomic_write(exercise, stub)
    progress = Progress(paths.state_file)
    progress.clear_result(ch.stem)
    progress.save()
    emit(f"Restored the stub of challenge {ch.number} {dot()} {ch.title} at {paths.show(exercise)}")
    return 0


# ----------------------------------------------------------------------------- build


def cmd_build(root: Path, *, check_only: bool = False) -> int:
    paths = Paths(root)
    pages = {root / rel: text for rel, text in generated_pages().items()}
    try:
        pages.update(guide_pages(root))
        if check_only:
            drifted = builder.check(root)
            for path, text in pages.items():
                if not path.is_file() or path.read_text(encoding="utf-8") != text:
                    drifted.append(path)
            for path in drifted:
                emit(f"drifted: {paths.show(path)}")
            if drifted:
                emit(
                    f"{len(drifted)} generated file(s) differ from what `peft-zoo build` writes: edit "
                    f"peft_zoo/exercises/source/{TRACK}/ (or the manifest), then run `peft-zoo build`."
                )
                return 1
            emit("All generated files are up to date.")
            return 0
        written = builder.build(root)
        for path, text in pages.items():
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, text.encode("utf-8"))
                written.append(path)
    except (builder.BuildError, GuideSyncError) as err:
        emit(f"build failed: {err}", stream=sys.stderr)
        return 1
    for path in written:
        emit(f"wrote {paths.show(path)}")
    emit(
        f"{len(written)} file(s) written; existing practice files are never overwritten (use `peft-zoo reset N`)."
    )
    return 0
