"""LoKr: a Kronecker-product update (Yeh et al., 2023, LyCORIS, arXiv:2309.14859), as
Hugging Face PEFT applies it to a frozen linear layer.

    y = W0 x + b + ΔW x
    ΔW = scale * W1 ⊗ W2           W1: (a, c)   W2: (b, d)   out = a b, in = c d
    scale = alpha / r

The Kronecker product tiles ``W2`` once per entry of ``W1``: block ``(i, j)`` of ΔW is
``W1[i, j] * W2``, so ``rank(ΔW) = rank(W1) rank(W2)`` and a full-rank update of an
``(out, in)`` matrix costs only ``a c + b d`` parameters.

The sizes come from :func:`factorization` (PEFT's rule, from LyCORIS):
``out = a * b`` with ``(a, b) = factorization(out, decompose_factor)`` and
``in = c * d`` with ``(c, d) = factorization(in, decompose_factor)``, each pair ``small <= large``.
``decompose_factor = -1`` picks the divisor pair closest to the square root; a positive factor
that divides the dimension gives ``(factor, dim / factor)``; one that does not divide gives the
largest divisor pair whose smaller side is at most ``factor`` (PEFT's fallback).

A factor is stored whole, or as a low-rank product when ``r`` is small next to it
("use full matrix" rule, exactly as PEFT decides it):

    W2 full ``lokr_w2 (b, d)``                 when r >= max(b, d) / 2
    else    ``lokr_w2_a (b, r) @ lokr_w2_b (r, d)``
    W1 full ``lokr_w1 (a, c)``                 unless decompose_both and r < max(a, c) / 2
    else    ``lokr_w1_a (a, r) @ lokr_w1_b (r, c)``

Initialisation (PEFT's ``init_weights=True``): ``W1 = 0`` (``lokr_w1``, or ``lokr_w1_a`` when
decomposed, with ``lokr_w1_b`` Kaiming-uniform), ``W2`` Kaiming-uniform, so ΔW = 0 at start.
``init_weights="lycoris"`` zeros ``W2`` (``lokr_w2`` or ``lokr_w2_b``) instead; ``False`` draws
everything Kaiming-uniform. Module and rank dropout as in ``peft_zoo.loha``; LoKr rescales the
kept rows only with ``rank_dropout_scale=True`` (PEFT's default is False).
"""

from __future__ import annotations

import numbers

import torch
from torch import nn

from .core.checks import check_bool, short_repr
from .loha import LycorisLinear, check_lycoris_arguments, kaiming_


def check_decompose_factor(value: object, name: str = "decompose_factor") -> int:
    """Return ``value`` if it is ``-1`` (automatic) or an int >= 1, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be -1 or an int >= 1, got {short_repr(value)} of type {type(value).__name__}"
        )
    if value != -1 and value < 1:
        raise ValueError(f"{name} must be -1 (automatic) or an int >= 1, got {value}")
    return int(value)


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """Split ``dimension`` into ``(m, n)`` with ``m * n == dimension`` and ``m <= n``.

    ``factor > 0`` dividing ``dimension`` gives ``(factor, dimension // factor)`` as is (then
    ``m > n`` is possible, as in PEFT). Otherwise walk the divisors ``m = 2, 3, ...`` upwards,
    keeping the last pair with ``m <= bound`` (``bound = dimension`` for ``factor = -1``), and stop
    once ``m >= n``: the pair closest to the square root, or the best one under ``factor``.
    ``factorization(128) == (8, 16)``, ``factorization(127) == (1, 127)``, ``factorization(128, 4) == (4, 32)``.
    """
    dimension = int(dimension)
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    bound = dimension if factor == -1 else factor
    m, n = 1, dimension
    candidate = 2
    while m < n:
        while dimension % candidate:  # the next divisor above m
            candidate += 1
        if candidate > bound:
            break
        m, n = candidate, dimension // candidate
        candidate += 1
    return (n, m) if m > n else (m, n)


def lokr_shapes(in_features: int, out_features: int, decompose_factor: int) -> tuple[int, int, int, int]:
    """``(a, b, c, d)`` with ``W1 (a, c)``, ``W2 (b, d)``, ``out = a b``, ``in = c d``."""
    a, b = factorization(out_features, decompose_factor)
    c, d = factorization(in_features, decompose_factor)
    return a, b, c, d


def use_full_matrices(
    rank: int, shapes: tuple[int, int, int, int], decompose_both: bool
) -> tuple[bool, bool]:
    """PEFT's rule: ``(W1 stored whole, W2 stored whole)`` for ``shapes = (a, b, c, d)``."""
    a, b, c, d = shapes
    use_w1 = not (decompose_both and rank < max(a, c) / 2)
    use_w2 = not (rank < max(b, d) / 2)
    return use_w1, use_w2


def check_init_weights(value: object, name: str) -> bool | str:
    """``True``, ``False`` or ``"lycoris"`` (PEFT's LoKr ``init_weights`` values)."""
    if isinstance(value, bool) or value == "lycoris":
        return value if isinstance(value, bool) else "lycoris"
    raise TypeError(
        f"{name} must be True, False or 'lycoris', got {short_repr(value)} of type {type(value).__name__}"
    )


