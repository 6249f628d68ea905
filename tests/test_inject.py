"""Tests for peft_zoo.injection.inject: inject_lora, inject_ia3 and build_lora_adapter_model.

Every failure path checks two things: the error names the problem, and the model is
exactly as it was (tensors, module objects and types, requires_grad flags). The recursive
injector, the trainability helpers and bad names have their own files
(test_inject_recursive.py, test_trainability.py, test_inject_bad_names.py).
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from inject_helpers import (
    BLOCK_LINEARS,
    MLP_LINEARS,
    ContainerNet,
    make_block,
    make_mlp,
    param_ids,
    plain_linear_names,
)
from torch import nn

from peft_zoo import (
    AdapterBlock,
    IA3Linear,
    InjectionError,
    LoRALinear,
    build_lora_adapter_model,
    inject_ia3,
    inject_lora,
)
from peft_zoo.models import TinyMLP, TinyTransformer, TinyTransformerConfig
from peft_zoo.testing import assert_model_unchanged, fingerprint

# ----------------------------------------------------------------------------- inject_lora


def test_inject_lora_wraps_the_original_linears_of_a_nested_mlp():
    model = make_mlp()
    reference = copy.deepcopy(model)
    names = ["encoder.0", "encoder.2.branch.fc1", "head"]
    originals = {n: model.get_submodule(n) for n in MLP_LINEARS}
    untouched_weight = originals["encoder.2.branch.fc2"].weight

    out, params = inject_lora(model, names, rank=2)

    assert out is model
    for n in names:
        layer = model.get_submodule(n)
        assert type(layer) is LoRALinear, n
        assert layer.base is originals[n], f"{n}: must wrap the original Linear object"
        assert not layer.base.weight.requires_grad and not layer.base.bias.requires_grad
        assert layer.lora_A.requires_grad and layer.lora_B.requires_grad
    fc2 = model.get_submodule("encoder.2.branch.fc2")
    assert fc2 is originals["encoder.2.branch.fc2"] and type(fc2) is nn.Linear
    assert fc2.weight is untouched_weight
    assert not fc2.weight.requires_grad, "every non-adapter parameter is frozen, not only the wrapped bases"

    expected = [p for n in names for p in (model.get_submodule(n).lora_A, model.get_submodule(n).lora_B)]
    assert param_ids(params) == param_ids(expected)
    assert len(set(param_ids(params))) == len(params) == 6
    base_ids = {id(p) for n in names for p in originals[n].parameters()}
    assert not base_ids & set(param_ids(params)), "base weights must not be returned"

    x = torch.randn(3, 8)
    assert torch.equal(model(x), reference(x)), "B = 0: injected model equals the base at init"


def test_inject_lora_returns_params_in_the_given_name_order():
    model = make_mlp()
    _, params = inject_lora(model, ["head", "encoder.0"], rank=3)
    head, enc = model.get_submodule("head"), model.get_submodule("encoder.0")
    assert param_ids(params) == param_ids([head.lora_A, head.lora_B, enc.lora_A, enc.lora_B])
    assert params[0].shape == (3, 16) and params[1].shape == (4, 3)


@settings(deadline=None, max_examples=15)
@given(
    names=st.lists(st.sampled_from(MLP_LINEARS), min_size=1, max_size=4, unique=True),
    rank=st.integers(1, 6),
)
def test_inject_lora_params_property(names, rank):
    model = make_mlp()
    originals = {n: model.get_submodule(n) for n in MLP_LINEARS}
    _, params = inject_lora(model, names, rank=rank)
    assert len(params) == 2 * len(names)
    for i, n in enumerate(names):
        layer = model.get_submodule(n)
        assert layer.base is originals[n]
        assert params[2 * i] is layer.lora_A and params[2 * i + 1] is layer.lora_B
        assert layer.lora_A.shape == (rank, originals[n].in_features)
        assert layer.lora_B.shape == (originals[n].out_features, rank)
    for n in set(MLP_LINEARS) - set(names):
        assert model.get_submodule(n) is originals[n]
        assert not originals[n].weight.requires_grad
    assert set(param_ids(params)) == {id(p) for p in model.parameters() if p.requires_grad}


def test_inject_lora_into_attention_projections_of_a_transformer_block():
    model = make_block()
    reference = copy.deepcopy(model)
    originals = {n: model.get_submodule(n) for n in BLOCK_LINEARS}
    names = ["attn.branch.q", "attn.branch.v"]
    _, params = inject_lora(model, names, rank=4, alpha=8.0, rslora=True)
    for n in BLOCK_LINEARS:
        layer = model.get_submodule(n)
        if n in names:
            assert isinstance(layer, LoRALinear) and layer.base is originals[n]
            assert layer.rank == 4 and layer.alpha == 8.0 and layer.rslora
            assert layer.scale == pytest.approx(8.0 / 2.0)  # alpha / sqrt(rank)
        else:
            assert layer is originals[n] and type(layer) is nn.Linear
    assert len(params) == 4
    x = torch.randn(2, 5, 16)
    assert torch.equal(model(x), reference(x))


def test_inject_lora_into_sequential_modulelist_and_moduledict_children():
    torch.manual_seed(0)
    model = ContainerNet()
    reference = copy.deepcopy(model)
    names = ["seq.2", "layers.1", "heads.cls"]
    originals = {n: model.get_submodule(n) for n in names}
    _, params = inject_lora(model, names, rank=2)
    for n in names:
        assert isinstance(model.get_submodule(n), LoRALinear)
        assert model.get_submodule(n).base is originals[n]
    # containers keep their type, length and key order
    assert type(model.layers) is nn.ModuleList and len(model.layers) == 3
    assert isinstance(model.layers[1], LoRALinear)
    assert type(model.layers[0]) is nn.Linear and type(model.layers[2]) is nn.Linear
    assert list(model.heads.keys()) == ["cls", "reg"]
    assert isinstance(model.heads["cls"], LoRALinear) and type(model.heads["reg"]) is nn.Linear
    assert type(model.seq[0]) is nn.Linear and isinstance(model.seq[2], LoRALinear)
    assert len(params) == 6
    x = torch.randn(4, 6)
    assert torch.equal(model(x), reference(x))


def test_inject_lora_accepts_a_single_string_as_one_name():
    model = make_mlp()
    original = model.head
    _, params = inject_lora(model, "head", rank=2)
    assert isinstance(model.head, LoRALinear) and model.head.base is original
    assert param_ids(params) == param_ids([model.head.lora_A, model.head.lora_B])
    assert plain_linear_names(model) == [
        "encoder.0",
        "encoder.2.branch.fc1",
        "encoder.2.branch.fc2",
        "head.base",
    ]


def test_inject_lora_passes_dropout_and_alpha_to_each_layer():
    model = make_mlp()
    inject_lora(model, ["encoder.0", "head"], 4, 2.0, dropout=0.25)
    for n in ("encoder.0", "head"):
        layer = model.get_submodule(n)
        assert layer.alpha == 2.0 and layer.scale == pytest.approx(0.5)
        assert isinstance(layer.lora_dropout, nn.Dropout) and layer.lora_dropout.p == 0.25


# ----------------------------------------------------------------------------- inject_ia3


def test_inject_ia3_output_and_feedforward_forms():
    model = make_block()
    reference = copy.deepcopy(model)
    originals = {n: model.get_submodule(n) for n in BLOCK_LINEARS}
    _, params = inject_ia3(model, ["attn.branch.k", "attn.branch.v"], feedforward_names=["ffn.branch.fc2"])
    k, v, fc2 = (model.get_submodule(n) for n in ("attn.branch.k", "attn.branch.v", "ffn.branch.fc2"))
    for n, layer in (("attn.branch.k", k), ("attn.branch.v", v), ("ffn.branch.fc2", fc2)):
        assert type(layer) is IA3Linear and layer.base is originals[n]
        assert not layer.base.weight.requires_grad and layer.scale.requires_grad
    assert not k.feedforward and not v.feedforward and fc2.feedforward
    assert k.scale.shape == (16,) and fc2.scale.shape == (32,)  # fc2: scales its 32 inputs
    assert param_ids(params) == param_ids([k.scale, v.scale, fc2.scale])
    for n in ("attn.branch.q", "attn.branch.o", "ffn.branch.fc1"):
        assert model.get_submodule(n) is originals[n]
    x = torch.randn(2, 4, 16)
    assert torch.equal(model(x), reference(x))


def test_inject_ia3_single_string_and_only_feedforward():
    model = make_mlp()
    _, params = inject_ia3(model, [], feedforward_names="encoder.2.branch.fc2")
    layer = model.encoder[2].branch.fc2
    assert isinstance(layer, IA3Linear) and layer.feedforward
    assert param_ids(params) == [id(layer.scale)]


def test_inject_ia3_name_in_both_lists_raises_and_changes_nothing():
    model = make_block()
    before = fingerprint(model)
    with pytest.raises(InjectionError, match="more than once"):
        inject_ia3(model, ["attn.branch.k", "ffn.branch.fc2"], feedforward_names="ffn.branch.fc2")
    assert_model_unchanged(model, before, what="inject_ia3 overlap")


def test_inject_ia3_unknown_feedforward_name_raises_and_changes_nothing():
    model = make_block()
    before = fingerprint(model)
    with pytest.raises(InjectionError, match=r"'ffn\.branch\.fc3'.*ffn\.branch\.fc"):
        inject_ia3(model, ["attn.branch.k"], feedforward_names=["ffn.branch.fc3"])
    assert_model_unchanged(model, before, what="inject_ia3 unknown feed-forward name")


# --------------------------------------------------------------- build_lora_adapter_model


def _trainable_ids(model: nn.Module) -> set[int]:
    return {id(p) for p in model.parameters() if p.requires_grad}


def test_build_lora_adapter_model_without_adapter():
    model = make_mlp()
    reference = copy.deepcopy(model)
    out, params = build_lora_adapter_model(model, ["encoder.0", "head"], rank=2, alpha=4.0)
    assert out is model
    assert isinstance(model.encoder[0], LoRALinear) and isinstance(model.head, LoRALinear)
    assert set(param_ids(params)) == _trainable_ids(model) and len(params) == 4
    assert param_ids(params) == param_ids(
        [model.encoder[0].lora_A, model.encoder[0].lora_B, model.head.lora_A, model.head.lora_B]
    )
    # the untouched Linears are frozen too ("everything else frozen")
    assert not model.encoder[2].branch.fc1.weight.requires_grad
    x = torch.randn(5, 8)
    assert torch.equal(model(x), reference(x))


def test_build_lora_adapter_model_with_adapter_is_an_adapter_block():
    base = make_block()
    reference = copy.deepcopy(base)
    model, params = build_lora_adapter_model(
        base, ["attn.branch.q", "attn.branch.v"], rank=2, adapter_bottleneck=4
    )
    assert isinstance(model, AdapterBlock) and model.sublayer is base
    assert model.adapter.d_model == 16 and model.adapter.bottleneck_dim == 4
    assert set(param_ids(params)) == _trainable_ids(model)
    lora = [
        base.attn.branch.q.lora_A,
        base.attn.branch.q.lora_B,
        base.attn.branch.v.lora_A,
        base.attn.branch.v.lora_B,
    ]
    assert param_ids(params) == param_ids(lora + list(model.adapter.parameters()))
    assert len(params) == 4 + 4
    x = torch.randn(2, 3, 16)
    # AdapterBlock: h = x + base(x); the zero-initialised adapter adds nothing yet
    assert torch.equal(model(x), x + reference(x))


def test_build_lora_adapter_model_infers_d_model_from_the_first_linear():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 6))
    model, params = build_lora_adapter_model(base, "2", rank=1, adapter_bottleneck=3)
    assert model.adapter.d_model == 6
    assert model(torch.randn(4, 6)).shape == (4, 6)
    assert set(param_ids(params)) == _trainable_ids(model)


def test_build_lora_adapter_model_d_model_from_config():
    torch.manual_seed(0)
    cfg = TinyTransformerConfig(vocab_size=8, max_len=4, d_model=24, n_heads=2, d_ff=8)
    model, _ = build_lora_adapter_model(TinyTransformer(cfg), "head", rank=1, adapter_bottleneck=2)
    assert model.adapter.d_model == 24


def test_build_lora_adapter_model_explicit_d_model_overrides_inference():
    # TinyMLP(8, 16, 8) maps 8 -> 8 but its d_model attribute says 16 (the hidden width)
    torch.manual_seed(0)
    inferred, _ = build_lora_adapter_model(TinyMLP(8, 16, 8), "head", rank=1, adapter_bottleneck=2)
    assert inferred.adapter.d_model == 16
    torch.manual_seed(0)
    base = TinyMLP(8, 16, 8)
    reference = copy.deepcopy(base)
    model, _ = build_lora_adapter_model(base, "head", rank=1, adapter_bottleneck=2, d_model=8)
    assert model.adapter.d_model == 8
    x = torch.randn(3, 8)
    assert torch.equal(model(x), x + reference(x))


def test_build_lora_adapter_model_adapter_only():
    base = make_block()
    model, params = build_lora_adapter_model(base, [], rank=2, adapter_bottleneck=2)
    assert isinstance(model, AdapterBlock)
    assert param_ids(params) == param_ids(model.adapter.parameters())
    assert set(param_ids(params)) == _trainable_ids(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())


def test_build_lora_adapter_model_bad_bottleneck_changes_nothing():
    model = make_block()
    before = fingerprint(model)
    with pytest.raises(ValueError, match="adapter_bottleneck"):
        build_lora_adapter_model(model, ["attn.branch.q"], rank=2, adapter_bottleneck=0)
    assert_model_unchanged(model, before, what="adapter_bottleneck=0")


def test_build_lora_adapter_model_bad_name_changes_nothing():
    model = make_block()
    before = fingerprint(model)
    with pytest.raises(InjectionError, match=r"attn\.branch\.qq"):
        build_lora_adapter_model(model, ["attn.branch.q", "attn.branch.qq"], rank=2, adapter_bottleneck=4)
    assert_model_unchanged(model, before, what="bad LoRA name in build_lora_adapter_model")


def test_build_lora_adapter_model_nothing_to_train_raises():
    model = make_mlp()
    before = fingerprint(model)
    with pytest.raises(InjectionError, match="nothing to train"):
        build_lora_adapter_model(model, [], rank=2)
    assert_model_unchanged(model, before, what="no targets, no adapter")
