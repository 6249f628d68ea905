"""Grading: the graders run by pytest in a subprocess, their JUnit reports read for evidence.

A pass needs positive evidence: pytest exits 0 *and* its JUnit report shows at least one
passed test and no failure or error for the challenge. An exit code alone (``os._exit(0)``
in learner code) never counts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..manifest import Challenge
from .constants import DEFAULT_TIMEOUT, RUNNER_ENV
from .output import emit, warn
from .paths import Paths


@dataclass
class PytestRun:
    returncode: int | None  # None: killed after the timeout
    output: str


def pytest_command(files: Iterable[Path], *extra: str) -> list[str]:
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


def run_pytest(
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
    extra_args: Sequence[str] = (),
) -> bool | None:
    """Grade ``ch`` now (printing pytest's output when ``stream``); None when undecided.

    Passed only when pytest exits 0 *and* its JUnit report shows at least one passed test
    and no failure or error for ``ch``: an exit code alone (``os._exit(0)`` in learner code)
    never counts. By default pytest stops at the first failing property and the grader's
    conftest prints the teaching message (drawn / expected / got / likely); ``full`` runs
    every property with pytest's detailed output. The failure messages are appended to
    ``messages`` when given; ``extra_args`` go to pytest (``--impl=DIR`` grades another folder).
    """
    extra = ["--full"] if full else ["-x", "-W", "ignore::DeprecationWarning"]
    extra += list(extra_args)
    if stream and sys.stdout.isatty():
        extra.append("--color=yes")
    with tempfile.TemporaryDirectory(prefix="peft_zoo_check_") as tmp:
        junit = Path(tmp) / "report.xml"
        run = run_pytest(
            pytest_command([paths.grader(ch)], *extra, f"--junitxml={junit}"),
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
        run = run_pytest(
            pytest_command([paths.grader(ch) for ch in challenges], "--tb=no", f"--junitxml={junit}"),
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
