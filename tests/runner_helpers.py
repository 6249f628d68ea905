"""Shared set-up of the exercise runner's tests (tests/test_runner.py, tests/test_runner_files.py):
a temporary project holding challenge 01, the `peft-zoo` command run on it, its progress file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from peft_zoo.cli import main
from peft_zoo.exercises import builder, runner
from peft_zoo.exercises.manifest import BY_NUMBER, CHALLENGES, TRACK
from peft_zoo.exercises.runner import grade as runner_grade

ROOT = Path(__file__).resolve().parents[1]
CH1 = BY_NUMBER[1]
TOTAL = len(CHALLENGES)


def make_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
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


def spy_on_pytest_runs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every pytest subprocess the runner starts (they still run for real)."""
    calls: list[list[str]] = []
    real = runner_grade.run_pytest

    def spy(cmd, **kwargs):
        calls.append(list(cmd))
        return real(cmd, **kwargs)

    monkeypatch.setattr(runner_grade, "run_pytest", spy)
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
