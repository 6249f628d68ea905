"""The exercise runner behind ``peft-zoo``: progress, check, hint, watch, solution, reset, build, list.

The learner always knows what to do next (rustlings style):

- ``peft-zoo`` shows a progress bar, every challenge's status and the next step. It is fast:
  an untouched stub is "not started" without grading, a file whose hash was graded before
  reuses that result, and only the changed files are graded, all in one pytest run.
- ``peft-zoo check N`` grades one challenge and prints the grader's teaching output.
- ``peft-zoo hint N`` reveals one more hint per call; ``peft-zoo solution N`` unlocks after a pass.
- ``peft-zoo reset N`` restores the stub after backing the learner's file up (never loses work).

Progress lives in ``practice/<track>/.progress.json``; deleting it is always safe.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import functools
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..core.io import atomic_write
from . import builder
from .manifest import BY_NUMBER, CHALLENGES, TRACK, Challenge

STATE_NAME = ".progress.json"
BACKUP_DIR = ".backups"
DEFAULT_TIMEOUT = 900.0  # seconds for one pytest run; the graders bound each test themselves
ROOT_ENV = "PEFT_ZOO_ROOT"
LEVELS = {1: "warm-up", 2: "core", 3: "hard"}
RUNNER_ENV = "PEFT_ZOO_RUNNER"  # tells the graders' summary that this runner prints the next step
NOT_IMPLEMENTED = "not implemented yet"  # what a grader says about an unfinished stub


class RunnerError(Exception):
    """A problem the learner can fix (bad root, missing file): printed as one line, exit 2."""


# ----------------------------------------------------------------------------- output


def emit(text: str = "", *, stream: TextIO | None = None) -> None:
    """Print one line; characters the terminal cannot encode are replaced, never a crash."""
    stream = stream if stream is not None else sys.stdout
    try:
        stream.write(text + "\n")
    except UnicodeEncodeError:
        encoding = getattr(stream, "encoding", None) or "ascii"
        stream.write(text.encode(encoding, "replace").decode(encoding, "replace") + "\n")
    stream.flush()


def warn(text: str) -> None:
    emit(f"peft-zoo: warning: {text}", stream=sys.stderr)


def _fancy(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` can show the status marks (a plain ASCII terminal cannot)."""
    encoding = getattr(stream if stream is not None else sys.stdout, "encoding", None) or "ascii"
    try:
        "✓✗·—".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def marks() -> dict[str, str]:
    if _fancy():
        return {"passed": "✓", "failing": "✗", "not_started": "·", "missing": "!", "changed": "~"}
    return {"passed": "+", "failing": "x", "not_started": ".", "missing": "!", "changed": "~"}


def _dash() -> str:
    return "—" if _fancy() else "-"


def _dot() -> str:
    return "·" if _fancy() else "-"


def progress_bar(done: int, total: int, width: int = 30) -> str:
    """``[#########.....................] 3/10 passed``."""
    filled = round(width * done / total) if total else 0
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} passed"


# ----------------------------------------------------------------------------- root and paths


def _has_track(path: Path) -> bool:
    return (path / "practice" / TRACK).is_dir()


