"""Small models to adapt: fast on a CPU, with the module layout real networks have.

They exist so that examples, the tour and the tests exercise injection on nested
submodules, residual units and attention projections, not on a lone ``nn.Linear``.
Residual connections live in :class:`Residual` units (``x + branch(x)``), which is
exactly what :class:`peft_zoo.AdapterBlock` wraps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class Residual(nn.Module):
    """``x + branch(x)``; ``branch`` maps ``(..., d) -> (..., d)``."""

    def __init__(self, branch: nn.Module) -> None:
        super().__init__()
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class FeedForward(nn.Module):
    """``fc2(gelu(fc1(x)))``: ``(..., d) -> (..., d_ff) -> (..., d)``."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TinyMLP(nn.Module):
    """``(..., d_in) -> (..., d_out)`` through nested submodules.

    Linear paths: ``encoder.0``, ``encoder.2.branch.fc1``, ``encoder.2.branch.fc2``, ``head``.
    ``encoder.2`` is a :class:`Residual` unit of width ``d_hidden``.
    """

    def __init__(self, d_in: int = 8, d_hidden: int = 16, d_out: int = 4) -> None:
        super().__init__()
        self.d_model = d_hidden
        self.encoder = nn.Sequential(
            nn.Linear(d_in, d_hidden),  # (..., d_in) -> (..., h)
            nn.GELU(),
            Residual(FeedForward(d_hidden, 2 * d_hidden)),  # (..., h) -> (..., h)
        )
        self.head = nn.Linear(d_hidden, d_out)  # (..., h) -> (..., d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


class SelfAttention(nn.Module):
    """Pre-norm multi-head self-attention branch with separate ``q, k, v, o`` projections.

    ``(B, T, d) -> (B, T, d)``; ``mask`` is ``(B, T)`` with 1 = keep, 0 = padding.
    """

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.norm = nn.LayerNorm(d_model)
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.o = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        h = self.norm(x)

        def heads(z: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, H, T, d/H)
            return z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)

        attn_mask = None if mask is None else mask[:, None, None, :].bool()  # (B, 1, 1, T)
        y = F.scaled_dot_product_attention(heads(self.q(h)), heads(self.k(h)), heads(self.v(h)), attn_mask)
        return self.o(y.transpose(1, 2).reshape(b, t, d))  # (B, T, d)


class PreNormFeedForward(FeedForward):
    """``FeedForward`` applied to ``LayerNorm(x)``."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__(d_model, d_ff)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.norm(x))


class TinyTransformerBlock(nn.Module):
    """A pre-norm transformer block, ``(B, T, d) -> (B, T, d)``.

    Linear paths: ``attn.branch.{q,k,v,o}``, ``ffn.branch.{fc1,fc2}``; ``attn`` and ``ffn``
    are :class:`Residual` units.
    """

    def __init__(self, d_model: int = 16, n_heads: int = 2, d_ff: int = 32) -> None:
        super().__init__()
        self.d_model = d_model
        self.attn = Residual(SelfAttention(d_model, n_heads))
        self.ffn = Residual(PreNormFeedForward(d_model, d_ff))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.attn(x))


@dataclass
class TinyTransformerConfig:
    vocab_size: int = 32  # token ids are 0..vocab_size-1
    max_len: int = 32  # longest sequence (learned positions)
    d_model: int = 64  # hidden width
    n_heads: int = 4  # attention heads; d_model must divide evenly
    d_ff: int = 128  # feed-forward inner width
    n_layers: int = 2  # transformer blocks
    n_classes: int = 2  # outputs of the classification head


class TinyTransformer(nn.Module):
    """Token classifier: ``(B, T)`` int ids -> ``(B, n_classes)`` logits (mean-pooled)."""

    def __init__(self, config: TinyTransformerConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or TinyTransformerConfig()
        self.tok = nn.Embedding(c.vocab_size, c.d_model)
        self.pos = nn.Embedding(c.max_len, c.d_model)
        self.blocks = nn.ModuleList(
            TinyTransformerBlock(c.d_model, c.n_heads, c.d_ff) for _ in range(c.n_layers)
        )
        self.norm = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.n_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        x = self.tok(ids) + self.pos(torch.arange(t, device=ids.device))  # (B, T, d)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))  # (B, n_classes)
