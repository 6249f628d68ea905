"""The practice loop: `peft-zoo status` (attempts, hints, time spent, no-hints mark, estimate),
colour that respects NO_COLOR and non-terminals, the pass message's links to the worked
interview answers, and the practice log in `.progress.json` (old files still load)."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
from pathlib import Path

import pytest
from runner_helpers import CH1, ROOT, cli, make_root, practice_file, progress, wrong_answer

from peft_zoo.exercises import builder, runner
from peft_zoo.exercises.manifest import CHALLENGES, TRACK
from peft_zoo.exercises.runner import practice
from peft_zoo.exercises.runner import progress as runner_progress
from peft_zoo.exercises.runner.status import Status

T0 = dt.datetime(2026, 3, 1, 9, 0, 0, tzinfo=dt.timezone.utc)
ANSI = re.compile(r"\x1b\[")


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("NO_COLOR", raising=False)
    return make_root(tmp_path, monkeypatch)


class FakeClock:
    """An injectable clock: ``advance`` instead of sleeping."""

    def __init__(self, start: dt.datetime) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock(T0)
    monkeypatch.setattr(runner_progress, "utc_now", fake)
    return fake


class Terminal(io.StringIO):
    """A stdout that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def state_file(root: Path) -> Path:
    return root / "practice" / TRACK / runner.STATE_NAME


# ----------------------------------------------------------------------------- the practice log


def test_attempts_hints_and_time_spent_are_logged_and_shown(root, capsys, clock) -> None:
    assert cli(capsys, root, "hint", "1")[0] == 0
    practice_file(root).write_text(wrong_answer())
    assert cli(capsys, root, "check", "1")[0] == 1
    clock.advance(minutes=12, seconds=30)
    practice_file(root).write_text(builder.answer_text(CH1))
    code, out = cli(capsys, root, "check", "1")
    assert code == 0, out
    entry = progress(root)[CH1.stem]
    assert entry["attempts"] == 2 and entry["hints_at_pass"] == 1
    assert entry["first_attempt"] == "2026-03-01T09:00:00+00:00"
    assert entry["passed_at"] == "2026-03-01T09:12:30+00:00"
    clock.advance(hours=5)  # a later look does not change the time spent
    code, out = cli(capsys, root, "status")
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith(" 1  "))
    assert re.search(r"✓ passed\s+2\s+1/\d+\s+12 min\s+no\s+★\s+10 min", row), row
    assert "tries" in out and "no hints" in out and "est." in out
    assert not ANSI.search(out)  # captured output is not a terminal


def test_a_pass_before_any_hint_is_marked_and_reset_keeps_the_log(root, capsys, clock) -> None:
    practice_file(root).write_text(builder.answer_text(CH1))
    code, out = cli(capsys, root, "status")  # the status screen grades it: one attempt
    assert code == 0
    assert progress(root)[CH1.stem]["attempts"] == 1
    row = next(line for line in out.splitlines() if line.startswith(" 1  "))
    assert re.search(r"✓ passed\s+1\s+0/\d+\s+0 s\s+yes", row), row
    assert cli(capsys, root, "reset", "1")[0] == 0
    entry = progress(root)[CH1.stem]
    assert entry["passed"] is False and entry["attempts"] == 1 and entry["hints_at_pass"] == 0


def test_in_progress_time_counts_from_the_first_attempt(root, capsys, clock) -> None:
    practice_file(root).write_text(wrong_answer())
    assert cli(capsys, root, "check", "1")[0] == 1
    clock.advance(hours=2, minutes=5)
    code, out = cli(capsys, root, "status")
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith(" 1  "))
    assert re.search(r"✗ failing\s+1\s+0/\d+\s+since 2 h 05 min\s+-", row), row
    assert "passed_at" not in progress(root)[CH1.stem]


def test_old_progress_file_without_the_log_loads(root, capsys, clock) -> None:
    old = {CH1.stem: {"passed": False, "hint_level": 2}}
    state_file(root).write_text(json.dumps(old))
    log = runner.Progress(state_file(root))
    assert log.attempts(CH1.stem) == 0 and log.hints_at_pass(CH1.stem) is None
    assert log.first_attempt(CH1.stem) is None and log.passed_at(CH1.stem) is None
    code, out = cli(capsys, root, "status")
    assert code == 0 and "warning" not in out
    row = next(line for line in out.splitlines() if line.startswith(" 1  "))
    assert re.search(r"not started\s+0\s+2/\d+\s+-\s+-", row), row
    log.note_attempt(CH1.stem, True)
    log.save()
    entry = progress(root)[CH1.stem]
    assert entry["hint_level"] == 2 and entry["attempts"] == 1 and entry["hints_at_pass"] == 2


