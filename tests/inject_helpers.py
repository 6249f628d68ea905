"""Models and small helpers shared by the injection tests (test_inject*.py, test_trainability.py)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from peft_zoo.models import TinyMLP, TinyTransformerBlock

MLP_LINEARS = ["encoder.0", "encoder.2.branch.fc1", "encoder.2.branch.fc2", "head"]
BLOCK_LINEARS = [
    "attn.branch.q",
    "attn.branch.k",
    "attn.branch.v",
    "attn.branch.o",
    "ffn.branch.fc1",
    "ffn.branch.fc2",
]


def make_mlp(seed: int = 0) -> TinyMLP:
    torch.manual_seed(seed)
    return TinyMLP()


def make_block(seed: int = 0) -> TinyTransformerBlock:
    torch.manual_seed(seed)
    return TinyTransformerBlock(d_model=16, n_heads=2, d_ff=32)


def plain_linear_names(model: nn.Module) -> list[str]:
    """Paths of modules whose type is exactly nn.Linear (not inside any check of ours)."""
    return [n for n, m in model.named_modules() if type(m) is nn.Linear]


def param_ids(params: Iterable[torch.Tensor]) -> list[int]:
    return [id(p) for p in params]


class ContainerNet(nn.Module):
    """Linears inside nn.Sequential, nn.ModuleList and nn.ModuleDict children."""

    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6))
        self.layers = nn.ModuleList([nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 6)])
        self.heads = nn.ModuleDict({"cls": nn.Linear(6, 3), "reg": nn.Linear(6, 1)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.seq(x)
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return torch.cat([self.heads["cls"](x), self.heads["reg"](x)], dim=-1)
