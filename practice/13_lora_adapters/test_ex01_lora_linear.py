"""Grader for challenge 01 · LoRALinear. Run: peft-zoo check 1 (or pytest this file)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from peft_zoo.exercises.grading import CLASSIC_BUG, SEVERAL_BUGS, assert_matches, learner_code, require
from peft_zoo.testing import dtypes, explain, leading_shapes, linear_specs

CHALLENGE = "ex01_lora_linear"
pytestmark = pytest.mark.timeout(120)

# Classic mistakes, each planted alone into a copy of the answer: this grader must reject every one
# (checked by tests/test_exercises.py). (description, snippet in the answer, mistaken snippet,
# and the bug's name as this grader's "likely:" line gives it: tests/test_diagnosis.py checks it)
PLANTED_BUGS = [
    (
        "base weight left trainable",
        "self.base.requires_grad_(False)",
        "self.base.requires_grad_(True)",
        "call base.requires_grad_(False)",
    ),
    (
        "B random at init",
        "self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))",
        "self.lora_B = nn.Parameter(torch.randn(base.out_features, rank, **factory))",
        "B random at init: the layer no longer starts as its base",
    ),
    (
        "A zero at init",
        "nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))",
        "nn.init.zeros_(self.lora_A)",
        "A zero at init: B then gets no gradient",
    ),
    (
        "scale missing",
        "return self.base(x) + self.scale * F.linear(h, self.lora_B)",
        "return self.base(x) + F.linear(h, self.lora_B)",
        "the scale is missing (base(x) + B A x)",
    ),
    (
        "scale squared",
        "return self.base(x) + self.scale * F.linear(h, self.lora_B)",
        "return self.base(x) + self.scale**2 * F.linear(h, self.lora_B)",
        "the scale is squared",
    ),
    (
        "alpha used instead of alpha / rank",
        "self.scale = alpha / math.sqrt(rank) if rslora else alpha / rank",
        "self.scale = alpha / math.sqrt(rank) if rslora else alpha",
        "alpha used as the scale instead of alpha / rank",
    ),
    (
        "A and B transposed",
        "self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **factory))",
        "self.lora_A = nn.Parameter(torch.empty(base.in_features, rank, **factory))",
        "A and B transposed or swapped?",
    ),
    (
        "dropout applied to the base path",
        "return self.base(x) + self.scale * F.linear(h, self.lora_B)",
        "return self.base(self.lora_dropout(x)) + self.scale * F.linear(h, self.lora_B)",
        "dropout is applied to the base path",
    ),
    (
        "dropout ignored entirely (the LoRA path sees x in training mode too)",
        "h = F.linear(self.lora_dropout(x), self.lora_A)",
        "h = F.linear(x, self.lora_A)",
        "dropout is never applied",
    ),
]


def _pair(impl, ref, spec, dtype=torch.float32, **kw):
    """The learner's layer and the reference layer around identical copies of one base,
    holding identical random A and B (B nonzero, so the LoRA path matters)."""
    (impl_cls,) = require(impl, "LoRALinear")
    torch.manual_seed(spec["seed"])
    base = nn.Linear(spec["in_features"], spec["out_features"], bias=spec["bias"], dtype=dtype)
    mine = impl_cls(copy.deepcopy(base), spec["rank"], spec["alpha"], **kw)
    theirs = ref.LoRALinear(copy.deepcopy(base), spec["rank"], spec["alpha"], **kw)
    with torch.no_grad():
        theirs.lora_A.normal_()
        theirs.lora_B.normal_()
        for name in ("lora_A", "lora_B"):
            mine_p, ref_p = getattr(mine, name, None), getattr(theirs, name)
            if not isinstance(mine_p, torch.Tensor) or mine_p.shape != ref_p.shape:
                raise AssertionError(
                    explain(
                        f"{name} has the wrong type or shape",
                        drawn=_drawn(spec),
                        expected=f"a Parameter of shape {tuple(ref_p.shape)}",
                        got=repr(getattr(mine_p, "shape", mine_p)),
                        hint="lora_A is (rank, in_features) and lora_B is (out_features, rank): "
                        "A and B transposed or swapped?",
                    )
                )
            mine_p.copy_(ref_p)
    return mine, theirs


def _drawn(spec, **extra):
    keys = ("in_features", "out_features", "bias", "rank", "alpha", "seed")
    return {**{k: spec[k] for k in keys}, **extra}


def _recheck(impl, ref, rslora=False, dtype=torch.float32):
    """The same comparison on a fixed, non-degenerate layer (in != out, rank >= 2, alpha not
    1 or rank): tells apart bugs that coincide on a tiny drawn example."""

    def run():
        spec = {"in_features": 5, "out_features": 4, "bias": True, "rank": 3, "alpha": 7.0, "seed": 11}
        mine, theirs = _pair(impl, ref, spec, dtype=dtype, rslora=rslora)
        x = torch.randn(3, 5, dtype=dtype)
        with torch.no_grad():
            return mine(x), theirs(x), _bugs(theirs, x)

    return run


def _scale_bug(got: float, spec, rslora: bool, expected: float) -> str | None:
    """Name the classic mistake behind a wrong ``scale`` (the same names as :func:`_bugs`);
    mistakes that give the right scale for this draw are never named."""
    alpha, rank = spec["alpha"] or spec["rank"], spec["rank"]
    candidates = {
        "the scale is missing (base(x) + B A x)": 1.0,
        "the scale is squared": expected**2,
        "alpha used as the scale instead of alpha / rank": alpha,
        "rslora ignored (alpha / rank instead of alpha / sqrt(rank))"
        if rslora
        else ("alpha / sqrt(rank) used without rslora"): alpha / rank if rslora else alpha / math.sqrt(rank),
    }
    names = [
        n
        for n, v in candidates.items()
        if math.isclose(got, v, rel_tol=1e-6) and not math.isclose(v, expected, rel_tol=1e-6)
    ]
    if not names:
        return None
    if len(names) == 1:
        return CLASSIC_BUG + names[0]
    return SEVERAL_BUGS + "; ".join(names)


def _bugs(theirs, x):
    """What the classic mistakes would output for input ``x``."""
    base, A, B, s = theirs.base, theirs.lora_A, theirs.lora_B, theirs.scale
    rank = A.shape[0]
    alpha = s * rank
    return {
        "the scale is missing (base(x) + B A x)": lambda: base(x) + x @ A.T @ B.T,
        "the scale is squared": lambda: base(x) + s * s * (x @ A.T @ B.T),
        "alpha used as the scale instead of alpha / rank": lambda: base(x) + alpha * (x @ A.T @ B.T),
        "the LoRA path is never added (output = base(x))": lambda: base(x),
        "the base output is missing (only the LoRA path)": lambda: s * (x @ A.T @ B.T),
        "A and B multiplied in the wrong order": lambda: base(x) + s * (x @ B @ A),
    }


@settings(max_examples=20, deadline=None)
@given(spec=linear_specs(), dtype=dtypes(include_bfloat16=True))
@learner_code()
def test_parameters_shapes_dtype_and_frozen_base(impl, spec, dtype) -> None:
    (impl_cls,) = require(impl, "LoRALinear")
    base = nn.Linear(spec["in_features"], spec["out_features"], bias=spec["bias"], dtype=dtype)
    layer = impl_cls(base, spec["rank"], spec["alpha"])
    drawn = _drawn(spec, dtype=dtype)
    r, i, o = spec["rank"], spec["in_features"], spec["out_features"]
    assert layer.base is base, explain("self.base must be the layer you were given", drawn=drawn)
    for name, shape in (("lora_A", (r, i)), ("lora_B", (o, r))):
        p = getattr(layer, name, None)
        assert isinstance(p, nn.Parameter), explain(
            f"{name} must be an nn.Parameter", drawn=drawn, got=repr(p)
        )
        assert tuple(p.shape) == shape, explain(
            f"{name} has the wrong shape",
            drawn=drawn,
            expected=str(shape),
            got=str(tuple(p.shape)),
            hint="A is (rank, in_features), B is (out_features, rank)",
        )
        assert p.dtype == dtype, explain(
            f"{name} dtype must follow the base weight", expected=str(dtype), got=str(p.dtype)
        )
    frozen = [n for n, p in base.named_parameters() if p.requires_grad]
    assert not frozen, explain(
        "the base layer is still trainable",
        drawn=drawn,
        got=f"requires_grad=True on base.{frozen}",
        hint="call base.requires_grad_(False): otherwise the optimizer updates the pretrained weights",
    )
    trainable = sorted(n for n, p in layer.named_parameters() if p.requires_grad)
    assert trainable == ["lora_A", "lora_B"], explain(
        "exactly lora_A and lora_B should be trainable", expected="['lora_A', 'lora_B']", got=str(trainable)
    )


@settings(max_examples=20, deadline=None)
@given(spec=linear_specs(), lead=leading_shapes())
@learner_code()
def test_initialisation_b_zero_a_kaiming_and_output_equals_base(impl, spec, lead) -> None:
    (impl_cls,) = require(impl, "LoRALinear")
    torch.manual_seed(spec["seed"])
    base = nn.Linear(spec["in_features"], spec["out_features"], bias=spec["bias"])
    layer = impl_cls(copy.deepcopy(base), spec["rank"], spec["alpha"])
    drawn = _drawn(spec, lead=lead)
    assert torch.count_nonzero(layer.lora_B) == 0, explain(
        "lora_B must start at zero",
        drawn=drawn,
        hint="B random at init: the layer no longer starts as its base",
    )
    bound = 1 / math.sqrt(spec["in_features"])  # kaiming_uniform_(a=sqrt(5)) bound
    A = layer.lora_A.detach()
    assert A.abs().max() <= bound + 1e-6, explain(
        "lora_A values exceed the Kaiming-uniform bound",
        drawn=drawn,
        expected=f"|A| <= {bound:.4g}",
        got=f"max |A| = {A.abs().max().item():.4g}",
        hint="use nn.init.kaiming_uniform_(A, a=math.sqrt(5))",
    )
    assert A.numel() < 4 or (torch.count_nonzero(A) > 0 and A.std() > 0.1 * bound), explain(
        "lora_A looks zero or constant",
        drawn=drawn,
        hint="A zero at init: B then gets no gradient (dL/dB = g (A x)^T = 0) and LoRA never learns",
    )
    x = torch.randn(*lead, spec["in_features"])
    with torch.no_grad():
        assert_matches(
            layer(x), base(x), what="output at initialisation must equal the base output", drawn=drawn
        )


@settings(max_examples=25, deadline=None)
@given(spec=linear_specs(), lead=leading_shapes(), rslora=st.booleans(), dtype=dtypes())
# rank = min(in, out), the largest rank the contract allows, and a rank above it
@example(
    spec={"in_features": 3, "out_features": 5, "bias": True, "rank": 3, "alpha": 6.0, "seed": 1},
    lead=(2,),
    rslora=False,
    dtype=torch.float32,
)
@example(
    spec={"in_features": 2, "out_features": 2, "bias": False, "rank": 4, "alpha": None, "seed": 2},
    lead=(),
    rslora=True,
    dtype=torch.float64,
)
@learner_code()
def test_forward_matches_reference(impl, ref, spec, lead, rslora, dtype) -> None:
    mine, theirs = _pair(impl, ref, spec, dtype=dtype, rslora=rslora)
    drawn = _drawn(spec, lead=lead, rslora=rslora, dtype=dtype)
    expected_scale = (spec["alpha"] or spec["rank"]) / (math.sqrt(spec["rank"]) if rslora else spec["rank"])
    assert math.isclose(float(mine.scale), expected_scale, rel_tol=1e-6), explain(
        "scale is wrong",
        drawn=drawn,
        expected=f"{expected_scale:.6g} (alpha / {'sqrt(rank)' if rslora else 'rank'}, alpha defaults to rank)",
        got=f"{float(mine.scale):.6g}",
        hint=_scale_bug(float(mine.scale), spec, rslora, expected_scale),
    )
    x = torch.randn(*lead, spec["in_features"], dtype=dtype)
    with torch.no_grad():
        assert_matches(
            mine(x),
            theirs(x),
            what="forward output",
            drawn=drawn,
            bugs=_bugs(theirs, x),
            recheck=_recheck(impl, ref, rslora, dtype),
        )


@settings(max_examples=20, deadline=None)
@given(spec=linear_specs(), lead=leading_shapes(max_dims=2))
@learner_code()
def test_gradients_match_reference(impl, ref, spec, lead) -> None:
    mine, theirs = _pair(impl, ref, spec, dtype=torch.float64)
    drawn = _drawn(spec, lead=lead)
    x = torch.randn(*lead, spec["in_features"], dtype=torch.float64)
    g = torch.randn(*lead, spec["out_features"], dtype=torch.float64)
    (mine(x) * g).sum().backward()
    (theirs(x) * g).sum().backward()
    for name in ("lora_A", "lora_B"):
        got = getattr(mine, name).grad
        assert got is not None, explain(
            f"{name} received no gradient",
            drawn=drawn,
            hint="is the LoRA path detached, or built outside forward?",
        )
        assert_matches(got, getattr(theirs, name).grad, what=f"gradient of {name}", drawn=drawn)
    assert mine.base.weight.grad is None, explain("the frozen base weight received a gradient", drawn=drawn)


@settings(max_examples=15, deadline=None)
@given(spec=linear_specs(), p=st.sampled_from([0.1, 0.5, 0.9]))
@learner_code()
def test_dropout_touches_only_the_lora_path(impl, ref, spec, p) -> None:
    mine, theirs = _pair(impl, ref, spec, dropout=p)
    drawn = _drawn(spec, dropout=p)
    x = torch.randn(8, spec["in_features"])
    mine.eval()
    theirs.eval()
    with torch.no_grad():
        assert_matches(mine(x), theirs(x), what="eval mode: dropout must be inactive", drawn=drawn)
        mine.train()
        mine.lora_B.zero_()  # LoRA path now contributes nothing, dropped or not
        assert_matches(
            mine(x),
            F.linear(x, mine.base.weight, mine.base.bias),
            what="train mode with B = 0 must give exactly base(x)",
            drawn=drawn,
            hint="dropout is applied to the base path (or to the whole output): drop only the LoRA input",
        )


@settings(max_examples=15, deadline=None)
@given(d=st.integers(2, 8), bias=st.booleans(), p=st.sampled_from([0.1, 0.5, 0.9]), seed=st.integers(0, 99))
@learner_code()
def test_dropout_drops_the_lora_input_in_training_and_nothing_in_eval(impl, d, bias, p, seed) -> None:
    """With A = B = I (rank = in = out, scale 1) the LoRA path is exactly dropout(x): each entry
    of ``layer(x) - base(x)`` must be 0 or x / (1 - p) in training mode, and x in eval mode."""
    (impl_cls,) = require(impl, "LoRALinear")
    torch.manual_seed(seed)
    base = nn.Linear(d, d, bias=bias)
    layer = impl_cls(copy.deepcopy(base), d, dropout=p)
    drawn = {"in_features": d, "out_features": d, "rank": d, "bias": bias, "dropout": p, "seed": seed}
    with torch.no_grad():
        layer.lora_A.copy_(torch.eye(d))
        layer.lora_B.copy_(torch.eye(d))
        x = torch.randn(32, d) + 3.0  # no entry near 0: a dropped entry is unmistakable
        layer.eval()
        assert_matches(
            layer(x) - base(x),
            x,
            what="eval mode: the LoRA path (A = B = I) must be x itself, no dropout",
            drawn=drawn,
            hint="dropout must be off in eval mode: use nn.Dropout (or F.dropout(..., training=self.training))",
        )
        layer.train()
        delta = layer(x) - base(x)  # (32, d): dropout(x) if only the LoRA input is dropped
    kept = torch.isclose(delta, x / (1 - p), rtol=1e-4, atol=1e-5)
    dropped = delta.abs() <= 1e-5
    assert not torch.allclose(delta, x, rtol=1e-4, atol=1e-5), explain(
        f"train mode with dropout={p}: no entry of the LoRA input was dropped (of {x.numel()})",
        drawn=drawn,
        got=f"layer(x) - base(x) starts {delta.reshape(-1)[:4].tolist()} for x {x.reshape(-1)[:4].tolist()}",
        hint="dropout is never applied: the LoRA path must see lora_dropout(x) in training mode",
    )
    assert bool((kept | dropped).all()) and bool(dropped.any()), explain(
        "train mode: with A = B = I the LoRA path must be dropout(x): each entry 0 or x / (1 - p)",
        drawn=drawn,
        got=f"layer(x) - base(x) starts {delta.reshape(-1)[:4].tolist()} for x {x.reshape(-1)[:4].tolist()}",
        hint="apply nn.Dropout(p) to the input of the LoRA path only (not to the base, not to the output)",
    )
