"""LearnablePrefix and PrefixKV: [P; X] with the prefix first, shared by every batch row."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from peft_zoo import LearnablePrefix, PrefixKV
from peft_zoo.testing import assert_close, dims, seeds

FAST = settings(max_examples=25, deadline=None)

batch = st.integers(1, 4)
seq_len = st.integers(0, 6)
prefix_lens = st.integers(1, 5)


# ----------------------------------------------------------------------------- LearnablePrefix


@FAST
@given(p=prefix_lens, d=dims(), b=batch, length=seq_len, seed=seeds())
def test_prefix_output_shape_and_content(p, d, b, length, seed):
    torch.manual_seed(seed)
    layer = LearnablePrefix(p, d)
    assert tuple(layer.prefix.shape) == (p, d) and layer.prefix.requires_grad
    assert torch.count_nonzero(layer.prefix) > 0, "prefix must start random, not zero"
    with torch.no_grad():  # a prefix far from the input's values, so a mix-up shows
        layer.prefix.copy_(torch.randn(p, d) + 10.0)
    x = torch.randn(b, length, d)
    out = layer(x)
    assert out.shape == (b, p + length, d)
    for row in range(b):
        assert torch.equal(out[row, :p], layer.prefix.detach()), (
            f"row {row}: the first {p} positions must be the prefix (prefix goes FIRST)"
        )
        assert torch.equal(out[row, p:], x[row]), f"row {row}: the content must follow unchanged"


@FAST
@given(p=prefix_lens, d=dims(), b=batch, length=seq_len, seed=seeds())
def test_prefix_gradient_sums_over_rows(p, d, b, length, seed):
    torch.manual_seed(seed)
    layer = LearnablePrefix(p, d).double()
    x = torch.randn(b, length, d, dtype=torch.float64, requires_grad=True)
    g = torch.randn(b, p + length, d, dtype=torch.float64)
    (layer(x) * g).sum().backward()
    drawn = {"p": p, "d": d, "b": b, "length": length}
    assert_close(
        layer.prefix.grad,
        g[:, :p].sum(dim=0),
        what="prefix.grad vs sum over rows",
        drawn=drawn,
        hint="gradient taken from one row only, or averaged",
    )
    assert_close(x.grad, g[:, p:], what="input grad vs upstream grad at content positions", drawn=drawn)


@pytest.mark.parametrize("length", [0, 5])
def test_prefix_rows_do_not_alias(length):
    torch.manual_seed(0)
    layer = LearnablePrefix(3, 4)
    prefix_before = layer.prefix.detach().clone()
    out = layer(torch.randn(2, length, 4)).detach()
    out[0, :3] += 100.0  # in place on row 0's prefix
    assert torch.equal(out[1, :3], prefix_before), "row 1 changed with row 0: rows alias"
    assert torch.equal(layer.prefix.detach(), prefix_before), "output aliases the parameter"


@pytest.mark.parametrize(
    "shape",
    [(5, 4), (2, 5, 3), (1, 2, 5, 4), (4,)],
    ids=["2d", "wrong-d", "4d", "1d"],
)
def test_prefix_bad_input_shape(shape):
    layer = LearnablePrefix(3, 4)
    with pytest.raises(ValueError, match=re.escape("(B, L, 4)") + ".*" + re.escape(str(shape))):
        layer(torch.randn(*shape))


@pytest.mark.parametrize("dtype", [torch.long, torch.bool, torch.float32])
def test_extend_mask_prepends_ones(dtype):
    torch.manual_seed(0)
    layer = LearnablePrefix(3, 4)
    mask = (torch.rand(2, 5) < 0.5).to(dtype)
    mask[0, 0] = 0  # at least one zero to show the content part is copied, not filled
    ext = layer.extend_mask(mask)
    assert ext.shape == (2, 8) and ext.dtype == dtype
    assert torch.equal(ext[:, :3], torch.ones(2, 3, dtype=dtype)), "prefix positions are kept"
    assert torch.equal(ext[:, 3:], mask), "the original mask follows the prefix ones"


@pytest.mark.parametrize(
    ("args", "name"), [((0, 4), "prefix_len"), ((3, 0), "d_model"), ((2.0, 4), "prefix_len")]
)
def test_prefix_bad_constructor(args, name):
    with pytest.raises((ValueError, TypeError), match=f"{name} must be"):
        LearnablePrefix(*args)


# ----------------------------------------------------------------------------- PrefixKV


@FAST
@given(p=prefix_lens, h=st.integers(1, 4), dh=dims(8), b=batch, length=seq_len, seed=seeds())
def test_prefix_kv_shapes_and_content(p, h, dh, b, length, seed):
    torch.manual_seed(seed)
    layer = PrefixKV(p, h, dh)
    assert tuple(layer.key.shape) == (h, p, dh) and tuple(layer.value.shape) == (h, p, dh)
    assert not torch.equal(layer.key, layer.value), "key and value need separate parameters"
    k = torch.randn(b, h, length, dh)
    v = torch.randn(b, h, length, dh)
    out_k, out_v = layer(k, v)
    assert out_k.shape == (b, h, p + length, dh) and out_v.shape == (b, h, p + length, dh)
    for row in range(b):
        assert torch.equal(out_k[row, :, :p], layer.key.detach()), "key prefix first, every row"
        assert torch.equal(out_v[row, :, :p], layer.value.detach()), "value prefix first"
    assert torch.equal(out_k[:, :, p:], k), "keys must follow unchanged"
    assert torch.equal(out_v[:, :, p:], v), "values must follow unchanged (k/v swapped?)"


def test_prefix_kv_gradients_sum_over_batch():
    torch.manual_seed(0)
    layer = PrefixKV(2, 3, 4).double()
    k = torch.randn(5, 3, 6, 4, dtype=torch.float64)
    v = torch.randn(5, 3, 6, 4, dtype=torch.float64)
    gk, gv = torch.randn(5, 3, 8, 4, dtype=torch.float64), torch.randn(5, 3, 8, 4, dtype=torch.float64)
    out_k, out_v = layer(k, v)
    ((out_k * gk).sum() + (out_v * gv).sum()).backward()
    assert_close(layer.key.grad, gk[:, :, :2].sum(0), what="key.grad vs sum over batch")
    assert_close(layer.value.grad, gv[:, :, :2].sum(0), what="value.grad vs sum over batch")


@pytest.mark.parametrize(
    ("k_shape", "v_shape", "bad"),
    [
        ((2, 3, 5), (2, 3, 5, 4), "k"),  # k 3-d
        ((2, 2, 5, 4), (2, 3, 5, 4), "k"),  # wrong heads
        ((2, 3, 5, 6), (2, 3, 5, 4), "k"),  # wrong head_dim
        ((2, 3, 5, 4), (2, 3, 5, 6), "v"),
        ((2, 3, 5, 4), (2, 5, 3, 4), "v"),  # L and H swapped
    ],
    ids=["k-3d", "k-heads", "k-head-dim", "v-head-dim", "v-transposed"],
)
def test_prefix_kv_bad_shapes(k_shape, v_shape, bad):
    layer = PrefixKV(2, 3, 4)
    bad_shape = k_shape if bad == "k" else v_shape
    pattern = re.escape(f"{bad} of shape (B, 3, L, 4)") + ".*" + re.escape(str(bad_shape))
    with pytest.raises(ValueError, match=pattern):
        layer(torch.randn(*k_shape), torch.randn(*v_shape))


@pytest.mark.parametrize(
    ("k_shape", "v_shape"),
    [((2, 3, 5, 4), (3, 3, 5, 4)), ((2, 3, 5, 4), (2, 3, 6, 4))],
    ids=["batch", "length"],
)
def test_prefix_kv_k_v_mismatch(k_shape, v_shape):
    layer = PrefixKV(2, 3, 4)
    with pytest.raises(ValueError, match=re.escape(str(k_shape)) + ".*" + re.escape(str(v_shape))):
        layer(torch.randn(*k_shape), torch.randn(*v_shape))
