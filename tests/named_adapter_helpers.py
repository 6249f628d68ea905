"""Shared by the named-adapter tests (tests/test_named_adapters*.py): one BERT / GPT-2 / LLaMA
model with two named LoRA adapters built by peft_zoo and the same two built by Hugging Face
PEFT, holding identical random weights.

Import it after ``pytest.importorskip("peft")``: it needs peft and transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

import peft
import torch
from peft_format_helpers import base, peft_config
from torch import nn

import peft_zoo as pz
from peft_zoo.serving.named import add_adapter, named_adapter_layers

# Two adapters per architecture with different targets, ranks, alphas and scalings: "default"
# (adapt_model, PEFT's get_peft_model) and "b" (add_adapter on both sides).
CONFIGS: dict[str, tuple[pz.LoraConfig, pz.LoraConfig]] = {
    "bert": (
        pz.LoraConfig(rank=2, target_modules=["query", "value"]),
        pz.LoraConfig(
            rank=4, alpha=8.0, rslora=True, target_modules=["query", "dense"], rank_pattern={"dense": 3}
        ),
    ),
    "gpt2": (  # Conv1D targets: fan_in_fan_out
        pz.LoraConfig(rank=2, target_modules=["c_attn"]),
        pz.LoraConfig(rank=3, alpha=6.0, target_modules=["c_attn", "c_fc", "c_proj"]),
    ),
    "llama": (  # grouped-query attention: k/v projections 16 -> 8
        pz.LoraConfig(rank=2, target_modules=["q_proj", "v_proj"]),
        pz.LoraConfig(rank=4, alpha=2.0, rslora=True, target_modules=["k_proj", "down_proj", "q_proj"]),
    ),
}
ARCHS = sorted(CONFIGS)


@dataclass
class Pair:
    ours: nn.Module
    theirs: peft.PeftModel
    arch: str


def inner(theirs: peft.PeftModel) -> nn.Module:
    """PEFT's copy of the transformers model (the names peft_zoo's model has)."""
    return theirs.base_model.model


@torch.no_grad()
def same_random_weights(ours: nn.Module, theirs: peft.PeftModel, seed: int) -> None:
    """Every adapter's A and B drawn once and written into both models (B nonzero)."""
    g = torch.Generator().manual_seed(seed)
    for path, layer in named_adapter_layers(ours).items():
        target = inner(theirs).get_submodule(path)
        for name in layer.adapter_names:
            a, b = layer.lora_A[name], layer.lora_B[name]
            a.copy_(0.3 * torch.randn(a.shape, generator=g))
            b.copy_(0.3 * torch.randn(b.shape, generator=g))
            target.lora_A[name].weight.copy_(a)
            target.lora_B[name].weight.copy_(b)


def build_pair(arch: str, seed: int = 0, configs: tuple[pz.LoraConfig, pz.LoraConfig] | None = None) -> Pair:
    first, second = CONFIGS[arch] if configs is None else configs
    ours, _ = pz.adapt_model(base(arch), first)
    add_adapter(ours, "b", second)
    theirs = peft.get_peft_model(base(arch), peft_config(first, arch))
    theirs.add_adapter("b", peft_config(second, arch))
    same_random_weights(ours, theirs, seed)
    return Pair(ours.eval(), theirs.eval(), arch)


def ids(batch: int, tokens: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 64, (batch, tokens), generator=torch.Generator().manual_seed(seed))


def trainable_names(model: nn.Module, peft_side: bool) -> set[str]:
    """``<module path>.lora_A.<adapter>`` for each trainable adapter tensor, in either library."""
    out = set()
    for n, p in model.named_parameters():
        if p.requires_grad:
            n = n.removeprefix("base_model.model.") if peft_side else n
            out.add(n.removesuffix(".weight"))
    return out


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` token ids -> the model's logits, without autograd."""
    with torch.no_grad():
        return model(input_ids=x).logits


def diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max |a - b| as a float."""
    return (a - b).abs().max().item()
