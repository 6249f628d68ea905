"""Where an interview reads answers and writes questions: a terminal, or a file of answers.

With ``--answers FILE`` (``-`` for stdin) each answer is one line of the file and is echoed
after its prompt, so the output reads as a transcript; at the end of the file the interview
stops as if interrupted (and can be resumed). In a terminal a concept answer may span several
lines and ends with an empty line. Nothing here writes colour: the output is plain text,
which also respects ``NO_COLOR``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TextIO


class Console:
    """Questions out, answers in. ``answers`` None reads the terminal with ``input()``."""

    def __init__(self, answers: Iterator[str] | None = None, out: TextIO | None = None) -> None:
        self.answers = answers
        self.out = out if out is not None else sys.stdout

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def ask(self, prompt: str, *, multiline: bool = False) -> str | None:
        """The candidate's answer to ``prompt``; None when the answers run out (end of file)."""
        if self.answers is not None:
            line = next(self.answers, None)
            if line is None:
                return None
            line = line.rstrip("\n")
            self.say(f"{prompt}{line}")
            return line
        try:
            first = input(prompt)
            lines = [first]
            while multiline and lines[-1].strip():
                lines.append(input())
        except EOFError:
            return None
        return "\n".join(lines).strip()


def parse_points(text: str, count: int) -> set[int] | None:
    """The 1-based point numbers ``text`` names ("1 3", "1,3", "all", "none"); None if invalid."""
    words = text.replace(",", " ").lower().split()
    if words in (["all"], ["none"]):
        return set(range(1, count + 1)) if words == ["all"] else set()
    if not words or not all(w.isdigit() and 1 <= int(w) <= count for w in words):
        return None
    return {int(w) for w in words}
