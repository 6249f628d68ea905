"""A small ``transformers`` BERT and helpers shared by test_targets.py and test_targets_peft.py."""

from __future__ import annotations

from typing import Any

import pytest
from torch import nn


def bert_config() -> Any:
    """A two-layer BERT config small enough to build in milliseconds (skips without transformers)."""
    transformers = pytest.importorskip("transformers")
    return transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=64,
        max_position_embeddings=32,
    )


def make_bert() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    return transformers.BertModel(bert_config())


def linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
