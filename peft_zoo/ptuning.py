"""P-tuning: virtual tokens produced by a small trained encoder instead of stored directly.

Liu et al., "GPT Understands, Too" (2021). Prompt tuning (:mod:`peft_zoo.prompt`) trains the
``(n, d)`` virtual token embeddings ``P`` themselves; P-tuning trains ``E ∈ R^{n×d}`` and a
reparameterisation ``f`` and prepends ``P = f(E)``, which trains more stably. As Hugging Face
PEFT's ``PromptEncoder`` builds ``f`` (hidden width ``h``, ``encoder_hidden_size``)::

    MLP:   P = W3 relu(W2 relu(W1 E + b1) + b2) + b3          W1 (h, d), W2 (h, h), W3 (d, h)
    LSTM:  H = BiLSTM(E) (n, 2h), L layers;  P = W2 relu(W1 H + b1) + b2   W1 (2h, 2h), W2 (d, 2h)

After training only ``P`` matters: PEFT saves ``P`` (``prompt_embeddings``, ``(n, d)``) and
discards ``E`` and ``f``, so a loaded P-tuning adapter is a prompt-tuning prompt.
Parameters while training (MLP): ``n d + (d h + h) + (h h + h) + (h d + d)``.
"""

from __future__ import annotations

import torch
from torch import nn

from .core.base import AdapterModule
from .core.checks import check_positive_int, check_probability

__all__ = ["ENCODER_TYPES", "PromptEncoder"]

ENCODER_TYPES = ("MLP", "LSTM")


class PromptEncoder(AdapterModule):
    """``f(E)``: ``embedding`` (``nn.Embedding`` ``(n, d)``) through ``mlp_head`` (MLP) or
    ``lstm_head`` then ``mlp_head`` (LSTM); the names and shapes are PEFT's, so a PEFT
    ``PromptEncoder``'s ``state_dict`` loads here as it is.

    ``forward(batch_size)`` -> ``(batch_size, n, d)``: the encoder runs once and the result is
    expanded over the batch. ``prompt()`` -> ``(n, d)``, the ``P`` a PEFT file stores.
    """

    def __init__(
        self,
        num_virtual_tokens: int,
        token_dim: int,
        *,
        encoder_type: str = "MLP",
        hidden_size: int | None = None,
        num_layers: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        n = check_positive_int(num_virtual_tokens, "num_virtual_tokens")
        d = check_positive_int(token_dim, "token_dim")
        h = d if hidden_size is None else check_positive_int(hidden_size, "encoder_hidden_size")
        layers = check_positive_int(num_layers, "encoder_num_layers")
        p = check_probability(dropout, "encoder_dropout")
        if encoder_type not in ENCODER_TYPES:
            raise ValueError(
                f"encoder_reparameterization_type must be one of {ENCODER_TYPES}, got {encoder_type!r}"
            )
        self.encoder_type = encoder_type
        self.embedding = nn.Embedding(n, d)  # E (n, d)
        self.lstm_head: nn.LSTM | None = None
        if encoder_type == "LSTM":
            self.lstm_head = nn.LSTM(d, h, num_layers=layers, dropout=p, bidirectional=True, batch_first=True)
            self.mlp_head = nn.Sequential(nn.Linear(2 * h, 2 * h), nn.ReLU(), nn.Linear(2 * h, d))
        else:  # PEFT's MLP is always three layers; encoder_num_layers only sizes the LSTM
            self.mlp_head = nn.Sequential(
                nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, d)
            )

    @property
    def num_virtual_tokens(self) -> int:
        return int(self.embedding.num_embeddings)

    @property
    def token_dim(self) -> int:
        return int(self.embedding.embedding_dim)

    def prompt(self) -> torch.Tensor:
        """``P = f(E)``, shape ``(n, d)``."""
        e = self.embedding.weight.unsqueeze(0)  # (1, n, d)
        if self.lstm_head is not None:
            e = self.lstm_head(e)[0]  # (1, n, 2h)
        out: torch.Tensor = self.mlp_head(e)  # (1, n, d)
        return out[0]

    def forward(self, batch_size: int) -> torch.Tensor:
        """``(batch_size, n, d)``: the same ``P`` for every row."""
        return self.prompt().unsqueeze(0).expand(batch_size, -1, -1)

    def adapter_config(self) -> dict[str, object]:
        return {
            "method": "p_tuning",
            "num_virtual_tokens": self.num_virtual_tokens,
            "encoder": self.encoder_type,
        }
