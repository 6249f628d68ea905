"""Every challenge's status (graded only when its file changed) and the one next step."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..manifest import CHALLENGES, Challenge
from .constants import DEFAULT_TIMEOUT
from .grade import grade_many
from .output import dash, dot, emit
from .paths import Paths, grader_fingerprint, pristine_stub, sha256_bytes, sha256_file
from .progress import Progress


@dataclass(frozen=True)
class Status:
    challenge: Challenge
    state: str  # passed | failing | not_started | missing | changed
    detail: str

    @property
    def passed(self) -> bool:
        return self.state == "passed"

    @property
    def available(self) -> bool:
        """Whether the learner can work on it here (its grader exists)."""
        return self.detail != "no grader yet"


def statuses(
    paths: Paths, progress: Progress, *, grade: bool = True, timeout: float = DEFAULT_TIMEOUT
) -> list[Status]:
    """Every challenge's status. With ``grade``, the files changed since their last grading
    are graded (together, in one pytest run) and the results recorded."""
    found: dict[int, Status] = {}
    results: dict[str, bool] = {}
    to_grade: list[tuple[Challenge, str, str]] = []
    for ch in CHALLENGES:
        if not paths.grader(ch).is_file():
            found[ch.number] = Status(ch, "missing", "no grader yet")
            continue
        try:
            data = paths.exercise(ch).read_bytes()
        except OSError:
            found[ch.number] = Status(ch, "missing", "file missing")
            continue
        if data == pristine_stub(ch):
            found[ch.number] = Status(ch, "not_started", "not started")
            continue
        sha, fingerprint = sha256_bytes(data), grader_fingerprint(paths, ch)
        recorded = progress.result(ch.stem, sha, fingerprint)
        if recorded is not None:
            found[ch.number] = Status(ch, "passed" if recorded else "failing", _word(recorded))
        else:
            to_grade.append((ch, sha, fingerprint))
    if to_grade and grade:
        names = ", ".join(ch.tag for ch, _, _ in to_grade)
        emit(f"Grading {len(to_grade)} changed file(s) ({names}) in one pytest run...")
        results = grade_many(paths, [ch for ch, _, _ in to_grade], timeout=timeout)
        for ch, sha, fingerprint in to_grade:
            if ch.stem in results:
                progress.note_attempt(ch.stem, results[ch.stem])
            if ch.stem in results and sha256_file(paths.exercise(ch)) == sha:  # unchanged meanwhile
                progress.record(ch.stem, results[ch.stem], sha, fingerprint)
        progress.save()
    for ch, _, _ in to_grade:
        if grade and ch.stem in results:
            found[ch.number] = Status(
                ch, "passed" if results[ch.stem] else "failing", _word(results[ch.stem])
            )
        elif grade:
            found[ch.number] = Status(ch, "failing", "not graded")
        else:
            found[ch.number] = Status(ch, "changed", "changed since last check")
    return [found[ch.number] for ch in CHALLENGES]


def _word(passed: bool) -> str:
    return "passed" if passed else "failing"


def next_status(all_statuses: Sequence[Status]) -> Status | None:
    """The first challenge not passed yet that can be worked on here."""
    return next((s for s in all_statuses if s.available and not s.passed), None)


def next_line(
    paths: Paths, status: Status | None, all_statuses: Sequence[Status], *, watching: bool = False
) -> str:
    if status is None:
        done = sum(s.passed for s in all_statuses)
        if done == len(all_statuses):
            return f"All {done} challenges passed. Well done! Revisit any with `peft-zoo solution N`."
        return f"Every challenge available here passed ({done}/{len(all_statuses)}); the others have no grader yet."
    ch = status.challenge
    where = paths.show(paths.exercise(ch))
    head = f"{'Now' if watching else 'Next'}: challenge {ch.number} {dot()} {ch.title} {dash()} "
    if status.detail == "file missing":
        return head + f"its file is missing: run `peft-zoo reset {ch.number}` to restore {where}"
    if watching:
        return head + f"edit {where}; every save is graded"
    return head + f"edit {where}, then run `peft-zoo check {ch.number}`"
