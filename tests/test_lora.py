"""LoRALinear: every property checked against the formula written out by hand.

y = x W0^T + b + scale * dropout(x) A^T B^T,   A: (r, in), B: (out, r), scale = alpha / r
"""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
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
    tolerance,
)

FAST = settings(max_examples=25, deadline=None)


# ----------------------------------------------------------------------------- helpers


def make_base(spec: dict, dtype: torch.dtype = torch.float32) -> nn.Linear:
    torch.manual_seed(spec["seed"])
    return nn.Linear(spec["in_features"], spec["out_features"], bias=spec["bias"], dtype=dtype)


def make_lora(spec: dict, dtype: torch.dtype = torch.float32, **kwargs) -> LoRALinear:
    return LoRALinear(make_base(spec, dtype), spec["rank"], spec["alpha"], **kwargs)


def hand_scale(rank: int, alpha: float | None, rslora: bool = False) -> float:
    a = float(rank) if alpha is None else float(alpha)
    return a / math.sqrt(rank) if rslora else a / rank


def randomize_ab(layer: LoRALinear) -> None:
    """Nonzero A *and* B, so the LoRA path actually contributes (B = 0 makes checks vacuous)."""
    with torch.no_grad():
        layer.lora_A.copy_(torch.randn_like(layer.lora_A) * 0.5)
        layer.lora_B.copy_(torch.randn_like(layer.lora_B) * 0.5)


