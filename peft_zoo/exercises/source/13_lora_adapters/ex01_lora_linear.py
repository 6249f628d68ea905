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
        # BEGIN SOLUTION: freeze base; create lora_A (rank, in) and lora_B (out, rank); set scale and lora_dropout
        self.base = base
        self.base.requires_grad_(False)
        factory = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        alpha = rank if alpha is None else alpha
        self.scale = alpha / math.sqrt(rank) if rslora else alpha / rank
        self.lora_dropout = nn.Dropout(dropout)
        # END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``: ``base(x) + scale · B A dropout(x)``. 2 lines."""
        # BEGIN SOLUTION: base output plus the scaled low-rank path (dropout on the LoRA input only)
        h = F.linear(self.lora_dropout(x), self.lora_A)  # (..., rank)
        return self.base(x) + self.scale * F.linear(h, self.lora_B)  # (..., out)
        # END SOLUTION
