"""Named adapters equal Hugging Face PEFT's: two LoRA adapters on BERT, GPT-2 and a LLaMA-style
model (grouped-query attention), built by peft_zoo (``adapt_model`` + ``add_adapter``) and by
PEFT (``get_peft_model`` + ``add_adapter``) with identical weights, then switched, combined,
disabled, deleted, mixed per sample, trained and merged the same way on both sides.

Observed (CPU, float32, peft 0.21.2): every single- and multi-adapter forward, the disabled
model and deletes: difference 0 (the same ops in the same order); gradients of the active
adapter 0; merge_and_unload within 6e-8 (the merged sums round differently); mixed batches (``adapter_names=``) within 7e-7 (peft_zoo gathers zero-padded
adapter tables per sample, PEFT slices sub-batches: the same products, summed in another order;
tolerance 2e-6 on logits of size ~0.2).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

peft = pytest.importorskip("peft")
pytest.importorskip("transformers")

from named_adapter_helpers import ARCHS, build_pair, diff, ids, inner, logits, trainable_names  # noqa: E402
from peft_format_helpers import base  # noqa: E402

import peft_zoo as pz  # noqa: E402
from peft_zoo.serving.named import (  # noqa: E402
    active_adapters,
    delete_adapter,
    disable_adapters,
    list_adapters,
    named_adapter_layers,
    set_adapter,
    use_adapter_names,
)

MIXED_ATOL = 2e-6  # float32: per-sample gathers vs sub-batch slices sum in another order (observed <= 7e-7)


@pytest.mark.parametrize("arch", ARCHS)
def test_switching_and_combining_equal_peft(arch: str) -> None:
    pair, x = build_pair(arch, seed=1), ids(3, 6)
    assert sorted(list_adapters(pair.ours)) == ["b", "default"]
    assert active_adapters(pair.ours) == pair.theirs.active_adapters == ["default"]
    base_out = logits(base(arch), x)
    outs = {}
    for name in ("default", "b"):
        set_adapter(pair.ours, name)
        pair.theirs.set_adapter(name)
        outs[name] = logits(pair.ours, x)
        assert diff(outs[name], logits(pair.theirs, x)) == 0.0, name
        assert diff(outs[name], base_out) > 0.02 * base_out.abs().max().item()  # it does something
    set_adapter(pair.ours, ["b", "default"])  # both at once: the updates add up
    pair.theirs.base_model.set_adapter(["b", "default"])
    assert active_adapters(pair.ours) == ["b", "default"]
    assert diff(logits(pair.ours, x), logits(pair.theirs, x)) == 0.0
    assert diff(outs["default"], outs["b"]) > 0.02 * base_out.abs().max().item()


@pytest.mark.parametrize("arch", ARCHS)
def test_disable_context_equals_peft_and_the_base(arch: str) -> None:
    pair, x = build_pair(arch, seed=2), ids(2, 5)
    set_adapter(pair.ours, "b")
    pair.theirs.set_adapter("b")
    before = logits(pair.ours, x)
    with disable_adapters(pair.ours), pair.theirs.disable_adapter():
        ours = logits(pair.ours, x)
        assert diff(ours, logits(pair.theirs, x)) == 0.0
        assert diff(ours, logits(base(arch), x)) == 0.0
    assert diff(logits(pair.ours, x), before) == 0.0  # enabled again after the block


@pytest.mark.parametrize("arch", ARCHS)
def test_delete_follows_peft(arch: str) -> None:
    pair, x = build_pair(arch, seed=3), ids(2, 5)
    with pytest.warns(UserWarning, match="Setting active adapter to b"):
        delete_adapter(pair.ours, "default")  # the active one: the first remaining takes over
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pair.theirs.delete_adapter("default")
    assert active_adapters(pair.ours) == pair.theirs.active_adapters == ["b"]
    assert list_adapters(pair.ours) == ["b"]
    assert not any("default" in n for n, _ in pair.ours.named_parameters())
    assert diff(logits(pair.ours, x), logits(pair.theirs, x)) == 0.0
    assert trainable_names(pair.ours, False) == trainable_names(pair.theirs, True)
    delete_adapter(pair.ours, "b")  # the last one: no adapter left, the base model
    pair.theirs.delete_adapter("b")
    assert active_adapters(pair.ours) == pair.theirs.active_adapters == []
    assert diff(logits(pair.ours, x), logits(base(arch), x)) == 0.0


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("strategy", ["auto", "bmm", "bag", "dense", "loop"])
@pytest.mark.parametrize("tokens", [1, 6])
def test_mixed_batch_equals_peft(arch: str, strategy: str, tokens: int) -> None:
    pair, x = build_pair(arch, seed=4), ids(5, tokens, seed=tokens)
    for layer in named_adapter_layers(pair.ours).values():
        layer.strategy = strategy
    names = ["b", "__base__", "default", "b", "default"]
    with use_adapter_names(pair.ours, names):
        ours = logits(pair.ours, x)
    with torch.no_grad():
        theirs = pair.theirs(input_ids=x, adapter_names=names).logits
    assert diff(ours, theirs) <= MIXED_ATOL
    for i, name in enumerate(names):  # each sample as if its adapter were the active one
        if name == "__base__":
            assert diff(ours[i], logits(base(arch), x[i : i + 1])[0]) <= MIXED_ATOL
        else:
            set_adapter(pair.ours, name)
            assert diff(ours[i], logits(pair.ours, x[i : i + 1])[0]) <= MIXED_ATOL
    assert active_adapters(pair.ours) == ["default"]  # the last set_adapter; routing left no trace


@settings(max_examples=8, deadline=None)
@given(
    arch=st.sampled_from(ARCHS),
    names=st.lists(st.sampled_from(["default", "b", "__base__"]), min_size=1, max_size=6),
    tokens=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_mixed_batch_property(arch: str, names: list[str], tokens: int, seed: int) -> None:
    pair, x = build_pair(arch, seed=seed), ids(len(names), tokens, seed=seed)
    with use_adapter_names(pair.ours, names):
        ours = logits(pair.ours, x)
    with torch.no_grad():
        theirs = pair.theirs(input_ids=x, adapter_names=names).logits
    assert diff(ours, theirs) <= MIXED_ATOL, (arch, names, tokens, seed)


@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_of_the_active_adapter_equal_peft(arch: str) -> None:
    pair, x = build_pair(arch, seed=5), ids(2, 5)
    set_adapter(pair.ours, "b")
    pair.theirs.set_adapter("b")
    assert trainable_names(pair.ours, False) == trainable_names(pair.theirs, True)
    assert all(".b" in n for n in trainable_names(pair.ours, False))
    g = torch.Generator().manual_seed(0)
    out_ours, out_theirs = pair.ours(input_ids=x).logits, pair.theirs(input_ids=x).logits
    weights = torch.randn(out_ours.shape, generator=g)
    (out_ours * weights).sum().backward()
    (out_theirs * weights).sum().backward()
    for path, layer in named_adapter_layers(pair.ours).items():
        target = inner(pair.theirs).get_submodule(path)
        for name in layer.adapter_names:
            for ours_p, theirs_p in ((layer.lora_A[name], target.lora_A[name].weight),
                                     (layer.lora_B[name], target.lora_B[name].weight)):  # fmt: skip
                if name == "b":
                    assert diff(ours_p.grad, theirs_p.grad) == 0.0, (path, name)
                else:
                    assert ours_p.grad is None and theirs_p.grad is None


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("active", [["b"], ["default", "b"]])
def test_merge_and_unload_folds_the_active_adapters_as_peft(arch: str, active: list[str]) -> None:
    pair, x = build_pair(arch, seed=6), ids(2, 5)
    set_adapter(pair.ours, active)
    pair.theirs.base_model.set_adapter(active)
    adapted = logits(pair.ours, x)
    merged = pz.merge_and_unload(pair.ours)
    theirs = pair.theirs.merge_and_unload()
    assert not any(type(m).__module__.startswith("peft_zoo") for m in merged.modules())
    assert diff(logits(merged, x), logits(theirs, x)) <= 1e-6
    assert diff(logits(merged, x), adapted) <= 1e-6


@pytest.mark.parametrize("arch", ARCHS)
def test_unload_gives_back_the_base_model(arch: str) -> None:
    pair, x = build_pair(arch, seed=7), ids(2, 5)
    plain = pz.unload(pair.ours)
    assert not any(type(m).__module__.startswith("peft_zoo") for m in plain.modules())
    assert diff(logits(plain, x), logits(base(arch), x)) == 0.0


class _Scaled(torch.nn.Module):
    """A layer from outside injection/ that tells unload how to take it apart (SelfUnloading)."""

    def __init__(self, base: torch.nn.Linear, factor: float, refuse: str | None = None) -> None:
        super().__init__()
        self.base, self.factor, self.refuse = base, factor, refuse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) * self.factor

    def unload_refusal(self, merge: bool) -> str | None:
        return self.refuse

    @torch.no_grad()
    def unload_replacement(self, merge: bool) -> torch.nn.Module:
        if merge:
            self.base.weight.mul_(self.factor)
            self.base.bias.mul_(self.factor)
        return self.base


def test_merge_and_unload_follow_a_layers_own_unload_protocol() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(_Scaled(torch.nn.Linear(4, 3), 2.0), torch.nn.ReLU())
    x = torch.randn(5, 4)
    expected = model(x)
    merged = pz.merge_and_unload(model)
    assert isinstance(merged[0], torch.nn.Linear) and torch.allclose(merged(x), expected)
    refusing = torch.nn.Sequential(_Scaled(torch.nn.Linear(4, 3), 2.0, refuse="it is stubborn"))
    with pytest.raises(pz.UnloadError, match=r"'0' is a _Scaled: it is stubborn.*not changed"):
        pz.unload(refusing)
    assert isinstance(refusing[0], _Scaled)
