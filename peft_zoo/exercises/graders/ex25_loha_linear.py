"""Grader machinery of challenge 25 · loha_linear: drawn layer specs, the learner's layer beside
peft_zoo's own (:mod:`peft_zoo.loha`, equal to Hugging Face PEFT's) with the same random
nonzero factors, and the update and rank dropout written out with their classic variants (to
name the learner's bug)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

from peft_zoo.exercises.grading import require, run_learner
from peft_zoo.loha import LoHaLinear as LibraryLoHa
from peft_zoo.testing import explain, leading_shapes, seeds

FACTORS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")

# The bugs' names, as the "likely:" lines give them.
INIT_NOT_ZERO = "hada_w2_b is not zero at init: zero it (and only it), so W2a W2b = 0 and ΔW = 0"
SCALE_R2 = "the scale is alpha / r²: LoHa scales by alpha / r, although the rank reaches r²"
NO_SCALE = "the scale is missing: ΔW = (alpha / r) (W1a W1b) ⊙ (W2a W2b)"
HADAMARD = "the two products are matrix-multiplied (W1 @ W2): LoHa multiplies them elementwise, W1 * W2"
SINGLE = "a single product W1a W1b (that is LoRA): ΔW = (W1a W1b) ⊙ (W2a W2b)"
DROP_COLUMNS = "rank dropout drops COLUMNS (input features): it drops OUTPUT rows, mask (out,) times ΔW[i, :]"
NOT_RESCALED = "the kept rows are not rescaled: divide the mask by its mean (the fraction kept)"
DROP_IN_EVAL = "rank dropout applied in eval mode: drop rows only when self.training"


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    """Features, rank, alpha, rank dropout, bias, leading dims and a seed."""
    return {
        "in": draw(st.integers(1, 6)),
        "out": draw(st.integers(1, 6)),
        "rank": draw(st.integers(1, 4)),
        "alpha": draw(st.one_of(st.none(), st.sampled_from([0.5, 3.0, 8.0]))),
        "p": draw(st.sampled_from([0.0, 0.3, 0.6])),
        "bias": draw(st.booleans()),
        "lead": draw(leading_shapes(max_dims=2, max_size=3)),
        "seed": draw(seeds()),
    }


EXAMPLE = {"in": 5, "out": 3, "rank": 2, "alpha": 3.0, "p": 0.3, "bias": True, "lead": (4,), "seed": 0}
SQUARE = {"in": 4, "out": 4, "rank": 2, "alpha": 8.0, "p": 0.6, "bias": True, "lead": (2, 3), "seed": 1}
# A larger fixed example on which coinciding candidates part (see grading.diagnose).
RECHECK = {"in": 6, "out": 6, "rank": 3, "alpha": 5.0, "p": 0.5, "bias": True, "lead": (3,), "seed": 5}
WIDE = {"in": 3, "out": 6, "rank": 3, "alpha": None, "p": 0.6, "bias": False, "lead": (5,), "seed": 3}

SHAPE_HINT = (
    "hada_w1_a, hada_w2_a are (out, r), hada_w1_b, hada_w2_b are (r, in); ΔW = scale (W1a W1b) * (W2a W2b) "
    "is (out, in): the two products are multiplied ELEMENTWISE"
)


def base_layer(spec: dict[str, Any]) -> nn.Linear:
    torch.manual_seed(spec["seed"])
    return nn.Linear(spec["in"], spec["out"], bias=spec["bias"], dtype=torch.float64)


def call_learner(fn: Callable[[], Any], what: str, spec: dict[str, Any], hint: str = SHAPE_HINT) -> Any:
    """Run learner code; a shape error becomes a failure that says where to look."""
    return run_learner(fn, what, spec, hint, (RuntimeError, IndexError))


def build(impl: ModuleType, base: nn.Linear, spec: dict[str, Any]) -> Any:
    (cls,) = require(impl, "LoHaLinear")
    return call_learner(
        lambda: cls(copy.deepcopy(base), spec["rank"], spec["alpha"], rank_dropout=spec["p"]),
        "LoHaLinear(base, rank, alpha, rank_dropout=...)",
        spec,
    )


def check_factors(layer: nn.Module, spec: dict[str, Any]) -> None:
    """The four factors are Parameters of PEFT's shapes."""
    for name in FACTORS:
        shape = (spec["out"], spec["rank"]) if name.endswith("_a") else (spec["rank"], spec["in"])
        p = getattr(layer, name, None)
        if not isinstance(p, nn.Parameter) or tuple(p.shape) != shape:
            raise AssertionError(
                explain(
                    f"{name} must be an nn.Parameter of shape {shape}",
                    drawn=spec,
                    got=repr(p if not isinstance(p, torch.Tensor) else tuple(p.shape)),
                    hint=SHAPE_HINT,
                )
            )


