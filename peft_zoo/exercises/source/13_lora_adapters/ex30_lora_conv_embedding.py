"""lora_conv_embedding: LoRA beyond nn.Linear, on token embeddings and 2-D convolutions.

**Embedding.** An ``nn.Embedding`` stores a table ``W0 (vocab, dim)`` and looks rows up. PEFT
gives it ``lora_embedding_A (r, vocab)`` and ``lora_embedding_B (dim, r)``, so ``ΔW = s B A``
is ``(dim, vocab)`` like a linear layer's ``(out, in)`` and the table receives ``ΔWᵀ``. Token
``t`` selects COLUMN ``t`` of A (row ``t`` of ``Aᵀ``)::

    y = W0[ids] + s · Aᵀ[ids] Bᵀ              (..., dim)        s = alpha / r

The init is the mirror image of the linear layer's: ``A = 0`` and ``B ~ N(0, 1)`` (PEFT,
after loralib), still ``ΔW = 0`` at the start, and since B is random A's gradient is not zero.

**Conv2d.** A convolution is a linear map on each receptive field (fan-in ``in · kh · kw``).
LoRA factors it through ``r`` channels: ``A`` is a convolution with the base's kernel size,
stride, padding and dilation (so it sees the same receptive fields and its output lines up
with the base's), ``B`` a 1x1 convolution mixing the ``r`` channels::

    y = conv(x, W0) + b + s · conv_1x1(conv(x, A), B)
        A: (r, in, kh, kw) Kaiming-uniform     B: (out, r, 1, 1) zeros

Merging composes the two: ``ΔW[o, i, :, :] = s Σ_j B[o, j] A[j, i, :, :]``, i.e. the matrix
product of ``B (out, r)`` and ``A`` flattened to ``(r, in · kh · kw)``, reshaped to the
kernel's ``(out, in, kh, kw)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class LoRAEmbedding(nn.Module):
    """LoRA on ``base`` (an ``nn.Embedding``, frozen). Attributes: ``lora_embedding_A (rank,
    num_embeddings)``, ``lora_embedding_B (embedding_dim, rank)``, ``scale = alpha / rank``
    (alpha defaults to rank), ``merged``."""

    def __init__(self, base: nn.Embedding, rank: int, alpha: float | None = None) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scale = (rank if alpha is None else alpha) / rank
        self.merged = False
        # BEGIN SOLUTION: lora_embedding_A (rank, num_embeddings) zeros, lora_embedding_B (embedding_dim, rank) ~ N(0, 1), both nn.Parameter with base.weight's dtype and device
        factory: dict[str, Any] = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.lora_embedding_A = nn.Parameter(torch.zeros(rank, base.num_embeddings, **factory))  # (r, vocab)
        self.lora_embedding_B = nn.Parameter(torch.randn(base.embedding_dim, rank, **factory))  # (dim, r)
        # END SOLUTION

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Integer ids ``(...)`` -> ``(..., embedding_dim)``; once merged, just ``base(ids)``.
        About 4 lines."""
        # BEGIN SOLUTION: merged: base(ids). Else look the ids up in lora_embedding_A.T (F.embedding), then @ B.T * scale, plus base(ids)
        if self.merged:
            return self.base(ids)
        after_a = F.embedding(ids, self.lora_embedding_A.T)  # (..., r): column `id` of A
        return self.base(ids) + (after_a @ self.lora_embedding_B.T) * self.scale  # (..., dim)
        # END SOLUTION

    def merge(self) -> None:
        """Add ``ΔWᵀ = (s B A)ᵀ`` ``(vocab, dim)`` to ``base.weight`` in place (no grad), set
        ``merged``; merging twice changes nothing. About 5 lines."""
        # BEGIN SOLUTION: if not merged: base.weight += (scale * B @ A).T under no_grad; merged = True
        if self.merged:
            return
        with torch.no_grad():
            self.base.weight += (self.scale * self.lora_embedding_B @ self.lora_embedding_A).T  # (vocab, dim)
        self.merged = True
        # END SOLUTION


class LoRAConv2d(nn.Module):
    """LoRA on ``base`` (an ``nn.Conv2d`` with ``groups=1``, frozen). Attributes: ``lora_A (rank,
    in_channels, kh, kw)``, ``lora_B (out_channels, rank, 1, 1)``, ``scale = alpha / rank``,
    ``merged``."""

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float | None = None) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scale = (rank if alpha is None else alpha) / rank
        self.merged = False
        # BEGIN SOLUTION: lora_A (rank, in_channels, *base.kernel_size) Kaiming-uniform (a = sqrt(5), as nn.Conv2d); lora_B (out_channels, rank, 1, 1) zeros; base.weight's dtype and device
        factory: dict[str, Any] = {"dtype": base.weight.dtype, "device": base.weight.device}
        kh, kw = base.kernel_size
        self.lora_A = nn.Parameter(
            torch.empty(rank, base.in_channels, kh, kw, **factory)
        )  # the base's kernel
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(base.out_channels, rank, 1, 1, **factory))  # pointwise
        # END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in, H, W) -> (N, out, H', W')``; once merged, just ``base(x)``. About 5 lines."""
        # BEGIN SOLUTION: merged: base(x). Else h = F.conv2d(x, lora_A) with the base's stride, padding, dilation; base(x) + F.conv2d(h, lora_B) * scale
        if self.merged:
            return self.base(x)
        b = self.base
        h = F.conv2d(x, self.lora_A, None, b.stride, b.padding, b.dilation)  # (N, r, H', W')
        return b(x) + F.conv2d(h, self.lora_B) * self.scale
        # END SOLUTION

    def delta_weight(self) -> torch.Tensor:
        """``ΔW = s · (B ∘ A)`` in the base kernel's shape ``(out, in, kh, kw)``. About 3 lines."""
        # BEGIN SOLUTION: B.flatten(1) (out, r) @ A.flatten(1) (r, in*kh*kw), viewed as (out, in, kh, kw), times scale
        delta = self.lora_B.flatten(1) @ self.lora_A.flatten(1)  # (out, in * kh * kw)
        return delta.view(self.lora_B.shape[0], *self.lora_A.shape[1:]) * self.scale
        # END SOLUTION

    def merge(self) -> None:
        """Add :meth:`delta_weight` to ``base.weight`` in place and set ``merged`` (given)."""
        if self.merged:
            return
        with torch.no_grad():
            self.base.weight += self.delta_weight()
        self.merged = True
