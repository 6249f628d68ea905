"""`peft-zoo interview` end to end, from scripted answers, on a temporary copy of challenge 01,
with the clock under the test's control; the session engine with fake question sources."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path
from types import SimpleNamespace

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
    run,
    saved_plan,
)
from runner_helpers import CH1, make_root

from peft_zoo.cli import main
from peft_zoo.exercises import builder
from peft_zoo.exercises.interview import bank, coding, numeric
from peft_zoo.exercises.interview import session as sessions
from peft_zoo.exercises.interview.console import Console
from peft_zoo.exercises.interview.history import History


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return make_root(tmp_path, monkeypatch)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return install_clock(monkeypatch)


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


def test_the_interview_stops_when_its_minutes_are_spent(root, tmp_path, capsys, monkeypatch) -> None:
    class Ticking(Clock):  # every look at the clock is a minute later
        def __call__(self) -> dt.datetime:
            self.now += dt.timedelta(minutes=1)
            return self.now

    monkeypatch.setattr(sessions, "CLOCK", Ticking())
    items = [("numeric", NUMERIC.id)] * 4
    saved_plan(root, *items, minutes=2)
    code, out = run(capsys, root, "interview", "--resume", "--answers", answers(tmp_path, "1", "2", "3"))
    assert code == 0 and "Time is up: 2 question(s) not asked." in out
    assert [r["seconds"] for r in history(root)[0]["results"]] == [60.0, 60.0]
    assert "right, 2 wrong" in out  # the two not asked are not counted wrong


def test_time_away_between_an_interruption_and_resume_does_not_count(root, tmp_path, capsys, clock) -> None:
    saved_plan(root, ("numeric", NUMERIC.id), minutes=3)
    clock.now += dt.timedelta(days=1)
    code, out = run(capsys, root, "interview", "--resume", "--answers", answers(tmp_path, "1"))
    assert code == 0 and "3.0 of 3 min left" in out and "Time is up" not in out


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


def script_for(plan: list[dict[str, str]]) -> list[str]:
    """Answers that get through ``plan``: a concept answer and ticks, a number, a skip."""
    lines = {"concept": ["my answer", "1"], "numeric": ["42"], "coding": ["skip"]}
    return [line for item in plan for line in lines[item["type"]]]


def test_a_seed_repeats_the_interview_exactly(root, tmp_path, capsys, clock) -> None:
    plan = sessions.build_plan(11, "all", 30, True)
    assert {item["type"] for item in plan} == {"concept", "numeric", "coding"}
    script = answers(tmp_path, *script_for(plan))
    outputs = []
    for _ in range(2):
        code, out = run(capsys, root, "interview", "--seed", "11", "--minutes", "30", "--answers", script)
        assert code == 0, out
        outputs.append(out)
    assert outputs[0] == outputs[1] and "seed 11" in outputs[0] and "Summary" in outputs[0]
    assert "\x1b[" not in outputs[0]  # no colour when the output is not a terminal
    assert [r["id"] for r in history(root)[0]["results"]] == [item["id"] for item in plan]
    assert history(root)[0]["results"] == history(root)[1]["results"]
    assert sessions.build_plan(11, "all", 30, True) != sessions.build_plan(12, "all", 30, True)


def test_without_a_seed_one_is_drawn_and_printed(root, tmp_path, capsys, clock) -> None:
    code, out = run(
        capsys, root, "interview", "--no-coding", "--minutes", "3", "--answers", answers(tmp_path)
    )
    assert code == sessions.EXIT_INTERRUPTED
    seed = json.loads((practice(root) / sessions.SESSION_NAME).read_text())["seed"]
    assert f"repeat it with --seed {seed}" in out


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


# ----------------------------------------------------------------------------- injected fakes


def fake_sources(grades: list[bool]) -> sessions.Sources:
    """One concept question with three points, one numeric question (answer 12), and a coding
    task whose successive gradings return ``grades``; nothing touches the bank or pytest."""
    concept = bank.ConceptQuestion(
        id="fake.q", topic="lora", guide="lora.md", prompt="Why?", answer="Because.", points=("a", "b", "c")
    )
    number = numeric.NumericQuestion(
        id="fake:1", kind="fake", topic="serving", prompt="How many?", answer=12.0, unit="things",
        rel_tol=0.0, worked="3 * 4 = 12",
    )  # fmt: skip
    task = coding.CodingTask(1, "plain", 10.0)
    results = iter(grades)
    return sessions.Sources(
        concepts=lambda topic: (concept,),
        concept=lambda qid: concept,
        kinds=lambda topic: ("fake",),
        numeric=lambda qid: number,
        grade_numeric=lambda q, text: text.strip() == "12",
        choose_task=lambda rng, topic, minutes: task,
        task=lambda qid: task,
        prepare=lambda task, paths: Path("/nowhere/ex01.py"),
        grade=lambda task, paths, timeout: coding.CodingResult(next(results), "fake report"),
    )


def fake_session(lines: list[str], grades: list[bool], clock: Clock, tmp_path: Path):
    plan = [{"type": "concept", "id": "fake.q"}, {"type": "numeric", "id": "fake:1"},
            {"type": "coding", "id": "coding:1:plain"}]  # fmt: skip
    out = io.StringIO()
    state = sessions.new_state(5, "all", 30.0, plan, clock())
    session = sessions.Session(
        SimpleNamespace(practice=tmp_path), Console(iter(lines), out), state, clock=clock,
        sources=fake_sources(grades),
    )  # fmt: skip
    return session, out


def test_injected_sources_a_failed_grading_allows_another_done(tmp_path) -> None:
    clock = Clock()
    session, out = fake_session(["answer", "1 2", "12", "done", "done"], [False, True], clock, tmp_path)
    assert session.run() == 0
    text = out.getvalue()
    assert "Right: 2 of 3 points" in text and "Right: 12 things" in text
    assert text.count("fake report") == 2 and "Passed." in text
    assert [r["right"] for r in History(tmp_path).records[0]["results"]] == [True, True, True]


def test_injected_sources_wrong_answers_and_a_keyboard_interrupt(tmp_path) -> None:
    clock = Clock()
    session, out = fake_session(["answer", "1", "13", "skip"], [], clock, tmp_path)
    assert session.run() == 0
    assert "Not yet: 1 of 3 points" in out.getvalue() and "Worked: 3 * 4 = 12" in out.getvalue()

    def interrupt(task, paths, timeout):
        raise KeyboardInterrupt

    session, out = fake_session(["answer", "all", "12", "done"], [], clock, tmp_path)
    session.sources = sessions.Sources(**{**vars(fake_sources([])), "grade": interrupt})
    assert session.run() == sessions.EXIT_INTERRUPTED and "--resume" in out.getvalue()
    saved = json.loads((tmp_path / sessions.SESSION_NAME).read_text())
    assert len(saved["results"]) == 2 and saved["coding_started"] == T0.isoformat()


def test_a_saved_plan_naming_an_unknown_question_is_a_clear_error(root, tmp_path, capsys, clock) -> None:
    saved_plan(root, ("concept", "no.such-question"))
    code, out = run(capsys, root, "interview", "--resume", "--answers", answers(tmp_path, "x"))
    assert code == 2 and "cannot be resumed" in out and "--discard" in out


@pytest.mark.parametrize(
    "change",
    [{"started": "yesterday"}, {"minutes": "45"}, {"results": [{"right": "yes"}]}, {"plan": "none"}],
)
def test_a_damaged_session_file_is_refused_naming_discard(root, tmp_path, capsys, clock, change) -> None:
    saved_plan(root, ("numeric", NUMERIC.id))
    path = practice(root) / sessions.SESSION_NAME
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    before = path.read_bytes()
    code, out = run(capsys, root, "interview", "--resume", "--answers", answers(tmp_path, "1"))
    assert code == 2 and "cannot be resumed" in out and "--discard" in out
    assert path.read_bytes() == before


def test_answers_from_stdin(root, capsys, clock, monkeypatch) -> None:
    saved_plan(root, ("numeric", NUMERIC.id))
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{NUMERIC.answer}\n"))
    code, out = run(capsys, root, "interview", "--resume", "--answers", "-")
    assert code == 0 and "Right:" in out and history(root)[0]["results"][0]["right"] is True


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_without_no_color(monkeypatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    tty = Tty()
    Console(iter(()), tty).verdict("Right.", True)
    assert tty.getvalue() == "\x1b[32mRight.\x1b[0m\n"
    monkeypatch.setenv("NO_COLOR", "1")
    tty = Tty()
    Console(iter(()), tty).verdict("Not yet.", False)
    plain = io.StringIO()
    monkeypatch.delenv("NO_COLOR")
    Console(iter(()), plain).verdict("Right.", True)
    assert tty.getvalue() == "Not yet.\n" and plain.getvalue() == "Right.\n"


def test_numbers_are_shown_as_a_reader_writes_them() -> None:
    shown = [sessions.show_number(x) for x in (1622016.0, 4.126953125, 3592.9824561, 0.00123456789)]
    assert shown == ["1,622,016", "4.12695", "3,592.98", "0.00123457"]


def test_a_missing_answers_file_is_a_clear_error_and_writes_nothing(root, tmp_path, capsys, clock) -> None:
    code, out = run(capsys, root, "interview", "--seed", "1", "--answers", str(tmp_path / "nope.txt"))
    assert code == 2 and "nope.txt: cannot read it" in out
    assert not any(p.name.startswith(".interview") for p in practice(root).iterdir())


def test_the_grade_keyword_replaces_only_the_coding_grader(tmp_path) -> None:
    def grade(task, paths, timeout):
        return coding.CodingResult(True, "ok")

    state = sessions.new_state(1, "all", 10.0, [], T0)
    session = sessions.Session(SimpleNamespace(practice=tmp_path), Console(iter(())), state, grade=grade)
    assert session.sources.grade is grade and session.sources.concept is bank.by_id
