# Challenge 22 · prefix_past_key_values: per-layer key/value prefixes for grouped-query attention. Replace each TODO(ex22) with your code, then run:
#     peft-zoo check 22        (or: pytest practice/13_lora_adapters/test_ex22_prefix_past_key_values.py)
# Stuck? `peft-zoo hint 22`. Start over: `peft-zoo reset 22` (your file is backed up).
"""Prefix tuning through ``past_key_values`` (Li & Liang, 2021, arXiv:2101.00190), laid out
as Hugging Face PEFT's ``PrefixEncoder`` lays it out, for grouped-query attention.

Every attention layer ``l`` of a frozen model gets ``n`` trained keys and values in front of
the real tokens. A ``transformers`` model takes them where it takes a key/value cache, as
``past_key_values``: one ``(key, value)`` pair per layer, each ``(B, H_kv, n, d_head)``, as if
``n`` tokens had already been processed. No attention code changes.

    D = H_kv * d_head                    the key width: the cache holds the KEY/VALUE heads
                                         (grouped-query attention: H_kv < H query heads)
    P = E                                E: (n, 2 L D)               no projection
    P = W2 tanh(W1 E + b1) + b2          E: (n, D), W1: (h, D), W2: (2 L D, h)
                                         (PEFT's prefix_projection=True, h = encoder_hidden_size)

One row of ``P`` per virtual token holds every layer's keys and values: viewed as
``(n, 2L, H_kv, d_head)``, index ``2l`` is layer ``l``'s keys and ``2l + 1`` its values.
The projection runs ONCE on all of ``E``; every sample of a batch gets the same prefix.

The attention mask must cover ``n + T`` positions: ``n`` ones go IN FRONT, where the prefix
sits, so every real token may attend to it, whatever its padding.
"""

from __future__ import annotations

import torch
from torch import nn


def _positive(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class PrefixKV(nn.Module):
    """Per-layer key/value prefixes for a decoder with grouped-query attention.

    Attributes to create (PEFT's names, so a PEFT ``PrefixEncoder`` state dict would load):
        embedding   ``nn.Embedding(n, 2 L D)`` without projection, ``nn.Embedding(n, D)`` with one
        transform   with ``encoder_hidden_size = h`` only: ``nn.Sequential(nn.Linear(D, h),
                    nn.Tanh(), nn.Linear(h, 2 L D))``
    with ``D = num_kv_heads * head_dim``.
    """

    def __init__(
        self,
        num_virtual_tokens: int,
        num_layers: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        encoder_hidden_size: int | None = None,
    ) -> None:
        super().__init__()
        for value, name in (
            (num_virtual_tokens, "num_virtual_tokens"),
            (num_layers, "num_layers"),
            (num_heads, "num_heads"),
            (num_kv_heads, "num_kv_heads"),
            (head_dim, "head_dim"),
        ):
            _positive(value, name)
        if encoder_hidden_size is not None:
            _positive(encoder_hidden_size, "encoder_hidden_size")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
        self.num_virtual_tokens, self.num_layers = num_virtual_tokens, num_layers
        self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
        self.encoder_hidden_size = encoder_hidden_size
        # TODO(ex22): D from the KEY/VALUE heads; embedding (n, 2 L D), or (n, D) and transform D -> h -> 2 L D
        raise NotImplementedError("ex22 (prefix_past_key_values): PrefixKV.__init__ is not implemented yet")

    def prompt(self) -> torch.Tensor:
        """``P``: ``(n, 2 L D)``, the embedding's weight, through ``transform`` if there is one.
        2 lines."""
        # TODO(ex22): E = embedding.weight; P = E, or transform(E) with a projection
        raise NotImplementedError("ex22 (prefix_past_key_values): PrefixKV.prompt is not implemented yet")

    def past_key_values(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``L`` pairs ``(key, value)``, each ``(batch_size, H_kv, n, d_head)``; layer ``l`` reads
        ``P`` viewed as ``(n, 2L, H_kv, d_head)`` at ``2l`` (keys) and ``2l + 1`` (values), the
        same for every sample. About 6 lines."""
        _positive(batch_size, "batch_size")
        # TODO(ex22): view P as (n, 2L, H_kv, d_head), move tokens after heads, expand over the batch, pair up
        raise NotImplementedError("ex22 (prefix_past_key_values): PrefixKV.past_key_values is not implemented yet")


def extend_attention_mask(attention_mask: torch.Tensor, num_virtual_tokens: int) -> torch.Tensor:
    """``(B, T) -> (B, n + T)``: ``n`` ones in front, then the mask; same dtype and device.
    1 line."""
    _positive(num_virtual_tokens, "num_virtual_tokens")
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (batch, length), got shape {tuple(attention_mask.shape)}")
    # TODO(ex22): concatenate (B, n) ones of the mask's dtype BEFORE the mask
    raise NotImplementedError("ex22 (prefix_past_key_values): extend_attention_mask is not implemented yet")
