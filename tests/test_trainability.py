"""Tests for the trainability helpers of peft_zoo.injection.surgery: mark_only_adapters_trainable
(bias modes), count_parameters, print_trainable_parameters, trainable_parameters.
"""

from __future__ import annotations

import pytest
import torch
from inject_helpers import make_block, make_mlp, param_ids
from torch import nn

from peft_zoo import (
    AdapterBlock,
    BottleneckAdapter,
    count_parameters,
    inject_lora,
    mark_only_adapters_trainable,
    print_trainable_parameters,
    trainable_parameters,
)
from peft_zoo.testing import assert_model_unchanged, fingerprint, requires_grad_map

# ----------------------------------------------------------------------------- trainability


def _mixed_model() -> AdapterBlock:
    block = make_block()
    inject_lora(block, ["attn.branch.q", "ffn.branch.fc1"], rank=2)
    model = AdapterBlock(block, BottleneckAdapter(16, 4))
    model.requires_grad_(True)  # everything trainable: the helper must freeze what it should
    return model


ADAPTER_NAMES = {
    "sublayer.attn.branch.q.lora_A",
    "sublayer.attn.branch.q.lora_B",
    "sublayer.ffn.branch.fc1.lora_A",
    "sublayer.ffn.branch.fc1.lora_B",
    "adapter.down_proj.weight",
    "adapter.down_proj.bias",
    "adapter.up_proj.weight",
    "adapter.up_proj.bias",
}
ALL_BIASES = {
    "sublayer.attn.branch.norm.bias",
    "sublayer.attn.branch.q.base.bias",
    "sublayer.attn.branch.k.bias",
    "sublayer.attn.branch.v.bias",
    "sublayer.attn.branch.o.bias",
    "sublayer.ffn.branch.fc1.base.bias",
    "sublayer.ffn.branch.fc2.bias",
    "sublayer.ffn.branch.norm.bias",
    "adapter.down_proj.bias",
    "adapter.up_proj.bias",
}
ADAPTED_LAYER_BIASES = {"sublayer.attn.branch.q.base.bias", "sublayer.ffn.branch.fc1.base.bias"}


@pytest.mark.parametrize(
    ("bias", "expected"),
    [
        ("none", ADAPTER_NAMES),
        ("all", ADAPTER_NAMES | ALL_BIASES),
        ("adapter_only", ADAPTER_NAMES | ADAPTED_LAYER_BIASES),
        ("lora_only", ADAPTER_NAMES | ADAPTED_LAYER_BIASES),
    ],
)
def test_mark_only_adapters_trainable(bias, expected):
    model = _mixed_model()
    returned = mark_only_adapters_trainable(model, bias=bias)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == expected
    named = dict(model.named_parameters())
    assert set(param_ids(returned)) == {id(named[n]) for n in expected}
    assert len(returned) == len(expected)


def test_mark_only_adapters_trainable_invalid_bias_raises_and_changes_nothing():
    model = _mixed_model()
    before = fingerprint(model)
    with pytest.raises(ValueError, match="bias must be one of"):
        mark_only_adapters_trainable(model, bias="some")
    assert_model_unchanged(model, before, what="invalid bias mode")


def test_mark_only_adapters_trainable_without_adapters_raises_and_changes_nothing():
    model = make_mlp()
    before = fingerprint(model)
    with pytest.raises(ValueError, match="no adapter"):
        mark_only_adapters_trainable(model)
    assert_model_unchanged(model, before, what="no adapters")
    assert all(requires_grad_map(model).values())


def test_print_trainable_parameters_exact_line(capsys):
    model = make_mlp()  # TinyMLP(8, 16, 4)
    inject_lora(model, ["encoder.0", "head"], rank=2)
    mark_only_adapters_trainable(model)  # fc1/fc2 are not injected: freeze them too
    # base: 8*16+16 + 16*32+32 + 32*16+16 + 16*4+4 = 1284; LoRA: 2*(8+16) + 2*(16+4) = 88
    assert print_trainable_parameters(model) == (88, 1372)
    out = capsys.readouterr().out
    assert out == "trainable params: 88 || all params: 1,372 || trainable%: 6.4140\n"


def test_print_trainable_parameters_thousands_separators(capsys):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1000, 1000), nn.ReLU())
    inject_lora(model, ["0"], rank=8)
    # 1000*1000 + 1000 frozen; 8 * (1000 + 1000) = 16,000 trainable
    print_trainable_parameters(model)
    out = capsys.readouterr().out
    assert out == "trainable params: 16,000 || all params: 1,017,000 || trainable%: 1.5733\n"


def test_print_trainable_parameters_empty_model(capsys):
    assert print_trainable_parameters(nn.Sequential()) == (0, 0)
    assert capsys.readouterr().out == "trainable params: 0 || all params: 0 || trainable%: 0.0000\n"


class TiedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 4)
        self.out = nn.Linear(4, 10, bias=False)
        self.out.weight = self.emb.weight  # tied

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.proj(self.emb(ids)))


def test_tied_parameters_are_counted_once(capsys):
    torch.manual_seed(0)
    model = TiedNet()
    assert count_parameters(model) == (60, 60)  # 40 shared + 4*4 + 4
    inject_lora(model, "proj", rank=1)
    # frozen: the tied 40 (once) and proj.base (20); trainable: LoRA 1*(4+4) = 8
    assert count_parameters(model) == (8, 68)
    model.emb.weight.requires_grad_(True)  # train the tied embedding too: counted once
    assert count_parameters(model) == (48, 68)
    params = trainable_parameters(model)
    assert len(params) == len(set(param_ids(params))) == 3
    assert sum(p.numel() for p in params) == 48
    print_trainable_parameters(model)
    assert capsys.readouterr().out == ("trainable params: 48 || all params: 68 || trainable%: 70.5882\n")


def test_trainable_parameters_match_requires_grad():
    model = make_mlp()
    _, params = inject_lora(model, ["head"], rank=2)
    model.encoder.requires_grad_(False)
    assert param_ids(trainable_parameters(model)) == param_ids(params)
    assert count_parameters(model) == (2 * (16 + 4), 1284 + 40)
