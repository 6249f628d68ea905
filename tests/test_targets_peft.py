"""peft_zoo's target rules equal Hugging Face PEFT's: a property test draws realistic module paths
and configs and compares :func:`target_matches` with PEFT's own ``check_target_module_exists``,
and :func:`find_targets` on a small BERT with the modules PEFT would select.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from targets_helpers import linear_names, make_bert

from peft_zoo import InjectionError, find_targets, target_matches


@pytest.fixture(scope="module")
def bert():
    return make_bert()


# ----------------------------------------------------------------------------- equivalence with PEFT

KEYS = [
    "model.layers.3.self_attn.q_proj",
    "model.layers.3.self_attn.v_proj",
    "model.layers.12.mlp.down_proj",
    "model.layers.1.mlp.experts.0.down_proj",
    "model.layers.1.mlp.experts.7.up_proj",
    "model.layers.2.sub.layers.0.q_proj",
    "model.layers.3.self_attn",
    "model.embed_tokens",
    "encoder.layer.11.attention.self.query",
    "encoder.layer.1.attention.self.value",
    "encoder.layer.0.output.dense",
    "bert.encoder.layer.1.attention.output.dense",
    "transformer.h.0.attn.c_attn",
    "transformer.h.10.mlp.c_fc",
    "model.decoder.layers.2.fc1",
    "vision.blocks.4.attn.qkv",
    "layers.0.q_proj",
    "q_proj",
    "lm_head",
    "cls.predictions.decoder",
    "pooler.dense",
]
SUFFIXES = [
    "q_proj",
    "v_proj",
    "down_proj",
    "up_proj",
    "self_attn",
    "query",
    "value",
    "dense",
    "output.dense",
    "attention.output.dense",
    "c_attn",
    "c_fc",
    "fc1",
    "qkv",
    "lm_head",
    "proj",
    "experts.0.down_proj",
    "model.layers.3.self_attn.q_proj",
    "layers.0.q_proj",
]
REGEXES = [
    r".*\.(q_proj|v_proj)",
    r".*layers\.1\..*",
    r".*(query|value)",
    r".*\.\d+\..*proj",
    r"model\..*",
    "lm_head",
    "q_proj",
    r".*dense",
]
PATTERNS = ["layers", "layer", "h", "blocks", "experts", "mlp", ""]

target_specs = st.one_of(st.lists(st.sampled_from(SUFFIXES), max_size=4), st.sampled_from(REGEXES))
exclude_specs = st.one_of(
    st.none(), st.lists(st.sampled_from(SUFFIXES), max_size=3), st.sampled_from(REGEXES)
)
# layers_to_transform as PEFT types it (an int or a list). Deliberate divergence, not drawn: an
# empty *tuple* means "no restriction" here, while PEFT then matches nothing.
layer_specs = st.one_of(st.none(), st.integers(0, 12), st.lists(st.integers(0, 12), max_size=3))
pattern_specs = st.one_of(
    st.none(), st.sampled_from(PATTERNS), st.lists(st.sampled_from(PATTERNS), min_size=0, max_size=3)
)


def _peft_config(target_modules, exclude_modules, layers_to_transform, layers_pattern):
    """A LoraConfig when PEFT accepts the combination; otherwise the same attributes in a
    namespace (check_target_module_exists reads nothing else), so every combination is compared."""
    peft = pytest.importorskip("peft")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return peft.LoraConfig(
                target_modules=list(target_modules) if isinstance(target_modules, list) else target_modules,
                exclude_modules=list(exclude_modules)
                if isinstance(exclude_modules, list)
                else exclude_modules,
                layers_to_transform=layers_to_transform,
                layers_pattern=layers_pattern,
            )
    except ValueError:  # e.g. a regex target with layers_to_transform, or a pattern without layers
        return SimpleNamespace(
            target_modules=target_modules,
            exclude_modules=exclude_modules,
            layers_to_transform=layers_to_transform,
            layers_pattern=layers_pattern,
            modules_to_save=None,
            target_parameters=None,
        )


@given(
    keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=5),
    target_modules=target_specs,
    exclude_modules=exclude_specs,
    layers_to_transform=layer_specs,
    layers_pattern=pattern_specs,
)
def test_target_matches_equals_peft(
    keys, target_modules, exclude_modules, layers_to_transform, layers_pattern
):
    pytest.importorskip("peft")
    from peft.tuners.tuners_utils import check_target_module_exists

    cfg = _peft_config(target_modules, exclude_modules, layers_to_transform, layers_pattern)
    for key in keys:
        # PEFT returns True/False, a re.Match, None, or an _ExcludedModule (falsy) for excluded keys.
        theirs = bool(check_target_module_exists(cfg, key))
        ours = target_matches(
            key,
            target_modules,
            exclude_modules=exclude_modules,
            layers_to_transform=layers_to_transform,
            layers_pattern=layers_pattern,
        )
        assert ours is theirs, (
            f"key={key!r} target_modules={target_modules!r} exclude_modules={exclude_modules!r} "
            f"layers_to_transform={layers_to_transform!r} layers_pattern={layers_pattern!r}: "
            f"peft_zoo says {ours}, PEFT says {theirs} (config {type(cfg).__name__})"
        )


@given(
    target_modules=st.lists(st.sampled_from(["query", "key", "value", "dense", "output.dense"]), max_size=3),
    exclude_modules=st.one_of(
        st.none(), st.lists(st.sampled_from(["query", "intermediate.dense"]), max_size=2)
    ),
    layers_to_transform=st.one_of(st.none(), st.integers(0, 2), st.lists(st.integers(0, 2), max_size=2)),
)
def test_find_targets_on_bert_equals_peft(bert, target_modules, exclude_modules, layers_to_transform):
    pytest.importorskip("peft")
    from peft.tuners.tuners_utils import check_target_module_exists

    cfg = _peft_config(target_modules, exclude_modules, layers_to_transform, None)
    theirs = [n for n in linear_names(bert) if check_target_module_exists(cfg, n)]
    kwargs = {"exclude_modules": exclude_modules, "layers_to_transform": layers_to_transform}
    if not theirs:
        with pytest.raises(InjectionError):
            find_targets(bert, target_modules, **kwargs)
    else:
        assert find_targets(bert, target_modules, **kwargs) == theirs
