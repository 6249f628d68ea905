"""Where things are: the project root, the files of a challenge, their hashes, the pristine stub."""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .. import builder
from ..manifest import TRACK, Challenge
from .constants import BACKUP_DIR, ROOT_ENV, STATE_NAME, RunnerError


def _has_track(path: Path) -> bool:
    return (path / "practice" / TRACK).is_dir()


def find_root(
    explicit: str | os.PathLike[str] | None = None,
    *,
    cwd: Path | None = None,
    require_practice: bool = True,
) -> Path:
    """The project root holding ``practice/<track>``.

    Looked up in order: ``explicit`` (``--root``), ``$PEFT_ZOO_ROOT``, the nearest of the
    working directory and its parents, the directory above the installed package.
    """
    for value, source in ((explicit, "--root"), (os.environ.get(ROOT_ENV) or None, ROOT_ENV)):
        if value is None:
            continue
        path = Path(value).expanduser().resolve()
        if not path.is_dir():
            raise RunnerError(f"{source}={value}: no such directory")
        if require_practice and not _has_track(path):
            raise RunnerError(f"{source}={value}: no practice/{TRACK} folder there")
        return path
    here = (cwd or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if _has_track(candidate):
            return candidate
    installed = Path(__file__).resolve().parents[3]  # <root>/peft_zoo/exercises/runner/paths.py
    if _has_track(installed):
        return installed
    raise RunnerError(
        f"cannot find the exercises: no practice/{TRACK} in {here} or its parents. Run from the "
        f"repository root, pass --root DIR, or set {ROOT_ENV}."
    )


@dataclass(frozen=True)
class Paths:
    root: Path

    @property
    def practice(self) -> Path:
        return self.root / "practice" / TRACK

    @property
    def solutions(self) -> Path:
        return self.root / "solutions" / TRACK

    @property
    def state_file(self) -> Path:
        return self.practice / STATE_NAME

    @property
    def backups(self) -> Path:
        return self.practice / BACKUP_DIR

    def exercise(self, ch: Challenge) -> Path:
        return self.practice / f"{ch.stem}.py"

    def grader(self, ch: Challenge) -> Path:
        return self.practice / f"test_{ch.stem}.py"

    def solution(self, ch: Challenge) -> Path:
        return self.solutions / f"{ch.stem}.py"

    def show(self, path: Path) -> str:
        """``path`` relative to the working directory when it lies below it, else absolute."""
        try:
            return str(path.relative_to(Path.cwd().resolve()))
        except ValueError:
            return str(path)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str | None:
    """The file's SHA-256, or None when it cannot be read."""
    try:
        return sha256_bytes(path.read_bytes())
    except OSError:
        return None


def grader_fingerprint(paths: Paths, ch: Challenge) -> str:
    """What a grading result depends on besides the learner's file: grader and reference."""
    parts = [sha256_file(paths.grader(ch)) or "-", sha256_file(paths.solution(ch)) or "-"]
    return sha256_bytes("\n".join(parts).encode())


def pristine_stub(ch: Challenge) -> bytes | None:
    """The untouched stub's bytes, or None when this installation has no source for ``ch``."""
    try:
        stamp = (builder.SOURCE_DIR / f"{ch.stem}.py").stat().st_mtime_ns
    except OSError:
        return None
    return _render_stub(ch, stamp)


@functools.lru_cache(maxsize=64)
def _render_stub(ch: Challenge, source_mtime_ns: int) -> bytes | None:
    try:
        return builder.stub_text(ch).encode("utf-8")
    except (OSError, SyntaxError, builder.BuildError):
        return None
