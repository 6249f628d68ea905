"""The mock interview: a seeded plan of questions, asked against the clock, saved after every
answer so that an interruption loses nothing, and summarised into the history.

A concept question counts as right when the candidate ticks at least two thirds of its key
points; a numeric question when :func:`.numeric.grade` accepts the answer; the coding question
when its grader passes within the task's time budget. When the interview's minutes are spent
the remaining questions are not asked (they count as neither right nor wrong).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...core.io import atomic_write
from . import bank, coding, numeric
from .console import Console, parse_points
from .history import History

SESSION_NAME = ".interview-session.json"
CONCEPT_MINUTES, NUMERIC_MINUTES = 4.0, 3.0
EXIT_INTERRUPTED = 3
Clock = Callable[[], dt.datetime]
Grader = Callable[[coding.CodingTask, Any, float], coding.CodingResult]


class Interrupted(Exception):
    """The answers ran out (or Ctrl-C) in the middle of a question."""


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


CLOCK: Clock = utc_now  # the commands read the time here (tests replace it)


def build_plan(seed: int, topic: str, minutes: float, with_coding: bool) -> list[dict[str, str]]:
    """The questions of a ``minutes``-long interview on ``topic``, drawn from ``seed`` only:
    concept and numeric questions in turn, and (when it fits in half the time) a coding task
    last. Each item is ``{"type": ..., "id": ...}``."""
    rng = random.Random(f"interview:{seed}:{topic}")
    task = coding.choose_task(rng, topic, minutes / 2) if with_coding else None
    budget = minutes - (task.minutes if task else 0.0)
    concepts = list(bank.questions(topic))
    rng.shuffle(concepts)
    kinds = list(numeric.kinds(topic))
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


def new_state(
    seed: int, topic: str, minutes: float, plan: list[dict[str, str]], now: dt.datetime
) -> dict[str, Any]:
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
        timeout: float = 900.0,
        kind: str = "interview",
    ) -> None:
        self.paths, self.console, self.state, self.clock = paths, console, state, clock
        self.grade = grade or coding.grade_task
        self.timeout, self.kind = timeout, kind

    @property
    def state_path(self) -> Path:
        return Path(self.paths.practice) / SESSION_NAME

    def save(self) -> None:
        if self.kind == "interview":
            atomic_write(self.state_path, json.dumps(self.state, indent=1).encode("utf-8"))

    def elapsed(self) -> float:
        return (self.clock() - dt.datetime.fromisoformat(self.state["started"])).total_seconds()

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
            q = bank.by_id(item["id"])
            right, card, topic = self.concept(q), q.id, q.topic
        elif item["type"] == "numeric":
            nq = numeric.from_id(item["id"])
            right, card, topic = self.numeric(nq), nq.kind, nq.topic
        else:
            task = coding.task_from_id(item["id"])
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

    def concept(self, q: bank.ConceptQuestion) -> bool:
        say = self.console.say
        say(f"{q.topic} · worked answer in docs/{q.guide}\n{q.prompt}")
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
        say(
            f"{'Right' if right else 'Not yet'}: {len(covered or ())} of {len(points)} points (right needs {needed})."
        )
        return right

    def numeric(self, q: numeric.NumericQuestion) -> bool:
        self.console.say(f"{q.topic} · numeric\n{q.prompt}")
        right = numeric.grade(q, self.answer(f"Your answer ({q.unit}): "))
        if right:
            self.console.say(f"Right: {q.answer:,.6g} {q.unit}.")
        else:
            self.console.say(f"Not quite: {q.answer:,.6g} {q.unit}.\nWorked: {q.worked}")
        return right

    def coding(self, task: coding.CodingTask) -> bool:
        say = self.console.say
        path = coding.prepare(task, self.paths)
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
            result = self.grade(task, self.paths, self.timeout)
            say(result.report)
            if result.passed:
                say("Passed.")
                return True

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
        say(f"\nSummary ({self.kind}, seed {self.state['seed']}):")
        for topic in sorted({r["topic"] for r in results}):
            rows = [r for r in results if r["topic"] == topic]
            right = sum(r["right"] for r in rows)
            minutes = sum(r["seconds"] for r in rows) / 60
            say(f"  {topic:<13} {right} right, {len(rows) - right} wrong, {minutes:.1f} min")
        total = sum(r["right"] for r in results)
        say(f"  {'total':<13} {total} / {len(results)} right")
        history = History(Path(self.paths.practice))
        if history.problems():
            say(f"Note: {history.problems()}")
        record = {"kind": self.kind, "at": self.clock().isoformat(), "seed": self.state["seed"],
                  "topic": self.state["topic"], "results": results}  # fmt: skip
        history.append(record, self.clock())
        if self.kind == "interview":
            self.state_path.unlink(missing_ok=True)
        if total < len(results):
            say("Missed questions come back in `peft-zoo review`, starting tomorrow.")
