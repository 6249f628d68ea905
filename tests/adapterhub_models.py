"""Tiny random BERT, GPT-2 and LLaMA models (the main environment's transformers) for the
bottleneck adapter tests that need no AdapterHub."""

from __future__ import annotations

import torch
from torch import nn

ARCHS = ("bert", "gpt2", "llama")
HIDDEN, LAYERS = 32, 2


def tiny(arch: str, seed: int = 0) -> nn.Module:
    """A tiny random ``arch`` model in eval mode, dropout off."""
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model, LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    if arch == "bert":
        model: nn.Module = BertModel(
            BertConfig(
                hidden_size=HIDDEN,
                num_hidden_layers=LAYERS,
                num_attention_heads=4,
                intermediate_size=37,
                vocab_size=64,
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
            )
        )
    elif arch == "gpt2":
        model = GPT2Model(
            GPT2Config(
                n_embd=HIDDEN, n_layer=LAYERS, n_head=4, vocab_size=64, resid_pdrop=0.0, embd_pdrop=0.0
            )
        )
    else:
        model = LlamaModel(
            LlamaConfig(
                hidden_size=HIDDEN,
                intermediate_size=40,
                num_hidden_layers=LAYERS,
                num_attention_heads=4,
                num_key_value_heads=2,
                vocab_size=64,
            )
        )
    return model.eval()


def batch(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (2, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def hidden(model: nn.Module, inputs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The last hidden state, (B, L, d)."""
    return model(**(inputs or batch())).last_hidden_state
