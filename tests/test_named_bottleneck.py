"""Named bottleneck adapters (AdapterHub's add_adapter / set_active_adapters / delete_adapter /
save_adapter / load_adapter(load_as=)) on tiny BERT, GPT-2 and LLaMA models: each named
adapter equals a model adapted with only that adapter (outputs and gradients, difference 0)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import torch
from adapterhub_models import ARCHS, batch, hidden, tiny
from torch import nn

import peft_zoo as pz
from peft_zoo.injection.bottleneck_placement import remove_bottleneck
from peft_zoo.serving.named import (
    active_adapters,
    add_adapter,
    delete_adapter,
    disable_adapters,
    list_adapters,
    load_adapterhub_adapter,
    set_adapter,
    use_adapter_names,
)
from peft_zoo.serving.named_bottleneck import NamedBnSite, named_bn_sites

pytest.importorskip("transformers")

# "a" at the output sites of every layer; "b" at both sites of layer 0 only, another shape.
CONFIGS = {
    "a": pz.SeqBnConfig(),
    "b": pz.DoubleSeqBnConfig(reduction_factor=4, leave_out=[1], non_linearity="relu"),
}


def _two(arch: str) -> tuple[nn.Module, dict[str, nn.Module]]:
    """A model holding "a" and "b" ("a" active) and one reference per adapter, equal weights."""
    model = tiny(arch)
    refs = {n: copy.deepcopy(model) for n in CONFIGS}
    g = torch.Generator().manual_seed(3)
    for name, config in CONFIGS.items():
        add_adapter(model, name, config)
        pz.adapt_model(refs[name], config)
    with torch.no_grad():
        for path, site in named_bn_sites(model).items():
            for name in site.adapter_names:
                theirs = refs[name].get_submodule(path).adapter
                for ours, other in zip(site.adapters[name].parameters(), theirs.parameters(), strict=True):
                    ours.copy_(torch.randn(ours.shape, generator=g) * 0.5)
                    other.copy_(ours)
    return model, refs


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    model.zero_grad()
    hidden(model).square().sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ARCHS)
def test_switching_runs_each_adapter_exactly_and_trains_only_it(arch: str) -> None:
    model, refs = _two(arch)
    assert list_adapters(model) == ["b", "a"]  # module order: layer 0's attention site holds "b" only
    for name in ("a", "b", "a"):
        set_adapter(model, name)
        assert active_adapters(model) == [name]
        assert torch.equal(hidden(model), hidden(refs[name]))
        ours, theirs = _grads(model), _grads(refs[name])
        assert ours and all(f".adapters.{name}." in k for k in ours)
        mapped = {k.replace(f".adapters.{name}.", ".adapter."): v for k, v in ours.items()}
        assert mapped.keys() == theirs.keys()
        assert max((mapped[k] - theirs[k]).abs().max().item() for k in theirs) == 0.0
    assert not torch.equal(hidden(refs["a"]), hidden(refs["b"]))  # the two adapters differ


@pytest.mark.parametrize("arch", ARCHS)
def test_disable_and_a_mixed_batch(arch: str) -> None:
    model, refs = _two(arch)
    plain = tiny(arch)
    with disable_adapters(model):
        assert torch.equal(hidden(model), hidden(plain))
    assert torch.equal(hidden(model), hidden(refs["a"]))  # back after the block
    outs = {"a": hidden(refs["a"]), "b": hidden(refs["b"]), "__base__": hidden(plain)}
    for names in (["b", "a"], ["__base__", "b"], ["a", "a"]):
        with use_adapter_names(model, names):
            mixed = hidden(model)
        for i, n in enumerate(names):
            assert (mixed[i] - outs[n][i]).abs().max().item() <= 1e-5  # sub-batches: a rounding apart
    with pytest.raises(ValueError, match="Length of `adapter_names`"), use_adapter_names(model, ["a"]):
        hidden(model)


@pytest.mark.parametrize("arch", ARCHS)
def test_delete_and_unload(arch: str) -> None:
    model, refs = _two(arch)
    set_adapter(model, "b")
    with pytest.warns(UserWarning, match="Setting active adapter to a"):
        delete_adapter(model, "b")
    assert list_adapters(model) == ["a"] and active_adapters(model) == ["a"]
    assert torch.equal(hidden(model), hidden(refs["a"]))
    with pytest.raises(pz.UnloadError, match="non-linearity"):
        pz.merge_and_unload(model)
    pz.unload(model)
    assert not named_bn_sites(model)
    assert torch.equal(hidden(model), hidden(tiny(arch)))


@pytest.mark.parametrize("arch", ARCHS)
def test_adapt_model_then_add_keeps_default(arch: str) -> None:
    model = tiny(arch)
    pz.adapt_model(model, pz.SeqBnConfig())
    before = hidden(model)
    add_adapter(model, "b", pz.ParBnConfig())
    assert list_adapters(model) == ["default", "b"] and active_adapters(model) == ["default"]
    assert torch.equal(hidden(model), before)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapters.default." in n for n in trainable)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_one_by_name_and_load_as_a_new_name(arch: str, tmp_path: Path) -> None:
    model, refs = _two(arch)
    pz.save_adapterhub(model, tmp_path / "ours", name="b")
    pz.save_adapterhub(refs["b"], tmp_path / "ref", name="b")
    for f in ("adapter_config.json", "adapter.safetensors"):  # the same file as the plain model's
        assert (tmp_path / "ours" / f).read_bytes() == (tmp_path / "ref" / f).read_bytes()
    assert json.loads((tmp_path / "ours" / "adapter_config.json").read_text())["name"] == "b"
    params = load_adapterhub_adapter(model, tmp_path / "ours", "c")
    assert list_adapters(model) == ["b", "c", "a"] and active_adapters(model) == ["a"]
    assert params and not any(p.requires_grad for p in params)
    set_adapter(model, "c")
    assert torch.equal(hidden(model), hidden(refs["b"]))
    fresh = tiny(arch)  # the plain loader reads the named file, and a bare model loads it by name
    pz.load_adapterhub(fresh, tmp_path / "ours")
    assert torch.equal(hidden(fresh), hidden(refs["b"]))
    bare = tiny(arch)
    load_adapterhub_adapter(bare, tmp_path / "ref", "x")
    assert list_adapters(bare) == ["x"] and torch.equal(hidden(bare), hidden(refs["b"]))
    saved = safetensors.torch.load_file(str(tmp_path / "ours" / "adapter.safetensors"))
    assert saved and all(".adapters.b." in k for k in saved)


def _refused(model: nn.Module, call: Callable[[], object], error: type[Exception], words: str) -> None:
    state, names, active = _state(model), list_adapters(model), active_adapters(model)
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(error, match=words):
        call()
    assert list_adapters(model) == names and active_adapters(model) == active
    after = _state(model)
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    assert [p.requires_grad for p in model.parameters()] == flags


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_bad_input_is_refused_and_changes_nothing(arch: str, tmp_path: Path) -> None:
    model, refs = _two(arch)
    pz.save_adapterhub(model, tmp_path / "a", name="a")
    cases = [
        (lambda: set_adapter(model, "zzz"), ValueError, "no adapter named 'zzz'"),
        (lambda: set_adapter(model, ["a", "b"]), ValueError, "one at a time"),
        (lambda: add_adapter(model, "a", pz.SeqBnConfig()), ValueError, "already exists"),
        (lambda: add_adapter(model, "l", pz.LoraConfig(target_modules=["query", "c_attn"])), ValueError,
         "different peft types"),
        (lambda: delete_adapter(model, "zzz"), ValueError, "no adapter named"),
        (lambda: pz.save_adapterhub(model, tmp_path / "z", name="zzz"), pz.AdapterHubFormatError,
         "no adapter named 'zzz'"),
        (lambda: pz.load_adapterhub(model, tmp_path / "a"), pz.AdapterHubFormatError, "load_adapterhub_adapter"),
        (lambda: load_adapterhub_adapter(model, tmp_path / "a", "a"), ValueError, "already exists"),
        (lambda: load_adapterhub_adapter(model, tmp_path / "none", "n"), pz.AdapterHubFormatError,
         "not a directory"),
        (lambda: load_adapterhub_adapter(model, tmp_path / "a", "n", is_trainable="yes"), TypeError, "bool"),
        (lambda: add_adapter(model, "x", pz.SeqBnConfig(leave_out=[0, 1])), pz.InjectionError, "no adapter sites"),
    ]  # fmt: skip
    for call, error, words in cases:
        _refused(model, call, error, words)
    assert not (tmp_path / "z").exists()
    file = tmp_path / "a" / "adapter.safetensors"  # a key gone: refused after the sites were planned
    tensors = safetensors.torch.load_file(str(file))
    safetensors.torch.save_file(dict(list(tensors.items())[1:]), str(file))
    (tmp_path / "a" / "pytorch_adapter.bin").unlink()
    load = lambda: load_adapterhub_adapter(model, tmp_path / "a", "n")  # noqa: E731
    _refused(model, load, pz.AdapterHubFormatError, "missing keys")
    assert torch.equal(hidden(model), hidden(refs["a"]))


def test_a_failed_build_on_a_plain_model_changes_nothing() -> None:
    model = tiny("gpt2")
    pz.adapt_model(model, pz.SeqBnConfig())
    bad = pz.BottleneckConfig.preset("seq_bn", residual_before_ln="post_add")
    _refused(model, lambda: add_adapter(model, "p", bad), pz.InjectionError, "post_add")
    assert not named_bn_sites(model)  # still adapt_model's plain sites
    lora = tiny("bert")
    pz.adapt_model(lora, pz.LoraConfig(target_modules=["query"]))
    _refused(lora, lambda: add_adapter(lora, "b", pz.SeqBnConfig()), ValueError, "different peft types")


def test_a_site_refuses_several_active_names_and_a_pre_ln_site_needs_its_slot() -> None:
    model, _ = _two("bert")
    site = next(iter(named_bn_sites(model).values()))
    with pytest.raises(ValueError, match="one at a time"):
        site.set_active(["a", "b"])
    with pytest.raises(ValueError, match="ResidualSlot"):
        NamedBnSite(nn.Linear(2, 2), "output_adapter", post_norm=False, slot=None)
    assert batch()["input_ids"].shape == (2, 6)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_the_bottleneck_kind_stays_and_remove_bottleneck_takes_named_sites_out(arch: str) -> None:
    model, _ = _two(arch)
    _refused(model, lambda: pz.adapt_model(model, pz.SeqBnConfig()), pz.InjectionError, "already holds")
    delete_adapter(model, "b")
    delete_adapter(model, "a")  # the last one: no adapter left, the sites run their modules
    assert list_adapters(model) == [] and active_adapters(model) == []
    assert torch.equal(hidden(model), hidden(tiny(arch)))
    lora = pz.LoraConfig(target_modules=["query", "c_attn"])
    _refused(model, lambda: add_adapter(model, "l", lora), ValueError, "different peft types")
    add_adapter(model, "c", pz.ParBnConfig())
    assert list_adapters(model) == ["c"] and active_adapters(model) == ["c"]
    remove_bottleneck(model)
    assert not named_bn_sites(model) and torch.equal(hidden(model), hidden(tiny(arch)))
