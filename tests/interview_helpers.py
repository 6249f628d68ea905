"""Shared set-up of the interview tests (tests/test_interview_session.py, tests/test_interview_review.py):
a controllable clock, answers files, a saved session to resume, the history file's records."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from runner_helpers import cli

from peft_zoo.exercises.interview import bank, numeric
from peft_zoo.exercises.interview import session as sessions
from peft_zoo.exercises.interview.history import History
from peft_zoo.exercises.manifest import TRACK

T0 = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.timezone.utc)
CONCEPT = bank.by_id(bank.questions("lora")[0].id)
NUMERIC = numeric.generate("lora_trainable", 3)


class Clock:
    """A clock the test moves by hand (``clock.now += ...``); starts at ``T0``."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


def install_clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(sessions, "CLOCK", fake)
    return fake


def practice(root: Path) -> Path:
    return root / "practice" / TRACK


def answers(tmp_path: Path, *lines: str) -> str:
    """A new answers file holding ``lines``, one per line; its path."""
    path = tmp_path / f"answers{len(list(tmp_path.glob('answers*')))}.txt"
    path.write_text("".join(f"{line}\n" for line in lines))
    return str(path)


def saved_plan(root: Path, *items: tuple[str, str], minutes: float = 45.0) -> None:
    """Put an interrupted interview with exactly ``items`` in place, to be run with --resume."""
    plan = [{"type": t, "id": i} for t, i in items]
    state = sessions.new_state(1, "all", minutes, plan, T0)
    (practice(root) / sessions.SESSION_NAME).write_text(json.dumps(state))


def history(root: Path) -> list[dict]:
    return History(practice(root)).records


def run(capsys: pytest.CaptureFixture[str], root: Path, *args: str) -> tuple[int, str]:
    """``peft-zoo ARGS --root ROOT``: exit code and stdout + stderr."""
    return cli(capsys, root, *args)


def record(at: dt.datetime, card: str, right: bool) -> dict:
    """A history record of one concept answer."""
    result = {"card": card, "id": card, "type": "concept", "topic": "lora", "right": right, "seconds": 5.0}
    return {"kind": "interview", "at": at.isoformat(), "seed": 1, "topic": "lora", "results": [result]}
