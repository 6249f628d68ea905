"""``LoRALinear`` / ``DoRALinear`` / ``BatchedLoRALinear`` constructors that fail after the point where
they freeze their base must leave the base's ``requires_grad`` flags as they were; every call is
refused with an error that names the problem.

One table of :class:`badinput.Refusal` cases run by :func:`badinput.check_refusal`.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from bad_inject_helpers import HUGE, NAN, B, base_state
from badinput import Refusal, check_refusal

import peft_zoo as pz


def _dora_norm_fails(state: dict[str, Any]) -> None:
    """DoRALinear whose magnitude cannot be computed (after LoRALinear froze the base)."""
    original = pz.DoRALinear.weight_norm

    def broken(self: pz.DoRALinear) -> torch.Tensor:
        raise RuntimeError("weight norm failed on purpose")

    pz.DoRALinear.weight_norm = broken  # type: ignore[method-assign]
    try:
        pz.DoRALinear(state["base"], 2)
    finally:
        pz.DoRALinear.weight_norm = original  # type: ignore[method-assign]


CASES: list[Refusal] = [
    # ------------------------------------------------------------------ constructors keep the base's flags
    Refusal(
        "LoRALinear-rank-huge",
        lambda s: pz.LoRALinear(s["base"], HUGE),
        RuntimeError,
        ["allocate"],
        base_state,
        B,
    ),
    Refusal(
        "LoRALinear-rslora-str",
        lambda s: pz.LoRALinear(s["base"], 2, rslora="yes"),
        TypeError,
        ["rslora"],
        base_state,
        B,
    ),
    Refusal(
        "LoRALinear-rank-str", lambda s: pz.LoRALinear(s["base"], "2"), TypeError, ["rank"], base_state, B
    ),
    Refusal(
        "LoRALinear-alpha-nan",
        lambda s: pz.LoRALinear(s["base"], 2, NAN),
        ValueError,
        ["alpha"],
        base_state,
        B,
    ),
    Refusal(
        "LoRALinear-dropout-neg",
        lambda s: pz.LoRALinear(s["base"], 2, dropout=-0.1),
        ValueError,
        ["dropout"],
        base_state,
        B,
    ),
    Refusal(
        "DoRALinear-rank-huge",
        lambda s: pz.DoRALinear(s["base"], HUGE),
        RuntimeError,
        ["allocate"],
        base_state,
        B,
    ),
    Refusal("DoRALinear-norm-fails", _dora_norm_fails, RuntimeError, ["weight norm failed"], base_state, B),
    Refusal(
        "DoRALinear-rslora-str",
        lambda s: pz.DoRALinear(s["base"], 2, rslora="yes"),
        TypeError,
        ["rslora"],
        base_state,
        B,
    ),
    Refusal(
        "BatchedLoRALinear-huge",
        lambda s: pz.BatchedLoRALinear(s["base"], HUGE, 2),
        RuntimeError,
        ["allocate"],
        base_state,
        B,
    ),
    Refusal(
        "BatchedLoRALinear-rslora-str",
        lambda s: pz.BatchedLoRALinear(s["base"], 3, 2, rslora="yes"),
        TypeError,
        ["rslora"],
        base_state,
        B,
    ),
    Refusal(
        "BatchedLoRALinear-rank-bool",
        lambda s: pz.BatchedLoRALinear(s["base"], 3, True),
        TypeError,
        ["rank"],
        base_state,
        B,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_and_changes_nothing(case: Refusal) -> None:
    check_refusal(case)
