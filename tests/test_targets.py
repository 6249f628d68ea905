"""Tests for peft_zoo.injection.targets: choosing modules by name with Hugging Face PEFT's rules.

Examples on a small ``transformers`` BERT and on the library's tiny models, the layer index and
target_matches rules, and regexes matched with a time bound. test_targets_peft.py draws realistic
module paths and configs and compares :func:`target_matches` with PEFT's own
``check_target_module_exists``.
"""

from __future__ import annotations

import re
import time
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from targets_helpers import bert_config, linear_names, make_bert
from torch import nn

from peft_zoo import InjectionError, find_targets, inject_lora, layer_index, target_matches
from peft_zoo.injection.targets import output_head_names
from peft_zoo.models import TinyMLP, TinyTransformer, TinyTransformerConfig

# ----------------------------------------------------------------------------- small BERT


@pytest.fixture(scope="module")
def bert():
    return make_bert()


@pytest.fixture(scope="module")
def bert_mlm():
    transformers = pytest.importorskip("transformers")
    return transformers.BertForMaskedLM(bert_config())


def _qv(layers=(0, 1), prefix="encoder.layer") -> list[str]:
    return [f"{prefix}.{i}.attention.self.{p}" for i in layers for p in ("query", "value")]


# ----------------------------------------------------------------------------- examples on BERT


def test_suffix_list_selects_every_layer(bert):
    assert find_targets(bert, ["query", "value"]) == _qv()


def test_multi_component_suffix_matches_whole_components_only(bert):
    # "output.dense" ends both "attention.output.dense" and the FFN "output.dense".
    assert find_targets(bert, ["attention.output.dense"]) == [
        f"encoder.layer.{i}.attention.output.dense" for i in (0, 1)
    ]
    assert len(find_targets(bert, ["output.dense"])) == 4
    with pytest.raises(InjectionError):
        find_targets(bert, ["uery"])  # a partial component is not a suffix match


def test_layers_to_transform_with_pattern(bert):
    assert find_targets(bert, ["query", "value"], layers_to_transform=[1], layers_pattern="layer") == _qv([1])
    assert find_targets(bert, ["query", "value"], layers_to_transform=0, layers_pattern="layer") == _qv([0])
    assert find_targets(bert, ["query", "value"], layers_to_transform=[1]) == _qv(
        [1]
    )  # no pattern: first index


def test_regex_target_must_match_the_whole_name(bert):
    assert find_targets(bert, r".*\.1\.attention\.self\.(query|value)") == _qv([1])
    with pytest.raises(InjectionError):
        find_targets(bert, "query")  # would match with re.search, not with re.fullmatch
    with pytest.raises(InjectionError):
        find_targets(bert, r"encoder\.layer\.1")  # a prefix of the name is not the name


def test_exclude_modules_list_and_regex(bert):
    assert find_targets(bert, ["query", "value"], exclude_modules=["value"]) == [
        "encoder.layer.0.attention.self.query",
        "encoder.layer.1.attention.self.query",
    ]
    assert (
        find_targets(bert, ["query", "value"], exclude_modules=["encoder.layer.0.attention.self.query"])
        == _qv()[1:]
    )
    assert find_targets(bert, ["query", "value"], exclude_modules=r".*\.0\..*") == _qv([1])
    # An exclude regex must match the whole name too: "query" alone excludes nothing.
    assert find_targets(bert, ["query", "value"], exclude_modules="query") == _qv()


def test_all_linear_keeps_the_mlm_decoder_out(bert_mlm):
    chosen = find_targets(bert_mlm, "all-linear")
    assert output_head_names(bert_mlm) == {"cls.predictions.decoder"}
    assert "cls.predictions.decoder" not in chosen
    assert chosen == [n for n in linear_names(bert_mlm) if n != "cls.predictions.decoder"]
    assert "cls.predictions.transform.dense" in chosen and len(chosen) == 13
    assert find_targets(bert_mlm, "ALL-LINEAR") == chosen


def test_all_linear_equals_peft(bert_mlm):
    peft = pytest.importorskip("peft")
    import copy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = peft.get_peft_model(copy.deepcopy(bert_mlm), peft.LoraConfig(target_modules="all-linear"))
    theirs = {n.removeprefix("base_model.model.") for n in wrapped.targeted_module_names}
    assert set(find_targets(bert_mlm, "all-linear")) == theirs


