"""Grader machinery of challenge 29 · pissa_init: drawn float32 weights, peft_zoo's own PiSSA /
OLoRA (:mod:`peft_zoo.pissa`, which reproduces PEFT 0.21.2's ``pissa_init`` / ``olora_init`` and
``subtract_mutated_init``) run on a :class:`~peft_zoo.lora.LoRALinear` holding the same weight,
and the classic mistakes written out (to name the learner's bug)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from hypothesis import strategies as st
from torch import nn

from peft_zoo.core.checks import weight_of
from peft_zoo.exercises.grading import run_learner
from peft_zoo.lora import LoRALinear
from peft_zoo.pissa import olora_init_, pissa_init_
from peft_zoo.testing import explain, seeds

# The bugs' names, as the "likely:" lines give them.
NO_SUBTRACT = "the principal part is still in W0: the base must keep W_res = W0 - s B A"
ONE_SIDE = "sqrt(S) on one side only: split it, A = diag(sqrt(S_r / s)) Vᵀ_r and B = U_r diag(sqrt(S_r / s))"
V_NOT_VT = "the rows of V, not of Vᵀ: torch.linalg.svd returns Vᵀ, so A takes its first r ROWS, vh[:r]"
NO_FOLD = "the scale is not folded in: divide S_r by s before the square root, so s B A is the principal part"
OLORA_NO_SCALE = "the residual forgets the scale: W_res = W0 - s B A"
OLORA_ROWS = "B from the first r ROWS of Q: B = Q[:, :r], the first r columns"
DROPPED = "the initial adapter's term is dropped: A' = cat([A, A0]), B' = cat([B, -B0], dim=1)"
SIGN = "B0 added with the wrong sign: W_res = W0 - s B0 A0, so B' = cat([B, -B0], dim=1)"
ALPHA = "alpha not adjusted: at rank 2r the same scale needs alpha' = 2 alpha (sqrt(2) alpha with rsLoRA)"
RSLORA = "rsLoRA's scale is alpha / sqrt(r): doubling the rank needs alpha' = sqrt(2) alpha, not 2 alpha"
OLORA_SHAPES = "check the shapes: B = Q[:, :r] is (out, r), the first r columns of Q; A = R[:r] is (r, in)"
SHAPES = (
    "check the shapes: A (r, in) takes the first r ROWS of vh (torch.linalg.svd returns Vᵀ), "
    "B (out, r) the first r columns of U"
)


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    """Features, a rank up to min(in, out), alpha, rsLoRA and a seed."""
    d_in, d_out = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    return {
        "in": d_in,
        "out": d_out,
        "rank": draw(st.integers(1, min(d_in, d_out))),
        "alpha": draw(st.sampled_from([0.5, 3.0, 8.0])),
        "rslora": draw(st.booleans()),
        "seed": draw(seeds()),
    }


EXAMPLE = {"in": 5, "out": 4, "rank": 2, "alpha": 3.0, "rslora": False, "seed": 0}
TALL = {"in": 3, "out": 5, "rank": 2, "alpha": 8.0, "rslora": True, "seed": 1}


def call_learner(fn: Callable[[], Any], what: str, spec: dict[str, Any], hint: str | None = SHAPES) -> Any:
    """Run learner code; a shape error becomes a failure that says where to look."""
    return run_learner(fn, what, spec, hint, (RuntimeError, IndexError, TypeError, ValueError))


def library_layer(spec: dict[str, Any]) -> LoRALinear:
    """A float32 LoRALinear over a random nn.Linear, as peft_zoo builds it."""
    torch.manual_seed(spec["seed"])
    base = nn.Linear(spec["in"], spec["out"])
    return LoRALinear(base, spec["rank"], spec["alpha"], rslora=spec["rslora"])


def unpack(result: Any, spec: dict[str, Any], what: str, n: int = 3) -> tuple[Any, ...]:
    if not isinstance(result, tuple) or len(result) != n:
        raise AssertionError(
            explain(f"{what} must return a tuple of {n}", drawn=spec, got=repr(result)[:200])
        )
    return result


def align(a: Any, b: Any, ref_a: torch.Tensor) -> tuple[Any, Any]:
    """Flip the sign of each (row of A, column of B) pair to agree with ``ref_a``: the SVD fixes
    singular vectors only up to a shared sign, which changes nothing in B A."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != ref_a.shape:
        return a, b
    if b.dim() != 2 or b.shape[1] != a.shape[0]:
        return a, b
    signs = torch.where((a.detach() * ref_a).sum(dim=1) < 0, -1.0, 1.0).to(a.dtype)
    return a * signs[:, None], b * signs[None, :]


