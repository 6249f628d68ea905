"""The exercise runner (`peft-zoo`, `check`, `hint`, `watch`, `solution`, `reset`, `build`, `list`),
run for real on a temporary copy of challenge 01 (its grader takes about a second)."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest

from peft_zoo.cli import main
from peft_zoo.exercises import builder, runner
from peft_zoo.exercises.manifest import BY_NUMBER, CHALLENGES, TRACK
from peft_zoo.exercises.readme import render_readme

ROOT = Path(__file__).resolve().parents[1]
CH1 = BY_NUMBER[1]
TOTAL = len(CHALLENGES)


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project root holding challenge 01 only: its pristine stub, grader and answer."""
    project = tmp_path / "project"
    practice, solutions = project / "practice" / TRACK, project / "solutions" / TRACK
    practice.mkdir(parents=True)
    solutions.mkdir(parents=True)
    for name in ("conftest.py", f"test_{CH1.stem}.py"):
        shutil.copy(ROOT / "practice" / TRACK / name, practice / name)
    (practice / f"{CH1.stem}.py").write_text(builder.stub_text(CH1))
    (solutions / f"{CH1.stem}.py").write_text(builder.answer_text(CH1))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(runner.ROOT_ENV, raising=False)
    return project


@pytest.fixture
def pytest_runs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every pytest subprocess the runner starts (they still run for real)."""
    calls: list[list[str]] = []
    real = runner._run_pytest

    def spy(cmd, **kwargs):
        calls.append(list(cmd))
        return real(cmd, **kwargs)

    monkeypatch.setattr(runner, "_run_pytest", spy)
    return calls


def cli(capsys: pytest.CaptureFixture[str], root: Path, *args: str) -> tuple[int, str]:
    code = main([*args, "--root", str(root)] if args else ["--root", str(root)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def practice_file(root: Path) -> Path:
    return root / "practice" / TRACK / f"{CH1.stem}.py"


def progress(root: Path) -> dict:
    return json.loads((root / "practice" / TRACK / runner.STATE_NAME).read_text())


def wrong_answer() -> str:
    text = builder.answer_text(CH1).replace("self.scale * ", "")
    assert text != builder.answer_text(CH1)
    return text


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
    monkeypatch.setattr(runner, "_run_pytest", lambda cmd, **kwargs: runner.PytestRun(0, ""))
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
    monkeypatch.setattr(runner, "grade_one", lambda *a, **k: graded.append(1) or False)
    state = runner.Progress(root / "practice" / TRACK / runner.STATE_NAME)
    fingerprint = runner.grader_fingerprint(runner.Paths(root), CH1)
    state.record(CH1.stem, True, runner.sha256_bytes(b"an older version"), fingerprint)
    state.save()
    practice_file(root).write_text(wrong_answer())
    code, out = cli(capsys, root, "solution", "1")
    assert code == 1 and graded == [1] and "locked" in out
    assert progress(root)[CH1.stem]["passed"] is False


# ----------------------------------------------------------------------------- reset


BACKUP_NAME = re.compile(rf"{CH1.stem}\.\d{{8}}-\d{{6}}(-\d+)?\.py")


def test_reset_backs_up_then_restores_the_stub(root, capsys) -> None:
    work = "# my work in progress\n" + builder.stub_text(CH1).replace(
        "raise NotImplementedError", "pass  #", 1
    )
    practice_file(root).write_text(work)
    state = runner.Progress(root / "practice" / TRACK / runner.STATE_NAME)
    state.record(CH1.stem, True, runner.sha256_bytes(work.encode()), "x")
    state.save()
    code, out = cli(capsys, root, "reset", "1")
    assert code == 0
    backups = list((root / "practice" / TRACK / runner.BACKUP_DIR).iterdir())
    assert len(backups) == 1 and BACKUP_NAME.fullmatch(backups[0].name)
    assert backups[0].read_text() == work  # identical content
    assert backups[0].name in out  # the learner is told where it went
    assert practice_file(root).read_text() == builder.stub_text(CH1)
    assert progress(root)[CH1.stem]["passed"] is False
    # An untouched stub: nothing backed up, nothing written.
    before = practice_file(root).stat().st_mtime_ns
    code, out = cli(capsys, root, "reset", "1")
    assert code == 0 and "already" in out
    assert len(list(backups[0].parent.iterdir())) == 1
    assert practice_file(root).stat().st_mtime_ns == before


def test_reset_refuses_when_the_backup_folder_is_a_file(root, capsys) -> None:
    work = "# my work\n" + builder.stub_text(CH1)
    practice_file(root).write_text(work)
    blocker = root / "practice" / TRACK / runner.BACKUP_DIR
    blocker.write_bytes(b"not a folder")
    code, out = cli(capsys, root, "reset", "1")
    assert code == 2, out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and "peft-zoo: error:" in lines[0] and "is a file" in lines[0]
    assert runner.BACKUP_DIR in lines[0] and "Traceback" not in out
    assert practice_file(root).read_text() == work  # nothing lost
    assert blocker.read_bytes() == b"not a folder"


def test_backups_never_overwrite_each_other(root) -> None:
    paths, now = runner.Paths(root), runner._dt.datetime(2025, 1, 2, 3, 4, 5)
    first = runner.backup_file(paths, CH1, b"one", now)
    second = runner.backup_file(paths, CH1, b"two", now)
    assert first != second and first.read_bytes() == b"one" and second.read_bytes() == b"two"
    assert first.name == f"{CH1.stem}.20250102-030405.py" and BACKUP_NAME.fullmatch(second.name)


# ----------------------------------------------------------------------------- state file


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"ex01_lora_linear": 3}', ""])
def test_corrupt_progress_file_is_ignored_with_a_warning(root, capsys, content) -> None:
    state_file = root / "practice" / TRACK / runner.STATE_NAME
    state_file.write_text(content)
    code, out = cli(capsys, root)
    assert code == 0 and f"0/{TOTAL} passed" in out
    if content in ("{not json", "[1, 2]", ""):
        assert "warning" in out
    code, out = cli(capsys, root, "hint", "1")  # writes a fresh, valid state file
    assert code == 0 and progress(root)[CH1.stem]["hint_level"] == 1


def test_deleted_progress_file_is_recomputed(root, capsys) -> None:
    cli(capsys, root, "hint", "1")
    (root / "practice" / TRACK / runner.STATE_NAME).unlink()
    code, out = cli(capsys, root)
    assert code == 0 and "Next: challenge 1" in out and "warning" not in out


def test_two_commands_saving_progress_keep_both_changes(root) -> None:
    state_file = root / "practice" / TRACK / runner.STATE_NAME
    watcher, hinter = runner.Progress(state_file), runner.Progress(state_file)
    hinter.set_hint_level(CH1.stem, 2)
    hinter.save()
    watcher.record(CH1.stem, True, "abc", "def")  # loaded before the hint was saved
    watcher.save()
    assert progress(root)[CH1.stem] == {
        "passed": True,
        "sha256": "abc",
        "grader_sha256": "def",
        "hint_level": 2,
    }


# ----------------------------------------------------------------------------- watch


def test_watch_grades_after_a_change_and_moves_on(root, capsys, monkeypatch) -> None:
    """The polling logic; `check` above proves grading for real, so this one is fast."""
    saves, graded = [], []

    def learner_saves(seconds: float) -> None:  # instead of sleeping: the learner edits the file
        if not saves:
            practice_file(root).write_text(builder.answer_text(CH1))
            saves.append(seconds)

    def grade(paths, ch, **kwargs):
        graded.append(practice_file(root).read_text())
        return True

    monkeypatch.setattr(runner, "_sleep", learner_saves)
    monkeypatch.setattr(runner, "grade_one", grade)
    code, out = cli(capsys, root, "watch", "--interval", "0.01", "--max-rounds", "3")
    assert code == 0
    assert "not started" in out  # first look at the untouched stub: no grading
    assert graded == [builder.answer_text(CH1)]  # graded once, after the save
    assert "PASSED ✓  challenge 1" in out and saves == [0.01]
    assert progress(root)[CH1.stem]["passed"] is True


def test_watch_stops_cleanly_on_ctrl_c(root, capsys, monkeypatch) -> None:
    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "_sleep", interrupt)
    code, out = cli(capsys, root, "watch")
    assert code == 0 and "Stopped watching" in out


# ----------------------------------------------------------------------------- build and README


def test_build_check_passes_on_the_repository(capsys) -> None:
    code, out = cli(capsys, ROOT, "build", "--check")
    assert code == 0, out


def test_build_writes_everything_and_check_catches_an_edited_answer(tmp_path, capsys) -> None:
    code, out = cli(capsys, tmp_path, "build")
    assert code == 0 and (tmp_path / "practice" / TRACK / "README.md").read_text() == render_readme()
    assert cli(capsys, tmp_path, "build", "--check")[0] == 0
    answer = tmp_path / "solutions" / TRACK / f"{CH1.stem}.py"
    answer.write_text(answer.read_text() + "# edited by hand\n")
    code, out = cli(capsys, tmp_path, "build", "--check")
    assert code == 1 and f"{CH1.stem}.py" in out
    (tmp_path / "practice" / TRACK / "README.md").write_text("stale\n")
    code, out = cli(capsys, tmp_path, "build", "--check")
    assert code == 1 and "README.md" in out


def test_committed_readme_is_generated_from_the_manifest() -> None:
    committed = (ROOT / "practice" / TRACK / "README.md").read_text()
    assert committed == render_readme(), "practice README drifted: run `peft-zoo build`"
    for ch in CHALLENGES:
        assert f"### {ch.number:02d} · {ch.title}" in committed
        assert all(q in committed for q in ch.interview)
    for command in ("peft-zoo check N", "peft-zoo hint N", "peft-zoo watch", "--impl=solutions"):
        assert command in committed


# ----------------------------------------------------------------------------- root discovery


def test_root_discovery_order(root, tmp_path, monkeypatch) -> None:
    inner = root / "practice" / TRACK
    assert runner.find_root(cwd=inner) == root  # nearest parent holding practice/<track>
    monkeypatch.setenv(runner.ROOT_ENV, str(root))
    assert runner.find_root(cwd=tmp_path) == root
    assert runner.find_root(str(ROOT), cwd=tmp_path) == ROOT  # --root wins over the env
    monkeypatch.setenv(runner.ROOT_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(runner.RunnerError, match="no such directory"):
        runner.find_root(cwd=tmp_path)
    monkeypatch.delenv(runner.ROOT_ENV)
    if Path(runner.__file__).resolve().parents[2] == ROOT:  # an editable install
        assert runner.find_root(cwd=tmp_path) == ROOT
    monkeypatch.setattr(runner, "__file__", str(tmp_path / "site" / "peft_zoo" / "exercises" / "runner.py"))
    with pytest.raises(runner.RunnerError, match="cannot find the exercises"):
        runner.find_root(cwd=tmp_path)


def test_bad_root_and_no_root(tmp_path, capsys, monkeypatch) -> None:
    code, out = cli(capsys, tmp_path, "check", "1")
    assert code == 2 and "no practice/" in out
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(runner.ROOT_ENV, raising=False)
    monkeypatch.setattr(runner, "__file__", str(tmp_path / "site" / "peft_zoo" / "exercises" / "runner.py"))
    assert main(["hint", "1"]) == 2 and "cannot find the exercises" in capsys.readouterr().err
    assert main([]) == 0 and "peft-zoo tour" in capsys.readouterr().out  # outside a checkout: the help


def test_plain_ascii_terminal_does_not_crash(root, monkeypatch) -> None:
    raw = io.BytesIO()
    monkeypatch.setattr("sys.stdout", io.TextIOWrapper(raw, encoding="ascii"))
    assert runner.cmd_status(runner.Paths(root)) == 0
    text = raw.getvalue().decode("ascii")
    assert ".  1  not started" in text and "Next: challenge 1 - " in text


def test_committed_challenge_index_is_generated_and_links_every_challenge(tmp_path, capsys) -> None:
    from peft_zoo.exercises.readme import GUIDES, render_challenge_index

    committed = (ROOT / "docs" / "challenges.md").read_text()
    assert committed == render_challenge_index(), "docs/challenges.md drifted: run `peft-zoo build`"
    assert set(GUIDES) == {ch.number for ch in CHALLENGES}, "every challenge needs a guide and a notebook"
    for ch in CHALLENGES:
        assert f"../solutions/{TRACK}/{ch.stem}.py" in committed
        assert f"../practice/{TRACK}/test_{ch.stem}.py" in committed
    assert cli(capsys, tmp_path, "build")[0] == 0
    (tmp_path / "docs" / "challenges.md").write_text("stale\n")
    code, out = cli(capsys, tmp_path, "build", "--check")
    assert code == 1 and "challenges.md" in out
