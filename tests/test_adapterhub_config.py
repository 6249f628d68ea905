"""BottleneckConfig (AdapterHub's field names and presets) and where adapt_bottleneck puts the
adapters in transformers 5.x models: checks, identity at init, parameter counts, only the
adapters train, refusals that change nothing. No AdapterHub needed (tests/adapterhub/ compares
with it)."""

from __future__ import annotations

import copy

import pytest
import torch
from adapterhub_models import ARCHS, HIDDEN, LAYERS, hidden, tiny
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from peft_zoo.bottleneck import ACTIVATIONS, BnAdapter
from peft_zoo.injection.bottleneck_config import (
    PRESETS,
    BottleneckConfig,
    DoubleSeqBnConfig,
    ParBnConfig,
    SeqBnConfig,
)
from peft_zoo.injection.bottleneck_placement import (
    PostNormSite,
    PreNormSite,
    adapt_bottleneck,
    bottleneck_sites,
    remove_bottleneck,
)
from peft_zoo.injection.surgery import InjectionError


def test_presets_carry_adapterhubs_defaults():
    assert (
        BottleneckConfig.preset("pfeiffer").to_dict()
        == SeqBnConfig().to_dict()
        == BottleneckConfig().to_dict()
    )
    houlsby = BottleneckConfig.preset("houlsby")
    assert isinstance(houlsby, DoubleSeqBnConfig) and houlsby.mh_adapter and houlsby.output_adapter
    assert (houlsby.non_linearity, houlsby.original_ln_before) == ("swish", False)
    par = BottleneckConfig.preset("parallel")
    assert isinstance(par, ParBnConfig) and par.is_parallel and par.scaling == 4.0
    assert (par.reduction_factor, par.init_weights) == (2, "mam_adapter")
    assert BottleneckConfig.preset("scaled_par_bn").scaling == "learned"
    assert BottleneckConfig.preset("seq_bn", reduction_factor=8).reduction_factor == 8
    assert set(PRESETS) >= {"seq_bn", "double_seq_bn", "par_bn", "pfeiffer", "houlsby", "parallel"}
    with pytest.raises(ValueError, match="unknown bottleneck preset"):
        BottleneckConfig.preset("lora")


BAD = [
    ({"mh_adapter": "yes"}, TypeError, "mh_adapter"),
    ({"ln_after": 1}, TypeError, "ln_after"),
    ({"reduction_factor": 0}, ValueError, "reduction_factor"),
    ({"reduction_factor": True}, TypeError, "reduction_factor"),
    ({"reduction_factor": {"one": 2}}, ValueError, "reduction_factor"),
    ({"non_linearity": "softplus"}, ValueError, "non_linearity"),
    ({"non_linearity": None}, TypeError, "non_linearity"),
    ({"init_weights": "mam"}, ValueError, "mam_adapter"),
    ({"scaling": "fixed"}, ValueError, "scaling"),
    ({"scaling": float("nan")}, ValueError, "scaling"),
    ({"residual_before_ln": 1}, TypeError, "residual_before_ln"),
    ({"residual_before_ln": "after"}, ValueError, "post_add"),
    ({"residual_before_ln": "post_add", "original_ln_before": False}, ValueError, "post_add"),
    ({"leave_out": "0"}, TypeError, "leave_out"),
    ({"leave_out": [-1]}, ValueError, "leave_out"),
    ({"dropout": 1.0}, ValueError, "dropout"),
    ({"init_weights_seed": 1.5}, TypeError, "init_weights_seed"),
    ({"mh_adapter": False, "output_adapter": False}, ValueError, "no adapter"),
]


@pytest.mark.parametrize(("kwargs", "error", "words"), BAD)
def test_bad_fields_are_refused_by_name(kwargs, error, words):
    with pytest.raises(error, match=words):
        BottleneckConfig(**kwargs)


def test_an_int_scaling_becomes_a_float_and_unknown_fields_are_named():
    assert BottleneckConfig(scaling=4).scaling == 4.0 and isinstance(
        BottleneckConfig(scaling=4).scaling, float
    )
    with pytest.raises(ValueError, match="phm_layer"):
        BottleneckConfig.from_dict({"phm_layer": True})
    assert BottleneckConfig.from_dict(ParBnConfig().to_dict()) == BottleneckConfig(**ParBnConfig().to_dict())


def test_every_field_has_help():
    import dataclasses

    assert all(f.metadata.get("help") for f in dataclasses.fields(BottleneckConfig))


def _adapter_numel(d: int, r: int) -> int:
    return 2 * d * r + r + d


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("preset", ["seq_bn", "double_seq_bn", "par_bn"])
def test_mam_init_starts_as_the_base_model_and_only_adapters_train(arch, preset):
    base = tiny(arch)
    model, params = adapt_bottleneck(
        copy.deepcopy(base), BottleneckConfig.preset(preset, init_weights="mam_adapter")
    )
    with torch.no_grad():
        assert torch.equal(hidden(model), hidden(base))  # up projection zero: exactly the base model
    sites = bottleneck_sites(model)
    per_layer = 2 if preset == "double_seq_bn" else 1
    assert len(sites) == per_layer * LAYERS
    kind = PostNormSite if arch == "bert" else PreNormSite
    assert all(isinstance(s, kind) for s in sites.values())
    r = HIDDEN // BottleneckConfig.preset(preset).reduction_factor
    assert sum(p.numel() for p in params) == len(sites) * _adapter_numel(HIDDEN, r)
    assert {id(p) for p in params} == {id(p) for p in model.parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optim = torch.optim.SGD(params, lr=0.1)
    hidden(model).pow(2).mean().backward()
    optim.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".adapter." in n for n in changed), sorted(changed)[:4]


