"""Tests for peft_zoo.injection.inject: injectors, build_lora_adapter_model and trainability helpers.

Every failure path checks two things: the error names the problem, and the model is
exactly as it was (tensors, module objects and types, requires_grad flags).
"""

from __future__ import annotations

import copy
import re
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from peft_zoo import (
    AdapterBlock,
    BottleneckAdapter,
    IA3Linear,
    InjectionError,
    LoRALinear,
    build_lora_adapter_model,
    count_parameters,
    inject_ia3,
    inject_lora,
    inject_lora_recursive,
    mark_only_adapters_trainable,
    print_trainable_parameters,
    trainable_parameters,
)
from peft_zoo.models import TinyMLP, TinyTransformer, TinyTransformerBlock, TinyTransformerConfig
from peft_zoo.testing import (
    assert_model_unchanged,
    fingerprint,
    requires_grad_map,
)

MLP_LINEARS = ["encoder.0", "encoder.2.branch.fc1", "encoder.2.branch.fc2", "head"]
BLOCK_LINEARS = [
    "attn.branch.q",
    "attn.branch.k",
    "attn.branch.v",
    "attn.branch.o",
    "ffn.branch.fc1",
    "ffn.branch.fc2",
]


# ----------------------------------------------------------------------------- helpers


def _mlp(seed: int = 0) -> TinyMLP:
    torch.manual_seed(seed)
    return TinyMLP()


def _block(seed: int = 0) -> TinyTransformerBlock:
    torch.manual_seed(seed)
    return TinyTransformerBlock(d_model=16, n_heads=2, d_ff=32)


def _plain_linear_names(model: nn.Module) -> list[str]:
    """Paths of modules whose type is exactly nn.Linear (not inside any check of ours)."""
    return [n for n, m in model.named_modules() if type(m) is nn.Linear]


def _ids(params) -> list[int]:
    return [id(p) for p in params]


