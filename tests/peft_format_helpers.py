"""Shared by the PEFT-format tests (tests/test_peft_format*.py): small BERT, GPT-2 and LLaMA
models, trained-looking weights, output comparisons, and edited copies of adapter directories.

Import it after ``pytest.importorskip("peft")`` / ``("transformers")``: it needs both.
"""

from __future__ import annotations

import copy
import functools
import json
import shutil
from pathlib import Path

import peft
import pytest
import safetensors.torch
import torch
import transformers
from torch import nn

import peft_zoo as pz
from peft_zoo.interop import PEFT_PREFIX, PeftFormatError, load_peft, peft_dict_from_config
from peft_zoo.testing import assert_model_unchanged, fingerprint

ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-5  # float32; the observed differences are far below (table in test_peft_format.py)
transformers.utils.logging.set_verbosity_error()

# ----------------------------------------------------------------------------- small models


@functools.cache
def cached_base(arch: str) -> nn.Module:
    torch.manual_seed({"bert": 0, "gpt2": 1, "llama": 2}[arch])
    if arch == "bert":
        config = transformers.BertConfig(
            vocab_size=64,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=32,
            num_labels=3,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        return transformers.BertForSequenceClassification(config).eval()
    if arch == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0
        )
        config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0
        return transformers.GPT2LMHeadModel(config).eval()
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,  # k/v projections 16 -> 8: not square
        max_position_embeddings=32,
    )
    return transformers.LlamaForCausalLM(config).eval()


def base(arch: str) -> nn.Module:
    """A fresh copy of the same base model every time."""
    return copy.deepcopy(cached_base(arch))


IDS = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def logits(model: nn.Module) -> torch.Tensor:
    return model(input_ids=IDS).logits


@torch.no_grad()
def perturb(model: nn.Module, seed: int) -> nn.Module:
    """Move every trainable tensor (adapter weights, modules_to_save copies, trained biases) off
    its initial value, so the adapter is no no-op; then eval mode."""
    g = torch.Generator().manual_seed(seed)
    for _, p in sorted(model.named_parameters()):
        if p.requires_grad:
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


def n_layers(model: nn.Module) -> int:
    return sum(isinstance(m, pz.LoRALinear | pz.IA3Linear) for m in model.modules())


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def peft_config(config: pz.LoraConfig | pz.IA3Config, arch: str):
    data = peft_dict_from_config(config, model=cached_base(arch))
    return (peft.LoraConfig if isinstance(config, pz.LoraConfig) else peft.IA3Config)(**data)


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------- edited adapters


def edited(src: Path, dst: Path, *, config=None, tensors=None) -> Path:
    """A copy of the adapter at ``src`` with its config and/or tensor dict edited in place."""
    shutil.copytree(src, dst)
    if config is not None:
        data = json.loads((dst / "adapter_config.json").read_text())
        config(data)
        (dst / "adapter_config.json").write_text(json.dumps(data))
    if tensors is not None:
        state = safetensors.torch.load_file(dst / "adapter_model.safetensors")
        tensors(state)
        safetensors.torch.save_file(state, dst / "adapter_model.safetensors")
    return dst


def refused(path: Path, match: str, model: nn.Module | None = None) -> str:
    model = base("bert") if model is None else model
    before = fingerprint(model)
    with pytest.raises(PeftFormatError, match=match) as info:
        load_peft(model, path)
    assert_model_unchanged(model, before, what="a refused load_peft")
    return str(info.value)


Q1 = PEFT_PREFIX + "bert.encoder.layer.1.attention.self.query"


def both_ways(
    ours: nn.Module, theirs: nn.Module, arch: str, tmp_path: Path, peft_type: str, logits
) -> tuple[float, float]:
    """Max |logits difference| both ways through PEFT's files, each onto a fresh ``base(arch)``:
    our ``save_peft`` loaded by ``PeftModel.from_pretrained``, and PEFT's ``save_pretrained``
    loaded by ``load_peft``. Checks that our file says ``peft_type``."""
    ours.eval()
    theirs.eval()
    pz.save_peft(ours, tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "adapter_config.json").read_text())["peft_type"] == peft_type
    loaded_in_peft = peft.PeftModel.from_pretrained(base(arch), tmp_path / "ours").eval()
    to_peft = (logits(ours) - logits(loaded_in_peft)).abs().max().item()
    theirs.save_pretrained(tmp_path / "theirs")
    loaded_here, _ = load_peft(base(arch), tmp_path / "theirs")
    from_peft = (logits(loaded_here.eval()) - logits(theirs)).abs().max().item()
    return to_peft, from_peft
