"""Grader for challenge 12 · merge / unmerge. Run: peft-zoo check 12 (or pytest this file)."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from peft_zoo import LoRALinear
from peft_zoo.exercises.grading import diagnose, learner_code, require
from peft_zoo.testing import assert_close, dtypes, explain, leading_shapes, linear_specs

CHALLENGE = "ex12_merge_unmerge"
pytestmark = pytest.mark.timeout(120)

# Classic mistakes, planted into a copy of the reference answer by the test suite: the
# grader must reject every one. (description, exact snippet of the answer, replacement,
# and the bug's name as this grader's "likely:" line gives it: tests/test_diagnosis.py checks it)
PLANTED_BUGS: list[tuple[str, ...]] = [
    (
        "merge forgets the scale (adds B @ A instead of scale * B @ A)",
        "delta = layer.scale * (layer.lora_B @ layer.lora_A)  # (out, rank)",
        "delta = layer.lora_B @ layer.lora_A  # (out, rank)",
        ("the scale is missing (W0 + B @ A)", "the scale is missing (W0 + B @ A merged)"),
    ),
    (
        "unmerge does not restore the weight (only clears the flag)",
        "layer.base.weight.sub_(delta)",
        "pass",
        "unmerge did not subtract the update (the weight is still W0 + scale * B @ A)",
    ),
    (
        "merging twice adds the update twice (no check of layer.merged)",
        "if layer.merged:",
        "if False:",
        "the update was added twice: check layer.merged first",
    ),
    (
        "unmerging an unmerged layer subtracts the update anyway",
        "if not layer.merged:",
        "if False:",
        "return early when not layer.merged",
    ),
    (
        "merge never sets the merged flag",
        "    layer.merged = True\n",
        "    pass\n",
        "set it to True in merge_lora and False in unmerge_lora",
    ),
    (
        "merge runs outside torch.no_grad(), so autograd records the update",
        "    with torch.no_grad():\n        delta = layer.scale * (layer.lora_B @ layer.lora_A)  # (out, rank)",
        "    if True:\n        delta = layer.scale * (layer.lora_B @ layer.lora_A)  # (out, rank)",
        "change the weight in place under torch.no_grad()",
    ),
]


class _NoShortcut(LoRALinear):
    """The library layer, with its own merge()/unmerge() closed: the exercise is to write them."""

    def merge(self) -> None:
        raise AssertionError(
            "merge_lora called layer.merge(): write the weight arithmetic yourself "
            "(base.weight += scale * B @ A under torch.no_grad())"
        )

    def unmerge(self) -> None:
        raise AssertionError(
            "unmerge_lora called layer.unmerge(): write the weight arithmetic yourself "
            "(base.weight -= scale * B @ A under torch.no_grad())"
        )


def _layer(spec, dtype=torch.float32, rslora=False) -> LoRALinear:
    """A LoRA layer in eval mode holding random A and B (B nonzero, so merging matters)."""
    torch.manual_seed(spec["seed"])
    base = nn.Linear(spec["in_features"], spec["out_features"], bias=spec["bias"], dtype=dtype)
    layer = _NoShortcut(base, spec["rank"], spec["alpha"], rslora=rslora).eval()
    with torch.no_grad():
        layer.lora_A.normal_()
        layer.lora_B.normal_()
    return layer


def _drawn(spec, **extra):
    keys = ("in_features", "out_features", "bias", "rank", "alpha", "seed")
    return {**{k: spec[k] for k in keys}, **extra}


def _tol(dtype: torch.dtype, magnitude: float) -> tuple[float, float]:
    """Tolerances scaled by the size of the numbers involved: W0 + scale·B·A rounds differently
    from W0 x + scale·B(A x), and the error grows with the entries' magnitude."""
    eps = {torch.float64: 1e-12, torch.float32: 1e-5}[dtype]
    return 10 * eps, eps * max(1.0, magnitude)


def _compare(actual, expected, *, what, drawn, magnitude, bugs=None, hint=None, dtype=None) -> None:
    """assert_close with magnitude-aware tolerances for ``dtype`` (the layer's; defaults to
    ``expected.dtype``), naming the classic bug ``actual`` reproduces."""
    rtol, atol = _tol(dtype or expected.dtype, magnitude)
    if bugs and not (
        isinstance(actual, torch.Tensor)
        and actual.shape == expected.shape
        and torch.allclose(actual.double(), expected.double(), rtol=rtol, atol=atol)
    ):
        hint = diagnose(actual, bugs, rtol=rtol, atol=atol, expected=expected) or hint
    assert_close(actual, expected, what=what, drawn=drawn, hint=hint, rtol=rtol, atol=atol)


