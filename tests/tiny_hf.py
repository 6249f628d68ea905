"""Tiny random ``transformers`` models (float32, eval mode, dropout off) shared by the tests
that compare peft_zoo with PEFT on BERT, GPT-2 and LLaMA. Built from configs: no download.

Each distinct geometry is built once (seeded, so every test sees the same weights) and every
call returns a fresh deep copy, which a test may adapt freely.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

ARCHS = ("bert", "gpt2", "llama")


@functools.cache
def _pristine(arch: str, hidden: int, intermediate: int, vocab: int, gpt2_head: str) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    small = {"vocab_size": vocab, "num_hidden_layers": 2, "max_position_embeddings": 16}
    if arch == "bert":  # query/key/value hidden -> hidden, intermediate.dense hidden -> intermediate
        bert = transformers.BertConfig(
            hidden_size=hidden,
            num_attention_heads=2,
            intermediate_size=intermediate,
            num_labels=3,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            **small,
        )
        return transformers.BertForSequenceClassification(bert).eval()
    if arch == "llama":  # grouped-query attention: k_proj / v_proj hidden -> hidden / 2
        llama = transformers.LlamaConfig(
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_attention_heads=4,
            num_key_value_heads=2,
            **small,
        )
        return transformers.LlamaForCausalLM(llama).eval()
    if arch != "gpt2":
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    gpt2 = transformers.GPT2Config(  # every projection a Conv1D (weights stored (in, out))
        vocab_size=vocab,
        n_embd=hidden,
        n_layer=2,
        n_head=2,
        n_positions=16,
        num_labels=3,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    gpt2.resid_pdrop = gpt2.embd_pdrop = gpt2.attn_pdrop = 0.0
    cls = transformers.GPT2LMHeadModel if gpt2_head == "lm" else transformers.GPT2ForSequenceClassification
    return cls(gpt2).eval()


def tiny_hf(
    arch: str, *, hidden: int = 16, intermediate: int = 24, vocab: int = 32, gpt2_head: str = "lm"
) -> nn.Module:
    """A fresh copy of a tiny random model: "bert" (sequence classification, a ``classifier``
    head with 3 labels), "llama" (causal LM) or "gpt2" (causal LM; ``gpt2_head="seqcls"``: a
    ``score`` head, its only ``nn.Linear``)."""
    return copy.deepcopy(_pristine(arch, hidden, intermediate, vocab, gpt2_head))
