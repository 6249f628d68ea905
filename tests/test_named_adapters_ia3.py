"""Named IA³ adapters equal Hugging Face PEFT's: two IA³ adapters (output and feed-forward
forms) on BERT, GPT-2 and a LLaMA-style model, built on both sides with identical vectors,
switched, combined (their vectors multiply), disabled, deleted, trained, merged and moved
through PEFT's files by name. PEFT has no mixed batch for IA³; peft_zoo's equals running each
sample with its own adapter active.

Observed (CPU, float32, peft 0.21.2): every forward, gradient and file round trip 0; merging
two active adapters 1e-7 (PEFT multiplies the weight by each vector in turn, peft_zoo by
their product).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

peft = pytest.importorskip("peft")
pytest.importorskip("transformers")

from named_adapter_helpers import ARCHS, diff, ids, inner, logits, trainable_names  # noqa: E402
from peft_format_helpers import base, peft_config  # noqa: E402

import peft_zoo as pz  # noqa: E402
from peft_zoo.serving.named import (  # noqa: E402
    active_adapters,
    add_adapter,
    delete_adapter,
    disable_adapters,
    load_peft_adapter,
    named_adapter_layers,
    set_adapter,
    use_adapter_names,
)

CONFIGS = {
    "bert": (
        pz.IA3Config(target_modules=["key", "value", "dense"], feedforward_modules=["dense"]),
        pz.IA3Config(target_modules=["value", "query"]),
    ),
    "gpt2": (
        pz.IA3Config(target_modules=["c_attn", "c_proj"], feedforward_modules=["c_proj"]),
        pz.IA3Config(target_modules=["c_attn", "c_fc"]),
    ),
    "llama": (
        pz.IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]),
        pz.IA3Config(target_modules=["v_proj", "q_proj", "down_proj"], feedforward_modules=["down_proj"]),
    ),
}


def build(arch: str, seed: int) -> tuple[torch.nn.Module, peft.PeftModel]:
    first, second = CONFIGS[arch]
    ours, _ = pz.adapt_model(base(arch), first)
    add_adapter(ours, "b", second)
    theirs = peft.get_peft_model(base(arch), peft_config(first, arch))
    theirs.add_adapter("b", peft_config(second, arch))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for path, layer in named_adapter_layers(ours).items():
            for name in layer.adapter_names:
                vector = layer.ia3_l[name]
                vector.copy_(1.0 + 0.3 * torch.randn(vector.shape, generator=g))
                target = inner(theirs).get_submodule(path).ia3_l[name]
                target.copy_(vector.reshape(target.shape))
    return ours.eval(), theirs.eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_switch_combine_disable_delete_equal_peft(arch: str) -> None:
    ours, theirs = build(arch, seed=1)
    x = ids(3, 5)
    assert active_adapters(ours) == theirs.active_adapters == ["default"]
    for active in (["default"], ["b"], ["default", "b"]):
        set_adapter(ours, active)
        theirs.base_model.set_adapter(active)
        assert diff(logits(ours, x), logits(theirs, x)) == 0.0, active
    with disable_adapters(ours), theirs.disable_adapter():
        assert diff(logits(ours, x), logits(theirs, x)) == 0.0
        assert diff(logits(ours, x), logits(base(arch), x)) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        delete_adapter(ours, "default")
        theirs.delete_adapter("default")
    assert active_adapters(ours) == theirs.active_adapters == ["b"]
    assert diff(logits(ours, x), logits(theirs, x)) == 0.0


@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_and_trainable_sets_equal_peft(arch: str) -> None:
    ours, theirs = build(arch, seed=2)
    set_adapter(ours, "b")
    theirs.set_adapter("b")
    assert trainable_names(ours, False) == trainable_names(theirs, True)
    x = ids(2, 4)
    out_ours, out_theirs = ours(input_ids=x).logits, theirs(input_ids=x).logits
    weights = torch.randn(out_ours.shape, generator=torch.Generator().manual_seed(0))
    (out_ours * weights).sum().backward()
    (out_theirs * weights).sum().backward()
    for path, layer in named_adapter_layers(ours).items():
        if "b" in layer.adapter_names:
            theirs_grad = inner(theirs).get_submodule(path).ia3_l["b"].grad
            assert diff(layer.ia3_l["b"].grad, theirs_grad.reshape(-1)) == 0.0, path


@pytest.mark.parametrize("arch", ARCHS)
def test_merge_and_unload_equals_peft(arch: str) -> None:
    ours, theirs = build(arch, seed=3)
    set_adapter(ours, ["default", "b"])
    theirs.base_model.set_adapter(["default", "b"])
    x = ids(2, 5)
    adapted = logits(ours, x)
    merged = pz.merge_and_unload(ours)
    assert not any(type(m).__module__.startswith("peft_zoo") for m in merged.modules())
    assert diff(logits(merged, x), logits(theirs.merge_and_unload(), x)) <= 1e-6
    assert diff(logits(merged, x), adapted) <= 1e-6


@pytest.mark.parametrize("arch", ARCHS)
def test_mixed_batch_equals_one_adapter_per_sample(arch: str) -> None:
    ours, _ = build(arch, seed=4)
    names = ["b", "__base__", "default", "b"]
    x = ids(4, 3)
    with use_adapter_names(ours, names):
        mixed = logits(ours, x)
    for i, name in enumerate(names):
        if name == "__base__":
            expected = logits(base(arch), x[i : i + 1])
        else:
            set_adapter(ours, name)
            expected = logits(ours, x[i : i + 1])
        assert diff(mixed[i], expected[0]) <= 1e-6, name


@pytest.mark.parametrize("arch", ARCHS)
def test_files_both_ways_by_name(arch: str, tmp_path: Path) -> None:
    ours, theirs = build(arch, seed=5)
    x = ids(2, 5)
    set_adapter(ours, "b")
    expected = logits(ours, x)
    pz.save_peft(ours, tmp_path / "b", adapter_name="b")
    loaded = peft.PeftModel.from_pretrained(base(arch), tmp_path / "b").eval()
    assert diff(logits(loaded, x), expected) == 0.0
    theirs.save_pretrained(tmp_path / "theirs")
    model = base(arch)
    load_peft_adapter(model, tmp_path / "theirs", "default")
    load_peft_adapter(model, tmp_path / "theirs" / "b", "b")
    for name in ("default", "b"):
        set_adapter(model, name)
        theirs.set_adapter(name)
        assert diff(logits(model.eval(), x), logits(theirs, x)) == 0.0, name
