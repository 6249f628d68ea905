"""VeRA and OFT on real models through ``pz.adapt_model`` equal Hugging Face PEFT 0.21.2's.

Tiny random BERT (sequence classification), LLaMA and GPT-2 (causal LM) models, built from
``transformers`` configs, float32, eval mode. Each case adapts one copy with
``pz.adapt_model(copy, VeraConfig / OFTConfig)`` and another with ``peft.get_peft_model(copy,
peft.VeraConfig / peft.OFTConfig)`` with the same fields, then checks:

- the same modules are adapted, the trainable tensors have the same names (PEFT's names
  mapped to ours) and the trainable counts equal PEFT's ``get_nb_trainable_parameters()``;
- VeRA: one shared pair of PEFT's exact shape, bit-identical to PEFT's ``vera_A`` / ``vera_B``
  for the same ``projection_prng_key``; ``lambda_d`` starts at ``d_initial`` in both;
- with the same random non-zero adapter tensors in both (and, for VeRA, a new random shared
  pair): logits, the gradient of every trainable tensor, and ``merge_and_unload`` (merged
  logits and every merged weight) agree.

Observed (CPU, float32, peft 0.21.2), max |diff| over the fixed cases: VeRA on BERT, LLaMA
and GPT-2 (Conv1D, fan_in_fan_out): logits, gradients, merged logits and merged weights all
0 (bit-identical). OFT on BERT: logits, merged logits and weights 0, gradients <= 5e-10;
on LLaMA: logits 0, gradients <= 6e-8, merged logits <= 4e-8, merged weights <= 8e-9 (the
merge forms W R^T in another order than PEFT's (R W^T)^T). The tolerance is 1e-6. GPT-2's
Conv1D: PEFT and peft_zoo both refuse OFT on it. Bad configs raise a clear error and leave
the model unchanged (modules, tensors, requires_grad flags).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from vera_oft_helpers import (  # noqa: E402
    INPUTS,
    OFT_TARGETS,
    VERA_TARGETS,
    adapt_both,
    base_model,
    compare,
    peft_name,
    peft_vera_buffers,
    trainable,
    unchanged,
    vera_pair,
    vera_projections,
)

import peft_zoo as pz  # noqa: E402
from peft_zoo.injection.oft_config import OFTConfig  # noqa: E402
from peft_zoo.injection.surgery import InjectionError  # noqa: E402
from peft_zoo.injection.vera_config import VeraConfig  # noqa: E402

# ----------------------------------------------------------------------------- VeRA


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
@pytest.mark.parametrize("key", [0, 2**63 + 5])
def test_vera_projections_are_peft_s(arch: str, key: int) -> None:
    ours, theirs = vera_pair(arch, projection_prng_key=key, d_initial=0.25)
    proj, base = vera_projections(ours), theirs.base_model
    assert torch.equal(proj.vera_A, base.vera_A["default"])  # (r, in_max), bit-identical
    assert torch.equal(proj.vera_B, base.vera_B["default"])  # (out_max, r)
    names = [n for n, m in ours.named_modules() if isinstance(m, pz.VeRALinear)]
    layers: list[Any] = [theirs.base_model.model.get_submodule(n) for n in names]
    assert all(isinstance(m, peft.tuners.vera.VeraLayer) for m in layers)
    for name, layer in zip(names, layers, strict=True):  # d_initial, lambda_b = 0: the base model
        mine = ours.get_submodule(name)
        assert torch.equal(mine.vera_lambda_d, layer.vera_lambda_d["default"])
        assert torch.equal(mine.vera_lambda_d, torch.full_like(mine.vera_lambda_d, 0.25))
        assert torch.equal(mine.vera_lambda_b, layer.vera_lambda_b["default"])
    assert torch.equal(ours(**INPUTS).logits, base_model(arch)(**INPUTS).logits)


VERA_CASES = [
    ("bert", {}),
    ("bert", {"r": 3, "d_initial": -0.4, "bias": "vera_only"}),
    ("bert", {"bias": "all", "projection_prng_key": 7, "modules_to_save": ["classifier"]}),
    ("bert", {"modules_to_save": ["classifier"], "vera_dropout": 0.2}),
    ("llama", {}),
    ("llama", {"r": 11, "target_modules": ["q_proj", "down_proj"], "layers_to_transform": [1]}),
    ("gpt2", {}),
    ("gpt2", {"r": 2, "bias": "vera_only", "target_modules": ["c_fc"]}),
]


@pytest.mark.parametrize(("arch", "fields"), VERA_CASES)
def test_vera_matches_peft(arch: str, fields: dict[str, Any]) -> None:
    ours, theirs = vera_pair(arch, **fields)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # a new random shared pair, the same in both
        proj = vera_projections(ours)
        for mine, peft_tensor in zip((proj.vera_A, proj.vera_B), peft_vera_buffers(theirs), strict=True):
            assert mine.shape == peft_tensor.shape  # the pair covers the same targets as PEFT's
            value = torch.rand(mine.shape, generator=g) - 0.5
            mine.copy_(value), peft_tensor.copy_(value)
    compare(ours, theirs, seed=len(fields))


@settings(max_examples=4, deadline=None)
@given(
    arch=st.sampled_from(sorted(VERA_TARGETS)),
    pick=st.lists(st.integers(0, 3), min_size=1, max_size=3, unique=True),
    r=st.integers(1, 12),
    key=st.integers(0, 2**64 - 1),
    d_initial=st.floats(0.01, 2.0) | st.floats(-2.0, -0.01),
)
def test_vera_matches_peft_drawn(arch: str, pick: list[int], r: int, key: int, d_initial: float) -> None:
    """Any subset of targets (so any covering shape), rank, seed and d_initial; the pair from
    the seed itself, not overwritten."""
    targets = VERA_TARGETS[arch]
    chosen = sorted({targets[i % len(targets)] for i in pick})
    ours, theirs = vera_pair(arch, target_modules=chosen, r=r, projection_prng_key=key, d_initial=d_initial)
    proj = vera_projections(ours)
    assert torch.equal(proj.vera_A, theirs.base_model.vera_A["default"])
    assert torch.equal(proj.vera_B, theirs.base_model.vera_B["default"])
    compare(ours, theirs, seed=r)


def test_vera_init_weights_false_is_peft_s() -> None:
    """init_weights=False: PEFT's raw values, lambda_b = 1 and lambda_d random, in both."""
    ours, theirs = vera_pair("llama", init_weights=False)
    inner: Any = theirs.base_model.model
    for name, module in ours.named_modules():
        if isinstance(module, pz.VeRALinear):
            layer = inner.get_submodule(name)
            assert torch.equal(module.vera_lambda_b, layer.vera_lambda_b["default"])
            assert torch.equal(module.vera_lambda_b, torch.ones_like(module.vera_lambda_b))
            assert module.vera_lambda_d.shape == layer.vera_lambda_d["default"].shape
            assert module.vera_lambda_d.std() > 0.1


