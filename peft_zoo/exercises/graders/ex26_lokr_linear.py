"""Grader machinery of challenge 26 · lokr_linear: drawn layer specs, the learner's layer beside
peft_zoo's own (:mod:`peft_zoo.lokr`, equal to Hugging Face PEFT's) with the same random nonzero
factors, and the split and the Kronecker product written out with their classic variants (to
name the learner's bug)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from hypothesis import strategies as st
from torch import nn

from peft_zoo.exercises.grading import CLASSIC_BUG, require, run_learner
from peft_zoo.lokr import LoKrLinear as LibraryLoKr
from peft_zoo.lokr import factorization as library_factorization
from peft_zoo.testing import explain, leading_shapes, seeds

# The bugs' names, as the "likely:" lines give them.
LARGER_FIRST = "the larger side comes first: return (m, dimension // m) with m the smaller divisor"
SMALLEST = "the smallest divisor was kept: LoKr keeps the LARGEST divisor m with m * m <= dimension"
FACTOR_IGNORED = "a factor that does not divide is ignored: m must also stay <= factor"
REORDERED = "a dividing factor was reordered: PEFT returns (factor, dimension // factor) as it stands"
KRON_ORDER = "the Kronecker factors are swapped: ΔW = W1 ⊗ W2 (torch.kron(W1, W2)), not W2 ⊗ W1"
RESHAPE = (
    "the blocks are laid out wrongly: W1[:, :, None, None] * W2 is (a, c, b, d); the Kronecker product "
    "needs (a, b, c, d) before the reshape (or use torch.kron)"
)
NO_SCALE = "the scale is missing: ΔW = (alpha / r) W1 ⊗ W2"
SCALE_ALPHA = "the scale is alpha: it is alpha / r"
INIT_NOT_ZERO = "lokr_w1 is not zero at init: W1 = 0 makes ΔW = W1 ⊗ W2 = 0"
RULE = "W2 is stored whole only when rank >= max(b, d) / 2; otherwise as lokr_w2_a (b, r) @ lokr_w2_b (r, d)"
SHAPES = "the shapes come from out = a b (W1 rows a, W2 rows b) and in = c d (W1 columns c, W2 columns d)"


def factorization_bugs(dimension: int, factor: int) -> dict[str, tuple[int, int]]:
    """What each classic mistake of ``factorization`` returns (a dividing factor returns early,
    so only the reordering applies there)."""
    divisors = [m for m in range(1, math.isqrt(dimension) + 1) if dimension % m == 0]
    right = library_factorization(dimension, factor)
    smallest = next((m for m in divisors if m > 1 and (factor < 0 or m <= factor)), 1)
    if factor > 0 and dimension % factor == 0:  # the early return: only its own mistake applies
        return {REORDERED: (min(factor, dimension // factor), max(factor, dimension // factor))}
    return {
        LARGER_FIRST: (right[1], right[0]),
        SMALLEST: (smallest, dimension // smallest),
        FACTOR_IGNORED: library_factorization(dimension, -1),
    }


def name_factorization_bug(got: object, dimension: int, factor: int) -> str | None:
    """The "likely:" text for a wrong split: the one classic bug that returns ``got``, if any."""
    right = library_factorization(dimension, factor)
    names = [n for n, v in factorization_bugs(dimension, factor).items() if v == got and v != right]
    return CLASSIC_BUG + names[0] if len(names) == 1 else None


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    """Features (with various divisors), rank, alpha, decompose factor, bias, leading dims, seed."""
    return {
        "in": draw(st.integers(1, 12)),
        "out": draw(st.integers(1, 12)),
        "rank": draw(st.integers(1, 4)),
        "alpha": draw(st.one_of(st.none(), st.sampled_from([0.5, 3.0, 8.0]))),
        "factor": draw(st.sampled_from([-1, -1, 1, 2, 3, 4])),
        "bias": draw(st.booleans()),
        "lead": draw(leading_shapes(max_dims=2, max_size=3)),
        "seed": draw(seeds()),
    }


# W1 (3, 2), W2 (4, 4) stored whole (rank 2 >= 4 / 2): every factor and the order matter.
EXAMPLE = {"in": 8, "out": 12, "rank": 2, "alpha": 3.0, "factor": -1, "bias": True, "lead": (3,), "seed": 0}
# W2 (3, 3) as a rank-1 product (1 < 3 / 2).
LOW_RANK = {"in": 9, "out": 6, "rank": 1, "alpha": 8.0, "factor": -1, "bias": False, "lead": (2,), "seed": 4}
# A larger fixed example on which coinciding candidates part (see grading.diagnose).
RECHECK = {"in": 12, "out": 8, "rank": 3, "alpha": 5.0, "factor": -1, "bias": True, "lead": (2,), "seed": 9}

SHAPE_HINT = (
    "(a, b) = factorization(out_features, f), (c, d) = factorization(in_features, f); lokr_w1 is (a, c), "
    "W2 is (b, d); torch.kron(W1, W2) is (a b, c d) = (out, in)"
)


def base_layer(spec: dict[str, Any]) -> nn.Linear:
    torch.manual_seed(spec["seed"])
    return nn.Linear(spec["in"], spec["out"], bias=spec["bias"], dtype=torch.float64)


def call_learner(fn: Callable[[], Any], what: str, spec: dict[str, Any], hint: str = SHAPE_HINT) -> Any:
    """Run learner code; a shape error becomes a failure that says where to look."""
    return run_learner(fn, what, spec, hint, (RuntimeError, IndexError, AttributeError))


def build(impl: ModuleType, base: nn.Linear, spec: dict[str, Any]) -> Any:
    (cls,) = require(impl, "LoKrLinear")
    return call_learner(
        lambda: cls(copy.deepcopy(base), spec["rank"], spec["alpha"], decompose_factor=spec["factor"]),
        "LoKrLinear(base, rank, alpha, decompose_factor=...)",
        spec,
    )


def library_layer(base: nn.Linear, spec: dict[str, Any]) -> LibraryLoKr:
    return LibraryLoKr(copy.deepcopy(base), spec["rank"], spec["alpha"], decompose_factor=spec["factor"])


def check_parameters(layer: nn.Module, library: LibraryLoKr, spec: dict[str, Any]) -> None:
    """The learner's trainable parameters are peft_zoo's, by name and shape."""
    want = {n: tuple(p.shape) for n, p in library.named_parameters() if p.requires_grad}
    got = {n: tuple(p.shape) for n, p in layer.named_parameters() if p.requires_grad}
    if got == want:
        return
    hint = SHAPES
    if set(got) != set(want) and {"lokr_w2", "lokr_w2_a"} & (set(got) ^ set(want)):
        hint = RULE
    raise AssertionError(
        explain(
            "the trainable parameters (name: shape) differ from PEFT's",
            drawn=spec,
            expected=str(want),
            got=str(got),
            hint=hint,
        )
    )


def layer_pair(impl: ModuleType, ref: ModuleType, spec: dict[str, Any]) -> tuple[Any, Any, LibraryLoKr]:
    """The learner's, the reference and peft_zoo's layer over copies of one base, holding the same
    random nonzero factors (lokr_w1 moved off zero, so every factor matters)."""
    base = base_layer(spec)
    mine = build(impl, base, spec)
    library = library_layer(base, spec)
    check_parameters(mine, library, spec)
    theirs = ref.LoKrLinear(copy.deepcopy(base), spec["rank"], spec["alpha"], decompose_factor=spec["factor"])
    g = torch.Generator().manual_seed(spec["seed"])
    with torch.no_grad():
        for name, p in library.named_parameters():
            if p.requires_grad:
                value = torch.randn(p.shape, generator=g, dtype=torch.float64)
                for layer in (mine, theirs, library):
                    dict(layer.named_parameters())[name].copy_(value)
    return mine, theirs, library


def delta_bugs(layer: Any, rank: int) -> dict[str, Callable[[], torch.Tensor]]:
    """ΔW under each classic mistake, from the reference ``layer``'s factors."""
    w1, w2, s = layer.lokr_w1, layer.w2(), layer.scale
    out_f, in_f = layer.base.out_features, layer.base.in_features

    def reshaped() -> torch.Tensor:
        return (w1[:, :, None, None] * w2[None, None]).reshape(out_f, in_f) * s

    return {
        KRON_ORDER: lambda: torch.kron(w2, w1) * s,
        RESHAPE: reshaped,
        NO_SCALE: lambda: torch.kron(w1, w2),
        SCALE_ALPHA: lambda: torch.kron(w1, w2) * s * rank,
    }