def find_root(
    explicit: str | os.PathLike[str] | None = None,
    *,
    cwd: Path | None = None,
    require_practice: bool = True,
) -> Path:
    """The project root holding ``practice/<track>``.

    Looked up in order: ``explicit`` (``--root``), ``$PEFT_ZOO_ROOT``, the nearest of the
    working directory and its parents, the directory above the installed package.
    """
    for value, source in ((explicit, "--root"), (os.environ.get(ROOT_ENV) or None, ROOT_ENV)):
        if value is None:
            continue
        path = Path(value).expanduser().resolve()
        if not path.is_dir():
            raise RunnerError(f"{source}={value}: no such directory")
        if require_practice and not _has_track(path):
            raise RunnerError(f"{source}={value}: no practice/{TRACK} folder there")
        return path
    here = (cwd or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if _has_track(candidate):
            return candidate
    installed = Path(__file__).resolve().parents[2]
    if _has_track(installed):
        return installed
    raise RunnerError(
        f"cannot find the exercises: no practice/{TRACK} in {here} or its parents. Run from the "
        f"repository root, pass --root DIR, or set {ROOT_ENV}."
    )


@dataclass(frozen=True)
class Paths:
    root: Path

    @property
    def practice(self) -> Path:
        return self.root / "practice" / TRACK

    @property
    def solutions(self) -> Path:
        return self.root / "solutions" / TRACK

    @property
    def state_file(self) -> Path:
        return self.practice / STATE_NAME

    @property
    def backups(self) -> Path:
        return self.practice / BACKUP_DIR

    def exercise(self, ch: Challenge) -> Path:
        return self.practice / f"{ch.stem}.py"

    def grader(self, ch: Challenge) -> Path:
        return self.practice / f"test_{ch.stem}.py"

    def solution(self, ch: Challenge) -> Path:
        return self.solutions / f"{ch.stem}.py"

    def show(self, path: Path) -> str:
        """``path`` relative to the working directory when it lies below it, else absolute."""
        try:
            return str(path.relative_to(Path.cwd().resolve()))
        except ValueError:
            return str(path)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha_file(path: Path) -> str | None:
    try:
        return sha256_bytes(path.read_bytes())
    except OSError:
        return None


def grader_fingerprint(paths: Paths, ch: Challenge) -> str:
    """What a grading result depends on besides the learner's file: grader and reference."""
    parts = [_sha_file(paths.grader(ch)) or "-", _sha_file(paths.solution(ch)) or "-"]
    return sha256_bytes("\n".join(parts).encode())


def pristine_stub(ch: Challenge) -> bytes | None:
    """The untouched stub's bytes, or None when this installation has no source for ``ch``."""
    try:
        stamp = (builder.SOURCE_DIR / f"{ch.stem}.py").stat().st_mtime_ns
    except OSError:
        return None
    return _render_stub(ch, stamp)


@functools.lru_cache(maxsize=64)
def _render_stub(ch: Challenge, source_mtime_ns: int) -> bytes | None:
    try:
        return builder.stub_text(ch).encode("utf-8")
    except (OSError, SyntaxError, builder.BuildError):
        return None


# ----------------------------------------------------------------------------- state


_UNSET = object()


class Progress:
    """``{stem: {"passed": bool, "sha256": str, "hint_level": int}}`` in ``.progress.json``.

    Deleting the file is safe (results are recomputed); a corrupt file is ignored with a
    one-line warning; writes are atomic (temp file + ``os.replace``) and merge this
    command's changes into what is on disk then, so a concurrent ``watch`` and ``hint``
    do not undo each other.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = self._read(quiet=False)
        self._changes: dict[str, dict[str, Any]] = {}

    def _read(self, *, quiet: bool) -> dict[str, dict[str, Any]]:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as err:
            if not quiet:
                warn(f"ignoring {self.path.name}: {err}")
            return {}
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            if not quiet:
                warn(f"ignoring unreadable {self.path.name} ({err}); progress will be recomputed")
            return {}
        return {stem: entry for stem, entry in data.items() if isinstance(entry, dict)}

    def refresh(self) -> None:
        """Re-read the file (another command may have written it), keeping unsaved changes."""
        self.data = self._merged(self._read(quiet=True))

    def _merged(self, base: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for stem, changes in self._changes.items():
            entry = base.setdefault(stem, {})
            for key, value in changes.items():
                if value is _UNSET:
                    entry.pop(key, None)
                else:
                    entry[key] = value
        return base

    def _set(self, stem: str, **values: Any) -> None:
        entry = self.data.setdefault(stem, {})
        for key, value in values.items():
            if value is _UNSET:
                entry.pop(key, None)
            else:
                entry[key] = value
        self._changes.setdefault(stem, {}).update(values)

    def result(self, stem: str, sha: str, fingerprint: str) -> bool | None:
        """The recorded pass/fail of this exact file content, or None if it was not graded."""
        entry = self.data.get(stem, {})
        if entry.get("sha256") != sha or entry.get("grader_sha256", fingerprint) != fingerprint:
            return None
        passed = entry.get("passed")
        return passed if isinstance(passed, bool) else None

    def record(self, stem: str, passed: bool, sha: str, fingerprint: str) -> None:
        self._set(stem, passed=bool(passed), sha256=sha, grader_sha256=fingerprint)

    def clear_result(self, stem: str) -> None:
        self._set(stem, passed=False, sha256=_UNSET, grader_sha256=_UNSET)

    def hint_level(self, stem: str) -> int:
        level = self.data.get(stem, {}).get("hint_level", 0)
        return level if isinstance(level, int) and level >= 0 else 0

    def set_hint_level(self, stem: str, level: int) -> None:
        self._set(stem, hint_level=int(level))

    def save(self) -> None:
        data = self._merged(self._read(quiet=True))
        for entry in data.values():
            entry.setdefault("passed", False)
            entry.setdefault("hint_level", 0)
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        try:
            atomic_write(self.path, text.encode("utf-8"))
        except OSError as err:  # progress is a convenience: never fail a command over it
            warn(f"could not save {self.path}: {err}")
            return
        self.data, self._changes = data, {}


# ----------------------------------------------------------------------------- grading


@dataclass
class PytestRun:
    returncode: int | None  # None: killed after the timeout
    output: str


def _pytest_command(files: Iterable[Path], *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        *(str(f) for f in files),
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        *extra,
    ]


def _run_pytest(
    cmd: Sequence[str], *, cwd: Path, timeout: float, echo: Callable[[str], None] | None = None
) -> PytestRun:
    """Run pytest in a subprocess; pass each output line to ``echo`` as it arrives."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", RUNNER_ENV: "1"}
    proc = subprocess.Popen(
        list(cmd),
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        proc.kill()

    timer = threading.Timer(timeout, kill)
    timer.daemon = True
    timer.start()
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if echo is not None:
                echo(line.rstrip("\n"))
        proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:  # interrupted (Ctrl-C): do not leave the grader running
            proc.kill()
            proc.wait()
    return PytestRun(None if timed_out.is_set() else proc.returncode, "".join(lines))


@dataclass
class Evidence:
    """What a JUnit report says about one challenge: tests passed, tests failed or errored."""

    passed: int = 0
    failed: int = 0
    messages: list[str] = field(default_factory=list)

    @property
    def success(self) -> bool:
        """A pass needs positive evidence: at least one test passed and none failed."""
        return self.passed > 0 and self.failed == 0


def junit_evidence(junit: Path, challenges: Sequence[Challenge]) -> dict[str, Evidence] | None:
    """``{stem: Evidence}`` for the challenges the report mentions; None when it is unreadable."""
    try:
        tree = ET.parse(junit)
    except (OSError, ET.ParseError):
        return None
    wanted = {f"test_{ch.stem}": ch.stem for ch in challenges}
    found: dict[str, Evidence] = {}
    for case in tree.getroot().iter("testcase"):
        address = f"{case.get('classname', '')}.{case.get('name', '').split('[')[0]}"
        stem = next((wanted[part] for part in address.split(".") if part in wanted), None)
        if stem is None:
            continue
        evidence = found.setdefault(stem, Evidence())
        problems = [p for p in (case.find("failure"), case.find("error")) if p is not None]
        if problems:
            evidence.failed += 1
            evidence.messages += [(p.get("message") or "") + "\n" + (p.text or "") for p in problems]
        elif case.find("skipped") is None:
            evidence.passed += 1
    return found


def grade_one(
    paths: Paths,
    ch: Challenge,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    stream: bool = True,
    full: bool = False,
    messages: list[str] | None = None,
) -> bool | None:
    """Grade ``ch`` now (printing pytest's output when ``stream``); None when undecided.

    Passed only when pytest exits 0 *and* its JUnit report shows at least one passed test
    and no failure or error for ``ch``: an exit code alone (``os._exit(0)`` in learner code)
    never counts. By default pytest stops at the first failing property and the grader's
    conftest prints the teaching message (drawn / expected / got / likely); ``full`` runs
    every property with pytest's detailed output. The failure messages are appended to
    ``messages`` when given.
    """
    extra = ["--full"] if full else ["-x", "-W", "ignore::DeprecationWarning"]
    if stream and sys.stdout.isatty():
        extra.append("--color=yes")
    with tempfile.TemporaryDirectory(prefix="peft_zoo_check_") as tmp:
        junit = Path(tmp) / "report.xml"
        run = _run_pytest(
            _pytest_command([paths.grader(ch)], *extra, f"--junitxml={junit}"),
            cwd=paths.root,
            timeout=timeout,
            echo=emit if stream else None,
        )
        found = junit_evidence(junit, [ch])
    if run.returncode is None:
        emit(f"grading stopped after {timeout:g} s (an infinite loop, or a very slow machine?)")
        return None
    if found is None or run.returncode not in (0, 1):
        if not stream:
            emit(run.output.rstrip())
        emit(f"pytest could not grade {ch.stem} (exit code {run.returncode}); see the output above")
        return None
    evidence = found.get(ch.stem, Evidence())
    if messages is not None:
        messages += evidence.messages
    if run.returncode == 0 and evidence.success:
        return True
    if run.returncode == 0 or evidence.passed + evidence.failed == 0:
        emit(f"pytest reported no test result for {ch.stem} (exit code {run.returncode}): not a pass")
        return None
    return False


def grade_many(paths: Paths, challenges: Sequence[Challenge], *, timeout: float) -> dict[str, bool]:
    """Grade several challenges in ONE pytest run; ``{stem: passed}`` for those decided.

    As in :func:`grade_one`, a pass needs the JUnit report's positive evidence."""
    if not challenges:
        return {}
    with tempfile.TemporaryDirectory(prefix="peft_zoo_grade_") as tmp:
        junit = Path(tmp) / "report.xml"
        run = _run_pytest(
            _pytest_command([paths.grader(ch) for ch in challenges], "--tb=no", f"--junitxml={junit}"),
            cwd=paths.root,
            timeout=timeout,
        )
        found = junit_evidence(junit, challenges)
    if run.returncode is None:
        warn(f"grading stopped after {timeout:g} s; those challenges stay undecided")
        return {}
    if found is None or run.returncode not in (0, 1):
        warn(f"pytest could not grade the changed files (exit code {run.returncode}):")
        emit(run.output.rstrip()[-3000:], stream=sys.stderr)
        return {}
    return {stem: evidence.success for stem, evidence in found.items()}


# ----------------------------------------------------------------------------- status


@dataclass(frozen=True)
class Status:
    challenge: Challenge
    state: str  # passed | failing | not_started | missing | changed
    detail: str

    @property
    def passed(self) -> bool:
        return self.state == "passed"

    @property
    def available(self) -> bool:
        """Whether the learner can work on it here (its grader exists)."""
        return self.detail != "no grader yet"


def statuses(
    paths: Paths, progress: Progress, *, grade: bool = True, timeout: float = DEFAULT_TIMEOUT
) -> list[Status]:
    """Every challenge's status. With ``grade``, the files changed since their last grading
    are graded (together, in one pytest run) and the results recorded."""
    found: dict[int, Status] = {}
    results: dict[str, bool] = {}
    to_grade: list[tuple[Challenge, str, str]] = []
    for ch in CHALLENGES:
        if not paths.grader(ch).is_file():
            found[ch.number] = Status(ch, "missing", "no grader yet")
            continue
        try:
            data = paths.exercise(ch).read_bytes()
        except OSError:
            found[ch.number] = Status(ch, "missing", "file missing")
            continue
        if data == pristine_stub(ch):
            found[ch.number] = Status(ch, "not_started", "not started")
            continue
        sha, fingerprint = sha256_bytes(data), grader_fingerprint(paths, ch)
        recorded = progress.result(ch.stem, sha, fingerprint)
        if recorded is not None:
            found[ch.number] = Status(ch, "passed" if recorded else "failing", _word(recorded))
        else:
            to_grade.append((ch, sha, fingerprint))
    if to_grade and grade:
        names = ", ".join(ch.tag for ch, _, _ in to_grade)
        emit(f"Grading {len(to_grade)} changed file(s) ({names}) in one pytest run...")
        results = grade_many(paths, [ch for ch, _, _ in to_grade], timeout=timeout)
        for ch, sha, fingerprint in to_grade:
            if ch.stem in results and _sha_file(paths.exercise(ch)) == sha:  # unchanged meanwhile
                progress.record(ch.stem, results[ch.stem], sha, fingerprint)
        progress.save()
    for ch, _, _ in to_grade:
        if grade and ch.stem in results:
            found[ch.number] = Status(
                ch, "passed" if results[ch.stem] else "failing", _word(results[ch.stem])
            )
        elif grade:
            found[ch.number] = Status(ch, "failing", "not graded")
        else:
            found[ch.number] = Status(ch, "changed", "changed since last check")
    return [found[ch.number] for ch in CHALLENGES]


def _word(passed: bool) -> str:
    return "passed" if passed else "failing"


def next_status(all_statuses: Sequence[Status]) -> Status | None:
    """The first challenge not passed yet that can be worked on here."""
    return next((s for s in all_statuses if s.available and not s.passed), None)


def next_line(
    paths: Paths, status: Status | None, all_statuses: Sequence[Status], *, watching: bool = False
) -> str:
    if status is None:
        done = sum(s.passed for s in all_statuses)
        if done == len(all_statuses):
            return f"All {done} challenges passed. Well done! Revisit any with `peft-zoo solution N`."
        return f"Every challenge available here passed ({done}/{len(all_statuses)}); the others have no grader yet."
    ch = status.challenge
    where = paths.show(paths.exercise(ch))
    head = f"{'Now' if watching else 'Next'}: challenge {ch.number} {_dot()} {ch.title} {_dash()} "
    if status.detail == "file missing":
        return head + f"its file is missing: run `peft-zoo reset {ch.number}` to restore {where}"
    if watching:
        return head + f"edit {where}; every save is graded"
    return head + f"edit {where}, then run `peft-zoo check {ch.number}`"


def cmd_status(paths: Paths, *, timeout: float = DEFAULT_TIMEOUT) -> int:
    progress = Progress(paths.state_file)
    all_statuses = statuses(paths, progress, timeout=timeout)
    m = marks()
    done = sum(s.passed for s in all_statuses)
    emit(f"peft_zoo exercises {_dot()} {TRACK}   ({paths.show(paths.practice)})")
    emit(progress_bar(done, len(all_statuses)))
    emit()
    for s in all_statuses:
        emit(f"  {m[s.state]} {s.challenge.number:2d}  {s.detail:<14} {s.challenge.title}")
    emit()
    emit(next_line(paths, next_status(all_statuses), all_statuses))
    emit(
        "Commands: peft-zoo check N | hint N | watch | solution N | reset N | list | build   "
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


def _hint_reminder(progress: Progress, ch: Challenge) -> str:
    total = len(ch.hints)
    if not total:
        return "Re-read the docstring of the stub: it says what each attribute must be."
    level = progress.hint_level(ch.stem)
    if level >= total:
        return f"All {total} hints are out (`peft-zoo hint {ch.number} --all` shows them again)."
    return f"Stuck? `peft-zoo hint {ch.number}` reveals hint {level + 1}/{total}."


def cmd_check(paths: Paths, ch: Challenge, *, timeout: float = DEFAULT_TIMEOUT, full: bool = False) -> int:
    progress = Progress(paths.state_file)
    passed = bool(_check(paths, progress, ch, timeout=timeout, full=full))
    if passed:
        after = statuses(paths, progress, grade=False)
        emit(next_line(paths, next_status(after), after))
    return 0 if passed else 1


def _check(
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
    m = marks()
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
    emit(f"Grading challenge {ch.number} {_dot()} {ch.title}  ({paths.show(exercise)})")
    fingerprint = grader_fingerprint(paths, ch)
    messages: list[str] = []
    passed = grade_one(paths, ch, timeout=timeout, full=full, messages=messages)
    if _sha_file(exercise) != sha256_bytes(data):
        emit("(the file changed while it was being graded: this result is not recorded)")
        if watching:
            return None
    elif passed is not None:
        progress.record(ch.stem, passed, sha256_bytes(data), fingerprint)
        progress.save()
    emit()
    if passed:
        emit(f"PASSED {m['passed']}  challenge {ch.number} {_dot()} {ch.title}")
        if ch.interview:
            emit("Interview practice: can you now answer these out loud?")
            for question in ch.interview:
                emit(f"  - {question}")
        emit(f"Compare with the reference answer: `peft-zoo solution {ch.number}`")
        return True
    emit(f"FAILED {m['failing']}  challenge {ch.number} {_dot()} {ch.title}")
    unfinished = bool(messages) and all(NOT_IMPLEMENTED in m for m in messages)
    if data == pristine_stub(ch):
        emit(f"You have not started yet: replace each TODO({ch.tag}) in {paths.show(exercise)}.")
    elif unfinished:
        emit(f"Part of it is not implemented yet: replace every TODO({ch.tag}) in {paths.show(exercise)}.")
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
            f"Fix {paths.show(exercise)} and run `peft-zoo check {ch.number}` again "
            "(or `peft-zoo watch` to re-grade on every save)."
        )
    emit(_hint_reminder(progress, ch))
    return False


# ----------------------------------------------------------------------------- hint


def cmd_hint(paths: Paths, ch: Challenge, *, show_all: bool = False) -> int:
    progress = Progress(paths.state_file)
    total = len(ch.hints)
    emit(f"Challenge {ch.number} {_dot()} {ch.title}")
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


def _verified_pass(paths: Paths, progress: Progress, ch: Challenge, *, timeout: float) -> bool:
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
    if passed is not None and _sha_file(paths.exercise(ch)) == sha:
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
    if not force and not _verified_pass(paths, progress, ch, timeout=timeout):
        emit(f"The solution to challenge {ch.number} {_dot()} {ch.title} is locked until your code passes.")
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


def backup_file(paths: Paths, ch: Challenge, data: bytes, now: _dt.datetime | None = None) -> Path:
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
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
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
    emit(f"Restored the stub of challenge {ch.number} {_dot()} {ch.title} at {paths.show(exercise)}")
    return 0


# ----------------------------------------------------------------------------- watch


def _signature(path: Path) -> tuple[int, int, str] | None:
    try:
        stat = path.stat()
        return (stat.st_mtime_ns, stat.st_size, sha256_bytes(path.read_bytes()))
    except OSError:
        return None


def _sleep(seconds: float) -> None:  # a seam for the tests
    time.sleep(seconds)


def _wait_until_stable(path: Path, interval: float, tries: int = 10) -> None:
    """Editors often save in steps (truncate, then write): wait until the file stops changing."""
    signature = _signature(path)
    for _ in range(tries):
        _sleep(min(interval, 0.2))
        again = _signature(path)
        if again == signature:
            return
        signature = again


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
            if current is not None and seen is not None and _signature(paths.exercise(current)) != seen:
                _wait_until_stable(paths.exercise(current), interval)  # let the save finish
            progress.refresh()  # `peft-zoo check` in another terminal may have written it
            all_statuses = statuses(paths, progress, grade=False)
            status = next_status(all_statuses)
            if status is None:
                emit(next_line(paths, None, all_statuses))
                return 0
            ch = status.challenge
            signature = _signature(paths.exercise(ch))
            if ch != current:
                current, seen = ch, None
                emit()
                emit(next_line(paths, status, all_statuses, watching=True))
            if signature != seen:
                first_look = seen is None
                seen = signature
                if status.state == "not_started":
                    emit(f"  (not started: waiting for you to save {ch.stem}.py)")
                elif status.state == "missing":
                    pass  # next_line already said how to restore it
                elif status.state == "failing" and first_look:
                    emit("  (last check failed: save the file to grade it again)")
                else:
                    emit()
                    result = _check(paths, progress, ch, timeout=timeout, watching=True)
                    if result is None:
                        continue  # saved again meanwhile: grade the new version
                    if result:
                        continue  # straight on to the next challenge
                    emit(f"Waiting for the next save of {ch.stem}.py...")
            rounds += 1
            if max_rounds is None or rounds < max_rounds:
                _sleep(interval)
    except KeyboardInterrupt:
        emit()
        emit("Stopped watching. Run `peft-zoo` to see your progress.")
    return 0


# ----------------------------------------------------------------------------- build


def cmd_build(root: Path, *, check_only: bool = False) -> int:
    from .readme import generated_pages

    paths = Paths(root)
    pages = {root / rel: text for rel, text in generated_pages().items()}
    try:
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
    except builder.BuildError as err:
        emit(f"build failed: {err}", stream=sys.stderr)
        return 1
    for path in written:
        emit(f"wrote {paths.show(path)}")
    emit(
        f"{len(written)} file(s) written; existing practice files are never overwritten (use `peft-zoo reset N`)."
    )
    return 0


# ----------------------------------------------------------------------------- argparse wiring


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


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if number <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return number


def add_arguments(parser: argparse.ArgumentParser, sub: Any) -> None:
    """Add ``--root`` and the exercise subcommands to the ``peft-zoo`` parser."""
    root_help = f"project root holding practice/{TRACK} (default: ${ROOT_ENV}, else found from the cwd)"
    parser.add_argument("--root", metavar="DIR", default=None, help=root_help)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", metavar="DIR", default=argparse.SUPPRESS, help=root_help)
    timed = argparse.ArgumentParser(add_help=False)
    timed.add_argument(
        "--timeout",
        type=_positive,
        default=DEFAULT_TIMEOUT,
        help=f"seconds per grading run (default {DEFAULT_TIMEOUT:g})",
    )

    def challenge(p: argparse.ArgumentParser) -> None:
        p.add_argument("n", metavar="N", type=challenge_arg, help="challenge number (see `peft-zoo list`)")

    sub.add_parser(
        "status", parents=[common, timed], help="progress bar, every challenge's status, what next"
    )
    p = sub.add_parser(
        "list", parents=[common, timed], help="challenges with difficulty, prerequisites, status"
    )
    p = sub.add_parser("check", parents=[common, timed], help="grade challenge N now and say what next")
    challenge(p)
    p.add_argument(
        "--full", action="store_true", help="run every property (do not stop at the first failure)"
    )
    p = sub.add_parser("hint", parents=[common], help="reveal the next hint for challenge N")
    challenge(p)
    p.add_argument("--all", action="store_true", help="show every hint")
    p = sub.add_parser("watch", parents=[common, timed], help="re-grade the current challenge on every save")
    p.add_argument("--interval", type=_positive, default=1.0, help="seconds between polls (default 1.0)")
    p.add_argument("--max-rounds", type=int, default=None, help=argparse.SUPPRESS)
    p = sub.add_parser("solution", parents=[common, timed], help="show the reference answer once N passes")
    challenge(p)
    p.add_argument("--force", action="store_true", help="show it even if N has not passed")
    p = sub.add_parser("reset", parents=[common], help="back up your file for N, then restore the stub")
    challenge(p)
    p = sub.add_parser("build", parents=[common], help="write the generated stubs, answers and README")
    p.add_argument("--check", action="store_true", help="only list drifted files; exit 1 if any")


COMMANDS = ("status", "list", "check", "hint", "watch", "solution", "reset", "build")


def run(args: argparse.Namespace, *, no_root: Callable[[], int] | None = None) -> int:
    """Run the exercise command in ``args``; no command is the status screen, or ``no_root()``
    when no exercises can be found and none were asked for explicitly."""
    command = args.command or "status"
    try:
        if args.command is None and no_root is not None and _root_or_none(args.root) is None:
            return no_root()
        if command == "build":
            return cmd_build(find_root(args.root, require_practice=False), check_only=args.check)
        paths = Paths(find_root(args.root))
        timeout = getattr(args, "timeout", DEFAULT_TIMEOUT)
        if command == "status":
            return cmd_status(paths, timeout=timeout)
        if command == "list":
            return cmd_list(paths, timeout=timeout)
        if command == "check":
            return cmd_check(paths, args.n, timeout=timeout, full=args.full)
        if command == "hint":
            return cmd_hint(paths, args.n, show_all=args.all)
        if command == "watch":
            return cmd_watch(paths, interval=args.interval, max_rounds=args.max_rounds, timeout=timeout)
        if command == "solution":
            return cmd_solution(paths, args.n, force=args.force, timeout=timeout)
        if command == "reset":
            return cmd_reset(paths, args.n)
    except RunnerError as err:
        emit(f"peft-zoo: error: {err}", stream=sys.stderr)
        return 2
    except BrokenPipeError:  # `peft-zoo | head`: the reader left; stop quietly
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    raise ValueError(f"unknown command {command!r}")


def _root_or_none(explicit: str | None) -> Path | None:
    """The root if one can be found (for the bare ``peft-zoo`` command), else None."""
    try:
        return find_root(explicit)
    except RunnerError:
        if explicit is not None or os.environ.get(ROOT_ENV):
            raise
        return None


__all__ = [
    "COMMANDS",
    "Paths",
    "Progress",
    "RunnerError",
    "add_arguments",
    "backup_file",
    "find_root",
    "progress_bar",
    "run",
    "statuses",
]