def pissa_bugs(w: torch.Tensor, rank: int, scale: float) -> dict[str, dict[str, Callable[[], torch.Tensor]]]:
    """``"A" | "B" | "W_res" -> {bug: what that bug returns}`` for PiSSA."""
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    sr = s[:rank] / scale
    b = u[:, :rank] @ torch.diag(torch.sqrt(sr))
    a_v = torch.diag(torch.sqrt(sr)) @ vh.T[:rank]
    a_nf, b_nf = torch.diag(torch.sqrt(s[:rank])) @ vh[:rank], u[:, :rank] @ torch.diag(torch.sqrt(s[:rank]))
    return {
        "A": {ONE_SIDE: lambda: torch.diag(sr) @ vh[:rank], V_NOT_VT: lambda: a_v, NO_FOLD: lambda: a_nf},
        "B": {ONE_SIDE: lambda: u[:, :rank], NO_FOLD: lambda: b_nf},
        "W_res": {
            NO_SUBTRACT: lambda: w,
            V_NOT_VT: lambda: w - scale * b @ a_v,
            NO_FOLD: lambda: w - scale * b_nf @ a_nf,
        },
    }


def olora_bugs(w: torch.Tensor, rank: int, scale: float) -> dict[str, dict[str, Callable[[], torch.Tensor]]]:
    """``"A" | "B" | "W_res" -> {bug: what that bug returns}`` for OLoRA."""
    q, r = torch.linalg.qr(w)
    return {
        "A": {},
        "B": {OLORA_ROWS: lambda: q[:rank].T},
        "W_res": {
            OLORA_NO_SCALE: lambda: w - q[:, :rank] @ r[:rank],
            NO_SUBTRACT: lambda: w,
            OLORA_ROWS: lambda: w - scale * q[:rank].T @ r[:rank],
        },
    }


def run_library(spec: dict[str, Any], kind: str) -> tuple[LoRALinear, torch.Tensor]:
    """peft_zoo's PiSSA (``kind="pissa"``) or OLoRA on a fresh layer; returns it and W0."""
    layer = library_layer(spec)
    w0 = weight_of(layer.base).detach().clone()
    if kind == "pissa":
        pissa_init_(layer)
    else:
        olora_init_(layer)
    return layer, w0


def trained(spec: dict[str, Any]) -> tuple[LoRALinear, torch.Tensor, torch.Tensor, nn.Linear]:
    """A PiSSA-initialised layer whose A, B then moved (as training would), its initial A0, B0,
    and the original base holding W0."""
    layer = library_layer(spec)
    original = nn.Linear(spec["in"], spec["out"])
    original.load_state_dict(layer.base.state_dict())
    pissa_init_(layer)
    a0, b0 = layer.lora_A.detach().clone(), layer.lora_B.detach().clone()
    g = torch.Generator().manual_seed(spec["seed"])
    with torch.no_grad():
        layer.lora_A.add_(0.3 * torch.randn(layer.lora_A.shape, generator=g))
        layer.lora_B.add_(0.3 * torch.randn(layer.lora_B.shape, generator=g))
    return layer, a0, b0, original


def conversion_bugs(
    layer: LoRALinear, a0: torch.Tensor, b0: torch.Tensor, spec: dict[str, Any]
) -> dict[str, Any]:
    """``"A" | "B" | "alpha" -> {bug: what that bug returns}`` for the conversion."""
    a, b, alpha = layer.lora_A.detach(), layer.lora_B.detach(), spec["alpha"]
    return {
        "A": {DROPPED: lambda: a},
        "B": {DROPPED: lambda: b, SIGN: lambda: torch.cat([b, b0], dim=1)},
        "alpha": {
            ALPHA: lambda: torch.tensor(alpha, dtype=torch.float64),
            RSLORA: lambda: torch.tensor(2 * alpha if spec["rslora"] else math.nan, dtype=torch.float64),
        },
    }
