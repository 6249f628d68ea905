"""The two correct LoRA layers of challenge 15's grader (besides peft_zoo.LoRALinear and the
challenge 01 answer): the learner's sanity checks must pass on each. The broken layers, each
a bug seen in real LoRA code, stay in the grader where the learner reads them."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MinimalLoRA(nn.Module):
    """A correct LoRA layer written as plainly as possible: only the contract, nothing else."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None) -> None:
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        dtype, device = base.weight.dtype, base.weight.device
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, dtype=dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=dtype, device=device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scale = (rank if alpha is None else alpha) / rank

    def lora_path(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.linear(x, self.lora_A), self.lora_B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_path(x)


class DeltaWeightLoRA(MinimalLoRA):
    """Also correct: one matmul with W0 + scale · B A (no `merged`, no `delta_weight`, no `rank`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.base.weight + self.scale * (self.lora_B @ self.lora_A)
        return F.linear(x, weight, self.base.bias)