def _weight_bugs(w0, delta, scale):
    return {
        "the scale is missing (W0 + B @ A)": lambda: w0 + delta / scale,
        "the weight did not change at all": lambda: w0,
        "the update was subtracted instead of added": lambda: w0 - delta,
        "the update was added twice": lambda: w0 + 2 * delta,
        "the scale is squared (W0 + scale**2 * B @ A)": lambda: w0 + delta * scale,
    }


def _delta(layer) -> torch.Tensor:
    """scale · B A in float64, computed independently of the learner's code."""
    return layer.scale * (layer.lora_B.detach().double() @ layer.lora_A.detach().double())


def _magnitude(layer, x=None) -> float:
    w = layer.base.weight.detach().double().abs() + _delta(layer).abs()
    if x is None:
        return float(w.max())
    return float((x.double().abs() @ w.T).max()) if x.numel() else 1.0


def _check_weight_untouched_by_autograd(layer, drawn, after: str) -> None:
    w = layer.base.weight
    assert isinstance(w, nn.Parameter) and w.is_leaf and w.grad_fn is None and not w.requires_grad, explain(
        f"after {after}, base.weight is no longer a frozen leaf Parameter",
        drawn=drawn,
        got=f"type {type(w).__name__}, requires_grad={w.requires_grad}, grad_fn={w.grad_fn}",
        hint="change the weight in place under torch.no_grad() (base.weight.add_(delta)); without "
        "no_grad autograd records the update and the frozen weight starts requiring grad",
    )


def _check_flag(layer, expected: bool, drawn, after: str) -> None:
    got = getattr(layer, "merged", None)
    assert got is expected, explain(
        f"after {after}, layer.merged is wrong",
        drawn=drawn,
        expected=repr(expected),
        got=repr(got),
        hint="the forward of LoRALinear reads layer.merged: set it to True in merge_lora and False "
        "in unmerge_lora, or the update is applied twice (or not at all)",
    )


specs = linear_specs(max_dim=12, max_rank=6)


@settings(max_examples=20, deadline=None)
@given(spec=specs, lead=leading_shapes(max_dims=2), rslora=st.booleans(), dtype=dtypes())
# rank = min(in, out): the largest rank the contract allows (a full-rank update)
@example(
    spec={"in_features": 4, "out_features": 3, "bias": True, "rank": 3, "alpha": 6.0, "seed": 5},
    lead=(2,),
    rslora=False,
    dtype=torch.float32,
)
@learner_code()
def test_merge_keeps_the_function(impl, spec, lead, rslora, dtype) -> None:
    merge_lora, _ = require(impl, "merge_lora", "unmerge_lora")
    layer = _layer(spec, dtype, rslora)
    drawn = _drawn(spec, lead=lead, rslora=rslora, dtype=dtype)
    weight = layer.base.weight
    w0 = weight.detach().double().clone()
    a0, b0 = layer.lora_A.detach().clone(), layer.lora_B.detach().clone()
    x = torch.randn(*lead, spec["in_features"], dtype=dtype)
    with torch.no_grad():
        before = layer(x)
    delta = _delta(layer)

    result = merge_lora(layer)

    assert result is None, explain(
        "merge_lora should change the layer in place and return None", got=repr(result)
    )
    _check_flag(layer, True, drawn, "merge_lora")
    assert layer.base.weight is weight, explain(
        "merge_lora replaced base.weight with a new object",
        drawn=drawn,
        hint="update the existing Parameter in place (base.weight.add_(delta) under torch.no_grad()): "
        "optimizers and other references hold the old object",
    )
    _check_weight_untouched_by_autograd(layer, drawn, "merge_lora")
    assert torch.equal(layer.lora_A, a0) and torch.equal(layer.lora_B, b0), explain(
        "merge_lora changed lora_A or lora_B", drawn=drawn, hint="only base.weight changes when merging"
    )
    _compare(
        layer.base.weight.detach().double(),
        w0 + delta,
        what="merged base.weight must be W0 + scale * B @ A",
        drawn={**drawn, "scale": layer.scale},
        magnitude=_magnitude(layer),
        dtype=dtype,
        bugs=_weight_bugs(w0, delta, layer.scale),
    )
    with torch.no_grad():
        after = layer(x)
    _compare(
        after,
        before,
        what="merged forward (eval) must equal the unmerged forward",
        drawn=drawn,
        magnitude=_magnitude(layer, x),
    )


