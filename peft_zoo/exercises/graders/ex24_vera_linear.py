"""Grader machinery of challenge 24 · vera_linear: drawn layer specs, the learner's VeRA layers
beside peft_zoo's own (:mod:`peft_zoo.vera`, equal to Hugging Face PEFT's) over the same shared
pair and the same random lambdas, and the classic wrong pairs, slices and sharings written out
(to name the learner's bug)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from hypothesis import strategies as st
from torch import nn

from peft_zoo.exercises.grading import require, run_learner
from peft_zoo.testing import explain, leading_shapes, seeds
from peft_zoo.vera import VeRALinear as LibraryVeRA
from peft_zoo.vera import VeraProjections, vera_projection_pair

# The bugs' names, as the "likely:" lines give them.
PER_LAYER = (
    "one pair per layer, drawn at that layer's own size: draw ONE pair for (in_max, out_max) and "
    "give every layer the same two tensors"
)
WRONG_SIDE_A = "A sliced from the wrong side: a layer uses the FIRST in_features columns, A[:, :in]"
WRONG_SIDE_B = "B sliced from the wrong side: a layer uses the FIRST out_features rows, B[:out, :]"
TRAINABLE = "A and B are trainable: register them as buffers (register_buffer), never as nn.Parameter"
SWAPPED = "lambda_b and lambda_d initialisations swapped: lambda_b starts at 0, lambda_d at d_initial"
D_ONES = "lambda_d initialised to ones: it starts at d_initial"
SEED_IGNORED = "the seed is ignored: seed the generator with the seed you are given"
FRESH_B = "B drawn from a freshly seeded generator: draw A and then B from ONE generator"
GLOBAL_RNG = (
    "drawn from the global RNG: pass generator=g to every uniform_, so the pair depends on the seed alone"
)
B_FAN_IN = "B's bound uses out_features as fan-in: B is (out, r), its fan-in is r, bound sqrt(6 / r)"
B_FIRST = "B drawn before A: draw A first, then B, from the same generator"


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    """One layer inside a larger shared pair: features, the pair's extra room, rank, d_initial,
    leading dims and a seed."""
    return {
        "in": draw(st.integers(1, 6)),
        "out": draw(st.integers(1, 6)),
        "extra_in": draw(st.integers(0, 3)),
        "extra_out": draw(st.integers(0, 3)),
        "rank": draw(st.integers(1, 5)),
        "d_initial": draw(st.sampled_from([0.1, 0.5, -1.0])),
        "bias": draw(st.booleans()),
        "lead": draw(leading_shapes(max_dims=2, max_size=3)),
        "seed": draw(seeds()),
    }


EXAMPLE = {
    "in": 4,
    "out": 3,
    "extra_in": 2,
    "extra_out": 2,
    "rank": 3,
    "d_initial": 0.1,
    "bias": True,
    "lead": (2,),
    "seed": 7,
}


@st.composite
def stacks(draw: st.DrawFn) -> dict[str, Any]:
    """Two to four layers of different shapes that share one pair."""
    n = draw(st.integers(2, 4))
    shapes = [(draw(st.integers(1, 6)), draw(st.integers(1, 6))) for _ in range(n)]
    return {
        "shapes": shapes,
        "rank": draw(st.integers(1, 5)),
        "d_initial": draw(st.sampled_from([0.1, 0.5])),
        "seed": draw(seeds()),
    }


STACK = {"shapes": [(5, 2), (3, 6), (4, 4)], "rank": 3, "d_initial": 0.1, "seed": 11}


def call_learner(fn: Callable[[], Any], what: str, drawn: dict[str, Any], hint: str) -> Any:
    """Run learner code; a shape error becomes a failure that says where to look."""
    return run_learner(fn, what, drawn, hint, (RuntimeError, IndexError, ValueError, TypeError))


SHAPE_HINT = "A_s = A[:, :in] is (r, in), B_s = B[:out, :] is (out, r); lambda_d is (r,), lambda_b (out,)"


def uniform_pair(
    rank: int, n_in: int, n_out: int, seed: int, *, b_fan_in: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ba = math.sqrt(6.0 / n_in)
    a = torch.empty(rank, n_in).uniform_(-ba, ba, generator=g)
    bb = math.sqrt(6.0 / (rank if b_fan_in is None else b_fan_in))
    return a, torch.empty(n_out, rank).uniform_(-bb, bb, generator=g)


def projection_bugs(rank: int, n_in: int, n_out: int, seed: int) -> dict[str, dict[str, Callable[[], Any]]]:
    """Per matrix ("A", "B"): what each classic mistake draws. B's candidates assume A is right
    (the grader checks A first), so "B first" is named from A alone."""

    def fresh_b() -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        bb = math.sqrt(6.0 / rank)
        return torch.empty(n_out, rank).uniform_(-bb, bb, generator=g)

    def b_first() -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        bb, ba = math.sqrt(6.0 / rank), math.sqrt(6.0 / n_in)
        b = torch.empty(n_out, rank).uniform_(-bb, bb, generator=g)
        return torch.empty(rank, n_in).uniform_(-ba, ba, generator=g), b

    return {
        "A": {SEED_IGNORED: lambda: uniform_pair(rank, n_in, n_out, 0)[0], B_FIRST: lambda: b_first()[0]},
        "B": {
            SEED_IGNORED: lambda: uniform_pair(rank, n_in, n_out, 0)[1],
            FRESH_B: fresh_b,
            B_FAN_IN: lambda: uniform_pair(rank, n_in, n_out, seed, b_fan_in=n_out)[1],
        },
    }


def base_layer(n_in: int, n_out: int, bias: bool, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out, bias=bias)


def check_buffers(layer: nn.Module, drawn: dict[str, Any]) -> None:
    """vera_A / vera_B are buffers, never trained; the lambdas are the only trainable parameters."""
    trainable = sorted(n for n, p in layer.named_parameters() if p.requires_grad)
    assert trainable == ["vera_lambda_b", "vera_lambda_d"], explain(
        "the trainable parameters of a VeRA layer are exactly vera_lambda_b and vera_lambda_d",
        drawn=drawn,
        got=str(trainable),
        hint=TRAINABLE if any(n.startswith(("vera_A", "vera_B")) for n in trainable) else None,
    )
    buffers = dict(layer.named_buffers())
    for name in ("vera_A", "vera_B"):
        assert name in buffers, explain(
            f"{name} must be a buffer of the layer (register_buffer)", drawn=drawn, hint=TRAINABLE
        )


def layer_pair(impl: ModuleType, spec: dict[str, Any]) -> tuple[Any, LibraryVeRA, VeraProjections]:
    """The learner's layer and peft_zoo's over copies of one base and ONE covering pair, holding
    the same random nonzero lambdas."""
    (cls,) = require(impl, "VeRALinear")
    proj = VeraProjections(
        spec["rank"], spec["in"] + spec["extra_in"], spec["out"] + spec["extra_out"], seed=spec["seed"]
    )
    base = base_layer(spec["in"], spec["out"], spec["bias"], spec["seed"])
    mine = call_learner(
        lambda: cls(copy.deepcopy(base), proj.vera_A, proj.vera_B, spec["d_initial"]),
        "VeRALinear(base, vera_A, vera_B, d_initial)",
        spec,
        SHAPE_HINT,
    )
    theirs = LibraryVeRA(copy.deepcopy(base), proj, d_initial=spec["d_initial"])
    g = torch.Generator().manual_seed(spec["seed"])
    with torch.no_grad():
        theirs.vera_lambda_b.copy_(torch.randn(spec["out"], generator=g))
        theirs.vera_lambda_d.copy_(torch.randn(spec["rank"], generator=g))
        for name in ("vera_lambda_b", "vera_lambda_d"):
            got = getattr(mine, name, None)
            if not isinstance(got, nn.Parameter) or got.shape != getattr(theirs, name).shape:
                raise AssertionError(
                    explain(
                        f"{name} must be an nn.Parameter of shape {tuple(getattr(theirs, name).shape)}",
                        drawn=spec,
                        got=repr(got if not isinstance(got, torch.Tensor) else tuple(got.shape)),
                        hint=SHAPE_HINT,
                    )
                )
            got.copy_(getattr(theirs, name))
    return mine, theirs, proj


def slice_bugs(proj: VeraProjections, n_in: int, n_out: int) -> dict[str, dict[str, Callable[[], Any]]]:
    return {
        "A": {WRONG_SIDE_A: lambda: proj.vera_A[:, proj.vera_A.shape[1] - n_in :]},
        "B": {WRONG_SIDE_B: lambda: proj.vera_B[proj.vera_B.shape[0] - n_out :, :]},
    }


def delta_of(
    lambda_b: torch.Tensor, lambda_d: torch.Tensor, a: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    return (lambda_b[:, None] * b) @ (lambda_d[:, None] * a)


def forward_bugs(theirs: LibraryVeRA, proj: VeraProjections, x: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """The layer's output under each slicing mistake (the lambdas and base are the reference's)."""
    n_in, n_out = theirs.in_features, theirs.out_features
    lb, ld = theirs.vera_lambda_b, theirs.vera_lambda_d
    right_a, right_b = proj.vera_A[:, :n_in], proj.vera_B[:n_out, :]
    wrong_a, wrong_b = (
        proj.vera_A[:, proj.vera_A.shape[1] - n_in :],
        proj.vera_B[proj.vera_B.shape[0] - n_out :],
    )
    return {
        WRONG_SIDE_A: lambda: theirs.base(x) + x @ delta_of(lb, ld, wrong_a, right_b).T,
        WRONG_SIDE_B: lambda: theirs.base(x) + x @ delta_of(lb, ld, right_a, wrong_b).T,
    }


def stack_layers(spec: dict[str, Any]) -> list[nn.Linear]:
    torch.manual_seed(spec["seed"])
    return [nn.Linear(i, o) for i, o in spec["shapes"]]


def library_stack(layers: list[nn.Linear], spec: dict[str, Any]) -> list[LibraryVeRA]:
    proj = VeraProjections.covering(layers, spec["rank"], seed=spec["seed"])
    return [LibraryVeRA(copy.deepcopy(layer), proj, d_initial=spec["d_initial"]) for layer in layers]


def per_layer_delta(layer: LibraryVeRA, seed: int) -> torch.Tensor:
    """ΔW of ``layer``'s lambdas over a pair drawn at the layer's own size (the per-layer bug)."""
    a, b = vera_projection_pair(layer.rank, layer.in_features, layer.out_features, seed)
    return delta_of(layer.vera_lambda_b, layer.vera_lambda_d, a, b)
