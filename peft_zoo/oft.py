"""OFT: orthogonal finetuning (Qiu et al., 2023, arXiv:2306.07280), as Hugging Face PEFT 0.21.2 computes it.

OFT keeps the frozen weight ``W0`` and learns an orthogonal matrix ``R`` that rotates the
layer's *input* space. Rotating the input of every neuron by the same ``R`` keeps the
angles between neurons, their *hyperspherical energy*, which the paper argues preserves
what the pretrained layer knows::

    y = W0 (R^T x) + b  =  (W0 R^T) x + b           R: (in, in), R^T R = I

``R`` is block-diagonal with ``r`` blocks of size ``b = oft_block_size``, ``r * b = in``, so a
block only mixes the ``b`` features of its own slice of ``x``. Each block comes from a
skew-symmetric ``Q = -Q^T`` (b, b) through the Cayley transform, which maps every skew
matrix to an orthogonal one. ``Q`` has ``b (b - 1) / 2`` free entries (its strict upper
triangle), stored row by row as PEFT stores them::

    oft_R: (r, b (b - 1) / 2)      (1, b (b - 1) / 2) with block_share: one block for all r
    Q_i  = U_i - U_i^T             U_i: (b, b), oft_R[i] written into the strict upper triangle

PEFT 0.21.2 offers two transforms, and they rotate in *opposite* directions:

    exact    (use_cayley_neumann=False):  R_i = (I - Q_i)(I + Q_i)^{-1}         orthogonal
    Neumann  (use_cayley_neumann=True, PEFT's default, k = num_cayley_neumann_terms):
             R_i = I + 2 Q + 2 Q^2 + ... + 2 Q^{k-2} + Q^{k-1}                  (k >= 4)
             I (k = 1),  I + 2 Q (k = 2),  I + 2 Q + 2 Q^2 + Q^3 (k = 3, the same as k = 4)

The Neumann series truncates ``(I + Q)(I - Q)^{-1} = (I + Q)(I + Q + Q^2 + ...)``, the
transpose of the exact branch's matrix, and is only approximately orthogonal (the error
grows like ``||Q||^{k-1}``). This module reproduces both, sign included, so that PEFT's
adapters load unchanged. ``oft_R = 0`` (PEFT's default init) gives ``R = I``: the layer
starts equal to its base.

Applying ``R`` to ``x`` block by block: ``x`` (..., in) is viewed as (..., r, b) and block
``i`` becomes ``x_i R_i`` (a row vector times ``R_i``), i.e. ``x -> R^T x`` as a column vector.

Constrained OFT (``coft=True``, the paper's COFT, Section 3.2) bounds how far the blocks may
rotate. PEFT bounds ``Q`` rather than ``R - I``: before every use (forward, merge) it
projects each block onto the Frobenius ball of radius ``eps / sqrt(n)`` around zero, ``n``
the number of stored blocks, and writes the projected entries back into ``oft_R``::

    Q_i <- Q_i                                  if ||Q_i||_F <= eps / sqrt(n)
    Q_i <- (eps / sqrt(n)) Q_i / ||Q_i||_F      otherwise          (no gradient through this)

Merging folds the rotation into the weight, ``W0 <- W0 R^T`` (PEFT: ``(R W0^T)^T``);
unmerging multiplies by ``R^{-T}``, an inverse rather than a transpose because the Neumann
``R`` is not exactly orthogonal (PEFT inverts in float32 even for a float64 adapter; here
the inverse is taken in the adapter dtype, float32 at least, so float64 unmerges exactly). Parameters: ``r * b (b - 1) / 2`` (``b (b - 1) / 2`` with
``block_share``), against ``in * out`` for the full weight. PEFT also accepts a
``module_dropout`` but never applies it in its ``Linear`` layer; there is none here.
"""

from __future__ import annotations

import torch
from torch import nn

from .core.base import AdapterModule, refuse_merge_into_shared, refuse_training_merged
from .core.checks import (
    bias_of,
    check_bool,
    check_int_in,
    check_last_dim,
    check_linear,
    check_positive_float,
    check_positive_int,
)

__all__ = ["OFTLinear", "cayley_neumann", "oft_blocks", "skew_symmetric"]


