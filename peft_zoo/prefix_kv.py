"""Prefix tuning through the key/value cache: per-layer trained keys and values in front.

Li & Liang, "Prefix-Tuning" (2021). Every attention layer ``l`` of a frozen model attends to
``n`` trained key/value pairs before the real tokens. As Hugging Face PEFT's ``PrefixEncoder``
stores them, one row per virtual token holds every layer's keys and values::

    P = E                       E (n, 2 L D)                  (no projection)
    P = W2 tanh(W1 E + b1) + b2 E (n, D), W1 (h, D), W2 (2 L D, h)   (prefix_projection)

with ``D = H_kv * d_head`` (the key width: grouped-query models have fewer key/value heads)
and ``h`` = ``encoder_hidden_size``. ``P`` viewed as ``(n, 2L, H_kv, d_head)`` gives layer
``l`` its keys ``P[:, 2l]`` and values ``P[:, 2l + 1]``, each ``(H_kv, n, d_head)`` per
sample. After training only ``P`` matters: PEFT saves ``P`` (``prompt_embeddings``,
``(n, 2 L D)``), so a loaded adapter has no projection.
"""

from __future__ import annotations

import torch
from torch import nn

from .core.base import AdapterModule
from .core.checks import check_positive_int

__all__ = ["PrefixKVEncoder"]


class PrefixKVEncoder(AdapterModule):
    """``P``: ``embedding`` (``nn.Embedding``) and, with ``hidden_size``, ``transform`` (Linear,
    Tanh, Linear); PEFT's names and shapes, so a PEFT ``PrefixEncoder``'s ``state_dict`` loads.

    ``prompt()`` -> ``(n, 2 L D)``; ``key_values(batch_size)`` -> ``L`` pairs of ``(B, H_kv, n,
    d_head)`` keys and values.
    """

    def __init__(
        self, num_virtual_tokens: int, num_layers: int, num_heads: int, head_dim: int, hidden_size: int | None
    ) -> None:
        super().__init__()
        for value, name in (
            (num_virtual_tokens, "num_virtual_tokens"),
            (num_layers, "num_layers"),
            (num_heads, "num_heads"),
            (head_dim, "head_dim"),
        ):
            check_positive_int(value, name)
        if hidden_size is not None:
            check_positive_int(hidden_size, "hidden_size")
        self.num_virtual_tokens, self.num_layers = num_virtual_tokens, num_layers
        self.num_heads, self.head_dim = num_heads, head_dim
        width = num_heads * head_dim
        self.projection = hidden_size is not None
        if hidden_size is None:
            self.embedding = nn.Embedding(num_virtual_tokens, num_layers * 2 * width)
        else:
            self.embedding = nn.Embedding(num_virtual_tokens, width)
            self.transform = nn.Sequential(
                nn.Linear(width, hidden_size), nn.Tanh(), nn.Linear(hidden_size, num_layers * 2 * width)
            )

    def prompt(self) -> torch.Tensor:
        """``P`` ``(n, 2 L D)``."""
        if self.projection:
            return self.transform(self.embedding.weight)
        return self.embedding.weight

    def key_values(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer ``(keys, values)``, each ``(batch_size, H_kv, n, d_head)``."""
        n, layers = self.num_virtual_tokens, self.num_layers
        p = self.prompt().unsqueeze(0).expand(batch_size, -1, -1)  # (B, n, 2LD)
        p = p.reshape(batch_size, n, 2 * layers, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return [(p[2 * i], p[2 * i + 1]) for i in range(layers)]

    def forward(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self.key_values(batch_size)
