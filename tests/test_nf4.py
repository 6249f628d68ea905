"""NF4 (peft_zoo.nf4): the code table, packing, blockwise 4-bit quantisation, double quantisation,
bits per parameter and NF4Linear, each checked against an independent computation (QLoRALinear
and whole-model injection: test_qlora.py).

    c_b = max |w| over block b,   q = argmin_j |w / c_b - T_j|,   w' = T[q] c_b
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from nf4_helpers import FAST, expected_nbytes
from torch import nn

from peft_zoo.blockwise8 import dynamic_map
from peft_zoo.nf4 import (
    INT4_CODE,
    NF4_CODE,
    NF4Linear,
    normal_float_code,
    pack_4bit,
    quantize_int4,
    quantize_nf4,
    unpack_4bit,
)
from peft_zoo.testing import seeds

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
@given(codes=st.lists(st.integers(0, 15), min_size=0, max_size=65), pad=st.integers(0, 15))
def test_pack_unpack_round_trip(codes: list[int], pad: int) -> None:
    t = torch.tensor(codes, dtype=torch.uint8)
    packed = pack_4bit(t, pad)
    # No padding to a block: ceil(n / 2) bytes, an odd n fills the last low nibble with `pad`.
    assert packed.dtype == torch.uint8 and packed.shape == ((len(codes) + 1) // 2,)
    assert torch.equal(unpack_4bit(packed, len(codes)), t)
    # The first element of each pair sits in the high nibble (bitsandbytes' order).
    full = codes + [pad] * (len(codes) % 2)
    expected = [16 * full[2 * k] + full[2 * k + 1] for k in range(len(full) // 2)]
    assert packed.tolist() == expected


def test_pack_rejects_bad_codes() -> None:
    with pytest.raises(ValueError, match="1-d"):
        pack_4bit(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        pack_4bit(torch.tensor([1, 16]))
    with pytest.raises(ValueError, match="pad_code"):
        pack_4bit(torch.tensor([1, 2, 3]), 16)
    with pytest.raises(ValueError, match="uint8"):
        unpack_4bit(torch.tensor([1, 2], dtype=torch.int32))
    with pytest.raises(ValueError, match="n must be"):
        unpack_4bit(torch.tensor([1, 2], dtype=torch.uint8), 2)


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
    assert q.packed.shape == ((n + 1) // 2,) and q.absmax.shape == (n_blocks,)  # nothing padded
    # Brute force: per element, the distance to every table entry after dividing by its block's absmax.
    block = torch.arange(n) // blocksize
    absmax = torch.stack([w[block == b].abs().max() for b in range(n_blocks)])
    assert torch.equal(q.absmax, absmax)
    normed = w / absmax[block]
    dist = (normed[:, None] - NF4_CODE[None, :]).abs()  # (n, 16)
    got = unpack_4bit(q.packed)[:n].long()
    chosen = dist.gather(1, got[:, None]).squeeze(1)
    assert torch.allclose(chosen, dist.min(dim=1).values, atol=1e-6), "a value did not get its nearest code"
    # An odd n: the last low nibble holds the exact zero code (index 7), as bitsandbytes writes it.
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
    assert dq.absmax.dtype == torch.uint8 and dq.absmax_scale.dtype == torch.float32
    assert dq.absmax_scale.shape == (math.ceil(1000 / 256),) and dq.absmax_mean.shape == ()
    assert torch.equal(dq.absmax_mean, plain.absmax.mean())  # bitsandbytes' offset: the plain mean
    c, c_dq = plain.absmax, dq.block_absmax()
    # Dynamic 8-bit (nearest of 256 levels in [-1, 1]): |c' - c| <= s * (widest gap / 2), with
    # s = max |c - mean| over the constant's block of 256.
    s = dq.absmax_scale.repeat_interleave(256)[:1000]
    half_gap = (dynamic_map()[1:] - dynamic_map()[:-1]).max() / 2
    assert bool(((c_dq - c).abs() <= s * half_gap * (1 + 1e-5) + 1e-7).all())
    # Near 0 the dynamic type is much finer than the widest gap: the tiny block's constant
    # (c - mean ~ -mean, the largest magnitude) keeps its sign here.
    assert bool((c_dq[0] > 0).all())
    # On plain normal weights (similar constants) the relative error is well below 1%.
    normal = torch.randn(64 * 1000, generator=g) * 0.02
    rel = (quantize_nf4(normal, double_quant=True).block_absmax() / quantize_nf4(normal).absmax - 1).abs()
    assert rel.max() < 0.01, f"second quantisation changed a block constant by {rel.max():.2%}"


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


def _reference_dequantize(
    packed: torch.Tensor, absmax: torch.Tensor, n: int, blocksize: int, dtype: torch.dtype
) -> torch.Tensor:
    """The definition, one element at a time in spirit: T[q_i] * c_b in float32, then the cast."""
    values = NF4_CODE[unpack_4bit(packed.clone(), n).long()]  # (n,) T[q]
    scale = absmax.repeat_interleave(blocksize)[:n]  # (n,) c_b of each element's block
    return (values * scale).to(dtype)


@FAST
@given(
    n=st.integers(1, 700),
    blocksize=st.sampled_from([16, 64, 128]),
    offset=st.integers(0, 3),
    chunk=st.sampled_from([1, 3, 1 << 24]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    seed=seeds(),
)
def test_dequantize_kernel_equals_the_definition(
    n: int, blocksize: int, offset: int, chunk: int, dtype: torch.dtype, seed: int
) -> None:
    """The pair-table kernel (uint16 words, 16-byte rows, lookups in slices of INDEX_CHUNK words)
    equals T[q] * c_b for odd n, partial last blocks, packed codes at an odd storage offset, and
    every output dtype, bit for bit."""
    from peft_zoo import nf4_codes

    g = torch.Generator().manual_seed(seed)
    packed, absmax = nf4_codes.quantize_4bit(torch.randn(n, generator=g), "nf4", blocksize)
    shifted = torch.cat([torch.zeros(offset, dtype=torch.uint8), packed])[offset:]  # storage offset
    saved = nf4_codes.INDEX_CHUNK
    nf4_codes.INDEX_CHUNK = chunk
    try:
        got = nf4_codes.dequantize_4bit(shifted, absmax, n, "nf4", blocksize, dtype)
    finally:
        nf4_codes.INDEX_CHUNK = saved
    assert got.shape == (n,) and got.dtype == dtype
    assert torch.equal(got, _reference_dequantize(packed, absmax, n, blocksize, dtype))


def test_dequantize_in_threads_and_after_the_workspace_is_released() -> None:
    """Each thread reuses its own CPU index buffer: concurrent calls on tensors of different
    sizes give the same values as one call alone, and a released buffer is rebuilt."""
    from concurrent.futures import ThreadPoolExecutor

    from peft_zoo import nf4_codes

    g = torch.Generator().manual_seed(3)
    tensors = [nf4_codes.quantize_4bit(torch.randn(n, generator=g)) for n in (4096, 1000, 64 * 513)]
    sizes = (4096, 1000, 64 * 513)
    alone = [nf4_codes.dequantize_4bit(p, a, n) for (p, a), n in zip(tensors, sizes, strict=True)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = [
            pool.submit(lambda i=i: [nf4_codes.dequantize_4bit(*tensors[i], sizes[i]) for _ in range(20)])
            for i in range(3)
        ]
        for i, run in enumerate(runs):
            assert all(torch.equal(r, alone[i]) for r in run.result()), i
    nf4_codes.release_workspace()
    assert torch.equal(nf4_codes.dequantize_4bit(*tensors[2], sizes[2]), alone[2])


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_large_lookup_split_over_threads_equals_the_definition(threads: int) -> None:
    """Above 2^17 16-bit words the CPU lookup is split over threads (and in slices of
    INDEX_CHUNK words): same bits as the definition, whatever the thread count."""
    from peft_zoo import nf4_codes

    n = (1 << 19) + 37  # odd, and a partial last block
    packed, absmax = nf4_codes.quantize_4bit(torch.randn(n, generator=torch.Generator().manual_seed(5)))
    want = _reference_dequantize(packed, absmax, n, 64, torch.bfloat16)
    saved = torch.get_num_threads(), nf4_codes.INDEX_CHUNK
    torch.set_num_threads(threads)
    try:
        for chunk in (saved[1], (1 << 17) + 3):
            nf4_codes.INDEX_CHUNK = chunk
            assert torch.equal(nf4_codes.dequantize_4bit(packed, absmax, n, dtype=torch.bfloat16), want)
    finally:
        torch.set_num_threads(saved[0])
        nf4_codes.INDEX_CHUNK = saved[1]
