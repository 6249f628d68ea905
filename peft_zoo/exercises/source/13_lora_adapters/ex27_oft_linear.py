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
    # BEGIN SOLUTION: rows, cols = torch.triu_indices(b, b, 1); U = zeros (n, b, b); U[:, rows, cols] = vec; return U - Uᵀ
    rows, cols = torch.triu_indices(block_size, block_size, 1, device=vec.device)
    upper = vec.new_zeros(vec.shape[0], block_size, block_size)  # (n, b, b)
    upper[:, rows, cols] = vec
    return upper - upper.transpose(-2, -1)  # Q = -Qᵀ
    # END SOLUTION


def cayley(q: torch.Tensor) -> torch.Tensor:
    """The Cayley transform of skew-symmetric blocks ``q`` (n, b, b): ``(I - Q)(I + Q)^{-1}``, each
    block orthogonal, shape (n, b, b). Solve a linear system rather than forming the inverse.
    About 2 lines."""
    # BEGIN SOLUTION: X (I + Q) = I - Q: torch.linalg.solve(I + Q, I - Q, left=False)
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device).expand_as(q)
    return torch.linalg.solve(eye + q, eye - q, left=False)  # X (I + Q) = I - Q
    # END SOLUTION


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
        # BEGIN SOLUTION: oft_R = an nn.Parameter of zeros, shape (r, b (b - 1) / 2)
        self.oft_R = nn.Parameter(torch.zeros(self.r, block_size * (block_size - 1) // 2, **factory))
        # END SOLUTION

    def rotation(self) -> torch.Tensor:
        """The block-diagonal ``R``, shape ``(in_features, in_features)``, block 0 at the top left.
        About 2 lines."""
        # BEGIN SOLUTION: blocks = cayley(skew_symmetric(oft_R, b)), (r, b, b); torch.block_diag of them in order
        blocks = cayley(skew_symmetric(self.oft_R, self.block_size))  # (r, b, b)
        return torch.block_diag(*blocks.unbind(0))  # (in, in)
        # END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``: ``base(x R)``; once merged, ``base(x)``.
        About 3 lines."""
        # BEGIN SOLUTION: merged: base(x); else base(x @ rotation())
        if self.merged:
            return self.base(x)
        return self.base(x @ self.rotation())  # W0 Rᵀ x + b
        # END SOLUTION

    def merge(self) -> None:
        """Write ``W0 Rᵀ`` into ``base.weight`` in place (no grad) and set ``merged``. Merging twice
        changes nothing. About 5 lines."""
        # BEGIN SOLUTION: if not merged: base.weight <- base.weight @ Rᵀ under no_grad; set merged
        if self.merged:
            return
        with torch.no_grad():
            self.base.weight.copy_(self.base.weight @ self.rotation().T)  # W0 Rᵀ: y = W0 Rᵀ x + b
        self.merged = True
        # END SOLUTION
