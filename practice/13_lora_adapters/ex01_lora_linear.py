# Challenge 01 · LoRALinear: a frozen Linear plus a low-rank update. Replace each TODO(ex01) with your code, then run:
#     peft-zoo check 1        (or: pytest practice/13_lora_adapters/test_ex01_lora_linear.py)
# Stuck? `peft-zoo hint 1`. Start over: `peft-zoo reset 1` (your file is backed up).
"""LoRA (Hu et al., 2021): keep a pretrained ``nn.Linear`` frozen and learn a low-rank update.

    y = W0 x + b + scale · B (A dropout(x))        A: (rank, in)   B: (out, rank)
    scale = alpha / rank   (alpha defaults to rank; rsLoRA uses alpha / sqrt(rank))

Only A and B train: rank · (in + out) numbers instead of in · out. B starts at zero, so
the layer starts out computing exactly what the base computed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LoRALinear(nn.Module):
    """Wrap ``base`` (an ``nn.Linear``) with a trainable low-rank update.

    Attributes to create (the graders look for these names):
        base    the wrapped layer, frozen (``requires_grad=False`` on its weight and bias)
        lora_A  ``nn.Parameter`` of shape ``(rank, in_features)``, Kaiming-uniform with
                ``a=math.sqrt(5)`` (how ``nn.Linear`` initialises its weight)
        lora_B  ``nn.Parameter`` of shape ``(out_features, rank)``, zeros
        scale   float: ``alpha / rank`` (``alpha / sqrt(rank)`` when ``rslora``), alpha defaults to rank
        lora_dropout  ``nn.Dropout(dropout)``, applied to the input of the LoRA path only

    Both parameters use the base weight's dtype and device. About 10 lines.
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float | None = None,
        *,
        dropout: float = 0.0,
        rslora: bool = False,
    ) -> None:
        super().__init__()
        # TODO(ex01): freeze base; create lora_A (rank, in) and lora_B (out, rank); set scale and lora_dropout
        raise NotImplementedError("ex01 (lora_linear): LoRALinear.__init__ is not implemented yet")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``: ``base(x) + scale · B A dropout(x)``. 2 lines."""
        # TODO(ex01): base output plus the scaled low-rank path (dropout on the LoRA input only)
        raise NotImplementedError("ex01 (lora_linear): LoRALinear.forward is not implemented yet")
