"""Parallel adapters (He et al., 2022, arXiv:2110.04366, "Towards a Unified View of
Parameter-Efficient Transfer Learning"): put the bottleneck adapter *beside* the frozen
sublayer instead of after it.

    out = F(x) + delta(x)          both branches read the same input   x, out: (..., d)

Compare the serial form ``h = x + F(x); out = h + delta(h)``: there the adapter must wait
for ``F``; here it reads ``x`` and can run concurrently with the sublayer. No residual is
added by this block (wrap the block in one if the sublayer needs it), so with ``delta = 0``
at initialisation the block computes exactly ``F(x)``. He et al. found this parallel
placement, applied to the feed-forward sublayer, to work better than the serial one.
"""

from __future__ import annotations

import torch
from torch import nn

from peft_zoo import BottleneckAdapter


class ParallelAdapterBlock(nn.Module):
    """Run ``sublayer`` (``(..., d) -> (..., d)``) and ``adapter`` side by side on the same input.

    Keep both as attributes ``self.sublayer`` and ``self.adapter``. ``forward(x)`` returns
    ``sublayer(x) + adapter.forward_delta(x)``: ``(..., d) -> (..., d)``, no extra ``x``.
    About 3 lines.
    """

    def __init__(self, sublayer: nn.Module, adapter: BottleneckAdapter) -> None:
        super().__init__()
        # BEGIN SOLUTION: keep sublayer and adapter as attributes
        self.sublayer = sublayer
        self.adapter = adapter
        # END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d) -> (..., d)``: the sublayer's output plus the adapter's delta, both of x. 1 line."""
        # BEGIN SOLUTION: add the two branches, each fed x
        return self.sublayer(x) + self.adapter.forward_delta(x)  # (..., d): no residual x here
        # END SOLUTION
