"""AdaLoRA on real models: ``adapt_model(model, AdaLoraConfig(...))`` with the config's
``allocator`` and ``regularised_loss`` equals Hugging Face PEFT 0.21.2's ``AdaLoraModel`` with
``update_and_allocate``, on tiny BERT (sequence classification, the classifier in
modules_to_save), LLaMA and GPT-2 (Conv1D, fan_in_fan_out inferred; PEFT forces it to True).

Both copies of a model hold the same random, nonzero P, λ, Q (and classifier); then

- the same layers are adapted and the trainable parameter counts agree;
- logits, the loss *with* the orthogonality term (PEFT adds it inside its forward; here
  ``regularised_loss``) and the gradients of every lora_A / lora_E / lora_B agree;
- a few SGD steps on the same batch, with PEFT's ``update_and_allocate(step)`` and our
  ``RankAllocator.step(model, step)`` on a schedule short enough to prune (warm-up, cubic
  budget, final frozen pattern), give the same rank pattern, the same zeros in λ and the same
  weights after every step;
- ``merge_and_unload`` then gives the same outputs as PEFT's.

Observed (CPU, float32, peft 0.21.2, all three models): logits, regularised losses,
gradients, the weights after each of 8 training steps and the merged logits bit-identical to
PEFT's; the same rank pattern at every step; merged vs unmerged logits within 6e-8.
"""

from __future__ import annotations

import copy
import warnings
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
from peft_zoo.adalora import AdaLoRALinear, adalora_layers  # noqa: E402
from peft_zoo.injection.adalora_config import AdaLoraConfig  # noqa: E402
from peft_zoo.injection.unload import merge_and_unload  # noqa: E402
from peft_zoo.testing import assert_close, assert_model_unchanged, fingerprint  # noqa: E402

transformers.utils.logging.set_verbosity_error()

