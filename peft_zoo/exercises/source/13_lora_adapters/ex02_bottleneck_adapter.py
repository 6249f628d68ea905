"""Bottleneck adapters (Houlsby et al., 2019, arXiv:1902.00751): a tiny trainable MLP added
to a frozen network, squeezed through a narrow bottleneck.

    delta(x) = W_up · act(W_down · x + b_down) + b_up
        x: (..., d)   W_down: (r, d)   act(...): (..., r)   W_up: (d, r)   delta: (..., d)
    adapter(x) = x + delta(x)        (the adapter's own residual connection)

With r much smaller than d the adapter costs ``2·d·r + r + d`` parameters. ``W_up`` and
``b_up`` start at zero, so ``delta = 0`` and the adapter is exactly the identity when
training begins: inserting it does not disturb the pretrained model. ``W_down`` keeps its
random initialisation, so the very first gradient step already moves ``W_up`` in a useful
direction (zero both and no gradient ever reaches ``W_down``).
"""

from __future__ import annotations

import torch
from torch import nn


class BottleneckAdapter(nn.Module):
    """Down-project to ``bottleneck_dim``, apply a non-linearity, project back up.

    Attributes to create (the graders look for these names):
        down_proj  ``nn.Linear(d_model, bottleneck_dim)`` (default initialisation)
        act        ``nn.GELU()`` for ``"gelu"``, ``nn.ReLU()`` for ``"relu"``; any other
                   name raises ``ValueError``
        up_proj    ``nn.Linear(bottleneck_dim, d_model)`` with weight AND bias set to zero
        residual   the flag: ``forward`` adds ``x`` back only when it is True

    ``forward_delta(x) = up_proj(act(down_proj(x)))`` and ``forward(x) = x + delta`` (or just
    ``delta`` when ``residual=False``); both map ``(..., d_model) -> (..., d_model)`` for any
    leading dimensions. About 12 lines in all.
    """

    def __init__(
        self, d_model: int, bottleneck_dim: int, *, activation: str = "gelu", residual: bool = True
    ) -> None:
        super().__init__()
        # BEGIN SOLUTION: create down_proj, act (ValueError for other names), up_proj (zeroed); keep residual
        self.down_proj = nn.Linear(d_model, bottleneck_dim)  # W_down: (r, d)
        if activation == "gelu":
            self.act = nn.GELU()
        elif activation == "relu":
            self.act = nn.ReLU()
        else:
            raise ValueError(f"unknown activation {activation!r}: use 'gelu' or 'relu'")
        self.up_proj = nn.Linear(bottleneck_dim, d_model)  # W_up: (d, r)
        nn.init.zeros_(self.up_proj.weight)  # delta = 0 at init: the adapter starts as the identity
        nn.init.zeros_(self.up_proj.bias)
        self.residual = residual
        # END SOLUTION

    def forward_delta(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d_model) -> (..., d_model)``: the adapter's contribution ``up(act(down(x)))``. 1 line."""
        # BEGIN SOLUTION: down, activation, up
        return self.up_proj(self.act(self.down_proj(x)))  # (..., d) -> (..., r) -> (..., d)
        # END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d_model) -> (..., d_model)``: ``x + delta`` (``delta`` alone if not residual). 2 lines."""
        # BEGIN SOLUTION: the delta, plus x when self.residual
        delta = self.forward_delta(x)  # (..., d)
        return x + delta if self.residual else delta
        # END SOLUTION
