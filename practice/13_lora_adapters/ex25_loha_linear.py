# Challenge 25 · loha_linear: LoHa, a Hadamard product of two low-rank products (rank up to r²). Replace each TODO(ex25) with your code, then run:
#     peft-zoo check 25        (or: pytest practice/13_lora_adapters/test_ex25_loha_linear.py)
# Stuck? `peft-zoo hint 25`. Start over: `peft-zoo reset 25` (your file is backed up).
"""LoHa (FedPara, Hyeon-Woo et al., 2021; LyCORIS): a Hadamard product of two low-rank products.

LoRA's update ``B A`` has rank at most ``r``. LoHa builds two such products and multiplies
them ELEMENTWISE (the Hadamard product ``⊙``)::

    ΔW = scale · (W1a W1b) ⊙ (W2a W2b)      W1a, W2a: (out, r)   W1b, W2b: (r, in)
    y  = W0 x + b + ΔW x                    scale = alpha / r (alpha defaults to r)

By the Schur product theorem ``rank(P ⊙ Q) <= rank(P) rank(Q)``, so ``ΔW`` reaches rank ``r²``
with ``2 r (in + out)`` parameters, where LoRA with the same budget reaches ``2 r``.

Four details decide whether your layer is LoHa as LyCORIS and Hugging Face PEFT compute it:

- **Initialisation.** ``W1a``, ``W1b``, ``W2a`` Kaiming-uniform (``a = sqrt(5)``, as
  ``nn.Linear`` initialises its weight) and ``W2b = 0``: then ``W2a W2b = 0``, ``ΔW = 0`` and the
  layer starts equal to its base. Only one factor is zero, so every factor still trains.
- **The scale is alpha / r**, not ``alpha / r²``, although the rank reaches ``r²``.
- **No factored shortcut.** ``x ↦ x Aᵀ Bᵀ`` works for LoRA; a Hadamard product does not
  factor that way, so LoHa builds ``ΔW`` (out, in) and applies it with one ``F.linear``.
- **Rank dropout** (training only, despite its name): each OUTPUT row of ``ΔW`` is kept with
  probability ``1 - p`` and the kept rows are divided by the fraction kept.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LoHaLinear(nn.Module):
    """Wrap ``base`` (an ``nn.Linear``) with a LoHa update; the base is frozen.

    Attributes (the graders look for these names; PEFT's names):
        base                    the wrapped layer, frozen
        hada_w1_a, hada_w2_a    ``nn.Parameter (out_features, rank)``
        hada_w1_b, hada_w2_b    ``nn.Parameter (rank, in_features)``; ``hada_w2_b`` starts at zero
        scale                   ``alpha / rank`` (alpha defaults to rank)
        rank_dropout            the probability ``p`` of dropping an output row of ΔW in training
    """

    def __init__(
        self, base: nn.Linear, rank: int, alpha: float | None = None, *, rank_dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.rank_dropout = rank_dropout
        factory = {"dtype": base.weight.dtype, "device": base.weight.device}
        out_f, in_f = base.out_features, base.in_features
        # TODO(ex25): four Parameters (PEFT's names and shapes), three Kaiming-uniform (a = sqrt(5)) and hada_w2_b zeros; scale = alpha / rank
        raise NotImplementedError("ex25 (loha_linear): LoHaLinear.__init__ is not implemented yet")

    def delta_weight(self) -> torch.Tensor:
        """``ΔW = scale · (W1a W1b) ⊙ (W2a W2b)``, shape ``(out_features, in_features)``, no
        dropout. About 3 lines."""
        # TODO(ex25): two (out, in) matrix products, multiplied elementwise, times scale
        raise NotImplementedError("ex25 (loha_linear): LoHaLinear.delta_weight is not implemented yet")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``: ``base(x) + F.linear(x, ΔW)``. In training
        mode with ``rank_dropout > 0``, first multiply the rows of ``ΔW`` by a mask drawn as
        ``(torch.rand(out_features) > rank_dropout)``, divided by its mean when that is > 0.
        About 8 lines."""
        # TODO(ex25): delta = delta_weight(); in training with rank_dropout > 0: keep = (rand(out) > p), keep / keep.mean(), delta * keep[:, None]
        raise NotImplementedError("ex25 (loha_linear): LoHaLinear.forward is not implemented yet")
