"""Bottleneck adapters inside a BERT layer, placed exactly where AdapterHub places them.

A BERT layer (post-LayerNorm) has two sublayers, each followed by residual + LayerNorm::

    h = attention sublayer(x)        (B, T, d)   self-attention, then the output dense + dropout
    a = LN_attn(h + x)               (B, T, d)
    f = FFN sublayer(a)              (B, T, d)   intermediate dense, GELU, output dense + dropout
    y = LN_ffn(f + a)                (B, T, d)

A sequential bottleneck adapter (AdapterHub's ``Adapter``) maps ``(input, residual)`` to
``up(act(down(input))) + residual``, with ``bottleneck = d // reduction_factor``. Where it sits
decides which method you have (AdapterHub ``adapters`` 1.x presets):

- **Houlsby** (``DoubleSeqBnConfig``, Houlsby et al. 2019, arXiv:1902.00751): two adapters,
  one after each sublayer, on the sublayer *output*, before residual + LayerNorm::

      a = LN_attn(adapter_attn(h, h) + x)       y = LN_ffn(adapter_ffn(f, f) + a)

- **Pfeiffer** (``SeqBnConfig``, Pfeiffer et al. 2021, arXiv:2005.00247): one adapter, after
  the FFN only. AdapterHub's flags ``original_ln_before=True``, ``residual_before_ln=True``,
  ``original_ln_after=True`` make it read the *normalised* sum and reuse the layer's LayerNorm::

      z = LN_ffn(f + a)                         y = LN_ffn(adapter_ffn(z, f) + a)

With the up-projection zero at initialisation (AdapterHub's ``init_weights="mam_adapter"``)
every adapter returns its residual, so both adapted layers start exactly equal to the base.
Houlsby's preset uses the swish non-linearity, Pfeiffer's ReLU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NON_LINEARITIES = ("relu", "swish")


class BertLikeLayer(nn.Module):
    """One post-LayerNorm encoder layer laid out like Hugging Face's ``BertLayer`` (given: do
    not edit). ``forward``: ``(B, T, d_model) -> (B, T, d_model)``; the two sublayers are
    methods so that an adapter can be placed between a sublayer and its residual + LayerNorm.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not a multiple of n_heads={n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)  # query, key, value projections
        self.attn_dense = nn.Linear(d_model, d_model)  # BertSelfOutput.dense
        self.attn_norm = nn.LayerNorm(d_model)  # BertSelfOutput.LayerNorm
        self.intermediate = nn.Linear(d_model, d_ff)  # BertIntermediate.dense
        self.ffn_out = nn.Linear(d_ff, d_model)  # BertOutput.dense
        self.ffn_norm = nn.LayerNorm(d_model)  # BertOutput.LayerNorm
        self.dropout = nn.Dropout(dropout)

    def attention_sublayer(self, x: torch.Tensor) -> torch.Tensor:
        """``h``: ``(B, T, d) -> (B, T, d)``, the attention output before residual + LayerNorm."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        context = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, d_head)
        return self.dropout(self.attn_dense(context.transpose(1, 2).reshape(b, t, d)))

    def ffn_sublayer(self, a: torch.Tensor) -> torch.Tensor:
        """``f``: ``(B, T, d) -> (B, T, d)``, the FFN output before residual + LayerNorm."""
        return self.dropout(self.ffn_out(F.gelu(self.intermediate(a))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn_norm(self.attention_sublayer(x) + x)
        return self.ffn_norm(self.ffn_sublayer(a) + a)


class SeqBnAdapter(nn.Module):
    """AdapterHub's sequential bottleneck adapter: ``(..., d), (..., d) -> (..., d)``.

    Attributes (the graders look for these names):
        bottleneck  ``d_model // reduction_factor``, at least 1 (AdapterHub's rule)
        down        ``nn.Linear(d_model, bottleneck)``, PyTorch's default initialisation
        act         ``nn.SiLU()`` for ``"swish"``, ``nn.ReLU()`` for ``"relu"``
        up          ``nn.Linear(bottleneck, d_model)``, weight AND bias zero at initialisation
    """

    def __init__(self, d_model: int, reduction_factor: int, non_linearity: str = "relu") -> None:
        super().__init__()
        for value, name in ((d_model, "d_model"), (reduction_factor, "reduction_factor")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if non_linearity not in NON_LINEARITIES:
            raise ValueError(f"non_linearity must be one of {NON_LINEARITIES}, got {non_linearity!r}")
        # BEGIN SOLUTION: bottleneck (floor, at least 1), down, act (SiLU for swish), up with zero weight and bias
        self.bottleneck = max(1, d_model // reduction_factor)  # AdapterHub: int(d // reduction_factor)
        self.down = nn.Linear(d_model, self.bottleneck)  # (b, d)
        self.act = nn.SiLU() if non_linearity == "swish" else nn.ReLU()
        self.up = nn.Linear(self.bottleneck, d_model)  # (d, b)
        nn.init.zeros_(self.up.weight)  # up = 0: the adapter starts as its residual
        nn.init.zeros_(self.up.bias)
        # END SOLUTION

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``up(act(down(x))) + residual``; both ``(..., d_model)``. 1 line."""
        # BEGIN SOLUTION: the bottleneck path on x, plus the residual
        return self.up(self.act(self.down(x))) + residual
        # END SOLUTION