def reference_terms(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    a: torch.Tensor,
    bm: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(base term, LoRA term) in float64, written with plain matmuls."""
    x64, w64, a64, b64 = (t.detach().double() for t in (x, w, a, bm))
    base = x64 @ w64.T
    if b is not None:
        base = base + b.detach().double()
    lora = scale * ((x64 @ a64.T) @ b64.T)
    return base, lora


def magnitude_atol(dtype: torch.dtype, *terms: torch.Tensor) -> tuple[float, float]:
    """(rtol, atol) with atol scaled by the size of the summed terms (cancellation-safe)."""
    rtol, atol = tolerance(dtype)
    mag = 1.0 + sum(float(t.abs().max()) if t.numel() else 0.0 for t in terms)
    return rtol, atol * mag


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


# ----------------------------------------------------------------------------- dropout


def _dropout_layer(p: float = 0.5, seed: int = 0) -> tuple[LoRALinear, torch.Tensor]:
    torch.manual_seed(seed)
    layer = LoRALinear(nn.Linear(16, 8), 4, 8.0, dropout=p)
    x = torch.randn(6, 16)
    return layer, x


def test_dropout_with_zero_b_leaves_base_untouched():
    layer, x = _dropout_layer(0.9)
    with torch.no_grad():
        layer.lora_A.copy_(torch.randn_like(layer.lora_A))
    layer.train()
    for _ in range(3):
        assert torch.equal(layer(x), layer.base(x)), "dropout must not touch the base path"


def test_dropout_with_zero_a_leaves_base_untouched():
    layer, x = _dropout_layer(0.9)
    with torch.no_grad():
        layer.lora_A.zero_()
        layer.lora_B.copy_(torch.randn_like(layer.lora_B))
    layer.train()
    assert torch.equal(layer(x), layer.base(x))


def test_dropout_acts_on_lora_path_only_in_train_mode():
    layer, x = _dropout_layer(0.5)
    randomize_ab(layer)
    layer.train()
    w0, b0 = layer.base.weight.detach(), layer.base.bias.detach()
    a, bm = layer.lora_A.detach(), layer.lora_B.detach()

    torch.manual_seed(123)
    out = layer(x)
    torch.manual_seed(123)
    x_dropped = F.dropout(x, 0.5, training=True)  # the same mask the layer drew
    expected = x @ w0.T + b0 + layer.scale * (x_dropped @ a.T) @ bm.T
    assert_close(
        out,
        expected,
        what="train-mode LoRA with dropout",
        hint="dropout applied to the base input too, or not applied at all",
    )

    # dropout is really active: two calls differ, and both differ from the no-dropout output
    out2 = layer(x)
    no_drop = x @ w0.T + b0 + layer.scale * (x @ a.T) @ bm.T
    assert not torch.allclose(out, out2)
    assert not torch.allclose(out, no_drop)


def test_dropout_eval_mode_is_deterministic_and_undropped():
    layer, x = _dropout_layer(0.5)
    randomize_ab(layer)
    layer.eval()
    w0, b0 = layer.base.weight.detach(), layer.base.bias.detach()
    a, bm = layer.lora_A.detach(), layer.lora_B.detach()
    out1, out2 = layer(x), layer(x)
    assert torch.equal(out1, out2)
    assert_close(
        out1,
        x @ w0.T + b0 + layer.scale * (x @ a.T) @ bm.T,
        what="eval-mode LoRA with dropout must use the undropped input",
    )


# ----------------------------------------------------------------------------- merge


@FAST
@given(spec=linear_specs(), dtype=dtypes(include_bfloat16=True), rslora=st.booleans())
def test_delta_weight(spec, dtype, rslora):
    layer = make_lora(spec, dtype, rslora=rslora)
    randomize_ab(layer)
    scale = hand_scale(spec["rank"], spec["alpha"], rslora)
    dw = layer.delta_weight()
    assert dw.shape == (spec["out_features"], spec["in_features"])
    expected = scale * layer.lora_B.detach().double() @ layer.lora_A.detach().double()
    rtol, atol = magnitude_atol(dtype, expected)
    assert_close(dw, expected, what="delta_weight vs scale * B @ A", drawn=spec, rtol=rtol, atol=atol)


@FAST
@given(spec=linear_specs(), lead=leading_shapes(max_dims=2), dtype=dtypes(include_bfloat16=True))
def test_merge_unmerge_round_trip(spec, lead, dtype):
    layer = make_lora(spec, dtype).eval()
    randomize_ab(layer)
    w0 = layer.base.weight.detach().clone()
    x = torch.randn(*lead, spec["in_features"], dtype=dtype)
    drawn = {**spec, "lead": lead, "dtype": dtype}
    scale = hand_scale(spec["rank"], spec["alpha"])
    base_t, lora_t = reference_terms(x, w0, layer.base.bias, layer.lora_A, layer.lora_B, scale)
    rtol, atol = magnitude_atol(dtype, base_t, lora_t)

    unmerged = layer(x)
    assert layer.merged is False
    layer.merge()
    assert layer.merged is True
    merged_w = layer.base.weight.detach().clone()
    expected_w = w0.double() + scale * layer.lora_B.detach().double() @ layer.lora_A.detach().double()
    _, w_atol = magnitude_atol(dtype, expected_w)
    assert_close(
        merged_w, expected_w, what="merged weight vs W0 + scale B A", drawn=drawn, rtol=rtol, atol=w_atol
    )
    merged = layer(x)
    assert_close(merged, unmerged, what="merged vs unmerged output", drawn=drawn, rtol=rtol, atol=atol)

    layer.merge()  # second merge: no double-add
    assert layer.merged is True
    assert torch.equal(layer.base.weight, merged_w), "merging twice added the update twice"

    layer.unmerge()
    assert layer.merged is False
    assert_close(layer.base.weight, w0, what="unmerge restores W0", drawn=drawn, rtol=rtol, atol=w_atol)
    restored = layer.base.weight.detach().clone()
    layer.unmerge()  # second unmerge: no-op
    assert layer.merged is False
    assert torch.equal(layer.base.weight, restored), "unmerging twice subtracted twice"
    assert_close(layer(x), unmerged, what="output after unmerge", drawn=drawn, rtol=rtol, atol=atol)


def test_unmerge_when_not_merged_is_noop():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(6, 4), 2)
    randomize_ab(layer)
    before = snapshot(layer)
    layer.unmerge()
    assert layer.merged is False
    assert_unchanged(layer, before, what="unmerge on an unmerged layer")


def test_merged_training_raises_but_inference_works():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(6, 4), 2)
    randomize_ab(layer)
    x = torch.randn(3, 6)
    layer.eval()
    expected = layer(x).detach()
    layer.merge()

    layer.train()
    with pytest.raises(RuntimeError, match="unmerge"):
        layer(x)
    with torch.no_grad():
        assert_close(layer(x), expected, what="merged forward under no_grad")
    layer.eval()
    assert_close(layer(x), expected, what="merged forward in eval mode")

    layer.unmerge()
    layer.train()
    out = layer(x)  # training works again after unmerge
    out.sum().backward()
    assert layer.lora_A.grad is not None and layer.lora_B.grad is not None


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
