"""peft_zoo's bottleneck adapters equal AdapterHub's (adapters 1.3.0) on BERT, GPT-2 and LLaMA:
identical weights (AdapterHub's, randomised, through its own file format), outputs and every
adapter gradient compared; the configs are AdapterHub's presets and drawn combinations of
every option."""

from __future__ import annotations

import copy

import pytest
import torch
from ah_helpers import (
    ARCHS,
    NAME,
    adapterhub_model,
    base_model,
    compare,
    config_kwargs,
    inputs,
    output,
    peft_zoo_from_file,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from peft_zoo.injection.bottleneck_config import BottleneckConfig
from peft_zoo.injection.bottleneck_placement import adapt_bottleneck
from peft_zoo.interop.adapterhub import adapterhub_parameters

PRESETS = ("seq_bn", "double_seq_bn", "par_bn", "scaled_par_bn")


def _round_trip(arch: str, config: BottleneckConfig, tmp_path, head: bool = False) -> dict[str, float]:
    base = base_model(arch, head=head)
    ah = adapterhub_model(base, config)
    ah.save_adapter(str(tmp_path), NAME)
    ours = peft_zoo_from_file(base, tmp_path)
    return compare(ah, ours, inputs())


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("arch", ARCHS)
def test_presets_equal_adapterhub(arch, preset, tmp_path):
    config = BottleneckConfig.preset(preset)
    base = base_model(arch)
    diff = _round_trip(arch, config, tmp_path)
    assert diff["out"] == 0.0 and diff["grad"] == 0.0, diff
    # the adapter matters: AdapterHub's output is not the base model's
    ours = peft_zoo_from_file(base, tmp_path)
    with torch.no_grad():
        assert (output(ours, inputs()) - output(base, inputs())).abs().max() > 1e-3


@st.composite
def _drawn(draw, arch):
    kw = config_kwargs(draw, arch)
    return BottleneckConfig.preset(kw.pop("preset"), **kw)


@pytest.mark.parametrize("arch", ARCHS)
@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_drawn_configs_equal_adapterhub(arch, data, tmp_path_factory):
    config = data.draw(_drawn(arch))
    diff = _round_trip(arch, config, tmp_path_factory.mktemp("ah"))
    # Bit for bit, except a pre-LN site without original_ln_after: the block's own "x +" meets
    # our "out - x" (one rounding, see BnAdapter.residual_delta).
    exact = arch == "bert" or config.original_ln_after
    limit = 0.0 if exact else 1e-5 * max(1.0, diff["scale"])
    grad_limit = 0.0 if exact else 1e-5 * max(1.0, diff["grad_scale"])  # one rounding, relative
    assert diff["out"] <= limit and diff["grad"] <= grad_limit, (config, diff)


@pytest.mark.parametrize("init", ["bert", "mam_adapter", "houlsby"])
def test_seeded_initialisation_equals_adapterhub(init):
    """With init_weights_seed, both libraries draw the same initial adapter weights."""
    config = BottleneckConfig.preset("double_seq_bn", init_weights=init, init_weights_seed=7, use_gating=True)
    base = base_model("bert")
    import adapters
    from adapters import BnConfig

    from peft_zoo.interop.adapterhub import adapterhub_config_dict

    ah = copy.deepcopy(base)
    adapters.init(ah)
    ah.add_adapter(NAME, config=BnConfig(**adapterhub_config_dict(config)))
    ours, _ = adapt_bottleneck(copy.deepcopy(base), config)
    ah_state = {k: v for k, v in ah.state_dict().items() if f".adapters.{NAME}." in k}
    our_state = adapterhub_parameters(ours, NAME)
    assert set(ah_state) == set(our_state)
    for key, value in ah_state.items():
        if ".gate." in key and init == "houlsby":
            continue  # AdapterHub leaves the gate at its unseeded construction values there
        assert torch.equal(value, our_state[key].detach()), key


def test_head_model_keys_load_into_the_base_model(tmp_path):
    """AdapterHub's file of a model with a head (keys under "bert.") loads into the bare model."""
    config = BottleneckConfig.preset("seq_bn", ln_after=True)
    head = base_model("bert", head=True)
    ah = adapterhub_model(head, config)
    ah.save_adapter(str(tmp_path), NAME)
    assert any(k.startswith("bert.") for k in torch.load(tmp_path / "pytorch_adapter.bin", weights_only=True))
    ours = peft_zoo_from_file(head, tmp_path)
    assert compare(ah, ours, inputs())["out"] == 0.0
    bare = base_model("bert")
    bare_ours = peft_zoo_from_file(bare, tmp_path)
    ah_bare = ah.bert
    with torch.no_grad():
        diff = (output(ah_bare, inputs()) - output(bare_ours, inputs())).abs().max().item()
    assert diff == 0.0


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_pre_ln_sites_without_original_ln_after_are_one_rounding_apart(arch, tmp_path):
    config = BottleneckConfig.preset("seq_bn", original_ln_after=False)
    diff = _round_trip(arch, config, tmp_path)
    assert diff["out"] <= 1e-5 * max(1.0, diff["scale"]), diff
    assert diff["grad"] <= 1e-5 * max(1.0, diff["grad_scale"]), diff
