"""LoHa and LoKr on real models: ``pz.adapt_model(model, LoHaConfig / LoKrConfig)`` against
Hugging Face PEFT's ``get_peft_model`` with the same fields (tiny BERT, LLaMA and GPT-2).

Both sides get the same random non-zero factors (tests/lycoris_helpers.py); logits, the last
hidden state, the gradients of every adapter tensor and of the input embeddings, and the merged
models (``merge_and_unload`` on both sides) are compared, and so are the adapted module names and
the trainable parameter counts. Observed on CPU, float32, peft 0.21.2: every difference exactly 0
(the same operations in the same order) over 44 configs on the three models; merged vs unmerged
logits within 9e-8 (LLaMA), 8e-9 (BERT), 4e-8 (GPT-2's score head).

GPT-2's projections are ``Conv1D`` layers: PEFT refuses them for LoHa / LoKr (``TypeError``), and
so does peft_zoo (``InjectionError`` naming them, nothing changed). The one ``nn.Linear`` of
``GPT2ForSequenceClassification``, its ``score`` head, is compared instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

peft = pytest.importorskip("peft")
pytest.importorskip("transformers")

from lycoris_helpers import (  # noqa: E402
    assert_unchanged,
    compare_models,
    peft_config_of,
    snapshot,
    tiny_model,
)

import peft_zoo as pz  # noqa: E402
from peft_zoo.injection.lycoris_config import LoHaConfig, LoKrConfig  # noqa: E402
from peft_zoo.injection.surgery import InjectionError  # noqa: E402
from peft_zoo.loha import LoHaLinear  # noqa: E402
from peft_zoo.lokr import LoKrLinear  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

BERT = ["query", "key", "value", "dense"]
LLAMA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TARGETS = {"bert": BERT, "llama": LLAMA, "gpt2": ["score"]}
HEADS = {"bert": ["classifier"], "llama": ["lm_head"], "gpt2": None}
METHODS = {"loha": LoHaConfig, "lokr": LoKrConfig}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny matrices: one intra-op thread is fastest, and on a busy shared machine several
    threads per matmul spin-wait for each other (several times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def check(arch: str, config: Any, seed: int = 0) -> dict[str, float]:
    diffs = compare_models(arch, config, seed)
    assert diffs["logits"] <= 1e-5 and diffs["merged logits"] <= 1e-5, diffs
    return diffs


# ----------------------------------------------------------------------------- equal to PEFT


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("arch", sorted(TARGETS))
def test_every_target_patterns_and_heads(arch: str, method: str) -> None:
    """Every linear kind of the model, a rank and an alpha pattern, module dropout and rank
    dropout (inactive in eval), a head in modules_to_save."""
    names = TARGETS[arch]
    config = METHODS[method](
        target_modules=names,
        r=3,
        alpha=5,
        rank_pattern={names[-1]: 2},
        alpha_pattern={names[0]: 1.5},
        module_dropout=0.5,
        rank_dropout=0.25,
        modules_to_save=HEADS[arch],
    )
    check(arch, config)


@pytest.mark.parametrize(
    ("arch", "options"),
    [
        ("bert", {"decompose_both": True, "r": 1}),  # W1 (4, 4) and W2 (6, 6) both low-rank products
        ("llama", {"decompose_both": True, "r": 2, "decompose_factor": 2}),
        ("bert", {"decompose_factor": 3, "r": 4}),
        ("llama", {"decompose_factor": 4, "rank_dropout_scale": True}),
        ("llama", {"r": 64, "alpha": 2}),  # a rank above every dimension: both factors stored whole
        ("bert", {"init_weights": "lycoris", "decompose_both": True, "r": 1}),
        ("llama", {"init_weights": False}),
    ],
)
def test_lokr_decompositions(arch: str, options: dict[str, Any]) -> None:
    config = LoKrConfig(target_modules=TARGETS[arch], **options)
    check(arch, config)


def test_layer_refusal_names_the_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """A layer's own refusal comes back with the module's name and changes nothing (LoKr takes
    every rank, so a refusal is simulated by a bad value slipped past the config's checks)."""
    model = tiny_model("llama")
    before = snapshot(model)
    config = LoKrConfig(target_modules=["q_proj"])
    monkeypatch.setattr(LoKrConfig, "check_method_fields", lambda self: None)
    config.decompose_factor = 0
    with pytest.raises(ValueError, match=r"'model\.layers\.0\.self_attn\.q_proj'.*decompose_factor"):
        pz.adapt_model(model, config)
    assert_unchanged(model, before)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_targets_by_regex_and_layers_to_transform(method: str) -> None:
    cls = METHODS[method]
    check("bert", cls(target_modules=r".*layer\.1\..*(query|value)", r=2, alpha=3))
    check("llama", cls(target_modules=r"model\.layers\.0\.mlp\.\w+_proj", r=2))
    check("llama", cls(target_modules=["q_proj", "down_proj"], layers_to_transform=[1], r=2))
    check("bert", cls(target_modules=["value"], layers_to_transform=0, layers_pattern="layer", r=2))
    check("llama", cls(target_modules=LLAMA, exclude_modules=["k_proj", "up_proj"], r=2))
    check("llama", cls(target_modules="all-linear", r=2))  # every projection, never lm_head


@st.composite
def cases(draw: st.DrawFn) -> dict[str, Any]:
    arch = draw(st.sampled_from(["bert", "llama"]))
    method = draw(st.sampled_from(sorted(METHODS)))
    targets = draw(st.lists(st.sampled_from(TARGETS[arch]), min_size=1, max_size=4, unique=True))
    kwargs: dict[str, Any] = {
        "target_modules": targets,
        "r": draw(st.integers(1, 8)),
        "alpha": draw(st.sampled_from([1, 4, 8, 2.5])),
    }
    if draw(st.booleans()):
        kwargs["rank_pattern"] = {targets[0]: draw(st.integers(1, 8))}
    if draw(st.booleans()):
        kwargs["alpha_pattern"] = {targets[-1]: draw(st.floats(0.5, 16.0))}
    if method == "lokr":
        kwargs["decompose_both"] = draw(st.booleans())
        kwargs["decompose_factor"] = draw(st.sampled_from([-1, 1, 2, 3, 4, 5, 8]))
    return {"arch": arch, "config": METHODS[method](**kwargs), "seed": draw(st.integers(0, 2**16))}


@settings(max_examples=8, deadline=None)
@given(cases())
def test_drawn_configs_match_peft(case: dict[str, Any]) -> None:
    check(**case)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_training_mode_dropout_same_draws(arch: str, method: str) -> None:
    """In training mode, module and rank dropout draw from torch's generator in PEFT's order,
    so the same seed drops the same updates and rows: the outputs stay equal."""
    from lycoris_helpers import randomise_models

    config = METHODS[method](target_modules=TARGETS[arch], module_dropout=0.5, rank_dropout=0.3, r=2)
    ours, _ = pz.adapt_model(tiny_model(arch), config)
    theirs = peft.get_peft_model(tiny_model(arch), peft_config_of(config))
    randomise_models(ours, theirs, torch.Generator().manual_seed(0))
    base = tiny_model(arch)
    emb = torch.randn(2, 5, 24, generator=torch.Generator().manual_seed(1))
    ours.train(), theirs.train()
    outputs = set()
    for seed in range(4):
        torch.manual_seed(seed)
        a = ours(inputs_embeds=emb).logits
        torch.manual_seed(seed)
        b = theirs(inputs_embeds=emb).logits
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        outputs.add(round(float(a.detach().sum()), 6))
    assert len(outputs) > 1, "dropout never changed anything: the test compares nothing"
    assert not torch.equal(a, base(inputs_embeds=emb).logits)


# ----------------------------------------------------------------------------- GPT-2's Conv1D


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("targets", [["c_attn"], ["c_attn", "score"], "all-linear", r".*\.mlp\.c_fc"])
def test_gpt2_conv1d_refused_by_both(method: str, targets: Any) -> None:
    """Deliberately the same as PEFT: no LoHa / LoKr on a Conv1D (weight stored (in, out))."""
    config = METHODS[method](target_modules=targets)
    with pytest.raises(TypeError, match="Conv1D"):
        peft.get_peft_model(tiny_model("gpt2"), peft_config_of(config))
    model = tiny_model("gpt2")
    before = snapshot(model)
    with pytest.raises(InjectionError, match=r"'transformer\.h\.0\.(attn\.c_attn|mlp\.c_fc)' is a Conv1D"):
        pz.adapt_model(model, config)
    assert_unchanged(model, before)


# ----------------------------------------------------------------------------- counts and init


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("arch", sorted(TARGETS))
def test_trainable_counts_and_identity_start(arch: str, method: str) -> None:
    """PEFT's defaults on each model: the same trainable count as PEFT's
    ``get_nb_trainable_parameters()``, and the adapted model starts equal to the base."""
    config = METHODS[method](target_modules=TARGETS[arch], modules_to_save=HEADS[arch])
    base = tiny_model(arch)
    ours, params = pz.adapt_model(tiny_model(arch), config)
    theirs = peft.get_peft_model(tiny_model(arch), peft_config_of(config))
    count = sum(p.numel() for p in params)
    assert count == pz.count_parameters(ours)[0] == theirs.get_nb_trainable_parameters()[0]
    kind = LoHaLinear if method == "loha" else LoKrLinear
    assert any(isinstance(m, kind) for m in ours.modules())
    emb = torch.randn(2, 5, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(inputs_embeds=emb).logits, base(inputs_embeds=emb).logits)
    unloaded = pz.unload(ours)  # the adapters out again, without merging: the base exactly
    state, kinds, _ = snapshot(unloaded)  # (the base stays frozen, as in PEFT)
    expected_state, expected_kinds, _ = snapshot(base)
    assert kinds == expected_kinds and state.keys() == expected_state.keys()
    assert all(torch.equal(state[k], expected_state[k]) for k in state)


def field_default(f: dataclasses.Field[Any]) -> Any:
    factory: Any = f.default_factory
    return factory() if f.default is dataclasses.MISSING else f.default


def test_config_fields_are_peft_fields() -> None:
    """Every field and default is PEFT's (ours lacks only use_effective_conv2d, PEFT's conv
    option, and adds the targeting field fan_in_fan_out)."""
    for ours, theirs in ((LoHaConfig, peft.LoHaConfig), (LoKrConfig, peft.LoKrConfig)):
        mine = {f.name: f for f in dataclasses.fields(ours)}
        other = {f.name: f for f in dataclasses.fields(theirs)}
        assert set(mine) - {"fan_in_fan_out"} <= set(other)
        for name, f in mine.items():
            if name != "fan_in_fan_out":
                default, expected = field_default(f), field_default(other[name])
                assert default == expected, (ours.__name__, name, default, expected)
                assert f.metadata.get("help"), f"{ours.__name__}.{name} has no help text"


# ----------------------------------------------------------------------------- bad configs

BAD_FIELDS = [
    (LoHaConfig, "r", "8", TypeError),
    (LoHaConfig, "r", True, TypeError),
    (LoHaConfig, "r", 2.0, TypeError),
    (LoHaConfig, "r", 0, ValueError),
    (LoHaConfig, "alpha", "8", TypeError),
    (LoHaConfig, "alpha", 0, ValueError),
    (LoHaConfig, "alpha", float("nan"), ValueError),
    (LoHaConfig, "rank_dropout", "0.1", TypeError),
    (LoHaConfig, "rank_dropout", 1.0, ValueError),
    (LoHaConfig, "module_dropout", True, TypeError),
    (LoHaConfig, "module_dropout", -0.1, ValueError),
    (LoHaConfig, "init_weights", "yes", TypeError),
    (LoHaConfig, "init_weights", "lycoris", TypeError),  # a LoKr value
    (LoHaConfig, "init_weights", 1, TypeError),
    (LoHaConfig, "rank_pattern", ["query"], TypeError),
    (LoHaConfig, "rank_pattern", {"query": "4"}, TypeError),
    (LoHaConfig, "rank_pattern", {"query": 0}, ValueError),
    (LoHaConfig, "rank_pattern", {"(": 4}, ValueError),
    (LoHaConfig, "alpha_pattern", {"query": "x"}, TypeError),
    (LoHaConfig, "alpha_pattern", {1: 2.0}, TypeError),
    (LoHaConfig, "target_modules", None, ValueError),
    (LoHaConfig, "target_modules", 3, TypeError),
    (LoHaConfig, "modules_to_save", "classifier", TypeError),
    (LoHaConfig, "layers_to_transform", "1", TypeError),
    (LoHaConfig, "fan_in_fan_out", "no", TypeError),
    (LoKrConfig, "decompose_both", "no", TypeError),
    (LoKrConfig, "decompose_both", 1, TypeError),
    (LoKrConfig, "decompose_factor", 2.0, TypeError),
    (LoKrConfig, "decompose_factor", True, TypeError),
    (LoKrConfig, "decompose_factor", 0, ValueError),
    (LoKrConfig, "decompose_factor", -2, ValueError),
    (LoKrConfig, "rank_dropout_scale", 1, TypeError),
    (LoKrConfig, "init_weights", "gaussian", TypeError),
    (LoKrConfig, "init_weights", None, TypeError),
    (LoKrConfig, "r", "8", TypeError),
    (LoKrConfig, "alpha_pattern", {"query": -1.0}, ValueError),
]


@pytest.mark.parametrize(("cls", "name", "value", "error"), BAD_FIELDS)
def test_bad_field_refused_and_model_unchanged(cls: type, name: str, value: Any, error: type) -> None:
    """Refused when the config is built, and again by adapt_model when the field is set later
    (nothing changed); the message names the field. Never coerced."""
    with pytest.raises(error, match=rf"^{name}\b"):
        cls(**{"target_modules": ["query"], name: value})
    config = cls(target_modules=["query"])
    setattr(config, name, value)
    model = tiny_model("bert")
    before = snapshot(model)
    with pytest.raises(error, match=rf"^{name}\b"):
        pz.adapt_model(model, config)
    assert_unchanged(model, before)


@pytest.mark.parametrize("cls", [LoHaConfig, LoKrConfig])
def test_layers_pattern_needs_layers_to_transform(cls: Any) -> None:
    with pytest.raises(ValueError, match="layers_to_transform"):
        getattr(peft, cls.__name__)(target_modules=["query"], layers_pattern="layer")
    with pytest.raises(ValueError, match="layers_pattern is set without layers_to_transform"):
        cls(target_modules=["query"], layers_pattern="layer")


@pytest.mark.parametrize("cls", [LoHaConfig, LoKrConfig])
def test_unknown_fields_refused(cls: Any) -> None:
    with pytest.raises(TypeError, match="rnak"):
        cls(target_modules=["query"], rnak=4)
    with pytest.raises(TypeError, match="use_effective_conv2d"):  # PEFT's conv option: no conv layers here
        cls(target_modules=["query"], use_effective_conv2d=True)
    with pytest.raises(ValueError, match=r"unknown fields \['lora_alpha'\]"):
        cls.from_dict({"target_modules": ["query"], "lora_alpha": 4})
    assert cls.from_dict(cls(target_modules=["query"], r=3).to_dict()) == cls(target_modules=["query"], r=3)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"rank_pattern": {"qeury": 4}}, r"rank_pattern keys \['qeury'\]"),
        ({"rank_pattern": {r"layer\.7\.attention\.self\.query": 4}}, "rank_pattern keys"),
        ({"alpha_pattern": {"value": 4.0}}, r"alpha_pattern keys \['value'\]"),  # exists, not targeted
        ({"fan_in_fan_out": True}, "fan_in_fan_out"),
        ({"modules_to_save": ["classifer"]}, "modules_to_save"),
        ({"modules_to_save": ["query"]}, "both adapted and in modules_to_save"),
    ],
)
def test_bad_targeting_refused_and_model_unchanged(method: str, options: dict[str, Any], named: str) -> None:
    model = tiny_model("bert")
    before = snapshot(model)
    with pytest.raises(ValueError, match=named):  # InjectionError is a ValueError
        pz.adapt_model(model, METHODS[method](target_modules=["query"], **options))
    assert_unchanged(model, before)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize(
    ("targets", "named"),
    [
        (["LayerNorm"], r"'bert\.embeddings\.LayerNorm' is a LayerNorm"),
        (["query", "LayerNorm"], r"'bert\.encoder\.layer\.0\.attention\.output\.LayerNorm' is a LayerNorm"),
        (["attention"], "is a BertAttention"),
        (["word_embeddings"], "is a Embedding"),
        (r".*layer\.0\.attention\.self\.(query|dropout)", "is a Dropout"),
    ],
)
def test_non_linear_target_refused_by_both(method: str, targets: Any, named: str) -> None:
    """A target that is no nn.Linear: PEFT raises, and so does peft_zoo, naming the module,
    before anything changes (it is never silently skipped)."""
    config = METHODS[method](target_modules=targets)
    with pytest.raises((TypeError, ValueError)):
        peft.get_peft_model(tiny_model("bert"), peft_config_of(config))
    model = tiny_model("bert")
    before = snapshot(model)
    with pytest.raises(InjectionError, match=named):
        pz.adapt_model(model, config)
    assert_unchanged(model, before)
