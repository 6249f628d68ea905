"""Grader for challenge 08 · IA3Linear. Run: peft-zoo check 8 (or pytest this file)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from peft_zoo.exercises.grading import assert_matches, learner_code, require
from peft_zoo.testing import dims, dtypes, explain, leading_shapes, seeds

CHALLENGE = "ex08_ia3_linear"
pytestmark = pytest.mark.timeout(120)

# Classic mistakes, planted into a copy of the reference answer by the test suite: the
# grader must reject every one. (description, exact snippet of the answer, replacement,
# and the bug's name as this grader's "likely:" line gives it: tests/test_diagnosis.py checks it)
PLANTED_BUGS: list[tuple[str, ...]] = [
    (
        "the IA³ scale is initialised to zero (the layer starts by outputting 0)",
        "torch.ones(base.out_features",
        "torch.zeros(base.out_features",
        "the IA³ scale initialised to zero multiplies every output by 0",
    ),
    (
        "the scale is applied before the base: base(x * scale)",
        "return self.base(x) * self.scale",
        "return self.base(x * self.scale)",
        "the scale is applied to the input: base(x * scale)",
    ),
    (
        "the base layer is left trainable",
        "        self.base.requires_grad_(False)  # only the scale trains\n",
        "",
        "call base.requires_grad_(False)",
    ),
    (
        "the scale is created in float32 whatever the base dtype",
        ", dtype=w.dtype, device=w.device)",
        ", device=w.device)",
        "torch.ones(n, dtype=base.weight.dtype",
    ),
    (
        "the scale is a plain tensor, not an nn.Parameter (it never trains)",
        "self.scale = nn.Parameter(torch.ones(base.out_features, dtype=w.dtype, device=w.device))",
        "self.scale = torch.ones(base.out_features, dtype=w.dtype, device=w.device)",
        "a plain tensor attribute is not registered",
    ),
    (
        "the layer wraps a new Linear instead of the one it was given",
        "self.base = base\n",
        "self.base = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)\n",
        "keep the Linear itself (self.base = base)",
    ),
    (
        "the bias is not scaled: (W0 x) * scale + b",
        "return self.base(x) * self.scale",
        "return torch.nn.functional.linear(x, self.base.weight) * self.scale + (\n"
        "            0 if self.base.bias is None else self.base.bias\n"
        "        )",
        "the bias is not scaled: (W0 x) ⊙ l + b",
    ),
]


@st.composite
def ia3_specs(draw):
    """in/out features (equal when ``square``, so an input-side scale is not a shape error), bias, seed."""
    square = draw(st.booleans())
    d_in = draw(dims(12))
    return {
        "in_features": d_in,
        "out_features": d_in if square else draw(dims(12)),
        "bias": draw(st.booleans()),
        "seed": draw(seeds()),
    }


def _base(spec, dtype=torch.float32) -> nn.Linear:
    torch.manual_seed(spec["seed"])
    return nn.Linear(spec["in_features"], spec["out_features"], bias=spec["bias"], dtype=dtype)


def _pair(impl, ref, spec, dtype=torch.float32):
    """The learner's layer and the reference layer around identical copies of one base,
    holding the same random scale (so the scale matters)."""
    (impl_cls,) = require(impl, "IA3Linear")
    base = _base(spec, dtype)
    mine = impl_cls(copy.deepcopy(base))
    theirs = ref.IA3Linear(copy.deepcopy(base))
    with torch.no_grad():
        theirs.scale.copy_(torch.randn(spec["out_features"], dtype=dtype) + 1)
        got = getattr(mine, "scale", None)
        if not isinstance(got, torch.Tensor) or got.shape != theirs.scale.shape:
            raise AssertionError(
                explain(
                    "scale has the wrong type or shape",
                    drawn=spec,
                    expected=f"a Parameter of shape {tuple(theirs.scale.shape)} (out_features,)",
                    got=repr(getattr(got, "shape", got)),
                    hint="IA³ (this form) learns one number per OUTPUT feature",
                )
            )
        got.copy_(theirs.scale)
    return mine, theirs


def _recheck(impl, ref, dtype=torch.float32):
    """The forward comparison on a fixed, non-degenerate layer (in = out = 5, with bias): on a
    tiny drawn example (in = out = 1) base(x * l) and (W0 x) l + b coincide."""

    def run():
        spec = {"in_features": 5, "out_features": 5, "bias": True, "seed": 7}
        mine, theirs = _pair(impl, ref, spec, dtype)
        x = torch.randn(3, 5, dtype=dtype)
        with torch.no_grad():
            return mine(x), theirs(x), _bugs(theirs, x)

    return run


def _bugs(theirs, x):
    """What the classic mistakes would output for input ``x``."""
    base, s = theirs.base, theirs.scale
    w, b = base.weight, base.bias
    return {
        "the scale is applied to the input: base(x * scale)": lambda: base(x * s),
        "the bias is not scaled: (W0 x) ⊙ l + b": lambda: F.linear(x, w) * s + (0 if b is None else b),
        "the scale is added instead of multiplied": lambda: base(x) + s,
        "the scale is never applied (output = base(x))": lambda: base(x),
    }


def _call(layer, x, drawn):
    """The learner's forward; an exception becomes a failure that explains itself."""
    try:
        return layer(x)
    except NotImplementedError:
        raise
    except Exception as err:
        raise AssertionError(
            explain(
                "forward raised on a valid input",
                drawn=drawn,
                got=f"{type(err).__name__}: {err}",
                hint="scale has out_features entries, so it multiplies the OUTPUT of base: a shape "
                "error here usually means base(x * scale)",
            )
        ) from None


