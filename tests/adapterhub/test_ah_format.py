"""peft_zoo -> AdapterHub: an adapter written by save_adapterhub loads with AdapterHub's own
``model.load_adapter`` (every key used, none missing) and computes the same outputs and
gradients; both weight files (.bin by default, adapter.safetensors with use_safetensors)."""

from __future__ import annotations

import copy

import adapters
import pytest
import torch
from ah_helpers import ARCHS, NAME, base_model, compare, config_kwargs, inputs
from hypothesis import given, settings
from hypothesis import strategies as st

from peft_zoo.injection.bottleneck_config import BottleneckConfig
from peft_zoo.injection.bottleneck_placement import adapt_bottleneck, bottleneck_sites
from peft_zoo.interop.adapterhub import adapterhub_parameters, load_adapterhub, save_adapterhub


def _ours(arch: str, config: BottleneckConfig, head: bool = False):
    base = base_model(arch, head=head)
    ours, _ = adapt_bottleneck(copy.deepcopy(base), config)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in adapterhub_parameters(ours, NAME).values():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return base, ours.eval()


def _into_adapterhub(base, directory, **kwargs):
    ah = copy.deepcopy(base)
    adapters.init(ah)
    info: dict = {}
    ah.load_adapter(str(directory), loading_info=info, set_active=True, **kwargs)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [], info
    ah.train_adapter(NAME)
    return ah.eval()


@pytest.mark.parametrize("preset", ["seq_bn", "double_seq_bn", "par_bn", "scaled_par_bn"])
@pytest.mark.parametrize("arch", ARCHS)
def test_peft_zoo_file_loads_in_adapterhub(arch, preset, tmp_path):
    base, ours = _ours(arch, BottleneckConfig.preset(preset))
    save_adapterhub(ours, tmp_path, name=NAME)
    diff = compare(_into_adapterhub(base, tmp_path), ours, inputs())
    assert diff["out"] == 0.0 and diff["grad"] == 0.0, diff


@pytest.mark.parametrize("arch", ARCHS)
def test_safetensors_only_loads_with_use_safetensors(arch, tmp_path):
    config = BottleneckConfig.preset("seq_bn", ln_before=True, scaling="channel")
    base, ours = _ours(arch, config)
    save_adapterhub(ours, tmp_path, name=NAME, weights=("safetensors",))
    assert not (tmp_path / "pytorch_adapter.bin").exists()
    diff = compare(_into_adapterhub(base, tmp_path, use_safetensors=True), ours, inputs())
    assert diff["out"] == 0.0 and diff["grad"] == 0.0, diff


@st.composite
def _drawn(draw, arch):
    kw = config_kwargs(draw, arch)
    return BottleneckConfig.preset(kw.pop("preset"), **kw)


@pytest.mark.parametrize("arch", ARCHS)
@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_drawn_configs_load_in_adapterhub(arch, data, tmp_path_factory):
    config = data.draw(_drawn(arch))
    base, ours = _ours(arch, config)
    directory = tmp_path_factory.mktemp("pz")
    save_adapterhub(ours, directory, name=NAME)
    diff = compare(_into_adapterhub(base, directory), ours, inputs())
    exact = arch == "bert" or config.original_ln_after
    limit = 0.0 if exact else 1e-5 * max(1.0, diff["scale"])
    grad_limit = 0.0 if exact else 1e-5 * max(1.0, diff["grad_scale"])  # one rounding, relative
    assert diff["out"] <= limit and diff["grad"] <= grad_limit, (config, diff)


def test_head_model_file_loads_in_adapterhub(tmp_path):
    base, ours = _ours("bert", BottleneckConfig.preset("double_seq_bn", use_gating=True), head=True)
    save_adapterhub(ours, tmp_path, name=NAME)
    diff = compare(_into_adapterhub(base, tmp_path), ours, inputs())
    assert diff["out"] == 0.0 and diff["grad"] == 0.0, diff


@pytest.mark.parametrize("arch", ARCHS)
def test_leave_out_and_per_layer_reduction_both_ways(arch, tmp_path):
    """leave_out and a per-layer reduction_factor place the same sites in both libraries."""
    config = BottleneckConfig.preset(
        "double_seq_bn",
        leave_out=[1],
        reduction_factor={"0": 4, "default": 16},
        dropout=0.1,
        init_weights_seed=3,
    )
    base, ours = _ours(arch, config)
    save_adapterhub(ours, tmp_path / "pz", name=NAME)
    ah = _into_adapterhub(base, tmp_path / "pz")
    diff = compare(ah, ours, inputs())
    assert diff["out"] == 0.0 and diff["grad"] == 0.0, diff
    ah.save_adapter(str(tmp_path / "ah"), NAME)
    back = load_adapterhub(copy.deepcopy(base), tmp_path / "ah")[0].eval()
    assert compare(ah, back, inputs())["out"] == 0.0
    assert [s.adapter.bottleneck_dim for s in bottleneck_sites(back).values()] == [8, 8]
