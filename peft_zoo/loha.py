"""LoHa: a Hadamard product of two low-rank products (Hyeon-Woo et al., 2021, FedPara,
arXiv:2108.06098), as LyCORIS and Hugging Face PEFT apply it to a frozen linear layer.

    y = W0 x + b + ΔW x
    ΔW = scale * (W1a W1b) ⊙ (W2a W2b)       W1a, W2a: (out, r)   W1b, W2b: (r, in)
    scale = alpha / r

Each product ``W1a W1b`` has rank at most ``r``; their elementwise (Hadamard) product has
rank at most ``r²`` (Schur product theorem: rank(A ⊙ B) <= rank(A) rank(B)). So with
``2 r (in + out)`` trainable parameters -- twice LoRA's at the same ``r`` -- the update can
reach rank ``r²``, where LoRA with the same budget reaches ``2 r``.

Initialisation (PEFT's ``init_weights=True``): ``W1a``, ``W1b``, ``W2a`` Kaiming-uniform (as
``nn.Linear`` initialises weights), ``W2b = 0``, so ``W2a W2b = 0``, ``ΔW = 0`` and the layer
starts equal to its base. Only one factor is zero: the gradients of ``W2b`` are
``W2aᵀ (G ⊙ W1a W1b)``, non-zero, so training moves off the start at once.

Regularisation as LyCORIS / PEFT do it, in training mode only:

* ``module_dropout = p``: the whole update is skipped for this forward pass with probability ``p``
  (one ``torch.rand(1)`` drawn per training forward, whatever ``p``, as PEFT does).
* ``rank_dropout = p``: each *output row* of ``ΔW`` is kept with probability ``1 - p`` and the
  kept rows are rescaled by ``1 / (fraction kept)`` (despite the name, rows of ΔW, not ranks).

``ΔW`` is formed densely, ``(out, in)``, on every forward (as PEFT does): the Hadamard product
has no cheap factored form. Merging folds it into the base weight, ``W0 <- W0 + ΔW``.

:class:`LycorisLinear` holds what LoHa and LoKr (``peft_zoo.lokr``) share.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .core.base import AdditiveAdapter, add_delta_, refuse_training_merged
from .core.checks import (
    bias_of,
    check_bool,
    check_last_dim,
    check_linear,
    check_positive_float,
    check_positive_int,
    check_probability,
    weight_of,
)


def kaiming_(tensor: torch.Tensor) -> None:
    """Kaiming-uniform with ``a = sqrt(5)``, the way ``nn.Linear`` (and PEFT) initialise."""
    nn.init.kaiming_uniform_(tensor, a=math.sqrt(5))


def rank_dropout_mask(rows: int, p: float, dtype: torch.dtype, rescale: bool) -> torch.Tensor:
    """``(rows, 1)`` mask: each entry 1 with probability ``1 - p``, else 0; with ``rescale``
    divided by the fraction kept (left all zero when nothing is kept, where PEFT's
    ``drop /= drop.mean()`` would give NaN). Drawn on the CPU generator, as PEFT draws it."""
    drop = (torch.rand(rows) > p).to(dtype)
    if rescale:
        kept = drop.mean()
        if kept > 0:
            drop = drop / kept
    return drop.view(-1, 1)


class LycorisLinear(AdditiveAdapter):
    """A frozen ``nn.Linear`` plus a dense update ``ΔW`` (out, in) rebuilt from trainable
    factors: what LoHa and LoKr share (forward, module and rank dropout, merge, unmerge).

    Subclasses set the attributes below and implement ``_delta(dtype)``: ΔW with the scale,
    ``(out_features, in_features)``, computed in ``dtype``.
    """

    base: nn.Linear
    in_features: int
    out_features: int
    rank: int
    alpha: float
    scale: float  # alpha / rank
    rank_dropout: float
    module_dropout: float
    rank_dropout_scale: bool  # rescale kept rows by 1 / (fraction kept)
    merged: bool

    def _setup(
        self, base: nn.Linear, rank: int, alpha: float, rank_dropout: float, module_dropout: float
    ) -> None:
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        self.rank_dropout, self.module_dropout = rank_dropout, module_dropout
        self.merged = False

    def _new_param(self, *shape: int) -> nn.Parameter:
        w = self.base.weight
        return nn.Parameter(torch.empty(*shape, device=w.device, dtype=w.dtype))

    def _delta(self, dtype: torch.dtype) -> torch.Tensor:
        raise NotImplementedError

    def _rank_dropout_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return dtype

    def delta_weight(self) -> torch.Tensor:
        """The update ``ΔW`` (scale included), shape ``(out_features, in_features)``, in the
        adapter dtype, without rank dropout."""
        return self._delta(self.base.weight.dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The weight this layer applies, ``W0 + ΔW``, shape ``(out_features, in_features)``;
        computed on access (write into ``base.weight`` or the factors, not into this)."""
        w = weight_of(self.base)
        return w if self.merged else w + self.delta_weight()

    @property
    def bias(self) -> torch.Tensor | None:
        """The base layer's bias (unchanged), shape ``(out_features,)``."""
        return bias_of(self.base)

    def _train_delta(self) -> torch.Tensor:
        delta = self.delta_weight()
        if self.rank_dropout > 0:
            drop_dtype = self._rank_dropout_dtype(delta.dtype)
            mask = rank_dropout_mask(
                self.out_features, self.rank_dropout, drop_dtype, self.rank_dropout_scale
            )
            delta = delta * mask.to(delta.device)
        return delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``: ``base(x) + x ΔWᵀ``."""
        check_last_dim(x, self.in_features, type(self).__name__)
        if self.merged:
            refuse_training_merged(self, self.parameters(), "adapter factors")
            return self.base(x)
        out = self.base(x)
        if not self.training:
            return out + F.linear(x, self.delta_weight())
        if not bool(torch.rand(1) > self.module_dropout):  # module dropout: skip the update
            return out
        return out + F.linear(x, self._train_delta())

    def _add_to_base(self, sign: float) -> None:
        w = weight_of(self.base)
        add_delta_(w, self._delta(torch.promote_types(w.dtype, torch.float32)), sign)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"alpha={self.alpha:g}, scale={self.scale:g}, rank_dropout={self.rank_dropout:g}, "
            f"module_dropout={self.module_dropout:g}, merged={self.merged}"
        )


def check_lycoris_arguments(
    base: object, what: str, rank: object, alpha: object, rank_dropout: object, module_dropout: object
) -> tuple[nn.Linear, int, float, float, float]:
    """Validated ``(base, rank, alpha, rank_dropout, module_dropout)``: an ``nn.Linear``, rank an
    int > 0, alpha > 0 (``None`` means ``rank``), both dropouts in ``[0, 1)``."""
    linear = check_linear(base, f"{what} base")
    rank = check_positive_int(rank, f"{what} rank")
    alpha = float(rank) if alpha is None else check_positive_float(alpha, f"{what} alpha")
    rank_dropout = check_probability(rank_dropout, f"{what} rank_dropout")
    module_dropout = check_probability(module_dropout, f"{what} module_dropout")
    return linear, rank, alpha, rank_dropout, module_dropout


class LoHaLinear(LycorisLinear):
    """An ``nn.Linear`` with a trainable LoHa update; the base layer is frozen.

    Args:
        base: the ``nn.Linear`` to adapt; kept as ``self.base`` with ``requires_grad=False``.
        rank: ``r`` > 0, the inner dimension of each product (the update reaches rank ``r²``).
        alpha: scaling numerator, ``scale = alpha / r``; defaults to ``rank`` (scale 1).
        rank_dropout: probability in ``[0, 1)`` of dropping each output row of ΔW in training.
        module_dropout: probability in ``[0, 1)`` of skipping the update for a training step.
        init_weights: ``True`` (PEFT's default): ``hada_w2_b = 0`` so ΔW = 0; ``False``: all
            four factors Kaiming-uniform (ΔW != 0, for tests).

    Shapes (PEFT's names): ``hada_w1_a, hada_w2_a (out_features, r)``, ``hada_w1_b, hada_w2_b
    (r, in_features)``, in the base weight's dtype and device. ``forward`` maps
    ``(..., in_features) -> (..., out_features)``.
    """

    adapter_param_names: tuple[str, ...] | None = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
    rank_dropout_scale = True  # PEFT's LoHa always rescales the kept rows

    def __init__(
        self,
        base: nn.Module,
        rank: int,
        alpha: float | None = None,
        *,
        rank_dropout: float = 0.0,
        module_dropout: float = 0.0,
        init_weights: bool = True,
    ) -> None:
        # Validate everything before touching ``base``.
        args = check_lycoris_arguments(base, "LoHaLinear", rank, alpha, rank_dropout, module_dropout)
        check_bool(init_weights, "LoHaLinear init_weights")
        super().__init__()
        self._setup(*args)
        r, d_in, d_out = self.rank, self.in_features, self.out_features
        self.hada_w1_a = self._new_param(d_out, r)  # (out, r)
        self.hada_w1_b = self._new_param(r, d_in)  # (r, in)
        self.hada_w2_a = self._new_param(d_out, r)  # (out, r)
        self.hada_w2_b = self._new_param(r, d_in)  # (r, in)
        self.reset_parameters(init_weights)
        self.base.requires_grad_(False)

    @torch.no_grad()
    def reset_parameters(self, init_weights: bool = True) -> None:
        """Kaiming-uniform factors in PEFT's order (same seed, same tensors); with
        ``init_weights`` ``hada_w2_b = 0``, so ΔW = 0."""
        for p in (self.hada_w1_a, self.hada_w1_b, self.hada_w2_a):
            kaiming_(p)
        if init_weights:
            nn.init.zeros_(self.hada_w2_b)
        else:
            kaiming_(self.hada_w2_b)

    def _delta(self, dtype: torch.dtype) -> torch.Tensor:
        w1 = self.hada_w1_a.to(dtype) @ self.hada_w1_b.to(dtype)  # (out, in), rank <= r
        w2 = self.hada_w2_a.to(dtype) @ self.hada_w2_b.to(dtype)  # (out, in), rank <= r
        return (w1 * w2) * self.scale  # (out, in), rank <= r²

    def adapter_config(self) -> dict[str, object]:
        return {
            "method": "loha",
            "rank": self.rank,
            "alpha": self.alpha,
            "rank_dropout": self.rank_dropout,
            "module_dropout": self.module_dropout,
        }