def _check_starts_at_ones(scale, drawn) -> None:
    """IA³'s scale starts at ones, so the layer starts equal to its base."""
    if not torch.all(scale.detach() == 1):
        zero = bool(torch.all(scale.detach() == 0))
        raise AssertionError(
            explain(
                "scale must start at ones",
                drawn=drawn,
                expected="all ones",
                got="all zeros" if zero else f"values {scale.detach().reshape(-1)[:6].float().tolist()}",
                hint="the IA³ scale initialised to zero multiplies every output by 0: the layer starts "
                "by forgetting its base. Ones make it start equal to the base"
                if zero
                else "ones make the layer start equal to its base",
            )
        )


@settings(max_examples=20, deadline=None, report_multiple_bugs=False)
@given(spec=ia3_specs(), dtype=dtypes(include_bfloat16=True), lead=leading_shapes(max_dims=2))
@learner_code()
def test_scale_starts_at_ones_follows_dtype_and_base_is_frozen(impl, spec, dtype, lead) -> None:
    (impl_cls,) = require(impl, "IA3Linear")
    base = _base(spec, dtype)
    layer = impl_cls(base)
    drawn = {**spec, "dtype": dtype}
    assert getattr(layer, "base", None) is base, explain(
        "self.base must be the layer you were given",
        drawn=drawn,
        got=f"a different {type(getattr(layer, 'base', None)).__name__}",
        hint="keep the Linear itself (self.base = base): its pretrained weights are the point",
    )
    scale = getattr(layer, "scale", None)
    assert isinstance(scale, nn.Parameter), explain(
        "scale must be an nn.Parameter",
        drawn=drawn,
        got=f"{type(scale).__name__}",
        hint="a plain tensor attribute is not registered: the optimizer never sees it and it never trains",
    )
    assert tuple(scale.shape) == (spec["out_features"],), explain(
        "scale has the wrong shape",
        drawn=drawn,
        expected=f"({spec['out_features']},): one number per output feature",
        got=str(tuple(scale.shape)),
    )
    assert scale.dtype == dtype, explain(
        "scale's dtype must follow the base weight",
        drawn=drawn,
        expected=str(dtype),
        got=str(scale.dtype),
        hint="torch.ones(n, dtype=base.weight.dtype, device=base.weight.device)",
    )
    _check_starts_at_ones(scale, drawn)
    trainable_base = [n for n, p in base.named_parameters() if p.requires_grad]
    assert not trainable_base, explain(
        "the base layer is still trainable",
        drawn=drawn,
        got=f"requires_grad=True on base.{trainable_base}",
        hint="call base.requires_grad_(False): otherwise the optimizer updates the pretrained weights",
    )
    trainable = sorted(n for n, p in layer.named_parameters() if p.requires_grad)
    assert trainable == ["scale"], explain(
        "exactly one parameter should be trainable: scale", expected="['scale']", got=str(trainable)
    )
    x = torch.randn(*lead, spec["in_features"], dtype=dtype)
    with torch.no_grad():
        assert_matches(
            _call(layer, x, drawn), base(x), what="output at initialisation must equal base(x)", drawn=drawn
        )


@settings(max_examples=20, deadline=None, report_multiple_bugs=False)
@given(spec=ia3_specs(), lead=leading_shapes(), dtype=dtypes())
@learner_code()
def test_forward_matches_reference(impl, ref, spec, lead, dtype) -> None:
    mine, theirs = _pair(impl, ref, spec, dtype)
    drawn = {**spec, "lead": lead, "dtype": dtype}
    x = torch.randn(*lead, spec["in_features"], dtype=dtype)
    with torch.no_grad():
        assert_matches(
            _call(mine, x, drawn),
            theirs(x),
            what="forward output (random scale)",
            drawn=drawn,
            bugs=_bugs(theirs, x),
            recheck=_recheck(impl, ref, dtype),
        )


@settings(max_examples=20, deadline=None, report_multiple_bugs=False)
@given(spec=ia3_specs(), lead=leading_shapes(max_dims=2))
@learner_code()
def test_gradients_match_reference(impl, ref, spec, lead) -> None:
    mine, theirs = _pair(impl, ref, spec, torch.float64)
    drawn = {**spec, "lead": lead}
    x = torch.randn(*lead, spec["in_features"], dtype=torch.float64)
    g = torch.randn(*lead, spec["out_features"], dtype=torch.float64)
    (_call(mine, x, drawn) * g).sum().backward()
    (theirs(x) * g).sum().backward()
    assert mine.scale.grad is not None, explain(
        "scale received no gradient",
        drawn=drawn,
        hint="is scale an nn.Parameter with requires_grad=True, used inside forward?",
    )
    assert_matches(mine.scale.grad, theirs.scale.grad, what="gradient of scale", drawn=drawn)
    assert mine.base.weight.grad is None, explain(
        "the frozen base weight received a gradient",
        drawn=drawn,
        hint="freeze the base: base.requires_grad_(False)",
    )
