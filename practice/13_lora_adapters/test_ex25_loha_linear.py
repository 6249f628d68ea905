"""Grader for challenge 25 · loha_linear. Run: peft-zoo check 25 (or pytest this file).

Each test draws layer sizes, a rank, alpha, a rank-dropout probability and a seed, and compares
your layer with peft_zoo's own LoHa (``peft_zoo.loha``, equal to Hugging Face PEFT's) and the
reference answer: the initialisation, ΔW, the output in eval mode, the gradients, and rank
dropout in training mode (same seed for both).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings

from peft_zoo.exercises.graders.ex25_loha_linear import (
    DROP_IN_EVAL,
    EXAMPLE,
    FACTORS,
    INIT_NOT_ZERO,
    RECHECK,
    SCALE_R2,
    SINGLE,
    SQUARE,
    WIDE,
    as_outputs,
    base_layer,
    build,
    call_learner,
    check_factors,
    delta_bugs,
    dropout_bugs,
    layer_pair,
    seeded,
    specs,
)
from peft_zoo.exercises.grading import assert_matches, learner_code
from peft_zoo.testing import explain

CHALLENGE = "ex25_loha_linear"
pytestmark = pytest.mark.timeout(120)

# Classic mistakes, each planted alone into a copy of the answer: this grader must reject every one
# (checked by tests/test_exercises.py). (description, snippet in the answer, mistaken snippet,
# and the bug's name as this grader's "likely:" line gives it: tests/test_diagnosis.py checks it)
PLANTED_BUGS: list[tuple[str, ...]] = [
    (
        "hada_w2_b initialised random (ΔW != 0 at init)",
        "nn.init.zeros_(self.hada_w2_b)  # W2a W2b = 0, so ΔW = 0 at init",
        "nn.init.kaiming_uniform_(self.hada_w2_b, a=math.sqrt(5))",
        "hada_w2_b is not zero at init: zero it (and only it), so W2a W2b = 0 and ΔW = 0",
    ),
    (
        "the scale alpha / r² instead of alpha / r",
        "self.scale = (rank if alpha is None else alpha) / rank",
        "self.scale = (rank if alpha is None else alpha) / rank**2",
        "the scale is alpha / r²: LoHa scales by alpha / r, although the rank reaches r²",
    ),
    (
        "the scale left out of ΔW",
        "return (w1 * w2) * self.scale",
        "return w1 * w2",
        "the scale is missing: ΔW = (alpha / r) (W1a W1b) ⊙ (W2a W2b)",
    ),
    (
        "the Hadamard product replaced by a matrix product",
        "return (w1 * w2) * self.scale",
        "return (w1 @ w2) * self.scale",
        (
            "the two products are matrix-multiplied (W1 @ W2): LoHa multiplies them elementwise, W1 * W2",
            "the two products are multiplied ELEMENTWISE",
        ),
    ),
    (
        "a single product (LoRA) instead of the Hadamard product of two",
        "return (w1 * w2) * self.scale",
        "return w1 * self.scale",
        "a single product W1a W1b (that is LoRA): ΔW = (W1a W1b) ⊙ (W2a W2b)",
    ),
    (
        "rank dropout on the input axis (columns of ΔW)",
        "keep = (torch.rand(self.base.out_features) > self.rank_dropout).to(delta.dtype)  # (out,)\n"
        "            if keep.mean() > 0:\n"
        "                keep = keep / keep.mean()  # the kept rows carry the dropped rows' share\n"
        "            delta = delta * keep[:, None]  # drop whole OUTPUT rows of ΔW",
        "keep = (torch.rand(self.base.in_features) > self.rank_dropout).to(delta.dtype)\n"
        "            if keep.mean() > 0:\n"
        "                keep = keep / keep.mean()\n"
        "            delta = delta * keep[None, :]",
        "rank dropout drops COLUMNS (input features): it drops OUTPUT rows, mask (out,) times ΔW[i, :]",
    ),
    (
        "rank dropout without rescaling the kept rows",
        "            if keep.mean() > 0:\n"
        "                keep = keep / keep.mean()  # the kept rows carry the dropped rows' share\n",
        "",
        "the kept rows are not rescaled: divide the mask by its mean (the fraction kept)",
    ),
    (
        "rank dropout applied in eval mode too",
        "if self.training and self.rank_dropout > 0:",
        "if self.rank_dropout > 0:",
        "rank dropout applied in eval mode: drop rows only when self.training",
    ),
]


# ----------------------------------------------------------------------------- initialisation


@settings(max_examples=20, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@learner_code()
def test_a_new_layer_starts_equal_to_its_base(impl, ref, spec) -> None:
    base = base_layer(spec)
    layer = build(impl, base, spec)
    check_factors(layer, spec)
    frozen = [n for n, p in layer.base.named_parameters() if p.requires_grad]
    assert not frozen, explain("the base layer must stay frozen", drawn=spec, got=f"trainable base.{frozen}")
    assert torch.count_nonzero(layer.hada_w2_b) == 0, explain(
        "hada_w2_b must start at zero", drawn=spec, hint=INIT_NOT_ZERO
    )
    for name in FACTORS[:3]:
        p = getattr(layer, name).detach()
        bound = 1.0 / math.sqrt(p.shape[1])  # Kaiming-uniform with a = sqrt(5)
        assert torch.count_nonzero(p) > 0 and bool(p.abs().max() <= bound + 1e-12), explain(
            f"{name} must be Kaiming-uniform (a = sqrt(5)), in [-1/sqrt(fan_in), 1/sqrt(fan_in)] and not zero",
            drawn=spec,
            got=f"values in [{p.min().item():.3g}, {p.max().item():.3g}], bound {bound:.3g}",
            hint="nn.init.kaiming_uniform_(p, a=math.sqrt(5)) for hada_w1_a, hada_w1_b and hada_w2_a",
        )
    want = (spec["rank"] if spec["alpha"] is None else spec["alpha"]) / spec["rank"]
    assert math.isclose(float(layer.scale), want), explain(
        "scale must be alpha / rank (alpha defaults to rank)",
        drawn=spec,
        expected=f"{want:g}",
        got=f"{layer.scale!r}",
        hint=SCALE_R2 if math.isclose(float(layer.scale), want / spec["rank"]) else None,
    )
    layer.eval()
    x = torch.randn(*spec["lead"], spec["in"], dtype=torch.float64)
    with torch.no_grad():
        out = call_learner(lambda: layer(x), "forward", spec)
        single = {SINGLE: lambda: base(x) + x @ (layer.scale * layer.hada_w1_a @ layer.hada_w1_b).T}
        assert_matches(
            out, base(x), what="output at initialisation must equal the base output", drawn=spec, bugs=single
        )


# ----------------------------------------------------------------------------- ΔW and forward


@settings(max_examples=25, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@example(spec=SQUARE)
@learner_code()
def test_delta_weight_is_the_hadamard_product_of_two_low_rank_products(impl, ref, spec) -> None:
    def run(spec):  # the learner's ΔW, peft_zoo's and the candidates
        mine, theirs, library = layer_pair(impl, ref, spec)
        return (
            call_learner(mine.delta_weight, "delta_weight()", spec),
            library.delta_weight(),
            delta_bugs(theirs),
        )

    with torch.no_grad():
        delta, want, bugs = run(spec)
        assert_matches(
            delta,
            want,
            what="delta_weight() vs peft_zoo's LoHaLinear: scale (W1a W1b) ⊙ (W2a W2b)",
            drawn=spec,
            bugs=bugs,
            recheck=lambda: run(RECHECK),
        )


@settings(max_examples=25, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@example(spec=SQUARE)
@learner_code()
def test_forward_in_eval_mode_matches_peft_zoo(impl, ref, spec) -> None:
    def run(spec):  # the learner's output in eval mode, peft_zoo's and the candidates
        mine, theirs, library = layer_pair(impl, ref, spec)
        for layer in (mine, theirs, library):
            layer.eval()
        x = torch.randn(*spec["lead"], spec["in"], dtype=torch.float64)
        out = call_learner(lambda: seeded(spec["seed"], lambda: mine(x)), "forward", spec)
        bugs = as_outputs(theirs, x, delta_bugs(theirs))
        want = library(x)
        theirs.train()
        bugs[DROP_IN_EVAL] = lambda: seeded(spec["seed"], lambda: theirs(x))
        return out, want, bugs

    with torch.no_grad():
        out, want, bugs = run(spec)
        assert_matches(
            out,
            want,
            what="forward (eval mode) vs peft_zoo's LoHaLinear",
            drawn=spec,
            bugs=bugs,
            recheck=lambda: run(RECHECK),
        )


@settings(max_examples=25, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@example(spec=SQUARE)
@example(spec=WIDE)
@learner_code()
def test_rank_dropout_in_training_drops_whole_output_rows(impl, ref, spec) -> None:
    def run(spec):  # the learner's and the reference output in training mode, and the candidates
        mine, theirs, _ = layer_pair(impl, ref, spec)
        mine.train()
        theirs.train()
        x = torch.randn(*spec["lead"], spec["in"], dtype=torch.float64)
        out = call_learner(lambda: seeded(spec["seed"], lambda: mine(x)), "forward (training mode)", spec)
        return out, seeded(spec["seed"], lambda: theirs(x)), dropout_bugs(theirs, x, spec["seed"])

    with torch.no_grad():
        out, want, bugs = run(spec)
        assert_matches(
            out,
            want,
            what="forward in training mode, with torch.manual_seed(seed) before each call",
            drawn=spec,
            bugs=bugs,
            recheck=lambda: run(RECHECK),
            hint="the mask is (torch.rand(out_features) > rank_dropout), one draw per forward, divided by its mean",
        )


@settings(max_examples=20, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@learner_code()
def test_gradients_of_the_four_factors_match_peft_zoo(impl, ref, spec) -> None:
    mine, _, library = layer_pair(impl, ref, spec)
    mine.eval()
    library.eval()
    x = torch.randn(*spec["lead"], spec["in"], dtype=torch.float64)
    g = torch.randn(*spec["lead"], spec["out"], dtype=torch.float64)
    out = call_learner(lambda: mine(x), "forward", spec)
    got = torch.autograd.grad((out * g).sum(), [getattr(mine, n) for n in FACTORS], allow_unused=True)
    want = torch.autograd.grad((library(x) * g).sum(), [getattr(library, n) for n in FACTORS])
    for name, mine_grad, their_grad in zip(FACTORS, got, want, strict=True):
        assert mine_grad is not None, explain(
            f"{name} received no gradient", drawn=spec, hint="is part of the path detached in forward?"
        )
        assert_matches(mine_grad, their_grad, what=f"gradient of {name}", drawn=spec)
