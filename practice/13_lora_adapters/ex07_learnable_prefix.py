# Challenge 07 · LearnablePrefix: trainable vectors prepended to the sequence. Replace each TODO(ex07) with your code, then run:
#     peft-zoo check 7        (or: pytest practice/13_lora_adapters/test_ex07_learnable_prefix.py)
# Stuck? `peft-zoo hint 7`. Start over: `peft-zoo reset 7` (your file is backed up).
"""Prefix tuning (Li & Liang, 2021, arXiv:2101.00190): keep the model frozen and learn a
few vectors that are placed *in front of* every sequence.

    P: (prefix_len, d)                       one trainable matrix, shared by the whole batch
    X: (B, L, d)  ->  [P; X]: (B, P + L, d)  every row gets the same P, then its own tokens

Every real token can now attend to ``prefix_len`` extra positions whose content is learned:
``prefix_len · d`` parameters steer the frozen model. (Li & Liang prepend such vectors to
the keys and values of every layer; prompt tuning, Lester et al. 2021, prepends them to the
input embeddings only, which is what this module does to any sequence of hidden states.)

Each row holds its own *copy* of P, and the gradient that reaches P is the sum of the
gradients of all rows' prefix positions: ``dL/dP = sum_b dL/dout[b, :prefix_len]``.
"""

from __future__ import annotations

import torch
from torch import nn


class LearnablePrefix(nn.Module):
    """Prepend a trainable ``(prefix_len, d_model)`` prefix to every sequence of a batch.

    Attribute to create: ``prefix``, an ``nn.Parameter`` of shape ``(prefix_len, d_model)``
    drawn from N(0, 0.02²) (``torch.randn(...) * 0.02``); it is the module's only parameter.
    ``forward(x)``: ``(B, L, d_model) -> (B, prefix_len + L, d_model)``, the prefix first,
    then ``x`` unchanged. About 4 lines.
    """

    def __init__(self, prefix_len: int, d_model: int) -> None:
        super().__init__()
        # TODO(ex07): self.prefix, a (prefix_len, d_model) Parameter drawn from N(0, 0.02^2)
        raise NotImplementedError("ex07 (learnable_prefix): LearnablePrefix.__init__ is not implemented yet")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, d) -> (B, P + L, d)``: the prefix, then the tokens. 2 lines."""
        # TODO(ex07): expand the prefix over the batch and concatenate it before x
        raise NotImplementedError("ex07 (learnable_prefix): LearnablePrefix.forward is not implemented yet")