@pytest.mark.parametrize(
    "value", [{"attempts": "3", "first_attempt": 5, "passed_at": "yesterday", "hints_at_pass": True}]
)
def test_malformed_log_fields_read_as_missing(tmp_path, value) -> None:
    path = tmp_path / runner.STATE_NAME
    path.write_text(json.dumps({CH1.stem: value}))
    log = runner.Progress(path, clock=lambda: T0)
    assert log.attempts(CH1.stem) == 0 and log.hints_at_pass(CH1.stem) is None
    assert log.first_attempt(CH1.stem) is None and log.passed_at(CH1.stem) is None
    log.note_attempt(CH1.stem, False)
    assert log.attempts(CH1.stem) == 1 and log.first_attempt(CH1.stem) == T0


def test_naive_timestamps_are_read_as_utc(tmp_path) -> None:
    path = tmp_path / runner.STATE_NAME
    path.write_text(json.dumps({CH1.stem: {"first_attempt": "2026-03-01T09:00:00"}}))
    assert runner.Progress(path).first_attempt(CH1.stem) == T0


def test_corrupt_progress_file_is_kept_before_it_is_replaced(root, capsys) -> None:
    state_file(root).write_text("{not json")
    code, out = cli(capsys, root, "hint", "1")
    assert code == 0 and progress(root)[CH1.stem]["hint_level"] == 1
    kept = state_file(root).with_name(runner.STATE_NAME + ".corrupt")
    assert kept.read_text() == "{not json" and "corrupt" in out


# ----------------------------------------------------------------------------- colour


def test_colour_only_on_a_terminal_without_no_color(root, monkeypatch) -> None:
    outputs = {}
    for name, env, stream in (
        ("tty", None, Terminal()),
        ("no_color", "1", Terminal()),
        ("pipe", None, io.StringIO()),
        ("empty_no_color", "", Terminal()),
    ):
        if env is None:
            monkeypatch.delenv("NO_COLOR", raising=False)
        else:
            monkeypatch.setenv("NO_COLOR", env)
        monkeypatch.setattr("sys.stdout", stream)
        assert practice.cmd_practice_status(runner.Paths(root)) == 0
        outputs[name] = stream.getvalue()
    assert ANSI.search(outputs["tty"]) and ANSI.search(outputs["empty_no_color"])
    assert not ANSI.search(outputs["no_color"]) and not ANSI.search(outputs["pipe"])
    assert re.sub(r"\x1b\[[0-9;]*m", "", outputs["tty"]) == outputs["pipe"]


def test_use_colour_and_paint(monkeypatch) -> None:
    assert practice.paint("x", "passed", False) == "x"
    assert practice.paint("x", "passed", True) == "\x1b[32mx\x1b[0m"
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert practice.use_colour(Terminal()) is True
    assert practice.use_colour(io.StringIO()) is False
    monkeypatch.setenv("NO_COLOR", "1")
    assert practice.use_colour(Terminal()) is False


# ----------------------------------------------------------------------------- estimates, links


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (59, "59 s"), (60, "1 min"), (750, "12 min"), (7500, "2 h 05 min"), (93600, "1 d 2 h")],
)
def test_duration(seconds, text) -> None:
    assert practice.duration(seconds) == text


def test_every_challenge_has_an_estimate_and_a_real_guide_anchor() -> None:
    for ch in CHALLENGES:
        assert practice.estimate_minutes(ch) == practice.ESTIMATE_MINUTES[ch.difficulty]
        link = practice.guide_link(ch)
        page, anchor = link.split("#")
        assert anchor == "interview-questions"
        headings = (ROOT / page).read_text(encoding="utf-8").splitlines()
        assert "## Interview questions" in headings, f"{page} has no '## Interview questions'"


def test_status_row_without_a_grading_log(tmp_path) -> None:
    log = runner.Progress(tmp_path / runner.STATE_NAME)
    row = practice.status_row(log, Status(CH1, "not_started", "not started"), T0, False)
    assert row.startswith(" 1  · not started") and f"{practice.estimate_minutes(CH1)} min" in row


def test_pass_message_links_the_worked_answers_and_asks_the_questions(root, capsys, clock) -> None:
    practice_file(root).write_text(builder.answer_text(CH1))
    code, out = cli(capsys, root, "check", "1")
    assert code == 0, out
    assert "Worked interview answers: docs/lora.md#interview-questions" in out
    assert "peft-zoo interview --topic lora" in out
    for question in CH1.interview:
        assert f"  - {question}" in out


def test_bare_dashboard_keeps_its_layout(root, capsys) -> None:
    code, out = cli(capsys, root)
    assert code == 0 and re.search(r"·\s+1\s+not started\s+" + re.escape(CH1.title), out)
    assert "tries" not in out and "peft-zoo status" in out
