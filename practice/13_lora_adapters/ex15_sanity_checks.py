# Challenge 15 · sanity_checks: write the property tests that catch broken LoRA. Replace each TODO(ex15) with your code, then run:
#     peft-zoo check 15        (or: pytest practice/13_lora_adapters/test_ex15_sanity_checks.py)
# Stuck? `peft-zoo hint 15`. Start over: `peft-zoo reset 15` (your file is backed up).
"""Sanity checks for LoRA: the cheap tests you run before trusting a long fine-tune.

A broken LoRA layer rarely crashes. It trains the whole base by accident, or starts away
from the pretrained model, or never learns, or learns an adapter the forward pass ignores,
and the loss curve only looks a little worse. Four properties catch almost all of it:

1. **Trainable fraction.** The base is frozen (weight *and* bias); only the adapters train,
   ``rank · (in + out)`` numbers against ``in · out`` frozen ones.
2. **Init equals base.** ``B = 0`` at init, so ``B A = 0`` and the layer computes exactly
   what the base layer it was given computes: fine-tuning starts from the pretrained model.
3. **Loss decreases.** A few optimizer steps on the trainable parameters alone lower the
   loss on a tiny fitting problem: gradients flow through the LoRA path.
4. **Adapters matter.** Two layers on one base with different adapter weights disagree,
   and a non-zero adapter moves the output away from the base's.

Here you write those checks. Each takes ``lora_cls``, any class with the LoRALinear
contract: ``lora_cls(base: nn.Linear, rank, alpha=None)`` with attributes ``base``,
``lora_A (rank, in)``, ``lora_B (out, rank)``, ``scale`` and a ``forward``. A check returns
``None`` when the property holds and raises ``AssertionError`` (use ``assert`` with a
message) when it does not. The grader runs your checks on correct layers (all must pass)
and on deliberately broken ones (each must be caught by the check meant for it).

Good checks are deterministic (seed inside the check), fast (tiny layers, a few steps) and
compare against something *independent* of the layer under test: the base layer you
passed in, the loss before training. Comparing the layer with itself proves nothing.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def check_trainable_fraction(lora_cls: type) -> None:
    """Wrap ``nn.Linear(256, 256)`` at rank 4 and assert that every parameter of the base
    layer (weight and bias) has ``requires_grad=False`` and that the trainable parameters
    are a tiny, non-zero fraction of all the layer's parameters (here about 3%; assert < 5%).
    About 7 lines.
    """
    # TODO(ex15): seed; wrap a Linear(256, 256) at rank 4; assert the base is frozen and the trainable share is tiny
    raise NotImplementedError("ex15 (sanity_checks): check_trainable_fraction is not implemented yet")


def check_init_equals_base(lora_cls: type) -> None:
    """Assert that a freshly built layer computes exactly what its base layer computes.

    Use a base *with* a bias and an ``alpha`` different from the rank (so ``scale != 1``:
    a scale applied to the wrong term then shows), and compare with the base you passed in,
    or with a copy of it made before wrapping, never with the layer itself. About 8 lines.
    """
    # TODO(ex15): seed; wrap a Linear (with bias) at alpha != rank; compare layer(x) with the untouched base on random x
    raise NotImplementedError("ex15 (sanity_checks): check_init_equals_base is not implemented yet")


def check_loss_decreases(lora_cls: type) -> None:
    """Fit a tiny problem with a few optimizer steps on the layer's trainable parameters only
    and assert the loss clearly drops (say, below half its starting value).

    Pick a target the layer can reach: the base's output plus a low-rank change. Plain
    gradient descent (``p -= lr * grad`` under ``torch.no_grad()``) or ``torch.optim`` both do;
    tune the learning rate and step count so a correct layer passes comfortably. Before the
    first ``backward``, assert that the output requires grad: a LoRA path that is detached
    from autograd gives an output with no graph at all, and a clear assertion beats the
    RuntimeError ``backward`` would raise. About 14 lines.
    """
    # TODO(ex15): seed; build a layer and a reachable target; optimize only trainable params; assert the loss halves
    raise NotImplementedError("ex15 (sanity_checks): check_loss_decreases is not implemented yet")


def check_adapters_differ(lora_cls: type) -> None:
    """Wrap one base twice, give the two layers different random (non-zero) ``lora_A`` and
    ``lora_B`` (in place, under ``torch.no_grad()``), and assert that the two outputs differ
    from each other and that the first differs from the base's output. About 10 lines.
    """
    # TODO(ex15): seed; two layers on one base with different random A and B; assert their outputs differ, and differ from base
    raise NotImplementedError("ex15 (sanity_checks): check_adapters_differ is not implemented yet")
