"""Grader for challenge 16 · batched_lora. Run: peft-zoo check 16 (or pytest this file)."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from peft_zoo.exercises.graders.ex16_batched_lora import (
    Batched,
    check_output,
    classic_bugs,
    drawn_of,
    loop_reference,
    recheck,
    setups,
    tensors,
)
from peft_zoo.exercises.graders.refusals import expect_refusal
from peft_zoo.exercises.grading import (
    assert_gradients_match,
    assert_matches,
    learner_code,
    require,
)
from peft_zoo.testing import explain

CHALLENGE = "ex16_batched_lora"
pytestmark = pytest.mark.timeout(120)

# Classic mistakes, each planted alone into a copy of the answer: this grader must reject every one
# (checked by tests/test_exercises.py). (description, snippet in the answer, mistaken snippet,
# and the bug's name as this grader's "likely:" line gives it: tests/test_diagnosis.py checks it)
PLANTED_BUGS: list[tuple[str, ...]] = [
    (
        "ids shifted by one (sample with id i uses adapter i + 1)",
        "idx = adapter_ids.clamp(min=0)",
        "idx = (adapter_ids.clamp(min=0) + 1) % n",
        "ids shifted by one: id i used adapter i + 1",
    ),
    (
        "ids treated as 1-based (adapter i - 1)",
        "idx = adapter_ids.clamp(min=0)",
        "idx = (adapter_ids - 1).clamp(min=0)",
        "ids treated as 1-based: id i used adapter i - 1 (id 0 clamped to adapter 0)",
    ),
    (
        "-1 not handled: lora_A[ids] silently picks the LAST adapter",
        "    idx = adapter_ids.clamp(min=0)",
        "    idx = adapter_ids\n    adapter_ids = adapter_ids.clamp(min=0)",
        "-1 picked the LAST adapter (plain lora_A[ids]: Python negative indexing)",
    ),
    (
        "-1 clamped to adapter 0 but never masked (base-only samples get adapter 0)",
        "* (adapter_ids >= 0).to(x.dtype)",
        "* torch.ones_like(adapter_ids).to(x.dtype)",
        "-1 was clamped to 0 but never masked: base-only samples got adapter 0",
    ),
    (
        "scale of adapter 0 used for every sample",
        "s = scale[idx].to(x.dtype)",
        "s = scale[0].to(x.dtype)",
        "the scale of adapter 0 is used for every sample",
    ),
    (
        "scale indexed by position b instead of by adapter id",
        "s = scale[idx].to(x.dtype)",
        "s = scale[torch.arange(len(idx)) % n].to(x.dtype)",
        "the scale is indexed by position b instead of by the sample's adapter id",
    ),
    (
        "A and B swapped in the gather",
        "    A = lora_A[idx]  # (B, r, in): sample b's A\n    B = lora_B[idx]  # (B, out, r): sample b's B\n",
        "    A = lora_B[idx].transpose(1, 2)\n    B = lora_A[idx].transpose(1, 2)\n",
        "A and B swapped (x @ B @ A instead of x @ A^T @ B^T)",
    ),
    (
        "A reshaped instead of transposed (a (r, in) -> (in, r) view scrambles the matrix)",
        "h = torch.bmm(x, A.transpose(1, 2))",
        "h = torch.bmm(x, A.reshape(A.shape[0], A.shape[2], A.shape[1]))",
        "A reshaped instead of transposed (A.view(in, r) is not A^T)",
    ),
    (
        "scale missing",
        "return y * s.view(-1, 1, 1)",
        "return y",
        "the scale is missing and -1 picked adapter 0",
    ),
    (
        "ids >= N not rejected with a ValueError (off-by-one bound)",
        "(adapter_ids < -1) | (adapter_ids >= n)",
        "(adapter_ids < -1) | (adapter_ids > n)",
        "check the ids and shapes yourself before indexing",
    ),
    (
        "ids below -1 not rejected",
        "(adapter_ids < -1) | (adapter_ids >= n)",
        "(adapter_ids >= n)",
        "-1 is the only negative id allowed",
    ),
    (
        "the number of ids is not checked against the batch",
        "if tuple(adapter_ids.shape) != (x.shape[0],):",
        "if adapter_ids.dim() != 1:",
        "check the ids and shapes yourself before indexing",
    ),
    (
        "the ids are clamped in place: the caller's -1 become 0",
        "idx = adapter_ids.clamp(min=0)",
        "idx = adapter_ids.clamp_(min=0)",
        "clamp_ / masked_fill_ / index_put_ on an argument edit the caller's tensor",
    ),
    (
        "one adapter for the whole batch (sample 0's id used for every sample)",
        "idx = adapter_ids.clamp(min=0)",
        "idx = adapter_ids.clamp(min=0)[:1].expand(adapter_ids.shape[0])",
        "one adapter for the whole batch: every sample used the adapter (and scale) of sample 0",
    ),
]


@settings(max_examples=40, deadline=None)
@given(setup=setups())
@example(setup={"B": 3, "T": 2, "N": 3, "r": 2, "in": 3, "out": 4, "ids": [-1, 2, 0], "seed": 0})
@example(setup={"B": 4, "T": 1, "N": 2, "r": 1, "in": 2, "out": 2, "ids": [1, 1, 0, 1], "seed": 1})
@learner_code()
def test_forward_matches_a_loop_of_lora_linear_layers(impl, ref, setup) -> None:
    (forward,) = require(impl, "batched_lora_forward")
    base, x, ids, A, B, scale = tensors(setup)
    originals = [t.clone() for t in (x, ids, A, B, scale)]
    with torch.no_grad():
        got = forward(base, x, ids, A, B, scale)
        expected = loop_reference(base, x, ids, A, B, scale)
        bugs = classic_bugs(base, x, ids, A, B, scale)
        check_output(
            got,
            expected,
            setup,
            bugs,
            what="batched_lora_forward vs one LoRALinear per sample",
            recheck=recheck(forward),
        )
        check_output(
            got,
            ref.batched_lora_forward(base, x, ids, A, B, scale),
            setup,
            bugs,
            what="batched_lora_forward vs the reference answer",
            recheck=recheck(forward),
        )
    inputs = {"x": x, "adapter_ids": ids, "lora_A": A, "lora_B": B, "scale": scale}
    for (name, now), before in zip(inputs.items(), originals, strict=True):
        assert torch.equal(before, now), explain(
            f"batched_lora_forward changed its input {name} in place",
            drawn=drawn_of(setup),
            expected=f"{name} unchanged: {before.tolist()}"[:300],
            got=f"{now.tolist()}"[:300],
            hint="clamp_ / masked_fill_ / index_put_ on an argument edit the caller's tensor (its -1 ids "
            "become 0); use the out-of-place versions (ids.clamp(min=0))",
        )


@settings(max_examples=30, deadline=None)
@given(setup=setups())
@learner_code()
def test_delta_matches_the_reference_answer(impl, ref, setup) -> None:
    (delta,) = require(impl, "batched_lora_delta")
    base, x, ids, A, B, scale = tensors(setup, dtype=torch.float64)
    got = delta(x, ids, A, B, scale)
    expected = ref.batched_lora_delta(x, ids, A, B, scale)
    zero = torch.zeros_like(base(x))
    bugs = {name: (lambda f=f: f() - base(x)) for name, f in classic_bugs(base, x, ids, A, B, scale).items()}
    bugs["the LoRA path is never added (output = base(x))"] = lambda: zero
    check_output(
        got,
        expected,
        setup,
        bugs,
        what="batched_lora_delta (the LoRA path alone)",
        recheck=recheck(delta, delta=True),
    )


@settings(max_examples=25, deadline=None)
@given(setup=setups(adapted=True))
@example(setup={"B": 3, "T": 2, "N": 3, "r": 2, "in": 3, "out": 4, "ids": [-1, 2, 2], "seed": 0})
@learner_code()
def test_gradients_match_the_loop_and_the_reference(impl, ref, setup) -> None:
    (forward,) = require(impl, "batched_lora_forward")
    base, x, ids, A, B, scale = tensors(setup, dtype=torch.float64)
    g = torch.randn(setup["B"], setup["T"], setup["out"], dtype=torch.float64)
    drawn = drawn_of(setup)
    for fn in (loop_reference, ref.batched_lora_forward):
        assert_gradients_match(
            Batched(forward, base, ids, A, B, scale),
            Batched(fn, copy.deepcopy(base), ids, A, B, scale),
            x,
            g,
            drawn=drawn,
        )


@settings(max_examples=25, deadline=None)
@given(setup=setups(base_only=True))
@example(setup={"B": 3, "T": 2, "N": 3, "r": 2, "in": 3, "out": 4, "ids": [-1, 2, 0], "seed": 0})
@learner_code()
def test_base_only_rows_are_exactly_the_base_and_train_no_adapter(impl, setup) -> None:
    (forward,) = require(impl, "batched_lora_forward")
    base, x, ids, A, B, scale = tensors(setup, dtype=torch.float64)
    drawn = drawn_of(setup)
    plain = (ids == -1).view(-1, 1, 1)  # (B, 1, 1) base-only samples
    lora_A, lora_B = A.clone().requires_grad_(True), B.clone().requires_grad_(True)
    xg = x.clone().requires_grad_(True)
    out = forward(base, xg, ids, lora_A, lora_B, scale)
    with torch.no_grad():
        base_out = base(x)
    for b, i in enumerate(setup["ids"]):
        if i == -1:
            assert isinstance(out, torch.Tensor) and out.shape == base_out.shape
            assert torch.allclose(out[b], base_out[b], rtol=1e-12, atol=1e-12), explain(
                f"sample b={b} has adapter id -1 but its output is not base(x[b])",
                drawn=drawn,
                expected=f"base(x[{b}]) = {base_out[b].flatten()[:4].tolist()}",
                got=f"{out[b].detach().flatten()[:4].tolist()}",
                hint="-1 means 'no adapter': lora_A[-1] is the LAST adapter in Python indexing; gather "
                "with ids.clamp(min=0) and multiply those rows by a scale of 0",
            )
    # Backpropagate only through the base-only rows: no adapter may receive any gradient.
    g = torch.randn(out.shape, dtype=torch.float64) * plain
    (out * g).sum().backward()
    for name, t in (("lora_A", lora_A), ("lora_B", lora_B)):
        if t.grad is None:
            continue
        touched = sorted({k for k in range(setup["N"]) if torch.count_nonzero(t.grad[k]) > 0})
        assert not touched, explain(
            f"samples with id -1 sent gradient into {name} of adapters {touched}",
            drawn=drawn,
            expected="zero gradient into every adapter from base-only samples",
            got=f"nonzero {name}.grad for adapters {touched}",
            hint="the -1 rows went through an adapter (the last one if you indexed with -1, adapter 0 if "
            "you clamped without masking): their scale must be exactly 0",
        )
    expected_x_grad = g @ base.weight  # the base path alone
    assert_matches(
        xg.grad,
        expected_x_grad,
        what="gradient of x through the base-only samples (must be the base's alone)",
        drawn=drawn,
    )


def _expect_value_error(call, *, problem, drawn, mention):
    expect_refusal(
        call,
        drawn=drawn,
        mention=mention,
        when_unnamed=f"the ValueError for {problem} should name the bad value",
        when_wrong=f"{problem} raised the wrong error",
        wrong_hint="check the ids and shapes yourself before indexing: an IndexError or a RuntimeError "
        "from torch.bmm does not tell the caller which id or size is wrong",
        when_accepted=f"{problem} was accepted",
        accepted_hint="-1 is the only negative id allowed, and ids must be < N: plain indexing "
        "wraps negatives around silently",
    )


@settings(max_examples=20, deadline=None)
@given(setup=setups(), bad=st.one_of(st.integers(-5, -2), st.integers(0, 3)), pos=st.integers(0, 4))
# the boundaries the contract names: id = N (the first id too large) and id = -2 (the first too small)
@example(setup={"B": 2, "T": 1, "N": 2, "r": 1, "in": 2, "out": 2, "ids": [0, 1], "seed": 0}, bad=0, pos=1)
@example(
    setup={"B": 3, "T": 1, "N": 1, "r": 1, "in": 1, "out": 1, "ids": [0, -1, 0], "seed": 0}, bad=0, pos=0
)
@example(setup={"B": 2, "T": 1, "N": 3, "r": 2, "in": 2, "out": 3, "ids": [2, -1], "seed": 0}, bad=-2, pos=0)
@learner_code()
def test_bad_ids_and_shapes_raise_value_error(impl, setup, bad, pos) -> None:
    delta, forward = require(impl, "batched_lora_delta", "batched_lora_forward")
    base, x, ids, A, B, scale = tensors(setup)
    n = setup["N"]
    if bad >= 0:
        bad = n + bad  # an id >= N (bad = 0 draws N itself, the off-by-one boundary)
    pos = pos % setup["B"]  # position of the bad id
    bad_ids = ids.clone()
    bad_ids[pos] = bad
    drawn = drawn_of(setup, bad_ids=bad_ids.tolist())
    for name, fn in (
        ("batched_lora_delta", lambda i: delta(x, i, A, B, scale)),
        ("batched_lora_forward", lambda i: forward(base, x, i, A, B, scale)),
    ):
        _expect_value_error(
            lambda fn=fn: fn(bad_ids),
            problem=f"{name} with adapter id {bad} (valid: -1 and 0..{n - 1})",
            drawn=drawn,
            mention=str(bad),
        )
    extra = torch.cat([ids, torch.zeros(1, dtype=torch.long)])  # one id too many
    _expect_value_error(
        lambda: delta(x, extra, A, B, scale),
        problem=f"{len(extra)} adapter ids for a batch of {setup['B']}",
        drawn=drawn,
        mention=str(len(extra)),
    )
    if setup["B"] > 1:
        _expect_value_error(
            lambda: delta(x, ids[:-1], A, B, scale),
            problem=f"{setup['B'] - 1} adapter ids for a batch of {setup['B']}",
            drawn=drawn,
            mention=str(setup["B"] - 1),
        )
    wide = torch.randn(setup["B"], setup["T"], setup["in"] + 1)
    _expect_value_error(
        lambda: delta(wide, ids, A, B, scale),
        problem=f"x with {setup['in'] + 1} input features for adapters of {setup['in']}",
        drawn=drawn,
        mention=str(setup["in"] + 1),
    )
