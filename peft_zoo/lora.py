"""LoRA: a frozen linear layer plus a trainable low-rank update (Hu et al., 2021, arXiv:2106.09685).

    y = W0 x + b + scale * B (A dropout(x))        A: (r, in), B: (out, r), scale = alpha / r

Only ``A`` and ``B`` train: ``r * (in + out)`` parameters instead of ``in * out``.
``B`` starts at zero, so at initialisation ``ΔW = B A = 0`` and the layer equals its base.
rsLoRA (Kalajdzievski, 2023, arXiv:2312.03732) uses ``scale = alpha / sqrt(r)`` so the
update's magnitude does not shrink as the rank grows.

Merging folds the update into the base weight, ``W0 <- W0 + scale * B A``, so inference
costs exactly one GEMM; unmerging subtracts it again.
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
    check_positive_float,
    check_positive_int,
    check_probability,
    linear_features,
    weight_of,
)


def lora_scale(rank: int, alpha: float, rslora: bool = False) -> float:
    """The factor in front of ``B A``: ``alpha / rank``, or ``alpha / sqrt(rank)`` with rsLoRA."""
    return alpha / math.sqrt(rank) if rslora else alpha / rank


def check_lora_hyperparameters(rank: object, alpha: object, dropout: object) -> tuple[int, float, float]:
    """Validated ``(rank, alpha, dropout)``: rank a positive int, alpha positive (defaults to
    ``rank``), dropout in ``[0, 1)``. Raises a ``ValueError``/``TypeError`` naming the argument."""
    rank = check_positive_int(rank, "rank")
    alpha = float(rank) if alpha is None else check_positive_float(alpha, "alpha")
    return rank, alpha, check_probability(dropout, "dropout")


class LoRALayer(AdditiveAdapter):
    """What every LoRA-style layer holds (:class:`LoRALinear`, :class:`DoRALinear`,
    :class:`FusedLoRALinear`, :class:`QLoRALinear`): its sizes, the hyperparameters
    :func:`set_lora_hyperparameters` sets, the trainable pair ``lora_A`` / ``lora_B`` and
    whether the update is merged into the base."""

    in_features: int
    out_features: int
    rank: int
    alpha: float
    rslora: bool
    scale: float  # alpha / rank, or alpha / sqrt(rank) with rsLoRA
    dropout_p: float
    lora_dropout: nn.Module  # dropout on the LoRA path only (nn.Identity when dropout_p == 0)
    lora_A: nn.Parameter
    lora_B: nn.Parameter
    merged: bool


def set_lora_hyperparameters(
    module: LoRALayer, rank: int, alpha: float, dropout: float, rslora: bool
) -> None:
    """Give ``module`` the attributes every LoRA-style layer has: ``rank``, ``alpha``,
    ``rslora``, ``scale``, ``dropout_p`` and ``lora_dropout`` (dropout on the LoRA path only).
    Arguments as returned by :func:`check_lora_hyperparameters`."""
    module.rank, module.alpha, module.rslora = rank, alpha, bool(rslora)
    module.scale = lora_scale(rank, alpha, module.rslora)
    module.dropout_p = dropout
    module.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()


def init_lora_pair(lora_A: torch.Tensor, lora_B: torch.Tensor) -> None:
    """A ~ Kaiming-uniform (as ``nn.Linear`` initialises weights), B = 0, so ``B A = 0``."""
    nn.init.kaiming_uniform_(lora_A, a=math.sqrt(5))
    nn.init.zeros_(lora_B)


class LowRankAdapter(LoRALayer):
    """What every low-rank update over a frozen ``base`` shares: the effective ``weight``,
    merge and unmerge as plain weight arithmetic, in the base weight's own layout.

    Subclasses set ``base``, ``fan_in_fan_out`` and ``merged`` and implement ``_delta(dtype)``,
    the update ``(out_features, in_features)`` computed in ``dtype``.
    """

    base: nn.Module
    fan_in_fan_out: bool

    def _delta(self, dtype: torch.dtype) -> torch.Tensor:
        raise NotImplementedError

    def adapter_config(self) -> dict[str, object]:
        """What a checkpoint records about this layer (a fused layer adds its parts)."""
        return {
            "method": "lora",
            "rank": self.rank,
            "alpha": self.alpha,
            "rslora": self.rslora,
            "dropout": self.dropout_p,
        }

    def delta_weight(self) -> torch.Tensor:
        """The update ``scale * B A``, shape ``(out_features, in_features)``, in the adapter dtype."""
        return self._delta(self.lora_A.dtype)

    def _layout(self, delta: torch.Tensor) -> torch.Tensor:
        """``delta`` (out, in) in the base weight's layout."""
        return delta.T if self.fan_in_fan_out else delta

    @property
    def weight(self) -> torch.Tensor:
        """The weight this layer applies, ``W0 + scale * B A``, shape ``(out_features, in_features)``
        (``(in, out)`` for a ``fan_in_fan_out`` base: always the base's own layout).

        Computed on access, not a parameter: code that reads a Linear's ``.weight`` directly
        (PyTorch's fused ``nn.TransformerEncoderLayer`` inference path, dtype and device
        checks) then sees the adapted layer rather than failing or silently using ``W0``.
        Writing into it changes nothing: train ``lora_A`` / ``lora_B``, or edit ``base.weight``.
        """
        w = weight_of(self.base)
        return w if self.merged else w + self._layout(self.delta_weight())

    @property
    def bias(self) -> torch.Tensor | None:
        """The base layer's bias (LoRA leaves it unchanged), shape ``(out_features,)``."""
        return bias_of(self.base)

    def _add_to_base(self, sign: float) -> None:
        # Half-precision products lose bits; form the update and the sum in float32 at least.
        delta = self._layout(self._delta(torch.promote_types(self.lora_A.dtype, torch.float32)))
        add_delta_(weight_of(self.base), delta, sign)

    def _refuse_training_merged(self) -> None:
        refuse_training_merged(self, (self.lora_A, self.lora_B), "LoRA weights")