def check_oft_blocks(in_features: int, r: object, oft_block_size: object) -> tuple[int, int]:
    """``(r, oft_block_size)`` with ``r * oft_block_size == in_features``, from exactly one of
    the two given (the other 0), as PEFT's ``OFTConfig`` asks. Where PEFT silently adjusts a
    value that does not divide ``in_features`` (with a warning), this raises a ValueError."""
    r = check_int_in(r, "r", 0, 2**62)
    block = check_int_in(oft_block_size, "oft_block_size", 0, 2**62)
    if (r == 0) == (block == 0):
        raise ValueError(
            f"give exactly one of r (the number of blocks) and oft_block_size (their size), the other 0, "
            f"since r * oft_block_size == in_features (as in PEFT's OFTConfig, whose oft_block_size "
            f"defaults to 32: pass oft_block_size=0 with r); got r={r}, oft_block_size={block}"
        )
    given, name = (block, "oft_block_size") if block else (r, "r")
    if given > in_features:
        raise ValueError(f"{name}={given} is larger than the base layer's in_features={in_features}")
    if in_features % given:
        divisors = [d for d in range(1, in_features + 1) if in_features % d == 0]
        raise ValueError(
            f"{name}={given} does not divide in_features={in_features}, so the input cannot be split "
            f"into equal orthogonal blocks; choose one of {divisors[:12]}{'...' if len(divisors) > 12 else ''}"
        )
    return (in_features // block, block) if block else (r, in_features // r)


def skew_symmetric(vec: torch.Tensor, block_size: int) -> torch.Tensor:
    """``(n, b (b - 1) / 2) -> (n, b, b)``: the skew-symmetric ``Q = U - U^T`` whose strict upper
    triangle ``U`` holds ``vec`` row by row (``torch.triu_indices`` order)."""
    rows, cols = torch.triu_indices(block_size, block_size, 1, device=vec.device)
    upper = vec.new_zeros(vec.shape[0], block_size, block_size)
    upper[:, rows, cols] = vec
    return upper - upper.transpose(-2, -1)


def cayley_neumann(q: torch.Tensor, terms: int) -> torch.Tensor:
    """PEFT's truncated Neumann form of ``(I + Q)(I - Q)^{-1}`` for skew ``q`` (n, b, b):
    ``I + 2 Q + 2 Q^2 + ... + 2 Q^{k-2} + Q^{k-1}`` with ``k = terms`` (see the module docstring
    for k <= 3). Returns (n, b, b)."""
    out = torch.eye(q.shape[-1], device=q.device, dtype=q.dtype).repeat(q.shape[0], 1, 1)
    if terms < 2:
        return out
    out = out + 2.0 * q
    if terms < 3:
        return out
    power = q @ q  # Q^2
    out = out + 2.0 * power
    for _ in range(3, terms - 1):  # Q^3 .. Q^{k-2}, weight 2
        power = power @ q
        out = out + 2.0 * power
    return out + power @ q  # the last term, weight 1


def oft_blocks(q: torch.Tensor, use_cayley_neumann: bool, terms: int) -> torch.Tensor:
    """The orthogonal blocks ``(n, b, b)`` from skew ``q`` (n, b, b): the Neumann series, or the
    exact ``(I - Q)(I + Q)^{-1}`` (which is what PEFT's ``use_cayley_neumann=False`` computes)."""
    if use_cayley_neumann:
        return cayley_neumann(q, terms)
    eye = torch.eye(q.shape[-1], device=q.device, dtype=q.dtype).expand_as(q)
    return torch.linalg.solve(eye + q, eye - q, left=False)  # X (I + Q) = I - Q


class OFTLinear(AdapterModule):
    """A frozen ``nn.Linear`` whose input is rotated by a trainable block-diagonal orthogonal
    matrix: ``y = base(x R)`` for a row vector ``x``, i.e. ``W0 R^T x + b``.

    Args (PEFT's ``OFTConfig`` names and defaults):
        base: the ``nn.Linear`` to adapt; kept as ``self.base`` with ``requires_grad=False``.
        r: the number of blocks, or 0 (default) to derive it from ``oft_block_size``.
        oft_block_size: the block size ``b``, or 0 to derive it from ``r``; default 32. Exactly
            one of the two is non-zero and it must divide ``in_features``.
        coft: constrained OFT, projecting each block's ``Q`` onto a ball of radius
            ``eps / sqrt(n)`` before every use; ``eps`` (default 6e-5) is that radius.
        block_share: one block for all ``r`` positions.
        use_cayley_neumann: the Neumann series with ``num_cayley_neumann_terms`` terms (default
            True, 5), or the exact Cayley transform.
        init_weights: True (default): ``oft_R = 0``, so ``R = I``; False: ``N(0, 0.1^2)``.

    Shapes: ``oft_R (r, b (b - 1) / 2)`` (``(1, ...)`` with ``block_share``), in the base
    weight's dtype and device; ``forward`` maps ``(..., in_features) -> (..., out_features)``.
    """

    adapter_param_names = ("oft_R",)
    oft_R: nn.Parameter

    def __init__(
        self,
        base: nn.Module,
        r: int = 0,
        oft_block_size: int = 32,
        *,
        coft: bool = False,
        eps: float = 6e-5,
        block_share: bool = False,
        use_cayley_neumann: bool = True,
        num_cayley_neumann_terms: int = 5,
        init_weights: bool = True,
    ) -> None:
        # Validate everything before touching ``base``.
        linear = check_linear(base, "OFTLinear base (PEFT's OFT wraps nn.Linear, not GPT-2's Conv1D)")
        r, block = check_oft_blocks(linear.in_features, r, oft_block_size)
        flags = {"coft": coft, "block_share": block_share, "use_cayley_neumann": use_cayley_neumann}
        for name, flag in {**flags, "init_weights": init_weights}.items():
            check_bool(flag, name)
        eps = check_positive_float(eps, "eps")
        terms = check_positive_int(num_cayley_neumann_terms, "num_cayley_neumann_terms")
        super().__init__()

        self.base = linear
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.r, self.oft_block_size = r, block
        self.coft, self.eps, self.block_share = coft, eps, block_share
        self.use_cayley_neumann, self.num_cayley_neumann_terms = use_cayley_neumann, terms
        w = linear.weight
        stored = 1 if block_share else r  # (stored, b (b - 1) / 2)
        self.oft_R = nn.Parameter(w.new_zeros(stored, block * (block - 1) // 2))
        self.merged = False
        self.reset_oft_parameters(init_weights)
        self.base.requires_grad_(False)  # last: a failed constructor leaves the caller's layer as it was

    def reset_oft_parameters(self, init_weights: bool = True) -> None:
        """``oft_R = 0`` (``R = I``, the layer equals its base), or ``N(0, 0.1^2)`` when
        ``init_weights`` is False, as PEFT's ``reset_oft_parameters``."""
        with torch.no_grad():
            if check_bool(init_weights, "init_weights"):
                self.oft_R.zero_()
            else:
                self.oft_R.normal_(mean=0.0, std=0.1)

    # ------------------------------------------------------------------ the rotation

    @torch.no_grad()
    def project(self) -> None:
        """COFT: write each block's ``Q`` projected onto the ball of radius ``eps / sqrt(n)``
        (Frobenius norm of the full skew matrix) back into ``oft_R``. A no-op without ``coft``."""
        if not self.coft:
            return
        q = skew_symmetric(self.oft_R, self.oft_block_size)  # (n, b, b)
        # PEFT forms the radius as a float32 tensor (eps times the float32 1 / sqrt(n)) whatever
        # the adapter dtype; the same rounding here keeps float64 results bit-equal to PEFT's.
        radius = float(self.eps / torch.sqrt(torch.tensor(float(q.shape[0]))))
        norm = torch.linalg.matrix_norm(q, keepdim=True)  # (n, 1, 1)
        q = torch.where(norm <= radius, q, radius * (q / norm))
        rows, cols = torch.triu_indices(self.oft_block_size, self.oft_block_size, 1, device=q.device)
        self.oft_R.copy_(q[:, rows, cols])

    def _blocks(self, dtype: torch.dtype) -> torch.Tensor:
        """The ``r`` orthogonal blocks ``(r, b, b)`` in ``dtype`` (a shared block repeated)."""
        q = skew_symmetric(self.oft_R.to(dtype), self.oft_block_size)
        blocks = oft_blocks(q, self.use_cayley_neumann, self.num_cayley_neumann_terms)
        return blocks.expand(self.r, -1, -1) if self.block_share else blocks

    def rotation(self) -> torch.Tensor:
        """The block-diagonal ``R``, shape ``(in_features, in_features)``, in the adapter dtype
        (PEFT's ``get_delta_weight``). With ``coft`` it projects ``oft_R`` first, as PEFT does."""
        self.project()
        return torch.block_diag(*self._blocks(self.oft_R.dtype).unbind(0))

    def _merged_weight(self, sign: int) -> torch.Tensor:
        """``W R^T`` (sign 1) or ``W R^{-T}`` (sign -1) for the base weight ``W`` in float32 at
        least, shape (out, in), in the base dtype."""
        w = self.base.weight
        compute = torch.promote_types(self.oft_R.dtype, torch.float32)
        rot = self.rotation().to(compute)
        rot = rot if sign > 0 else torch.linalg.inv(rot)
        return (w.to(compute) @ rot.T).to(w.dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The weight this layer applies, ``W0 R^T``, shape ``(out_features, in_features)``;
        computed on access (writing into it changes nothing)."""
        if self.merged:
            return self.base.weight
        compute = torch.promote_types(self.oft_R.dtype, torch.float32)
        return (self.base.weight.to(compute) @ self.rotation().to(compute).T).to(self.base.weight.dtype)

    @property
    def bias(self) -> torch.Tensor | None:
        """The base layer's bias (OFT leaves it unchanged), shape ``(out_features,)``."""
        return bias_of(self.base)

    def delta_weight(self) -> torch.Tensor:
        """The additive view of the update, ``W0 R^T - W0 = W0 (R^T - I)``, shape
        ``(out_features, in_features)``, in the base dtype (``W0`` recovered while merged)."""
        with torch.no_grad():
            w0 = self._merged_weight(-1) if self.merged else self.base.weight
        return self.weight - w0

    # ------------------------------------------------------------------ forward, merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``: ``base(x R)``, block by block."""
        check_last_dim(x, self.in_features, "OFTLinear")
        if self.merged:
            refuse_training_merged(self, (self.oft_R,), "rotation oft_R")
            return self.base(x)
        self.project()
        blocks = self._blocks(self.oft_R.dtype)  # (r, b, b)
        xs = x.to(self.oft_R.dtype).reshape(*x.shape[:-1], self.r, self.oft_block_size)  # (..., r, b)
        rotated = torch.einsum("...rk,rkc->...rc", xs, blocks).reshape(x.shape)  # (..., in)
        return self.base(rotated.to(x.dtype)).to(x.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the rotation into ``base.weight``: ``W0 <- W0 R^T``. No-op when already merged."""
        if not self.merged:
            refuse_merge_into_shared(self)
            self.base.weight.copy_(self._merged_weight(1))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge`: ``W <- W R^{-T}`` (up to float rounding). No-op when not merged."""
        if self.merged:
            self.base.weight.copy_(self._merged_weight(-1))
            self.merged = False

    def num_adapter_parameters(self) -> int:
        """``r * b (b - 1) / 2``, or ``b (b - 1) / 2`` with ``block_share``."""
        return self.oft_R.numel()

    def adapter_config(self) -> dict[str, object]:
        return {
            "method": "oft",
            "r": self.r,
            "oft_block_size": self.oft_block_size,
            "coft": self.coft,
            "eps": self.eps,
            "block_share": self.block_share,
            "use_cayley_neumann": self.use_cayley_neumann,
            "num_cayley_neumann_terms": self.num_cayley_neumann_terms,
        }

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
            f"oft_block_size={self.oft_block_size}, coft={self.coft}, eps={self.eps:g}, "
            f"block_share={self.block_share}, use_cayley_neumann={self.use_cayley_neumann}, "
            f"num_cayley_neumann_terms={self.num_cayley_neumann_terms}, merged={self.merged}"
        )
