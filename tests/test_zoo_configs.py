"""The configs of the newer methods carry PEFT's field names and defaults, so a user can move
a config between the two libraries field by field; ``adapt_model`` dispatches each one, and
refuses anything that is not a config without changing the model."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

import peft_zoo as pz
from peft_zoo.injection.adapt import ADAPTERS
from peft_zoo.injection.config_base import TargetingConfig
from peft_zoo.injection.config_docs import CONFIGS
from peft_zoo.testing import assert_model_unchanged, fingerprint

peft = pytest.importorskip("peft")

# peft_zoo config -> PEFT's config of the same method
PAIRS = {
    pz.LoHaConfig: "LoHaConfig",
    pz.LoKrConfig: "LoKrConfig",
    pz.VeraConfig: "VeraConfig",
    pz.OFTConfig: "OFTConfig",
    pz.AdaLoraConfig: "AdaLoraConfig",
    pz.BOFTConfig: "BOFTConfig",
}


def _default(f: dataclasses.Field) -> object:  # type: ignore[type-arg]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


@pytest.mark.parametrize("ours", list(PAIRS), ids=lambda c: c.__name__)
def test_every_field_has_peft_name_and_default(ours: type) -> None:
    """The method's own fields. The targeting fields are shared by every peft_zoo config (e.g.
    ``fan_in_fan_out=None`` infers the layout per layer, ``exclude_modules`` for every method)."""
    theirs = {f.name: f for f in dataclasses.fields(getattr(peft, PAIRS[ours]))}
    shared = {f.name for f in dataclasses.fields(TargetingConfig)}
    own = [f for f in dataclasses.fields(ours) if f.name not in shared]
    assert own
    for f in own:
        assert f.name in theirs, f"{ours.__name__}.{f.name} is not a field of peft.{PAIRS[ours]}"
        mine, other = _default(f), _default(theirs[f.name])
        if f.name in ("rank_pattern", "alpha_pattern") or mine == other:
            continue  # PEFT: None or {} for "no pattern"; peft_zoo: always a dict
        pytest.fail(f"{ours.__name__}.{f.name} defaults to {mine!r}, PEFT to {other!r}")


@pytest.mark.parametrize("ours", list(PAIRS), ids=lambda c: c.__name__)
def test_each_config_is_dispatched_documented_and_a_targeting_config(ours: type) -> None:
    assert issubclass(ours, TargetingConfig)
    assert any(issubclass(ours, key) for key in ADAPTERS)
    assert ours in CONFIGS  # so docs/configs.md shows its fields
    for f in dataclasses.fields(ours):
        assert f.metadata.get("help"), f"{ours.__name__}.{f.name} has no help text"


@pytest.mark.parametrize("config", [None, "lora", {"r": 8}, nn.Linear(2, 2), object()])
def test_adapt_model_refuses_what_is_not_a_config(config: object) -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    before = fingerprint(model)
    with pytest.raises(TypeError, match="config must be a peft_zoo config"):
        pz.adapt_model(model, config)
    assert_model_unchanged(model, before, what="a refused config")


@pytest.mark.parametrize(
    "config",
    [
        pz.LoHaConfig(r=2, target_modules=["0"]),
        pz.LoKrConfig(r=2, target_modules=["0"]),
        pz.VeraConfig(r=2, target_modules=["0"]),
        pz.OFTConfig(oft_block_size=2, target_modules=["0"]),
        pz.BOFTConfig(boft_block_size=2, target_modules=["0"]),
        pz.AdaLoraConfig(init_r=2, target_r=1, total_step=5, target_modules=["0"]),
        pz.LoraConfig(rank=2, target_modules=["0"]),
    ],
    ids=lambda c: type(c).__name__,
)
def test_a_target_that_is_not_a_layer_the_method_adapts_changes_nothing(config: TargetingConfig) -> None:
    """A LayerNorm named as the target: refused, naming it, before anything changes."""
    model = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 4))
    before = fingerprint(model)
    with pytest.raises(pz.InjectionError):
        pz.adapt_model(model, config)
    assert_model_unchanged(model, before, what="a target of the wrong type")
    adapted, params = pz.adapt_model(model, dataclasses.replace(config, target_modules=["1"]))
    assert isinstance(adapted[1], pz.AdapterModule) and params
    assert all(p.requires_grad for p in params)
    assert not any(p.requires_grad for p in adapted[0].parameters())
    with torch.no_grad():
        assert adapted(torch.randn(2, 4)).shape == (2, 4)


@pytest.mark.parametrize("method", ["lora", "vera", "adalora"])
def test_bias_all_never_trains_the_frozen_original_of_modules_to_save(method: str) -> None:
    """PEFT's bias="all" trains every bias except the original kept beside a modules_to_save
    copy; the trainable counts agree."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=24,
        num_labels=3,
    )
    model = transformers.BertForSequenceClassification(config)
    common = {"target_modules": ["query"], "bias": "all", "modules_to_save": ["classifier"]}
    ours_config, theirs_config = {
        "lora": (pz.LoraConfig(rank=2, **common), peft.LoraConfig(r=2, **common)),
        "vera": (pz.VeraConfig(r=2, **common), peft.VeraConfig(r=2, **common)),
        "adalora": (
            pz.AdaLoraConfig(init_r=2, target_r=1, total_step=4, **common),
            peft.AdaLoraConfig(init_r=2, target_r=1, total_step=4, **common),
        ),
    }[method]
    ours, _ = pz.adapt_model(copy.deepcopy(model), ours_config)
    theirs = peft.get_peft_model(copy.deepcopy(model), theirs_config)
    assert pz.count_parameters(ours)[0] == theirs.get_nb_trainable_parameters()[0]
    original = ours.classifier.original_module
    assert not any(p.requires_grad for p in original.parameters())
    assert ours.classifier.trained_module.bias.requires_grad
