"""The interview question bank: one module per guide section, the single source of the guides'
"Interview questions" sections (:mod:`..guides` writes them) and of ``peft-zoo interview``.

Each module holds ``GUIDE`` (the docs page), ``TOPIC`` and ``QUESTIONS``. Add a question by
adding a ``ConceptQuestion`` to a module, then run ``peft-zoo build`` to update the guide.
"""

from __future__ import annotations

from types import ModuleType

from ...manifest import BY_NUMBER
from ...readme import GUIDES
from ..questions import TOPICS, ConceptQuestion
from . import (
    adalora,
    adapters,
    batched,
    bottleneck_adapters,
    cost_model,
    dora_loraplus,
    ia3,
    loha_lokr,
    lora,
    lora_embedding_conv,
    named_adapters,
    oft,
    pissa_olora,
    prefix_tuning,
    prompt_tuning,
    qlora,
    vera,
    weight_sharing,
)

_MODULES: tuple[ModuleType, ...] = (
    lora,
    dora_loraplus,
    vera,
    loha_lokr,
    oft,
    adalora,
    pissa_olora,
    lora_embedding_conv,
    adapters,
    bottleneck_adapters,
    ia3,
    prefix_tuning,
    prompt_tuning,
    qlora,
    batched,
    named_adapters,
    cost_model,
    weight_sharing,
)

# bank module name -> (guide page, its questions in the guide's order)
SECTIONS: dict[str, tuple[str, tuple[ConceptQuestion, ...]]] = {
    m.__name__.rsplit(".", 1)[1]: (m.GUIDE, m.QUESTIONS) for m in _MODULES
}
_BY_ID = {q.id: q for _, qs in SECTIONS.values() for q in qs}


def all_questions() -> tuple[ConceptQuestion, ...]:
    """Every question of the bank, guide by guide in the docs' order."""
    return tuple(q for _, qs in SECTIONS.values() for q in qs)


def questions(topic: str) -> tuple[ConceptQuestion, ...]:
    """The questions of ``topic`` (one of ``TOPICS``, or ``"all"``)."""
    if topic == "all":
        return all_questions()
    if topic not in TOPICS:
        raise ValueError(f"unknown topic {topic!r}: choose one of {', '.join(TOPICS)} or all")
    return tuple(q for q in all_questions() if q.topic == topic)


def by_id(qid: str) -> ConceptQuestion:
    """The question with id ``qid`` (as a history file stores it)."""
    try:
        return _BY_ID[qid]
    except KeyError:
        raise KeyError(f"no question {qid!r} in the bank (ids look like 'lora.b-zero')") from None


def for_challenge(number: int) -> tuple[ConceptQuestion, ...]:
    """The questions challenge ``number`` prepares for: those tagged with it, or else every
    question of its guide."""
    if number not in BY_NUMBER:
        raise KeyError(f"no challenge {number}")
    tagged = tuple(q for q in all_questions() if number in q.challenges)
    return tagged or tuple(q for q in all_questions() if q.guide == GUIDES[number][0])


def validate() -> list[str]:
    """Problems with the bank, one line each (empty when it is sound)."""
    problems: list[str] = []
    seen: set[str] = set()
    for name, (guide, qs) in SECTIONS.items():
        for q in qs:
            where = f"{name}: {q.id}"
            if q.id in seen:
                problems.append(f"{where}: duplicate id")
            seen.add(q.id)
            if not q.id.startswith(f"{name}."):
                problems.append(f"{where}: id must start with {name}.")
            if q.topic not in TOPICS:
                problems.append(f"{where}: unknown topic {q.topic!r}")
            if q.guide != guide:
                problems.append(f"{where}: guide {q.guide} differs from the module's {guide}")
            if not q.prompt.strip() or "\n" in q.prompt or not q.answer.strip():
                problems.append(f"{where}: empty answer, or a prompt that is empty or spans lines")
            problems += [f"{where}: {p}" for p in _point_problems(q.points)]
            problems += [f"{where}: no challenge {n}" for n in q.challenges if n not in BY_NUMBER]
    return problems


def _point_problems(points: tuple[str, ...]) -> list[str]:
    """What is wrong with a question's key points: 2-5 distinct, non-empty one-line strings of at
    most 120 characters each."""
    problems = [] if 2 <= len(points) <= 5 else [f"{len(points)} key points (want 2-5)"]
    for point in points:
        if not point.strip() or "\n" in point or len(point) > 120:
            problems.append(f"key point {point!r} is empty, spans lines or is over 120 characters")
    if len(set(points)) != len(points):
        problems.append("repeated key point")
    return problems
