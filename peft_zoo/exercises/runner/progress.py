"""The progress file ``practice/<track>/.progress.json``: results, file hashes and hint levels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...core.io import atomic_write
from .output import warn

_UNSET = object()


class Progress:
    """``{stem: {"passed": bool, "sha256": str, "hint_level": int}}`` in ``.progress.json``.

    Deleting the file is safe (results are recomputed); a corrupt file is ignored with a
    one-line warning; writes are atomic (temp file + ``os.replace``) and merge this
    command's changes into what is on disk then, so a concurrent ``watch`` and ``hint``
    do not undo each other.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
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

    def save(self) -> None:
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
