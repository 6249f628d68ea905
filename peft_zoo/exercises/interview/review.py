"""``peft-zoo review``: the questions an interview missed, asked again when they are due.

The schedule lives in the history (:mod:`.history`): a miss is due a day later, then 3, 7 and
16 days after each right answer. A numeric card is asked with a fresh geometry of the same kind
(seeded by the day and the kind, so a scripted review is repeatable), because remembering one
number is not knowing the computation. A concept card asks the same question; a coding card the
same task, in the same work file.
"""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path
from typing import Any

from .history import Card, History
from .session import Sources, new_state, plan_problems


def plan_item(card: Card, now: dt.datetime) -> dict[str, str]:
    """The question that reviews ``card`` on ``now``'s day."""
    if card.type == "numeric":
        seed = random.Random(f"review:{now.date().isoformat()}:{card.card}").randrange(10**6)
        return {"type": "numeric", "id": f"{card.card}:{seed}"}
    return {"type": card.type, "id": card.card}


def review_state(
    practice: Path, now: dt.datetime, sources: Sources | None = None
) -> tuple[dict[str, Any] | None, str]:
    """The review to run now (None when nothing is due) and a line for the candidate.

    A card whose question is no longer in the bank (or whose kind or task is gone) is left
    out and counted in the line; the history keeps it."""
    history = History(practice)
    due, gone = [], 0
    for card in history.due(now):
        if plan_problems([plan_item(card, now)], sources):
            gone += 1
        else:
            due.append(card)
    notes = [f"{gone} card(s) no longer asked: their question left the bank"] if gone else []
    problem = history.problems()
    if problem:
        notes.append(problem)
    note = f" ({'; '.join(notes)})" if notes else ""
    if not due:
        upcoming = sorted(c.due for c in history.cards().values() if c.due > now)
        when = (
            f"next one due {upcoming[0]:%Y-%m-%d %H:%M} UTC" if upcoming else "no missed question on record"
        )
        return None, f"Nothing to review now: {when}.{note}"
    plan = [plan_item(card, now) for card in due]
    state = new_state(0, "review", 0.0, plan, now)
    return state, f"{len(plan)} question(s) due for review.{note}"