class LoKrLinear(LycorisLinear):
    """An ``nn.Linear`` with a trainable Kronecker-product update; the base layer is frozen.

    Args:
        base: the ``nn.Linear`` to adapt; kept as ``self.base`` with ``requires_grad=False``.
        rank: ``r`` > 0, the inner dimension of a factor stored as a low-rank product.
        alpha: scaling numerator, ``scale = alpha / r``; defaults to ``rank`` (scale 1).
        decompose_both: also store ``W1`` as ``lokr_w1_a @ lokr_w1_b`` when ``r`` is small.
        decompose_factor: ``-1`` (automatic) or an int >= 1, see :func:`factorization`.
        rank_dropout, module_dropout: probabilities in ``[0, 1)``, as in ``LoHaLinear``.
        rank_dropout_scale: rescale kept rows by ``1 / (fraction kept)`` under rank dropout.
        init_weights: ``True`` (W1 = 0), ``"lycoris"`` (W2 = 0) or ``False`` (all random).

    Shapes, with ``(a, b, c, d)`` from :func:`lokr_shapes`: ``lokr_w1 (a, c)`` or ``lokr_w1_a
    (a, r)``, ``lokr_w1_b (r, c)``; ``lokr_w2 (b, d)`` or ``lokr_w2_a (b, r)``, ``lokr_w2_b (r, d)``;
    ``adapter_param_names`` lists the ones this layer has. ``forward`` maps
    ``(..., in_features) -> (..., out_features)``.
    """

    def __init__(
        self,
        base: nn.Module,
        rank: int,
        alpha: float | None = None,
        *,
        decompose_both: bool = False,
        decompose_factor: int = -1,
        rank_dropout: float = 0.0,
        module_dropout: float = 0.0,
        rank_dropout_scale: bool = False,
        init_weights: bool | str = True,
    ) -> None:
        # Validate everything before touching ``base``.
        args = check_lycoris_arguments(base, "LoKrLinear", rank, alpha, rank_dropout, module_dropout)
        check_bool(decompose_both, "LoKrLinear decompose_both")
        factor = check_decompose_factor(decompose_factor, "LoKrLinear decompose_factor")
        check_bool(rank_dropout_scale, "LoKrLinear rank_dropout_scale")
        init = check_init_weights(init_weights, "LoKrLinear init_weights")
        super().__init__()
        self._setup(*args)
        self.decompose_both, self.decompose_factor = decompose_both, factor
        self.rank_dropout_scale = rank_dropout_scale
        self.shapes = lokr_shapes(self.in_features, self.out_features, factor)
        a, b, c, d = self.shapes
        r = self.rank
        self.use_w1, self.use_w2 = use_full_matrices(r, self.shapes, decompose_both)
        if self.use_w1:
            self.lokr_w1 = self._new_param(a, c)  # (a, c)
        else:
            self.lokr_w1_a, self.lokr_w1_b = self._new_param(a, r), self._new_param(r, c)
        if self.use_w2:
            self.lokr_w2 = self._new_param(b, d)  # (b, d)
        else:
            self.lokr_w2_a, self.lokr_w2_b = self._new_param(b, r), self._new_param(r, d)
        w1_names = ("lokr_w1",) if self.use_w1 else ("lokr_w1_a", "lokr_w1_b")
        w2_names = ("lokr_w2",) if self.use_w2 else ("lokr_w2_a", "lokr_w2_b")
        self.adapter_param_names = w1_names + w2_names
        self.reset_parameters(init)
        self.base.requires_grad_(False)

    @torch.no_grad()
    def reset_parameters(self, init_weights: bool | str = True) -> None:
        """Initialise in PEFT's order (same seed, same tensors); ``True`` makes W1 = 0,
        ``"lycoris"`` W2 = 0, ``False`` leaves every factor Kaiming-uniform."""
        w1 = [self.lokr_w1] if self.use_w1 else [self.lokr_w1_a, self.lokr_w1_b]
        w2 = [self.lokr_w2] if self.use_w2 else [self.lokr_w2_a, self.lokr_w2_b]
        if init_weights == "lycoris":
            zero = w2[-1]  # lokr_w2, or lokr_w2_b
        elif init_weights:
            zero = w1[0]  # lokr_w1, or lokr_w1_a
        else:
            zero = None
        for p in w1 + w2:
            if p is zero:
                nn.init.zeros_(p)
            else:
                kaiming_(p)

    def _factor(self, which: int, dtype: torch.dtype) -> torch.Tensor:
        if which == 1:
            if self.use_w1:
                return self.lokr_w1.to(dtype)  # (a, c)
            return self.lokr_w1_a.to(dtype) @ self.lokr_w1_b.to(dtype)  # (a, r) @ (r, c)
        if self.use_w2:
            return self.lokr_w2.to(dtype)  # (b, d)
        return self.lokr_w2_a.to(dtype) @ self.lokr_w2_b.to(dtype)  # (b, r) @ (r, d)

    def _delta(self, dtype: torch.dtype) -> torch.Tensor:
        w1, w2 = self._factor(1, dtype), self._factor(2, dtype)
        return torch.kron(w1, w2.contiguous()) * self.scale  # (a b, c d) = (out, in)

    def _rank_dropout_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return torch.float32  # PEFT's LoKr builds its row mask in float32 whatever ΔW's dtype

    def adapter_config(self) -> dict[str, object]:
        return {
            "method": "lokr",
            "rank": self.rank,
            "alpha": self.alpha,
            "decompose_both": self.decompose_both,
            "decompose_factor": self.decompose_factor,
            "rank_dropout": self.rank_dropout,
            "module_dropout": self.module_dropout,
            "rank_dropout_scale": self.rank_dropout_scale,
        }

    def extra_repr(self) -> str:
        a, b, c, d = self.shapes
        return super().extra_repr() + f", W1=({a}, {c}), W2=({b}, {d}), decompose_both={self.decompose_both}"
