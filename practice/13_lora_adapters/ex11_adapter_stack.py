# Challenge 11 · AdapterStack: one adapter per task, chosen per call. Replace each TODO(ex11) with your code, then run:
#     peft-zoo check 11        (or: pytest practice/13_lora_adapters/test_ex11_adapter_stack.py)
# Stuck? `peft-zoo hint 11`. Start over: `peft-zoo reset 11` (your file is backed up).
"""Many tasks, one frozen model: keep one bottleneck adapter (Houlsby et al., 2019,
arXiv:1902.00751) per task and choose which one to apply on each call.

    out = x + delta_k(x)          k = adapter_id in [0, num_adapters)     x, out: (..., d)

Each task costs only its adapter's ``2·d·r + r + d`` parameters; the base model is shared.
Switching tasks is picking a different ``k``: nothing is reloaded or merged. Every adapter
has its own weights (a list holding the same adapter ``n`` times would make every task share
one), and an id outside the range is an error, not Python's count-from-the-end.
"""

from __future__ import annotations

import torch
from torch import nn

from peft_zoo import BottleneckAdapter


class AdapterStack(nn.Module):
    """``num_adapters`` independent ``BottleneckAdapter(d_model, bottleneck_dim)``, one per task.

    Attribute to create: ``adapters``, an ``nn.ModuleList`` of ``num_adapters`` distinct
    ``peft_zoo.BottleneckAdapter`` (each with its own parameters).
    ``forward(x, adapter_id)``: ``(..., d_model) -> (..., d_model)``, returns
    ``x + adapters[adapter_id].forward_delta(x)``. Raise ``IndexError`` naming the valid range
    when ``adapter_id`` is outside ``[0, num_adapters)``, negative ids included. About 6 lines.
    """

    def __init__(self, d_model: int, bottleneck_dim: int, num_adapters: int) -> None:
        super().__init__()
        # TODO(ex11): self.adapters, an nn.ModuleList of num_adapters separate BottleneckAdapters
        raise NotImplementedError("ex11 (adapter_stack): AdapterStack.__init__ is not implemented yet")

    def forward(self, x: torch.Tensor, adapter_id: int) -> torch.Tensor:
        """``(..., d) -> (..., d)`` through adapter ``adapter_id``; IndexError outside the range. 4 lines."""
        # TODO(ex11): check 0 <= adapter_id < num_adapters (IndexError), then x + that adapter's delta
        raise NotImplementedError("ex11 (adapter_stack): AdapterStack.forward is not implemented yet")
