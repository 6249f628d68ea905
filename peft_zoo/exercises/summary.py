"""What `pytest practice/<track>` prints: one line per challenge, the clearest failure, what next.

Plain pytest on twenty untouched stubs prints hundreds of lines (a traceback, a hypothesis
``@seed`` line and a FAILED line per test). A learner needs far less: which challenges pass,
which are not started, the drawn / expected / got / likely block of the most specific failure
of each failing challenge, and where to start. That is the *compact* mode, the default; with
``-v``, ``--full`` or an explicit ``--tb=...`` pytest's own detailed output is kept and this
summary is added after it.

The grader's conftest attaches a short message to every failed report
(:func:`failure_message`, stored in ``user_properties`` so it survives the trip from a
forked child); :class:`GradingSummary` groups the reports by challenge and prints them.
"""

from __future__ import annotations

import os
import traceback
import types
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .manifest import CHALLENGES, Challenge
from .runner.constants import NOT_IMPLEMENTED, RUNNER_ENV
from .runner.paths import pristine_stub

MESSAGE_KEY = "peft_zoo_message"
_BY_STEM = {ch.stem: ch for ch in CHALLENGES}


# ----------------------------------------------------------------------------- messages


def _strip_rewrite(text: str) -> str:
    """Drop pytest's assertion-rewrite explanation (``assert 3 == 4``, ``+  where ...``)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if i > 0 and (line.startswith("assert ") or line == "assert"):
            return "\n".join(lines[:i]).rstrip()
    return text.rstrip()


def rank(text: str) -> int:
    """How specific a failure message is: 0 names the bug, 1 shows a difference, 3 unfinished."""
    lowered = text.lower()
    if NOT_IMPLEMENTED in lowered:
        return 3
    if "likely:" in lowered or "classic bug" in lowered or "process died" in lowered or "shortcut" in lowered:
        return 0
    if "expected" in lowered or "drawn:" in lowered:
        return 1
    return 2


def _learner_frame(tb: object, learner_file: str | None) -> str:
    if learner_file is None or not isinstance(tb, types.TracebackType):
        return ""
    name = os.path.basename(learner_file)
    frames = [f for f in traceback.extract_tb(tb) if os.path.basename(f.filename) == name]
    if not frames:
        return ""
    return f" (at {name}:{frames[-1].lineno} in {frames[-1].name})"


def failure_message(exc: BaseException, learner_file: str | None = None) -> str:
    """The teaching part of a failure, without tracebacks or pytest's rewrite diff."""
    group = getattr(exc, "exceptions", None)  # an exception group: several distinct failures
    if isinstance(group, tuple) and group and all(isinstance(e, BaseException) for e in group):
        messages = [failure_message(sub, learner_file) for sub in group]
        return min(messages, key=rank)
    if isinstance(exc, AssertionError):
        return _strip_rewrite(str(exc)) or "an assertion failed"
    text = f"{type(exc).__name__}: {exc}".rstrip()
    return text + _learner_frame(exc.__traceback__, learner_file)


def attach_message(report: pytest.TestReport, text: str) -> None:
    """Store ``text`` on ``report`` (a fresh list: the item's own list is shared by its phases)."""
    report.user_properties = [*report.user_properties, (MESSAGE_KEY, text)]


# ----------------------------------------------------------------------------- summary plugin


@dataclass
class _Result:
    test: str
    passed: bool
    text: str = ""


@dataclass
class _Challenge:
    results: list[_Result] = field(default_factory=list)

    @property
    def failures(self) -> list[_Result]:
        return sorted((r for r in self.results if not r.passed), key=lambda r: rank(r.text))

    @property
    def passed(self) -> bool:
        return bool(self.results) and not self.failures

    @property
    def unfinished(self) -> bool:
        return bool(self.failures) and all(rank(r.text) == 3 for r in self.failures)


def _short(ch: Challenge) -> str:
    """``LoRALinear`` from ``LoRALinear: a frozen Linear plus a low-rank update``."""
    return ch.title.split(":", 1)[0]


def _stem(nodeid: str) -> str | None:
    name = nodeid.split("::", 1)[0].replace("\\", "/").rsplit("/", 1)[-1]
    if not name.startswith("test_") or not name.endswith(".py"):
        return None
    stem = name[len("test_") : -len(".py")]
    return stem if stem in _BY_STEM else None


def _report_text(report: pytest.TestReport | pytest.CollectReport) -> str:
    for key, value in getattr(report, "user_properties", ()):
        if key == MESSAGE_KEY:
            return str(value)
    longrepr = report.longrepr
    if isinstance(longrepr, str):
        return longrepr
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None:
        return _strip_rewrite(crash.message)
    lines = str(longrepr).strip().splitlines()
    return "\n".join(lines[-15:])


