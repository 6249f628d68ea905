"""Shared pieces of tests/test_vera_oft_models.py: tiny BERT / LLaMA / GPT-2 models, one
copy adapted by peft_zoo and one by PEFT, and the comparison of the two (logits, the gradient
of every trainable tensor, merge_and_unload), returning the largest |difference| of each."""

from __future__ import annotations

import re
import warnings
from typing import Any

import peft
import torch
import transformers
from tiny_hf import tiny_hf
from torch import nn

import peft_zoo as pz
from peft_zoo.injection.unload import merge_and_unload
from peft_zoo.injection.vera_config import VeraConfig

transformers.utils.logging.set_verbosity_error()
PEFT_PREFIX = "base_model.model."
ADAPTER_TENSORS = ("vera_lambda_b", "vera_lambda_d", "oft_R")


def base_model(arch: str) -> nn.Module:
    return tiny_hf(arch)


INPUTS = {"input_ids": torch.tensor([[1, 5, 9, 3, 7], [2, 4, 6, 8, 10]])}


def peft_name(name: str) -> str:
    """A PEFT parameter name as peft_zoo names the same tensor."""
    name = name.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".base.")
    name = name.replace(".modules_to_save.default.", ".trained_module.")
    return re.sub(r"\.default(\.weight)?$", "", name)


def trainable(model: nn.Module, rename: Any = None) -> dict[str, Any]:
    return {(rename(n) if rename else n): p for n, p in model.named_parameters() if p.requires_grad}


def adapt_both(arch: str, ours_config: Any, theirs_config: Any) -> tuple[Any, Any]:
    ours, _ = pz.adapt_model(base_model(arch), ours_config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT's "setting fan_in_fan_out to True" for Conv1D
        theirs = peft.get_peft_model(base_model(arch), theirs_config)
    ours.eval(), theirs.eval()
    return ours, theirs


def compare(ours: Any, theirs: Any, seed: int) -> dict[str, float]:
    """Same random adapter tensors in both; max |diff| of logits, every trainable tensor's
    gradient, and of merged logits and weights. Checks the trainable sets and counts too."""
    mine, peft_params = trainable(ours), trainable(theirs, peft_name)
    assert sorted(mine) == sorted(peft_params)
    assert pz.count_parameters(ours)[0] == theirs.get_nb_trainable_parameters()[0]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in mine.items():
            if name.rsplit(".", 1)[-1] in ADAPTER_TENSORS:
                value = 0.1 * torch.randn(p.shape, generator=g) + 0.05  # non-zero, no saturation
                p.copy_(value)
                peft_params[name].copy_(value.reshape(peft_params[name].shape))
    diffs: dict[str, float] = {}
    out, expected = ours(**INPUTS).logits, theirs(**INPUTS).logits
    diffs["logits"] = (out - expected).abs().max().item()
    weights = torch.randn(out.shape, generator=g)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    grads = [(p.grad - peft_params[n].grad.reshape(p.shape)).abs().max().item() for n, p in mine.items()]
    diffs["grads"] = max(grads)
    assert all(p.grad.abs().sum() > 0 for n, p in mine.items() if n.rsplit(".", 1)[-1] in ADAPTER_TENSORS)
    # COFT writes its projected oft_R back during the forward pass: the same values in both
    diffs["adapter_tensors"] = max(
        (p - peft_params[n].reshape(p.shape)).abs().max().item() for n, p in mine.items()
    )
    merged_ours, merged_theirs = merge_and_unload(ours), theirs.merge_and_unload()
    assert not any(isinstance(m, pz.AdapterModule) for m in merged_ours.modules())
    with torch.no_grad():
        merged_out = merged_ours(**INPUTS).logits
        diffs["merged"] = (merged_out - merged_theirs(**INPUTS).logits).abs().max().item()
        diffs["merged_vs_unmerged"] = (merged_out - out).abs().max().item()
    state, peft_state = merged_ours.state_dict(), merged_theirs.state_dict()
    assert sorted(state) == sorted(peft_state)
    diffs["merged_weights"] = max((state[k] - peft_state[k]).abs().max().item() for k in state)
    for what, diff in diffs.items():
        assert diff <= 1e-6, (what, diffs)  # observed <= 6e-8: float32 rounding of the Cayley solve
    return diffs


VERA_TARGETS = {
    "bert": ["query", "dense"],  # 16->16, 16->24, 24->16: one covering pair, sliced per layer
    "llama": ["q_proj", "k_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_fc", "c_proj"],  # Conv1D (fan_in_fan_out), 16->48, 16->64, 64->16
}
OFT_TARGETS = {
    "bert": ["query", "value", "dense"],  # in_features 16 and 24
    "llama": ["q_proj", "v_proj", "down_proj"],
}


def vera_pair(arch: str, **fields: Any) -> tuple[Any, Any]:
    fields = {"target_modules": VERA_TARGETS[arch], "r": 6, **fields}
    return adapt_both(arch, VeraConfig(**fields), peft.VeraConfig(**fields))


def peft_vera_buffers(theirs: Any) -> list[torch.Tensor]:
    """Every distinct vera_A / vera_B tensor PEFT's layers hold (the shared pair)."""
    found: dict[int, torch.Tensor] = {}
    for module in theirs.modules():
        if isinstance(module, peft.tuners.vera.VeraLayer):
            for t in (module.vera_A["default"], module.vera_B["default"]):
                found[id(t)] = t
    return list(found.values())


def vera_projections(ours: Any) -> pz.VeraProjections:
    shared = {id(m.projections): m.projections for m in ours.modules() if isinstance(m, pz.VeRALinear)}
    assert len(shared) == 1, "every VeRALinear shares one VeraProjections"
    return next(iter(shared.values()))


class unchanged:
    """Context manager: the model's modules, tensors and requires_grad flags are the same after."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def snapshot(self) -> tuple[list[Any], dict[str, torch.Tensor], list[bool]]:
        kinds = [(n, type(m)) for n, m in self.model.named_modules()]
        state = {k: v.clone() for k, v in self.model.state_dict().items()}
        return kinds, state, [p.requires_grad for p in self.model.parameters()]

    def __enter__(self) -> None:
        self.before = self.snapshot()

    def __exit__(self, *exc: object) -> None:
        kinds, state, flags = self.snapshot()
        assert kinds == self.before[0] and flags == self.before[2]
        assert sorted(state) == sorted(self.before[1])
        assert all(torch.equal(state[k], self.before[1][k]) for k in state)
