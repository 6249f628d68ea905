"""Grader for challenge 14 · lora_param_count. Run: peft-zoo check 14 (or pytest this file)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from peft_zoo import LoRALinear, inject_lora
from peft_zoo.exercises.grading import learner_code, require
from peft_zoo.models import TinyTransformer, TinyTransformerConfig
from peft_zoo.testing import explain, ranks

CHALLENGE = "ex14_lora_param_count"
pytestmark = pytest.mark.timeout(120)

# Classic mistakes, planted into a copy of the reference answer by the test suite: the
# grader must reject every one. (description, exact snippet of the answer, replacement,
# and the bug's name as this grader's "likely:" line gives it: tests/test_diagnosis.py checks it)
PLANTED_BUGS: list[tuple[str, ...]] = [
    (
        "counting rank * in * out (a full matrix per rank) instead of rank * (in + out)",
        "return rank * (in_features + out_features)",
        "return rank * in_features * out_features",
        (
            "rank * in * out: that is r full matrices, not two thin factors",
            "counting rank * in * out per Linear",
        ),
    ),
    (
        "forgetting to multiply by n_layers",
        "return n_layers * per_block",
        "return per_block",
        "forgetting to multiply by n_layers",
    ),
    (
        "fc1 and fc2 treated as d_model x d_model",
        '"fc1": (d_model, d_ff),  # up projection\n        "fc2": (d_ff, d_model),  # down projection',
        '"fc1": (d_model, d_model),  # up projection\n        "fc2": (d_model, d_model),  # down projection',
        "fc1 / fc2 treated as d_model x d_model",
    ),
    (
        "unknown target names are not rejected with ValueError",
        "    if unknown:\n",
        "    if False:\n",
        "check every name against the known targets first and raise ValueError yourself",
    ),
]

SUBLAYERS = {
    "q": "attn.branch.q",
    "k": "attn.branch.k",
    "v": "attn.branch.v",
    "o": "attn.branch.o",
    "fc1": "ffn.branch.fc1",
    "fc2": "ffn.branch.fc2",
}


def _int_bugs(got: int, expected: int, bugs: dict[str, int]) -> list[str]:
    """The bugs that give ``got``; a bug that gives the right answer here is never one of them."""
    return [name for name, value in bugs.items() if value == got and value != expected]


def _check_int(got, expected: int, *, what: str, drawn, bugs: dict[str, int], recheck=None) -> None:
    """Assert ``got == expected`` (an int), naming the classic bug that gives ``got``; when
    several coincide, ``recheck() -> (got, expected, bugs)`` on a larger fixed case tells them apart."""
    assert isinstance(got, int) and not isinstance(got, bool), explain(
        f"{what}: must return a Python int",
        drawn=drawn,
        expected=f"int {expected:,}",
        got=f"{type(got).__name__} {got!r}",
        hint="a parameter count is an integer: use integer arithmetic (no /, no tensors)",
    )
    if got != expected:
        names = _int_bugs(got, expected, bugs)
        if names and recheck is not None:
            try:
                again = _int_bugs(*recheck())
            except Exception:  # the larger case could not run: keep the honest list
                again = names
            names = [n for n in names if n in again]
        found = None
        if len(names) == 1:
            found = f"your result equals what this classic bug gives: {names[0]}"
        elif names:
            found = "your result equals what each of these classic bugs gives here; one of: " + "; ".join(
                names
            )
        raise AssertionError(
            explain(
                what,
                drawn=drawn,
                expected=f"{expected:,}",
                got=f"{got:,}",
                hint=found,
            )
        )


def _linear_bugs(i: int, o: int, r: int) -> dict[str, int]:
    return {
        "rank * in * out: that is r full matrices, not two thin factors": r * i * o,
        "in + out: the rank is missing": i + o,
        "only A counted (rank * in)": r * i,
        "only B counted (out * rank)": r * o,
        "in * out: the full weight, not the LoRA factors": i * o,
    }


@settings(max_examples=20, deadline=None)
@given(i=st.integers(1, 64), o=st.integers(1, 64), r=ranks(16))
@learner_code()
def test_one_linear_matches_a_real_lora_layer(impl, i, o, r) -> None:
    (lora_params_for_linear,) = require(impl, "lora_params_for_linear")
    layer = LoRALinear(nn.Linear(i, o), r)
    expected = layer.lora_A.numel() + layer.lora_B.numel()  # counted on a real layer
    _check_int(
        lora_params_for_linear(i, o, r),
        expected,
        what="LoRA parameters of one Linear",
        drawn={"in_features": i, "out_features": o, "rank": r},
        bugs=_linear_bugs(i, o, r),
        recheck=lambda: (lora_params_for_linear(7, 5, 3), 3 * (7 + 5), _linear_bugs(7, 5, 3)),
    )


@st.composite
def geometries(draw: st.DrawFn) -> dict:
    n_heads = draw(st.integers(1, 4))
    return {
        "d_model": n_heads * draw(st.integers(1, 4)),  # n_heads divides d_model
        "n_heads": n_heads,
        "d_ff": draw(st.integers(1, 24)),
        "n_layers": draw(st.integers(1, 3)),
        "targets": draw(st.lists(st.sampled_from(list(SUBLAYERS)), min_size=1, max_size=6, unique=True)),
        "rank": draw(st.integers(1, 4)),
        "container": draw(st.sampled_from(["list", "tuple", "set", "generator"])),
    }


def _as_container(targets: list[str], kind: str):
    return {"list": list, "tuple": tuple, "set": set, "generator": lambda t: (x for x in t)}[kind](targets)


def _count_by_injection(g: dict) -> int:
    """Build the transformer, inject LoRA on the matching names, count the new parameters."""
    config = TinyTransformerConfig(
        vocab_size=4,
        max_len=2,
        d_model=g["d_model"],
        n_heads=g["n_heads"],
        d_ff=g["d_ff"],
        n_layers=g["n_layers"],
    )
    model = TinyTransformer(config)
    names = [f"blocks.{i}.{SUBLAYERS[t]}" for i in range(g["n_layers"]) for t in g["targets"]]
    _, params = inject_lora(model, names, g["rank"])
    return sum(p.numel() for p in params)


# A fixed, non-degenerate geometry (d_model != d_ff, several layers, rank >= 2) for telling
# apart bugs that give the same count on a tiny drawn one.
RECHECK = {
    "d_model": 6,
    "n_heads": 2,
    "d_ff": 10,
    "n_layers": 3,
    "targets": ["q", "v", "fc1", "fc2"],
    "rank": 2,
}


def _model_bugs(g: dict) -> dict[str, int]:
    d, f, n, r, ts = g["d_model"], g["d_ff"], g["n_layers"], g["rank"], g["targets"]
    shape = {"fc1": (d, f), "fc2": (f, d)}

    def total(per_linear, shapes=shape, layers=n) -> int:
        return layers * sum(per_linear(*shapes.get(t, (d, d))) for t in ts)

    return {
        "forgetting to multiply by n_layers": total(lambda i, o: r * (i + o), layers=1),
        "fc1 / fc2 treated as d_model x d_model": total(lambda i, o: r * (i + o), shapes={}),
        "counting rank * in * out per Linear": total(lambda i, o: r * i * o),
        "the rank is missing (in + out per Linear)": total(lambda i, o: i + o),
        "fc1 and fc2 shapes both d_ff x d_ff": total(
            lambda i, o: r * (i + o), shapes={"fc1": (f, f), "fc2": (f, f)}
        ),
    }


@settings(max_examples=20, deadline=None)
@given(g=geometries())
@learner_code()
def test_transformer_count_matches_a_real_injection(impl, g) -> None:
    (lora_param_count,) = require(impl, "lora_param_count")
    expected = _count_by_injection(g)
    got = lora_param_count(
        g["d_model"], g["d_ff"], g["n_layers"], _as_container(g["targets"], g["container"]), g["rank"]
    )
    _check_int(
        got,
        expected,
        what="LoRA parameters of the whole transformer (counted on a real TinyTransformer with inject_lora)",
        drawn={k: g[k] for k in ("d_model", "d_ff", "n_layers", "targets", "rank", "container")},
        bugs=_model_bugs(g),
        recheck=lambda: (
            lora_param_count(6, 10, 3, list(RECHECK["targets"]), 2),
            _count_by_injection(RECHECK),
            _model_bugs(RECHECK),
        ),
    )


@learner_code()
def test_llama_7b_from_the_study_notes(impl) -> None:
    lora_params_for_linear, lora_param_count = require(impl, "lora_params_for_linear", "lora_param_count")
    llama = {"d_model": 4096, "d_ff": 11008, "n_layers": 32, "rank": 16}
    # 32 blocks · 4 projections · 16 · (4096 + 4096)
    g = {**llama, "targets": ["q", "k", "v", "o"]}
    _check_int(
        lora_param_count(4096, 11008, 32, {"q", "k", "v", "o"}, 16),
        16_777_216,
        what="LLaMA-7B, rank 16 on q, k, v, o (the 16.8M of the study notes)",
        drawn=g,
        bugs=_model_bugs(g),
    )
    # plus fc1 and fc2: 32 · 16 · (4 · 8192 + 2 · (4096 + 11008))
    g = {**llama, "targets": ["q", "k", "v", "o", "fc1", "fc2"]}
    _check_int(
        lora_param_count(4096, 11008, 32, ["q", "k", "v", "o", "fc1", "fc2"], 16),
        32_243_712,
        what="LLaMA-7B-sized, rank 16 on q, k, v, o, fc1, fc2",
        drawn=g,
        bugs=_model_bugs(g),
    )
    _check_int(
        lora_params_for_linear(4096, 4096, 16),
        131_072,
        what="one 4096 x 4096 projection at rank 16",
        drawn={"in_features": 4096, "out_features": 4096, "rank": 16},
        bugs=_linear_bugs(4096, 4096, 16),
    )


@settings(max_examples=15, deadline=None)
@given(
    good=st.lists(st.sampled_from(list(SUBLAYERS)), max_size=3, unique=True),
    bad=st.sampled_from(["Q", "fc3", "attn.q", "head", "query", "gate_proj", "", "qkv"]),
    position=st.integers(0, 3),
)
@learner_code()
def test_unknown_target_raises_value_error(impl, good, bad, position) -> None:
    (lora_param_count,) = require(impl, "lora_param_count")
    targets = list(good)
    targets.insert(min(position, len(targets)), bad)
    drawn = {"targets": targets}
    try:
        got = lora_param_count(8, 16, 2, targets, 2)
    except ValueError:
        return
    except NotImplementedError:
        raise
    except Exception as err:
        raise AssertionError(
            explain(
                "an unknown target name raised the wrong error",
                drawn=drawn,
                expected="ValueError naming the unknown target",
                got=f"{type(err).__name__}: {err}",
                hint="check every name against the known targets first and raise ValueError yourself",
            )
        ) from None
    raise AssertionError(
        explain(
            f"the unknown target {bad!r} was accepted",
            drawn=drawn,
            expected="ValueError",
            got=f"returned {got!r}",
            hint="a typo in a target list would silently count (or adapt) nothing: reject names "
            "outside q, k, v, o, fc1, fc2",
        )
    )