def layer_pair(impl: ModuleType, ref: ModuleType, spec: dict[str, Any]) -> tuple[Any, Any, LibraryLoHa]:
    """The learner's, the reference and peft_zoo's layer over copies of one base, holding the same
    random nonzero factors (hada_w2_b moved off zero, so every factor matters)."""
    base = base_layer(spec)
    mine = build(impl, base, spec)
    check_factors(mine, spec)
    theirs = ref.LoHaLinear(copy.deepcopy(base), spec["rank"], spec["alpha"], rank_dropout=spec["p"])
    library = LibraryLoHa(copy.deepcopy(base), spec["rank"], spec["alpha"])
    g = torch.Generator().manual_seed(spec["seed"])
    with torch.no_grad():
        for name in FACTORS:
            value = torch.randn(getattr(theirs, name).shape, generator=g, dtype=torch.float64)
            for layer in (mine, theirs, library):
                getattr(layer, name).copy_(value)
    return mine, theirs, library


def delta_bugs(layer: Any) -> dict[str, Callable[[], torch.Tensor]]:
    """ΔW under each classic mistake, from ``layer``'s factors."""
    w1 = layer.hada_w1_a @ layer.hada_w1_b
    w2 = layer.hada_w2_a @ layer.hada_w2_b
    alpha = layer.scale * layer.hada_w1_a.shape[1]
    rank = layer.hada_w1_a.shape[1]
    return {
        SCALE_R2: lambda: (w1 * w2) * alpha / rank**2,
        NO_SCALE: lambda: w1 * w2,
        HADAMARD: lambda: (w1 @ w2) * layer.scale,
        SINGLE: lambda: w1 * layer.scale,
    }


def as_outputs(layer: Any, x: torch.Tensor, deltas: dict[str, Callable[[], torch.Tensor]]) -> dict[str, Any]:
    """Each candidate ΔW turned into the layer's output ``base(x) + x ΔWᵀ``."""
    return {name: (lambda d=d: layer.base(x) + F.linear(x, d())) for name, d in deltas.items()}


def seeded(seed: int, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    torch.manual_seed(seed)
    return fn()


def dropout_bugs(theirs: Any, x: torch.Tensor, seed: int) -> dict[str, Callable[[], torch.Tensor]]:
    """The training-mode output under each rank-dropout mistake, same seed as the learner's call."""
    delta, p = theirs.delta_weight(), theirs.rank_dropout
    out_f, in_f = delta.shape

    def masked(rows: bool, rescale: bool) -> torch.Tensor:
        torch.manual_seed(seed)
        keep = (torch.rand(out_f if rows else in_f) > p).to(delta.dtype)
        if rescale and keep.mean() > 0:
            keep = keep / keep.mean()
        d = delta * (keep[:, None] if rows else keep[None, :])
        return theirs.base(x) + F.linear(x, d)

    return {
        DROP_COLUMNS: lambda: masked(rows=False, rescale=True),
        NOT_RESCALED: lambda: masked(rows=True, rescale=False),
    }
