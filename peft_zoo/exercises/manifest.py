"""The list of challenges: order, difficulty, prerequisites, progressive hints, interview prompts.

The entries live in five parts, :mod:`.track_foundations` (1-10: write each adapter, inject
it), :mod:`.track_advanced` (11-20: manage, count, test, serve, quantise, share, DoRA) and
:mod:`.track_real_models` (21-23: the methods as real models carry them), :mod:`.track_zoo`
(24-27: VeRA, LoHa, LoKr, OFT) and :mod:`.track_zoo_rank` (28-30: AdaLoRA, PiSSA / OLoRA, LoRA
on embeddings and convolutions); this module joins them into the track. Adding a challenge is one entry in a part, one
reference file in ``source/<track>/`` and one grader ``practice/<track>/test_<stem>.py``;
``peft-zoo build`` writes the stub and answer.
"""

from __future__ import annotations

from .challenge import Challenge
from .track_advanced import ADVANCED
from .track_foundations import FOUNDATIONS
from .track_real_models import REAL_MODELS
from .track_zoo import ZOO
from .track_zoo_rank import ZOO_RANK

TRACK = "13_lora_adapters"

CHALLENGES: tuple[Challenge, ...] = (*FOUNDATIONS, *ADVANCED, *REAL_MODELS, *ZOO, *ZOO_RANK)

BY_NUMBER = {c.number: c for c in CHALLENGES}


def get(number: int) -> Challenge:
    """The challenge with this number; a clear error for an unknown one."""
    try:
        return BY_NUMBER[number]
    except KeyError:
        raise KeyError(
            f"no challenge {number}; challenges are numbered {CHALLENGES[0].number}..{CHALLENGES[-1].number}"
        ) from None


__all__ = ["BY_NUMBER", "CHALLENGES", "TRACK", "Challenge", "get"]
