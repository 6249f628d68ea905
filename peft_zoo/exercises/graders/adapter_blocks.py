"""What the graders of the two adapter blocks share (challenges 03 serial and 06 parallel):
a small sublayer, a trained bottleneck adapter, and the learner's block beside the reference's."""

from __future__ import annotations

import copy
from types import ModuleType

import torch
from torch import nn

from peft_zoo import BottleneckAdapter
from peft_zoo.exercises.grading import require


def feed_forward_sublayer(d: int) -> nn.Module:
    """A small feed-forward sublayer (..., d) -> (..., d), standing in for attention or an MLP."""
    return nn.Sequential(nn.Linear(d, 2 * d), nn.Tanh(), nn.Linear(2 * d, d))


def sublayer_and_adapter(
    d: int, r: int, seed: int, *, adapter_residual: bool = True, trained: bool = True
) -> tuple[nn.Module, BottleneckAdapter]:
    """A sublayer and a ``peft_zoo.BottleneckAdapter``; ``trained`` gives up_proj random
    values (as after some training) so the adapter's delta is not zero."""
    torch.manual_seed(seed)
    sub = feed_forward_sublayer(d)
    adapter = BottleneckAdapter(d, r, residual=adapter_residual)
    if trained:
        with torch.no_grad():
            adapter.up_proj.weight.normal_(0.0, 0.5)
            adapter.up_proj.bias.normal_(0.0, 0.5)
    return sub, adapter


def block_pair(
    impl: ModuleType,
    ref: ModuleType,
    block: str,
    d: int,
    r: int,
    seed: int,
    *,
    dtype: torch.dtype = torch.float32,
    adapter_residual: bool = True,
    trained: bool = True,
) -> tuple[nn.Module, nn.Module]:
    """The learner's ``block`` class and the reference's around identical copies of one
    sublayer and one adapter."""
    (impl_cls,) = require(impl, block)
    sub, adapter = sublayer_and_adapter(d, r, seed, adapter_residual=adapter_residual, trained=trained)
    mine = impl_cls(copy.deepcopy(sub), copy.deepcopy(adapter)).to(dtype)
    theirs = getattr(ref, block)(copy.deepcopy(sub), copy.deepcopy(adapter)).to(dtype)
    return mine, theirs
