"""LoRALinear: every property checked against the formula written out by hand.

y = x W0^T + b + scale * dropout(x) A^T B^T,   A: (r, in), B: (out, r), scale = alpha / r
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from lora_helpers import FAST, hand_scale, magnitude_atol, make_lora, randomize_ab, reference_terms
from torch import nn

from peft_zoo import LoRALinear
from peft_zoo.testing import (
    assert_close,
    assert_unchanged,
    dtypes,
    leading_shapes,
    linear_specs,
    requires_grad_map,
    snapshot,
)

# ----------------------------------------------------------------------------- construction


@FAST
@given(spec=linear_specs(), dtype=dtypes(include_bfloat16=True))
def test_shapes_dtype_and_init(spec, dtype):
    layer = make_lora(spec, dtype)
    r, n_in, n_out = spec["rank"], spec["in_features"], spec["out_features"]
    assert tuple(layer.lora_A.shape) == (r, n_in), "lora_A must be (rank, in_features)"
    assert tuple(layer.lora_B.shape) == (n_out, r), "lora_B must be (out_features, rank)"
    assert isinstance(layer.lora_A, nn.Parameter) and isinstance(layer.lora_B, nn.Parameter)
    assert layer.lora_A.dtype == dtype and layer.lora_B.dtype == dtype
    assert torch.count_nonzero(layer.lora_B) == 0, "B must start at zero"
    assert torch.count_nonzero(layer.lora_A) > 0, "A must start nonzero (else A never trains)"
    # Kaiming-uniform with a=sqrt(5) (nn.Linear's init) is bounded by 1/sqrt(fan_in).
    bound = 1.0 / math.sqrt(n_in)
    assert float(layer.lora_A.detach().abs().max()) <= bound * 1.01, "A is not Kaiming-uniform"


def test_adapter_follows_base_device():
    base = nn.Linear(5, 3, device="meta", dtype=torch.float64)
    layer = LoRALinear(base, 2)
    for p in (layer.lora_A, layer.lora_B):
        assert p.device.type == "meta" and p.dtype == torch.float64


@FAST
@given(rank=st.integers(1, 16), alpha=st.one_of(st.none(), st.floats(0.01, 100.0)), rslora=st.booleans())
def test_scale(rank, alpha, rslora):
    layer = LoRALinear(nn.Linear(4, 3), rank, alpha, rslora=rslora)
    expected = hand_scale(rank, alpha, rslora)
    assert layer.scale == pytest.approx(expected, rel=1e-12)


def test_scale_examples():
    assert LoRALinear(nn.Linear(4, 3), 4).scale == 1.0  # alpha defaults to rank
    assert LoRALinear(nn.Linear(4, 3), 4, 8).scale == 2.0
    assert LoRALinear(nn.Linear(4, 3), 4, 8, rslora=True).scale == 4.0  # 8 / sqrt(4)
    assert LoRALinear(nn.Linear(4, 3), 9, rslora=True).scale == pytest.approx(3.0)  # 9 / sqrt(9)


@FAST
@given(spec=linear_specs(), lead=leading_shapes(), dtype=dtypes(include_bfloat16=True))
def test_init_equals_base(spec, lead, dtype):
    layer = make_lora(spec, dtype)
    x = torch.randn(*lead, spec["in_features"], dtype=dtype)
    out = layer(x)
    assert out.shape == (*lead, spec["out_features"])
    assert torch.equal(out, layer.base(x)), "with B = 0 the layer must equal its base"


def test_base_frozen_only_lora_trainable():
    base = nn.Linear(6, 4)
    layer = LoRALinear(base, 2)
    assert layer.base is base
    assert requires_grad_map(layer) == {
        "base.weight": False,
        "base.bias": False,
        "lora_A": True,
        "lora_B": True,
    }


# ----------------------------------------------------------------------------- forward math


@FAST
@given(spec=linear_specs(), lead=leading_shapes(), dtype=dtypes(include_bfloat16=True), rslora=st.booleans())
def test_forward_matches_hand_formula(spec, lead, dtype, rslora):
    layer = make_lora(spec, dtype, rslora=rslora)
    w0 = layer.base.weight.detach().clone()
    b0 = None if layer.base.bias is None else layer.base.bias.detach().clone()
    randomize_ab(layer)
    x = torch.randn(*lead, spec["in_features"], dtype=dtype)
    scale = hand_scale(spec["rank"], spec["alpha"], rslora)
    base_t, lora_t = reference_terms(x, w0, b0, layer.lora_A, layer.lora_B, scale)
    out = layer(x)
    assert out.dtype == dtype
    rtol, atol = magnitude_atol(dtype, base_t, lora_t)
    assert_close(
        out,
        base_t + lora_t,
        what="LoRALinear forward vs x W0^T + b + s x A^T B^T",
        drawn={**spec, "lead": lead, "dtype": dtype, "rslora": rslora},
        hint="scale missing/wrong, or A and B transposed",
        rtol=rtol,
        atol=atol,
    )


@FAST
@given(spec=linear_specs(), lead=leading_shapes(max_dims=2))
def test_gradients_match_autograd_on_formula(spec, lead):
    dtype = torch.float64
    layer = make_lora(spec, dtype)
    randomize_ab(layer)
    w0 = layer.base.weight.detach().clone()
    b0 = None if layer.base.bias is None else layer.base.bias.detach().clone()
    x = torch.randn(*lead, spec["in_features"], dtype=dtype)
    g = torch.randn(*lead, spec["out_features"], dtype=dtype)
    scale = hand_scale(spec["rank"], spec["alpha"])

    (layer(x) * g).sum().backward()

    a = layer.lora_A.detach().clone().requires_grad_(True)
    bm = layer.lora_B.detach().clone().requires_grad_(True)
    ref = x @ w0.T + scale * (x @ a.T) @ bm.T
    if b0 is not None:
        ref = ref + b0
    (ref * g).sum().backward()

    assert layer.base.weight.grad is None, "frozen base weight must get no gradient"
    if layer.base.bias is not None:
        assert layer.base.bias.grad is None, "frozen base bias must get no gradient"
    drawn = {**spec, "lead": lead}
    assert_close(layer.lora_A.grad, a.grad, what="grad of lora_A", drawn=drawn)
    assert_close(layer.lora_B.grad, bm.grad, what="grad of lora_B", drawn=drawn)
    assert torch.count_nonzero(layer.lora_A.grad) > 0 or torch.count_nonzero(g) == 0


def test_wrong_last_dim_raises_value_error_naming_shapes():
    layer = LoRALinear(nn.Linear(5, 3), 2)
    with pytest.raises(ValueError, match=re.escape("(..., 5)") + ".*" + re.escape("(2, 4)")):
        layer(torch.randn(2, 4))
    with pytest.raises(ValueError, match=re.escape("(..., 5)")):
        layer(torch.tensor(1.0))


# ----------------------------------------------------------------------------- bad input


def _check_rejected(base: nn.Module, exc: type[Exception], pattern: str, *args, **kwargs) -> None:
    before = snapshot(base)
    grads = requires_grad_map(base)
    with pytest.raises(exc, match=pattern):
        LoRALinear(base, *args, **kwargs)
    assert_unchanged(base, before, what="base after a rejected LoRALinear(...)")
    assert requires_grad_map(base) == grads, "a rejected constructor froze the base layer"


@pytest.mark.parametrize(
    ("rank", "exc", "pattern"),
    [
        (0, ValueError, r"rank must be > 0, got 0"),
        (-3, ValueError, r"rank must be > 0, got -3"),
        (2.5, TypeError, r"rank must be an int.*2\.5"),
        (True, TypeError, r"rank must be an int.*True.*bool"),
        ("4", TypeError, r"rank must be an int.*'4'.*str"),
    ],
    ids=["zero", "negative", "float", "bool", "str"],
)
def test_bad_rank(rank, exc, pattern):
    _check_rejected(nn.Linear(4, 3), exc, pattern, rank)


@pytest.mark.parametrize(
    "alpha",
    [0, 0.0, -1.0, float("nan"), float("inf"), float("-inf")],
    ids=["zero-int", "zero", "negative", "nan", "inf", "-inf"],
)
def test_bad_alpha(alpha):
    _check_rejected(nn.Linear(4, 3), ValueError, r"alpha must be a finite number > 0", 2, alpha)


def test_alpha_bool_rejected():
    _check_rejected(nn.Linear(4, 3), TypeError, r"alpha must be a number", 2, True)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan")], ids=["negative", "one", "above", "nan"])
def test_bad_dropout(p):
    _check_rejected(nn.Linear(4, 3), ValueError, r"dropout must be in \[0, 1\)", 2, dropout=p)


def test_base_conv1d_rejected():
    _check_rejected(
        nn.Conv1d(4, 3, 1), TypeError, r"must be an nn\.Linear or a transformers Conv1D, got Conv1d", 2
    )


def test_base_lora_linear_rejected():
    inner = LoRALinear(nn.Linear(4, 3), 2)
    _check_rejected(inner, TypeError, r"must be an nn\.Linear or a transformers Conv1D, got LoRALinear", 2)


def test_weight_and_bias_properties_are_the_effective_ones():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(6, 4), rank=3, alpha=6)
    with torch.no_grad():
        layer.lora_B.normal_()
    expected = layer.base.weight + 2.0 * layer.lora_B @ layer.lora_A
    assert torch.allclose(layer.weight, expected, atol=1e-6)
    assert layer.bias is layer.base.bias
    x = torch.randn(5, 6)
    assert torch.allclose(torch.nn.functional.linear(x, layer.weight, layer.bias), layer(x), atol=1e-5)
    layer.merge()
    assert layer.weight is layer.base.weight  # merged: the base weight already holds the update
    assert torch.allclose(layer.weight, expected, atol=1e-6)
