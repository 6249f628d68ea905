# Challenge 20 · dora_linear: weight-decomposed LoRA (magnitude times normalised direction). Replace each TODO(ex20) with your code, then run:
#     peft-zoo check 20        (or: pytest practice/13_lora_adapters/test_ex20_dora_linear.py)
# Stuck? `peft-zoo hint 20`. Start over: `peft-zoo reset 20` (your file is backed up).
"""DoRA (Liu et al., 2024): learn how long each weight row is, separately from where it points.

Write a weight as a magnitude times a direction, one pair per output feature (row of the
``(out, in)`` weight). DoRA adapts the direction with LoRA and learns the magnitude
directly (the paper's Eq. 5)::

    V  = W0 + scale · B A                 (out, in)   the LoRA-adapted weight
    W' = m · V / ||V||                    ||V||: the L2 norm of each ROW of V, shape (out,)
    y  = W' x + b                         m: (out,), trainable

Three details decide whether your layer is DoRA or something that merely looks like it:

- **Initialisation.** ``m`` starts as the row norms of ``W0`` and ``B`` as zeros, so
  ``V = W0`` and ``W' = ||W0|| · W0 / ||W0|| = W0``: the layer starts equal to its base.
- **The norm is a constant for backpropagation** (Sec. 4.3): compute ``||V||`` detached from
  the graph. The gradients of ``A`` and ``B`` then flow only through ``V`` in the numerator,
  which saves the memory of the norm's backward; the paper reports no loss of accuracy.
- **The bias is not rescaled.** ``m / ||V||`` multiplies ``V x``, then the base's bias is
  added unchanged.

Merging writes ``W'`` into the base weight, so serving costs one plain ``nn.Linear``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class DoRALinear(nn.Module):
    """Wrap ``base`` (an ``nn.Linear``) with DoRA: a trainable magnitude per output feature times
    the normalised direction of ``W0 + scale · B A``.

    Attributes (the graders look for these names):
        base       the wrapped layer, frozen
        lora_A     ``(rank, in_features)``, Kaiming-uniform; ``lora_B`` ``(out_features, rank)``, zeros
        scale      ``alpha / rank`` (alpha defaults to rank)
        magnitude  ``nn.Parameter`` of shape ``(out_features,)``: the row norms of ``W0`` at init
        merged     ``bool``, False until :meth:`merge`
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None) -> None:
        super().__init__()
        # A LoRA layer, as in challenge 01 (given).
        self.base = base
        self.base.requires_grad_(False)
        factory = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **factory))  # (r, in)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))  # (out, r)
        self.scale = (rank if alpha is None else alpha) / rank
        self.merged = False
        # TODO(ex20): self.magnitude = an nn.Parameter holding the L2 norm of each row of W0, shape (out,)
        raise NotImplementedError("ex20 (dora_linear): DoRALinear.__init__ is not implemented yet")

    def weight_norm(self) -> torch.Tensor:
        """``||W0 + scale · B A||`` per output feature, shape ``(out_features,)``, DETACHED from
        the autograd graph (no gradient may flow through it). About 2 lines."""
        # TODO(ex20): V = W0 + scale * (B @ A), then the L2 norm of each row of V, detached
        raise NotImplementedError("ex20 (dora_linear): DoRALinear.weight_norm is not implemented yet")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``: ``m / ||V|| · (W0 x + scale · B A x) + b``;
        once merged, just ``base(x)``. Do not build the ``(out, in)`` matrix ``W'``: scale
        the two products. About 6 lines."""
        # TODO(ex20): merged: base(x). Else ratio = m / weight_norm(), ratio * (W0 x + scale B A x), then + bias
        raise NotImplementedError("ex20 (dora_linear): DoRALinear.forward is not implemented yet")

    def merge(self) -> None:
        """Write ``W' = m · V / ||V||`` into ``base.weight`` in place (no grad) and set
        ``merged``. Merging twice changes nothing. About 5 lines."""
        # TODO(ex20): if not merged: base.weight <- (m / ||V||)[:, None] * (W0 + scale B A) under no_grad; set merged
        raise NotImplementedError("ex20 (dora_linear): DoRALinear.merge is not implemented yet")