ARCHS: dict[str, tuple[tuple[str, ...], str]] = {  # targets a config may use, PEFT task type
    "bert": (("query", "key", "value", "dense"), "SEQ_CLS"),
    "llama": (("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), "CAUSAL_LM"),
    "gpt2": (("c_attn", "c_proj", "c_fc"), "CAUSAL_LM"),
}
VOCAB, LABELS = 32, 3
MAX_DIFF: dict[str, float] = {}  # what each comparison observed, largest over the run


def base_model(arch: str) -> nn.Module:
    """A tiny random model (float32, eval, dropout off) built from a transformers config."""
    return tiny_hf(arch, vocab=VOCAB)


def batch(arch: str, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (2, 6), generator=g)  # (B, T)
    labels = torch.randint(0, LABELS, (2,), generator=g) if arch == "bert" else ids
    return {"input_ids": ids, "labels": labels}


def record(what: str, actual: torch.Tensor, expected: torch.Tensor, drawn: dict[str, Any]) -> None:
    """Assert closeness (float32) and remember the largest |diff| seen for ``what``."""
    diff = (actual.detach() - expected.detach().reshape(actual.shape)).abs().max().item()
    key = f"{drawn.get('arch')}: {what}"
    MAX_DIFF[key] = max(MAX_DIFF.get(key, 0.0), diff)
    scale = 1.0 + expected.detach().abs().max().item()
    assert_close(actual, expected.reshape(actual.shape), what=what, drawn=drawn, rtol=1e-4, atol=1e-5 * scale)


def peft_config(config: AdaLoraConfig, task_type: str) -> Any:
    fields: tuple[str, ...] = ("init_r", "target_r", "lora_alpha", "lora_dropout", "tinit", "tfinal")
    fields += ("deltaT", "beta1", "beta2", "orth_reg_weight", "total_step", "bias", "modules_to_save")
    kwargs = {f: getattr(config, f) for f in fields}
    return peft.AdaLoraConfig(target_modules=list(config.target_modules or []), task_type=task_type, **kwargs)


def build_pair(arch: str, config: AdaLoraConfig, seed: int) -> tuple[nn.Module, Any, list[Any]]:
    """Both adapted copies with the same random nonzero adapter (and classifier) weights;
    ``[(name, ours, theirs)]`` for every adapter tensor."""
    base = base_model(arch)
    ours, _ = pz.adapt_model(copy.deepcopy(base), config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns that it sets fan_in_fan_out for Conv1D
        theirs = peft.get_peft_model(copy.deepcopy(base), peft_config(config, ARCHS[arch][1]))
    inner = theirs.base_model.model
    pairs = []
    for name, layer in ours.named_modules():
        if isinstance(layer, AdaLoRALinear):
            other = inner.get_submodule(name)
            pairs += [
                (f"{name}.{p}", getattr(layer, p), getattr(other, p)["default"])
                for p in ("lora_A", "lora_E", "lora_B")
            ]
        elif isinstance(layer, pz.ModulesToSave):
            copy_ = inner.get_submodule(name).modules_to_save["default"]
            pairs += [
                (f"{name}.{k}", p, dict(copy_.named_parameters())[k])
                for k, p in layer.trained_module.named_parameters()
            ]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # entries keep s · P diag(λ) Q about the size of the base weights
        for name, p, q in pairs:
            value = torch.randn(p.shape, generator=g) * (0.1 if name.endswith("lora_E") else 0.2)
            p.copy_(value)
            q.copy_(value)
    return ours, theirs, pairs


def targets_of(model: Any, kind: type) -> list[str]:
    return [n.removeprefix("base_model.model.") for n, m in model.named_modules() if isinstance(m, kind)]


def check_step(
    ours: nn.Module,
    theirs: Any,
    pairs: list[Any],
    config: AdaLoraConfig,
    inputs: dict[str, torch.Tensor],
    drawn: dict[str, Any],
) -> None:
    """One forward / backward on both; logits, regularised loss and every gradient agree."""
    out, ref = ours(**inputs), theirs(**inputs)
    record("logits", out.logits, ref.logits, drawn)
    loss = config.regularised_loss(ours, out.loss)
    record("loss with orthogonal term", loss, ref.loss, drawn)
    if config.orth_reg_weight > 0:  # the term is there, not just a loss that happens to agree
        assert loss.item() > out.loss.item(), drawn
    loss.backward()
    ref.loss.backward()
    for name, p, q in pairs:
        record("gradients", p.grad, q.grad, drawn | {"tensor": name})


def pattern_of_peft(theirs: Any) -> dict[str, list[bool]] | None:
    pattern = theirs.peft_config["default"].rank_pattern
    return None if pattern is None else {k.replace(".default", ""): v for k, v in pattern.items()}


# ----------------------------------------------------------------------------- forward, loss, gradients


@st.composite
def cases(draw: st.DrawFn) -> dict[str, Any]:
    arch = draw(st.sampled_from(sorted(ARCHS)))
    names = ARCHS[arch][0]
    init_r = draw(st.integers(1, 6))
    config = AdaLoraConfig(
        target_modules=draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True)),
        init_r=init_r,
        target_r=draw(st.integers(1, init_r)),
        lora_alpha=draw(st.sampled_from([1.0, 8.0, 16.0])),
        orth_reg_weight=draw(st.sampled_from([0.0, 0.5, 2.0])),
        total_step=10,
        bias=draw(st.sampled_from(["none", "all", "lora_only"])),
        modules_to_save=["classifier"] if arch == "bert" else None,
        fan_in_fan_out=draw(st.sampled_from([None, True])) if arch == "gpt2" else None,
    )
    return {"arch": arch, "config": config, "seed": draw(st.integers(0, 2**16))}


@settings(max_examples=5, deadline=None)
@given(cases())
def test_forward_loss_and_gradients_match_peft(case: dict[str, Any]) -> None:
    arch, config, seed = case["arch"], case["config"], case["seed"]
    ours, theirs, pairs = build_pair(arch, config, seed)
    assert targets_of(ours, AdaLoRALinear) == targets_of(theirs, peft.tuners.adalora.AdaLoraLayer), case
    assert pz.count_parameters(ours)[0] == theirs.get_nb_trainable_parameters()[0], case
    check_step(ours, theirs, pairs, config, batch(arch, seed), case)


# ----------------------------------------------------------------------------- training with pruning


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_training_with_rank_allocation_matches_peft(arch: str) -> None:
    """8 SGD steps; warm-up (step <= 1), pruning every step (2..5), the final pattern forced at
    step 6 = total_step - tfinal and re-applied at step 7."""
    config = AdaLoraConfig(
        target_modules=list(ARCHS[arch][0][:3]),
        init_r=4,
        target_r=2,
        lora_alpha=8,
        tinit=1,
        tfinal=2,
        deltaT=1,
        total_step=8,
        modules_to_save=["classifier"] if arch == "bert" else None,
    )
    ours, theirs, pairs = build_pair(arch, config, seed=3)
    allocator = config.allocator(ours)
    opt_ours = torch.optim.SGD([p for _, p, _ in pairs], lr=0.5)
    opt_theirs = torch.optim.SGD([q for _, _, q in pairs], lr=0.5)
    inputs = batch(arch, seed=4)
    patterns = []
    for step in range(config.total_step or 0):
        drawn = {"arch": arch, "step": step}
        check_step(ours, theirs, pairs, config, inputs, drawn)
        opt_ours.step()
        opt_theirs.step()
        budget, pattern = allocator.step(ours, step)
        theirs.base_model.update_and_allocate(step)
        opt_ours.zero_grad()
        opt_theirs.zero_grad()
        assert pattern == pattern_of_peft(theirs), drawn
        assert budget == theirs.base_model.rankallocator.budget_schedule(step)[0], drawn
        for name, p, q in pairs:
            if name.endswith("lora_E"):
                assert torch.equal(p == 0, q == 0), drawn | {"tensor": name}
            record("weights after a training step", p, q, drawn | {"tensor": name})
        patterns.append((budget, pattern))
    kept = [sum(sum(v) for v in pattern.values()) for _, pattern in patterns if pattern]
    assert patterns[0][1] is None and patterns[1][1] is None  # warm-up: nothing masked yet
    assert kept and kept[-1] == allocator.target_bgt < allocator.init_bgt  # it did prune
    assert sum(layer.active_rank() for _, layer in adalora_layers(ours)) <= allocator.target_bgt

    x = batch(arch, seed=5)["input_ids"]
    with torch.no_grad():
        before = ours(input_ids=x).logits
        merged_ours = merge_and_unload(ours)
        merged_theirs = theirs.merge_and_unload()
        after = merged_ours(input_ids=x).logits
        record("merged logits", after, merged_theirs(input_ids=x).logits, {"arch": arch})
        record("merged vs unmerged logits (ours)", after, before, {"arch": arch})
    assert not any(isinstance(m, AdaLoRALinear) for m in merged_ours.modules())


# ----------------------------------------------------------------------------- refusals


GOOD: dict[str, Any] = {"target_modules": ["query"], "total_step": 10}
BAD_FIELDS = [  # (field values, exception, words the message must hold)
    ({"total_step": None}, ValueError, "total_step"),
    ({"total_step": 0}, ValueError, "total_step"),
    ({"total_step": -5}, ValueError, "total_step"),
    ({"total_step": 10.0}, TypeError, "total_step"),
    ({"total_step": "10"}, TypeError, "total_step"),
    ({"init_r": 4, "target_r": 5}, ValueError, "target_r"),
    ({"init_r": 0}, ValueError, "init_r"),
    ({"init_r": True}, TypeError, "init_r"),
    ({"target_r": "8"}, TypeError, "target_r"),
    ({"lora_alpha": 0}, ValueError, "lora_alpha"),
    ({"lora_alpha": "8"}, TypeError, "lora_alpha"),
    ({"lora_dropout": 1.0}, ValueError, "lora_dropout"),
    ({"tinit": 5, "tfinal": 5}, ValueError, "budgeting phase"),
    ({"tinit": -1}, ValueError, "tinit"),
    ({"tfinal": 2.0}, TypeError, "tfinal"),
    ({"deltaT": 0}, ValueError, "deltaT"),
    ({"beta1": 0.0}, ValueError, "beta1"),
    ({"beta2": 1.0}, ValueError, "beta2"),
    ({"beta1": "0.85"}, TypeError, "beta1"),
    ({"orth_reg_weight": -0.1}, ValueError, "orth_reg_weight"),
    ({"orth_reg_weight": True}, TypeError, "orth_reg_weight"),
    ({"bias": "lora"}, ValueError, "bias"),
    ({"bias": None}, TypeError, "bias"),
    ({"fan_in_fan_out": "yes"}, TypeError, "fan_in_fan_out"),
    ({"target_modules": None}, ValueError, "target_modules"),
]
PEFT_REFUSES_TOO = [{"total_step": None}, {"total_step": 0}, {"total_step": -5}, {"tinit": 5, "tfinal": 5}]
PEFT_REFUSES_TOO += [{"orth_reg_weight": -0.1}]


@pytest.mark.parametrize(("bad", "error", "words"), BAD_FIELDS)
def test_bad_fields_are_refused_by_name(bad: dict[str, Any], error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        AdaLoraConfig(**(GOOD | bad))
    config = AdaLoraConfig(**GOOD)  # set after construction: adapt_model checks again
    for key, value in bad.items():
        setattr(config, key, value)
    model = base_model("bert")
    before = fingerprint(model)
    with pytest.raises(error, match=words):
        pz.adapt_model(model, config)
    assert_model_unchanged(model, before, what=f"adapt_model with {bad}")


@pytest.mark.parametrize("bad", PEFT_REFUSES_TOO)
def test_peft_refuses_the_same_schedules(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        peft.AdaLoraConfig(**(GOOD | bad))
    with pytest.raises(ValueError):
        AdaLoraConfig(**(GOOD | bad))


@pytest.mark.parametrize(
    ("arch", "fields", "error"),
    [
        ("bert", {"target_modules": ["no_such_layer"]}, ValueError),  # InjectionError
        ("gpt2", {"target_modules": ["c_attn"], "fan_in_fan_out": False}, ValueError),  # PEFT corrects it
        ("llama", {"target_modules": ["q_proj"], "fan_in_fan_out": True}, ValueError),  # PEFT corrects it
        ("bert", {"target_modules": ["query"], "modules_to_save": ["nothing_here"]}, ValueError),
    ],
)
def test_bad_targets_change_nothing(arch: str, fields: dict[str, Any], error: type[Exception]) -> None:
    model = base_model(arch)
    before = fingerprint(model)
    with pytest.raises(error):
        pz.adapt_model(model, AdaLoraConfig(total_step=10, **fields))
    assert_model_unchanged(model, before, what=f"adapt_model({fields}) on {arch}")


def test_conv2d_is_refused_where_peft_has_svdconv2d() -> None:
    """A deliberate difference: PEFT adapts nn.Conv2d with SVDConv2d; AdaLoRALinear is linear only."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    before = fingerprint(model)
    with pytest.raises(ValueError, match="Linear"):
        pz.adapt_model(model, AdaLoraConfig(target_modules=["0"], total_step=10))
    assert_model_unchanged(model, before, what="adapt_model on a Conv2d")


def test_training_helpers_refuse_bad_input() -> None:
    config = AdaLoraConfig(target_modules=["query"], total_step=10)
    with pytest.raises(ValueError, match="no AdaLoRALinear"):
        config.allocator(base_model("bert"))
    model, _ = pz.adapt_model(copy.deepcopy(base_model("bert")), config)
    with pytest.raises(TypeError, match="0-d tensor"):
        config.regularised_loss(model, torch.ones(2))
    with pytest.raises(TypeError, match="0-d tensor"):
        config.regularised_loss(model, 1.0)  # type: ignore[arg-type]
    config.total_step = 0  # a field broken after adapt_model: the allocator checks again
    with pytest.raises(ValueError, match="total_step"):
        config.allocator(model)


def test_layers_take_the_config_values() -> None:
    config = AdaLoraConfig(
        target_modules=["c_attn", "c_fc"],
        init_r=5,
        target_r=2,
        lora_alpha=10,
        lora_dropout=0.25,
        total_step=10,
    )
    model, params = pz.adapt_model(copy.deepcopy(base_model("gpt2")), config)
    layers = dict(adalora_layers(model))
    assert sorted(n.rsplit(".", 1)[-1] for n in layers) == ["c_attn", "c_attn", "c_fc", "c_fc"]
    for layer in layers.values():
        assert (layer.rank, layer.alpha, layer.dropout_p, layer.fan_in_fan_out) == (5, 10.0, 0.25, True)
        assert isinstance(layer.lora_dropout, nn.Dropout) and layer.lora_dropout.p == 0.25
        assert layer.active_rank() == 0  # λ = 0 at the start: the model equals its base
    assert len(params) == 3 * len(layers)