class LoRALinear(LowRankAdapter):
    """An ``nn.Linear`` with a trainable low-rank update; the base layer is frozen.

    Args:
        base: the layer to adapt; kept as ``self.base`` with ``requires_grad=False``.
        rank: ``r`` > 0, the inner dimension of ``B A``.
        alpha: scaling numerator; defaults to ``rank`` (so ``scale == 1``).
        dropout: probability in ``[0, 1)`` of dropping inputs *of the LoRA path only*.
        rslora: use ``alpha / sqrt(rank)`` instead of ``alpha / rank``.
        fan_in_fan_out: the base stores its weight as ``(in, out)``, as GPT-2's ``Conv1D``
            does; ``None`` (default) infers it from the base's type.

    Shapes: ``lora_A (rank, in_features)``, ``lora_B (out_features, rank)``;
    ``forward`` maps ``(..., in_features) -> (..., out_features)``. The adapter tensors take
    the base weight's dtype and device.
    """

    adapter_param_names: tuple[str, ...] | None = ("lora_A", "lora_B")
    # How the factors started, as PEFT's init_lora_weights names it. PiSSA / OLoRA (pissa.py)
    # record themselves here: their adapter fits only the residual base they leave, so a saved
    # file says so and a loader redoes the decomposition on the original base, as PEFT does.
    init_lora_weights: bool | str = True

    def __init__(
        self,
        base: nn.Module,
        rank: int,
        alpha: float | None = None,
        *,
        dropout: float = 0.0,
        rslora: bool = False,
        fan_in_fan_out: bool | None = None,
    ) -> None:
        # Validate everything before touching ``base``.
        d_in, d_out, fan_in_fan_out = linear_features(base, "LoRALinear base", fan_in_fan_out)
        rank, alpha, dropout = check_lora_hyperparameters(rank, alpha, dropout)
        check_bool(rslora, "rslora")
        super().__init__()

        self.base = base
        self.in_features = d_in
        self.out_features = d_out
        self.fan_in_fan_out = fan_in_fan_out
        set_lora_hyperparameters(self, rank, alpha, dropout, rslora)

        w = weight_of(base)
        self.lora_A = nn.Parameter(torch.empty(rank, d_in, device=w.device, dtype=w.dtype))  # (r, in)
        self.lora_B = nn.Parameter(torch.empty(d_out, rank, device=w.device, dtype=w.dtype))  # (out, r)
        self.merged = False
        self.reset_lora_parameters()
        # Frozen last: a constructor that fails (e.g. A and B too large to allocate) leaves the
        # caller's layer as it was, requires_grad included.
        self.base.requires_grad_(False)

    def reset_lora_parameters(self) -> None:
        """A ~ Kaiming-uniform (as ``nn.Linear`` initialises weights), B = 0, so ΔW = 0."""
        init_lora_pair(self.lora_A, self.lora_B)

    def _delta(self, dtype: torch.dtype) -> torch.Tensor:
        return (self.lora_B.to(dtype) @ self.lora_A.to(dtype)) * self.scale  # (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``."""
        check_last_dim(x, self.in_features, "LoRALinear")
        if self.merged:
            self._refuse_training_merged()
            return self.base(x)
        h = F.linear(self.lora_dropout(x), self.lora_A)  # (..., r)
        return self.base(x) + F.linear(h, self.lora_B) * self.scale  # (..., out)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"alpha={self.alpha:g}, scale={self.scale:g}, rslora={self.rslora}, "
            f"dropout={self.dropout_p:g}, merged={self.merged}"
            + (", fan_in_fan_out=True" if self.fan_in_fan_out else "")
        )
