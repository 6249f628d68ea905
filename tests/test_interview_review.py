"""The interview history (one bad line never loses the others) and `peft-zoo review`'s
Leitner schedule over simulated days, end to end from scripted answers."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from interview_helpers import (
    CONCEPT,
    NUMERIC,
    T0,
    Clock,
    answers,
    history,
    install_clock,
    practice,
    record,
    run,
    saved_plan,
)
from runner_helpers import make_root

from peft_zoo.exercises.interview.history import HISTORY_NAME, History


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return make_root(tmp_path, monkeypatch)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return install_clock(monkeypatch)


# ----------------------------------------------------------------------------- history and review


def test_a_corrupt_history_line_is_set_aside_and_the_rest_kept(root, tmp_path, capsys, clock) -> None:
    good = json.dumps(record(T0 - dt.timedelta(days=9), CONCEPT.id, True))
    path = practice(root) / HISTORY_NAME
    path.write_text(f"{good}\n{{garbled\n{json.dumps({'kind': 'interview'})}\n{good}\n")
    saved_plan(root, ("numeric", NUMERIC.id))
    code, out = run(capsys, root, "interview", "--resume", "--answers", answers(tmp_path, "0"))
    assert code == 0 and "2 unreadable line(s)" in out
    assert len(history(root)) == 3
    corrupt = (practice(root) / (HISTORY_NAME + ".corrupt")).read_text()
    assert "{garbled" in corrupt and '{"kind": "interview"}' in corrupt


def test_a_binary_history_file_is_copied_aside_before_a_new_one_starts(root, tmp_path, capsys, clock) -> None:
    junk = bytes(range(128, 256)) * 4
    (practice(root) / HISTORY_NAME).write_bytes(junk)
    saved_plan(root, ("numeric", NUMERIC.id))
    code, out = run(capsys, root, "interview", "--resume", "--answers", answers(tmp_path, "0"))
    assert code == 0 and "is not text" in out
    assert (practice(root) / (HISTORY_NAME + ".corrupt")).read_bytes() == junk
    assert len(history(root)) == 1


def test_review_spaces_a_missed_question_out_over_the_days(root, tmp_path, capsys) -> None:
    (practice(root) / HISTORY_NAME).write_text(json.dumps(record(T0, CONCEPT.id, False)) + "\n")
    day = dt.timedelta(days=1)

    def review(at: dt.datetime, *lines: str) -> tuple[int, str]:
        return run(capsys, root, "review", "--now", at.isoformat(), "--answers", answers(tmp_path, *lines))

    code, out = review(T0 + day / 2)
    assert code == 0 and "next one due 2026-12-02 09:00" in out
    code, out = review(T0 + day, "x", "all")
    assert code == 0 and "1 question(s) due" in out and CONCEPT.prompt in out
    assert "next one due 2026-12-05 09:00" in review(T0 + 2 * day)[1]  # right: 3 days later
    review(T0 + 4 * day, "x", "none")  # a miss starts over: due a day later
    assert "next one due 2026-12-06 09:00" in review(T0 + 4 * day)[1]
    for at in (5, 8, 15, 31):  # right at 1, 3, 7, 16 days: learned
        review(T0 + at * day, "x", "all")
    assert "no missed question on record" in review(T0 + 60 * day)[1]


def test_review_asks_a_missed_numeric_kind_with_a_fresh_geometry(root, tmp_path, capsys) -> None:
    missed = record(T0, "lora_trainable", False)
    missed["results"][0].update(type="numeric", id=NUMERIC.id)
    (practice(root) / HISTORY_NAME).write_text(json.dumps(missed) + "\n")
    at = T0 + dt.timedelta(days=1)
    code, out = run(capsys, root, "review", "--now", at.isoformat(), "--answers", answers(tmp_path, "1"))
    assert code == 0 and "How many trainable parameters?" in out
    asked = History(practice(root)).records[-1]["results"][0]
    assert asked["card"] == "lora_trainable" and asked["id"].startswith("lora_trainable:")


def test_nothing_on_record_or_a_bad_date(root, capsys) -> None:
    code, out = run(capsys, root, "review", "--now", T0.isoformat())
    assert code == 0 and "no missed question on record" in out
    with pytest.raises(SystemExit) as exc:
        run(capsys, root, "review", "--now", "tomorrow")
    assert exc.value.code == 2 and "--now takes an ISO date" in capsys.readouterr().err
    assert not any(p.name.startswith(".interview") for p in practice(root).iterdir())


def test_review_reads_past_a_garbled_line_and_says_so(root, tmp_path, capsys) -> None:
    good = json.dumps(record(T0, CONCEPT.id, False))
    (practice(root) / HISTORY_NAME).write_text(f"not json\n{good}\n")
    at = (T0 + dt.timedelta(days=1)).isoformat()
    code, out = run(capsys, root, "review", "--now", at, "--answers", answers(tmp_path, "x", "all"))
    assert code == 0 and "1 question(s) due" in out and "1 unreadable line(s)" in out
    assert [r["kind"] for r in history(root)] == ["interview", "review"]
    assert "not json" in (practice(root) / (HISTORY_NAME + ".corrupt")).read_text()


def test_the_schedule_boxes_step_by_step(tmp_path) -> None:
    """The Leitner boxes straight from History.cards: 1 day after a miss, then 3, 7, 16."""
    h = History(tmp_path)
    day = dt.timedelta(days=1)
    h.append(record(T0, "c", False), T0)
    assert h.cards()["c"].due == T0 + day and not h.due(T0 + day / 2) and h.due(T0 + day)
    for box, (at, wait) in enumerate([(1, 3), (4, 7), (11, 16)], 1):
        h.append(record(T0 + at * day, "c", True), T0)
        assert (h.cards()["c"].box, h.cards()["c"].due) == (box, T0 + (at + wait) * day)
    h.append(record(T0 + 27 * day, "c", True), T0)
    assert "c" not in h.cards()
    assert len(History(tmp_path).records) == 5  # every answer is on disk


def test_a_card_whose_question_left_the_bank_is_skipped_and_counted(root, tmp_path, capsys) -> None:
    lines = [record(T0, "gone.question", False), record(T0, CONCEPT.id, False)]
    (practice(root) / HISTORY_NAME).write_text("".join(json.dumps(r) + "\n" for r in lines))
    at = (T0 + dt.timedelta(days=1)).isoformat()
    code, out = run(capsys, root, "review", "--now", at, "--answers", answers(tmp_path, "x", "all"))
    assert code == 0 and "1 question(s) due" in out and "1 card(s) no longer asked" in out
    assert CONCEPT.prompt in out and len(history(root)) == 3