# ----------------------------------------------------------------------------- OFT

OFT_CASES = [
    ("bert", {"oft_block_size": 4}),
    ("bert", {"r": 4, "oft_block_size": 0}),  # block 4 on 16 inputs, 6 on 24
    ("bert", {"oft_block_size": 8, "coft": True, "eps": 0.3, "bias": "oft_only"}),
    ("bert", {"oft_block_size": 4, "block_share": True, "modules_to_save": ["classifier"]}),
    ("llama", {"oft_block_size": 8, "use_cayley_neumann": False}),
    ("llama", {"r": 2, "oft_block_size": 0, "num_cayley_neumann_terms": 7, "bias": "all"}),
    ("llama", {"oft_block_size": 4, "coft": True, "eps": 0.2, "block_share": True}),
    ("llama", {"oft_block_size": 2, "use_cayley_neumann": False, "coft": True, "eps": 0.05}),
]


@pytest.mark.parametrize(("arch", "fields"), OFT_CASES)
def test_oft_matches_peft(arch: str, fields: dict[str, Any]) -> None:
    fields = {"target_modules": OFT_TARGETS[arch], **fields}
    ours, theirs = adapt_both(arch, OFTConfig(**fields), peft.OFTConfig(**fields))
    assert torch.equal(ours(**INPUTS).logits, base_model(arch)(**INPUTS).logits)  # oft_R = 0: R = I
    compare(ours, theirs, seed=len(fields))