def test_all_linear_with_exclude(bert):
    chosen = find_targets(bert, "all-linear", exclude_modules=["query", "key", "value"])
    assert not any(n.endswith(("query", "key", "value")) for n in chosen)
    assert "pooler.dense" in chosen  # BertModel has no output embeddings: nothing is a head
    assert len(chosen) == len(linear_names(bert)) - 6


def test_all_linear_on_a_plain_model_skips_the_head_child():
    assert find_targets(TinyMLP(), "all-linear") == [
        "encoder.0",
        "encoder.2.branch.fc1",
        "encoder.2.branch.fc2",
    ]
    model = TinyTransformer(TinyTransformerConfig(d_model=16, n_heads=2, d_ff=32, n_layers=1))
    chosen = find_targets(model, "all-linear")
    assert "head" not in chosen and len(chosen) == 6
    seq = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    assert find_targets(seq, "all-linear") == ["0", "2"]  # no head: every linear


def test_layers_inside_adapters_are_never_targets():
    model = TinyMLP()
    inject_lora(model, ["encoder.0"], rank=2)
    chosen = find_targets(model, "all-linear")
    assert "encoder.0" not in chosen and "encoder.0.base" not in chosen
    assert chosen == ["encoder.2.branch.fc1", "encoder.2.branch.fc2"]
    with pytest.raises(InjectionError):
        find_targets(model, ["base"])


def test_typo_raises_with_close_matches(bert):
    with pytest.raises(InjectionError, match="qeury") as info:
        find_targets(bert, ["qeury"])
    assert "'query'" in str(info.value)
    with pytest.raises(InjectionError) as info:
        find_targets(bert, ["attention.self.valeu"])
    assert "'attention.self.value'" in str(info.value)


def test_nothing_left_after_layer_filter_says_why(bert):
    with pytest.raises(InjectionError, match=r"layers_to_transform=\[5\]") as info:
        find_targets(bert, ["query"], layers_to_transform=[5], layers_pattern="layer")
    assert "encoder.layer.0.attention.self.query" in str(info.value)


def test_layers_to_transform_with_a_regex_raises(bert):
    with pytest.raises(InjectionError, match="layers_to_transform"):
        find_targets(bert, r".*query", layers_to_transform=[1])
    with pytest.raises(InjectionError, match="layers_to_transform"):
        find_targets(bert, "all-linear", layers_to_transform=0)


def test_other_module_types():
    model = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    assert find_targets(model, ["1"], types=(nn.LayerNorm,)) == ["1"]
    with pytest.raises(InjectionError, match="LayerNorm"):
        find_targets(model, ["0"], types=(nn.LayerNorm,))


# ----------------------------------------------------------------------------- layer_index / target_matches


@pytest.mark.parametrize(
    ("key", "pattern", "expected"),
    [
        ("encoder.layer.11.attention.self.query", None, 11),
        ("encoder.layer.11.attention.self.query", "layer", 11),
        ("model.layers.1.mlp.experts.7.down_proj", None, 1),  # the first index, not the expert
        ("model.layers.1.mlp.experts.7.down_proj", "layers", 1),
        ("model.layers.1.mlp.experts.7.down_proj", "experts", 7),
        (
            "model.layers.1.mlp.experts.7.down_proj",
            ["h", "experts", "layers"],
            7,
        ),  # list: first pattern that hits
        ("transformer.h.0.attn.c_attn", "h", 0),
        ("transformer.h.0.attn.c_attn", "layer", None),
        ("lm_head", None, None),
        ("layers.3.q_proj", None, None),  # no component before the index
        ("layers.3.q_proj", "layers", 3),
        ("model.layers.2.sub.layers.0.q_proj", "layers", 2),  # the first match of the pattern
        ("model.layers.2.sub.layers.0.q_proj", None, 2),
        ("encoder.layer.11.attention.self.query", "", 11),  # an empty pattern means "any"
        ("encoder.layer.11.attention.self.query", [], 11),
    ],
)
def test_layer_index(key, pattern, expected):
    assert layer_index(key, pattern) == expected


