"""One challenge of the track: its files, difficulty, prerequisites, hints and interview prompts."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Challenge:
    number: int  # 1-based position in the track
    name: str  # snake_case; the files are exNN_<name>.py
    title: str  # one line for listings
    difficulty: int  # 1 (warm-up) .. 3 (interview-hard)
    objects: tuple[str, ...]  # public names the learner implements
    prerequisites: tuple[int, ...] = ()  # challenges whose ideas this one uses
    hints: tuple[str, ...] = ()  # revealed one at a time by `peft-zoo hint N`
    interview: tuple[str, ...] = field(default=())  # questions this challenge prepares for

    @property
    def tag(self) -> str:
        return f"ex{self.number:02d}"

    @property
    def stem(self) -> str:
        return f"{self.tag}_{self.name}"
