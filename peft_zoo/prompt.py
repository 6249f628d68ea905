"""Prompt tuning: a few learned "virtual token" embeddings in front of every input.

Lester, Al-Rfou & Constant, "The Power of Scale for Parameter-Efficient Prompt Tuning" (2021).
The model is frozen; the only trained tensor is ``P ∈ R^{n×d}`` (``n`` virtual tokens of the
model's embedding width ``d``). For input ids ``x`` (B, L) with word embeddings ``E``::

    h0 = concat(P expanded to (B, n, d), E[x] (B, L, d))       # (B, n + L, d)
    mask' = concat(ones (B, n), mask (B, L))                   # the virtual tokens are always seen
    labels' = concat(-100 (B, n), labels (B, L))               # causal LM: no loss on them

and the frozen model runs on ``h0`` (``inputs_embeds``) exactly as on ordinary embeddings.
Parameters: ``n · d`` (20 × 768 = 15,360 for BERT-base), independent of the depth.

Initialisation (Hugging Face PEFT's ``prompt_tuning_init``): ``RANDOM`` draws ``N(0, 1)``
(``nn.Embedding``'s default); ``TEXT`` copies the embeddings of the tokens of a text, cut or
repeated to ``n`` (:func:`fit_token_ids`); ``SAMPLE_VOCAB`` copies ``n`` random vocabulary rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .core.base import AdapterModule
from .core.checks import check_positive_int

__all__ = [
    "IGNORE_INDEX",
    "PromptEmbedding",
    "extend_attention_mask",
    "extend_labels",
    "fit_token_ids",
    "prepend_prompt",
]

IGNORE_INDEX = -100  # the label cross-entropy skips (PyTorch's and transformers' default)


def fit_token_ids(token_ids: Sequence[int], total: int) -> list[int]:
    """``token_ids`` cut to ``total`` or repeated until ``total`` (PEFT's TEXT rule):
    ``fit_token_ids([5, 6, 7], 5) == [5, 6, 7, 5, 6]``. Raises for an empty list."""
    check_positive_int(total, "total")
    ids = list(token_ids)
    if not ids:
        raise ValueError("token_ids is empty: a TEXT initialisation needs at least one token id")
    if not all(type(i) is int for i in ids):  # bool and float refused
        raise TypeError(f"token ids must be ints, got {ids[:6]}")
    return (ids * math.ceil(total / len(ids)))[:total]


class PromptEmbedding(AdapterModule):
    """The ``n`` virtual token embeddings: Parameter ``weight`` of shape ``(n, d)``.

    ``forward(batch_size)`` returns them expanded to ``(batch_size, n, d)`` (a view: every row
    of the batch shares one set, and the gradient of ``weight`` sums over the batch).
    ``init`` is an optional ``(n, d)`` tensor to start from (copied, as float32); without it
    the rows are drawn from ``N(0, 1)``.
    """

    weight: nn.Parameter  # (n, d)

    def __init__(self, num_virtual_tokens: int, token_dim: int, *, init: torch.Tensor | None = None) -> None:
        super().__init__()
        n = check_positive_int(num_virtual_tokens, "num_virtual_tokens")
        d = check_positive_int(token_dim, "token_dim")
        if init is None:
            start = torch.randn(n, d)  # nn.Embedding's default init
        else:
            if not isinstance(init, torch.Tensor):
                raise TypeError(f"init must be a tensor of shape ({n}, {d}), got {type(init).__name__}")
            if tuple(init.shape) != (n, d):
                raise ValueError(f"init has shape {tuple(init.shape)}, expected ({n}, {d})")
            start = init.detach().to(torch.float32, copy=True)
        self.weight = nn.Parameter(start)

    @property
    def num_virtual_tokens(self) -> int:
        return int(self.weight.shape[0])

    @property
    def token_dim(self) -> int:
        return int(self.weight.shape[1])

    @classmethod
    def from_token_ids(
        cls, word_embeddings: nn.Embedding, token_ids: Sequence[int], num_virtual_tokens: int
    ) -> PromptEmbedding:
        """Start from the embeddings of ``token_ids`` (cut or repeated to ``num_virtual_tokens``):
        PEFT's ``TEXT`` (the ids of a tokenised text) and ``SAMPLE_VOCAB`` (random ids)."""
        ids = fit_token_ids(token_ids, num_virtual_tokens)
        vocab = word_embeddings.num_embeddings
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise ValueError(f"token ids {bad[:6]} are outside the vocabulary [0, {vocab})")
        weight = word_embeddings.weight
        rows = weight.detach()[torch.tensor(ids, dtype=torch.long, device=weight.device)]  # (n, d)
        return cls(num_virtual_tokens, word_embeddings.embedding_dim, init=rows)

    def forward(self, batch_size: int) -> torch.Tensor:
        """``(batch_size, n, d)``: the same virtual tokens for every row."""
        return self.weight.unsqueeze(0).expand(batch_size, -1, -1)

    def adapter_config(self) -> dict[str, object]:
        return {"method": "prompt_tuning", "num_virtual_tokens": self.num_virtual_tokens}

    def extra_repr(self) -> str:
        return f"num_virtual_tokens={self.num_virtual_tokens}, token_dim={self.token_dim}"


def prepend_prompt(prompt: torch.Tensor, inputs_embeds: torch.Tensor) -> torch.Tensor:
    """``(B, n, d)`` and ``(B, L, d)`` -> ``(B, n + L, d)``, the prompt first, in the inputs' dtype."""
    return torch.cat((prompt.to(inputs_embeds.dtype), inputs_embeds), dim=1)


def extend_attention_mask(mask: torch.Tensor, n: int) -> torch.Tensor:
    """``(B, L)`` -> ``(B, n + L)``: ones (attend) for the ``n`` virtual tokens, in front."""
    return torch.cat((mask.new_ones(mask.shape[0], n), mask), dim=1)


def extend_labels(labels: torch.Tensor, n: int) -> torch.Tensor:
    """``(B, L)`` -> ``(B, n + L)``: :data:`IGNORE_INDEX` for the ``n`` virtual tokens, in front."""
    return torch.cat((labels.new_full((labels.shape[0], n), IGNORE_INDEX), labels), dim=1)
