"""Grader for challenge 29 · pissa_init. Run: peft-zoo check 29 (or pytest this file).

Each test draws a float32 nn.Linear (widths, rank, alpha, rsLoRA, a seed), runs your function
on its weight and peft_zoo's own PiSSA / OLoRA (peft_zoo.pissa, which reproduces Hugging Face
PEFT 0.21.2's pissa_init, olora_init and the conversion save_pretrained writes) on a LoRALinear
holding the same weight, and compares A, B, the residual weight and the converted adapter.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings

from peft_zoo.core.checks import weight_of
from peft_zoo.exercises.graders.ex29_pissa_init import (
    EXAMPLE,
    OLORA_SHAPES,
    TALL,
    align,
    call_learner,
    conversion_bugs,
    olora_bugs,
    pissa_bugs,
    run_library,
    specs,
    trained,
    unpack,
)
from peft_zoo.exercises.grading import assert_matches, learner_code, require
from peft_zoo.pissa import pissa_to_lora_delta
from peft_zoo.testing import explain

CHALLENGE = "ex29_pissa_init"
pytestmark = pytest.mark.timeout(120)

# Classic mistakes, each planted alone into a copy of the answer: this grader must reject every one
# (checked by tests/test_exercises.py). (description, snippet in the answer, mistaken snippet,
# and the bug's name as this grader's "likely:" line gives it: tests/test_diagnosis.py checks it)
PLANTED_BUGS: list[tuple[str | tuple[str, ...], ...]] = [
    (
        "the principal part not subtracted from W0",
        "w_res = weight - scale * lora_B @ lora_A",
        "w_res = weight",
        "the principal part is still in W0: the base must keep W_res = W0 - s B A",
    ),
    (
        "sqrt(S) on one side only",
        "    lora_A = torch.diag(torch.sqrt(sr)) @ vh[:rank]  # (r, in)\n"
        "    lora_B = u[:, :rank] @ torch.diag(torch.sqrt(sr))  # (out, r)\n",
        "    lora_A = torch.diag(sr) @ vh[:rank]\n    lora_B = u[:, :rank]\n",
        "sqrt(S) on one side only: split it, A = diag(sqrt(S_r / s)) Vᵀ_r and B = U_r diag(sqrt(S_r / s))",
    ),
    (
        "the rows of V instead of Vᵀ",
        "@ vh[:rank]  # (r, in)",
        "@ vh.T[:rank]  # (r, in)",
        (
            "the rows of V, not of Vᵀ: torch.linalg.svd returns Vᵀ, so A takes its first r ROWS, vh[:r]",
            "check the shapes: A (r, in) takes the first r ROWS of vh",
        ),
    ),
    (
        "the scale not folded into the singular values",
        "sr = s[:rank] / scale",
        "sr = s[:rank]",
        "the scale is not folded in: divide S_r by s before the square root, so s B A is the principal part",
    ),
    (
        "OLoRA's residual without the scale",
        "return a, b, weight - scale * (b @ a)",
        "return a, b, weight - b @ a",
        "the residual forgets the scale: W_res = W0 - s B A",
    ),
    (
        "OLoRA's B from the rows of Q",
        "a, b = r[:rank], q[:, :rank]",
        "a, b = r[:rank], q[:rank].T",
        (
            "B from the first r ROWS of Q: B = Q[:, :r], the first r columns",
            "check the shapes: B = Q[:, :r] is (out, r), the first r columns of Q",
        ),
    ),
    (
        "the conversion drops the initial adapter's term",
        "    new_A = torch.cat([lora_A, initial_A], dim=0)  # (2r, in)\n"
        "    new_B = torch.cat([lora_B, -initial_B], dim=1)",
        "    new_A = lora_A\n    new_B = lora_B",
        "the initial adapter's term is dropped: A' = cat([A, A0]), B' = cat([B, -B0], dim=1)",
    ),
    (
        "the conversion adds B0 instead of subtracting it",
        "torch.cat([lora_B, -initial_B], dim=1)",
        "torch.cat([lora_B, initial_B], dim=1)",
        "B0 added with the wrong sign: W_res = W0 - s B0 A0, so B' = cat([B, -B0], dim=1)",
    ),
    (
        "alpha kept as it was at rank 2r",
        "new_alpha = alpha * math.sqrt(2) if rslora else 2 * alpha",
        "new_alpha = alpha",
        "alpha not adjusted: at rank 2r the same scale needs alpha' = 2 alpha (sqrt(2) alpha with rsLoRA)",
    ),
    (
        "alpha doubled under rsLoRA too",
        "new_alpha = alpha * math.sqrt(2) if rslora else 2 * alpha",
        "new_alpha = 2 * alpha",
        "rsLoRA's scale is alpha / sqrt(r): doubling the rank needs alpha' = sqrt(2) alpha, not 2 alpha",
    ),
]


def _check_init(got, lib, w0, spec, bugs, what, shapes_hint=None) -> None:
    a, b, w_res = unpack(got, spec, what)
    a, b = align(a, b, lib.lora_A.detach())
    for name, mine, want in (
        ("A", a, lib.lora_A),
        ("B", b, lib.lora_B),
        ("W_res", w_res, weight_of(lib.base)),
    ):
        hint = shapes_hint if getattr(mine, "shape", None) != want.shape else None
        assert_matches(mine, want.detach(), what=f"{what}: {name}", drawn=spec, bugs=bugs[name], hint=hint)
    start = w_res + lib.scale * b @ a
    assert_matches(start, w0, what=f"{what}: W_res + s B A must give back W0", drawn=spec)


@settings(max_examples=30, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@example(spec=TALL)
@learner_code()
def test_pissa_init_matches_peft_zoo(impl, spec) -> None:
    (fn,) = require(impl, "pissa_init")
    lib, w0 = run_library(spec, "pissa")
    got = call_learner(lambda: fn(w0.clone(), spec["rank"], lib.scale), "pissa_init", spec)
    _check_init(got, lib, w0, spec, pissa_bugs(w0, spec["rank"], lib.scale), "pissa_init")


@settings(max_examples=30, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@example(spec=TALL)
@learner_code()
def test_olora_init_matches_peft_zoo(impl, spec) -> None:
    (fn,) = require(impl, "olora_init")
    lib, w0 = run_library(spec, "olora")
    got = call_learner(lambda: fn(w0.clone(), spec["rank"], lib.scale), "olora_init", spec, OLORA_SHAPES)
    bugs = olora_bugs(w0, spec["rank"], lib.scale)
    a, b, w_res = unpack(got, spec, "olora_init")
    for name, mine, want in (
        ("A", a, lib.lora_A),
        ("B", b, lib.lora_B),
        ("W_res", w_res, weight_of(lib.base)),
    ):
        hint = OLORA_SHAPES if getattr(mine, "shape", None) != want.shape else None
        assert_matches(
            mine, want.detach(), what=f"olora_init: {name}", drawn=spec, bugs=bugs[name], hint=hint
        )


@settings(max_examples=30, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@example(spec=TALL)
@learner_code()
def test_pissa_to_lora_matches_peft_zoo(impl, spec) -> None:
    (fn,) = require(impl, "pissa_to_lora")
    layer, a0, b0, original = trained(spec)
    expected = pissa_to_lora_delta(layer, a0, b0)
    a, b = layer.lora_A.detach().clone(), layer.lora_B.detach().clone()
    got = call_learner(
        lambda: fn(a, b, a0.clone(), b0.clone(), spec["alpha"], spec["rslora"]), "pissa_to_lora", spec, None
    )
    new_a, new_b, new_alpha = unpack(got, spec, "pissa_to_lora")
    bugs = conversion_bugs(layer, a0, b0, spec)
    assert_matches(new_a, expected.lora_A, what="A' (2r, in)", drawn=spec, bugs=bugs["A"])
    assert_matches(new_b, expected.lora_B, what="B' (out, 2r)", drawn=spec, bugs=bugs["B"])
    assert isinstance(new_alpha, float | int | torch.Tensor), explain(
        "alpha' must be a number", drawn=spec, got=repr(new_alpha)
    )
    assert_matches(
        torch.tensor(float(new_alpha), dtype=torch.float64),
        torch.tensor(expected.alpha, dtype=torch.float64),
        what="alpha'",
        drawn=spec,
        bugs=bugs["alpha"],
    )
    rank = new_a.shape[0]
    scale = float(new_alpha) / (rank**0.5 if spec["rslora"] else rank)
    x = torch.randn(4, spec["in"])
    with torch.no_grad():
        converted = original(x) + scale * (x @ new_a.T @ new_b.T)
        assert_matches(converted, layer(x), what="plain LoRA on W0 vs the trained PiSSA layer", drawn=spec)
