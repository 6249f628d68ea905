"""Terminal output: one line at a time, never a crash on a terminal that cannot show a mark."""

from __future__ import annotations

import sys
from typing import TextIO


def emit(text: str = "", *, stream: TextIO | None = None) -> None:
    """Print one line; characters the terminal cannot encode are replaced, never a crash."""
    stream = stream if stream is not None else sys.stdout
    try:
        stream.write(text + "\n")
    except UnicodeEncodeError:
        encoding = getattr(stream, "encoding", None) or "ascii"
        stream.write(text.encode(encoding, "replace").decode(encoding, "replace") + "\n")
    stream.flush()


def warn(text: str) -> None:
    emit(f"peft-zoo: warning: {text}", stream=sys.stderr)


def fancy(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` can show the status marks (a plain ASCII terminal cannot)."""
    encoding = getattr(stream if stream is not None else sys.stdout, "encoding", None) or "ascii"
    try:
        "✓✗·—".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def marks() -> dict[str, str]:
    if fancy():
        return {"passed": "✓", "failing": "✗", "not_started": "·", "missing": "!", "changed": "~"}
    return {"passed": "+", "failing": "x", "not_started": ".", "missing": "!", "changed": "~"}


def dash() -> str:
    return "—" if fancy() else "-"


def dot() -> str:
    return "·" if fancy() else "-"


def progress_bar(done: int, total: int, width: int = 30) -> str:
    """``[#########.....................] 3/10 passed``."""
    filled = round(width * done / total) if total else 0
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} passed"
