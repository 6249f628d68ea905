"""LoKr (LyCORIS, Yeh et al., 2023): a Kronecker-product update.

Split ``out = a b`` and ``in = c d`` and build the update from two small factors::

    ΔW = scale · W1 ⊗ W2          W1: (a, c)   W2: (b, d)   ΔW: (a b, c d) = (out, in)
    y  = W0 x + b + ΔW x          scale = alpha / r (alpha defaults to r)

The Kronecker product tiles ``W2`` once per entry of ``W1``: block ``(i, j)`` of ``ΔW`` (rows
``i b .. i b + b``, columns ``j d .. j d + d``) is ``W1[i, j] · W2``. Its rank is
``rank(W1) · rank(W2)``, so a full-rank update of a 4096 x 4096 matrix costs ``64² + 64²``
numbers. ``W1 ⊗ W2`` and ``W2 ⊗ W1`` have the same shape here but different entries: the order
matters.

Three details decide whether your layer is LoKr as LyCORIS and Hugging Face PEFT compute it:

- **The split** (``factorization``, PEFT's rule): a ``decompose_factor > 0`` that divides the
  dimension gives ``(factor, dim // factor)`` as it stands. Otherwise take ``m``, the largest
  divisor of ``dim`` with ``m² <= dim`` (and ``m <= factor`` when ``factor > 0``), and return
  ``(m, dim // m)``: the divisor pair closest to the square root, smaller side first.
- **The low-rank second factor.** ``W2`` is stored whole (``lokr_w2 (b, d)``) when
  ``r >= max(b, d) / 2``; otherwise as the product ``lokr_w2_a (b, r) @ lokr_w2_b (r, d)``.
  ``W1`` here is always stored whole.
- **Initialisation.** ``W1 = 0`` and every stored part of ``W2`` Kaiming-uniform (``a = sqrt(5)``),
  so ``ΔW = 0`` and the layer starts equal to its base.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """Split ``dimension`` into ``(m, n)``, ``m * n == dimension``, by PEFT's rule (see above):
    ``factorization(12) == (3, 4)``, ``factorization(7) == (1, 7)``, ``factorization(36, 5) == (4, 9)``,
    ``factorization(12, 6) == (6, 2)``. ``factor`` is ``-1`` (automatic) or an int >= 1.
    About 7 lines."""
    # BEGIN SOLUTION: a dividing factor > 0: (factor, dimension // factor); else m = the largest divisor with m * m <= dimension (and m <= factor if factor > 0)
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor  # as given, even when factor > dimension // factor
    m = 1
    for candidate in range(2, math.isqrt(dimension) + 1):  # the divisors up to the square root
        if dimension % candidate == 0 and (factor < 0 or candidate <= factor):
            m = candidate  # keep the largest: the split closest to the square root
    return m, dimension // m
    # END SOLUTION


class LoKrLinear(nn.Module):
    """Wrap ``base`` (an ``nn.Linear``) with a LoKr update; the base is frozen.

    Attributes (the graders look for these names; PEFT's names):
        base        the wrapped layer, frozen
        lokr_w1     ``nn.Parameter (a, c)``, zeros, with ``(a, b) = factorization(out, f)`` and
                    ``(c, d) = factorization(in, f)``, ``f = decompose_factor``
        lokr_w2     ``nn.Parameter (b, d)`` when ``rank >= max(b, d) / 2``; otherwise
                    ``lokr_w2_a (b, rank)`` and ``lokr_w2_b (rank, d)``; Kaiming-uniform
        scale       ``alpha / rank`` (alpha defaults to rank)
    """

    def __init__(
        self, base: nn.Linear, rank: int, alpha: float | None = None, *, decompose_factor: int = -1
    ) -> None:
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        factory = {"dtype": base.weight.dtype, "device": base.weight.device}
        # BEGIN SOLUTION: shapes from factorization; lokr_w1 (a, c) zeros; W2 whole (b, d) if rank >= max(b, d) / 2 else lokr_w2_a (b, r), lokr_w2_b (r, d), Kaiming-uniform; scale
        a, b = factorization(base.out_features, decompose_factor)  # out = a b
        c, d = factorization(base.in_features, decompose_factor)  # in = c d
        self.lokr_w1 = nn.Parameter(torch.zeros(a, c, **factory))  # (a, c): zero, so ΔW = 0 at init
        self.w2_whole = rank >= max(b, d) / 2  # PEFT's rule: a small W2 is stored whole
        if self.w2_whole:
            self.lokr_w2 = nn.Parameter(torch.empty(b, d, **factory))  # (b, d)
            nn.init.kaiming_uniform_(self.lokr_w2, a=math.sqrt(5))
        else:
            self.lokr_w2_a = nn.Parameter(torch.empty(b, rank, **factory))  # (b, r)
            self.lokr_w2_b = nn.Parameter(torch.empty(rank, d, **factory))  # (r, d)
            nn.init.kaiming_uniform_(self.lokr_w2_a, a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.lokr_w2_b, a=math.sqrt(5))
        self.scale = (rank if alpha is None else alpha) / rank
        # END SOLUTION

    def w2(self) -> torch.Tensor:
        """The second factor ``W2 (b, d)``: ``lokr_w2``, or the product ``lokr_w2_a @ lokr_w2_b``.
        About 1 line."""
        # BEGIN SOLUTION: lokr_w2 if stored whole, else lokr_w2_a @ lokr_w2_b
        return self.lokr_w2 if self.w2_whole else self.lokr_w2_a @ self.lokr_w2_b
        # END SOLUTION

    def delta_weight(self) -> torch.Tensor:
        """``ΔW = scale · W1 ⊗ W2``, shape ``(out_features, in_features)``. About 1 line."""
        # BEGIN SOLUTION: torch.kron with W1 first, times scale
        return torch.kron(self.lokr_w1, self.w2()) * self.scale  # (a b, c d) = (out, in)
        # END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``: ``base(x) + F.linear(x, ΔW)``. About 1 line."""
        # BEGIN SOLUTION: the base output plus x ΔWᵀ
        return self.base(x) + F.linear(x, self.delta_weight())  # (..., out)
        # END SOLUTION
