"""The injectors refuse bad names and bad LoRA arguments, say why, and change nothing.

Every failure path checks two things: the error names the problem, and the model is
exactly as it was (tensors, module objects and types, requires_grad flags).
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from inject_helpers import make_block, make_mlp
from torch import nn

from peft_zoo import InjectionError, LoRALinear, inject_ia3, inject_lora, inject_lora_recursive
from peft_zoo.models import TinyTransformer, TinyTransformerConfig
from peft_zoo.testing import assert_model_unchanged, fingerprint

# ----------------------------------------------------------------------------- bad input


def test_unknown_name_typo_suggests_close_matches():
    model = make_mlp()
    before = fingerprint(model)
    with pytest.raises(InjectionError) as info:
        inject_lora(model, ["encoder.2.branch.fc3"], rank=2)
    msg = str(info.value)
    assert "'encoder.2.branch.fc3'" in msg
    assert "encoder.2.branch.fc1" in msg and "encoder.2.branch.fc2" in msg
    assert_model_unchanged(model, before, what="typo name")


def test_unknown_bare_suffix_suggests_full_paths():
    model = make_mlp()
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
        (make_mlp, "encoder.1", "GELU"),
        (make_block, "attn.branch.norm", "LayerNorm"),
        (make_mlp, "encoder", "Sequential"),
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
    model = make_mlp()
    inject_lora(model, ["head"], rank=2)
    before = fingerprint(model)
    with pytest.raises(InjectionError, match="'head' already is a LoRALinear"):
        inject_lora(model, ["head"], rank=2)
    assert_model_unchanged(model, before, what="second injection into head")
    with pytest.raises(InjectionError, match="'head' already is a LoRALinear"):
        inject_ia3(model, ["head"])
    assert_model_unchanged(model, before, what="IA3 into a LoRA layer")


def test_targeting_the_base_of_a_lora_layer():
    model = make_mlp()
    inject_lora(model, ["head"], rank=2)
    before = fingerprint(model)
    with pytest.raises(InjectionError, match=r"'head\.base' belongs to the adapter layer 'head'"):
        inject_lora(model, ["head.base"], rank=2)
    assert_model_unchanged(model, before, what="head.base target")


def test_same_name_listed_twice():
    model = make_mlp()
    before = fingerprint(model)
    with pytest.raises(InjectionError, match=r"more than once: \['head'\]"):
        inject_lora(model, ["head", "encoder.0", "head"], rank=2)
    assert_model_unchanged(model, before, what="duplicate name")


def test_empty_name_list():
    model = make_mlp()
    before = fingerprint(model)
    with pytest.raises(InjectionError, match="no module names"):
        inject_lora(model, [], rank=2)
    assert_model_unchanged(model, before, what="empty list")


def test_root_name_empty_string():
    model = make_mlp()
    before = fingerprint(model)
    with pytest.raises(InjectionError, match="root module"):
        inject_lora(model, "", rank=2)
    assert_model_unchanged(model, before, what="root name")


def test_non_string_name_is_a_type_error():
    model = make_mlp()
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
    model = make_mlp()
    before = fingerprint(model)
    with pytest.raises(error, match=fragment):
        inject_lora(model, ["encoder.0", "head"], **kwargs)
    assert_model_unchanged(model, before, what=f"inject_lora(**{kwargs})")
    assert model.encoder[0].weight.requires_grad and model.head.weight.requires_grad
    assert type(model.head) is nn.Linear


def test_bad_lora_arguments_through_recursive_change_nothing():
    model = make_mlp()
    before = fingerprint(model)
    with pytest.raises(ValueError, match="rank"):
        inject_lora_recursive(model, rank=0)
    assert_model_unchanged(model, before, what="inject_lora_recursive(rank=0)")


def test_valid_and_invalid_names_mixed_injects_nothing():
    model = make_mlp()
    before = fingerprint(model)
    with pytest.raises(InjectionError) as info:
        inject_lora(model, ["encoder.0", "encoder.2.branch.fc3", "head", "encoder.1"], rank=2)
    msg = str(info.value)
    # every problem is reported, not only the first
    assert "encoder.2.branch.fc3" in msg and "'encoder.1' is a GELU" in msg
    assert_model_unchanged(model, before, what="half-valid name list")
    assert not any(isinstance(m, LoRALinear) for m in model.modules())


def test_failed_injection_leaves_earlier_adapters_and_warnings_alone():
    model = make_mlp()
    inject_lora(model, ["head"], rank=2)
    before = fingerprint(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stray warnings on the error path
        with pytest.raises(InjectionError):
            inject_lora(model, ["encoder.0", "head"], rank=2)
    assert_model_unchanged(model, before, what="second call naming an adapted layer")
