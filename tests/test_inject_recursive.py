"""Tests for peft_zoo.injection.inject.inject_lora_recursive: every Linear but the root, never an
adapter's own layers, never inside nn.MultiheadAttention; exclude by name, suffix or container.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from inject_helpers import BLOCK_LINEARS, make_block, make_mlp, param_ids, plain_linear_names
from torch import nn

from peft_zoo import (
    AdapterBlock,
    BottleneckAdapter,
    InjectionError,
    LoRALinear,
    inject_ia3,
    inject_lora,
    inject_lora_recursive,
)
from peft_zoo.models import TinyTransformer, TinyTransformerConfig
from peft_zoo.testing import assert_model_unchanged, fingerprint

# ------------------------------------------------------------------ inject_lora_recursive


def test_inject_lora_recursive_wraps_every_linear_but_not_the_root():
    torch.manual_seed(0)
    cfg = TinyTransformerConfig(vocab_size=16, max_len=8, d_model=16, n_heads=2, d_ff=32)
    model = TinyTransformer(cfg)
    reference = copy.deepcopy(model)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert len(linears) == 2 * 6 + 1

    out, params = inject_lora_recursive(model, rank=2)

    assert out is model and type(model) is TinyTransformer
    loras = {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    assert set(loras) == set(linears)
    for n, layer in loras.items():
        assert layer.base is linears[n]
        assert type(layer.base) is nn.Linear
    # the only plain Linears left are LoRA bases
    assert sorted(plain_linear_names(model)) == sorted(f"{n}.base" for n in linears)
    assert len(params) == 2 * len(linears) and len(set(param_ids(params))) == len(params)
    ids = torch.randint(0, 16, (2, 8))
    assert torch.equal(model(ids), reference(ids))


def test_inject_lora_recursive_refuses_a_bare_linear_root():
    lin = nn.Linear(4, 4)
    before = fingerprint(lin)
    with pytest.raises(InjectionError, match="root"):
        inject_lora_recursive(lin, rank=2)
    assert_model_unchanged(lin, before, what="bare Linear root")
    assert lin.weight.requires_grad


def test_inject_lora_recursive_after_partial_injection_wraps_only_plain_linears():
    model = make_mlp()
    inject_lora(model, ["encoder.0", "head"], rank=2)
    first_enc, first_head = model.encoder[0], model.head
    enc_A = first_enc.lora_A.detach().clone()

    _, params = inject_lora_recursive(model, rank=3)

    # the earlier LoRA layers are the same objects, not re-wrapped, their base not touched
    assert model.encoder[0] is first_enc and model.head is first_head
    assert type(first_enc.base) is nn.Linear and type(first_head.base) is nn.Linear
    assert torch.equal(first_enc.lora_A, enc_A)
    fc1, fc2 = model.encoder[2].branch.fc1, model.encoder[2].branch.fc2
    assert isinstance(fc1, LoRALinear) and isinstance(fc2, LoRALinear)
    assert fc1.rank == 3 and first_enc.rank == 2
    assert param_ids(params) == param_ids([fc1.lora_A, fc1.lora_B, fc2.lora_A, fc2.lora_B])
    for _, m in model.named_modules():
        if isinstance(m, LoRALinear):
            assert not isinstance(m.base, LoRALinear), "LoRALinear(LoRALinear) was built"
    assert not any(n.endswith("base.base") for n, _ in model.named_modules())


def test_inject_lora_recursive_again_raises_and_changes_nothing():
    model = make_mlp()
    inject_lora_recursive(model, rank=2)
    before = fingerprint(model)
    with pytest.raises(InjectionError, match=r"no nn\.Linear to wrap"):
        inject_lora_recursive(model, rank=2)
    assert_model_unchanged(model, before, what="second inject_lora_recursive")


def test_inject_lora_recursive_exclude_skips_the_head():
    model = make_mlp()
    head = model.head
    _, params = inject_lora_recursive(model, rank=2, exclude="head")
    assert model.head is head and type(head) is nn.Linear
    assert [n for n, m in model.named_modules() if isinstance(m, LoRALinear)] == [
        "encoder.0",
        "encoder.2.branch.fc1",
        "encoder.2.branch.fc2",
    ]
    assert len(params) == 6


def test_inject_lora_recursive_exclude_by_suffix_and_containing_module():
    model = make_block()
    inject_lora_recursive(model, rank=2, exclude=["ffn", "q"])
    wrapped = sorted(n for n, m in model.named_modules() if isinstance(m, LoRALinear))
    assert wrapped == ["attn.branch.k", "attn.branch.o", "attn.branch.v"]


def test_inject_lora_recursive_skips_bottleneck_adapter_linears():
    block = make_block()
    model = AdapterBlock(block, BottleneckAdapter(16, 4))
    adapter_down, adapter_up = model.adapter.down_proj, model.adapter.up_proj
    _, params = inject_lora_recursive(model, rank=2)
    assert model.adapter.down_proj is adapter_down and type(adapter_down) is nn.Linear
    assert model.adapter.up_proj is adapter_up and type(adapter_up) is nn.Linear
    wrapped = sorted(n for n, m in model.named_modules() if isinstance(m, LoRALinear))
    assert wrapped == sorted(f"sublayer.{n}" for n in BLOCK_LINEARS)
    assert len(params) == 2 * len(BLOCK_LINEARS)


def test_inject_lora_recursive_skips_multihead_attention_out_proj_with_a_warning():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
    reference = copy.deepcopy(layer)
    out_proj = layer.self_attn.out_proj
    with pytest.warns(UserWarning, match=re.escape("self_attn.out_proj")):
        _, params = inject_lora_recursive(layer, rank=2)
    assert layer.self_attn.out_proj is out_proj and not isinstance(out_proj, LoRALinear)
    assert isinstance(layer.linear1, LoRALinear) and isinstance(layer.linear2, LoRALinear)
    assert len(params) == 4
    x = torch.randn(2, 3, 8)
    layer.train()
    reference.train()
    assert torch.allclose(layer(x), reference(x), atol=1e-6)


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_transformer_encoder_layer_fused_inference_path_sees_the_adapter(method):
    """In eval mode under no_grad, nn.TransformerEncoderLayer takes a fused path that reads
    ``linear1.weight`` directly; the adapted layers must expose their effective weight there."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
    reference = copy.deepcopy(layer).eval()
    if method == "lora":
        with pytest.warns(UserWarning):
            _, params = inject_lora_recursive(layer, rank=2)
    else:
        _, params = inject_ia3(layer, ["linear1"], feedforward_names=["linear2"])
    with torch.no_grad():
        for p in params:
            p.add_(0.5 * torch.randn_like(p))
    x = torch.randn(2, 3, 8)
    layer.train()  # dropout=0: the train-mode path is the plain module-by-module one
    slow = layer(x).detach()
    layer.eval()
    with torch.no_grad():
        fast = layer(x)
        base = reference(x)
    assert not torch.allclose(slow, base, atol=1e-3), "the adapter should change the output"
    assert torch.allclose(fast, slow, atol=1e-5), "the fused eval path ignored (part of) the adapter"


def test_inject_lora_refuses_multihead_attention_out_proj_by_name():
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0)
    before = fingerprint(layer)
    with pytest.raises(InjectionError, match="MultiheadAttention"):
        inject_lora(layer, ["self_attn.out_proj"], rank=2)
    assert_model_unchanged(layer, before, what="out_proj by name")
