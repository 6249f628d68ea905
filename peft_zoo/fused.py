"""LoRA on some parts of a fused projection (loralib's ``MergedLinear``; Hu et al., 2021).

GPT-2 computes queries, keys and values with one fused layer, ``c_attn: d -> 3d``. The
LoRA paper adapts only ``W_q`` and ``W_v``; with a fused layer that means adapting only
the first and last thirds of its output. Split the output into ``len(parts)`` equal
slices and give each enabled slice ``j`` its own low-rank pair::

    y = W0 x + b,   then   y[slice j] += scale * B_j (A_j x)     for each enabled j
    A: (k, r, in)   B: (k, out / len(parts), r)   k = number of enabled parts

Disabled slices stay exactly the base. The update is a block matrix, so it merges like
plain LoRA, and it *is* a plain LoRA of rank ``k * r`` with a block-structured ``B``:
:meth:`FusedLoRALinear.as_lora` builds that equivalent :class:`LoRALinear` (how the
adapter is written in Hugging Face PEFT's format, which has no partial fused LoRA).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .core.checks import check_bool, check_last_dim, linear_features, weight_of
from .lora import LoRALinear, LowRankAdapter, check_lora_hyperparameters, set_lora_hyperparameters

__all__ = ["FusedLoRALinear"]


class FusedLoRALinear(LowRankAdapter):
    """LoRA on the enabled slices of a fused layer's output; the base is frozen.

    Args:
        base: an ``nn.Linear`` or GPT-2 ``Conv1D`` whose ``out_features`` splits evenly
            into ``len(parts)`` slices.
        rank, alpha, dropout, rslora, fan_in_fan_out: as :class:`LoRALinear` (per slice).
        parts: one flag per slice, e.g. ``(True, False, True)`` for q and v of ``c_attn``.

    Shapes: ``lora_A (k, rank, in)``, ``lora_B (k, out // len(parts), rank)`` with ``k`` the
    number of enabled slices; ``forward`` maps ``(..., in) -> (..., out)``.
    """

    adapter_param_names = ("lora_A", "lora_B")
    enabled: torch.Tensor  # (k,) indices of the enabled slices (a buffer)

    def __init__(
        self,
        base: nn.Module,
        rank: int,
        alpha: float | None = None,
        *,
        parts: Sequence[bool],
        dropout: float = 0.0,
        rslora: bool = False,
        fan_in_fan_out: bool | None = None,
    ) -> None:
        d_in, d_out, fan_in_fan_out = linear_features(base, "FusedLoRALinear base", fan_in_fan_out)
        rank, alpha, dropout = check_lora_hyperparameters(rank, alpha, dropout)
        if isinstance(parts, str | bytes) or not isinstance(parts, Sequence):
            raise TypeError(f"parts must be a sequence of bools, got {parts!r}")
        parts = tuple(check_bool(p, "each of parts") for p in parts)
        if not parts or not any(parts):
            raise ValueError(f"parts must enable at least one slice, got {parts}")
        if d_out % len(parts):
            raise ValueError(f"out_features={d_out} does not split into {len(parts)} equal parts")
        super().__init__()
        self.base = base
        self.in_features, self.out_features = d_in, d_out
        self.fan_in_fan_out = fan_in_fan_out
        self.parts = parts
        self.part_size = d_out // len(parts)
        set_lora_hyperparameters(self, rank, alpha, dropout, rslora)
        k = sum(parts)
        w = weight_of(base)
        self.lora_A = nn.Parameter(torch.empty(k, rank, d_in, device=w.device, dtype=w.dtype))  # (k, r, in)
        self.lora_B = nn.Parameter(
            torch.zeros(k, self.part_size, rank, device=w.device, dtype=w.dtype)
        )  # (k, out/p, r)
        self.register_buffer(
            "enabled",
            torch.tensor([i for i, on in enumerate(parts) if on], device=w.device),
            persistent=False,
        )
        self.merged = False
        for j in range(k):  # each slice's A initialised like nn.Linear, as in LoRALinear
            nn.init.kaiming_uniform_(self.lora_A[j], a=math.sqrt(5))
        self.base.requires_grad_(False)  # last: a constructor that fails leaves the caller's flags

    def _delta_parts(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in) -> (..., out)``: the update, zero on disabled slices."""
        h = torch.einsum("...i,kri->...kr", self.lora_dropout(x), self.lora_A)  # (..., k, r)
        d = torch.einsum("...kr,kor->...ko", h, self.lora_B) * self.scale  # (..., k, out/p)
        full = d.new_zeros(*d.shape[:-2], len(self.parts), self.part_size)  # (..., p, out/p)
        return full.index_copy(-2, self.enabled, d).flatten(-2)  # (..., out)

    def _delta(self, dtype: torch.dtype) -> torch.Tensor:
        """The update ``(out, in)``: block ``j`` is ``scale * B_j A_j``, zero elsewhere."""
        a, b = self.lora_A.to(dtype), self.lora_B.to(dtype)
        blocks = torch.einsum("kor,kri->koi", b, a) * self.scale  # (k, out/p, in)
        full = blocks.new_zeros(len(self.parts), self.part_size, self.in_features)
        return full.index_copy(0, self.enabled, blocks).reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``."""
        check_last_dim(x, self.in_features, "FusedLoRALinear")
        if self.merged:
            self._refuse_training_merged()
            return self.base(x)
        return self.base(x) + self._delta_parts(x)

    @torch.no_grad()
    def as_lora(self) -> LoRALinear:
        """The same function as one plain :class:`LoRALinear` of rank ``k * r`` over the same
        (shared) base: ``A = [A_1; ...; A_k]``, ``B`` block-structured, and alpha chosen so
        its scale equals this layer's (``k * alpha``, or ``sqrt(k) * alpha`` with rsLoRA)."""
        k = len(self.enabled)
        alpha = self.alpha * (math.sqrt(k) if self.rslora else k)
        lora = LoRALinear(
            self.base, k * self.rank, alpha, rslora=self.rslora, fan_in_fan_out=self.fan_in_fan_out
        )
        lora.lora_A.copy_(self.lora_A.reshape(k * self.rank, self.in_features))
        lora.lora_B.zero_()
        for j, part in enumerate(self.enabled.tolist()):
            rows = slice(part * self.part_size, (part + 1) * self.part_size)
            lora.lora_B[rows, j * self.rank : (j + 1) * self.rank] = self.lora_B[j]
        lora.merged = self.merged
        return lora

    def adapter_config(self) -> dict[str, object]:
        return {
            "method": "fused_lora",
            "rank": self.rank,
            "alpha": self.alpha,
            "rslora": self.rslora,
            "parts": list(self.parts),
            "dropout": self.dropout_p,
        }

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, parts={self.parts}, "
            f"rank={self.rank}, alpha={self.alpha:g}, merged={self.merged}"
        )
