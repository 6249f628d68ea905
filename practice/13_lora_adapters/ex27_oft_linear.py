# Challenge 27 · oft_linear: OFT, a block-diagonal orthogonal rotation through the Cayley transform, and merge. Replace each TODO(ex27) with your code, then run:
#     peft-zoo check 27        (or: pytest practice/13_lora_adapters/test_ex27_oft_linear.py)
# Stuck? `peft-zoo hint 27`. Start over: `peft-zoo reset 27` (your file is backed up).
"""OFT (Qiu et al., 2023): rotate the layer's input with a learned orthogonal matrix.

Instead of adding ``ΔW``, OFT multiplies the frozen weight by an orthogonal ``R`` (``RᵀR = I``)
that rotates the input space. Every neuron's weight vector is rotated by the same ``R``, so
the angles between neurons (their *hyperspherical energy*) are preserved::

    y = W0 (Rᵀ x) + b      for a column vector x,   i.e.   y = base(x R)   for a row vector x

``R`` is block-diagonal: ``r`` blocks of size ``b`` (``r b = in``), block ``i`` mixing only the
features ``i b .. i b + b`` of ``x``. Each block comes from a skew-symmetric ``Q = -Qᵀ`` through
the Cayley transform, which maps every skew matrix to an orthogonal one::

    R_i = (I - Q_i)(I + Q_i)^{-1}        (the convention of peft_zoo.oft and PEFT's exact branch)
    Q_i = U_i - U_iᵀ                     U_i: oft_R[i] written into the STRICT upper triangle

A block has ``b (b - 1) / 2`` free numbers. ``oft_R = 0`` gives ``Q = 0``, ``R = I``: the layer
starts equal to its base. Swapping the Cayley factors, ``(I + Q)(I - Q)^{-1}``, gives ``Rᵀ``, the
rotation the other way round: also orthogonal, also ``I`` at init, and not what PEFT loads.

Merging folds the rotation into the weight: ``y = W0 Rᵀ x + b``, so ``W0 <- W0 Rᵀ``.
"""

from __future__ import annotations

import torch
from torch import nn


def skew_symmetric(vec: torch.Tensor, block_size: int) -> torch.Tensor:
    """``(n, b (b - 1) / 2) -> (n, b, b)``: ``Q = U - Uᵀ`` where ``U`` holds ``vec`` in its strict
    upper triangle, row by row (``torch.triu_indices(b, b, 1)`` order). About 4 lines."""
    # TODO(ex27): rows, cols = torch.triu_indices(b, b, 1); U = zeros (n, b, b); U[:, rows, cols] = vec; return U - Uᵀ
    raise NotImplementedError("ex27 (oft_linear): skew_symmetric is not implemented yet")


def cayley(q: torch.Tensor) -> torch.Tensor:
    """The Cayley transform of skew-symmetric blocks ``q`` (n, b, b): ``(I - Q)(I + Q)^{-1}``, each
    block orthogonal, shape (n, b, b). Solve a linear system rather than forming the inverse.
    About 2 lines."""
    # TODO(ex27): X (I + Q) = I - Q: torch.linalg.solve(I + Q, I - Q, left=False)
    raise NotImplementedError("ex27 (oft_linear): cayley is not implemented yet")


class OFTLinear(nn.Module):
    """Wrap ``base`` (an ``nn.Linear``) with OFT: ``r = in_features / block_size`` orthogonal blocks.

    Attributes (the graders look for these names):
        base        the wrapped layer, frozen
        oft_R       ``nn.Parameter (r, b (b - 1) / 2)``, zeros (PEFT's name and layout)
        block_size  ``b``; ``r`` the number of blocks
        merged      ``bool``, False until :meth:`merge`
    """

    def __init__(self, base: nn.Linear, block_size: int) -> None:
        super().__init__()
        if block_size < 1 or base.in_features % block_size:  # (given)
            raise ValueError(f"block_size={block_size} does not divide in_features={base.in_features}")
        self.base = base
        self.base.requires_grad_(False)
        self.block_size, self.r = block_size, base.in_features // block_size
        self.merged = False
        factory = {"dtype": base.weight.dtype, "device": base.weight.device}
        # TODO(ex27): oft_R = an nn.Parameter of zeros, shape (r, b (b - 1) / 2)
        raise NotImplementedError("ex27 (oft_linear): OFTLinear.__init__ is not implemented yet")

    def rotation(self) -> torch.Tensor:
        """The block-diagonal ``R``, shape ``(in_features, in_features)``, block 0 at the top left.
        About 2 lines."""
        # TODO(ex27): blocks = cayley(skew_symmetric(oft_R, b)), (r, b, b); torch.block_diag of them in order
        raise NotImplementedError("ex27 (oft_linear): OFTLinear.rotation is not implemented yet")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``: ``base(x R)``; once merged, ``base(x)``.
        About 3 lines."""
        # TODO(ex27): merged: base(x); else base(x @ rotation())
        raise NotImplementedError("ex27 (oft_linear): OFTLinear.forward is not implemented yet")

    def merge(self) -> None:
        """Write ``W0 Rᵀ`` into ``base.weight`` in place (no grad) and set ``merged``. Merging twice
        changes nothing. About 5 lines."""
        # TODO(ex27): if not merged: base.weight <- base.weight @ Rᵀ under no_grad; set merged
        raise NotImplementedError("ex27 (oft_linear): OFTLinear.merge is not implemented yet")