@settings(max_examples=4, deadline=None)
@given(
    arch=st.sampled_from(sorted(OFT_TARGETS)),
    blocks=st.sampled_from(
        [{"r": r, "oft_block_size": 0} for r in (1, 2, 4, 8)] + [{"oft_block_size": 2}, {"oft_block_size": 8}]
    ),
    coft=st.booleans(),
    eps=st.sampled_from([0.05, 0.5]),
    block_share=st.booleans(),
    neumann=st.booleans(),
    terms=st.integers(2, 8),
)
def test_oft_matches_peft_drawn(
    arch: str, blocks: dict[str, int], coft: bool, eps: float, block_share: bool, neumann: bool, terms: int
) -> None:
    """Any division (r or oft_block_size, sizes 16 and 24), COFT, sharing, either transform."""
    fields: dict[str, Any] = {"target_modules": OFT_TARGETS[arch], "coft": coft, "eps": eps}
    fields["block_share"] = block_share
    fields |= {"use_cayley_neumann": neumann, "num_cayley_neumann_terms": terms, **blocks}
    compare(*adapt_both(arch, OFTConfig(**fields), peft.OFTConfig(**fields)), seed=terms)


def test_oft_module_dropout_unused_in_training_as_in_peft() -> None:
    """module_dropout: PEFT 0.21.2 builds its multiplicative dropout but its Linear never calls
    it, so even in training mode (BERT's own dropout is 0 here) the outputs agree."""
    fields: dict[str, Any] = {
        "target_modules": OFT_TARGETS["bert"],
        "oft_block_size": 4,
        "module_dropout": 0.5,
    }
    ours, theirs = adapt_both("bert", OFTConfig(**fields), peft.OFTConfig(**fields))
    mine, peft_params = trainable(ours), trainable(theirs, peft_name)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in mine.items():
            value = 0.1 * torch.randn(p.shape, generator=g)
            p.copy_(value), peft_params[name].copy_(value)
    ours.train(), theirs.train()
    out = ours(**INPUTS).logits
    assert torch.equal(out, theirs(**INPUTS).logits)
    assert not torch.equal(out, base_model("bert")(**INPUTS).logits)


def test_oft_on_gpt2_conv1d_refused_by_both() -> None:
    """PEFT's OFT wraps nn.Linear only and raises a TypeError for GPT-2's Conv1D; so do we
    (an InjectionError naming the module), leaving the model unchanged."""
    with pytest.raises(TypeError, match="not supported"):
        peft.get_peft_model(base_model("gpt2"), peft.OFTConfig(target_modules=["c_attn"], oft_block_size=4))
    model = base_model("gpt2")
    with unchanged(model), pytest.raises(InjectionError, match=r"transformer\.h\.0\.attn\.c_attn.*Conv1D"):
        pz.adapt_model(model, OFTConfig(target_modules=["c_attn"], oft_block_size=4))


# ----------------------------------------------------------------------------- bad configs


@pytest.mark.parametrize(
    ("arch", "fields", "match"),
    [
        ("bert", {"oft_block_size": 5}, r"bert\.encoder\.layer\.0\.attention\.self\.query.*16"),
        ("bert", {"oft_block_size": 16}, r"layer\.0\.output\.dense' \(24 -> 16\).*divide in_features=24"),
        ("llama", {"r": 5, "oft_block_size": 0}, r"q_proj.*r=5 does not divide in_features=16"),
        ("llama", {"oft_block_size": 32}, r"larger than the base layer's in_features=16"),
    ],
)
def test_oft_non_dividing_block_refused_model_unchanged(
    arch: str, fields: dict[str, Any], match: str
) -> None:
    model = base_model(arch)
    config = OFTConfig(target_modules=OFT_TARGETS[arch], **fields)
    with unchanged(model), pytest.raises(InjectionError, match=match):
        pz.adapt_model(model, config)


