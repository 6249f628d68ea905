"""QLoRA and NF4 (peft_zoo.nf4, peft_zoo.qlora): the table, blockwise 4-bit quantisation, double quantisation,
QLoRALinear and whole-model injection, each checked against an independent computation.

    c_b = max |w| over block b,   q = argmin_j |w / c_b - T_j|,   w' = T[q] c_b
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from torch import nn

from peft_zoo.injection.inject import inject_qlora
from peft_zoo.injection.surgery import InjectionError, mark_only_adapters_trainable
from peft_zoo.interop.checkpoint import adapter_state_dict, load_adapter, save_adapter
from peft_zoo.models import TinyMLP, TinyTransformer, TinyTransformerConfig
from peft_zoo.nf4 import (
    INT4_CODE,
    NF4_CODE,
    NF4Linear,
    model_nbytes,
    normal_float_code,
    pack_4bit,
    quantize_int4,
    quantize_nf4,
    unpack_4bit,
)
from peft_zoo.qlora import QLoRALinear, merge_qlora
from peft_zoo.testing import assert_model_unchanged, fingerprint, seeds

FAST = settings(max_examples=25, deadline=None)
# The 16 values of QLoRA's Appendix E, typed here independently of peft_zoo.nf4.
PAPER_NF4 = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
]


def expected_nbytes(n: int, blocksize: int, double_quant: bool) -> int:
    """Bytes of a blockwise 4-bit tensor of n elements, from the storage formula."""
    n_blocks = math.ceil(n / blocksize)
    codes = n_blocks * blocksize // 2  # two 4-bit codes per byte, padding included
    if not double_quant:
        return codes + 4 * n_blocks  # one fp32 absmax per block
    return codes + n_blocks + 4 * math.ceil(n_blocks / 256) + 4  # int8 constants, fp32 scales, fp32 mean


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).pow(2).mean().sqrt().item()


# ----------------------------------------------------------------------------- the code table


def test_nf4_table_is_the_published_one() -> None:
    assert NF4_CODE.shape == (16,)
    assert torch.equal(NF4_CODE, torch.tensor(PAPER_NF4))
    assert bool((NF4_CODE[1:] > NF4_CODE[:-1]).all()), "strictly increasing"
    assert NF4_CODE[0] == -1 and NF4_CODE[-1] == 1
    assert (NF4_CODE == 0).sum() == 1 and NF4_CODE[7] == 0  # one exact zero, 7 levels below, 8 above


def test_derived_normal_float_table_matches_the_published_one() -> None:
    derived = normal_float_code(4)
    assert derived.shape == (16,)
    diff = (derived - NF4_CODE).abs().max().item()
    assert diff < 1e-6, f"derived NF4 differs from the published table by {diff}"
    # Another offset gives another table: the match is not vacuous.
    assert (normal_float_code(4, offset=0.99) - NF4_CODE).abs().max() > 1e-2


@pytest.mark.parametrize("bits", [2, 3, 5])
def test_other_normal_float_tables_are_asymmetric_with_an_exact_zero(bits: int) -> None:
    t = normal_float_code(bits)
    half = 2 ** (bits - 1)
    assert t.shape == (2**bits,)
    assert bool((t[1:] > t[:-1]).all()) and t[0] == -1 and t[-1] == 1
    assert (t < 0).sum() == half - 1 and (t == 0).sum() == 1 and (t > 0).sum() == half


@pytest.mark.parametrize("bad", [{"bits": 1}, {"bits": 0}, {"offset": 1.0}, {"offset": 0.4}])
def test_normal_float_code_rejects_bad_arguments(bad: dict) -> None:
    with pytest.raises(ValueError):
        normal_float_code(**bad)


def test_int4_table_is_evenly_spaced() -> None:
    assert torch.allclose(INT4_CODE * 7, torch.arange(-7, 8, dtype=torch.float32))


# ----------------------------------------------------------------------------- packing


@FAST
@given(codes=st.lists(st.integers(0, 15), min_size=0, max_size=64).map(lambda c: c + c[-1:] * (len(c) % 2)))
def test_pack_unpack_round_trip(codes: list[int]) -> None:
    t = torch.tensor(codes, dtype=torch.uint8)
    packed = pack_4bit(t)
    assert packed.dtype == torch.uint8 and packed.shape == (len(codes) // 2,)
    assert torch.equal(unpack_4bit(packed), t)
    # The first element of each pair sits in the high nibble (bitsandbytes' order).
    expected = [16 * codes[2 * k] + codes[2 * k + 1] for k in range(len(codes) // 2)]
    assert packed.tolist() == expected


def test_pack_rejects_bad_codes() -> None:
    with pytest.raises(ValueError, match="even"):
        pack_4bit(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        pack_4bit(torch.tensor([1, 16]))
    with pytest.raises(ValueError, match="uint8"):
        unpack_4bit(torch.tensor([1, 2], dtype=torch.int32))


# ----------------------------------------------------------------------------- blockwise quantisation


@FAST
@given(n_blocks=st.integers(1, 6), blocksize=st.sampled_from([2, 8, 64]), seed=seeds())
def test_values_on_the_grid_round_trip_exactly(n_blocks: int, blocksize: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (n_blocks, blocksize), generator=g)
    codes[:, 0] = torch.randint(0, 2, (n_blocks,), generator=g) * 15  # each block reaches -1 or +1
    scale = torch.rand(n_blocks, 1, generator=g) * 3 + 0.01  # c_b
    w = NF4_CODE[codes] * scale  # (n_blocks, blocksize): exactly representable
    q = quantize_nf4(w, blocksize)
    assert torch.equal(unpack_4bit(q.packed), codes.reshape(-1).to(torch.uint8))
    assert torch.equal(q.absmax, scale.reshape(-1))
    assert torch.equal(q.dequantize(), w)


@FAST
@given(n=st.integers(1, 300), blocksize=st.sampled_from([2, 16, 64]), seed=seeds())
def test_each_value_gets_the_nearest_code_of_its_block(n: int, blocksize: int, seed: int) -> None:
    w = torch.randn(n, generator=torch.Generator().manual_seed(seed)) * 0.1
    q = quantize_nf4(w, blocksize)
    n_blocks = math.ceil(n / blocksize)
    assert q.packed.shape == (n_blocks * blocksize // 2,) and q.absmax.shape == (n_blocks,)
    # Brute force: per element, the distance to every table entry after dividing by its block's absmax.
    block = torch.arange(n) // blocksize
    absmax = torch.stack([w[block == b].abs().max() for b in range(n_blocks)])
    assert torch.equal(q.absmax, absmax)
    normed = w / absmax[block]
    dist = (normed[:, None] - NF4_CODE[None, :]).abs()  # (n, 16)
    got = unpack_4bit(q.packed)[:n].long()
    chosen = dist.gather(1, got[:, None]).squeeze(1)
    assert torch.allclose(chosen, dist.min(dim=1).values, atol=1e-6), "a value did not get its nearest code"
    # Padding: the elements beyond n are zeros, which map to the exact zero code (index 7).
    assert bool((unpack_4bit(q.packed)[n:] == 7).all())
    assert q.dequantize().shape == w.shape


@pytest.mark.parametrize("shape", [(3, 50), (7,), (2, 3, 11)])
def test_shapes_not_a_multiple_of_the_block_size_round_trip(shape: tuple[int, ...]) -> None:
    w = torch.randn(shape)
    q = quantize_nf4(w, 64)
    out = q.dequantize()
    assert out.shape == w.shape and out.dtype == w.dtype
    # Error bound: at most half the widest gap of the table, times the block's absmax.
    half_gap = (NF4_CODE[1:] - NF4_CODE[:-1]).max() / 2
    assert (out - w).abs().max() <= half_gap * w.abs().max() + 1e-6


def test_all_zero_blocks_give_zeros_not_nan() -> None:
    w = torch.zeros(3, 64)
    w[1] = torch.randn(64)
    for q in (quantize_nf4(w), quantize_nf4(w, double_quant=True), quantize_int4(w)):
        out = q.dequantize()
        assert bool(torch.isfinite(out).all())
        assert bool((out[0] == 0).all()) and bool((out[2] == 0).all())
    assert bool((quantize_nf4(w).packed.view(3, 32)[0] == 0x77).all())  # code 7 = 0.0 in both nibbles


def test_dequantize_dtype_defaults_to_the_original() -> None:
    w = torch.randn(4, 64, dtype=torch.bfloat16)
    q = quantize_nf4(w)
    assert q.dequantize().dtype == torch.bfloat16
    assert q.dequantize(torch.float64).dtype == torch.float64
    assert torch.equal(q.dequantize(), q.dequantize(torch.float32).to(torch.bfloat16))


@pytest.mark.parametrize(
    ("w", "blocksize", "error"),
    [
        (torch.arange(64), 64, TypeError),  # integer weights
        (torch.tensor([1.0, float("nan")] * 32), 64, ValueError),
        (torch.tensor([1.0, float("inf")] * 32), 64, ValueError),
        (torch.empty(0), 64, ValueError),
        (torch.randn(64), 0, ValueError),
        (torch.randn(64), -64, ValueError),
        (torch.randn(64), 63, ValueError),  # odd: two codes could not share a byte
        (torch.randn(64), True, TypeError),
        ([1.0, 2.0], 64, TypeError),
    ],
)
def test_bad_input_raises_a_clear_error(w, blocksize, error) -> None:
    before = w.clone() if isinstance(w, torch.Tensor) else list(w)
    with pytest.raises(error):
        quantize_nf4(w, blocksize)
    if isinstance(w, torch.Tensor):
        assert torch.equal(w, before) or bool(torch.isnan(w).any())


# ----------------------------------------------------------------------------- bits per parameter


@FAST
@given(n=st.integers(1, 40_000), blocksize=st.sampled_from([32, 64, 128]), dq=st.booleans())
def test_bits_per_parameter_follow_the_storage_formula(n: int, blocksize: int, dq: bool) -> None:
    q = quantize_nf4(torch.randn(n), blocksize, double_quant=dq)
    stored = sum(t.numel() * t.element_size() for t in q.tensors())
    assert q.nbytes == stored == expected_nbytes(n, blocksize, dq)
    assert q.bits_per_parameter == pytest.approx(8 * expected_nbytes(n, blocksize, dq) / n)
    assert q.double_quant == dq


@pytest.mark.parametrize("k", [1, 4, 16])
def test_bits_per_parameter_reach_the_papers_figures(k: int) -> None:
    n = 64 * 256 * k
    w = torch.randn(n)
    assert quantize_nf4(w).bits_per_parameter == 4.5  # 4 + 32/64
    dq = quantize_nf4(w, double_quant=True).bits_per_parameter
    paper = 4 + 8 / 64 + 32 / (64 * 256)  # ~4.127; the one fp32 mean adds 32 / n
    assert dq == pytest.approx(paper + 32 / n, abs=1e-12)
    assert abs(dq - 4.127) < 2e-3


# ----------------------------------------------------------------------------- reconstruction error


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("n", "sigma"), [(4096, 0.02), (64 * 300, 1.0), (10_000, 0.5)])
def test_nf4_beats_int4_absmax_on_normal_weights(seed: int, n: int, sigma: float) -> None:
    w = torch.randn(n, generator=torch.Generator().manual_seed(seed)) * sigma
    e_nf4 = rmse(quantize_nf4(w).dequantize(), w)
    e_int4 = rmse(quantize_int4(w).dequantize(), w)
    e_dq = rmse(quantize_nf4(w, double_quant=True).dequantize(), w)
    assert e_nf4 < 0.95 * e_int4, f"NF4 RMSE {e_nf4:.3g} is not below int4's {e_int4:.3g}"
    assert abs(e_dq - e_nf4) <= 0.01 * e_nf4, f"double quant moved the RMSE from {e_nf4:.4g} to {e_dq:.4g}"


def test_double_quant_error_is_bounded_by_the_second_level_scale() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64 * 1000, generator=g) * torch.rand(1000, generator=g).repeat_interleave(64)
    w[:64] *= 1e-4  # one block far smaller than the mean of the constants
    plain, dq = quantize_nf4(w), quantize_nf4(w, double_quant=True)
    assert dq.absmax.dtype == torch.int8 and dq.absmax_scale.dtype == torch.float32
    assert dq.absmax_scale.shape == (math.ceil(1000 / 256),) and dq.absmax_mean.shape == ()
    c, c_dq = plain.absmax, dq.block_absmax()
    # Symmetric 8-bit: |c' - c| <= s / 254 with s = max |c - mean| over the constant's block of 256.
    s = dq.absmax_scale.repeat_interleave(256)[:1000]
    assert bool(((c_dq - c).abs() <= s / 254 * (1 + 1e-5) + 1e-7).all())
    assert bool((c_dq >= 0).all()), "a negative block constant would flip the signs of its weights"
    # On plain normal weights (similar constants) the relative error is well below 1%.
    normal = torch.randn(64 * 1000, generator=g) * 0.02
    rel = (quantize_nf4(normal, double_quant=True).block_absmax() / quantize_nf4(normal).absmax - 1).abs()
    assert rel.max() < 0.01, f"second quantisation changed a block constant by {rel.max():.2%}"


# ----------------------------------------------------------------------------- QLoRALinear


def make_layer(d_in: int = 96, d_out: int = 40, bias: bool = True, seed: int = 0, **kw) -> QLoRALinear:
    torch.manual_seed(seed)
    return QLoRALinear(nn.Linear(d_in, d_out, bias=bias), kw.pop("rank", 4), **kw)


@FAST
@given(
    d_in=st.integers(1, 40),
    d_out=st.integers(1, 40),
    rank=st.integers(1, 5),
    bias=st.booleans(),
    dq=st.booleans(),
    seed=seeds(),
)
def test_qlora_at_init_equals_the_dequantised_base(d_in, d_out, rank, bias, dq, seed) -> None:
    torch.manual_seed(seed)
    base = nn.Linear(d_in, d_out, bias=bias)
    w0 = base.weight.detach().clone()
    layer = QLoRALinear(base, rank, double_quant=dq)
    x = torch.randn(3, 2, d_in)
    expected_w = quantize_nf4(w0, double_quant=dq).dequantize()
    assert torch.equal(layer.base.dequantize_weight(), expected_w)
    expected = F.linear(x, expected_w, base.bias)
    assert torch.allclose(layer(x), expected, atol=1e-6)
    assert not isinstance(layer.base, nn.Linear) and not any(
        isinstance(b, nn.Parameter) for b in layer.buffers()
    )


def test_gradients_reach_only_the_adapter() -> None:
    layer = make_layer()
    with torch.no_grad():
        layer.lora_B.normal_()  # B = 0 would leave A without gradient
    x = torch.randn(5, 96, requires_grad=True)
    g = torch.randn(5, 40)
    (layer(x) * g).sum().backward()
    assert layer.lora_A.grad is not None and layer.lora_B.grad is not None
    assert layer.lora_A.grad.abs().sum() > 0 and layer.lora_B.grad.abs().sum() > 0
    assert layer.base.bias.grad is None and not layer.base.bias.requires_grad
    assert all(not b.requires_grad and b.grad is None for b in layer.buffers())
    trainable = [n for n, p in layer.named_parameters() if p.requires_grad]
    assert trainable == ["lora_A", "lora_B"]
    assert len(torch.optim.AdamW(mark_only_adapters_trainable(layer)).param_groups[0]["params"]) == 2
    # The gradient flows *through* the frozen base to the input: d(x W'^T)/dx = g W'.
    w = layer.weight.detach()
    assert torch.allclose(x.grad, g @ w, atol=1e-5)
    # bias="lora_only" (PEFT's name) trains the quantised layer's own bias too, and only it.
    trainable = mark_only_adapters_trainable(layer, bias="lora_only")
    assert {id(p) for p in trainable} == {id(layer.lora_A), id(layer.lora_B), id(layer.base.bias)}


def test_lora_shapes_dtypes_and_scale() -> None:
    layer = make_layer(rank=8, alpha=16, adapter_dtype=torch.float64)
    assert layer.lora_A.shape == (8, 96) and layer.lora_B.shape == (40, 8)
    assert layer.lora_A.dtype == torch.float64 and layer.scale == 2.0
    assert make_layer(rank=4, alpha=8, rslora=True).scale == pytest.approx(8 / 2)
    assert torch.count_nonzero(make_layer().lora_B) == 0
    out = layer(torch.randn(2, 96))
    assert out.dtype == torch.float32  # the adapter dtype never leaks into the output


def test_compute_dtype_and_half_precision_inputs() -> None:
    layer = make_layer(compute_dtype=torch.bfloat16)
    x = torch.randn(4, 96)
    out = layer(x)
    assert out.dtype == torch.float32
    ref = F.linear(x.bfloat16(), layer.base.dequantize_weight(torch.bfloat16), layer.bias.bfloat16()).float()
    assert torch.equal(out, ref)  # B = 0: exactly the bf16 base
    bf_layer = QLoRALinear(nn.Linear(96, 40, dtype=torch.bfloat16), 4)
    assert bf_layer.lora_A.dtype == torch.float32 and bf_layer.base.weight_dtype == torch.bfloat16
    assert bf_layer(x.bfloat16()).dtype == torch.bfloat16


def test_to_linear_equals_the_trained_layer_and_merge_refuses() -> None:
    layer = make_layer()
    with torch.no_grad():
        layer.lora_A.normal_()
        layer.lora_B.normal_()
    x = torch.randn(6, 96)
    linear = layer.to_linear()
    assert type(linear) is nn.Linear and linear.weight.dtype == torch.float32
    assert torch.allclose(linear(x), layer(x), atol=1e-4)
    expected_w = layer.base.dequantize_weight() + layer.scale * layer.lora_B @ layer.lora_A
    assert torch.allclose(linear.weight, expected_w, atol=1e-5)
    assert not layer.merged
    with pytest.raises(RuntimeError, match="to_linear"):
        layer.merge()
    assert not layer.merged


def test_short_qlora_fine_tune_reduces_the_loss() -> None:
    torch.manual_seed(0)
    base = nn.Linear(32, 16)
    # The target: the base plus a rank-2 change, which a rank-4 adapter can represent.
    target = nn.Linear(32, 16)
    with torch.no_grad():
        target.weight.copy_(base.weight + 0.3 * torch.randn(16, 2) @ torch.randn(2, 32) / 4)
        target.bias.copy_(base.bias)
    layer = QLoRALinear(base, 4, alpha=8)
    x = torch.randn(256, 32)
    y = target(x).detach()
    opt = torch.optim.Adam([layer.lora_A, layer.lora_B], lr=1e-2)
    losses = []
    for _ in range(60):
        loss = F.mse_loss(layer(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], f"loss went {losses[0]:.4g} -> {losses[-1]:.4g}"


def test_state_dict_round_trip_and_adapter_only_checkpoint() -> None:
    layer = make_layer(seed=1)
    with torch.no_grad():
        layer.lora_B.normal_()
    fresh = make_layer(seed=2)  # another base: every buffer differs
    x = torch.randn(3, 96)
    assert not torch.allclose(fresh(x), layer(x))
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh(x), layer(x))
    assert set(adapter_state_dict(layer)) == {"lora_A", "lora_B"}
    assert {"base.weight_packed", "base.weight_absmax", "base.weight_absmax_scale"} <= set(layer.state_dict())


def test_nf4_linear_alone_is_a_frozen_quantised_linear() -> None:
    torch.manual_seed(0)
    base = nn.Linear(64, 8)
    w = base.weight.detach().clone()
    x = torch.randn(4, 64, dtype=torch.float64)
    for quant_type, quantize in (("nf4", quantize_nf4), ("int4", quantize_int4)):
        layer = NF4Linear(base, quant_type=quant_type, double_quant=False)
        assert list(layer.parameters()) == [base.bias] and not base.bias.requires_grad
        expected = F.linear(x, quantize(w).dequantize(torch.float64), base.bias.double())
        out = layer(x)
        assert out.dtype == torch.float64 and torch.allclose(out, expected, atol=1e-12)
    assert layer.nbytes == expected_nbytes(64 * 8, 64, False)
    with pytest.raises(ValueError, match="quant_type"):
        NF4Linear(base, quant_type="fp4")


def test_save_and_load_adapter_moves_only_the_lora_weights(tmp_path) -> None:
    torch.manual_seed(0)
    trained, fresh = TinyMLP(), TinyMLP()
    fresh.load_state_dict(trained.state_dict())
    inject_qlora(trained, rank=2)
    inject_qlora(fresh, rank=2)
    for layer in trained.modules():
        if isinstance(layer, QLoRALinear):
            with torch.no_grad():
                layer.lora_B.normal_()
    x = torch.randn(3, 8)
    assert not torch.allclose(fresh(x), trained(x))
    path = save_adapter(trained, tmp_path / "qlora")
    assert all(k.endswith(("lora_A", "lora_B")) for k in load_file(path))
    config = load_adapter(fresh, tmp_path / "qlora")
    assert config["method"] == "qlora" and torch.allclose(fresh(x), trained(x))


def test_conv1d_base_is_quantised_in_out_layout() -> None:
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils")
    torch.manual_seed(0)
    conv = pytorch_utils.Conv1D(24, 64)  # nf=24 outputs, nx=64 inputs; weight (64, 24)
    w = conv.weight.detach().T.clone()  # (out, in)
    layer = QLoRALinear(conv, 2)
    x = torch.randn(5, 64)
    assert torch.allclose(layer(x), F.linear(x, quantize_nf4(w, double_quant=True).dequantize(), conv.bias))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"rank": 0}, ValueError),
        ({"rank": -1}, ValueError),
        ({"rank": 2.0}, TypeError),
        ({"blocksize": 0}, ValueError),
        ({"blocksize": 7}, ValueError),
        ({"dropout": 1.0}, ValueError),
        ({"compute_dtype": torch.int8}, TypeError),
        ({"adapter_dtype": None}, TypeError),
    ],
)
def test_bad_layer_arguments_leave_the_base_untouched(kwargs: dict, error: type) -> None:
    base = nn.Linear(8, 4)
    before = fingerprint(base)
    with pytest.raises(error):
        QLoRALinear(base, **{"rank": 2, **kwargs})
    assert_model_unchanged(base, before, what="a failed QLoRALinear(...)")


def test_non_linear_and_non_finite_bases_are_refused() -> None:
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        QLoRALinear(nn.Conv2d(2, 2, 1), 2)
    base = nn.Linear(8, 4)
    with torch.no_grad():
        base.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        QLoRALinear(base, 2)
    assert base.bias.requires_grad
    with pytest.raises(ValueError, match=r"\(\.\.\., 8\)"):
        QLoRALinear(nn.Linear(8, 4), 2)(torch.randn(3, 9))


# ----------------------------------------------------------------------------- whole models


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def test_quantised_weights_cost_4_127_bits_of_32() -> None:
    model = nn.Sequential(nn.Linear(256, 256, bias=False), nn.ReLU(), nn.Linear(256, 128, bias=False))
    fp32 = model_nbytes(model)
    bf16 = model_nbytes(nn.Sequential(*(m for m in model)).to(torch.bfloat16))
    model = model.float()
    inject_qlora(model, ["0", "2"], rank=4)
    lora = tensor_bytes(p for n, p in model.named_parameters() if "lora_" in n)
    weights = model_nbytes(model) - lora
    expected = expected_nbytes(256 * 256, 64, True) + expected_nbytes(256 * 128, 64, True)
    assert weights == expected
    assert fp32 == 4 * (256 * 256 + 256 * 128) and bf16 == fp32 // 2
    assert weights / fp32 == pytest.approx(4.127 / 32, rel=2e-3)
    assert weights / bf16 == pytest.approx(4.127 / 16, rel=2e-3)


def test_inject_qlora_on_a_tiny_transformer_quantises_every_linear_but_the_head() -> None:
    torch.manual_seed(0)
    model = TinyTransformer(TinyTransformerConfig(d_model=64, d_ff=128, n_layers=2))
    fp32 = model_nbytes(model)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    _, params = inject_qlora(model, rank=4, blocksize=64)
    qlora = {n: m for n, m in model.named_modules() if isinstance(m, QLoRALinear)}
    assert sorted(qlora) == sorted(n for n in linears if n != "head")
    assert isinstance(model.head, nn.Linear) and len(params) == 2 * len(qlora)
    # Memory from the actual tensors: quantised weights by the formula, everything else as it was.
    quantised = sum(expected_nbytes(linears[n].weight.numel(), 64, True) for n in qlora)
    removed = sum(4 * linears[n].weight.numel() for n in qlora)
    lora = tensor_bytes(params)
    assert model_nbytes(model) == fp32 - removed + quantised + lora
    assert model_nbytes(model) < 0.45 * fp32
    # It still runs and trains only the adapters.
    trainable = mark_only_adapters_trainable(model)
    assert {id(p) for p in trainable} == {id(p) for p in params}
    ids = torch.randint(0, 32, (3, 10))
    model(ids).sum().backward()
    assert all(p.grad is not None for p in params[1::2])  # every B gets a gradient


@pytest.mark.parametrize(
    ("names", "kwargs"),
    [
        (["encoder.0", "encoder.2.branch.fc9"], {}),  # unknown name
        (["encoder.0", "encoder.1"], {}),  # a GELU
        (["encoder.0", "encoder.0"], {}),  # twice
        (["encoder.0"], {"rank": 0}),
        (["encoder.0"], {"blocksize": 3}),
    ],
)
def test_inject_qlora_is_all_or_nothing(names: list[str], kwargs: dict) -> None:
    model = TinyMLP()
    before = fingerprint(model)
    with pytest.raises((InjectionError, ValueError, TypeError)):
        inject_qlora(model, names, **{"rank": 2, **kwargs})
    assert_model_unchanged(model, before, what="a failed inject_qlora")


def test_inject_qlora_is_all_or_nothing_when_a_later_layer_has_inf() -> None:
    model = TinyMLP()
    with torch.no_grad():
        model.encoder[2].branch.fc2.weight[0, 0] = float("inf")  # (inf == inf, so the fingerprint compares)
    before = fingerprint(model)
    with pytest.raises(ValueError, match="inf"):
        inject_qlora(model, ["encoder.0", "encoder.2.branch.fc2"], rank=2)
    assert_model_unchanged(model, before, what="inject_qlora with an inf weight")


def test_merge_qlora_replaces_layers_by_equivalent_float_linears() -> None:
    torch.manual_seed(0)
    model = TinyMLP()
    inject_qlora(model, rank=2)
    for layer in model.modules():
        if isinstance(layer, QLoRALinear):
            with torch.no_grad():
                layer.lora_B.normal_()
    x = torch.randn(4, 8)
    before = model(x)
    assert merge_qlora(model) == 3
    assert not any(isinstance(m, (QLoRALinear, NF4Linear)) for m in model.modules())
    assert torch.allclose(model(x), before, atol=1e-5)
