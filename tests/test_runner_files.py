"""The exercise runner's files and loops: `reset` and its backups, the progress file, `watch`,
`build` and the generated pages, root discovery (the commands: tests/test_runner.py)."""

from __future__ import annotations

import datetime
import io
import re
from pathlib import Path

import pytest
from runner_helpers import CH1, ROOT, TOTAL, cli, make_root, practice_file, progress

from peft_zoo.cli import main
from peft_zoo.exercises import builder, runner
from peft_zoo.exercises.manifest import CHALLENGES, TRACK
from peft_zoo.exercises.readme import render_readme
from peft_zoo.exercises.runner import commands as runner_commands
from peft_zoo.exercises.runner import paths as runner_paths
from peft_zoo.exercises.runner import watch as runner_watch


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project root holding challenge 01 only: its pristine stub, grader and answer."""
    return make_root(tmp_path, monkeypatch)


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
    paths, now = runner.Paths(root), datetime.datetime(2025, 1, 2, 3, 4, 5)
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

    monkeypatch.setattr(runner_watch, "sleep", learner_saves)
    monkeypatch.setattr(runner_commands, "grade_one", grade)
    code, out = cli(capsys, root, "watch", "--interval", "0.01", "--max-rounds", "3")
    assert code == 0
    assert "not started" in out  # first look at the untouched stub: no grading
    assert graded == [builder.answer_text(CH1)]  # graded once, after the save
    assert "PASSED ✓  challenge 1" in out and saves == [0.01]
    assert progress(root)[CH1.stem]["passed"] is True


def test_watch_stops_cleanly_on_ctrl_c(root, capsys, monkeypatch) -> None:
    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(runner_watch, "sleep", interrupt)
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
    if Path(runner_paths.__file__).resolve().parents[3] == ROOT:  # an editable install
        assert runner.find_root(cwd=tmp_path) == ROOT
    monkeypatch.setattr(
        runner_paths, "__file__", str(tmp_path / "site" / "peft_zoo" / "exercises" / "runner" / "paths.py")
    )
    with pytest.raises(runner.RunnerError, match="cannot find the exercises"):
        runner.find_root(cwd=tmp_path)


def test_bad_root_and_no_root(tmp_path, capsys, monkeypatch) -> None:
    code, out = cli(capsys, tmp_path, "check", "1")
    assert code == 2 and "no practice/" in out
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(runner.ROOT_ENV, raising=False)
    monkeypatch.setattr(
        runner_paths, "__file__", str(tmp_path / "site" / "peft_zoo" / "exercises" / "runner" / "paths.py")
    )
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
