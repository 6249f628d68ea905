"""Layer-level comparison of peft_zoo's LoHa / LoKr layers with PEFT's own ``Linear`` layers
(tests/test_loha.py, tests/test_lokr.py).

PEFT's layer is built directly around a copy of the same base, as its tuner builds it
(``Linear(base, "default", config, r=..., alpha=...)``, which calls ``update_layer``). Both get
the same random non-zero factors; then outputs, the gradient of every factor, the delta
weight and merged / unmerged outputs are compared and the largest |difference| returned.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from peft_zoo.loha import LycorisLinear

PEFT_KEY = "default"


def peft_layer(kind: str, base: nn.Linear, rank: int, alpha: float, **config: Any) -> nn.Module:
    """PEFT's ``loha.layer.Linear`` / ``lokr.layer.Linear`` around a copy of ``base`` (frozen)."""
    peft = pytest.importorskip("peft")
    if kind == "loha":
        from peft.tuners.loha.layer import Linear

        cfg = peft.LoHaConfig(r=rank, alpha=alpha, **config)
    else:
        from peft.tuners.lokr.layer import Linear

        cfg = peft.LoKrConfig(r=rank, alpha=alpha, **config)
    layer = Linear(copy.deepcopy(base), PEFT_KEY, cfg, r=rank, alpha=alpha)
    layer.base_layer.requires_grad_(False)
    return layer


def peft_params(theirs: nn.Module) -> dict[str, nn.Parameter]:
    """PEFT's trainable adapter tensors by their attribute name (``hada_w1_a``, ``lokr_w2``, ...)."""
    return {n.removesuffix(f".{PEFT_KEY}"): p for n, p in theirs.named_parameters() if p.requires_grad}


def randomise_and_copy(ours: LycorisLinear, theirs: nn.Module, std: float = 0.5) -> None:
    """Give every factor of ``ours`` random non-zero values and copy them into ``theirs``;
    the two must hold exactly the same set of tensors with the same shapes."""
    mine = dict(ours.adapter_named_parameters())
    other = peft_params(theirs)
    assert sorted(mine) == sorted(other), f"parameter names differ: {sorted(mine)} vs {sorted(other)}"
    with torch.no_grad():
        for name, p in mine.items():
            assert p.shape == other[name].shape, f"{name}: {tuple(p.shape)} vs {tuple(other[name].shape)}"
            p.copy_(torch.randn_like(p) * std)
            other[name].copy_(p)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
    return float((a.detach().double() - b.detach().double()).abs().max()) if a.numel() else 0.0


def check(diffs: dict[str, float], scale: float, dtype: torch.dtype) -> None:
    """Every difference within float rounding of ``dtype`` for values of size ``scale``."""
    tol = (1e-5 if dtype == torch.float32 else 1e-10) * (1.0 + scale)
    bad = {k: v for k, v in diffs.items() if not v <= tol}
    assert not bad, f"differences above {tol:.3g}: {bad}"


def forward_backward(layer: nn.Module, x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
    """Output of ``layer(x)``; backpropagates ``sum(out * weights)`` into the factors."""
    if seed is not None:
        torch.manual_seed(seed)
    out = layer(x)
    g = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    if out.requires_grad:  # not when module dropout skipped the update (the base is frozen)
        (out * g).sum().backward()
    return out.detach()


def compare_training(
    ours: LycorisLinear, theirs: nn.Module, x: torch.Tensor, seed: int | None = None
) -> dict[str, float]:
    """Outputs and factor gradients of one forward/backward each (same RNG seed when given)."""
    ours.zero_grad(set_to_none=True)
    theirs.zero_grad(set_to_none=True)
    out_a = forward_backward(ours, x, seed)
    out_b = forward_backward(theirs, x, seed)
    if torch.isnan(out_b).any() and seed is not None:
        # PEFT's rank dropout divides by the fraction kept: 0 / 0 when every row is dropped.
        # peft_zoo leaves the update at zero there instead (documented in peft_zoo.loha).
        assert torch.equal(out_a, ours.base(x)), "every row dropped: the update must vanish, not be NaN"
        return {}
    diffs = {"output": max_diff(out_a, out_b)}
    other = peft_params(theirs)
    for name, p in ours.adapter_named_parameters():
        mine, theirs_grad = p.grad, other[name].grad
        if mine is None or theirs_grad is None:  # both skipped by module dropout, or neither
            assert mine is None and theirs_grad is None, f"{name}: gradient on one side only"
            continue
        diffs[f"grad {name}"] = max_diff(mine, theirs_grad)
    return diffs


def compare_merge(ours: LycorisLinear, theirs: Any, x: torch.Tensor) -> dict[str, float]:
    """Delta weight, merged weights and outputs, and the base weight after unmerge."""
    ours.eval()
    theirs.eval()
    w0 = ours.base.weight.detach().clone()
    diffs = {"delta_weight": max_diff(ours.delta_weight(), theirs.get_delta_weight(PEFT_KEY))}
    with torch.no_grad():
        unmerged = ours(x)
        diffs["eval output"] = max_diff(unmerged, theirs(x))
        ours.merge()
        theirs.merge()
        assert ours.merged and theirs.merged
        diffs["merged weight"] = max_diff(ours.base.weight, theirs.base_layer.weight)
        diffs["merged output"] = max_diff(ours(x), theirs(x))
        diffs["merged vs unmerged"] = max_diff(ours(x), unmerged)
        ours.unmerge()
        theirs.unmerge()
        diffs["unmerged weight vs W0"] = max_diff(ours.base.weight, w0)
    return diffs


def trainable_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def full_comparison(ours: LycorisLinear, theirs: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Randomise, then compare training outputs / gradients and merge; the parameter counts must match."""
    assert trainable_count(ours) == trainable_count(theirs), (trainable_count(ours), trainable_count(theirs))
    randomise_and_copy(ours, theirs)
    ours.train()
    theirs.train()
    diffs = compare_training(ours, theirs, x)
    diffs.update(compare_merge(ours, theirs, x))
    return diffs