def _width(layer: BertLikeLayer) -> int:
    """The width ``d`` of a ``BertLikeLayer`` (given)."""
    return int(layer.attn_norm.normalized_shape[0])


class HoulsbyLayer(nn.Module):
    """``layer`` frozen, with two swish adapters placed as ``DoubleSeqBnConfig`` places them.

    Attributes: ``layer`` (the wrapped ``BertLikeLayer``), ``attn_adapter`` and ``ffn_adapter``
    (two separate ``SeqBnAdapter(d_model, reduction_factor, "swish")``). Only the adapters train.
    ``forward``: ``(B, T, d) -> (B, T, d)``, the base layer's computation with each adapter on
    its sublayer's output, before that sublayer's residual + LayerNorm.
    """

    def __init__(self, layer: BertLikeLayer, reduction_factor: int = 16) -> None:
        super().__init__()
        self.layer = layer
        # BEGIN SOLUTION: freeze the layer; one adapter for the attention output, another for the FFN output
        d_model = _width(layer)  # the layer's width d
        self.layer.requires_grad_(False)
        self.attn_adapter = SeqBnAdapter(d_model, reduction_factor, "swish")
        self.ffn_adapter = SeqBnAdapter(d_model, reduction_factor, "swish")
        # END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, d) -> (B, T, d)``. Use ``layer.attention_sublayer``, ``layer.ffn_sublayer`` and
        the layer's two LayerNorms. About 5 lines."""
        # BEGIN SOLUTION: h = attention sublayer; a = LN(adapter(h, h) + x); f = FFN sublayer; LN(adapter(f, f) + a)
        layer = self.layer
        h = layer.attention_sublayer(x)  # (B, T, d)
        a = layer.attn_norm(self.attn_adapter(h, h) + x)  # the adapter reads h, before residual + LN
        f = layer.ffn_sublayer(a)  # (B, T, d)
        return layer.ffn_norm(self.ffn_adapter(f, f) + a)
        # END SOLUTION


class PfeifferLayer(nn.Module):
    """``layer`` frozen, with one ReLU adapter after the FFN, placed as ``SeqBnConfig`` places it.

    Attributes: ``layer`` and ``ffn_adapter`` (``SeqBnAdapter(d_model, reduction_factor,
    "relu")``); no adapter after the attention. ``forward``: ``(B, T, d) -> (B, T, d)``::

        z = LN_ffn(f + a)   y = LN_ffn(ffn_adapter(z, f) + a)
    """

    def __init__(self, layer: BertLikeLayer, reduction_factor: int = 16) -> None:
        super().__init__()
        self.layer = layer
        # BEGIN SOLUTION: freeze the layer; one ReLU adapter for the FFN output
        d_model = _width(layer)  # the layer's width d
        self.layer.requires_grad_(False)
        self.ffn_adapter = SeqBnAdapter(d_model, reduction_factor, "relu")
        # END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, d) -> (B, T, d)``. The attention half is the base layer's. About 5 lines."""
        # BEGIN SOLUTION: a as in the base; f = FFN sublayer; z = LN(f + a); then LN(adapter(z, f) + a)
        layer = self.layer
        a = layer.attn_norm(layer.attention_sublayer(x) + x)  # unchanged
        f = layer.ffn_sublayer(a)  # (B, T, d)
        z = layer.ffn_norm(f + a)  # original_ln_before: the adapter reads the normalised sum
        return layer.ffn_norm(self.ffn_adapter(z, f) + a)  # residual f, then the same LN again
        # END SOLUTION
