"""Grader for challenge 26 · lokr_linear. Run: peft-zoo check 26 (or pytest this file).

Each test draws layer sizes with various divisors, a rank, alpha, a decomposition factor and a
seed, and compares your code with peft_zoo's own LoKr (``peft_zoo.lokr``, equal to Hugging Face
PEFT's) and the reference answer: the split of a dimension, the parameters' names and shapes
(whole or low-rank W2), the initialisation, ΔW, the output and the gradients.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from peft_zoo.exercises.graders.ex26_lokr_linear import (
    EXAMPLE,
    INIT_NOT_ZERO,
    LOW_RANK,
    RECHECK,
    SCALE_ALPHA,
    base_layer,
    build,
    call_learner,
    check_parameters,
    delta_bugs,
    layer_pair,
    library_layer,
    name_factorization_bug,
    specs,
)
from peft_zoo.exercises.grading import assert_matches, learner_code, require
from peft_zoo.lokr import factorization as library_factorization
from peft_zoo.testing import explain

CHALLENGE = "ex26_lokr_linear"
pytestmark = pytest.mark.timeout(120)

# Classic mistakes, each planted alone into a copy of the answer: this grader must reject every one
# (checked by tests/test_exercises.py). (description, snippet in the answer, mistaken snippet,
# and the bug's name as this grader's "likely:" line gives it: tests/test_diagnosis.py checks it)
PLANTED_BUGS: list[tuple[str, ...]] = [
    (
        "the Kronecker factors in the wrong order (W2 ⊗ W1)",
        "torch.kron(self.lokr_w1, self.w2())",
        "torch.kron(self.w2(), self.lokr_w1)",
        "the Kronecker factors are swapped: ΔW = W1 ⊗ W2 (torch.kron(W1, W2)), not W2 ⊗ W1",
    ),
    (
        "the Kronecker product by a transposed reshape ((a, c, b, d) reshaped directly)",
        "torch.kron(self.lokr_w1, self.w2()) * self.scale",
        "(self.lokr_w1[:, :, None, None] * self.w2()[None, None]).reshape(\n"
        "            self.base.out_features, self.base.in_features\n"
        "        ) * self.scale",
        "the blocks are laid out wrongly: W1[:, :, None, None] * W2 is (a, c, b, d); the Kronecker product "
        "needs (a, b, c, d) before the reshape (or use torch.kron)",
    ),
    (
        "the scale left out of ΔW",
        "torch.kron(self.lokr_w1, self.w2()) * self.scale",
        "torch.kron(self.lokr_w1, self.w2())",
        "the scale is missing: ΔW = (alpha / r) W1 ⊗ W2",
    ),
    (
        "the scale alpha instead of alpha / r",
        "self.scale = (rank if alpha is None else alpha) / rank",
        "self.scale = rank if alpha is None else alpha",
        "the scale is alpha: it is alpha / r",
    ),
    (
        "factorization returns the larger side first",
        "return m, dimension // m",
        "return dimension // m, m",
        "the larger side comes first: return (m, dimension // m) with m the smaller divisor",
    ),
    (
        "factorization keeps the smallest divisor instead of the one closest to the square root",
        "            m = candidate  # keep the largest: the split closest to the square root\n",
        "            m = candidate\n            break\n",
        "the smallest divisor was kept: LoKr keeps the LARGEST divisor m with m * m <= dimension",
    ),
    (
        "factorization ignores a factor that does not divide",
        "if dimension % candidate == 0 and (factor < 0 or candidate <= factor):",
        "if dimension % candidate == 0:",
        "a factor that does not divide is ignored: m must also stay <= factor",
    ),
    (
        "factorization reorders a dividing factor (smaller side first)",
        "return factor, dimension // factor  # as given, even when factor > dimension // factor",
        "return min(factor, dimension // factor), max(factor, dimension // factor)",
        "a dividing factor was reordered: PEFT returns (factor, dimension // factor) as it stands",
    ),
    (
        "the low-rank W2 forgotten (W2 always stored whole)",
        "self.w2_whole = rank >= max(b, d) / 2",
        "self.w2_whole = True",
        "W2 is stored whole only when rank >= max(b, d) / 2; otherwise as lokr_w2_a (b, r) @ lokr_w2_b (r, d)",
    ),
    (
        "the whole-W2 threshold without the / 2",
        "self.w2_whole = rank >= max(b, d) / 2",
        "self.w2_whole = rank >= max(b, d)",
        "W2 is stored whole only when rank >= max(b, d) / 2; otherwise as lokr_w2_a (b, r) @ lokr_w2_b (r, d)",
    ),
    (
        "lokr_w1 initialised random (ΔW != 0 at init)",
        "self.lokr_w1 = nn.Parameter(torch.zeros(a, c, **factory))",
        "self.lokr_w1 = nn.Parameter(torch.empty(a, c, **factory).uniform_(-0.1, 0.1))",
        "lokr_w1 is not zero at init: W1 = 0 makes ΔW = W1 ⊗ W2 = 0",
    ),
    (
        "the splits of in_features and out_features swapped",
        "a, b = factorization(base.out_features, decompose_factor)  # out = a b\n"
        "        c, d = factorization(base.in_features, decompose_factor)  # in = c d",
        "a, b = factorization(base.in_features, decompose_factor)\n"
        "        c, d = factorization(base.out_features, decompose_factor)",
        "the shapes come from out = a b (W1 rows a, W2 rows b) and in = c d (W1 columns c, W2 columns d)",
    ),
]


# ----------------------------------------------------------------------------- the split


@settings(max_examples=40, deadline=None)
@given(dimension=st.integers(1, 64), factor=st.sampled_from([-1, 1, 2, 3, 4, 5, 6, 8]))
@example(dimension=12, factor=-1)
@example(dimension=36, factor=5)
@example(dimension=12, factor=6)
@learner_code()
def test_factorization_follows_peft(impl, dimension, factor) -> None:
    (fn,) = require(impl, "factorization")
    drawn = {"dimension": dimension, "factor": factor}
    got = call_learner(lambda: fn(dimension, factor), "factorization(dimension, factor)", drawn)
    want = library_factorization(dimension, factor)
    got = tuple(got) if isinstance(got, tuple | list) else got
    assert got == want, explain(
        "factorization(dimension, factor) differs from PEFT's split",
        drawn=drawn,
        expected=str(want),
        got=repr(got),
        hint=name_factorization_bug(got, dimension, factor)
        or "a dividing factor > 0: (factor, dimension // factor); else the largest divisor m with m * m <= "
        "dimension (and m <= factor when factor > 0), then (m, dimension // m)",
    )


# ----------------------------------------------------------------------------- the layer


@settings(max_examples=20, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@example(spec=LOW_RANK)
@learner_code()
def test_parameters_follow_peft_and_the_layer_starts_as_its_base(impl, spec) -> None:
    base = base_layer(spec)
    layer = build(impl, base, spec)
    check_parameters(layer, library_layer(base, spec), spec)
    frozen = [n for n, p in layer.base.named_parameters() if p.requires_grad]
    assert not frozen, explain("the base layer must stay frozen", drawn=spec, got=f"trainable base.{frozen}")
    assert torch.count_nonzero(layer.lokr_w1) == 0, explain(
        "lokr_w1 must start at zero", drawn=spec, hint=INIT_NOT_ZERO
    )
    for name, p in layer.named_parameters():
        if name.startswith("lokr_w2"):
            bound = 1.0 / math.sqrt(p.shape[1])  # Kaiming-uniform with a = sqrt(5)
            assert torch.count_nonzero(p) > 0 and bool(p.detach().abs().max() <= bound + 1e-12), explain(
                f"{name} must be Kaiming-uniform (a = sqrt(5)): in [-1/sqrt(fan_in), 1/sqrt(fan_in)], not zero",
                drawn=spec,
                hint="nn.init.kaiming_uniform_(p, a=math.sqrt(5)) for every stored part of W2",
            )
    want = (spec["rank"] if spec["alpha"] is None else spec["alpha"]) / spec["rank"]
    assert math.isclose(float(layer.scale), want), explain(
        "scale must be alpha / rank (alpha defaults to rank)",
        drawn=spec,
        expected=f"{want:g}",
        got=f"{layer.scale!r}",
        hint=SCALE_ALPHA if math.isclose(float(layer.scale), want * spec["rank"]) else None,
    )
    x = torch.randn(*spec["lead"], spec["in"], dtype=torch.float64)
    with torch.no_grad():
        out = call_learner(lambda: layer(x), "forward", spec)
        assert_matches(out, base(x), what="output at initialisation must equal the base output", drawn=spec)


@settings(max_examples=25, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@example(spec=LOW_RANK)
@learner_code()
def test_delta_weight_is_the_scaled_kronecker_product(impl, ref, spec) -> None:
    def run(spec):  # the learner's ΔW, peft_zoo's and the candidates
        mine, theirs, library = layer_pair(impl, ref, spec)
        delta = call_learner(mine.delta_weight, "delta_weight()", spec)
        return delta, library.delta_weight(), delta_bugs(theirs, spec["rank"])

    with torch.no_grad():
        delta, want, bugs = run(spec)
        assert_matches(
            delta,
            want,
            what="delta_weight() vs peft_zoo's LoKrLinear: scale · W1 ⊗ W2",
            drawn=spec,
            bugs=bugs,
            recheck=lambda: run(RECHECK),
        )


@settings(max_examples=20, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@example(spec=LOW_RANK)
@learner_code()
def test_forward_and_gradients_match_peft_zoo(impl, ref, spec) -> None:
    mine, _, library = layer_pair(impl, ref, spec)
    x = torch.randn(*spec["lead"], spec["in"], dtype=torch.float64)
    g = torch.randn(*spec["lead"], spec["out"], dtype=torch.float64)
    out = call_learner(lambda: mine(x), "forward", spec)
    assert_matches(out, library(x), what="forward vs peft_zoo's LoKrLinear", drawn=spec)
    names = [n for n, p in library.named_parameters() if p.requires_grad]
    own = dict(mine.named_parameters())
    got = torch.autograd.grad((out * g).sum(), [own[n] for n in names], allow_unused=True)
    want = torch.autograd.grad((library(x) * g).sum(), [dict(library.named_parameters())[n] for n in names])
    for name, mine_grad, their_grad in zip(names, got, want, strict=True):
        assert mine_grad is not None, explain(
            f"{name} received no gradient", drawn=spec, hint="is part of the path detached in forward?"
        )
        assert_matches(mine_grad, their_grad, what=f"gradient of {name}", drawn=spec)
