"""The guides' "Interview questions" sections, generated from the question bank.

Each section sits between two markers naming the bank module it comes from::

    <!-- interview-questions:begin lora (generated from peft_zoo/exercises/interview/bank/lora.py; edit there) -->
    **Why is $B$ initialised to zero and not $A$? ...**
    $B = 0$ makes ...
    <!-- interview-questions:end -->

``peft-zoo build`` rewrites the text between the markers; the test suite fails when a guide
differs from what the bank would write, so a question and its worked answer live in one place.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from . import bank
from .questions import ConceptQuestion

BEGIN = "<!-- interview-questions:begin {name} (generated from peft_zoo/exercises/interview/bank/{name}.py; edit there) -->"
END = "<!-- interview-questions:end -->"
_BLOCK = re.compile(
    r"<!-- interview-questions:begin (?P<name>\w+) [^\n]*-->\n(?P<body>.*?)" + re.escape(END), re.S
)


class GuideSyncError(ValueError):
    """A guide whose markers are missing, unknown or unbalanced."""


def render_section(questions: Sequence[ConceptQuestion]) -> str:
    """The Markdown between the markers: each prompt in bold, its worked answer under it."""
    return "\n".join(f"**{q.prompt}**\n{q.answer.rstrip()}\n" for q in questions)


def render_guide(text: str, guide: str) -> str:
    """``text`` (the guide ``guide``) with every marked section regenerated from the bank."""
    sections = bank.SECTIONS
    found: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in sections:
            raise GuideSyncError(f"{guide}: marker names no bank module: {name!r}")
        if sections[name][0] != guide:
            raise GuideSyncError(f"{guide}: bank module {name!r} belongs to {sections[name][0]}")
        found.append(name)
        return BEGIN.format(name=name) + "\n" + render_section(sections[name][1]) + END

    new = _BLOCK.sub(replace, text)
    expected = sorted(name for name, (g, _) in sections.items() if g == guide)
    if sorted(found) != expected:
        raise GuideSyncError(f"{guide}: marked sections {sorted(found)}, bank modules {expected}")
    if new.count("interview-questions:begin") != len(found) or new.count(END) != len(found):
        raise GuideSyncError(f"{guide}: unbalanced interview-questions markers")
    return new


def sync_guides(docs_dir: Path, *, write: bool) -> list[str]:
    """The guides (names under ``docs_dir``) whose sections differ from the bank; rewritten
    atomically when ``write``. Every guide is checked before any is written."""
    changed: dict[Path, str] = {}
    for guide in sorted({g for g, _ in bank.SECTIONS.values()}):
        path = docs_dir / guide
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise GuideSyncError(f"cannot read {path}: {err.strerror}") from None
        new = render_guide(text, guide)
        if new != text:
            changed[path] = new
    if write:
        for path, new in changed.items():
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(new)
            os.replace(tmp, path)
    return sorted(path.name for path in changed)


def guide_pages(root: Path) -> dict[Path, str]:
    """``path -> text`` of every guide with a bank section, as ``peft-zoo build`` writes it.
    A root without that guide (a learner's copy of the exercises alone) gets nothing for it."""
    pages: dict[Path, str] = {}
    for guide in sorted({g for g, _ in bank.SECTIONS.values()}):
        path = root / "docs" / guide
        if not path.exists():
            continue
        try:
            pages[path] = render_guide(path.read_text(encoding="utf-8"), guide)
        except OSError as err:
            raise GuideSyncError(f"cannot read {path}: {err.strerror}") from None
    return pages
