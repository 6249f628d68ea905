"""Grader for challenge 24 · vera_linear. Run: peft-zoo check 24 (or pytest this file).

Each test draws layer sizes, a rank, d_initial and a seed, and compares your functions with
peft_zoo's own VeRA (``peft_zoo.vera``, equal to Hugging Face PEFT's) and the reference answer:
the seeded pair, the frozen buffers and initial lambdas, each layer's corner of a larger shared
pair, the output, the gradients, and one pair shared by layers of different shapes.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from peft_zoo.exercises.graders.ex24_vera_linear import (
    D_ONES,
    EXAMPLE,
    GLOBAL_RNG,
    PER_LAYER,
    SHAPE_HINT,
    STACK,
    SWAPPED,
    base_layer,
    call_learner,
    check_buffers,
    forward_bugs,
    layer_pair,
    library_stack,
    per_layer_delta,
    projection_bugs,
    slice_bugs,
    specs,
    stack_layers,
    stacks,
)
from peft_zoo.exercises.grading import assert_matches, learner_code, require
from peft_zoo.testing import explain, seeds
from peft_zoo.vera import VeraProjections, vera_projection_pair

CHALLENGE = "ex24_vera_linear"
pytestmark = pytest.mark.timeout(120)

# Classic mistakes, each planted alone into a copy of the answer: this grader must reject every one
# (checked by tests/test_exercises.py). (description, snippet in the answer, mistaken snippet,
# and the bug's name as this grader's "likely:" line gives it: tests/test_diagnosis.py checks it)
PLANTED_BUGS: list[tuple[str, ...]] = [
    (
        "one pair per layer, each drawn at its layer's own size (no covering pair)",
        "    vera_A, vera_B = vera_projections(rank, in_max, out_max, seed)\n"
        "    return [VeRALinear(layer, vera_A, vera_B, d_initial) for layer in layers]",
        "    return [\n"
        "        VeRALinear(layer, *vera_projections(rank, layer.in_features, layer.out_features, seed), d_initial)\n"
        "        for layer in layers\n"
        "    ]",
        "one pair per layer, drawn at that layer's own size",
    ),
    (
        "A sliced from the wrong side (its last in_features columns)",
        "self.vera_A[:, : self.base.in_features]",
        "self.vera_A[:, self.vera_A.shape[1] - self.base.in_features :]",
        "A sliced from the wrong side: a layer uses the FIRST in_features columns, A[:, :in]",
    ),
    (
        "B sliced from the wrong side (its last out_features rows)",
        "self.vera_B[: self.base.out_features, :]",
        "self.vera_B[self.vera_B.shape[0] - self.base.out_features :, :]",
        "B sliced from the wrong side: a layer uses the FIRST out_features rows, B[:out, :]",
    ),
    (
        "A and B registered as trainable parameters",
        'self.register_buffer("vera_A", vera_A)  # (r, in_max), frozen, shared\n'
        '        self.register_buffer("vera_B", vera_B)  # (out_max, r), frozen, shared',
        "self.vera_A = nn.Parameter(vera_A)\n        self.vera_B = nn.Parameter(vera_B)",
        "A and B are trainable",
    ),
    (
        "lambda_b and lambda_d initialisations swapped",
        "self.vera_lambda_b = nn.Parameter(torch.zeros(base.out_features))  # (out,)  ΔW = 0 at init\n"
        "        self.vera_lambda_d = nn.Parameter(torch.full((vera_A.shape[0],), float(d_initial)))  # (r,)",
        "self.vera_lambda_b = nn.Parameter(torch.full((base.out_features,), float(d_initial)))\n"
        "        self.vera_lambda_d = nn.Parameter(torch.zeros(vera_A.shape[0]))",
        "lambda_b and lambda_d initialisations swapped: lambda_b starts at 0, lambda_d at d_initial",
    ),
    (
        "lambda_d initialised to ones (d_initial ignored)",
        "torch.full((vera_A.shape[0],), float(d_initial))",
        "torch.ones(vera_A.shape[0])",
        "lambda_d initialised to ones: it starts at d_initial",
    ),
    (
        "the seed ignored (the generator always seeded with 0)",
        "generator = torch.Generator().manual_seed(seed)",
        "generator = torch.Generator().manual_seed(0)",
        "the seed is ignored: seed the generator with the seed you are given",
    ),
    (
        "B drawn from a freshly seeded generator (A and B start the same random stream)",
        "vera_B = torch.empty(out_features, rank).uniform_(-bound_b, bound_b, generator=generator)",
        "vera_B = torch.empty(out_features, rank).uniform_(-bound_b, bound_b, generator=torch.Generator().manual_seed(seed))",
        "B drawn from a freshly seeded generator: draw A and then B from ONE generator",
    ),
    (
        "A drawn from the global RNG (not the seeded generator)",
        "vera_A = torch.empty(rank, in_features).uniform_(-bound_a, bound_a, generator=generator)",
        "vera_A = torch.empty(rank, in_features).uniform_(-bound_a, bound_a)",
        "drawn from the global RNG",
    ),
    (
        "B's Kaiming bound over out_features instead of its fan-in r",
        "bound_b = math.sqrt(6.0 / rank)",
        "bound_b = math.sqrt(6.0 / out_features)",
        "B's bound uses out_features as fan-in: B is (out, r), its fan-in is r, bound sqrt(6 / r)",
    ),
    (
        "lambda_d left out of forward",
        "h = self.vera_lambda_d * F.linear(x, sliced_A)",
        "h = F.linear(x, sliced_A)",
        "lambda_d is missing from forward",
    ),
]


# ----------------------------------------------------------------------------- the seeded pair


@settings(max_examples=20, deadline=None)
@given(rank=st.integers(1, 5), n_in=st.integers(1, 7), n_out=st.integers(1, 7), seed=seeds())
@example(rank=3, n_in=5, n_out=4, seed=7)
@learner_code()
def test_projections_are_seeded_kaiming_uniform_a_then_b(impl, rank, n_in, n_out, seed) -> None:
    (fn,) = require(impl, "vera_projections")
    drawn = {"rank": rank, "in_features": n_in, "out_features": n_out, "seed": seed}
    hint = "A is (rank, in_features), B is (out_features, rank)"
    torch.manual_seed(1)
    first = call_learner(lambda: fn(rank, n_in, n_out, seed), "vera_projections(...)", drawn, hint)
    torch.manual_seed(2)
    second = call_learner(lambda: fn(rank, n_in, n_out, seed), "vera_projections(...)", drawn, hint)
    assert isinstance(first, tuple) and len(first) == 2, explain(
        "vera_projections must return the pair (A, B)", drawn=drawn, got=repr(type(first))
    )
    for got, again, name in zip(first, second, "AB", strict=True):
        assert torch.equal(got, again), explain(
            f"{name} changes between two calls with the same seed", drawn=drawn, hint=GLOBAL_RNG
        )
    want_a, want_b = vera_projection_pair(rank, n_in, n_out, seed)
    bugs = projection_bugs(rank, n_in, n_out, seed)
    assert_matches(first[0], want_a, what="A (rank, in_features)", drawn=drawn, bugs=bugs["A"], hint=hint)
    assert_matches(first[1], want_b, what="B (out_features, rank)", drawn=drawn, bugs=bugs["B"], hint=hint)


# ----------------------------------------------------------------------------- one layer


def check_lambdas(layer, n_out: int, rank: int, d_initial: float, drawn) -> None:
    lambda_b, lambda_d = layer.vera_lambda_b, layer.vera_lambda_d
    assert_matches(
        lambda_b,
        torch.zeros(n_out),
        what="vera_lambda_b at initialisation (zeros, so ΔW = 0)",
        drawn=drawn,
        bugs={SWAPPED: lambda: torch.full((n_out,), float(d_initial))},
        hint=SHAPE_HINT,
    )
    assert_matches(
        lambda_d,
        torch.full((rank,), float(d_initial)),
        what="vera_lambda_d at initialisation (d_initial)",
        drawn=drawn,
        bugs={D_ONES: lambda: torch.ones(rank)},
        hint=SHAPE_HINT,
    )


@settings(max_examples=20, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@learner_code()
def test_a_new_layer_holds_the_frozen_pair_and_equals_its_base(impl, spec) -> None:
    (cls,) = require(impl, "VeRALinear")
    proj = VeraProjections(
        spec["rank"], spec["in"] + spec["extra_in"], spec["out"] + spec["extra_out"], seed=spec["seed"]
    )
    base = base_layer(spec["in"], spec["out"], spec["bias"], spec["seed"])
    layer = call_learner(
        lambda: cls(copy.deepcopy(base), proj.vera_A, proj.vera_B, spec["d_initial"]),
        "VeRALinear(base, vera_A, vera_B, d_initial)",
        spec,
        SHAPE_HINT,
    )
    check_buffers(layer, spec)
    assert layer.vera_A.data_ptr() == proj.vera_A.data_ptr(), explain(
        "vera_A must be the shared tensor itself (no copy): every layer reads the same memory",
        drawn=spec,
        hint="self.register_buffer('vera_A', vera_A), without .clone()",
    )
    check_lambdas(layer, spec["out"], spec["rank"], spec["d_initial"], spec)
    x = torch.randn(*spec["lead"], spec["in"])
    with torch.no_grad():
        out = call_learner(lambda: layer(x), "forward", spec, SHAPE_HINT)
        assert_matches(out, base(x), what="output at initialisation must equal the base output", drawn=spec)


@settings(max_examples=25, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@learner_code()
def test_each_layer_uses_its_corner_of_the_shared_pair(impl, ref, spec) -> None:
    mine, theirs, proj = layer_pair(impl, spec)
    bugs = slice_bugs(proj, spec["in"], spec["out"])
    got = call_learner(mine.sliced, "sliced()", spec, SHAPE_HINT)
    want_a, want_b = theirs.sliced_projections()
    assert_matches(
        got[0], want_a, what="sliced() A_s = A[:, :in]", drawn=spec, bugs=bugs["A"], hint=SHAPE_HINT
    )
    assert_matches(
        got[1], want_b, what="sliced() B_s = B[:out, :]", drawn=spec, bugs=bugs["B"], hint=SHAPE_HINT
    )
    with torch.no_grad():
        delta = call_learner(mine.delta_weight, "delta_weight()", spec, SHAPE_HINT)
        assert_matches(delta, theirs.delta_weight(), what="delta_weight() = Λb B_s Λd A_s", drawn=spec)
        x = torch.randn(*spec["lead"], spec["in"])
        out = call_learner(lambda: mine(x), "forward", spec, SHAPE_HINT)
        wrong = forward_bugs(theirs, proj, x)
        wrong["lambda_d is missing from forward"] = lambda: (
            theirs.base(x) + theirs.vera_lambda_b * (x @ want_a.T @ want_b.T)
        )
        assert_matches(out, theirs(x), what="forward vs peft_zoo's VeRALinear", drawn=spec, bugs=wrong)
        twin = ref.VeRALinear(copy.deepcopy(theirs.base), proj.vera_A, proj.vera_B, spec["d_initial"])
        twin.vera_lambda_b.copy_(theirs.vera_lambda_b)
        twin.vera_lambda_d.copy_(theirs.vera_lambda_d)
        assert_matches(out, twin(x), what="forward vs the reference answer", drawn=spec, bugs=wrong)


@settings(max_examples=20, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@learner_code()
def test_gradients_reach_the_two_vectors_only(impl, spec) -> None:
    mine, theirs, _ = layer_pair(impl, spec)
    x = torch.randn(*spec["lead"], spec["in"])
    g = torch.randn(*spec["lead"], spec["out"])
    out = call_learner(lambda: mine(x), "forward", spec, SHAPE_HINT)
    names = ("vera_lambda_b", "vera_lambda_d")
    got = torch.autograd.grad((out * g).sum(), [getattr(mine, n) for n in names], allow_unused=True)
    want = torch.autograd.grad((theirs(x) * g).sum(), [getattr(theirs, n) for n in names])
    for name, mine_grad, their_grad in zip(names, got, want, strict=True):
        assert mine_grad is not None, explain(
            f"{name} received no gradient", drawn=spec, hint="is part of the path detached in forward?"
        )
        assert_matches(mine_grad, their_grad, what=f"gradient of {name}", drawn=spec)


# ----------------------------------------------------------------------------- one pair for all layers


@settings(max_examples=15, deadline=None)
@given(spec=stacks())
@example(spec=STACK)
@learner_code()
def test_layers_of_different_shapes_share_one_covering_pair(impl, spec) -> None:
    (fn,) = require(impl, "vera_layers")
    layers = stack_layers(spec)
    mine = call_learner(
        lambda: fn(
            [copy.deepcopy(x) for x in layers], spec["rank"], seed=spec["seed"], d_initial=spec["d_initial"]
        ),
        "vera_layers(layers, rank, seed=..., d_initial=...)",
        spec,
        SHAPE_HINT,
    )
    assert isinstance(mine, list) and len(mine) == len(layers), explain(
        "vera_layers must return one VeRALinear per layer, in order", drawn=spec, got=repr(mine)[:200]
    )
    theirs = library_stack(layers, spec)
    shapes = [tuple(layer.vera_A.shape) + tuple(layer.vera_B.shape) for layer in mine]
    assert len(set(shapes)) == 1, explain(
        "the layers hold pairs of different shapes", drawn=spec, got=str(shapes), hint=PER_LAYER
    )
    pointers = {(layer.vera_A.data_ptr(), layer.vera_B.data_ptr()) for layer in mine}
    assert len(pointers) == 1, explain(
        "the layers hold separate copies of the pair",
        drawn=spec,
        hint="hand every layer the same two tensors",
    )
    n_in, n_out = max(i for i, _ in spec["shapes"]), max(o for _, o in spec["shapes"])
    bugs = projection_bugs(spec["rank"], n_in, n_out, spec["seed"])
    proj = theirs[0].projections
    assert_matches(
        mine[0].vera_A, proj.vera_A, what="the shared A (rank, in_max)", drawn=spec, bugs=bugs["A"]
    )
    assert_matches(
        mine[0].vera_B, proj.vera_B, what="the shared B (out_max, rank)", drawn=spec, bugs=bugs["B"]
    )
    g = torch.Generator().manual_seed(spec["seed"])
    for k, (m, t) in enumerate(zip(mine, theirs, strict=True)):
        check_lambdas(m, t.out_features, spec["rank"], spec["d_initial"], spec)
        with torch.no_grad():
            t.vera_lambda_b.copy_(torch.randn(t.out_features, generator=g))
            t.vera_lambda_d.copy_(torch.randn(spec["rank"], generator=g))
            m.vera_lambda_b.copy_(t.vera_lambda_b)
            m.vera_lambda_d.copy_(t.vera_lambda_d)
            x = torch.randn(2, t.in_features)
            assert_matches(
                call_learner(lambda m=m, x=x: m(x), f"forward of layer {k}", spec, SHAPE_HINT),
                t(x),
                what=f"layer {k} ({t.in_features} -> {t.out_features}) vs peft_zoo's VeRALinear",
                drawn=spec,
                bugs={PER_LAYER: lambda t=t, x=x: t.base(x) + x @ per_layer_delta(t, spec["seed"]).T},
            )
