"""The progress file ``practice/<track>/.progress.json``: results, file hashes, hint levels and
the practice log (attempts, first attempt, pass time, hints used at the pass)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...core.io import atomic_write
from .output import warn

_UNSET = object()

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    """The current time, timezone-aware UTC (the default clock of :class:`Progress`)."""
    return dt.datetime.now(dt.timezone.utc)


def parse_time(value: object) -> dt.datetime | None:
    """An ISO timestamp read from the file as an aware datetime (naive = UTC); None if absent or bad."""
    if not isinstance(value, str):
        return None
    try:
        stamp = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=dt.timezone.utc)


class Progress:
    """``{stem: {"passed": bool, "sha256": str, "hint_level": int, ...}}`` in ``.progress.json``.

    The practice log adds, per challenge, ``attempts`` (grading runs), ``first_attempt`` and
    ``passed_at`` (ISO timestamps, UTC) and ``hints_at_pass``; files written before these
    fields existed load as they are (missing = 0 / None). ``clock`` (default :func:`utc_now`)
    is injectable so that tests need not sleep.

    Deleting the file is safe (results are recomputed); a corrupt file is ignored with a
    one-line warning; writes are atomic (temp file + ``os.replace``) and merge this
    command's changes into what is on disk then, so a concurrent ``watch`` and ``hint``
    do not undo each other.
    """

    def __init__(self, path: Path, *, clock: Clock | None = None) -> None:
        self.path = path
        self.clock = clock
        self.data = self._read(quiet=False)
        self._changes: dict[str, dict[str, Any]] = {}

    def _read(self, *, quiet: bool) -> dict[str, dict[str, Any]]:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as err:
            if not quiet:
                warn(f"ignoring {self.path.name}: {err}")
            return {}
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            if not quiet:
                warn(f"ignoring unreadable {self.path.name} ({err}); progress will be recomputed")
            return {}
        return {stem: entry for stem, entry in data.items() if isinstance(entry, dict)}

    def refresh(self) -> None:
        """Re-read the file (another command may have written it), keeping unsaved changes."""
        self.data = self._merged(self._read(quiet=True))

    def _merged(self, base: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for stem, changes in self._changes.items():
            entry = base.setdefault(stem, {})
            for key, value in changes.items():
                if value is _UNSET:
                    entry.pop(key, None)
                else:
                    entry[key] = value
        return base

    def _set(self, stem: str, **values: Any) -> None:
        entry = self.data.setdefault(stem, {})
        for key, value in values.items():
            if value is _UNSET:
                entry.pop(key, None)
            else:
                entry[key] = value
        self._changes.setdefault(stem, {}).update(values)

    def result(self, stem: str, sha: str, fingerprint: str) -> bool | None:
        """The recorded pass/fail of this exact file content, or None if it was not graded."""
        entry = self.data.get(stem, {})
        if entry.get("sha256") != sha or entry.get("grader_sha256", fingerprint) != fingerprint:
            return None
        passed = entry.get("passed")
        return passed if isinstance(passed, bool) else None

    def record(self, stem: str, passed: bool, sha: str, fingerprint: str) -> None:
        self._set(stem, passed=bool(passed), sha256=sha, grader_sha256=fingerprint)

    def clear_result(self, stem: str) -> None:
        self._set(stem, passed=False, sha256=_UNSET, grader_sha256=_UNSET)

    def hint_level(self, stem: str) -> int:
        level = self.data.get(stem, {}).get("hint_level", 0)
        return level if isinstance(level, int) and level >= 0 else 0

    def set_hint_level(self, stem: str, level: int) -> None:
        self._set(stem, hint_level=int(level))

    def attempts(self, stem: str) -> int:
        """How many grading runs of ``stem`` were recorded (0 in files from before the log)."""
        count = self.data.get(stem, {}).get("attempts", 0)
        return count if isinstance(count, int) and not isinstance(count, bool) and count >= 0 else 0

    def first_attempt(self, stem: str) -> dt.datetime | None:
        return parse_time(self.data.get(stem, {}).get("first_attempt"))

    def passed_at(self, stem: str) -> dt.datetime | None:
        """When ``stem`` first passed (kept after a reset: the learner did solve it once)."""
        return parse_time(self.data.get(stem, {}).get("passed_at"))

    def hints_at_pass(self, stem: str) -> int | None:
        """The hint level when ``stem`` first passed; None if it has not passed (or an old file)."""
        level = self.data.get(stem, {}).get("hints_at_pass")
        return level if isinstance(level, int) and not isinstance(level, bool) and level >= 0 else None

    def now(self) -> dt.datetime:
        """The injected clock's time, else :func:`utc_now` (looked up at call time)."""
        return (self.clock or utc_now)()

    def note_attempt(self, stem: str, passed: bool) -> None:
        """Log one grading run of ``stem``: count it, stamp the first one, and the first pass
        (with the hints used by then). Call :meth:`save` to write it."""
        stamp = self.now().astimezone(dt.timezone.utc).isoformat(timespec="seconds")
        values: dict[str, Any] = {"attempts": self.attempts(stem) + 1}
        if self.first_attempt(stem) is None:
            values["first_attempt"] = stamp
        if passed and self.passed_at(stem) is None:
            values["passed_at"] = stamp
            values["hints_at_pass"] = self.hint_level(stem)
        self._set(stem, **values)

    def _keep_unreadable(self) -> None:
        """Copy an unreadable (non-empty) progress file to ``<name>.corrupt`` before it is
        replaced, so that a damaged file never loses what it held."""
        try:
            raw = self.path.read_bytes()
            if not raw.strip() or isinstance(json.loads(raw), dict):
                return
        except OSError:
            return
        except ValueError:
            pass
        keep = self.path.with_name(self.path.name + ".corrupt")
        try:
            atomic_write(keep, raw)
        except OSError as err:
            warn(f"could not keep a copy of the unreadable {self.path.name}: {err}")
            return
        warn(f"kept the unreadable {self.path.name} as {keep.name}")

    def save(self) -> None:
        self._keep_unreadable()
        data = self._merged(self._read(quiet=True))
        for entry in data.values():
            entry.setdefault("passed", False)
            entry.setdefault("hint_level", 0)
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        try:
            atomic_write(self.path, text.encode("utf-8"))
        except OSError as err:  # progress is a convenience: never fail a command over it
            warn(f"could not save {self.path}: {err}")
            return
        self.data, self._changes = data, {}