class GradingSummary:
    """Plugin: collects the graders' reports and prints the learner's summary at the end."""

    def __init__(self, config: pytest.Config, *, practice: Path, impl: Path, compact: bool) -> None:
        self.config, self.practice, self.impl, self.compact = config, practice, impl, compact
        self.challenges: dict[str, _Challenge] = {}
        self.broken: list[str] = []  # grader files that could not be collected

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        stem = _stem(report.nodeid)
        if stem is None or (report.when != "call" and not report.failed):
            return
        entry = self.challenges.setdefault(stem, _Challenge())
        test = report.nodeid.split("::", 1)[-1]
        if report.failed:
            entry.results = [r for r in entry.results if r.test != test]  # a teardown error wins
            entry.results.append(_Result(test, False, _report_text(report)))
        elif report.passed:
            entry.results.append(_Result(test, True))

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed and self.compact:  # otherwise pytest's own report shows it
            self.broken.append(f"{report.nodeid}: could not be collected\n{_report_text(report)}")

    @pytest.hookimpl(specname="pytest_terminal_summary", wrapper=True, tryfirst=True)
    def reorder_failures(self, terminalreporter: pytest.TerminalReporter) -> Generator[None, object, object]:
        """Reorder pytest's own failure list (most specific first), then let it print."""
        failed = terminalreporter.stats.get("failed")
        if failed:
            order = {stem: i for i, stem in enumerate(_BY_STEM)}

            def key(rep: pytest.TestReport) -> tuple[int, int]:
                stem = _stem(rep.nodeid)
                return (order.get(stem, -1) if stem else -1, rank(_report_text(rep)))

            failed.sort(key=key)
        return (yield)

    def lines(self) -> list[str]:
        """The lines this plugin prints (exposed for tests)."""
        lines: list[str] = []
        lines += self.broken
        if not self.challenges:
            return lines
        runner = bool(os.environ.get(RUNNER_ENV))
        if not runner:
            lines.append(f"Challenges graded from {self._show(self.impl)}:")
            lines += [self._status_line(stem, entry) for stem, entry in self._ordered()]
        for stem, entry in self._ordered():
            if entry.passed or (entry.unfinished and not runner):
                continue
            lines += self._failure_block(stem, entry)
        if not runner:
            lines.append(self._closing())
        return lines

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        lines = self.lines()
        if not lines:
            return
        terminalreporter.write_line("")
        for line in lines:
            terminalreporter.write_line(line)

    # ------------------------------------------------------------------ pieces

    def _ordered(self) -> list[tuple[str, _Challenge]]:
        return [(stem, self.challenges[stem]) for stem in _BY_STEM if stem in self.challenges]

    def _show(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(Path.cwd().resolve()))
        except ValueError:
            return str(path)

    def _status_line(self, stem: str, entry: _Challenge) -> str:
        ch = _BY_STEM[stem]
        head = f"  {ch.number:02d} {_short(ch):<26}"
        if entry.passed:
            return f"{head} passed ({len(entry.results)} tests)"
        if entry.unfinished:
            pristine = self._pristine(ch)
            return f"{head} {'not started' if pristine else 'unfinished (a TODO still raises NotImplementedError)'}"
        failures = entry.failures
        return f"{head} FAILED ({len(failures)} of {len(entry.results)} tests)"

    def _pristine(self, ch: Challenge) -> bool:
        try:
            return (self.impl / f"{ch.stem}.py").read_bytes() == pristine_stub(ch)
        except OSError:
            return False

    def _failure_block(self, stem: str, entry: _Challenge) -> list[str]:
        ch = _BY_STEM[stem]
        first, *others = entry.failures
        lines = [f"---- challenge {ch.number:02d} {_short(ch)} ---- {first.test}"]
        lines += first.text.splitlines() or ["(no message)"]
        if others:
            names = ", ".join(r.test for r in others[:4]) + (", ..." if len(others) > 4 else "")
            lines.append(f"  ({len(others)} more failing: {names})")
        if self.compact and not os.environ.get(RUNNER_ENV):
            lines.append(f"  (details: pytest {self._show(self.practice / f'test_{stem}.py')} -v)")
        return lines

    def _closing(self) -> str:
        for stem, entry in self._ordered():
            if entry.passed:
                continue
            ch = _BY_STEM[stem]
            where = self._show(self.impl / f"{stem}.py")
            if entry.unfinished:
                return (
                    f"Start here: challenge {ch.number:02d} {_short(ch)} - edit {where} (replace each "
                    f"TODO({ch.tag})), then run `peft-zoo check {ch.number}`; `peft-zoo` shows your progress."
                )
            return (
                f"Next: fix challenge {ch.number:02d} {_short(ch)} in {where}, then run "
                f"`peft-zoo check {ch.number}` (stuck? `peft-zoo hint {ch.number}`)."
            )
        return f"All {len(self.challenges)} graded challenges passed."


def compact_wanted(config: pytest.Config, practice: Path) -> bool:
    """Compact output unless the learner asked for details (-v, --full, --tb=...) or the run
    also collects tests from elsewhere (their failures need pytest's own report)."""
    full = bool(config.getoption("--full", False))
    if full or config.option.verbose > 0 or config.option.tbstyle != "auto":
        return False
    here, base = practice.resolve(), Path(config.invocation_params.dir)
    for arg in config.args or ["."]:
        target = (base / arg.split("::", 1)[0]).resolve()
        if target != here and here not in target.parents:
            return False
    return True


def make_compact(config: pytest.Config) -> None:
    """Quiet progress, no tracebacks, no per-test FAILED lines: the summary says it all."""
    config.option.verbose = min(config.option.verbose, -1)
    config.option.tbstyle = "no"
    config.option.reportchars = "N"
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:  # already configured: it read the report characters at start-up
        reporter.reportchars = ""


def challenge_of(stem: str) -> Challenge | None:
    return _BY_STEM.get(stem)


__all__ = [
    "GradingSummary",
    "attach_message",
    "challenge_of",
    "compact_wanted",
    "failure_message",
    "make_compact",
    "rank",
]
