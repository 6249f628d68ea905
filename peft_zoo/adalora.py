"""AdaLoRA: a LoRA update in SVD form whose rank budget is reallocated during training
(Zhang et al., 2023, "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning",
arXiv:2303.10512, ICLR 2023).

Instead of ``ΔW = B A`` the update is parameterised like a singular value decomposition::

    ΔW = P Λ Q                      P: (out, r), Λ = diag(λ): (r, r), Q: (r, in)
    y  = W0 x + b + s · P (Λ (Q dropout(x)))        s = alpha / (ranknum + 1e-5)

Hugging Face PEFT 0.21.2 (``peft.tuners.adalora.layer.SVDLinear``) names the three factors
``lora_B = P`` (out, r), ``lora_E = λ`` (r, 1) and ``lora_A = Q`` (r, in); this module uses the
same names and shapes, so a PEFT file maps onto it one to one. ``ranknum`` (shape ``(1,)``)
holds the initial rank ``r`` as a float; PEFT divides by ``ranknum + 1e-5`` (not by ``r``) and
never updates it, so the scale is fixed even as triplets are pruned. At initialisation
``λ = 0`` (so ``ΔW = 0`` and the layer equals its base) and ``P``, ``Q`` are drawn from
``N(0, 0.02²)`` -- PEFT's init; the paper's Section 3.1 uses the same "Λ zero, P and Q
random Gaussian" recipe.

A triplet ``(P[:, i], λ_i, Q[i, :])`` is pruned by setting ``λ_i = 0`` (it keeps training and
can come back at the next allocation). Which triplets survive is decided by
:class:`peft_zoo.adalora_allocator.RankAllocator` from smoothed sensitivity scores.

``P`` and ``Q`` are not constrained to be orthogonal; the paper adds the regulariser
``R(P, Q) = ||PᵀP - I||²_F + ||QQᵀ - I||²_F`` (Eq. 4). PEFT's ``AdaLoraModel.forward``
computes a variant, and :func:`orthogonal_regulariser` reproduces PEFT's exactly: the
*unsquared* Frobenius norm of each of ``QQᵀ - I`` and ``PᵀP - I``, averaged over all those
matrices (two per layer), to be multiplied by ``orth_reg_weight`` and added to the loss.

Merging folds ``s · P diag(λ) Q`` into ``W0``; unmerging subtracts it again.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from .core.base import AdditiveAdapter, add_delta_, refuse_training_merged
from .core.checks import (
    bias_of,
    check_last_dim,
    check_module,
    check_positive_float,
    check_positive_int,
    check_probability,
    linear_features,
    weight_of,
)

__all__ = ["AdaLoRALinear", "adalora_layers", "orthogonal_regulariser"]

RANKNUM_EPS = 1e-5  # PEFT divides by ranknum + 1e-5


class AdaLoRALinear(AdditiveAdapter):
    """A frozen ``nn.Linear`` (or GPT-2 ``Conv1D``) with an AdaLoRA update ``s · P diag(λ) Q``.

    Args:
        base: the layer to adapt; kept as ``self.base`` with ``requires_grad=False``.
        rank: the initial rank ``r`` > 0 (PEFT's ``init_r``): the number of triplets.
        alpha: PEFT's ``lora_alpha``; defaults to ``rank`` (so ``s ≈ 1``).
        dropout: probability in ``[0, 1)`` of dropping inputs of the adapter path only.
        fan_in_fan_out: the base stores its weight as ``(in, out)`` (``Conv1D``); ``None``
            (default) infers it from the base's type.

    Parameters: ``lora_A`` = Q ``(rank, in_features)``, ``lora_E`` = λ ``(rank, 1)``,
    ``lora_B`` = P ``(out_features, rank)``; buffer ``ranknum`` ``(1,)`` = ``float(rank)``
    (not saved, as in PEFT). ``forward`` maps ``(..., in_features) -> (..., out_features)``.
    """

    adapter_param_names: tuple[str, ...] | None = ("lora_A", "lora_E", "lora_B")
    # The budget schedule of the config that built the layer (target_r, total_step, tinit, tfinal,
    # deltaT, beta1, beta2, orth_reg_weight), kept so that a saved PEFT file carries it; None when
    # the layer was built by hand. Training state lives in the RankAllocator, not here.
    schedule: tuple[tuple[str, float], ...] | None = None
    lora_A: nn.Parameter  # Q (r, in): right singular vectors
    lora_E: nn.Parameter  # λ (r, 1): singular values, pruned to zero by the allocator
    lora_B: nn.Parameter  # P (out, r): left singular vectors
    ranknum: torch.Tensor  # (1,) float(r)

    def __init__(
        self,
        base: nn.Module,
        rank: int,
        alpha: float | None = None,
        *,
        dropout: float = 0.0,
        fan_in_fan_out: bool | None = None,
    ) -> None:
        d_in, d_out, fan_in_fan_out = linear_features(base, "AdaLoRALinear base", fan_in_fan_out)
        rank = check_positive_int(rank, "rank")
        alpha = float(rank) if alpha is None else check_positive_float(alpha, "alpha")
        dropout = check_probability(dropout, "dropout")
        super().__init__()
        self.base = base
        self.in_features, self.out_features = d_in, d_out
        self.fan_in_fan_out = fan_in_fan_out
        self.rank, self.alpha, self.dropout_p = rank, alpha, dropout
        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        w = weight_of(base)
        dev, dt = w.device, w.dtype
        self.lora_A = nn.Parameter(torch.empty(rank, d_in, device=dev, dtype=dt))  # Q (r, in)
        self.lora_E = nn.Parameter(torch.empty(rank, 1, device=dev, dtype=dt))  # λ (r, 1)
        self.lora_B = nn.Parameter(torch.empty(d_out, rank, device=dev, dtype=dt))  # P (out, r)
        # Not saved, as in PEFT (it is always float(rank)).
        self.register_buffer("ranknum", torch.full((1,), float(rank), device=dev, dtype=dt), persistent=False)
        self.merged = False
        self.reset_adalora_parameters()
        self.base.requires_grad_(False)  # last: a failed constructor leaves the base as it was

    @torch.no_grad()
    def reset_adalora_parameters(self) -> None:
        """PEFT's init: ``λ = 0`` (so ``ΔW = 0``), ``P`` and ``Q`` ~ ``N(0, 0.02²)``."""
        nn.init.zeros_(self.lora_E)
        nn.init.normal_(self.lora_A, mean=0.0, std=0.02)
        nn.init.normal_(self.lora_B, mean=0.0, std=0.02)

    @property
    def scale(self) -> float:
        """``alpha / (ranknum + 1e-5)``, the factor in front of ``P diag(λ) Q``."""
        return self.alpha / (float(self.ranknum.item()) + RANKNUM_EPS)

    def active_rank(self) -> int:
        """How many triplets are alive (``λ_i != 0``)."""
        return int((self.lora_E.detach() != 0).sum().item())

    def _delta(self, dtype: torch.dtype) -> torch.Tensor:
        # Same operations, in the same order, as PEFT's SVDLinear.get_delta_weight.
        a, e, b = self.lora_A.to(dtype), self.lora_E.to(dtype), self.lora_B.to(dtype)
        return (b @ (a * e)) * self.alpha / (self.ranknum.to(dtype) + RANKNUM_EPS)  # (out, in)

    def delta_weight(self) -> torch.Tensor:
        """``s · P diag(λ) Q``, shape ``(out_features, in_features)``, in the adapter dtype."""
        return self._delta(self.lora_A.dtype)

    def _add_to_base(self, sign: float) -> None:
        delta = self._delta(torch.promote_types(self.lora_A.dtype, torch.float32))
        add_delta_(weight_of(self.base), delta.T if self.fan_in_fan_out else delta, sign)

    @property
    def weight(self) -> torch.Tensor:
        """The weight this layer applies, in the base's own layout (computed on access)."""
        w = weight_of(self.base)
        if self.merged:
            return w
        delta = self.delta_weight()
        return w + (delta.T if self.fan_in_fan_out else delta)

    @property
    def bias(self) -> torch.Tensor | None:
        """The base layer's bias, shape ``(out_features,)`` (AdaLoRA leaves it unchanged)."""
        return bias_of(self.base)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``."""
        check_last_dim(x, self.in_features, "AdaLoRALinear")
        if self.merged:
            refuse_training_merged(self, (self.lora_A, self.lora_E, self.lora_B), "AdaLoRA weights")
            return self.base(x)
        result = self.base(x)
        h = self.lora_dropout(x.to(self.lora_A.dtype)) @ (self.lora_A * self.lora_E).T  # (..., r)
        # Scaled in PEFT's order: (h Pᵀ) * alpha / (ranknum + 1e-5).
        update = (h @ self.lora_B.T) * self.alpha / (self.ranknum + RANKNUM_EPS)  # (..., out)
        return result + update.to(result.dtype)

    def adapter_config(self) -> dict[str, object]:
        return {"method": "adalora", "rank": self.rank, "alpha": self.alpha, "dropout": self.dropout_p}

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"alpha={self.alpha:g}, dropout={self.dropout_p:g}, merged={self.merged}"
            + (", fan_in_fan_out=True" if self.fan_in_fan_out else "")
        )


def adalora_layers(model: nn.Module) -> Iterator[tuple[str, AdaLoRALinear]]:
    """``(name, layer)`` for every :class:`AdaLoRALinear` in ``model``, in ``named_modules()`` order."""
    check_module(model, "model")
    for name, module in model.named_modules():
        if isinstance(module, AdaLoRALinear):
            yield name, module


def orthogonal_regulariser(model: nn.Module) -> torch.Tensor:
    """PEFT's AdaLoRA orthogonality penalty over every :class:`AdaLoRALinear` in ``model``.

    For each layer, in ``named_modules()`` order, ``||QQᵀ - I_r||_F`` (``Q = lora_A``, (r, in))
    then ``||PᵀP - I_r||_F`` (``P = lora_B``, (out, r)); the result is their mean (a 0-d
    tensor, differentiable). This is exactly what ``AdaLoraModel.forward`` in PEFT 0.21.2
    adds to the loss (times ``orth_reg_weight``); note it is the unsquared norm averaged over
    ``2 × layers`` matrices, where the paper's Eq. 4 writes the squared norm summed. A model
    without AdaLoRA layers gives ``tensor(0.)``.
    """
    total: torch.Tensor | None = None
    count = 0
    for _, layer in adalora_layers(model):
        for cov in (layer.lora_A @ layer.lora_A.T, layer.lora_B.T @ layer.lora_B):  # (r, r) each
            eye = torch.eye(*cov.shape, dtype=cov.dtype, device=cov.device)
            norm = torch.norm(cov - eye, p="fro")
            total = norm if total is None else total + norm
            count += 1
    if total is None:
        return torch.zeros(())
    return total / count
