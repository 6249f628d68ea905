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
    # BEGIN SOLUTION: seed; wrap a Linear(256, 256) at rank 4; assert the base is frozen and the trainable share is tiny
    torch.manual_seed(0)
    layer = lora_cls(nn.Linear(256, 256), 4)
    trainable_base = [n for n, p in layer.base.named_parameters() if p.requires_grad]
    assert not trainable_base, f"base parameters are still trainable: {trainable_base}"
    trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    total = sum(p.numel() for p in layer.parameters())
    # rank · (in + out) = 2,048 trainable of 65,792 + 2,048 in all: about 3%
    assert 0 < trainable / total < 0.05, f"trainable fraction {trainable}/{total} is not tiny"
    # END SOLUTION


def check_init_equals_base(lora_cls: type) -> None:
    """Assert that a freshly built layer computes exactly what its base layer computes.

    Use a base *with* a bias and an ``alpha`` different from the rank (so ``scale != 1``:
    a scale applied to the wrong term then shows), and compare with the base you passed in,
    or with a copy of it made before wrapping, never with the layer itself. About 8 lines.
    """
    # BEGIN SOLUTION: seed; wrap a Linear (with bias) at alpha != rank; compare layer(x) with the untouched base on random x
    torch.manual_seed(0)
    base = nn.Linear(16, 12)  # bias=True: a dropped bias must show
    original = copy.deepcopy(base)  # untouched, in case the layer edits the base it wraps
    layer = lora_cls(base, 4, alpha=8.0)  # scale = 2
    x = torch.randn(5, 16)
    with torch.no_grad():
        expected = original(x)  # independent of the layer under test
        got = layer(x)
    assert torch.allclose(got, expected, atol=1e-6), "at init the layer's output differs from its base's"
    # END SOLUTION


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
    # BEGIN SOLUTION: seed; build a layer and a reachable target; optimize only trainable params; assert the loss halves
    torch.manual_seed(0)
    base = nn.Linear(8, 8)
    layer = lora_cls(base, 2)
    x = torch.randn(32, 8)
    with torch.no_grad():
        target = base(x) + x @ (torch.randn(8, 2) @ torch.randn(2, 8)).T / 4  # reachable at rank 2
    params = [p for p in layer.parameters() if p.requires_grad]  # the trainable ones only
    assert params, "the layer has no trainable parameters"
    losses = []
    for _ in range(30):
        out = layer(x)
        assert out.requires_grad, "the output does not depend on any trainable parameter"
        loss = F.mse_loss(out, target)
        grads = torch.autograd.grad(loss, params, allow_unused=True)  # None for an unused parameter
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                if g is not None:
                    p -= 0.5 * g  # one plain gradient-descent step (what torch.optim.SGD does)
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], f"loss did not drop: {losses[0]:.4g} -> {losses[-1]:.4g}"
    # END SOLUTION


def check_adapters_differ(lora_cls: type) -> None:
    """Wrap one base twice, give the two layers different random (non-zero) ``lora_A`` and
    ``lora_B`` (in place, under ``torch.no_grad()``), and assert that the two outputs differ
    from each other and that the first differs from the base's output. About 10 lines.
    """
    # BEGIN SOLUTION: seed; two layers on one base with different random A and B; assert their outputs differ, and differ from base
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    first, second = lora_cls(base, 4), lora_cls(base, 4)
    x = torch.randn(5, 16)
    with torch.no_grad():
        for layer in (first, second):
            layer.lora_A.normal_()  # a different draw for each layer
            layer.lora_B.normal_()
        base_out = base(x)
        out1, out2 = first(x), second(x)
    assert not torch.allclose(out1, out2), "two layers with different adapters give the same output"
    assert not torch.allclose(out1, base_out), "a non-zero adapter leaves the output equal to the base's"
    # END SOLUTION