@pytest.mark.parametrize("arch", ARCHS)
@settings(max_examples=6, deadline=None)
@given(
    rf=st.sampled_from([2, 4, 8, 3.5]),
    act=st.sampled_from(sorted(ACTIVATIONS)),
    flags=st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()),
    scaling=st.sampled_from([0.5, "learned", "channel"]),
    leave=st.sampled_from([[], [0], [1]]),
)
def test_drawn_configs_place_one_adapter_per_site(arch, rf, act, flags, scaling, leave):
    ln_before, ln_after, gating, mh = flags
    config = BottleneckConfig(
        reduction_factor=rf, non_linearity=act, ln_before=ln_before, ln_after=ln_after,
        use_gating=gating, mh_adapter=mh, scaling=scaling, leave_out=leave,
    )  # fmt: skip
    model, params = adapt_bottleneck(tiny(arch), config)
    sites = bottleneck_sites(model)
    assert len(sites) == (1 + mh) * (LAYERS - len(leave))
    r = max(1, int(HIDDEN // rf))
    assert all(s.adapter.bottleneck_dim == r for s in sites.values())
    out = hidden(model)
    assert out.shape == (2, 6, HIDDEN) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in params)


def test_reduction_factor_per_layer():
    config = BottleneckConfig(reduction_factor={"0": 2, "default": 16})
    model, _ = adapt_bottleneck(tiny("bert"), config)
    dims = [s.adapter.bottleneck_dim for s in bottleneck_sites(model).values()]
    assert dims == [16, 2]
    with pytest.raises(InjectionError, match="no entry for layer 1"):
        adapt_bottleneck(tiny("bert"), BottleneckConfig(reduction_factor={"0": 2}))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("make", "config", "words"),
    [
        (lambda: nn.Sequential(nn.Linear(4, 4)), BottleneckConfig(), "no BERT-, GPT-2- or LLaMA-style layer"),
        (lambda: tiny("gpt2"), BottleneckConfig(residual_before_ln="post_add"), "pre-LN"),
        (lambda: tiny("llama"), BottleneckConfig(leave_out=[0, 1]), "no adapter sites"),
    ],
)
def test_refusals_change_nothing(make, config, words):
    model = make()
    state, types = _state(model), [type(m) for m in model.modules()]
    with pytest.raises(InjectionError, match=words):
        adapt_bottleneck(model, config)
    assert [type(m) for m in model.modules()] == types
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_adapting_twice_and_a_field_set_later_are_refused():
    model, _ = adapt_bottleneck(tiny("bert"), BottleneckConfig())
    with pytest.raises(InjectionError, match="already holds"):
        adapt_bottleneck(model, BottleneckConfig())
    config = BottleneckConfig()
    config.ln_before = "no"  # type: ignore[assignment]  # what a careless caller does
    with pytest.raises(TypeError, match="ln_before"):
        adapt_bottleneck(tiny("bert"), config)
    with pytest.raises(TypeError, match="BottleneckConfig"):
        adapt_bottleneck(tiny("bert"), {"mh_adapter": True})  # type: ignore[arg-type]  # a dict is not a config


@pytest.mark.parametrize("arch", ARCHS)
def test_remove_bottleneck_restores_the_model(arch):
    base = tiny(arch)
    model, _ = adapt_bottleneck(copy.deepcopy(base), BottleneckConfig.preset("double_seq_bn"))
    with torch.no_grad():
        assert not torch.equal(hidden(model), hidden(base))  # "bert" init: near, not at, the identity
    remove_bottleneck(model)
    assert not bottleneck_sites(model)
    assert [type(m) for m in model.modules()] == [type(m) for m in base.modules()]
    with torch.no_grad():
        assert torch.equal(hidden(model), hidden(base))


def test_bn_adapter_checks_its_input_and_arguments():
    layer = BnAdapter(8, 2)
    with pytest.raises(ValueError, match=r"\(\.\.\., 8\)"):
        layer(torch.zeros(1, 3, 4), torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match="init_weights"):
        BnAdapter(8, 2, init_weights="xavier")
    with pytest.raises(TypeError, match="is_parallel"):
        BnAdapter(8, 2, is_parallel="yes")  # type: ignore[arg-type]  # a str where a bool belongs
    gated = BnAdapter(8, 2, use_gating=True)
    with pytest.raises(ValueError, match="use_gating"):
        gated(torch.zeros(3, 8), torch.zeros(3, 8))
    assert layer(torch.zeros(1, 3, 8), torch.ones(1, 3, 8)).shape == (1, 3, 8)


@pytest.mark.parametrize("arch", ARCHS)
def test_merge_and_unload_refuses_and_unload_takes_the_sites_out(arch):
    from peft_zoo.injection.unload import UnloadError, merge_and_unload, unload

    base = tiny(arch)
    model, _ = adapt_bottleneck(copy.deepcopy(base), BottleneckConfig.preset("houlsby"))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnloadError, match="non-linearity between its projections") as info:
        merge_and_unload(model)
    assert str(next(iter(bottleneck_sites(model)))) in str(info.value)  # names the layer
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    plain = unload(model)
    assert [type(m) for m in plain.modules()] == [type(m) for m in base.modules()]
    with torch.no_grad():
        assert torch.equal(hidden(plain), hidden(base))


def test_adapt_model_dispatches_bottleneck_configs() -> None:
    from peft_zoo import adapt_model

    base = tiny("gpt2")
    model, params = adapt_model(copy.deepcopy(base), ParBnConfig())
    assert len(bottleneck_sites(model)) == LAYERS and params
    with torch.no_grad():
        assert torch.equal(hidden(model), hidden(base))  # mam_adapter init: exactly the base
