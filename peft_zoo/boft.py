"""BOFT: orthogonal finetuning via butterfly factorization (Liu et al., 2023, arXiv:2311.06243),
as Hugging Face PEFT 0.21.2 computes it for ``nn.Linear``.

BOFT generalises OFT (:mod:`peft_zoo.oft`): the frozen weight ``W0`` (out, in) is kept, its
input space is rotated by a trainable orthogonal ``M`` (in, in), and every output row is scaled
by a trainable magnitude ``s`` (out,)::

    y = s * (W0 M^T x) + b                  (the bias b is not scaled)

An OFT rotation is block-diagonal, so a block only mixes the features of its own slice. BOFT
makes ``M`` a product of ``m = boft_n_butterfly_factor`` *butterfly factors*, each a
block-diagonal rotation conjugated by a fixed permutation, so that together they mix features
that no single block reaches (a butterfly network, as in the FFT)::

    M   = M_{m-1} ... M_1 M_0                         (in, in)
    M_i = P_i B_i P_i^T                               P_i: (in, in), a permutation matrix
    B_i = blockdiag(Q_{i,0}, ..., Q_{i,D-1})          D = boft_block_num blocks of size b
    Q   = (I - S)(I + S)^{-1},  S = (R - R^T) / 2     the exact Cayley transform of skew(R)

with ``D * b == in_features``. ``P_0 = I`` (one factor alone is OFT's rotation); ``P_i`` (i >= 1) works on
chunks of ``b * 2^i`` consecutive features: it cuts each chunk into ``2^(i+1)`` groups of
``b / 2`` features and reorders them, even-numbered groups first, then odd-numbered ones.
As an index vector, ``(P_i)[j, perm_i[j]] = 1``: ``(x P_i)[perm_i[j]] = x[j]`` for a row vector
``x``, and ``(x P_i^T)[j] = x[perm_i[j]]``.

PEFT stores the blocks as full (unconstrained) matrices, of which only the skew part counts,
and the magnitudes as a column::

    boft_R: (m, D, b, b)         boft_s: (out_features, 1)

``init_weights=True`` (default): ``boft_R = 0`` (``M = I``) and ``boft_s = 1``: the layer starts
equal to its base. ``False``: ``N(0, 0.1^2)`` and ``N(1, 0.1^2)``.

The forward pass applies ``M`` to a row vector ``x`` (..., in) without forming it: for ``i``
from ``m - 1`` down to 0, ``x <- x P_i B_i P_i^T``, i.e. gather ``x`` by ``perm_i^{-1}``, rotate
each block of ``b`` features by ``Q_{i,d}`` (``x_d Q_{i,d}``), gather by ``perm_i``. Merging
folds everything into the weight, ``W <- (W0 M^T) * s`` (rows scaled), which is PEFT's
``(M W0^T)^T * s``; unmerging is ``W0 = (W / s) M`` (``M`` is orthogonal). A merge is refused
when an ``s`` entry is 0, since no unmerge could undo it.

``boft_dropout`` is PEFT's multiplicative dropout: in training mode only, one factor ``i`` is
drawn at random and ``int(p * D)`` of its ``D`` blocks, drawn at random, are replaced by the
identity. The random draws (``torch.randint`` of the factor, then ``torch.randperm(D)``) are
PEFT's, in PEFT's order, so a seeded run drops the same blocks as PEFT.

PEFT builds ``M`` with a CUDA kernel (``fbd``) where it can; without it (on CPU) it falls back
to ``torch.block_diag`` and *silently sets* ``boft_n_butterfly_factor = 1`` (its fallback only
handles one factor). This module always honours the factor it is given, computing what PEFT's
kernel path computes; with ``boft_n_butterfly_factor=1`` it equals PEFT's CPU fallback. PEFT's
kernel path refuses a factor < 1; so does this module.

Parameters: ``m * D * b^2 + out`` (PEFT counts the full ``b x b`` blocks), against
``in * out`` for the full weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .core.base import AdapterModule, refuse_merge_into_shared, refuse_training_merged
from .core.checks import bias_of, check_bool, check_int_in, check_last_dim, check_linear, check_probability
from .oft import oft_blocks

__all__ = ["BOFTLinear", "butterfly_perm", "check_boft_blocks"]

MAX_SIZE = 2**62


def check_boft_blocks(
    in_features: int, block_size: object, block_num: object, n_butterfly_factor: object
) -> tuple[int, int, int]:
    """``(boft_block_size, boft_block_num, boft_n_butterfly_factor)`` with ``size * num ==
    in_features``, from exactly one of the two given (the other 0), checked as PEFT's
    ``update_layer`` checks them; raises a ValueError (TypeError for a non-int) naming the sizes."""
    size = check_int_in(block_size, "boft_block_size", 0, MAX_SIZE)
    num = check_int_in(block_num, "boft_block_num", 0, MAX_SIZE)
    factor = check_int_in(n_butterfly_factor, "boft_n_butterfly_factor", 1, 64)
    if (size == 0) == (num == 0):
        raise ValueError(
            "give exactly one of boft_block_size and boft_block_num, the other 0, since "
            f"boft_block_size * boft_block_num == in_features; got boft_block_size={size}, boft_block_num={num}"
        )
    given, name = (size, "boft_block_size") if size else (num, "boft_block_num")
    if in_features % given:
        raise ValueError(f"{name}={given} does not divide the base layer's in_features={in_features}")
    size, num = (size, in_features // size) if size else (in_features // num, num)
    span = size * 2 ** (factor - 1)  # the features one product of all factors mixes
    if factor > 1 and (in_features % span or size % 2 or num % 2):
        raise ValueError(
            f"boft_n_butterfly_factor={factor} needs an even boft_block_size (got {size}) and an even "
            f"boft_block_num (got {num}), with boft_block_size * 2^{factor - 1} = {span} dividing "
            f"in_features={in_features}"
        )
    return size, num, factor


def butterfly_perm(n: int, block_size: int, level: int) -> torch.Tensor:
    """The index form ``perm`` (n,) of the butterfly permutation ``P_level`` (``P[j, perm[j]] =
    1``): in each chunk of ``block_size * 2^level`` features, groups of ``block_size / 2``
    features, even-numbered groups first. ``level = 0`` is the identity."""
    if level == 0:
        return torch.arange(n)
    half = block_size // 2
    groups = torch.arange(n).reshape(-1, 2 ** (level + 1), half)  # (chunks, groups, half)
    return torch.cat((groups[:, 0::2], groups[:, 1::2]), dim=1).reshape(n)


class BOFTLinear(AdapterModule):
    """A frozen ``nn.Linear`` whose input is rotated by a butterfly product of block-diagonal
    orthogonal matrices and whose output rows are scaled: ``y = s * (W0 M^T x) + b``.

    Args (PEFT's ``BOFTConfig`` names and defaults):
        base: the ``nn.Linear`` to adapt; kept as ``self.base`` with ``requires_grad=False``.
        boft_block_size: the block size ``b`` (default 4), or 0 to derive it from ``boft_block_num``.
        boft_block_num: the number of blocks ``D`` (default 0: derived from the size). Exactly
            one of the two is non-zero and it divides ``in_features``.
        boft_n_butterfly_factor: the number of butterfly factors ``m >= 1`` (default 1, plain
            OFT with the exact Cayley transform and a scale). ``m > 1`` needs even ``b`` and ``D``
            and ``b * 2^(m-1)`` dividing ``in_features``.
        boft_dropout: the probability of PEFT's multiplicative block dropout, in [0, 1).
        init_weights: True: ``M = I``, ``s = 1``; False: random (see the module docstring).

    Shapes: ``boft_R (m, D, b, b)``, ``boft_s (out_features, 1)``, in the base weight's dtype and
    device; ``forward`` maps ``(..., in_features) -> (..., out_features)``.
    """

    adapter_param_names = ("boft_R", "boft_s")
    boft_R: nn.Parameter
    boft_s: nn.Parameter
    perms: torch.Tensor
    inverse_perms: torch.Tensor

    def __init__(
        self,
        base: nn.Module,
        boft_block_size: int = 4,
        boft_block_num: int = 0,
        boft_n_butterfly_factor: int = 1,
        *,
        boft_dropout: float = 0.0,
        init_weights: bool = True,
    ) -> None:
        # Validate everything before touching ``base``.
        linear = check_linear(base, "BOFTLinear base (PEFT's BOFT wraps nn.Linear, not GPT-2's Conv1D)")
        size, num, factor = check_boft_blocks(
            linear.in_features, boft_block_size, boft_block_num, boft_n_butterfly_factor
        )
        dropout = check_probability(boft_dropout, "boft_dropout")
        check_bool(init_weights, "init_weights")
        super().__init__()

        self.base = linear
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.boft_block_size, self.boft_block_num, self.boft_n_butterfly_factor = size, num, factor
        self.boft_dropout = dropout
        perms = torch.stack([butterfly_perm(self.in_features, size, i) for i in range(factor)])
        self.register_buffer("perms", perms, persistent=False)  # (m, in)
        self.register_buffer("inverse_perms", perms.argsort(dim=1), persistent=False)
        w = linear.weight
        self.boft_R = nn.Parameter(w.new_zeros(factor, num, size, size))
        self.boft_s = nn.Parameter(w.new_ones(self.out_features, 1))
        self.merged = False
        self.reset_boft_parameters(init_weights)
        self.base.requires_grad_(False)  # last: a failed constructor leaves the caller's layer as it was

    def reset_boft_parameters(self, init_weights: bool = True) -> None:
        """``boft_R = 0``, ``boft_s = 1`` (the layer equals its base), or ``N(0, 0.1^2)`` and
        ``N(1, 0.1^2)`` when ``init_weights`` is False, as PEFT's ``reset_boft_parameters``."""
        with torch.no_grad():
            if check_bool(init_weights, "init_weights"):
                self.boft_R.zero_()
                self.boft_s.fill_(1.0)
            else:
                self.boft_R.normal_(mean=0.0, std=0.1)
                self.boft_s.normal_(mean=1.0, std=0.1)

    # ------------------------------------------------------------------ the rotation

    def blocks(self) -> torch.Tensor:
        """The orthogonal blocks ``Q (m, D, b, b)``, the exact Cayley transform of each block's
        skew part, in the adapter dtype (float32 at least)."""
        compute = torch.promote_types(self.boft_R.dtype, torch.float32)
        r = self.boft_R.to(compute).flatten(0, 1)  # (m D, b, b)
        q = oft_blocks(0.5 * (r - r.transpose(-2, -1)), use_cayley_neumann=False, terms=0)
        return q.reshape(self.boft_R.shape)

    def _dropped(self, q: torch.Tensor) -> torch.Tensor:
        """PEFT's multiplicative dropout on ``q (m, D, b, b)``: in training, ``int(p D)`` random
        blocks of one random factor become the identity (PEFT's random draws, in its order)."""
        if not (self.training and self.boft_dropout > 0):
            return q
        m, d = q.shape[:2]
        factor = int(torch.randint(0, m, (1,)).item())
        chosen = torch.cat(
            (torch.ones(int(self.boft_dropout * d)), torch.zeros(d - int(self.boft_dropout * d)))
        )
        chosen = chosen[torch.randperm(d)].to(device=q.device, dtype=torch.bool)  # (D,)
        mask = torch.zeros(m, d, dtype=torch.bool, device=q.device)
        mask[factor] = chosen
        eye = torch.eye(q.shape[-1], device=q.device, dtype=q.dtype)
        return torch.where(mask[:, :, None, None], eye, q)

    def _rotate(self, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """``x M`` for row vectors ``x (..., in)`` and blocks ``q (m, D, b, b)`` in ``x``'s dtype:
        ``x <- x P_i B_i P_i^T`` for ``i = m-1 .. 0``."""
        for i in reversed(range(q.shape[0])):
            xs = x[..., self.inverse_perms[i]].reshape(
                *x.shape[:-1], self.boft_block_num, self.boft_block_size
            )
            x = torch.einsum("...dk,dkc->...dc", xs, q[i]).reshape(x.shape)[..., self.perms[i]]
        return x

    def rotation(self) -> torch.Tensor:
        """The full ``M (in_features, in_features)`` in the adapter dtype (float32 at least):
        the first element of PEFT's ``get_delta_weight``."""
        q = self.blocks()
        return self._rotate(torch.eye(self.in_features, device=q.device, dtype=q.dtype), q)

    def _compute(self) -> torch.dtype:
        return torch.promote_types(torch.promote_types(self.boft_R.dtype, self.boft_s.dtype), torch.float32)

    @property
    def weight(self) -> torch.Tensor:
        """The weight this layer applies, ``(W0 M^T) * s``, shape ``(out_features, in_features)``,
        in the base dtype; computed on access (writing into it changes nothing)."""
        if self.merged:
            return self.base.weight
        w, compute = self.base.weight, self._compute()
        return ((w.to(compute) @ self.rotation().to(compute).T) * self.boft_s.to(compute)).to(w.dtype)

    @property
    def bias(self) -> torch.Tensor | None:
        """The base layer's bias (BOFT neither rotates nor scales it), shape ``(out_features,)``."""
        return bias_of(self.base)

    # ------------------------------------------------------------------ forward, merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``: ``s * (W0 M^T x) + b``."""
        check_last_dim(x, self.in_features, "BOFTLinear")
        if self.merged:
            refuse_training_merged(self, (self.boft_R, self.boft_s), "boft_R and boft_s")
            return self.base(x)
        q = self._dropped(self.blocks()).to(x.dtype)
        out = F.linear(self._rotate(x, q), self.base.weight) * self.boft_s.squeeze(-1)
        bias = bias_of(self.base)
        return (out if bias is None else out + bias).to(x.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold rotation and scale into ``base.weight``: ``W0 <- (W0 M^T) * s``. No-op when
        already merged; refused (``ValueError``, nothing changed) when an ``s`` entry is 0, which
        no unmerge could undo."""
        if self.merged:
            return
        refuse_merge_into_shared(self)
        if bool((self.boft_s == 0).any()):
            raise ValueError("cannot merge: boft_s has a 0 entry, so unmerge() could not recover W0")
        self.base.weight.copy_(self.weight)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge`: ``W <- (W / s) M`` (up to float rounding). No-op when not merged."""
        if self.merged:
            w, compute = self.base.weight, self._compute()
            restored = (w.to(compute) / self.boft_s.to(compute)) @ self.rotation().to(compute)
            w.copy_(restored.to(w.dtype))
            self.merged = False

    def num_adapter_parameters(self) -> int:
        """``m * D * b^2 + out_features``."""
        return self.boft_R.numel() + self.boft_s.numel()

    def adapter_config(self) -> dict[str, object]:
        return {
            "method": "boft",
            "boft_block_size": self.boft_block_size,
            "boft_block_num": self.boft_block_num,
            "boft_n_butterfly_factor": self.boft_n_butterfly_factor,
            "boft_dropout": self.boft_dropout,
        }

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"boft_block_size={self.boft_block_size}, boft_block_num={self.boft_block_num}, "
            f"boft_n_butterfly_factor={self.boft_n_butterfly_factor}, boft_dropout={self.boft_dropout:g}, "
            f"merged={self.merged}"
        )
