"""Grader machinery of challenge 18 · nf4_quantize: drawn weights, an NF4 model written
independently of the answer (nearest entry via the midpoints) that can also reproduce each
classic bug, and the checks that point at the first wrong block or byte and name the bug."""

from __future__ import annotations

import math
from typing import Any, NoReturn

import torch
from hypothesis import strategies as st

from peft_zoo.exercises.grading import CLASSIC_BUG, SEVERAL_BUGS
from peft_zoo.nf4 import NF4_CODE
from peft_zoo.testing import explain, seeds

# The published NF4 table (QLoRA, Appendix E); tests/test_nf4.py checks it value by value.
TABLE = NF4_CODE.clone()
MIDPOINTS = (TABLE[1:] + TABLE[:-1]) / 2  # a value between two midpoints is nearest to the entry between them
HALF_GAP = float((TABLE[1:] - TABLE[:-1]).max() / 2)  # worst rounding error, as a fraction of the absmax


# ----------------------------------------------------------------------------- drawn inputs


@st.composite
def cases(draw: st.DrawFn) -> dict:
    """A shape (1-d or 2-d, often not a multiple of the block size), a block size, a scale, and
    whether one block is all zeros and another all negative."""
    shape: tuple[int, ...]
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


def weights(case: dict) -> torch.Tensor:
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


def named(names: list[str]) -> str | None:
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


def model_quantize(
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


def model_dequantize(
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


def call(fn, *args, what: str, drawn: dict, **kwargs):
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


def describe_codes(packed: torch.Tensor, k: int) -> str:
    byte = int(packed[k]) & 0xFF
    return f"byte {byte:#04x} (high nibble {byte >> 4}, low nibble {byte & 15})"


def check_quantized(got: Any, w: torch.Tensor, case: dict[str, Any], drawn: dict[str, Any]) -> None:
    """The learner's ``(packed, absmax)`` for ``w`` is the model's; else the first wrong block or
    byte, and the classic bug that reproduces the whole output."""
    bs = case["blocksize"]
    expected_packed, expected_absmax = model_quantize(w, bs)
    packed, absmax = _check_layout(got, w, bs, drawn)
    if torch.equal(packed, expected_packed) and torch.allclose(absmax, expected_absmax, rtol=1e-6, atol=0):
        return
    names = []  # which classic bugs reproduce the learner's output exactly (and not the answer)?
    for bug, message in QUANTIZE_BUGS.items():
        bug_packed, bug_absmax = model_quantize(w, bs, bug)
        matches = torch.equal(packed, bug_packed) and torch.allclose(absmax, bug_absmax, equal_nan=True)
        differs = not (torch.equal(bug_packed, expected_packed) and torch.equal(bug_absmax, expected_absmax))
        if matches and differs:
            names.append(message)
    found = named(names)
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
        _wrong_byte(packed, expected_packed, expected_absmax, w, bs, drawn, found)


def _check_layout(
    got: Any, w: torch.Tensor, bs: int, drawn: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``got`` is ``(packed uint8 of n_pad / 2 bytes, absmax float32 of one per block)``."""
    n_pad = math.ceil(w.numel() / bs) * bs
    ok = isinstance(got, tuple) and len(got) == 2 and all(isinstance(t, torch.Tensor) for t in got)
    if not ok:
        raise AssertionError(
            explain(
                "nf4_quantize must return a tuple (packed, absmax) of two tensors",
                drawn=drawn,
                got=f"{type(got).__name__}: {got!r:.200}",
            )
        )
    packed, absmax = got
    if packed.dtype != torch.uint8:
        raise AssertionError(
            explain(
                "packed has the wrong dtype",
                drawn=drawn,
                expected="torch.uint8",
                got=str(packed.dtype),
                hint="pack in uint8: in int8, codes >= 8 shifted left by 4 overflow into the sign bit",
            )
        )
    if tuple(packed.shape) != (n_pad // 2,):
        raise AssertionError(
            explain(
                "packed has the wrong shape",
                drawn=drawn,
                expected=f"({n_pad // 2},): {w.numel()} elements padded to {n_pad}, two per byte",
                got=str(tuple(packed.shape)),
                hint="pad to a multiple of blocksize, one code per element (argmin over the LAST axis, the 16 "
                "table entries), then two codes per byte",
            )
        )
    if not (absmax.dtype == torch.float32 and tuple(absmax.shape) == (n_pad // bs,)):
        raise AssertionError(
            explain(
                "absmax has the wrong dtype or shape",
                drawn=drawn,
                expected=f"float32 of shape ({n_pad // bs},), one per block",
                got=f"{absmax.dtype} of shape {tuple(absmax.shape)}",
            )
        )
    return packed, absmax


def _wrong_byte(
    packed: torch.Tensor,
    expected_packed: torch.Tensor,
    expected_absmax: torch.Tensor,
    w: torch.Tensor,
    bs: int,
    drawn: dict[str, Any],
    found: str | None,
) -> NoReturn:
    """Point at the first wrong byte: its two elements, their normalised values, the codes."""
    n_pad = math.ceil(w.numel() / bs) * bs
    k = int((packed != expected_packed).nonzero()[0])
    i, b = 2 * k, (2 * k) // bs
    flat = torch.cat([w.reshape(-1).float(), torch.zeros(n_pad - w.numel())])
    pair = [round(v, 5) for v in flat[i : i + 2].tolist()]
    normed = [round(v / float(expected_absmax[b]), 4) if expected_absmax[b] > 0 else 0.0 for v in pair]
    raise AssertionError(
        explain(
            f"packed byte {k} (elements {i} and {i + 1}, block {b}) is wrong",
            drawn=drawn,
            expected=f"{describe_codes(expected_packed, k)} for w = {pair}, w / absmax = {normed}",
            got=describe_codes(packed, k),
            hint=found
            or "each element gets the index (0..15) of the NF4 entry nearest to w / absmax of its "
            "block; padding and zero blocks get 7 (the entry 0.0)",
        )
    )
