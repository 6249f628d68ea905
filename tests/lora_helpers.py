"""Layers, hand-written reference terms and tolerances shared by the LoRALinear tests (test_lora*.py)."""

from __future__ import annotations

import math

import torch
from hypothesis import settings
from torch import nn

from peft_zoo import LoRALinear
from peft_zoo.testing import tolerance

FAST = settings(max_examples=25, deadline=None)


def make_base(spec: dict, dtype: torch.dtype = torch.float32) -> nn.Linear:
    torch.manual_seed(spec["seed"])
    return nn.Linear(spec["in_features"], spec["out_features"], bias=spec["bias"], dtype=dtype)


def make_lora(spec: dict, dtype: torch.dtype = torch.float32, **kwargs) -> LoRALinear:
    return LoRALinear(make_base(spec, dtype), spec["rank"], spec["alpha"], **kwargs)


def hand_scale(rank: int, alpha: float | None, rslora: bool = False) -> float:
    a = float(rank) if alpha is None else float(alpha)
    return a / math.sqrt(rank) if rslora else a / rank


def randomize_ab(layer: LoRALinear) -> None:
    """Nonzero A *and* B, so the LoRA path actually contributes (B = 0 makes checks vacuous)."""
    with torch.no_grad():
        layer.lora_A.copy_(torch.randn_like(layer.lora_A) * 0.5)
        layer.lora_B.copy_(torch.randn_like(layer.lora_B) * 0.5)


def reference_terms(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    a: torch.Tensor,
    bm: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(base term, LoRA term) in float64, written with plain matmuls."""
    x64, w64, a64, b64 = (t.detach().double() for t in (x, w, a, bm))
    base = x64 @ w64.T
    if b is not None:
        base = base + b.detach().double()
    lora = scale * ((x64 @ a64.T) @ b64.T)
    return base, lora


def magnitude_atol(dtype: torch.dtype, *terms: torch.Tensor) -> tuple[float, float]:
    """(rtol, atol) with atol scaled by the size of the summed terms (cancellation-safe)."""
    rtol, atol = tolerance(dtype)
    mag = 1.0 + sum(float(t.abs().max()) if t.numel() else 0.0 for t in terms)
    return rtol, atol * mag
