"""The three kinds of interview question and the topics they belong to.

A concept question is a worked answer from a guide with its key points as a checklist; a
numeric question is drawn from a seeded generator and graded exactly by the library's cost
model; a coding question is a challenge (or a variant of one) graded by its own grader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The topics `peft-zoo interview --topic` accepts ("all" means every one of them).
TOPICS: tuple[str, ...] = ("lora", "adapters", "quantisation", "serving")
# The topic each challenge trains for (the interview's --topic filter, the pass message).
TOPIC_OF: dict[int, str] = {
    **dict.fromkeys((1, 4, 10, 12, 13, 14, 15, 20, 23, 24, 25, 26, 27, 28, 29, 30), "lora"),
    **dict.fromkeys((2, 3, 5, 6, 7, 8, 9, 11, 21, 22), "adapters"),
    18: "quantisation",
    **dict.fromkeys((16, 17, 19), "serving"),
}


# A sentence ends at . ! or ? followed by space and a capital, a digit, maths or code; not
# after the usual abbreviations.
_SENTENCE_END = re.compile(r"(?<!\be\.g\.)(?<!\bi\.e\.)(?<!\bvs\.)(?<!\bal\.)(?<=[.!?])\s+(?=[A-Z0-9$`(*])")


def split_sentences(text: str) -> tuple[str, ...]:
    """``text``'s sentences, each on one line (Markdown line breaks become spaces)."""
    flat = " ".join(text.split())
    return tuple(s.strip() for s in _SENTENCE_END.split(flat) if s.strip())


@dataclass(frozen=True)
class ConceptQuestion:
    id: str  # stable key for the history file: "<guide stem>.<slug>", e.g. "lora.b-zero-init"
    topic: str  # one of TOPICS
    guide: str  # the docs page whose "Interview questions" section shows it, e.g. "lora.md"
    prompt: str  # the question, Markdown on one line (shown bold in the guide)
    answer: str  # the worked answer, Markdown, may span lines (shown under the prompt)
    challenges: tuple[int, ...] = ()  # challenge numbers that prepare for it
    points: tuple[str, ...] = ()  # key points a good answer covers; () means the answer's sentences

    def checklist(self) -> tuple[str, ...]:
        """The key points the candidate ticks: ``points``, or else the answer's sentences."""
        return self.points or split_sentences(self.answer)


@dataclass(frozen=True)
class NumericQuestion:
    id: str  # "<kind>:<seed>": regenerates the same question, e.g. for `peft-zoo review`
    kind: str  # generator name, e.g. "lora_trainable"
    topic: str  # one of TOPICS
    prompt: str  # the question with its geometry spelled out and the unit asked for
    answer: float  # the exact value, computed by peft_zoo.cost and friends
    unit: str  # "parameters", "MB", "bits", "GFLOPs", "tokens", ...
    rel_tol: float  # relative tolerance a typed answer must meet (0.0 for exact integers)
    worked: str  # the worked computation, shown after a wrong answer
