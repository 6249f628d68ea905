"""merge_and_unload / unload on small torch models: merged outputs equal unmerged ones, unload
gives the base back bit for bit, and whatever cannot be taken apart is refused with nothing
changed (see tests/test_unload_hf.py for transformers models and PEFT)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import peft_zoo as pz
from peft_zoo.injection.surgery import parent_of
from peft_zoo.models import TinyMLP
from peft_zoo.testing import assert_close, assert_model_unchanged, fingerprint, seeds

PROPERTY = settings(max_examples=25, deadline=None)
NAMES = ("encoder.0", "encoder.2.branch.fc1", "encoder.2.branch.fc2", "head")  # TinyMLP's linears
BUILDERS: dict[str, Callable[[nn.Module, int, float], nn.Module]] = {
    "lora": lambda lin, r, a: pz.LoRALinear(lin, r, a, dropout=0.1),
    "rslora": lambda lin, r, a: pz.LoRALinear(lin, r, a, rslora=True),
    "dora": lambda lin, r, a: pz.DoRALinear(lin, r, a),
    "fused": lambda lin, r, a: pz.FusedLoRALinear(lin, r, a, parts=(True, False)),
    "ia3": lambda lin, r, a: pz.IA3Linear(lin),
    "ia3_ff": lambda lin, r, a: pz.IA3Linear(lin, feedforward=True),
}
X = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(0))  # (B, T, d_in)


def base_model(seed: int = 0) -> TinyMLP:
    torch.manual_seed(seed)
    return TinyMLP().eval()


@torch.no_grad()
def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random, nonzero adapter weights (an IA³ scale and a DoRA magnitude around their start)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(pz.adapter_named_parameters(model)):
        noise = 0.3 * torch.randn(p.shape, generator=g)
        p.mul_(1 + noise) if name.endswith(("scale", "magnitude")) else p.add_(noise)
    return model


def adapted(kinds: tuple[str, ...], rank: int, alpha: float, seed: int) -> tuple[nn.Module, list[nn.Module]]:
    """TinyMLP with ``kinds[i]`` around ``NAMES[i]``; also returns the wrapped base layers."""
    model = base_model()
    bases = []
    for name, kind in zip(NAMES, kinds, strict=True):
        parent, attr = parent_of(model, name)
        bases.append(getattr(parent, attr))
        setattr(parent, attr, BUILDERS[kind](bases[-1], rank, alpha))
    return randomise(model, seed).eval(), bases


def peft_zoo_classes(model: nn.Module) -> list[str]:
    return [
        f"{n}: {type(m).__name__}"
        for n, m in model.named_modules()
        if type(m).__module__.startswith("peft_zoo.") and not type(m).__module__.startswith("peft_zoo.models")
    ]


# ----------------------------------------------------------------------------- properties


@PROPERTY
@given(
    kinds=st.tuples(*[st.sampled_from(sorted(BUILDERS))] * len(NAMES)),
    rank=st.integers(1, 4),
    alpha=st.floats(0.5, 8.0),
    seed=seeds(),
    premerge=st.booleans(),
)
def test_merged_outputs_equal_unmerged_ones(kinds, rank, alpha, seed, premerge) -> None:
    drawn = {"kinds": kinds, "rank": rank, "alpha": alpha, "seed": seed, "premerge": premerge}
    model, bases = adapted(kinds, rank, alpha, seed)
    with torch.no_grad():
        expected = model(X)
    if premerge:  # a layer merged before is not merged a second time
        pz.merge_adapters(model)
    merged = pz.merge_and_unload(model)
    assert merged is model and not peft_zoo_classes(merged), drawn
    for name, base in zip(NAMES, bases, strict=True):
        assert merged.get_submodule(name) is base, f"{name} is not its own base module again: {drawn}"
    with torch.no_grad():
        assert_close(merged(X), expected, what="merge_and_unload vs the adapted model", drawn=drawn)


@PROPERTY
@given(
    kinds=st.tuples(*[st.sampled_from(sorted(BUILDERS))] * len(NAMES)),
    rank=st.integers(1, 4),
    alpha=st.floats(0.5, 8.0),
    seed=seeds(),
)
def test_unload_gives_the_base_back_exactly(kinds, rank, alpha, seed) -> None:
    original = base_model()
    with torch.no_grad():
        expected = original(X)
    model, bases = adapted(kinds, rank, alpha, seed)
    plain = pz.unload(model)
    assert not peft_zoo_classes(plain)
    assert [plain.get_submodule(n) for n in NAMES] == bases
    now, before = dict(plain.named_parameters()), dict(original.named_parameters())
    assert sorted(now) == sorted(before)
    for name, p in before.items():
        assert torch.equal(now[name], p), name
    with torch.no_grad():
        assert torch.equal(plain(X), expected)


# ----------------------------------------------------------------------------- the other layers


def test_qlora_merges_into_a_float_linear_and_unloads_to_its_nf4_base() -> None:
    model, _ = pz.inject_qlora(base_model(), ["encoder.0", "head"], rank=2)
    randomise(model, 1).eval()
    with torch.no_grad():
        expected = model(X)
    nf4 = model.get_submodule("head").base
    unloaded = pz.unload(copy.deepcopy(model))
    assert isinstance(unloaded.get_submodule("head"), pz.NF4Linear)
    merged = pz.merge_and_unload(model)
    assert type(merged.get_submodule("head")) is nn.Linear and not peft_zoo_classes(merged)
    with torch.no_grad():
        assert_close(merged(X), expected, what="QLoRA merged", drawn={})
    assert merged.get_submodule("head") is not nf4


def test_modules_to_save_keeps_the_trained_copy_and_unload_the_original() -> None:
    model = base_model()
    inner = nn.Sequential(pz.LoRALinear(model.head, 2))
    model.head = pz.ModulesToSave(inner)  # a saved module that holds a LoRA layer of its own
    randomise(model, 2).eval()
    with torch.no_grad():
        expected = model(X)
        original = model.head.original_module[0].base.weight.clone()
    unloaded = pz.unload(copy.deepcopy(model))
    assert type(unloaded.head) is nn.Sequential and type(unloaded.head[0]) is nn.Linear
    assert torch.equal(unloaded.head[0].weight, original)
    merged = pz.merge_and_unload(model)
    assert type(merged.head) is nn.Sequential and type(merged.head[0]) is nn.Linear
    with torch.no_grad():
        assert_close(merged(X), expected, what="ModulesToSave merged", drawn={})


def test_a_layer_reachable_twice_is_merged_once_and_the_root_can_be_a_layer() -> None:
    torch.manual_seed(0)
    layer = randomise(pz.LoRALinear(nn.Linear(8, 8), 2), 3)
    model = nn.Sequential(layer, nn.Tanh(), layer)
    with torch.no_grad():
        expected, one = model(X), layer(X)
    merged = pz.merge_and_unload(model)
    assert merged[0] is merged[2] and type(merged[0]) is nn.Linear
    with torch.no_grad():
        assert_close(merged(X), expected, what="shared layer merged once", drawn={})
    torch.manual_seed(0)
    root = randomise(pz.DoRALinear(nn.Linear(8, 8), 2), 3)
    with torch.no_grad():
        one = root(X)
    plain = pz.merge_and_unload(root)
    assert type(plain) is nn.Linear
    with torch.no_grad():
        assert_close(plain(X), one, what="root layer merged", drawn={})


def test_lora_dropout_goes_with_its_layer_and_training_mode_does_not_matter() -> None:
    model, _ = pz.inject_lora(base_model(), list(NAMES), rank=2, dropout=0.5)
    randomise(model, 4)
    with torch.no_grad():
        expected = model.eval()(X)
    model.train()
    merged = pz.merge_and_unload(model)
    assert not any(isinstance(m, nn.Dropout) for m in merged.modules())
    with torch.no_grad():
        assert_close(merged.eval()(X), expected, what="merged after training mode", drawn={})


def test_unload_unmerges_a_merged_layer_first() -> None:
    original = base_model()
    model, _ = adapted(("lora", "dora", "ia3", "fused"), 2, 4.0, 5)
    pz.merge_adapters(model)
    plain = pz.unload(model)
    for name, p in original.named_parameters():
        assert_close(plain.get_parameter(name), p, what=f"{name} after unmerge", drawn={})


def test_parallel_adapter_block_unloads_to_its_sublayer_but_does_not_merge() -> None:
    model = base_model()
    ffn = model.encoder[2].branch
    model.encoder[2].branch = pz.ParallelAdapterBlock(ffn, randomise(pz.BottleneckAdapter(16, 4), 6))
    before = fingerprint(model)
    with pytest.raises(pz.UnloadError, match=r"'encoder\.2\.branch' is a ParallelAdapterBlock"):
        pz.merge_and_unload(model)
    assert_model_unchanged(model, before, what="a refused merge_and_unload")
    assert pz.unload(model).encoder[2].branch is ffn


# ----------------------------------------------------------------------------- refusals


def _with_adapter_block(model: nn.Module) -> str:
    model.encoder[2] = pz.AdapterBlock(model.encoder[2].branch, pz.BottleneckAdapter(16, 4))
    return "encoder.2"


def _with_linear_bottleneck(model: nn.Module) -> str:
    model.encoder.append(pz.BottleneckAdapter(16, 4, activation="identity"))
    return "encoder.3"


def _with_prefix(model: nn.Module) -> str:
    model.prefix = pz.LearnablePrefix(2, 16)
    return "prefix"


def _with_prefix_kv(model: nn.Module) -> str:
    model.encoder[2].kv = pz.PrefixKV(2, 2, 8)
    return "encoder.2.kv"


def _with_stack(model: nn.Module) -> str:
    model.stack = pz.AdapterStack(16, 4, 2)
    return "stack"


def _with_batched(model: nn.Module) -> str:
    pz.inject_batched_lora(model, ["encoder.2.branch.fc2"], num_adapters=2, rank=2)
    return "encoder.2.branch.fc2"


REFUSED = {
    "AdapterBlock": _with_adapter_block,
    "BottleneckAdapter": _with_linear_bottleneck,
    "LearnablePrefix": _with_prefix,
    "PrefixKV": _with_prefix_kv,
    "AdapterStack": _with_stack,
    "BatchedLoRALinear": _with_batched,
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
@pytest.mark.parametrize("function", [pz.merge_and_unload, pz.unload], ids=["merge", "unload"])
def test_what_cannot_be_taken_apart_is_refused_and_nothing_changes(kind, function) -> None:
    model, _ = pz.inject_lora(base_model(), ["encoder.0", "head"], rank=2)
    randomise(model, 7)
    path = REFUSED[kind](model)
    pz.merge_adapters(model.encoder[0])  # a merged layer, which unload would unmerge
    before = fingerprint(model)
    with pytest.raises(pz.UnloadError, match=rf"'{path}' is a {kind}: .*The model was not changed"):
        function(model)
    assert_model_unchanged(model, before, what=f"a refused {function.__name__}")
    assert isinstance(model.head, pz.LoRALinear) and model.encoder[0].merged


def test_a_shared_or_tied_base_weight_is_not_merged_into() -> None:
    blocks = nn.ModuleList(nn.Sequential(pz.LoRALinear(nn.Linear(8, 8), 2)) for _ in range(2))
    pz.share_main_matrices(blocks, ["0"])
    randomise(blocks, 8)
    before = fingerprint(blocks)
    with pytest.raises(pz.UnloadError, match=r"'0\.0' \(LoRALinear\): its base weight is shared"):
        pz.merge_and_unload(blocks)
    assert_model_unchanged(blocks, before, what="a refused merge into a shared weight")

    tied = nn.ModuleDict({"emb": nn.Embedding(8, 4), "head": nn.Linear(4, 8, bias=False)})
    tied["head"].weight = tied["emb"].weight  # as GPT-2's lm_head and wte
    pz.inject_lora(tied, ["head"], rank=2)
    randomise(tied, 9)
    before = fingerprint(tied)
    with pytest.raises(
        pz.UnloadError, match=r"'head' \(LoRALinear\): its base weight is tied to \['emb.weight'\]"
    ):
        pz.merge_and_unload(tied)
    assert_model_unchanged(tied, before, what="a refused merge into a tied weight")
    assert pz.unload(tied)["head"].weight is tied["emb"].weight  # unloading writes nothing: allowed


def test_every_problem_is_named_and_non_finite_merges_are_refused() -> None:
    model, _ = pz.inject_lora(base_model(), ["encoder.0", "head"], rank=2)
    with torch.no_grad():
        model.head.lora_A.fill_(1e30)  # scale * B A = 2e60 overflows float32
        model.head.lora_B.fill_(1e30)
        model.encoder[0].lora_B.fill_(float("inf"))  # (NaN would fail torch.equal below)
    before = fingerprint(model)
    with pytest.raises(pz.UnloadError) as info:
        pz.merge_and_unload(model)
    assert "'encoder.0' (LoRALinear): its merged weight has NaN or inf" in str(info.value)
    assert "'head' (LoRALinear)" in str(info.value)
    assert_model_unchanged(model, before, what="a refused non-finite merge")


@pytest.mark.parametrize("function", [pz.merge_and_unload, pz.unload])
@pytest.mark.parametrize("value", [None, "model", {"head": nn.Linear(2, 2)}])
def test_a_model_that_is_no_module_is_refused(function, value) -> None:
    with pytest.raises(TypeError, match=r"model must be an nn\.Module"):
        function(value)