class ContainerNet(nn.Module):
    """Linears inside nn.Sequential, nn.ModuleList and nn.ModuleDict children."""

    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6))
        self.layers = nn.ModuleList([nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 6)])
        self.heads = nn.ModuleDict({"cls": nn.Linear(6, 3), "reg": nn.Linear(6, 1)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.seq(x)
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return torch.cat([self.heads["cls"](x), self.heads["reg"](x)], dim=-1)


# ----------------------------------------------------------------------------- inject_lora


def test_inject_lora_wraps_the_original_linears_of_a_nested_mlp():
    model = _mlp()
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
    assert _ids(params) == _ids(expected)
    assert len(set(_ids(params))) == len(params) == 6
    base_ids = {id(p) for n in names for p in originals[n].parameters()}
    assert not base_ids & set(_ids(params)), "base weights must not be returned"

    x = torch.randn(3, 8)
    assert torch.equal(model(x), reference(x)), "B = 0: injected model equals the base at init"


def test_inject_lora_returns_params_in_the_given_name_order():
    model = _mlp()
    _, params = inject_lora(model, ["head", "encoder.0"], rank=3)
    head, enc = model.get_submodule("head"), model.get_submodule("encoder.0")
    assert _ids(params) == _ids([head.lora_A, head.lora_B, enc.lora_A, enc.lora_B])
    assert params[0].shape == (3, 16) and params[1].shape == (4, 3)


@settings(deadline=None, max_examples=15)
@given(
    names=st.lists(st.sampled_from(MLP_LINEARS), min_size=1, max_size=4, unique=True),
    rank=st.integers(1, 6),
)
def test_inject_lora_params_property(names, rank):
    model = _mlp()
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
    assert set(_ids(params)) == {id(p) for p in model.parameters() if p.requires_grad}


def test_inject_lora_into_attention_projections_of_a_transformer_block():
    model = _block()
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
    model = _mlp()
    original = model.head
    _, params = inject_lora(model, "head", rank=2)
    assert isinstance(model.head, LoRALinear) and model.head.base is original
    assert _ids(params) == _ids([model.head.lora_A, model.head.lora_B])
    assert _plain_linear_names(model) == [
        "encoder.0",
        "encoder.2.branch.fc1",
        "encoder.2.branch.fc2",
        "head.base",
    ]


def test_inject_lora_passes_dropout_and_alpha_to_each_layer():
    model = _mlp()
    inject_lora(model, ["encoder.0", "head"], 4, 2.0, dropout=0.25)
    for n in ("encoder.0", "head"):
        layer = model.get_submodule(n)
        assert layer.alpha == 2.0 and layer.scale == pytest.approx(0.5)
        assert isinstance(layer.lora_dropout, nn.Dropout) and layer.lora_dropout.p == 0.25


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
    assert sorted(_plain_linear_names(model)) == sorted(f"{n}.base" for n in linears)
    assert len(params) == 2 * len(linears) and len(set(_ids(params))) == len(params)
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
    model = _mlp()
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
    assert _ids(params) == _ids([fc1.lora_A, fc1.lora_B, fc2.lora_A, fc2.lora_B])
    for _, m in model.named_modules():
        if isinstance(m, LoRALinear):
            assert not isinstance(m.base, LoRALinear), "LoRALinear(LoRALinear) was built"
    assert not any(n.endswith("base.base") for n, _ in model.named_modules())


def test_inject_lora_recursive_again_raises_and_changes_nothing():
    model = _mlp()
    inject_lora_recursive(model, rank=2)
    before = fingerprint(model)
    with pytest.raises(InjectionError, match=r"no nn\.Linear to wrap"):
        inject_lora_recursive(model, rank=2)
    assert_model_unchanged(model, before, what="second inject_lora_recursive")


def test_inject_lora_recursive_exclude_skips_the_head():
    model = _mlp()
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
    model = _block()
    inject_lora_recursive(model, rank=2, exclude=["ffn", "q"])
    wrapped = sorted(n for n, m in model.named_modules() if isinstance(m, LoRALinear))
    assert wrapped == ["attn.branch.k", "attn.branch.o", "attn.branch.v"]


def test_inject_lora_recursive_skips_bottleneck_adapter_linears():
    block = _block()
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


# ----------------------------------------------------------------------------- inject_ia3


def test_inject_ia3_output_and_feedforward_forms():
    model = _block()
    reference = copy.deepcopy(model)
    originals = {n: model.get_submodule(n) for n in BLOCK_LINEARS}
    _, params = inject_ia3(model, ["attn.branch.k", "attn.branch.v"], feedforward_names=["ffn.branch.fc2"])
    k, v, fc2 = (model.get_submodule(n) for n in ("attn.branch.k", "attn.branch.v", "ffn.branch.fc2"))
    for n, layer in (("attn.branch.k", k), ("attn.branch.v", v), ("ffn.branch.fc2", fc2)):
        assert type(layer) is IA3Linear and layer.base is originals[n]
        assert not layer.base.weight.requires_grad and layer.scale.requires_grad
    assert not k.feedforward and not v.feedforward and fc2.feedforward
    assert k.scale.shape == (16,) and fc2.scale.shape == (32,)  # fc2: scales its 32 inputs
    assert _ids(params) == _ids([k.scale, v.scale, fc2.scale])
    for n in ("attn.branch.q", "attn.branch.o", "ffn.branch.fc1"):
        assert model.get_submodule(n) is originals[n]
    x = torch.randn(2, 4, 16)
    assert torch.equal(model(x), reference(x))


def test_inject_ia3_single_string_and_only_feedforward():
    model = _mlp()
    _, params = inject_ia3(model, [], feedforward_names="encoder.2.branch.fc2")
    layer = model.encoder[2].branch.fc2
    assert isinstance(layer, IA3Linear) and layer.feedforward
    assert _ids(params) == [id(layer.scale)]


def test_inject_ia3_name_in_both_lists_raises_and_changes_nothing():
    model = _block()
    before = fingerprint(model)
    with pytest.raises(InjectionError, match="more than once"):
        inject_ia3(model, ["attn.branch.k", "ffn.branch.fc2"], feedforward_names="ffn.branch.fc2")
    assert_model_unchanged(model, before, what="inject_ia3 overlap")


def test_inject_ia3_unknown_feedforward_name_raises_and_changes_nothing():
    model = _block()
    before = fingerprint(model)
    with pytest.raises(InjectionError, match=r"'ffn\.branch\.fc3'.*ffn\.branch\.fc"):
        inject_ia3(model, ["attn.branch.k"], feedforward_names=["ffn.branch.fc3"])
    assert_model_unchanged(model, before, what="inject_ia3 unknown feed-forward name")


# --------------------------------------------------------------- build_lora_adapter_model


def _trainable_ids(model: nn.Module) -> set[int]:
    return {id(p) for p in model.parameters() if p.requires_grad}


def test_build_lora_adapter_model_without_adapter():
    model = _mlp()
    reference = copy.deepcopy(model)
    out, params = build_lora_adapter_model(model, ["encoder.0", "head"], rank=2, alpha=4.0)
    assert out is model
    assert isinstance(model.encoder[0], LoRALinear) and isinstance(model.head, LoRALinear)
    assert set(_ids(params)) == _trainable_ids(model) and len(params) == 4
    assert _ids(params) == _ids(
        [model.encoder[0].lora_A, model.encoder[0].lora_B, model.head.lora_A, model.head.lora_B]
    )
    # the untouched Linears are frozen too ("everything else frozen")
    assert not model.encoder[2].branch.fc1.weight.requires_grad
    x = torch.randn(5, 8)
    assert torch.equal(model(x), reference(x))


def test_build_lora_adapter_model_with_adapter_is_an_adapter_block():
    base = _block()
    reference = copy.deepcopy(base)
    model, params = build_lora_adapter_model(
        base, ["attn.branch.q", "attn.branch.v"], rank=2, adapter_bottleneck=4
    )
    assert isinstance(model, AdapterBlock) and model.sublayer is base
    assert model.adapter.d_model == 16 and model.adapter.bottleneck_dim == 4
    assert set(_ids(params)) == _trainable_ids(model)
    lora = [
        base.attn.branch.q.lora_A,
        base.attn.branch.q.lora_B,
        base.attn.branch.v.lora_A,
        base.attn.branch.v.lora_B,
    ]
    assert _ids(params) == _ids(lora + list(model.adapter.parameters()))
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
    assert set(_ids(params)) == _trainable_ids(model)


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
    base = _block()
    model, params = build_lora_adapter_model(base, [], rank=2, adapter_bottleneck=2)
    assert isinstance(model, AdapterBlock)
    assert _ids(params) == _ids(model.adapter.parameters())
    assert set(_ids(params)) == _trainable_ids(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())


def test_build_lora_adapter_model_bad_bottleneck_changes_nothing():
    model = _block()
    before = fingerprint(model)
    with pytest.raises(ValueError, match="adapter_bottleneck"):
        build_lora_adapter_model(model, ["attn.branch.q"], rank=2, adapter_bottleneck=0)
    assert_model_unchanged(model, before, what="adapter_bottleneck=0")


def test_build_lora_adapter_model_bad_name_changes_nothing():
    model = _block()
    before = fingerprint(model)
    with pytest.raises(InjectionError, match=r"attn\.branch\.qq"):
        build_lora_adapter_model(model, ["attn.branch.q", "attn.branch.qq"], rank=2, adapter_bottleneck=4)
    assert_model_unchanged(model, before, what="bad LoRA name in build_lora_adapter_model")


def test_build_lora_adapter_model_nothing_to_train_raises():
    model = _mlp()
    before = fingerprint(model)
    with pytest.raises(InjectionError, match="nothing to train"):
        build_lora_adapter_model(model, [], rank=2)
    assert_model_unchanged(model, before, what="no targets, no adapter")


# ----------------------------------------------------------------------------- trainability


def _mixed_model() -> AdapterBlock:
    block = _block()
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
    assert set(_ids(returned)) == {id(named[n]) for n in expected}
    assert len(returned) == len(expected)


def test_mark_only_adapters_trainable_invalid_bias_raises_and_changes_nothing():
    model = _mixed_model()
    before = fingerprint(model)
    with pytest.raises(ValueError, match="bias must be one of"):
        mark_only_adapters_trainable(model, bias="some")
    assert_model_unchanged(model, before, what="invalid bias mode")


def test_mark_only_adapters_trainable_without_adapters_raises_and_changes_nothing():
    model = _mlp()
    before = fingerprint(model)
    with pytest.raises(ValueError, match="no adapter"):
        mark_only_adapters_trainable(model)
    assert_model_unchanged(model, before, what="no adapters")
    assert all(requires_grad_map(model).values())


def test_print_trainable_parameters_exact_line(capsys):
    model = _mlp()  # TinyMLP(8, 16, 4)
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
    assert len(params) == len(set(_ids(params))) == 3
    assert sum(p.numel() for p in params) == 48
    print_trainable_parameters(model)
    assert capsys.readouterr().out == ("trainable params: 48 || all params: 68 || trainable%: 70.5882\n")


def test_trainable_parameters_match_requires_grad():
    model = _mlp()
    _, params = inject_lora(model, ["head"], rank=2)
    model.encoder.requires_grad_(False)
    assert _ids(trainable_parameters(model)) == _ids(params)
    assert count_parameters(model) == (2 * (16 + 4), 1284 + 40)


# ----------------------------------------------------------------------------- bad input


def test_unknown_name_typo_suggests_close_matches():
    model = _mlp()
    before = fingerprint(model)
    with pytest.raises(InjectionError) as info:
        inject_lora(model, ["encoder.2.branch.fc3"], rank=2)
    msg = str(info.value)
    assert "'encoder.2.branch.fc3'" in msg
    assert "encoder.2.branch.fc1" in msg and "encoder.2.branch.fc2" in msg
    assert_model_unchanged(model, before, what="typo name")


def test_unknown_bare_suffix_suggests_full_paths():
    model = _mlp()
    before = fingerprint(model)
    with pytest.raises(InjectionError, match=r"no module named 'fc1'.*'encoder\.2\.branch\.fc1'"):
        inject_lora(model, "fc1", rank=2)
    assert_model_unchanged(model, before, what="bare suffix name")


def test_unknown_bare_suffix_lists_every_matching_path():
    torch.manual_seed(0)
    model = TinyTransformer(TinyTransformerConfig(vocab_size=8, max_len=4, d_model=8, n_heads=2, d_ff=8))
    before = fingerprint(model)
    with pytest.raises(InjectionError) as info:
        inject_lora(model, ["q"], rank=2)
    assert "blocks.0.attn.branch.q" in str(info.value)
    assert "blocks.1.attn.branch.q" in str(info.value)
    assert_model_unchanged(model, before, what="suffix q")


@pytest.mark.parametrize(
    ("factory", "name", "type_name"),
    [
        (_mlp, "encoder.1", "GELU"),
        (_block, "attn.branch.norm", "LayerNorm"),
        (_mlp, "encoder", "Sequential"),
    ],
)
def test_name_that_is_not_a_linear(factory, name, type_name):
    model = factory()
    before = fingerprint(model)
    pattern = rf"'{re.escape(name)}' is a {type_name}, not an nn\.Linear"
    with pytest.raises(InjectionError, match=pattern):
        inject_lora(model, [name], rank=2)
    assert_model_unchanged(model, before, what=f"{type_name} target")


def test_injecting_twice_into_the_same_layer():
    model = _mlp()
    inject_lora(model, ["head"], rank=2)
    before = fingerprint(model)
    with pytest.raises(InjectionError, match="'head' already is a LoRALinear"):
        inject_lora(model, ["head"], rank=2)
    assert_model_unchanged(model, before, what="second injection into head")
    with pytest.raises(InjectionError, match="'head' already is a LoRALinear"):
        inject_ia3(model, ["head"])
    assert_model_unchanged(model, before, what="IA3 into a LoRA layer")


def test_targeting_the_base_of_a_lora_layer():
    model = _mlp()
    inject_lora(model, ["head"], rank=2)
    before = fingerprint(model)
    with pytest.raises(InjectionError, match=r"'head\.base' belongs to the adapter layer 'head'"):
        inject_lora(model, ["head.base"], rank=2)
    assert_model_unchanged(model, before, what="head.base target")


def test_same_name_listed_twice():
    model = _mlp()
    before = fingerprint(model)
    with pytest.raises(InjectionError, match=r"more than once: \['head'\]"):
        inject_lora(model, ["head", "encoder.0", "head"], rank=2)
    assert_model_unchanged(model, before, what="duplicate name")


def test_empty_name_list():
    model = _mlp()
    before = fingerprint(model)
    with pytest.raises(InjectionError, match="no module names"):
        inject_lora(model, [], rank=2)
    assert_model_unchanged(model, before, what="empty list")


def test_root_name_empty_string():
    model = _mlp()
    before = fingerprint(model)
    with pytest.raises(InjectionError, match="root module"):
        inject_lora(model, "", rank=2)
    assert_model_unchanged(model, before, what="root name")


def test_non_string_name_is_a_type_error():
    model = _mlp()
    before = fingerprint(model)
    with pytest.raises(TypeError, match="must be module names"):
        inject_lora(model, [model.head], rank=2)
    assert_model_unchanged(model, before, what="module object as a name")


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"rank": 0}, ValueError, "rank must be > 0"),
        ({"rank": -2}, ValueError, "rank must be > 0"),
        ({"rank": 2.0}, TypeError, "rank must be an int"),
        ({"rank": True}, TypeError, "rank must be an int"),
        ({"rank": 2, "alpha": 0.0}, ValueError, "alpha"),
        ({"rank": 2, "alpha": -1.0}, ValueError, "alpha"),
        ({"rank": 2, "dropout": 1.0}, ValueError, "dropout"),
        ({"rank": 2, "no_such_option": 1}, TypeError, "no_such_option"),
    ],
    ids=["rank0", "rank-neg", "rank-float", "rank-bool", "alpha0", "alpha-neg", "dropout1", "unknown-kwarg"],
)
def test_bad_lora_arguments_change_nothing(kwargs, error, fragment):
    model = _mlp()
    before = fingerprint(model)
    with pytest.raises(error, match=fragment):
        inject_lora(model, ["encoder.0", "head"], **kwargs)
    assert_model_unchanged(model, before, what=f"inject_lora(**{kwargs})")
    assert model.encoder[0].weight.requires_grad and model.head.weight.requires_grad
    assert type(model.head) is nn.Linear


def test_bad_lora_arguments_through_recursive_change_nothing():
    model = _mlp()
    before = fingerprint(model)
    with pytest.raises(ValueError, match="rank"):
        inject_lora_recursive(model, rank=0)
    assert_model_unchanged(model, before, what="inject_lora_recursive(rank=0)")


def test_valid_and_invalid_names_mixed_injects_nothing():
    model = _mlp()
    before = fingerprint(model)
    with pytest.raises(InjectionError) as info:
        inject_lora(model, ["encoder.0", "encoder.2.branch.fc3", "head", "encoder.1"], rank=2)
    msg = str(info.value)
    # every problem is reported, not only the first
    assert "encoder.2.branch.fc3" in msg and "'encoder.1' is a GELU" in msg
    assert_model_unchanged(model, before, what="half-valid name list")
    assert not any(isinstance(m, LoRALinear) for m in model.modules())


def test_failed_injection_leaves_earlier_adapters_and_warnings_alone():
    model = _mlp()
    inject_lora(model, ["head"], rank=2)
    before = fingerprint(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stray warnings on the error path
        with pytest.raises(InjectionError):
            inject_lora(model, ["encoder.0", "head"], rank=2)
    assert_model_unchanged(model, before, what="second call naming an adapted layer")
