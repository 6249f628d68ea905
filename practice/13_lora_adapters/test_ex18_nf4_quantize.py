"""Grader for challenge 18 · nf4_quantize. Run: peft-zoo check 18 (or pytest this file)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from peft_zoo.exercises.graders.ex18_nf4_quantize import (
    DEQUANTIZE_BUGS,
    EXAMPLES,
    HALF_GAP,
    TABLE,
    call,
    cases,
    check_quantized,
    model_dequantize,
    model_quantize,
    named,
    weights,
)
from peft_zoo.exercises.grading import learner_code, require
from peft_zoo.testing import explain

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

# ----------------------------------------------------------------------------- tests


@settings(max_examples=40, deadline=None)
@given(case=cases())
@example(case=EXAMPLES[0])
@example(case=EXAMPLES[1])
@example(case=EXAMPLES[2])
@learner_code()
def test_quantize_matches_the_reference(impl, ref, case) -> None:
    (quantize,) = require(impl, "nf4_quantize")
    w = weights(case)
    before = w.clone()
    drawn = {**case, "w[:6]": [round(v, 4) for v in w.reshape(-1)[:6].tolist()]}
    got = call(quantize, w, case["blocksize"], what="nf4_quantize(w, blocksize)", drawn=drawn)
    assert torch.equal(w, before), explain(
        "nf4_quantize changed its input w in place",
        drawn=drawn,
        hint="work on a copy: w.reshape(-1).float() may return w itself, so in-place ops (div_, abs_) edit it",
    )
    # The reference answer and this grader's model agree (so a failure below is about your code).
    ref_packed, ref_absmax = ref.nf4_quantize(w, case["blocksize"])
    model_packed, model_absmax = model_quantize(w, case["blocksize"])
    assert torch.equal(ref_packed, model_packed) and torch.equal(ref_absmax, model_absmax)
    check_quantized(got, w, case, drawn)


@settings(max_examples=40, deadline=None)
@given(case=cases(), dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
@example(case=EXAMPLES[0], dtype=torch.float64)
@example(case=EXAMPLES[1], dtype=torch.float32)
@learner_code()
def test_dequantize_matches_the_reference(impl, ref, case, dtype) -> None:
    (dequantize,) = require(impl, "nf4_dequantize")
    w = weights(case)
    bs, shape = case["blocksize"], tuple(w.shape)
    packed, absmax = model_quantize(w, bs)
    drawn = {**case, "dtype": dtype}
    got = call(dequantize, packed, absmax, shape, bs, dtype, what="nf4_dequantize(...)", drawn=drawn)
    expected = model_dequantize(packed, absmax, shape, bs, dtype)
    assert torch.equal(ref.nf4_dequantize(packed, absmax, shape, bs, dtype), expected)
    assert isinstance(got, torch.Tensor), explain(
        "nf4_dequantize must return a tensor", drawn=drawn, got=f"{type(got).__name__}"
    )
    names = []  # which classic bugs reproduce the learner's output exactly (and not the answer)?
    for bug, message in DEQUANTIZE_BUGS.items():
        wrong = model_dequantize(packed, absmax, shape, bs, dtype, bug)
        same = wrong.shape == got.shape and wrong.dtype == got.dtype and torch.equal(wrong, got)
        if same and not (wrong.dtype == expected.dtype and torch.equal(wrong, expected)):
            names.append(message)
    found = named(names)
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
    w = weights(case)
    bs = case["blocksize"]
    drawn = dict(case)
    packed, absmax = call(quantize, w, bs, what="nf4_quantize(w, blocksize)", drawn=drawn)
    out = call(dequantize, packed, absmax, tuple(w.shape), bs, what="nf4_dequantize(...)", drawn=drawn)
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
