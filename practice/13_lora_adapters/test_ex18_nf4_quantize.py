"""Grader for challenge 18 · nf4_quantize. Run: peft-zoo check 18 (or pytest this file)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from peft_zoo.exercises.grading import CLASSIC_BUG, SEVERAL_BUGS, learner_code, require
from peft_zoo.nf4 import NF4_CODE
from peft_zoo.testing import explain, seeds

CHALLENGE = "ex18_nf4_quantize"
pytestmark = pytest.mark.timeout(120)

# Classic mistakes, each planted alone into a copy of the answer: this grader must reject every one
# (checked by tests/test_exercises.py). (description, snippet in the answer, mistaken snippet,
# and the bug's name as this grader's "likely:" line gives it: tests/test_diagnosis.py checks it)
PLANTED_BUGS: list[tuple[str, ...]] = [
    (
        "max instead of absmax (a block's negative values are ignored)",
        "absmax = blocks.abs().amax(dim=1)",
        "absmax = blocks.amax(dim=1)",
        "max instead of absmax: use blocks.abs().amax(dim=1), or a block's negative values can exceed 1",
    ),
    (
        "one absmax for the whole tensor instead of one per block",
        "absmax = blocks.abs().amax(dim=1)",
        "absmax = blocks.abs().amax().expand(blocks.shape[0])",
        "one absmax for the whole tensor: take the absmax of each block (amax over dim=1)",
    ),
    (
        "no guard for an all-zero block (0 / 0 = NaN)",
        "normed = blocks / divisor[:, None]",
        "normed = blocks / absmax[:, None]",
        "an all-zero block divided by its absmax 0 gives NaN; divide by 1 when the absmax is 0",
    ),
    (
        "nearest code by rounding 7 * x on an integer grid instead of the NF4 table",
        "codes = dist.argmin(dim=-1)",
        "codes = (normed * 7).round().long() + 7",
        "codes = round(7 * x) + 7 assumes evenly spaced levels; NF4 is not: take the argmin over the table",
    ),
    (
        "argmin over the wrong axis (the block, not the table)",
        "codes = dist.argmin(dim=-1)",
        "codes = dist.argmin(dim=1)",
        "argmin over the LAST axis, the 16 table entries",
    ),
    (
        "rounds up to the next table entry instead of to the nearest",
        "codes = dist.argmin(dim=-1)",
        "codes = torch.bucketize(normed, NF4)",
        "the code above, not the nearest: bucketize(x, NF4) rounds up; compare distances to every entry",
    ),
    (
        "nibble order swapped when packing (first element in the low nibble)",
        "packed = (pairs[:, 0] << 4) | pairs[:, 1]",
        "packed = (pairs[:, 1] << 4) | pairs[:, 0]",
        "nibble order swapped: the FIRST element of each pair goes in the HIGH nibble (<< 4)",
    ),
    (
        "codes packed as int8: 8 << 4 overflows into the sign bit",
        "pairs = codes.reshape(-1, 2).to(torch.uint8)",
        "pairs = codes.reshape(-1, 2).to(torch.int8)",
        "pack in uint8: in int8, codes >= 8 shifted left by 4 overflow into the sign bit",
    ),
    (
        "no padding: sizes that are not a multiple of blocksize break",
        "flat = F.pad(flat, (0, n_pad - n))",
        "flat = flat",
        "pad the flattened tensor with zeros to a multiple of blocksize",
    ),
    (
        "blocks formed along the wrong dimension (strided elements instead of consecutive ones)",
        "blocks = flat.view(n_pad // blocksize, blocksize)",
        "blocks = flat.view(blocksize, n_pad // blocksize).T",
        "blocks are consecutive elements: flat.view(n_blocks, blocksize), not a strided view",
    ),
    (
        "nibble order swapped when unpacking (low nibble taken as the first element)",
        "codes = torch.stack([high, low], dim=1)",
        "codes = torch.stack([low, high], dim=1)",
        "nibble order swapped: the high nibble (packed >> 4) is the FIRST element",
    ),
    (
        "dequantize forgets to multiply by the block absmax",
        "values = NF4[codes].view(-1, blocksize) * absmax.float()[:, None]",
        "values = NF4[codes].view(-1, blocksize)",
        "each block must be multiplied by its absmax: NF4[q] * absmax[block]",
    ),
    (
        "dequantize keeps the padding",
        "return values.reshape(-1)[:n].reshape(shape).to(dtype)",
        "return values.reshape(-1).reshape(shape).to(dtype)",
        "keep only the first prod(shape) values when dequantising",
    ),
    (
        "dequantize ignores the requested dtype",
        "return values.reshape(-1)[:n].reshape(shape).to(dtype)",
        "return values.reshape(-1)[:n].reshape(shape)",
        "the result must have the requested dtype: .to(dtype) at the end",
    ),
]

# The published NF4 table (QLoRA, Appendix E); tests/test_quant.py checks it value by value.
TABLE = NF4_CODE.clone()
MIDPOINTS = (TABLE[1:] + TABLE[:-1]) / 2  # a value between two midpoints is nearest to the entry between them
HALF_GAP = float((TABLE[1:] - TABLE[:-1]).max() / 2)  # worst rounding error, as a fraction of the absmax


# ----------------------------------------------------------------------------- drawn inputs


@st.composite
def cases(draw: st.DrawFn) -> dict:
    """A shape (1-d or 2-d, often not a multiple of the block size), a block size, a scale, and
    whether one block is all zeros and another all negative."""
    if draw(st.booleans()):
        shape = (draw(st.integers(1, 200)),)
    else:
        shape = (draw(st.integers(1, 12)), draw(st.integers(1, 24)))
    return {
        "shape": shape,
        "blocksize": draw(st.sampled_from([2, 4, 8, 16, 64])),
        "scale": draw(st.sampled_from([1e-3, 0.05, 1.0, 30.0])),
        "zero_block": draw(st.booleans()),
        "negative_block": draw(st.booleans()),
        "seed": draw(seeds()),
    }


def _weights(case: dict) -> torch.Tensor:
    """N(0, scale^2) weights of the drawn shape, with the drawn zero and negative-only blocks."""
    g = torch.Generator().manual_seed(case["seed"])
    w = torch.randn(case["shape"], generator=g) * case["scale"]
    flat = w.view(-1)
    bs, n_blocks = case["blocksize"], math.ceil(flat.numel() / case["blocksize"])
    if case["negative_block"]:
        b = int(torch.randint(n_blocks, (1,), generator=g))
        flat[b * bs : (b + 1) * bs] = -flat[b * bs : (b + 1) * bs].abs()
    if case["zero_block"]:
        b = int(torch.randint(n_blocks, (1,), generator=g))
        flat[b * bs : (b + 1) * bs] = 0.0
    return w


def _named(names: list[str]) -> str | None:
    """The "likely" line for the classic bugs that reproduce the learner's output: one named, or
    all of them when this example cannot tell them apart (never just the first)."""
    if not names:
        return None
    return CLASSIC_BUG + names[0] if len(names) == 1 else SEVERAL_BUGS + "; ".join(names)


EXAMPLES = [
    # 100 elements in blocks of 64: one full block, one padded; block 0 all zero.
    {"shape": (100,), "blocksize": 64, "scale": 1.0, "zero_block": True, "negative_block": False, "seed": 0},
    # A 2-d weight, blocks of 16 (as many positions per block as table entries), a negative-only block.
    {
        "shape": (5, 16),
        "blocksize": 16,
        "scale": 0.05,
        "zero_block": False,
        "negative_block": True,
        "seed": 3,
    },
    {"shape": (3, 7), "blocksize": 4, "scale": 30.0, "zero_block": True, "negative_block": True, "seed": 1},
]


# ----------------------------------------------------------------------------- an independent model


def _model_quantize(
    w: torch.Tensor, blocksize: int, bug: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """NF4 quantisation written independently of the answer (nearest entry via the midpoints);
    ``bug`` reproduces a classic mistake, to name it when the learner's output matches."""
    flat = w.reshape(-1).float()
    n = flat.numel()
    n_pad = -(-n // blocksize) * blocksize
    flat = torch.cat([flat, flat.new_zeros(n_pad - n)])
    # (n_blocks, blocksize): consecutive elements, or (bug) every n_blocks-th element
    blocks = flat.view(blocksize, -1).T if bug == "strided blocks" else flat.view(-1, blocksize)
    if bug == "max":
        absmax = blocks.max(dim=1).values
    elif bug == "global":
        absmax = blocks.abs().max().repeat(blocks.shape[0])
    else:
        absmax = blocks.abs().max(dim=1).values
    if bug == "no zero guard":
        normed = blocks / absmax[:, None]
    else:
        normed = blocks / torch.where(absmax > 0, absmax, torch.ones_like(absmax))[:, None]
    if bug == "int grid":
        codes = (normed * 7).round() + 7
    elif bug == "round up":
        codes = torch.bucketize(normed, TABLE)
    elif bug == "no zero guard":
        codes = torch.where(normed.isnan(), torch.zeros_like(normed), torch.bucketize(normed, MIDPOINTS))
    else:
        codes = torch.bucketize(normed, MIDPOINTS)
    codes = codes.reshape(-1).long()
    first, second = codes[0::2], codes[1::2]
    if bug == "swapped nibbles":
        first, second = second, first
    return (first * 16 + second).to(torch.uint8), absmax


def _model_dequantize(
    packed: torch.Tensor, absmax: torch.Tensor, shape, blocksize: int, dtype, bug: str | None = None
) -> torch.Tensor:
    p = packed.long()
    first, second = p // 16, p % 16
    if bug == "swapped nibbles":
        first, second = second, first
    codes = torch.stack([first, second], dim=1).reshape(-1)
    values = TABLE[codes].view(-1, blocksize)
    if bug != "no absmax":
        values = values * absmax[:, None]
    out = values.reshape(-1)[: math.prod(shape)].reshape(shape)
    return out if bug == "no cast" else out.to(dtype)


QUANTIZE_BUGS = {
    "max": "max instead of absmax: use blocks.abs().amax(dim=1), or a block's negative values can exceed 1",
    "global": "one absmax for the whole tensor: take the absmax of each block (amax over dim=1)",
    "int grid": "codes = round(7 * x) + 7 assumes evenly spaced levels; NF4 is not: take the argmin over the table",
    "round up": "the code above, not the nearest: bucketize(x, NF4) rounds up; compare distances to every entry",
    "swapped nibbles": "nibble order swapped: the FIRST element of each pair goes in the HIGH nibble (<< 4)",
    "strided blocks": "blocks are consecutive elements: flat.view(n_blocks, blocksize), not a strided view",
    "no zero guard": "an all-zero block divided by its absmax 0 gives NaN; divide by 1 when the absmax is 0",
}
DEQUANTIZE_BUGS = {
    "swapped nibbles": "nibble order swapped: the high nibble (packed >> 4) is the FIRST element",
    "no absmax": "each block must be multiplied by its absmax: NF4[q] * absmax[block]",
    "no cast": "the result must have the requested dtype: .to(dtype) at the end",
}


# ----------------------------------------------------------------------------- helpers


def _call(fn, *args, what: str, drawn: dict, **kwargs):
    """Call learner code; an exception other than NotImplementedError becomes a teaching failure."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise
    except Exception as err:
        raise AssertionError(
            explain(
                f"{what} raised {type(err).__name__}: {str(err)[:300]}",
                drawn=drawn,
                hint="if a view/reshape failed: pad the flattened tensor with zeros to a multiple of blocksize "
                "before forming blocks, and keep only the first prod(shape) values when dequantising",
            )
        ) from None


def _describe_codes(packed: torch.Tensor, k: int) -> str:
    byte = int(packed[k]) & 0xFF
    return f"byte {byte:#04x} (high nibble {byte >> 4}, low nibble {byte & 15})"


def _check_quantized(got, w: torch.Tensor, case: dict, drawn: dict) -> None:
    bs = case["blocksize"]
    expected_packed, expected_absmax = _model_quantize(w, bs)
    n_pad = math.ceil(w.numel() / bs) * bs
    ok = isinstance(got, tuple) and len(got) == 2 and all(isinstance(t, torch.Tensor) for t in got)
    assert ok, explain(
        "nf4_quantize must return a tuple (packed, absmax) of two tensors",
        drawn=drawn,
        got=f"{type(got).__name__}: {got!r:.200}",
    )
    packed, absmax = got
    assert packed.dtype == torch.uint8, explain(
        "packed has the wrong dtype",
        drawn=drawn,
        expected="torch.uint8",
        got=str(packed.dtype),
        hint="pack in uint8: in int8, codes >= 8 shifted left by 4 overflow into the sign bit",
    )
    assert tuple(packed.shape) == (n_pad // 2,), explain(
        "packed has the wrong shape",
        drawn=drawn,
        expected=f"({n_pad // 2},): {w.numel()} elements padded to {n_pad}, two per byte",
        got=str(tuple(packed.shape)),
        hint="pad to a multiple of blocksize, one code per element (argmin over the LAST axis, the 16 "
        "table entries), then two codes per byte",
    )
    assert absmax.dtype == torch.float32 and tuple(absmax.shape) == (n_pad // bs,), explain(
        "absmax has the wrong dtype or shape",
        drawn=drawn,
        expected=f"float32 of shape ({n_pad // bs},), one per block",
        got=f"{absmax.dtype} of shape {tuple(absmax.shape)}",
    )
    if torch.equal(packed, expected_packed) and torch.allclose(absmax, expected_absmax, rtol=1e-6, atol=0):
        return
    names = []  # which classic bugs reproduce the learner's output exactly (and not the answer)?
    for bug, message in QUANTIZE_BUGS.items():
        bug_packed, bug_absmax = _model_quantize(w, bs, bug)
        matches = torch.equal(packed, bug_packed) and torch.allclose(absmax, bug_absmax, equal_nan=True)
        differs = not (torch.equal(bug_packed, expected_packed) and torch.equal(bug_absmax, expected_absmax))
        if matches and differs:
            names.append(message)
    found = _named(names)
    absmax_ok = torch.allclose(absmax, expected_absmax, rtol=1e-6, atol=0)
    if not absmax_ok:
        b = int((~torch.isclose(absmax, expected_absmax, rtol=1e-6, atol=0)).nonzero()[0])
        block = w.reshape(-1)[b * bs : (b + 1) * bs]
        raise AssertionError(
            explain(
                f"absmax of block {b} is wrong",
                drawn=drawn,
                expected=f"{float(expected_absmax[b]):.6g} = max |w| over elements {b * bs}..{b * bs + len(block) - 1}"
                f" ({[round(v, 4) for v in block.tolist()[:8]]}{' ...' if len(block) > 8 else ''})",
                got=f"{float(absmax[b]):.6g}",
                hint=found,
            )
        )
    if not torch.equal(packed, expected_packed):
        k = int((packed != expected_packed).nonzero()[0])
        i, b = 2 * k, (2 * k) // bs
        flat = torch.cat([w.reshape(-1).float(), torch.zeros(n_pad - w.numel())])
        pair = [round(v, 5) for v in flat[i : i + 2].tolist()]
        normed = [round(v / float(expected_absmax[b]), 4) if expected_absmax[b] > 0 else 0.0 for v in pair]
        raise AssertionError(
            explain(
                f"packed byte {k} (elements {i} and {i + 1}, block {b}) is wrong",
                drawn=drawn,
                expected=f"{_describe_codes(expected_packed, k)} for w = {pair}, w / absmax = {normed}",
                got=_describe_codes(packed, k),
                hint=found
                or "each element gets the index (0..15) of the NF4 entry nearest to w / absmax of its "
                "block; padding and zero blocks get 7 (the entry 0.0)",
            )
        )


# ----------------------------------------------------------------------------- tests


@settings(max_examples=40, deadline=None)
@given(case=cases())
@example(case=EXAMPLES[0])
@example(case=EXAMPLES[1])
@example(case=EXAMPLES[2])
@learner_code()
def test_quantize_matches_the_reference(impl, ref, case) -> None:
    (quantize,) = require(impl, "nf4_quantize")
    w = _weights(case)
    before = w.clone()
    drawn = {**case, "w[:6]": [round(v, 4) for v in w.reshape(-1)[:6].tolist()]}
    got = _call(quantize, w, case["blocksize"], what="nf4_quantize(w, blocksize)", drawn=drawn)
    assert torch.equal(w, before), explain(
        "nf4_quantize changed its input w in place",
        drawn=drawn,
        hint="work on a copy: w.reshape(-1).float() may return w itself, so in-place ops (div_, abs_) edit it",
    )
    # The reference answer and this grader's model agree (so a failure below is about your code).
    ref_packed, ref_absmax = ref.nf4_quantize(w, case["blocksize"])
    model_packed, model_absmax = _model_quantize(w, case["blocksize"])
    assert torch.equal(ref_packed, model_packed) and torch.equal(ref_absmax, model_absmax)
    _check_quantized(got, w, case, drawn)


@settings(max_examples=40, deadline=None)
@given(case=cases(), dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
@example(case=EXAMPLES[0], dtype=torch.float64)
@example(case=EXAMPLES[1], dtype=torch.float32)
@learner_code()
def test_dequantize_matches_the_reference(impl, ref, case, dtype) -> None:
    (dequantize,) = require(impl, "nf4_dequantize")
    w = _weights(case)
    bs, shape = case["blocksize"], tuple(w.shape)
    packed, absmax = _model_quantize(w, bs)
    drawn = {**case, "dtype": dtype}
    got = _call(dequantize, packed, absmax, shape, bs, dtype, what="nf4_dequantize(...)", drawn=drawn)
    expected = _model_dequantize(packed, absmax, shape, bs, dtype)
    assert torch.equal(ref.nf4_dequantize(packed, absmax, shape, bs, dtype), expected)
    assert isinstance(got, torch.Tensor), explain(
        "nf4_dequantize must return a tensor", drawn=drawn, got=f"{type(got).__name__}"
    )
    names = []  # which classic bugs reproduce the learner's output exactly (and not the answer)?
    for bug, message in DEQUANTIZE_BUGS.items():
        wrong = _model_dequantize(packed, absmax, shape, bs, dtype, bug)
        same = wrong.shape == got.shape and wrong.dtype == got.dtype and torch.equal(wrong, got)
        if same and not (wrong.dtype == expected.dtype and torch.equal(wrong, expected)):
            names.append(message)
    found = _named(names)
    assert tuple(got.shape) == shape and got.dtype == dtype, explain(
        "nf4_dequantize returned the wrong shape or dtype",
        drawn=drawn,
        expected=f"shape {shape}, dtype {dtype}",
        got=f"shape {tuple(got.shape)}, dtype {got.dtype}",
        hint=found or "drop the padding (keep the first prod(shape) values), reshape to shape, cast to dtype",
    )
    rtol, atol = (1e-2, 1e-6) if dtype == torch.bfloat16 else (1e-6, 1e-9)
    if not torch.allclose(got.double(), expected.double(), rtol=rtol, atol=atol):
        bad = (~torch.isclose(got.double(), expected.double(), rtol=rtol, atol=atol)).reshape(-1)
        i = int(bad.nonzero()[0])
        b = i // bs
        nibble = int(packed[i // 2]) >> 4 if i % 2 == 0 else int(packed[i // 2]) & 15
        raise AssertionError(
            explain(
                f"element {i} (block {b}) is wrong",
                drawn=drawn,
                expected=f"NF4[{nibble}] * absmax[{b}] = {float(TABLE[nibble]):.6g} * {float(absmax[b]):.6g} = "
                f"{float(expected.reshape(-1)[i]):.6g}",
                got=f"{float(got.reshape(-1)[i]):.6g}",
                hint=found,
            )
        )


@settings(max_examples=25, deadline=None)
@given(case=cases())
@example(case=EXAMPLES[0])
@learner_code()
def test_round_trip_error_is_within_half_a_table_gap(impl, case) -> None:
    quantize, dequantize = require(impl, "nf4_quantize", "nf4_dequantize")
    w = _weights(case)
    bs = case["blocksize"]
    drawn = dict(case)
    packed, absmax = _call(quantize, w, bs, what="nf4_quantize(w, blocksize)", drawn=drawn)
    out = _call(dequantize, packed, absmax, tuple(w.shape), bs, what="nf4_dequantize(...)", drawn=drawn)
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == tuple(w.shape), explain(
        "nf4_dequantize(*nf4_quantize(w), w.shape) does not have w's shape",
        drawn=drawn,
        expected=str(tuple(w.shape)),
        got=str(getattr(out, "shape", type(out).__name__)),
    )
    assert bool(torch.isfinite(out).all()), explain(
        "the round trip produced NaN or inf",
        drawn=drawn,
        hint="an all-zero block has absmax 0: divide it by 1 instead, so its codes are 7 (0.0)",
    )
    flat_w, flat_out = w.reshape(-1), out.reshape(-1).float()
    block_max = torch.stack([flat_w[i : i + bs].abs().max() for i in range(0, flat_w.numel(), bs)])
    bound = HALF_GAP * block_max.repeat_interleave(bs)[: flat_w.numel()] * (1 + 1e-5) + 1e-12
    err = (flat_out - flat_w).abs()
    if bool((err > bound).any()):
        i = int((err > bound).nonzero()[0])
        raise AssertionError(
            explain(
                f"element {i} came back too far from where it started",
                drawn=drawn,
                expected=f"|w - w'| <= {HALF_GAP:.4f} * (absmax of its block) = {float(bound[i]):.4g} "
                f"(w = {float(flat_w[i]):.6g})",
                got=f"w' = {float(flat_out[i]):.6g}, error {float(err[i]):.4g}",
                hint="quantise to the NEAREST NF4 entry of w / absmax and dequantise with the same nibble "
                "order and block absmax",
            )
        )
