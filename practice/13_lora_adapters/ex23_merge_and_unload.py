# Challenge 23 · merge_and_unload: fold LoRA into the weights of Linear and GPT-2 Conv1D layers, or refuse. Replace each TODO(ex23) with your code, then run:
#     peft-zoo check 23        (or: pytest practice/13_lora_adapters/test_ex23_merge_and_unload.py)
# Stuck? `peft-zoo hint 23`. Start over: `peft-zoo reset 23` (your file is backed up).
"""merge_and_unload: fold every LoRA update into its base weight and hand back the plain model.

After training, a LoRA model can be exported as the model it adapts: for each adapted layer
write ``W <- W + scale · B A`` into the base weight, then put the base layer back where the
wrapper was. The result has no wrapper left, so a library that knows nothing about adapters
(``transformers``' ``save_pretrained`` / ``from_pretrained``) reproduces the adapted outputs.
Hugging Face PEFT calls this ``merge_and_unload()``; ``unload()`` removes the wrappers without
merging, which gives back the base model.

Three details decide whether the export is right:

- **The weight layout.** ``nn.Linear`` stores ``(out, in)``; GPT-2's ``Conv1D`` stores
  ``(in, out)`` (``y = x W + b``), which PEFT flags with ``fan_in_fan_out=True``. The update
  ``scale · B A`` is ``(out, in)``, so for such a layer it is added transposed.
- **Not everything merges.** A bottleneck adapter with a non-linearity (and prefix or prompt
  tuning) is not a change of one weight matrix. ``merge_and_unload`` must refuse such a model
  with an error that names the layer, and refuse it *before* it changes anything.
- **The wrapper must go.** Merging alone and keeping the wrapper adds the update twice.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Conv1D(nn.Module):
    """GPT-2's transposed linear layer (given): ``weight`` is ``(in, out)``, ``y = x W + b``."""

    def __init__(self, out_features: int, in_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(in_features, out_features) * 0.02)  # (in, out)
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


class LoRAWrapper(nn.Module):
    """A LoRA adapter around ``base`` (an ``nn.Linear``, or a ``Conv1D`` with ``fan_in_fan_out``)
    (given). ``lora_A``: ``(rank, in)``, ``lora_B``: ``(out, rank)``, ``scale = alpha / rank``."""

    mergeable = True

    def __init__(self, base: nn.Module, rank: int, alpha: float | None = None, fan_in_fan_out: bool = False):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.fan_in_fan_out = fan_in_fan_out
        shape = tuple(base.weight.shape)
        in_features, out_features = shape if fan_in_fan_out else shape[::-1]
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))  # (r, in)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))  # (out, r)
        self.scale = (rank if alpha is None else alpha) / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * F.linear(F.linear(x, self.lora_A), self.lora_B)


class BottleneckWrapper(nn.Module):
    """A bottleneck adapter on ``base``'s output (given): ``h + up(relu(down(h)))``, ``h = base(x)``.
    The ReLU makes it more than a change of weights: it cannot be merged."""

    mergeable = False

    def __init__(self, base: nn.Module, out_features: int, bottleneck: int) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.down = nn.Linear(out_features, bottleneck)
        self.up = nn.Linear(bottleneck, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)
        return h + self.up(torch.relu(self.down(h)))


def adapter_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every ``(qualified name, wrapper)`` in ``model`` with a ``mergeable`` flag (given)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(getattr(m, "mergeable", None), bool)]


def replace(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule ``name`` (e.g. ``"blocks.1.proj"``) is (given)."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def delta_weight(layer: LoRAWrapper) -> torch.Tensor:
    """``scale · B A`` in the layout of ``layer.base.weight``: ``(out, in)`` for ``nn.Linear``,
    ``(in, out)`` when ``layer.fan_in_fan_out``. 2 lines."""
    # TODO(ex23): scale * (B @ A), transposed for a fan_in_fan_out (Conv1D) layer
    raise NotImplementedError("ex23 (merge_and_unload): delta_weight is not implemented yet")


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold every LoRA wrapper of ``model``'s submodules into its base weight (in place, no
    gradient) and put the base layer back in its place; return ``model``. Refuse a model holding
    any non-mergeable wrapper with a ``ValueError`` naming it, and change nothing. About 9 lines."""
    # TODO(ex23): check every wrapper first (ValueError naming the non-mergeable ones); then add delta_weight to base.weight and replace the wrapper by its base
    raise NotImplementedError("ex23 (merge_and_unload): merge_and_unload is not implemented yet")


def unload(model: nn.Module) -> nn.Module:
    """Put every wrapper's base back in its place, weights untouched (mergeable or not);
    return ``model``. 3 lines."""
    # TODO(ex23): replace each wrapper by its base layer, without merging
    raise NotImplementedError("ex23 (merge_and_unload): unload is not implemented yet")
