# Challenge 30 · lora_conv_embedding: LoRA on nn.Embedding (a lookup into A) and nn.Conv2d (a k x k then a 1 x 1 conv). Replace each TODO(ex30) with your code, then run:
#     peft-zoo check 30        (or: pytest practice/13_lora_adapters/test_ex30_lora_conv_embedding.py)
# Stuck? `peft-zoo hint 30`. Start over: `peft-zoo reset 30` (your file is backed up).
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
        # TODO(ex30): lora_embedding_A (rank, num_embeddings) zeros, lora_embedding_B (embedding_dim, rank) ~ N(0, 1), both nn.Parameter with base.weight's dtype and device
        raise NotImplementedError("ex30 (lora_conv_embedding): LoRAEmbedding.__init__ is not implemented yet")

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Integer ids ``(...)`` -> ``(..., embedding_dim)``; once merged, just ``base(ids)``.
        About 4 lines."""
        # TODO(ex30): merged: base(ids). Else look the ids up in lora_embedding_A.T (F.embedding), then @ B.T * scale, plus base(ids)
        raise NotImplementedError("ex30 (lora_conv_embedding): LoRAEmbedding.forward is not implemented yet")

    def merge(self) -> None:
        """Add ``ΔWᵀ = (s B A)ᵀ`` ``(vocab, dim)`` to ``base.weight`` in place (no grad), set
        ``merged``; merging twice changes nothing. About 5 lines."""
        # TODO(ex30): if not merged: base.weight += (scale * B @ A).T under no_grad; merged = True
        raise NotImplementedError("ex30 (lora_conv_embedding): LoRAEmbedding.merge is not implemented yet")


class LoRAConv2d(nn.Module):
    """LoRA on ``base`` (an ``nn.Conv2d`` with ``groups=1``, frozen). Attributes: ``lora_A (rank,
    in_channels, kh, kw)``, ``lora_B (out_channels, rank, 1, 1)``, ``scale = alpha / rank``,
    ``merged``."""

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float | None = None) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scale = (rank if alpha is None else alpha) / rank
        self.merged = False
        # TODO(ex30): lora_A (rank, in_channels, *base.kernel_size) Kaiming-uniform (a = sqrt(5), as nn.Conv2d); lora_B (out_channels, rank, 1, 1) zeros; base.weight's dtype and device
        raise NotImplementedError("ex30 (lora_conv_embedding): LoRAConv2d.__init__ is not implemented yet")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in, H, W) -> (N, out, H', W')``; once merged, just ``base(x)``. About 5 lines."""
        # TODO(ex30): merged: base(x). Else h = F.conv2d(x, lora_A) with the base's stride, padding, dilation; base(x) + F.conv2d(h, lora_B) * scale
        raise NotImplementedError("ex30 (lora_conv_embedding): LoRAConv2d.forward is not implemented yet")

    def delta_weight(self) -> torch.Tensor:
        """``ΔW = s · (B ∘ A)`` in the base kernel's shape ``(out, in, kh, kw)``. About 3 lines."""
        # TODO(ex30): B.flatten(1) (out, r) @ A.flatten(1) (r, in*kh*kw), viewed as (out, in, kh, kw), times scale
        raise NotImplementedError("ex30 (lora_conv_embedding): LoRAConv2d.delta_weight is not implemented yet")

    def merge(self) -> None:
        """Add :meth:`delta_weight` to ``base.weight`` in place and set ``merged`` (given)."""
        if self.merged:
            return
        with torch.no_grad():
            self.base.weight += self.delta_weight()
        self.merged = True
