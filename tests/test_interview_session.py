"""`peft-zoo interview` and `peft-zoo review` end to end, from scripted answers, on a temporary
copy of challenge 01, with the clock under the test's control."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from runner_helpers import CH1, cli, make_root

from peft_zoo.cli import main
from peft_zoo.exercises import builder
from peft_zoo.exercises.interview import bank, coding, numeric
from peft_zoo.exercises.interview import session as sessions
from peft_zoo.exercises.interview.history import HISTORY_NAME, History
from peft_zoo.exercises.manifest import TRACK

T0 = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.timezone.utc)
CONCEPT = bank.by_id(bank.questions("lora")[0].id)
NUMERIC = numeric.generate("lora_trainable", 3)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return make_root(tmp_path, monkeypatch)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(sessions, "CLOCK", fake)
    return fake


def practice(root: Path) -> Path:
    return root / "practice" / TRACK


def answers(tmp_path: Path, *lines: str) -> str:
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


def run(capsys, root: Path, *args: str) -> tuple[int, str]:
    return cli(capsys, root, *args)


# ----------------------------------------------------------------------------- the three kinds


@pytest.mark.parametrize(
    ("ticks", "right"), [("all", True), ("none", False), ("1", len(CONCEPT.checklist()) == 1)]
)
def test_concept_question_right_and_wrong(root, tmp_path, capsys, clock, ticks: str, right: bool) -> None:
    saved_plan(root, ("concept", CONCEPT.id))
    code, out = run(capsys, root, "interview", "--resume", "--answers", answers(tmp_path, "my answer", ticks))
    assert code == 0, out
    assert CONCEPT.prompt in out and "Key points:" in out and CONCEPT.checklist()[0] in out
    [record] = history(root)
    assert record["results"][0]["right"] is right and record["results"][0]["card"] == CONCEPT.id


def test_concept_point_marks_are_asked_again_when_unclear(root, tmp_path, capsys, clock) -> None:
    saved_plan(root, ("concept", CONCEPT.id))
    code, out = run(
        capsys, root, "interview", "--resume", "--answers", answers(tmp_path, "x", "most", "99", "all")
    )
    assert code == 0 and out.count("Give point numbers between 1 and") == 2
    assert history(root)[0]["results"][0]["right"] is True


def test_numeric_question_right_and_wrong(root, tmp_path, capsys, clock) -> None:
    saved_plan(root, ("numeric", NUMERIC.id), ("numeric", NUMERIC.id))
    script = answers(tmp_path, f"{NUMERIC.answer:,.0f}", str(NUMERIC.answer * 2))
    code, out = run(capsys, root, "interview", "--resume", "--answers", script)
    assert code == 0, out
    assert [r["right"] for r in history(root)[0]["results"]] == [True, False]
    assert f"Worked: {NUMERIC.worked}" in out and out.count("Worked:") == 1


def test_coding_question_graded_for_real_right_and_wrong(root, tmp_path, capsys, clock) -> None:
    task = coding.CodingTask(1, "plain", 10.0)
    saved_plan(root, ("coding", task.id))
    code, out = run(capsys, root, "interview", "--resume", "--answers", answers(tmp_path, "done", "skip"))
    assert code == 0 and "not implemented" in out
    assert history(root)[0]["results"][0]["right"] is False
    coding.work_file(task, coding_paths(root)).write_text(builder.answer_text(CH1))
    saved_plan(root, ("coding", task.id))
    code, out = run(capsys, root, "interview", "--resume", "--answers", answers(tmp_path, "later", "done"))
    assert code == 0 and "Type done or skip." in out and "Passed." in out
    assert history(root)[1]["results"][0]["right"] is True


def coding_paths(root: Path):
    from peft_zoo.exercises.runner.paths import Paths

    return Paths(root)


# ----------------------------------------------------------------------------- interruptions


def test_resume_after_an_interruption_loses_nothing(root, tmp_path, capsys, clock) -> None:
    saved_plan(root, ("numeric", NUMERIC.id), ("concept", CONCEPT.id))
    code, out = run(
        capsys, root, "interview", "--resume", "--answers", answers(tmp_path, str(NUMERIC.answer))
    )
    assert code == sessions.EXIT_INTERRUPTED and "peft-zoo interview --resume" in out
    assert history(root) == []
    code, out = run(capsys, root, "interview", "--seed", "3")
    assert code == 2 and "--resume" in out and "--discard" in out
    code, out = run(capsys, root, "interview", "--resume", "--answers", answers(tmp_path, "x", "all"))
    assert code == 0 and "at question 2" in out
    assert [r["right"] for r in history(root)[0]["results"]] == [True, True]
    assert not (practice(root) / sessions.SESSION_NAME).exists()


def test_the_coding_clock_keeps_running_across_an_interruption(root, tmp_path, capsys, clock) -> None:
    saved_plan(root, ("coding", "coding:1:plain"))
    code, out = run(capsys, root, "interview", "--resume", "--answers", answers(tmp_path))
    assert code == sessions.EXIT_INTERRUPTED and "10.0 min left" in out
    clock.now += dt.timedelta(minutes=11)
    code, out = run(capsys, root, "interview", "--resume", "--answers", answers(tmp_path, "done"))
    assert code == 0 and "Time is up for the coding question" in out
    result = history(root)[0]["results"][0]
    assert result["right"] is False and result["seconds"] == 660.0


def test_the_interview_stops_when_its_minutes_are_spent(root, tmp_path, capsys, clock) -> None:
    saved_plan(root, ("numeric", NUMERIC.id), ("concept", CONCEPT.id), minutes=5)
    clock.now += dt.timedelta(minutes=6)
    code, out = run(capsys, root, "interview", "--resume", "--answers", answers(tmp_path))
    assert code == 0 and "Time is up: 2 question(s) not asked." in out
    assert history(root)[0]["results"] == []


def test_resume_and_bad_session_files_are_clear_errors(root, tmp_path, capsys, clock) -> None:
    code, out = run(capsys, root, "interview", "--resume")
    assert code == 2 and "no interrupted interview" in out
    (practice(root) / sessions.SESSION_NAME).write_text("{not json")
    code, out = run(capsys, root, "interview", "--resume")
    assert code == 2 and "--discard" in out
    empty = answers(tmp_path)
    code, out = run(
        capsys,
        root,
        "interview",
        "--discard",
        "--seed",
        "1",
        "--no-coding",
        "--minutes",
        "3",
        "--answers",
        empty,
    )
    assert code == sessions.EXIT_INTERRUPTED  # no answers: interrupted, the new session saved
    assert json.loads((practice(root) / sessions.SESSION_NAME).read_text())["seed"] == 1


# ----------------------------------------------------------------------------- plans and arguments


def test_a_seed_repeats_the_interview_exactly(root, tmp_path, capsys, clock, monkeypatch) -> None:
    monkeypatch.setattr(
        coding, "grade_task", lambda task, paths, timeout: coding.CodingResult(False, "graded")
    )
    script = answers(tmp_path, *["1", "none"] * 20)
    outputs = []
    for _ in range(2):
        code, out = run(
            capsys, root, "interview", "--seed", "11", "--minutes", "30", "--answers", script, "--discard"
        )
        assert code in (0, sessions.EXIT_INTERRUPTED), out
        outputs.append(out)
    assert outputs[0] == outputs[1] and "seed 11" in outputs[0]
    assert sessions.build_plan(11, "all", 30, True) == sessions.build_plan(11, "all", 30, True)
    assert sessions.build_plan(11, "all", 30, True) != sessions.build_plan(12, "all", 30, True)


@pytest.mark.parametrize("topic", ["lora", "adapters", "quantisation", "serving"])
def test_topic_filters_every_question(topic: str) -> None:
    for seed in range(5):
        plan = sessions.build_plan(seed, topic, 60, True)
        assert plan and any(item["type"] == "coding" for item in plan)
        for item in plan:
            if item["type"] == "concept":
                assert bank.by_id(item["id"]).topic == topic
            elif item["type"] == "numeric":
                assert numeric.from_id(item["id"]).topic == topic
            else:
                assert coding.task_from_id(item["id"]).topic == topic


@pytest.mark.parametrize(
    "args",
    [["--topic", "maths"], ["--minutes", "abc"], ["--minutes", "0"], ["--minutes", "1e9"], ["--seed", "-1"],
     ["--seed", "x"], ["--resume", "--discard"]],
)  # fmt: skip
def test_bad_arguments_exit_2_and_write_nothing(root, capsys, args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["interview", *args, "--root", str(root)])
    assert exc.value.code == 2
    assert not any(p.name.startswith(".interview") for p in practice(root).iterdir())


# ----------------------------------------------------------------------------- history and review


def record(at: dt.datetime, card: str, right: bool) -> dict:
    result = {"card": card, "id": card, "type": "concept", "topic": "lora", "right": right, "seconds": 5.0}
    return {"kind": "interview", "at": at.isoformat(), "seed": 1, "topic": "lora", "results": [result]}


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