@pytest.mark.parametrize(
    ("cls", "fields", "error", "match"),
    [
        (OFTConfig, {"r": 4, "oft_block_size": 4}, ValueError, "exactly one of r"),
        (OFTConfig, {"r": 0, "oft_block_size": 0}, ValueError, "exactly one of r"),
        (OFTConfig, {"oft_block_size": 4.0}, TypeError, "oft_block_size"),
        (OFTConfig, {"coft": "yes"}, TypeError, "coft"),
        (OFTConfig, {"eps": 0.0}, ValueError, "eps"),
        (OFTConfig, {"num_cayley_neumann_terms": True}, TypeError, "num_cayley_neumann_terms"),
        (OFTConfig, {"module_dropout": 1.5}, ValueError, "module_dropout"),
        (OFTConfig, {"bias": "lora_only"}, ValueError, "bias"),
        (OFTConfig, {"fan_in_fan_out": True}, ValueError, "fan_in_fan_out"),
        (VeraConfig, {"d_initial": 0}, ValueError, "d_initial"),
        (VeraConfig, {"d_initial": float("nan")}, ValueError, "d_initial"),
        (VeraConfig, {"r": "8"}, TypeError, "r must be an int"),
        (VeraConfig, {"r": 0}, ValueError, "r must be an int"),
        (VeraConfig, {"projection_prng_key": -1}, ValueError, "projection_prng_key"),
        (VeraConfig, {"projection_prng_key": 1.0}, TypeError, "projection_prng_key"),
        (VeraConfig, {"save_projection": "no"}, TypeError, "save_projection"),
        (VeraConfig, {"init_weights": 1}, TypeError, "init_weights"),
        (VeraConfig, {"vera_dropout": 1.0}, ValueError, "vera_dropout"),
        (VeraConfig, {"bias": "oft_only"}, ValueError, "bias"),
        (VeraConfig, {"bias": None}, TypeError, "bias"),
    ],
)
def test_bad_fields_refused_at_construction_and_at_adapt(
    cls: type, fields: dict[str, Any], error: type[Exception], match: str
) -> None:
    targets = ["query"]
    with pytest.raises(error, match=match):
        cls(target_modules=targets, **fields)
    config = cls(target_modules=targets)  # a field set after construction: adapt_model checks it
    for key, value in fields.items():
        setattr(config, key, value)
    model = base_model("bert")
    with unchanged(model), pytest.raises(error, match=match):
        pz.adapt_model(model, config)


@pytest.mark.parametrize("cls", [VeraConfig, OFTConfig])
def test_unknown_fields_refused(cls: Any) -> None:
    with pytest.raises(TypeError, match="rank"):
        cls(target_modules=["query"], rank=8)
    with pytest.raises(ValueError, match=r"unknown fields \['lora_alpha'\]"):
        cls.from_dict({"target_modules": ["query"], "lora_alpha": 8})
    config = cls(target_modules=["query"])
    assert cls.from_dict(config.to_dict()) == config


def test_vera_refusals_leave_model_unchanged() -> None:
    """A wrong explicit fan_in_fan_out (PEFT corrects it with a warning) and a target that
    matches nothing: errors naming the problem, nothing changed."""
    model = base_model("bert")
    with unchanged(model), pytest.raises(ValueError, match="fan_in_fan_out=True"):
        pz.adapt_model(model, VeraConfig(target_modules=["query"], fan_in_fan_out=True, r=4))
    with unchanged(model), pytest.raises(InjectionError):
        pz.adapt_model(model, VeraConfig(target_modules=["q_proj"], r=4))
    gpt2 = base_model("gpt2")
    with unchanged(gpt2), pytest.raises(ValueError, match="fan_in_fan_out=False"):
        pz.adapt_model(gpt2, VeraConfig(target_modules=["c_attn"], fan_in_fan_out=False, r=4))
