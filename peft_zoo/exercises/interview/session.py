"""The mock interview: a seeded plan of questions, asked against the clock, saved after every
answer so that an interruption loses nothing, and summarised into the history.

Grading rules:

- a concept question is right when the candidate ticks at least two thirds of its key points
  (2 of 3, 3 of 4, 4 of 5; 1 of 1 or 2 of 2 for short lists);
- a numeric question is right when :func:`.numeric.grade` accepts the answer (the question's
  stated relative tolerance);
- the coding question is right when its grader passes within the task's own time budget.
  Its clock starts when the task is first shown and keeps running across interruptions (the
  start time is in the session file), as it would while someone works on the code.

The interview's time is the sum of the time spent on its questions (from showing each one to
its last answer; the coding question's by its own clock). Before each question that sum is
compared with ``--minutes``; once it is spent the rest of the plan is not asked, and counts
as neither right nor wrong. Time between an interruption and ``--resume`` is not counted,
except on the coding question's clock.

The session file (``practice/<track>/.interview-session.json``, written atomically after each
answer) holds ``{"version": 1, "seed", "topic", "minutes", "plan": [{"type", "id"}, ...],
"results": [history results], "started": ISO time, "coding_started": ISO time | null}``. An
interruption in the middle of a concept or numeric question asks that question again on resume.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ...core.io import atomic_write
from ..runner.progress import Clock, utc_now
from . import bank, coding, numeric
from .console import Console, parse_points
from .history import History, aware_time, valid_results
from .questions import ConceptQuestion, NumericQuestion

SESSION_NAME = ".interview-session.json"
CONCEPT_MINUTES, NUMERIC_MINUTES = 4.0, 3.0
EXIT_INTERRUPTED = 3
ITEM_TYPES = ("concept", "numeric", "coding")
STATE_KEYS = ("version", "seed", "topic", "minutes", "plan", "results", "started", "coding_started")
Grader = Callable[["coding.CodingTask", Any, float], "coding.CodingResult"]


class Interrupted(Exception):
    """The answers ran out (or Ctrl-C) in the middle of a question."""


CLOCK: Clock = utc_now  # the commands read the time here (tests replace it)


@dataclass(frozen=True)
class Sources:
    """Where questions come from and how the coding task is graded; tests pass fakes.

    The defaults look the functions up when a ``Sources`` is made, so a test that
    monkeypatches e.g. ``coding.grade_task`` is seen by the next session."""

    concepts: Callable[[str], tuple[ConceptQuestion, ...]] = field(default_factory=lambda: bank.questions)
    concept: Callable[[str], ConceptQuestion] = field(default_factory=lambda: bank.by_id)
    kinds: Callable[[str], tuple[str, ...]] = field(default_factory=lambda: numeric.kinds)
    numeric: Callable[[str], NumericQuestion] = field(default_factory=lambda: numeric.from_id)
    grade_numeric: Callable[[NumericQuestion, str], bool] = field(default_factory=lambda: numeric.grade)
    choose_task: Callable[[random.Random, str, float], coding.CodingTask | None] = field(
        default_factory=lambda: coding.choose_task
    )
    task: Callable[[str], coding.CodingTask] = field(default_factory=lambda: coding.task_from_id)
    prepare: Callable[[coding.CodingTask, Any], Path] = field(default_factory=lambda: coding.prepare)
    grade: Callable[[coding.CodingTask, Any, float], coding.CodingResult] = field(
        default_factory=lambda: coding.grade_task
    )


def build_plan(
    seed: int, topic: str, minutes: float, with_coding: bool, sources: Sources | None = None
) -> list[dict[str, str]]:
    """The questions of a ``minutes``-long interview on ``topic``, drawn from ``seed`` only:
    concept and numeric questions in turn (about 4 and 3 minutes each), and (when it fits in
    half the time) one coding task last, sized by its own estimate. Each item is
    ``{"type": "concept" | "numeric" | "coding", "id": ...}``."""
    src = sources or Sources()
    rng = random.Random(f"interview:{seed}:{topic}")
    task = src.choose_task(rng, topic, minutes / 2) if with_coding else None
    budget = minutes - (task.minutes if task else 0.0)
    concepts = list(src.concepts(topic))
    rng.shuffle(concepts)
    kinds = list(src.kinds(topic))
    plan: list[dict[str, str]] = []
    while budget >= NUMERIC_MINUTES and (concepts or kinds):
        if concepts and (len(plan) % 2 == 0 or not kinds) and budget >= CONCEPT_MINUTES:
            plan.append({"type": "concept", "id": concepts.pop().id})
            budget -= CONCEPT_MINUTES
        elif kinds:
            kind = rng.choice(kinds)
            plan.append({"type": "numeric", "id": f"{kind}:{rng.randrange(10**6)}"})
            budget -= NUMERIC_MINUTES
        else:
            break
    if task is not None:
        plan.append({"type": "coding", "id": task.id})
    return plan


def plan_problems(plan: object, sources: Sources | None = None) -> list[str]:
    """What is wrong with a stored plan (items of unknown type, ids no source knows); []."""
    if not isinstance(plan, list):
        return ["the plan is not a list"]
    src, problems = sources or Sources(), []
    lookup = {"concept": src.concept, "numeric": src.numeric, "coding": src.task}
    for k, item in enumerate(plan, 1):
        if not isinstance(item, dict) or item.get("type") not in ITEM_TYPES:
            problems.append(f"item {k} is not a question")
            continue
        try:
            lookup[item["type"]](str(item.get("id")))
        except (KeyError, ValueError, TypeError) as err:
            problems.append(f"item {k}: {err}")
    return problems


def state_problems(state: object, sources: Sources | None = None) -> list[str]:
    """What keeps a session file's content from being resumed; [] when it is sound."""
    if not isinstance(state, dict):
        return ["not a JSON object"]
    problems = [f"no {key!r}" for key in STATE_KEYS if key not in state]
    if problems:
        return problems
    if aware_time(state["started"]) is None or not (
        state["coding_started"] is None or aware_time(state["coding_started"]) is not None
    ):
        problems.append("a start time is not an ISO time with a zone")
    minutes = state["minutes"]
    if isinstance(minutes, bool) or not isinstance(minutes, int | float) or minutes < 0:
        problems.append("'minutes' is not a number")
    if not isinstance(state["results"], list) or not valid_results(state["results"]):
        problems.append("'results' are not answers")
    return problems + plan_problems(state["plan"], sources)


