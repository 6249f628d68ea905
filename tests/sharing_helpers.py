"""The small bidirectional transformer the sharing tests build (test_sharing.py, test_bidirectional.py)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from peft_zoo.lora import LoRALinear
from peft_zoo.models import BidirectionalTransformer, BidirectionalTransformerConfig


def config(**kw) -> BidirectionalTransformerConfig:
    base = dict(vocab_size=20, max_len=16, n_embd=16, n_head=2, n_layer=3, lora_rank=2, lora_alpha=4.0)
    return BidirectionalTransformerConfig(**{**base, **kw})


def build(seed: int = 0, dtype: torch.dtype = torch.float32, **kw) -> BidirectionalTransformer:
    torch.manual_seed(seed)
    return BidirectionalTransformer(config(**kw)).to(dtype)


def randomise_lora(model: nn.Module, seed: int = 1) -> None:
    """Give every LoRA B a nonzero value, so the per-layer adapters actually differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g, dtype=m.lora_B.dtype) * 0.1)


def single_thread() -> Iterator[None]:
    """Run with one intra-op thread (the body of each test module's autouse fixture): tiny
    tensors are faster so, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
