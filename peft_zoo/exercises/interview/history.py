"""The interview history: one JSON line per finished interview or review, next to the learner's
``.progress.json``, and the review schedule computed from it.

Format (``practice/<track>/.interview-history.jsonl``), one record per line::

    {"kind": "interview" | "review", "at": ISO time, "seed": int, "topic": str,
     "results": [{"card": str, "id": str, "type": "concept" | "numeric" | "coding",
                  "topic": str, "right": bool, "seconds": float}, ...]}

A line that does not parse or does not have this shape is never silently dropped: it is
copied to ``.interview-history.jsonl.corrupt`` (appended, with the time) and reported, and the
other lines are kept. A file that is not text at all is copied there whole before anything
replaces it. Every write is atomic (a temporary file, then a rename).

The schedule is Leitner's: a card is a concept question's id, a numeric question's kind
(a review draws a fresh geometry of the same kind) or a coding task. A miss makes the card due
one day later; each right answer after that moves it to the next interval (3, 7, 16 days); a
right answer at the last interval retires it; a miss at any point starts over.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...core.io import atomic_write

HISTORY_NAME = ".interview-history.jsonl"
CORRUPT_SUFFIX = ".corrupt"
INTERVALS_DAYS = (1, 3, 7, 16)  # due this long after a miss, then after each right answer
RECORD_KINDS = ("interview", "review")
RESULT_TYPES = ("concept", "numeric", "coding")


@dataclass(frozen=True)
class Card:
    card: str  # concept id, numeric kind, or coding task id
    type: str  # one of RESULT_TYPES
    topic: str
    box: int  # index into INTERVALS_DAYS
    due: dt.datetime  # when review asks it again


def _valid_result(r: Any) -> bool:
    return (
        isinstance(r, dict)
        and all(isinstance(r.get(k), str) for k in ("card", "id", "type", "topic"))
        and r["type"] in RESULT_TYPES
        and isinstance(r.get("right"), bool)
        and isinstance(r.get("seconds"), int | float)
        and not isinstance(r.get("seconds"), bool)
    )


def valid_results(results: list[Any]) -> bool:
    """Whether every item of ``results`` is one answer as the module docstring describes."""
    return all(_valid_result(r) for r in results)


def aware_time(value: object) -> dt.datetime | None:
    """``value`` read as an ISO time that names its zone; None for anything else (the files
    here always write the zone, so a naive time means the file was edited or damaged)."""
    try:
        stamp = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return stamp if stamp.tzinfo is not None else None


def valid_record(record: Any) -> bool:
    """Whether ``record`` has the shape described in the module docstring."""
    if not isinstance(record, dict) or record.get("kind") not in RECORD_KINDS:
        return False
    results = record.get("results")
    return aware_time(record.get("at")) is not None and isinstance(results, list) and valid_results(results)


class History:
    """The history file of one practice folder: read tolerantly, appended atomically."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / HISTORY_NAME
        self.corrupt_path = folder / (HISTORY_NAME + CORRUPT_SUFFIX)
        self.records: list[dict[str, Any]] = []
        self.bad_lines: list[str] = []
        self.unreadable = False
        self._read()

    def _read(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.unreadable = True
            return
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if valid_record(record):
                self.records.append(record)
            else:
                self.bad_lines.append(line)

    def problems(self) -> str | None:
        """One line about what was set aside, or None when the file was sound."""
        if self.unreadable:
            return f"{self.path.name} is not text; it is kept as {self.corrupt_path.name} and a new history starts"
        if self.bad_lines:
            return f"{len(self.bad_lines)} unreadable line(s) of {self.path.name} set aside in {self.corrupt_path.name}"
        return None

    def _set_aside(self, now: dt.datetime) -> None:
        if self.unreadable:
            atomic_write(self.corrupt_path, self.path.read_bytes())
        elif self.bad_lines:
            old = self.corrupt_path.read_bytes() if self.corrupt_path.exists() else b""
            header = f"# set aside {now.isoformat()}\n".encode()
            atomic_write(self.corrupt_path, old + header + ("\n".join(self.bad_lines) + "\n").encode())

    def append(self, record: dict[str, Any], now: dt.datetime) -> None:
        """Add ``record`` (checked first) and rewrite the file atomically, bad lines set aside."""
        if not valid_record(record):
            raise ValueError(f"not a history record: {record!r}")
        self._set_aside(now)
        self.records.append(record)
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records)
        atomic_write(self.path, text.encode("utf-8"))
        self.bad_lines, self.unreadable = [], False

    def results(self) -> Iterable[tuple[dt.datetime, dict[str, Any]]]:
        """Every answer ever given, oldest first, with the time of its record."""
        timed = [(dt.datetime.fromisoformat(r["at"]), r) for r in self.records]
        for at, record in sorted(timed, key=lambda pair: pair[0]):
            for result in record["results"]:
                yield at, result

    def cards(self) -> dict[str, Card]:
        """The review schedule: every card missed at least once and not yet retired."""
        cards: dict[str, Card] = {}
        for at, r in self.results():
            key, card = r["card"], cards.get(r["card"])
            if not r["right"]:
                cards[key] = Card(key, r["type"], r["topic"], 0, at + dt.timedelta(days=INTERVALS_DAYS[0]))
            elif card is not None and card.box + 1 < len(INTERVALS_DAYS):
                box = card.box + 1
                cards[key] = Card(
                    key, card.type, card.topic, box, at + dt.timedelta(days=INTERVALS_DAYS[box])
                )
            elif card is not None:
                del cards[key]  # right at the last interval: learned
        return cards

    def due(self, now: dt.datetime) -> list[Card]:
        """Cards due at ``now``, the longest overdue first."""
        return sorted((c for c in self.cards().values() if c.due <= now), key=lambda c: (c.due, c.card))
