"""Grader machinery of challenge 20 · dora_linear: drawn layer specs, the learner's layer
beside the reference's with the same random parameters, and eq. 5 of the DoRA paper written
out together with its classic variants (to name the learner's bug)."""

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
from peft_zoo.testing import explain, leading_shapes, seeds


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    """Features, rank, alpha (scale != 1 mostly), bias, leading dims and a seed."""
    rank = draw(st.integers(1, 4))
    return {
        "in": draw(st.integers(1, 6)),
        "out": draw(st.integers(1, 6)),
        "rank": rank,
        "alpha": draw(st.one_of(st.none(), st.sampled_from([0.5, 3.0, 8.0]))),
        "bias": draw(st.booleans()),
        "lead": draw(leading_shapes(max_dims=2, max_size=3)),
        "seed": draw(seeds()),
    }


EXAMPLE = {"in": 5, "out": 3, "rank": 2, "alpha": 3.0, "bias": True, "lead": (4,), "seed": 0}
SQUARE = {"in": 4, "out": 4, "rank": 2, "alpha": 8.0, "bias": True, "lead": (2, 3), "seed": 1}


def base_layer(spec: dict[str, Any]) -> nn.Linear:
    torch.manual_seed(spec["seed"])
    return nn.Linear(spec["in"], spec["out"], bias=spec["bias"], dtype=torch.float64)


def call_learner(fn: Callable[[], Any], what: str, spec: dict[str, Any], hint: str) -> Any:
    """Run learner code; a shape error becomes a failure that says where to look."""
    return run_learner(fn, what, spec, hint, (RuntimeError, IndexError))


NORM_HINT = (
    "one norm per OUTPUT feature: ||V|| is the L2 norm of each row of the (out, in) weight, "
    "torch.linalg.norm(V, dim=1), shape (out,)"
)


def check_attributes(layer: nn.Module, spec: dict[str, Any]) -> None:
    """lora_A, lora_B and magnitude are Parameters of the shapes the paper gives them."""
    for name, shape in (
        ("lora_A", (spec["rank"], spec["in"])),
        ("lora_B", (spec["out"], spec["rank"])),
        ("magnitude", (spec["out"],)),
    ):
        p = getattr(layer, name, None)
        if not isinstance(p, nn.Parameter):
            raise AssertionError(explain(f"{name} must be an nn.Parameter", drawn=spec, got=repr(p)))
        if tuple(p.shape) != shape:
            raise AssertionError(
                explain(
                    f"{name} has the wrong shape",
                    drawn=spec,
                    expected=str(shape),
                    got=str(tuple(p.shape)),
                    hint=NORM_HINT
                    if name == "magnitude"
                    else "A is (rank, in_features), B is (out_features, rank)",
                )
            )


def layer_pair(impl: ModuleType, ref: ModuleType, spec: dict[str, Any]) -> tuple[Any, Any]:
    """The learner's and the reference layer over copies of one base, holding the same random A,
    nonzero B and a magnitude moved off ||W0||, so every term of the forward matters."""
    (cls,) = require(impl, "DoRALinear")
    base = base_layer(spec)
    mine = cls(copy.deepcopy(base), spec["rank"], spec["alpha"])
    theirs = ref.DoRALinear(copy.deepcopy(base), spec["rank"], spec["alpha"])
    check_attributes(mine, spec)
    g = torch.Generator().manual_seed(spec["seed"])
    with torch.no_grad():
        theirs.lora_A.copy_(torch.randn(theirs.lora_A.shape, generator=g, dtype=torch.float64))
        theirs.lora_B.copy_(0.5 * torch.randn(theirs.lora_B.shape, generator=g, dtype=torch.float64))
        theirs.magnitude.mul_(0.5 + torch.rand(spec["out"], generator=g, dtype=torch.float64))
        for name in ("lora_A", "lora_B", "magnitude"):
            getattr(mine, name).copy_(getattr(theirs, name))
    return mine, theirs


def eq5(
    layer: Any,
    x: torch.Tensor,
    *,
    norm_of: Callable[..., torch.Tensor] | None = None,
    bias_scaled: bool = False,
    inverted: bool = False,
    lora_scale: bool = True,
    magnitude: bool = True,
) -> torch.Tensor:
    """Eq. 5 and its classic variants, written out: ``m / ||N|| (W0 x + s B A x) + b`` where ``N``
    is ``norm_of`` (default V = W0 + s B A, rows)."""
    w0, a, b, s = layer.base.weight, layer.lora_A, layer.lora_B, layer.scale
    v = w0 + s * b @ a
    norm = (v if norm_of is None else norm_of(w0, a, b, s)).norm(dim=1).detach()
    ratio = norm / layer.magnitude if inverted else layer.magnitude / norm
    if not magnitude:
        ratio = torch.ones_like(ratio)
    out = ratio * (F.linear(x, w0) + F.linear(x, b @ a) * (s if lora_scale else 1.0))
    if layer.base.bias is not None:
        out = out + (ratio * layer.base.bias if bias_scaled else layer.base.bias)
    return out


def forward_bugs(theirs: Any, x: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    bugs: dict[str, Callable[[], torch.Tensor]] = {
        "the bias is multiplied by m / ||V||: add the base's bias after the rescaling": lambda: eq5(
            theirs, x, bias_scaled=True
        ),
        "||V|| uses W0 only: the norm must include the update, ||W0 + s B A||": lambda: eq5(
            theirs, x, norm_of=lambda w0, a, b, s: w0
        ),
        "the scale is missing inside the norm: ||W0 + s B A||, not ||W0 + B A||": lambda: eq5(
            theirs, x, norm_of=lambda w0, a, b, s: w0 + b @ a
        ),
        "the ratio is inverted: it is m / ||V||, not ||V|| / m": lambda: eq5(theirs, x, inverted=True),
        "the scale is missing on the LoRA path (B A x instead of s B A x)": lambda: eq5(
            theirs, x, lora_scale=False
        ),
        "the magnitude is never applied (that is plain LoRA)": lambda: eq5(theirs, x, magnitude=False),
    }
    if theirs.base.weight.shape[0] == theirs.base.weight.shape[1]:
        bugs["the norm is taken over the columns (dim=0): it must be one per row (output feature)"] = lambda: (
            eq5(theirs, x, norm_of=lambda w0, a, b, s: (w0 + s * b @ a).T)
        )
    return bugs