def test_target_matches_examples():
    key = "model.layers.3.self_attn.q_proj"
    assert target_matches(key, ["q_proj"])
    assert not target_matches(key, ["proj"])  # a suffix is whole components
    assert target_matches(key, ["self_attn.q_proj"])
    assert target_matches(key, ["q_proj"], layers_to_transform=3)
    assert not target_matches(key, ["q_proj"], layers_to_transform=[0, 1])
    assert target_matches(key, ["q_proj"], layers_to_transform=[])  # empty: no restriction
    assert target_matches(key, [key], layers_to_transform=[0])  # an exact name ignores layers
    assert not target_matches(key, ["q_proj"], exclude_modules=["self_attn.q_proj"])
    assert target_matches(key, ["q_proj"], exclude_modules=["proj", "_proj"])  # whole components only
    assert target_matches(key, ["q_proj"], layers_to_transform=3, layers_pattern="")
    assert target_matches(key, ["q_proj"], layers_to_transform=3, layers_pattern=[])
    assert target_matches(key, r".*q_proj") and not target_matches(key, "q_proj")
    # A regex ignores layers_to_transform here, as in PEFT; only find_targets refuses it.
    assert target_matches(key, r".*q_proj", layers_to_transform=[0])


# ----------------------------------------------------------------------------- regexes with a time bound


def test_catastrophic_regexes_come_back_fast_naming_the_field():
    """Issue 12: ``"(a+)+$"`` against ``"a" * 30 + "b"`` ran > 10 s in Python's ``re``. Now it
    comes back at once (no match), and a pattern that still backtracks exponentially is
    stopped by the timeout with an error naming the argument it came from."""
    model = nn.Module()
    model.add_module("a" * 30 + "b", nn.Linear(2, 2))
    model.add_module("a" * 40 + "b", nn.Linear(2, 2))
    model.add_module("outer", nn.ModuleDict({"a" * 40 + "b": nn.Linear(2, 2)}))
    start = time.perf_counter()
    with pytest.raises(InjectionError, match="no Linear/Conv1D module matches"):
        find_targets(model, "(a+)+$")
    for kwargs, field in [
        ({"target_modules": "(a|aa)+$"}, "target_modules"),
        ({"target_modules": ["a" * 40 + "b"], "exclude_modules": ".*(a|aa)+$"}, "exclude_modules"),
        (
            {"target_modules": ["a" * 40 + "b"], "layers_to_transform": [0], "layers_pattern": "(a|aa)+"},
            "layers_pattern",
        ),
    ]:
        with pytest.raises(ValueError, match=f"{field}: the regular expression .* did not finish in time"):
            find_targets(model, **kwargs)
    assert time.perf_counter() - start < 5.0


def test_invalid_regexes_name_the_argument():
    with pytest.raises(ValueError, match=r"target_modules: invalid regular expression '\(q'"):
        find_targets(TinyMLP(), "(q")
    with pytest.raises(ValueError, match="exclude_modules: invalid regular expression"):
        find_targets(TinyMLP(), ["fc1"], exclude_modules="*fc")
    with pytest.raises(TypeError, match="target_modules must be a list of module names or a regex"):
        find_targets(TinyMLP(), None)


PATTERN_PARTS = ["a", "b", ".", r"\.", "a*", "(a|b)", "[ab]+", "\\d", "(?:x.)?", "$", "^", "b?", ".*"]


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(st.sampled_from(PATTERN_PARTS), min_size=1, max_size=6), key=st.text("ab.x0", max_size=8)
)
def test_bounded_matching_gives_re_results(parts, key):
    """The bounded engine (the ``regex`` package) answers exactly as ``re`` (what PEFT runs)."""
    from peft_zoo.core.regex import fullmatch, match

    pattern = "".join(parts)
    ours = fullmatch(pattern, key, "target_modules")
    theirs = re.fullmatch(pattern, key)
    assert (ours is None) == (theirs is None) and (ours is None or ours.span() == theirs.span())
    ours, theirs = match(pattern, key, "rank_pattern"), re.match(pattern, key)
    assert (ours is None) == (theirs is None) and (ours is None or ours.span() == theirs.span())
