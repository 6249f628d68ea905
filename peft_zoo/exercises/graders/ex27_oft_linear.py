"""Grader machinery of challenge 27 · oft_linear: drawn layer specs, the learner's layer beside
peft_zoo's own (:mod:`peft_zoo.oft` with the exact Cayley transform, equal to Hugging Face PEFT's
``use_cayley_neumann=False``) holding the same random ``oft_R``, and the skew matrix, the Cayley
transform, the block order, the side and the merge written out with their classic variants (to
name the learner's bug). A candidate that only makes sense when an earlier step of the learner's
is right is guarded: it is skipped (never named) otherwise."""

from __future__ import annotations

import copy
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from hypothesis import strategies as st
from torch import nn

from peft_zoo.exercises.grading import require, run_learner
from peft_zoo.oft import OFTLinear as LibraryOFT
from peft_zoo.oft import oft_blocks, skew_symmetric
from peft_zoo.testing import explain, leading_shapes, seeds, tolerance

# The bugs' names, as the "likely:" lines give them.
NOT_SKEW = (
    "Q = U + Uᵀ is symmetric: Q must be skew-symmetric, U - Uᵀ (else the Cayley transform is not orthogonal)"
)
UPPER_ONLY = "Q = U is not skew-symmetric: subtract the transpose, Q = U - Uᵀ"
LOWER = "vec went into the lower triangle: U holds vec in the STRICT UPPER triangle, torch.triu_indices order"
CAYLEY_SIGN = (
    "the Cayley factors are swapped: R = (I - Q)(I + Q)^{-1}; (I + Q)(I - Q)^{-1} is Rᵀ, the other way round"
)
BLOCK_ORDER = "the blocks are in reverse order: block i of oft_R sits at rows and columns i b .. i b + b"
WRONG_SIDE = (
    "R is applied on the wrong side: the input rotates as a row vector, base(x @ R) (= W0 Rᵀ x), not x @ Rᵀ"
)
MERGE_R = "merge wrote W0 R: the merged weight is W0 Rᵀ, since y = W0 (Rᵀ x) + b"
DOUBLE = "after merge the rotation is applied twice: once merged, forward is just base(x)"
INIT_NOT_ZERO = "oft_R is not zero at init: oft_R = 0 gives Q = 0 and R = I, so the layer starts as its base"


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    """Block size, number of blocks, out features, bias, leading dims and a seed."""
    return {
        "block": draw(st.integers(2, 4)),
        "r": draw(st.integers(1, 3)),
        "out": draw(st.integers(1, 5)),
        "bias": draw(st.booleans()),
        "lead": draw(leading_shapes(max_dims=2, max_size=3)),
        "seed": draw(seeds()),
    }


EXAMPLE = {"block": 3, "r": 2, "out": 4, "bias": True, "lead": (3,), "seed": 0}
ONE_BLOCK = {"block": 4, "r": 1, "out": 3, "bias": False, "lead": (2,), "seed": 5}

SHAPE_HINT = (
    "oft_R is (r, b (b - 1) / 2); Q and each R_i are (b, b); R = block_diag(R_0, ..., R_{r-1}) is (in, in)"
)


def call_learner(fn: Callable[[], Any], what: str, drawn: dict[str, Any], hint: str = SHAPE_HINT) -> Any:
    """Run learner code; a shape error becomes a failure that says where to look."""
    return run_learner(fn, what, drawn, hint, (RuntimeError, IndexError, ValueError))


def same(a: Any, b: torch.Tensor) -> bool:
    rtol, atol = tolerance(b.dtype)
    return isinstance(a, torch.Tensor) and a.shape == b.shape and torch.allclose(a, b, rtol=rtol, atol=atol)


def guarded(ok: bool, fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """``fn``, or a candidate that does not apply (raises, so grading.diagnose skips it)."""

    def candidate() -> torch.Tensor:
        if not ok:
            raise LookupError("this candidate does not apply: an earlier step differs")
        return fn()

    return candidate


def exact(q: torch.Tensor) -> torch.Tensor:
    return oft_blocks(q, use_cayley_neumann=False, terms=5)


def base_layer(spec: dict[str, Any]) -> nn.Linear:
    torch.manual_seed(spec["seed"])
    return nn.Linear(spec["block"] * spec["r"], spec["out"], bias=spec["bias"], dtype=torch.float64)


def layer_pair(impl: ModuleType, spec: dict[str, Any]) -> tuple[Any, LibraryOFT]:
    """The learner's and peft_zoo's layer over copies of one base with the same random ``oft_R``."""
    (cls,) = require(impl, "OFTLinear")
    base = base_layer(spec)
    mine = call_learner(lambda: cls(copy.deepcopy(base), spec["block"]), "OFTLinear(base, block_size)", spec)
    theirs = LibraryOFT(copy.deepcopy(base), r=0, oft_block_size=spec["block"], use_cayley_neumann=False)
    got = getattr(mine, "oft_R", None)
    if not isinstance(got, nn.Parameter) or got.shape != theirs.oft_R.shape:
        raise AssertionError(
            explain(
                f"oft_R must be an nn.Parameter of shape {tuple(theirs.oft_R.shape)}",
                drawn=spec,
                got=repr(got if not isinstance(got, torch.Tensor) else tuple(got.shape)),
                hint=SHAPE_HINT,
            )
        )
    g = torch.Generator().manual_seed(spec["seed"])
    with torch.no_grad():
        theirs.oft_R.copy_(0.5 * torch.randn(theirs.oft_R.shape, generator=g, dtype=torch.float64))
        got.copy_(theirs.oft_R)
    return mine, theirs


def steps_ok(impl: ModuleType, theirs: LibraryOFT) -> tuple[bool, bool]:
    """Whether the learner's ``skew_symmetric`` and ``cayley`` agree with peft_zoo's on this layer."""
    q = skew_symmetric(theirs.oft_R.detach(), theirs.oft_block_size)
    try:
        skew_ok = same(impl.skew_symmetric(theirs.oft_R.detach(), theirs.oft_block_size), q)
        cayley_ok = same(impl.cayley(q), exact(q))
    except Exception:  # the learner's helpers crash: name nothing that depends on them
        return False, False
    return skew_ok, cayley_ok


def rotation_bugs(
    theirs: LibraryOFT, skew_ok: bool, cayley_ok: bool
) -> dict[str, Callable[[], torch.Tensor]]:
    q = skew_symmetric(theirs.oft_R.detach(), theirs.oft_block_size)
    blocks = exact(q)
    return {
        CAYLEY_SIGN: guarded(skew_ok, lambda: torch.block_diag(*blocks.transpose(-2, -1).unbind(0))),
        BLOCK_ORDER: guarded(skew_ok and cayley_ok, lambda: torch.block_diag(*blocks.flip(0).unbind(0))),
    }