@settings(max_examples=20, deadline=None)
@given(spec=specs, rslora=st.booleans(), dtype=dtypes())
@learner_code()
def test_unmerge_restores_the_base_weight(impl, spec, rslora, dtype) -> None:
    merge_lora, unmerge_lora = require(impl, "merge_lora", "unmerge_lora")
    layer = _layer(spec, dtype, rslora)
    drawn = _drawn(spec, rslora=rslora, dtype=dtype)
    weight = layer.base.weight
    w0 = weight.detach().double().clone()
    delta = _delta(layer)
    x = torch.randn(5, spec["in_features"], dtype=dtype)
    with torch.no_grad():
        before = layer(x)

    merge_lora(layer)
    _check_flag(layer, True, drawn, "merge_lora")  # else unmerge_lora rightly does nothing
    result = unmerge_lora(layer)

    assert result is None, explain(
        "unmerge_lora should change the layer in place and return None", got=repr(result)
    )
    _check_flag(layer, False, drawn, "merge_lora then unmerge_lora")
    assert layer.base.weight is weight, explain(
        "unmerge_lora replaced base.weight with a new object",
        drawn=drawn,
        hint="subtract in place: base.weight.sub_(delta) under torch.no_grad()",
    )
    _check_weight_untouched_by_autograd(layer, drawn, "unmerge_lora")
    _compare(
        layer.base.weight.detach().double(),
        w0,
        what="after merge then unmerge, base.weight must be W0 again",
        drawn={**drawn, "scale": layer.scale},
        magnitude=_magnitude(layer),
        dtype=dtype,
        bugs={
            "unmerge did not subtract the update (the weight is still W0 + scale * B @ A)": lambda: (
                w0 + delta
            ),
            "unmerge subtracted the update twice": lambda: w0 - delta,
        },
    )
    with torch.no_grad():
        again = layer(x)
    _compare(
        again,
        before,
        what="forward after merge + unmerge must equal the original forward",
        drawn=drawn,
        magnitude=_magnitude(layer, x),
    )


@settings(max_examples=15, deadline=None)
@given(spec=specs, dtype=dtypes())
@learner_code()
def test_merge_twice_and_unmerge_twice_are_idempotent(impl, spec, dtype) -> None:
    merge_lora, unmerge_lora = require(impl, "merge_lora", "unmerge_lora")
    layer = _layer(spec, dtype)
    drawn = _drawn(spec, dtype=dtype)
    w0 = layer.base.weight.detach().clone()
    delta = _delta(layer)
    mag = _magnitude(layer)

    unmerge_lora(layer)  # never merged: nothing to do
    _check_flag(layer, False, drawn, "unmerge_lora on a layer that was never merged")
    assert torch.equal(layer.base.weight, w0), explain(
        "unmerge_lora on a layer that was never merged changed base.weight",
        drawn=drawn,
        hint="return early when not layer.merged: otherwise the update is subtracted from a weight "
        "that never had it",
    )

    merge_lora(layer)
    merge_lora(layer)
    _check_flag(layer, True, drawn, "merge_lora twice")
    _compare(
        layer.base.weight.detach().double(),
        w0.double() + delta,
        what="merge_lora twice must equal merge_lora once",
        drawn=drawn,
        magnitude=mag,
        dtype=dtype,
        bugs={"the update was added twice: check layer.merged first": lambda: w0.double() + 2 * delta},
    )

    unmerge_lora(layer)
    unmerge_lora(layer)
    _check_flag(layer, False, drawn, "unmerge_lora twice")
    _compare(
        layer.base.weight.detach().double(),
        w0.double(),
        what="merge, merge, unmerge, unmerge must give W0 back",
        drawn=drawn,
        magnitude=mag,
        dtype=dtype,
        bugs={"the update was subtracted twice: check layer.merged first": lambda: w0.double() - delta},
    )


@learner_code()
def test_textbook_example_scale_four(impl) -> None:
    """A fixed layer with scale = alpha / rank = 12 / 3 = 4, cycled merge/unmerge three times."""
    merge_lora, unmerge_lora = require(impl, "merge_lora", "unmerge_lora")
    spec = {"in_features": 6, "out_features": 5, "bias": True, "rank": 3, "alpha": 12.0, "seed": 1234}
    layer = _layer(spec, torch.float64)
    drawn = _drawn(spec, dtype=torch.float64, scale=layer.scale)
    w0 = layer.base.weight.detach().clone()
    delta = _delta(layer)
    x = torch.randn(4, 6, dtype=torch.float64)
    with torch.no_grad():
        before = layer(x)
        plain = copy.deepcopy(layer.base)
        plain.weight.add_(delta)  # what a merged layer must compute, independently
        expected_merged = plain(x)
    for cycle in range(3):
        merge_lora(layer)
        with torch.no_grad():
            _compare(
                layer(x),
                expected_merged,
                what=f"cycle {cycle}: merged forward",
                drawn=drawn,
                magnitude=_magnitude(layer, x),
                bugs={
                    "the scale is missing (W0 + B @ A merged)": lambda: (
                        x @ (w0 + delta / 4).T + layer.base.bias
                    ),
                    "the weight was not changed by merge (the merged layer returns base(x) with W0)": lambda: (
                        x @ w0.T + layer.base.bias
                    ),
                },
            )
        unmerge_lora(layer)
        with torch.no_grad():
            _compare(
                layer(x),
                before,
                what=f"cycle {cycle}: forward after unmerge",
                drawn=drawn,
                magnitude=_magnitude(layer, x),
            )