def show_number(x: float) -> str:
    """``x`` for a reader: ``1,622,016`` for a whole number, else 6 significant digits
    without an exponent (``3,592.98``, ``4.12695``)."""
    if not math.isfinite(x) or abs(x) < 1:
        return f"{x:.6g}"
    if x == int(x):
        return f"{int(x):,}"
    digits = max(0, 6 - len(str(int(abs(x)))))
    text = f"{x:,.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def new_state(
    seed: int, topic: str, minutes: float, plan: list[dict[str, str]], now: dt.datetime
) -> dict[str, Any]:
    """The session file's content at the start: plan, seed, no results, the start time."""
    return {"version": 1, "seed": seed, "topic": topic, "minutes": minutes, "plan": plan, "results": [],
            "started": now.isoformat(), "coding_started": None}  # fmt: skip


class Session:
    """One interview (or review) being run; ``state`` is what the session file holds."""

    def __init__(
        self,
        paths: Any,
        console: Console,
        state: dict[str, Any],
        *,
        clock: Clock = utc_now,
        grade: Grader | None = None,
        sources: Sources | None = None,
        timeout: float = 900.0,
        kind: str = "interview",
    ) -> None:
        self.paths, self.console, self.state, self.clock = paths, console, state, clock
        self.sources = sources or Sources()
        if grade is not None:  # the original keyword: only the coding grader replaced
            self.sources = replace(self.sources, grade=grade)
        self.timeout, self.kind = timeout, kind

    @property
    def state_path(self) -> Path:
        return Path(self.paths.practice) / SESSION_NAME

    def save(self) -> None:
        if self.kind == "interview":
            atomic_write(self.state_path, json.dumps(self.state, indent=1).encode("utf-8"))

    def elapsed(self) -> float:
        """Seconds spent on the questions answered so far, and on the coding question by its
        clock if it was shown and is not answered yet (see the module docstring)."""
        results, started = self.state["results"], self.state["coding_started"]
        spent = float(sum(r["seconds"] for r in results))
        if started is not None and not any(r["type"] == "coding" for r in results):
            spent += (self.clock() - dt.datetime.fromisoformat(started)).total_seconds()
        return spent

    def minutes_left(self) -> float:
        """What is left of the interview's time budget, in minutes (never below 0)."""
        return max(0.0, self.state["minutes"] - self.elapsed() / 60)

    def run(self) -> int:
        """Ask what is left of the plan; 0 when finished, EXIT_INTERRUPTED when interrupted."""
        plan, results = self.state["plan"], self.state["results"]
        try:
            for index in range(len(results), len(plan)):
                if self.kind == "interview" and self.elapsed() >= 60 * self.state["minutes"]:
                    self.console.say(f"\nTime is up: {len(plan) - index} question(s) not asked.")
                    break
                self.console.say(f"\n[{index + 1}/{len(plan)}] {plan[index]['type']} question")
                results.append(self.ask(plan[index]))
                self.save()
        except (Interrupted, KeyboardInterrupt):
            return self.interrupted()
        self.finish()
        return 0

    def ask(self, item: dict[str, str]) -> dict[str, Any]:
        shown = self.clock()
        if item["type"] == "concept":
            q = self.sources.concept(item["id"])
            right, card, topic = self.concept(q), q.id, q.topic
        elif item["type"] == "numeric":
            nq = self.sources.numeric(item["id"])
            right, card, topic = self.numeric(nq), nq.kind, nq.topic
        else:
            task = self.sources.task(item["id"])
            right, card, topic = self.coding(task), task.id, task.topic
            shown = dt.datetime.fromisoformat(self.state["coding_started"])
        seconds = round((self.clock() - shown).total_seconds(), 1)
        return {"card": card, "id": item["id"], "type": item["type"], "topic": topic, "right": right,
                "seconds": seconds}  # fmt: skip

    def answer(self, prompt: str, *, multiline: bool = False) -> str:
        text = self.console.ask(prompt, multiline=multiline)
        if text is None:
            raise Interrupted
        return text

    def concept(self, q: ConceptQuestion) -> bool:
        say = self.console.say
        say(f"{q.topic} {self.console.dot} worked answer in docs/{q.guide}\n{q.prompt}")
        self.answer("Your answer (an empty line ends it): ", multiline=True)
        points = q.checklist()
        say("Model answer:\n" + q.answer.strip() + "\nKey points:")
        for k, point in enumerate(points, 1):
            say(f"  {k}. {point}")
        covered: set[int] | None = None
        for _ in range(3):
            covered = parse_points(
                self.answer("Which did you cover? (e.g. '1 3', 'all', 'none'): "), len(points)
            )
            if covered is not None:
                break
            say(f"Give point numbers between 1 and {len(points)}, 'all' or 'none'.")
        right = covered is not None and 3 * len(covered) >= 2 * len(points)
        needed = math.ceil(2 * len(points) / 3)
        self.console.verdict(
            f"{'Right' if right else 'Not yet'}: {len(covered or ())} of {len(points)} points "
            f"(right needs {needed}).",
            right,
        )
        return right

    def numeric(self, q: NumericQuestion) -> bool:
        self.console.say(f"{q.topic} {self.console.dot} numeric\n{q.prompt}")
        right = self.sources.grade_numeric(q, self.answer(f"Your answer ({q.unit}): "))
        if right:
            self.console.verdict(f"Right: {show_number(q.answer)} {q.unit}.", True)
        else:
            within = f" (answers within {q.rel_tol:.2%} count)" if q.rel_tol else " (exactly)"
            self.console.verdict(f"Not quite: the answer is {show_number(q.answer)} {q.unit}{within}.", False)
            self.console.say(f"Worked: {q.worked}")
        return right

    def coding(self, task: coding.CodingTask) -> bool:
        say = self.console.say
        path = self.sources.prepare(task, self.paths)
        if self.state["coding_started"] is None:
            self.state["coding_started"] = self.clock().isoformat()
            self.save()
        started = dt.datetime.fromisoformat(self.state["coding_started"])
        say(f"{task.instructions()}\nYour file: {path}")
        while True:
            left = 60 * task.minutes - (self.clock() - started).total_seconds()
            if left <= 0:
                say(f"Time is up for the coding question ({task.minutes:g} min).")
                return False
            say(f"{left / 60:.1f} min left on this question; the clock runs while you work.")
            reply = self.answer("Type 'done' to grade your file, 'skip' to move on: ").strip().lower()
            if reply == "skip":
                return False
            if reply != "done":
                say("Type done or skip.")
                continue
            result = self.sources.grade(task, self.paths, self.timeout)
            say(result.report)
            if result.passed:
                self.console.verdict("Passed.", True)
                return True
            self.console.verdict("Not passing yet: fix it and type 'done' again, or 'skip'.", False)

    def interrupted(self) -> int:
        if self.kind == "interview":
            self.save()
            self.console.say(
                "\nInterrupted; your answers so far are saved. Run `peft-zoo interview --resume` to go on."
            )
            return EXIT_INTERRUPTED
        self.console.say("\nReview interrupted; the answers given so far are recorded.")
        self.finish()
        return EXIT_INTERRUPTED

    def finish(self) -> None:
        """Print the summary, append it to the history, forget the session file."""
        results = self.state["results"]
        say = self.console.say
        seed = f", seed {self.state['seed']}" if self.kind == "interview" else ""
        say(f"\nSummary ({self.kind}{seed}):")
        for topic in sorted({r["topic"] for r in results}):
            rows = [r for r in results if r["topic"] == topic]
            right = sum(r["right"] for r in rows)
            minutes = sum(r["seconds"] for r in rows) / 60
            say(f"  {topic:<13} {right} right, {len(rows) - right} wrong, {minutes:.1f} min")
        total, unasked = sum(r["right"] for r in results), len(self.state["plan"]) - len(results)
        line = f"  {'total':<13} {total} right, {len(results) - total} wrong, {self.elapsed() / 60:.1f} min"
        say(line + (f"; {unasked} not asked" if unasked else ""))
        history = History(Path(self.paths.practice))
        problem = history.problems()
        if problem:
            say(f"Note: {problem}")
        record = {"kind": self.kind, "at": self.clock().isoformat(), "seed": self.state["seed"],
                  "topic": self.state["topic"], "results": results}  # fmt: skip
        history.append(record, self.clock())
        if self.kind == "interview":
            self.state_path.unlink(missing_ok=True)
        if total < len(results):
            say("Missed questions come back in `peft-zoo review`, starting tomorrow.")
