"""IA3Linear: output form y = (x W0^T + b) * l and feed-forward form y = (x * l) W0^T + b."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from peft_zoo import IA3Linear, LoRALinear
from peft_zoo.testing import (
    assert_close,
    assert_unchanged,
    dims,
    dtypes,
    leading_shapes,
    requires_grad_map,
    seeds,
    snapshot,
    tolerance,
)

FAST = settings(max_examples=25, deadline=None)


@st.composite
def ia3_specs(draw):
    return {
        "in_features": draw(dims()),
        "out_features": draw(dims()),
        "bias": draw(st.booleans()),
        "feedforward": draw(st.booleans()),
        "seed": draw(seeds()),
    }


def make_ia3(spec: dict, dtype: torch.dtype = torch.float32) -> IA3Linear:
    torch.manual_seed(spec["seed"])
    base = nn.Linear(spec["in_features"], spec["out_features"], bias=spec["bias"], dtype=dtype)
    return IA3Linear(base, feedforward=spec["feedforward"])


def random_scale(layer: IA3Linear) -> torch.Tensor:
    """Random l bounded away from zero (so merge is allowed and unmerge is well conditioned)."""
    with torch.no_grad():
        n = layer.scale.shape[0]
        sign = torch.where(torch.rand(n) < 0.5, -1.0, 1.0)
        layer.scale.copy_((sign * (0.5 + torch.rand(n) * 1.5)).to(layer.scale.dtype))
    return layer.scale.detach().clone()


def hand_forward(x, w, b, lvec, feedforward):
    x64, w64, l64 = x.double(), w.double(), lvec.double()
    if feedforward:
        y = (x64 * l64) @ w64.T
        return y if b is None else y + b.double()
    y = x64 @ w64.T
    if b is not None:
        y = y + b.double()
    return y * l64


def tol(dtype, *terms):
    rtol, atol = tolerance(dtype)
    return rtol, atol * (1.0 + sum(float(t.detach().abs().max()) for t in terms if t.numel()))


# ----------------------------------------------------------------------------- construction


@FAST
@given(spec=ia3_specs(), lead=leading_shapes(), dtype=dtypes())
def test_init_ones_and_equals_base(spec, lead, dtype):
    layer = make_ia3(spec, dtype)
    n = spec["in_features"] if spec["feedforward"] else spec["out_features"]
    assert isinstance(layer.scale, nn.Parameter)
    assert tuple(layer.scale.shape) == (n,), (
        "scale must be (in_features,) for feedforward, (out_features,) otherwise"
    )
    assert layer.scale.dtype == dtype
    assert torch.equal(layer.scale.detach(), torch.ones(n, dtype=dtype))
    x = torch.randn(*lead, spec["in_features"], dtype=dtype)
    out = layer(x)
    assert out.shape == (*lead, spec["out_features"])
    assert torch.equal(out, layer.base(x)), "scale = 1 must give the base output"


def test_base_frozen_only_scale_trainable():
    base = nn.Linear(5, 3)
    for ff in (False, True):
        layer = IA3Linear(nn.Linear(5, 3), feedforward=ff)
        assert requires_grad_map(layer) == {"base.weight": False, "base.bias": False, "scale": True}
    assert IA3Linear(base).base is base


def test_adapter_follows_base_device():
    layer = IA3Linear(nn.Linear(5, 3, device="meta", dtype=torch.float64), feedforward=True)
    assert layer.scale.device.type == "meta" and layer.scale.dtype == torch.float64
    assert tuple(layer.scale.shape) == (5,)


# ----------------------------------------------------------------------------- forward math


@FAST
@given(spec=ia3_specs(), lead=leading_shapes(), dtype=dtypes())
def test_forward_matches_hand_formula(spec, lead, dtype):
    layer = make_ia3(spec, dtype)
    w0 = layer.base.weight.detach().clone()
    b0 = None if layer.base.bias is None else layer.base.bias.detach().clone()
    scale = random_scale(layer)
    x = torch.randn(*lead, spec["in_features"], dtype=dtype)
    expected = hand_forward(x, w0, b0, scale, spec["feedforward"])
    rtol, atol = tol(dtype, expected)
    hint = (
        "scaled the output instead of the input (or vice versa)"
        if spec["feedforward"]
        else "scaled the input, or forgot the bias is scaled too"
    )
    assert_close(
        layer(x),
        expected,
        what="IA3 forward vs hand formula",
        drawn={**spec, "lead": lead, "dtype": dtype},
        hint=hint,
        rtol=rtol,
        atol=atol,
    )


@FAST
@given(spec=ia3_specs(), lead=leading_shapes(max_dims=2))
def test_gradients_only_on_scale_and_match_formula(spec, lead):
    layer = make_ia3(spec, torch.float64)
    w0 = layer.base.weight.detach().clone()
    b0 = None if layer.base.bias is None else layer.base.bias.detach().clone()
    random_scale(layer)
    x = torch.randn(*lead, spec["in_features"], dtype=torch.float64)
    g = torch.randn(*lead, spec["out_features"], dtype=torch.float64)
    (layer(x) * g).sum().backward()

    l_ref = layer.scale.detach().clone().requires_grad_(True)
    (hand_forward(x, w0, b0, l_ref, spec["feedforward"]) * g).sum().backward()

    assert layer.base.weight.grad is None
    if layer.base.bias is not None:
        assert layer.base.bias.grad is None
    assert_close(layer.scale.grad, l_ref.grad, what="grad of IA3 scale", drawn={**spec, "lead": lead})


def test_wrong_last_dim_raises():
    layer = IA3Linear(nn.Linear(5, 3))
    with pytest.raises(ValueError, match=re.escape("(..., 5)") + ".*" + re.escape("(2, 3)")):
        layer(torch.randn(2, 3))


@pytest.mark.parametrize("base", [nn.Conv1d(4, 3, 1), LoRALinear(nn.Linear(4, 3), 2)], ids=["conv1d", "lora"])
def test_base_not_linear_rejected(base):
    before = snapshot(base)
    grads = requires_grad_map(base)
    with pytest.raises(
        TypeError, match=r"must be an nn\.Linear or a transformers Conv1D, got " + type(base).__name__
    ):
        IA3Linear(base)
    assert_unchanged(base, before, what="base after rejected IA3Linear")
    assert requires_grad_map(base) == grads


# ----------------------------------------------------------------------------- merge


@FAST
@given(spec=ia3_specs(), lead=leading_shapes(max_dims=2), dtype=dtypes())
def test_merge_unmerge_round_trip(spec, lead, dtype):
    layer = make_ia3(spec, dtype).eval()
    w0 = layer.base.weight.detach().clone()
    b0 = None if layer.base.bias is None else layer.base.bias.detach().clone()
    lvec = random_scale(layer)
    x = torch.randn(*lead, spec["in_features"], dtype=dtype)
    drawn = {**spec, "lead": lead, "dtype": dtype}
    unmerged = layer(x)
    rtol, atol = tol(dtype, unmerged)
    wtol = dict(zip(("rtol", "atol"), tolerance(dtype), strict=True))

    layer.merge()
    assert layer.merged is True
    if spec["feedforward"]:
        expected_w = w0.double() * lvec.double()[None, :]  # W0 diag(l)
        expected_b = b0
    else:
        expected_w = lvec.double()[:, None] * w0.double()  # diag(l) W0
        expected_b = None if b0 is None else lvec.double() * b0.double()
    assert_close(layer.base.weight, expected_w, what="merged weight", drawn=drawn, **wtol)
    if b0 is not None:
        assert_close(
            layer.base.bias,
            expected_b,
            what="merged bias",
            drawn=drawn,
            **wtol,
            hint="feed-forward form must not scale the bias; output form must",
        )
    merged_w = layer.base.weight.detach().clone()
    assert_close(layer(x), unmerged, what="merged vs unmerged output", drawn=drawn, rtol=rtol, atol=atol)

    layer.merge()  # no-op
    assert torch.equal(layer.base.weight, merged_w), "merging twice scaled twice"

    layer.unmerge()
    assert layer.merged is False
    assert_close(layer.base.weight, w0, what="unmerged weight", drawn=drawn, **wtol)
    if b0 is not None:
        assert_close(layer.base.bias, b0, what="unmerged bias", drawn=drawn, **wtol)
    restored = snapshot(layer)
    layer.unmerge()  # no-op
    assert_unchanged(layer, restored, what="second unmerge")
    assert_close(layer(x), unmerged, what="output after unmerge", drawn=drawn, rtol=rtol, atol=atol)


@pytest.mark.parametrize("feedforward", [False, True])
def test_merge_refuses_zero_scale_and_leaves_weight(feedforward):
    torch.manual_seed(0)
    layer = IA3Linear(nn.Linear(4, 3), feedforward=feedforward)
    random_scale(layer)
    with torch.no_grad():
        layer.scale[1] = 0.0
    before = snapshot(layer)
    with pytest.raises(ValueError, match="zero"):
        layer.merge()
    assert layer.merged is False
    assert_unchanged(layer, before, what="IA3 layer after a refused merge")


@pytest.mark.parametrize("feedforward", [False, True])
def test_merged_training_raises_but_inference_works(feedforward):
    torch.manual_seed(0)
    layer = IA3Linear(nn.Linear(4, 3), feedforward=feedforward)
    random_scale(layer)
    x = torch.randn(2, 4)
    expected = layer(x).detach()
    layer.merge()
    layer.train()
    with pytest.raises(RuntimeError, match="unmerge"):
        layer(x)
    with torch.no_grad():
        assert_close(layer(x), expected, what="merged IA3 under no_grad")
    layer.eval()
    assert_close(layer(x), expected, what="merged IA3 in eval mode")


@pytest.mark.parametrize("feedforward", [False, True])
def test_weight_and_bias_properties_are_the_effective_ones(feedforward):
    torch.manual_seed(0)
    layer = IA3Linear(nn.Linear(6, 4), feedforward=feedforward)
    with torch.no_grad():
        layer.scale.uniform_(0.5, 1.5)
    x = torch.randn(5, 6)
    assert torch.allclose(torch.nn.functional.linear(x, layer.weight, layer.bias), layer(x), atol=1e-5)
    if feedforward:
        assert layer.bias is layer.base.bias
    else:
        assert torch.allclose(layer.bias, layer.base.bias * layer.scale)
    effective = layer.weight.detach().clone()
    layer.merge()
    assert layer.weight is layer.base.weight and torch.allclose(layer.weight, effective, atol=1e-6)
