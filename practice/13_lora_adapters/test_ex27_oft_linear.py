"""Grader for challenge 27 · oft_linear. Run: peft-zoo check 27 (or pytest this file).

Each test draws a block size, a number of blocks, the output size and a seed, and compares your
code with peft_zoo's own OFT (``peft_zoo.oft`` with the exact Cayley transform, equal to Hugging
Face PEFT's ``use_cayley_neumann=False``): the skew-symmetric blocks, the Cayley transform and its
orthogonality, the identity at initialisation, the block-diagonal rotation, the output, the
gradient of ``oft_R`` and the merged weight.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from peft_zoo.exercises.graders.ex27_oft_linear import (
    CAYLEY_SIGN,
    DOUBLE,
    EXAMPLE,
    INIT_NOT_ZERO,
    LOWER,
    MERGE_R,
    NOT_SKEW,
    ONE_BLOCK,
    UPPER_ONLY,
    WRONG_SIDE,
    base_layer,
    call_learner,
    exact,
    guarded,
    layer_pair,
    rotation_bugs,
    same,
    specs,
    steps_ok,
)
from peft_zoo.exercises.grading import assert_matches, learner_code, require
from peft_zoo.oft import skew_symmetric
from peft_zoo.testing import explain, seeds

CHALLENGE = "ex27_oft_linear"
pytestmark = pytest.mark.timeout(120)

# Classic mistakes, each planted alone into a copy of the answer: this grader must reject every one
# (checked by tests/test_exercises.py). (description, snippet in the answer, mistaken snippet,
# and the bug's name as this grader's "likely:" line gives it: tests/test_diagnosis.py checks it)
PLANTED_BUGS: list[tuple[str, ...]] = [
    (
        "the Cayley factors swapped: (I + Q)(I - Q)^-1",
        "torch.linalg.solve(eye + q, eye - q, left=False)",
        "torch.linalg.solve(eye - q, eye + q, left=False)",
        "the Cayley factors are swapped: R = (I - Q)(I + Q)^{-1}; (I + Q)(I - Q)^{-1} is Rᵀ, the other way round",
    ),
    (
        "Q symmetric (U + Uᵀ) instead of skew-symmetric",
        "return upper - upper.transpose(-2, -1)  # Q = -Qᵀ",
        "return upper + upper.transpose(-2, -1)",
        "Q = U + Uᵀ is symmetric: Q must be skew-symmetric, U - Uᵀ (else the Cayley transform is not orthogonal)",
    ),
    (
        "Q = U, the upper triangle alone",
        "return upper - upper.transpose(-2, -1)  # Q = -Qᵀ",
        "return upper",
        "Q = U is not skew-symmetric: subtract the transpose, Q = U - Uᵀ",
    ),
    (
        "oft_R written into the lower triangle",
        "upper[:, rows, cols] = vec",
        "upper[:, cols, rows] = vec",
        "vec went into the lower triangle: U holds vec in the STRICT UPPER triangle, torch.triu_indices order",
    ),
    (
        "R applied on the wrong side (x Rᵀ)",
        "return self.base(x @ self.rotation())  # W0 Rᵀ x + b",
        "return self.base(x @ self.rotation().T)",
        "R is applied on the wrong side: the input rotates as a row vector, base(x @ R) (= W0 Rᵀ x), not x @ Rᵀ",
    ),
    (
        "the blocks placed in reverse order on the diagonal",
        "torch.block_diag(*blocks.unbind(0))",
        "torch.block_diag(*blocks.flip(0).unbind(0))",
        "the blocks are in reverse order: block i of oft_R sits at rows and columns i b .. i b + b",
    ),
    (
        "merge multiplies W0 by R instead of Rᵀ",
        "self.base.weight.copy_(self.base.weight @ self.rotation().T)",
        "self.base.weight.copy_(self.base.weight @ self.rotation())",
        "merge wrote W0 R: the merged weight is W0 Rᵀ, since y = W0 (Rᵀ x) + b",
    ),
    (
        "a merged layer still rotates its input",
        "        if self.merged:\n            return self.base(x)\n",
        "",
        "after merge the rotation is applied twice: once merged, forward is just base(x)",
    ),
    (
        "oft_R initialised random (R != I at init)",
        "self.oft_R = nn.Parameter(torch.zeros(self.r, block_size * (block_size - 1) // 2, **factory))",
        "self.oft_R = nn.Parameter(0.1 * torch.randn(self.r, block_size * (block_size - 1) // 2, **factory))",
        "oft_R is not zero at init: oft_R = 0 gives Q = 0 and R = I, so the layer starts as its base",
    ),
]


# ----------------------------------------------------------------------------- Q and the Cayley transform


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 3), block=st.integers(2, 5), seed=seeds())
@example(n=2, block=4, seed=0)
@learner_code()
def test_skew_symmetric_fills_the_strict_upper_triangle(impl, n, block, seed) -> None:
    (fn,) = require(impl, "skew_symmetric")
    drawn = {"n": n, "block_size": block, "seed": seed}
    vec = torch.randn(
        n, block * (block - 1) // 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    got = call_learner(lambda: fn(vec, block), "skew_symmetric(vec, block_size)", drawn)
    want = skew_symmetric(vec, block)
    upper = torch.triu(want)
    bugs = {
        NOT_SKEW: lambda: upper + upper.transpose(-2, -1),
        UPPER_ONLY: lambda: upper,
        LOWER: lambda: -want,
    }
    assert_matches(got, want, what="Q = U - Uᵀ, (n, b, b)", drawn=drawn, bugs=bugs)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 3), block=st.integers(2, 5), seed=seeds())
@example(n=2, block=3, seed=0)
@learner_code()
def test_cayley_is_orthogonal_and_follows_peft(impl, n, block, seed) -> None:
    (fn,) = require(impl, "cayley")
    drawn = {"n": n, "block_size": block, "seed": seed}
    g = torch.Generator().manual_seed(seed)
    q = skew_symmetric(torch.randn(n, block * (block - 1) // 2, generator=g, dtype=torch.float64), block)
    got = call_learner(lambda: fn(q), "cayley(Q)", drawn)
    want = exact(q)
    assert_matches(
        got,
        want,
        what="cayley(Q) = (I - Q)(I + Q)^{-1}, per block",
        drawn=drawn,
        bugs={CAYLEY_SIGN: lambda: want.transpose(-2, -1)},
    )
    eye = torch.eye(block, dtype=torch.float64).expand_as(q)
    assert_matches(got.transpose(-2, -1) @ got, eye, what="Rᵀ R must be the identity", drawn=drawn)


# ----------------------------------------------------------------------------- the layer


@settings(max_examples=15, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@learner_code()
def test_a_new_layer_is_the_identity_rotation(impl, spec) -> None:
    (cls,) = require(impl, "OFTLinear")
    base = base_layer(spec)
    layer = call_learner(lambda: cls(copy.deepcopy(base), spec["block"]), "OFTLinear(base, block_size)", spec)
    frozen = [n for n, p in layer.base.named_parameters() if p.requires_grad]
    assert not frozen, explain("the base layer must stay frozen", drawn=spec, got=f"trainable base.{frozen}")
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["oft_R"], explain(
        "oft_R must be the only trainable parameter", drawn=spec
    )
    assert torch.count_nonzero(layer.oft_R) == 0, explain(
        "oft_R must start at zero", drawn=spec, hint=INIT_NOT_ZERO
    )
    x = torch.randn(*spec["lead"], base.in_features, dtype=torch.float64)
    with torch.no_grad():
        out = call_learner(lambda: layer(x), "forward", spec)
        assert_matches(out, base(x), what="output at initialisation must equal the base output", drawn=spec)


@settings(max_examples=20, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@learner_code()
def test_rotation_is_block_diagonal_in_order(impl, spec) -> None:
    mine, theirs = layer_pair(impl, spec)
    with torch.no_grad():
        got = call_learner(mine.rotation, "rotation()", spec)
        skew_ok, cayley_ok = steps_ok(impl, theirs)
        assert_matches(
            got,
            theirs.rotation(),
            what="rotation() = block_diag(R_0, ..., R_{r-1}), (in, in)",
            drawn=spec,
            bugs=rotation_bugs(theirs, skew_ok, cayley_ok),
        )


@settings(max_examples=20, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@example(spec=ONE_BLOCK)
@learner_code()
def test_forward_and_gradient_match_peft_zoo(impl, spec) -> None:
    mine, theirs = layer_pair(impl, spec)
    x = torch.randn(*spec["lead"], theirs.in_features, dtype=torch.float64)
    g = torch.randn(*spec["lead"], spec["out"], dtype=torch.float64)
    out = call_learner(lambda: mine(x), "forward", spec)
    with torch.no_grad():
        rotation_ok = same(call_learner(mine.rotation, "rotation()", spec), theirs.rotation())
        bugs = {WRONG_SIDE: guarded(rotation_ok, lambda: theirs.base(x @ theirs.rotation().T))}
    assert_matches(out, theirs(x), what="forward vs peft_zoo's OFTLinear: base(x R)", drawn=spec, bugs=bugs)
    (got,) = torch.autograd.grad((out * g).sum(), [mine.oft_R])
    (want,) = torch.autograd.grad((theirs(x) * g).sum(), [theirs.oft_R])
    assert_matches(got, want, what="gradient of oft_R", drawn=spec)


@settings(max_examples=20, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@learner_code()
def test_merge_writes_w0_rt_and_keeps_the_output(impl, spec) -> None:
    mine, theirs = layer_pair(impl, spec)
    x = torch.randn(*spec["lead"], theirs.in_features, dtype=torch.float64)
    weight = mine.base.weight
    with torch.no_grad():
        before = theirs(x)
        w0, rot = theirs.base.weight.clone(), theirs.rotation()
        rotation_ok = same(call_learner(mine.rotation, "rotation()", spec), rot)
        call_learner(mine.merge, "merge()", spec, "W0 <- W0 @ R.T under torch.no_grad(), then merged = True")
        theirs.merge()
        assert mine.base.weight is weight, explain(
            "merge must write into base.weight in place",
            drawn=spec,
            hint="base.weight.copy_(...) under no_grad",
        )
        assert_matches(
            mine.base.weight,
            theirs.base.weight,
            what="base.weight after merge() = W0 Rᵀ",
            drawn=spec,
            bugs={MERGE_R: guarded(rotation_ok, lambda: w0 @ rot)},
        )
        assert mine.merged is True, explain(
            "merge() must set merged = True", drawn=spec, got=repr(mine.merged)
        )
        assert_matches(
            call_learner(lambda: mine(x), "forward after merge()", spec),
            before,
            what="the merged layer's output must equal the unmerged output",
            drawn=spec,
            bugs={DOUBLE: lambda: theirs.base(x @ rot)},
        )
        mine.merge()
        assert_matches(
            mine.base.weight,
            theirs.base.weight,
            what="base.weight after merging a second time (must not change)",
            drawn=spec,
            hint="merge() on a merged layer must return at once",
        )
    assert not mine.base.weight.requires_grad, explain("merge must leave the base frozen", drawn=spec)
