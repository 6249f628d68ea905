"""LoRALinear dropout (on the LoRA path only) and merging: ``W0 <- W0 + scale * B A`` and back."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from lora_helpers import FAST, hand_scale, magnitude_atol, make_lora, randomize_ab, reference_terms
from torch import nn

from peft_zoo import LoRALinear
from peft_zoo.testing import assert_close, assert_unchanged, dtypes, leading_shapes, linear_specs, snapshot

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
