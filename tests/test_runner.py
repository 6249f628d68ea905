"""The exercise runner (`peft-zoo`, `check`, `hint`, `solution`, `status`, `list`), run for real
on a temporary copy of challenge 01 (its grader takes about a second). Reset, the progress
file, watch, build and root discovery: tests/test_runner_files.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from runner_helpers import (
    CH1,
    TOTAL,
    cli,
    make_root,
    practice_file,
    progress,
    spy_on_pytest_runs,
    wrong_answer,
)

from peft_zoo.cli import main
from peft_zoo.exercises import builder, runner
from peft_zoo.exercises.manifest import CHALLENGES, TRACK
from peft_zoo.exercises.runner import commands as runner_commands
from peft_zoo.exercises.runner import grade as runner_grade


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project root holding challenge 01 only: its pristine stub, grader and answer."""
    return make_root(tmp_path, monkeypatch)


@pytest.fixture
def pytest_runs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every pytest subprocess the runner starts (they still run for real)."""
    return spy_on_pytest_runs(monkeypatch)


# ----------------------------------------------------------------------------- status and list


def test_status_of_untouched_stubs_needs_no_grading(root, capsys, pytest_runs) -> None:
    code, out = cli(capsys, root)
    assert code == 0
    assert f"0/{TOTAL} passed" in out and "[" in out
    assert f"Next: challenge 1 · {CH1.title}" in out
    assert f"{CH1.stem}.py, then run `peft-zoo check 1`" in out
    assert re.search(r"·\s+1\s+not started", out)
    assert "no grader yet" in out  # challenges 2.. are absent from this root
    assert pytest_runs == []  # nothing was graded
    code, out = cli(capsys, root, "list")
    assert code == 0 and "warm-up" in out and CH1.title in out and pytest_runs == []
    assert not (root / "practice" / TRACK / runner.STATE_NAME).exists()  # nothing to record


def test_status_grades_changed_files_in_one_run_and_reuses_the_result(root, capsys, pytest_runs) -> None:
    practice_file(root).write_text(builder.answer_text(CH1))
    code, out = cli(capsys, root)
    assert code == 0
    assert len(pytest_runs) == 1 and any(a.startswith("--junitxml=") for a in pytest_runs[0])
    assert re.search(r"✓\s+1\s+passed", out) and f"1/{TOTAL} passed" in out
    entry = progress(root)[CH1.stem]
    assert entry["passed"] is True
    assert entry["sha256"] == runner.sha256_bytes(practice_file(root).read_bytes())
    # Same file: the recorded result is reused, and it unlocks the solution.
    code, out = cli(capsys, root, "list")
    assert code == 0 and "✓ passed" in out
    code, out = cli(capsys, root, "solution", "1")
    assert code == 0 and builder.answer_text(CH1).strip() in out
    assert len(pytest_runs) == 1


def test_missing_practice_file_is_flagged_and_reset_restores_it(root, capsys, pytest_runs) -> None:
    practice_file(root).unlink()
    code, out = cli(capsys, root)
    assert code == 0 and re.search(r"!\s+1\s+file missing", out)
    assert "run `peft-zoo reset 1`" in out
    code, out = cli(capsys, root, "check", "1")
    assert code == 1 and "missing" in out
    code, out = cli(capsys, root, "reset", "1")
    assert code == 0 and practice_file(root).read_text() == builder.stub_text(CH1)
    assert not (root / "practice" / TRACK / runner.BACKUP_DIR).exists()  # nothing to back up
    assert pytest_runs == []


# ----------------------------------------------------------------------------- check


def test_check_passes_records_and_points_on(root, capsys, pytest_runs) -> None:
    practice_file(root).write_text(builder.answer_text(CH1))
    code, out = cli(capsys, root, "check", "1")
    assert code == 0, out
    assert "5 passed" in out or "passed in" in out  # pytest's own output is shown
    assert "PASSED ✓  challenge 1" in out and CH1.interview[0] in out
    assert "peft-zoo solution 1" in out
    assert progress(root)[CH1.stem]["passed"] is True
    code, out = cli(capsys, root)
    assert code == 0 and re.search(r"✓\s+1\s+passed", out)
    assert len(pytest_runs) == 1  # the status screen reused the check


def test_check_fails_with_teaching_output(root, capsys, pytest_runs) -> None:
    practice_file(root).write_text(wrong_answer())
    code, out = cli(capsys, root, "check", "1")
    assert code == 1, out
    for line in ("drawn:", "expected:", "got:", "FAILED ✗  challenge 1"):
        assert line in out
    assert f"`peft-zoo hint 1` reveals hint 1/{len(CH1.hints)}" in out
    assert progress(root)[CH1.stem]["passed"] is False
    code, out = cli(capsys, root)
    assert re.search(r"✗\s+1\s+failing", out) and f"Next: challenge 1 · {CH1.title}" in out
    assert len(pytest_runs) == 1


FORWARD_RETURN = "return self.base(x) + self.scale * F.linear(h, self.lora_B)"
HARD_EXITS = {
    "at import": builder.answer_text(CH1) + "\nimport os\n\nos._exit(0)\n",
    "in forward": builder.answer_text(CH1).replace(
        FORWARD_RETURN, "import os\n\n        os._exit(0)\n        " + FORWARD_RETURN
    ),
}


@pytest.mark.parametrize("where", list(HARD_EXITS))
def test_a_hard_exit_is_never_a_pass(root, capsys, where) -> None:
    assert HARD_EXITS[where] != builder.answer_text(CH1)
    practice_file(root).write_text(HARD_EXITS[where])
    code, out = cli(capsys, root, "check", "1")
    assert code == 1 and "FAILED" in out and "PASSED" not in out, out
    assert "process died" in out and "exited with status 0" in out
    assert progress(root).get(CH1.stem, {}).get("passed") is not True
    code, out = cli(capsys, root, "solution", "1")
    assert code == 1 and "locked" in out
    code, out = cli(capsys, root)  # the status screen (grade_many) does not pass it either
    assert not re.search(r"✓\s+1\s+passed", out)


def test_an_exit_code_alone_is_no_evidence(root, monkeypatch) -> None:
    """pytest exiting 0 without a JUnit report showing a passed test is not a pass."""
    practice_file(root).write_text(builder.answer_text(CH1))
    monkeypatch.setattr(runner_grade, "run_pytest", lambda cmd, **kwargs: runner.PytestRun(0, ""))
    assert runner.grade_one(runner.Paths(root), CH1, stream=False) is not True
    assert runner.grade_many(runner.Paths(root), [CH1], timeout=60) == {}


def test_an_unfinished_file_is_not_told_to_read_the_drawn_block(root, capsys) -> None:
    practice_file(root).write_text("# started, but every TODO is still there\n" + builder.stub_text(CH1))
    code, out = cli(capsys, root, "check", "1")
    assert code == 1 and "not implemented yet" in out
    assert "Read the failure above" not in out and "'drawn' is" not in out
    assert "TODO(ex01)" in out


@pytest.mark.parametrize("command", ["check", "hint", "solution", "reset"])
def test_unknown_challenge_is_a_clear_usage_error(root, capsys, command) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "99", "--root", str(root)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "no challenge '99'" in err and ", ".join(str(c.number) for c in CHALLENGES) in err


def test_challenges_can_be_named_several_ways() -> None:
    for spelling in ("1", "01", "ex01", "lora_linear", CH1.stem):
        assert runner.challenge_arg(spelling) is CH1


# ----------------------------------------------------------------------------- hint


def test_hints_are_revealed_one_at_a_time(root, capsys) -> None:
    total = len(CH1.hints)
    code, out = cli(capsys, root, "hint", "1")
    assert code == 0 and f"hint 1/{total}: {CH1.hints[0]}" in out and f"hint 2/{total}:" not in out
    assert f"again for hint 2/{total}" in out
    code, out = cli(capsys, root, "hint", "1")
    assert f"hint 1/{total}" in out and f"hint 2/{total}: {CH1.hints[1]}" in out
    assert f"hint 3/{total}:" not in out
    assert progress(root)[CH1.stem]["hint_level"] == 2
    code, out = cli(capsys, root, "hint", "1", "--all")
    assert all(f"hint {i}/{total}: {h}" in out for i, h in enumerate(CH1.hints, 1))
    code, out = cli(capsys, root, "hint", "1")  # past the last one: stays at the last
    assert code == 0 and f"hint {total}/{total}" in out and progress(root)[CH1.stem]["hint_level"] == total


# ----------------------------------------------------------------------------- solution


def test_solution_is_locked_until_passing_unless_forced(root, capsys, pytest_runs) -> None:
    answer = (root / "solutions" / TRACK / f"{CH1.stem}.py").read_text()
    code, out = cli(capsys, root, "solution", "1")
    assert code == 1 and "locked" in out and "--force" in out and answer.strip() not in out
    code, out = cli(capsys, root, "solution", "1", "--force")
    assert code == 0 and answer.strip() in out
    assert pytest_runs == []  # an untouched stub never passes: no grading needed


def test_solution_regrades_a_file_changed_since_its_pass(root, capsys, monkeypatch) -> None:
    graded = []
    monkeypatch.setattr(runner_commands, "grade_one", lambda *a, **k: graded.append(1) or False)
    state = runner.Progress(root / "practice" / TRACK / runner.STATE_NAME)
    fingerprint = runner.grader_fingerprint(runner.Paths(root), CH1)
    state.record(CH1.stem, True, runner.sha256_bytes(b"an older version"), fingerprint)
    state.save()
    practice_file(root).write_text(wrong_answer())
    code, out = cli(capsys, root, "solution", "1")
    assert code == 1 and graded == [1] and "locked" in out
    assert progress(root)[CH1.stem]["passed"] is False
