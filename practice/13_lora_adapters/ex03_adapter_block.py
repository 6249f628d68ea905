# Challenge 03 · AdapterBlock: a sublayer and a serial adapter, one residual each. Replace each TODO(ex03) with your code, then run:
#     peft-zoo check 3        (or: pytest practice/13_lora_adapters/test_ex03_adapter_block.py)
# Stuck? `peft-zoo hint 3`. Start over: `peft-zoo reset 3` (your file is backed up).
"""Serial adapters (Houlsby et al., 2019, arXiv:1902.00751): insert a bottleneck adapter
right after a frozen sublayer (attention or feed-forward), inside its residual stream. This
block puts it *after* the sublayer's residual, Pfeiffer's position (AdapterHub's SeqBnConfig,
without its LayerNorms); Houlsby's original adds delta(F(x)) before it: x + F(x) + delta(F(x)).

    h   = x + F(x)              the sublayer with its own residual       x, h: (..., d)
    out = h + delta(h)          the adapter reads h and adds its delta   out: (..., d)

One residual each. ``delta`` (``adapter.forward_delta``) starts at zero, so the block
starts equal to ``x + F(x)``: the pretrained computation. The adapter sits *after* the
sublayer, so it sees what the sublayer produced and can correct it; gradients reach the
adapter through ``out`` and reach ``x`` through both the sublayer and the adapter.
"""

from __future__ import annotations

import torch
from torch import nn

from peft_zoo import BottleneckAdapter


class AdapterBlock(nn.Module):
    """Wrap ``sublayer`` (``(..., d) -> (..., d)``) with a serial ``adapter``.

    Keep both as attributes ``self.sublayer`` and ``self.adapter`` (so their parameters
    belong to the block). ``forward(x)``: ``h = x + sublayer(x)``, then return
    ``h + adapter.forward_delta(h)``; shapes ``(..., d) -> (..., d)``. Use ``forward_delta``,
    not ``adapter(h)``: calling the adapter adds its own copy of ``h``. About 4 lines.
    """

    def __init__(self, sublayer: nn.Module, adapter: BottleneckAdapter) -> None:
        super().__init__()
        # TODO(ex03): keep sublayer and adapter as attributes
        raise NotImplementedError("ex03 (adapter_block): AdapterBlock.__init__ is not implemented yet")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d) -> (..., d)``: the sublayer's residual, then the adapter's. 2 lines."""
        # TODO(ex03): h = x + sublayer(x); return h + the adapter's delta of h
        raise NotImplementedError("ex03 (adapter_block): AdapterBlock.forward is not implemented yet")
