"""Shared by the adapter-checkpoint tests (tests/test_checkpoint*.py): small models with
trained-looking adapters, and a refused load that must leave the model exactly as it was."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from peft_zoo import (
    AdapterBlock,
    BottleneckAdapter,
    CheckpointError,
    adapter_named_parameters,
    adapter_state_dict,
    inject_ia3,
    inject_lora,
    load_adapter,
)
from peft_zoo.interop import checkpoint as ckpt
from peft_zoo.models import TinyMLP, TinyTransformerBlock
from peft_zoo.testing import assert_model_unchanged, fingerprint

MLP_TARGETS = ["encoder.0", "encoder.2.branch.fc1", "head"]


def base_mlp(seed: int = 0) -> TinyMLP:
    torch.manual_seed(seed)
    return TinyMLP()


def base_block(seed: int = 0) -> TinyTransformerBlock:
    torch.manual_seed(seed)
    return TinyTransformerBlock(d_model=16, n_heads=2, d_ff=32)


def perturb_adapters(model: nn.Module, seed: int = 1) -> None:
    """Set every adapter tensor to random values (as if trained)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in adapter_named_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))


def lora_pair(rank: int = 2, alpha: float | None = None, **kw) -> tuple[TinyMLP, TinyMLP]:
    """A trained LoRA model and a fresh copy of the same base with the same (untrained) LoRA."""
    base = base_mlp()
    fresh = copy.deepcopy(base)
    inject_lora(base, MLP_TARGETS, rank, alpha, **kw)
    perturb_adapters(base)
    inject_lora(fresh, MLP_TARGETS, rank, alpha, **kw)
    return base, fresh


def mixed_adapters(base: TinyTransformerBlock) -> AdapterBlock:
    inject_lora(base, ["attn.branch.q", "attn.branch.v"], rank=2, alpha=4.0)
    inject_ia3(base, ["attn.branch.k"], feedforward_names=["ffn.branch.fc2"])
    return AdapterBlock(base, BottleneckAdapter(16, 4))


def assert_same_adapters(a: nn.Module, b: nn.Module) -> None:
    sa, sb = adapter_state_dict(a), adapter_state_dict(b)
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def rewrite_checkpoint(path: Path, state: dict[str, torch.Tensor], config: dict | str) -> None:
    """Write a safetensors file with the given tensors, peft_zoo config metadata and a
    matching digest (as a tool that edits a checkpoint on purpose would)."""
    text = config if isinstance(config, str) else json.dumps(config)
    state = {k: v.contiguous() for k, v in state.items()}
    metadata = {ckpt.METADATA_KEY: text, ckpt.DIGEST_KEY: ckpt.checkpoint_digest(state, text)}
    safetensors.torch.save_file(state, str(path), metadata=metadata)


def refused_load(model: nn.Module, path, *fragments: str, **kwargs) -> str:
    before = fingerprint(model)
    with pytest.raises(CheckpointError) as info:
        load_adapter(model, path, **kwargs)
    msg = str(info.value)
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    assert_model_unchanged(model, before, what="refused load")
    return msg
