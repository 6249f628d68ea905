"""Where an interview reads answers and writes questions: a terminal, or a file of answers.

With ``--answers FILE`` (``-`` for stdin) each answer is one line of the file and is echoed
after its prompt, so the output reads as a transcript; at the end of the file the interview
stops as if interrupted (and can be resumed). In a terminal a concept answer may span several
lines and ends with an empty line. Verdicts are coloured only on a terminal with ``NO_COLOR``
unset (as ``peft-zoo status`` does); a file, a pipe or a test gets plain text. A character the
output cannot encode is replaced, never a crash.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TextIO

from ..runner.output import dot, emit
from ..runner.practice import paint, use_colour


class Console:
    """Questions out, answers in. ``answers`` None reads the terminal with ``input()``."""

    def __init__(
        self, answers: Iterator[str] | None = None, out: TextIO | None = None, *, colour: bool | None = None
    ) -> None:
        self.answers = answers
        self.out = out if out is not None else sys.stdout
        self.colour = use_colour(self.out) if colour is None else colour
        self.dot = dot()

    def say(self, text: str = "") -> None:
        emit(text, stream=self.out)

    def verdict(self, text: str, right: bool) -> None:
        """A line saying right or wrong: green or red on a colour terminal, plain otherwise."""
        self.say(paint(text, "passed" if right else "failing", self.colour))

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
