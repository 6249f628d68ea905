"""Grader for challenge 06 · ParallelAdapterBlock. Run: peft-zoo check 6 (or pytest this file)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from peft_zoo.exercises.graders.adapter_blocks import block_pair, sublayer_and_adapter
from peft_zoo.exercises.grading import assert_gradients_match, assert_matches, learner_code, require
from peft_zoo.testing import dims, dtypes, explain, leading_shapes, ranks, seeds

CHALLENGE = "ex06_parallel_adapter_block"
pytestmark = pytest.mark.timeout(120)

# Classic mistakes planted into a copy of the answer; the grader must reject every one.
PLANTED_BUGS: list[tuple[str, ...]] = [
    (
        "the adapter is fed the sublayer's output instead of x",
        "self.adapter.forward_delta(x)",
        "self.adapter.forward_delta(self.sublayer(x))",
        "the adapter is fed the sublayer's output (sublayer(x) + delta(sublayer(x))): in the parallel form both branches read x",
    ),
    (
        "an extra residual x is added",
        "return self.sublayer(x) + ",
        "return x + self.sublayer(x) + ",
        (
            "an extra residual x is added (x + sublayer(x)): calling adapter(x), which adds its own x, or the serial form h = x + sublayer(x) both do this; the parallel block adds no residual",
            "an extra residual x is added (x + sublayer(x) + delta(x)), e.g. by calling adapter(x), which adds its own x",
            "an extra residual x (its gradient g is added once more)",
        ),
    ),
    (
        "adapter(x) instead of adapter.forward_delta(x) (the adapter's own residual sneaks in)",
        "self.adapter.forward_delta(x)",
        "self.adapter(x)",
        (
            "an extra residual x is added (x + sublayer(x)): calling adapter(x), which adds its own x, or the serial form h = x + sublayer(x) both do this; the parallel block adds no residual",
            "an extra residual x is added (x + sublayer(x) + delta(x)), e.g. by calling adapter(x), which adds its own x",
            "an extra residual x (its gradient g is added once more)",
        ),
    ),
    (
        "the serial form: h = x + sublayer(x); h + delta(h)",
        "return self.sublayer(x) + self.adapter.forward_delta(x)",
        "return (h := x + self.sublayer(x)) + self.adapter.forward_delta(h)",
        (
            "an extra residual x is added (x + sublayer(x)): calling adapter(x), which adds its own x, or the serial form h = x + sublayer(x) both do this; the parallel block adds no residual",
            "the serial form (h = x + sublayer(x); h + delta(h)) instead of the parallel one",
        ),
    ),
    (
        "the sublayer branch is dropped",
        "return self.sublayer(x) + ",
        "return x + ",
        (
            "the sublayer branch is missing (x + delta(x), which is x at initialisation)",
            "the sublayer branch is missing (x + delta(x))",
        ),
    ),
]


def _bugs(theirs, x):
    """What the classic mistakes would output for input ``x``."""
    f, delta = theirs.sublayer, theirs.adapter.forward_delta
    return {
        "the adapter is fed the sublayer's output (sublayer(x) + delta(sublayer(x))): in the "
        "parallel form both branches read x": lambda: f(x) + delta(f(x)),
        "an extra residual x is added (x + sublayer(x) + delta(x)), e.g. by calling adapter(x), "
        "which adds its own x": lambda: x + f(x) + delta(x),
        "the serial form (h = x + sublayer(x); h + delta(h)) instead of the parallel one": lambda: (
            x + f(x) + delta(x + f(x))
        ),
        "the sublayer branch is missing (x + delta(x))": lambda: x + delta(x),
        "the adapter branch is missing (returns sublayer(x))": lambda: f(x),
        "adapter(x) used: with adapter.residual=False it is delta(x) alone, the sublayer is lost": lambda: (
            delta(x)
        ),
    }


@settings(max_examples=10, deadline=None)
@given(d=dims(), r=ranks(), seed=seeds())
@learner_code()
def test_keeps_the_sublayer_and_the_adapter(impl, d, r, seed) -> None:
    (impl_cls,) = require(impl, "ParallelAdapterBlock")
    sub, adapter = sublayer_and_adapter(d, r, seed)
    block = impl_cls(sub, adapter)
    drawn = {"d_model": d, "bottleneck_dim": r, "seed": seed}
    for name, given_module in (("sublayer", sub), ("adapter", adapter)):
        assert getattr(block, name, None) is given_module, explain(
            f"self.{name} must be the module you were given",
            drawn=drawn,
            got=f"{type(getattr(block, name, None)).__name__}",
            hint="store it as is (no copy, no new module): its parameters then belong to the block",
        )
    expected = sorted([f"sublayer.{n}" for n, _ in sub.named_parameters()])
    expected += sorted(f"adapter.{n}" for n, _ in adapter.named_parameters())
    names = sorted(n for n, _ in block.named_parameters())
    assert names == sorted(expected), explain(
        "the block's parameters must be exactly the sublayer's and the adapter's",
        drawn=drawn,
        expected=str(sorted(expected)),
        got=str(names),
    )


@settings(max_examples=15, deadline=None)
@given(d=dims(), r=ranks(), lead=leading_shapes(), seed=seeds())
@learner_code()
def test_initialisation_equals_the_sublayer(impl, d, r, lead, seed) -> None:
    (impl_cls,) = require(impl, "ParallelAdapterBlock")
    sub, adapter = sublayer_and_adapter(d, r, seed, trained=False)  # up_proj zero: delta(x) = 0
    block = impl_cls(sub, adapter)
    drawn = {"d_model": d, "bottleneck_dim": r, "lead": lead, "seed": seed}
    x = torch.randn(*lead, d)
    with torch.no_grad():
        fx = sub(x)
        assert_matches(
            block(x),
            fx,
            what="with a fresh adapter (delta = 0) the block must compute exactly sublayer(x)",
            drawn=drawn,
            bugs={
                "an extra residual x is added (x + sublayer(x)): calling adapter(x), which adds its "
                "own x, or the serial form h = x + sublayer(x) both do this; the parallel block adds "
                "no residual": lambda: x + fx,
                "the sublayer branch is missing (x + delta(x), which is x at initialisation)": lambda: x,
            },
        )


@settings(max_examples=25, deadline=None)
@example(d=4, r=2, lead=(3,), adapter_residual=False, dtype=torch.float32, seed=0)
@example(d=4, r=2, lead=(3,), adapter_residual=True, dtype=torch.float64, seed=1)
@given(
    d=dims(),
    r=ranks(),
    lead=leading_shapes(),
    adapter_residual=st.booleans(),
    dtype=dtypes(),
    seed=seeds(),
)
@learner_code()
def test_forward_matches_reference(impl, ref, d, r, lead, adapter_residual, dtype, seed) -> None:
    mine, theirs = block_pair(
        impl, ref, "ParallelAdapterBlock", d, r, seed, dtype=dtype, adapter_residual=adapter_residual
    )
    drawn = {"d_model": d, "bottleneck_dim": r, "lead": lead, "adapter.residual": adapter_residual}
    drawn |= {"dtype": dtype, "seed": seed}
    x = torch.randn(*lead, d, dtype=dtype)
    with torch.no_grad():
        assert_matches(
            mine(x),
            theirs(x),
            what="forward(x) = sublayer(x) + adapter.forward_delta(x)",
            drawn=drawn,
            bugs=_bugs(theirs, x),
        )


@settings(max_examples=15, deadline=None)
@given(d=dims(), r=ranks(), lead=leading_shapes(max_dims=2), seed=seeds())
@learner_code()
def test_gradients_match_reference(impl, ref, d, r, lead, seed) -> None:
    mine, theirs = block_pair(impl, ref, "ParallelAdapterBlock", d, r, seed, dtype=torch.float64)
    drawn = {"d_model": d, "bottleneck_dim": r, "lead": lead, "seed": seed}
    x = torch.randn(*lead, d, dtype=torch.float64)
    g = torch.randn(*lead, d, dtype=torch.float64)
    assert_gradients_match(
        mine,
        theirs,
        x,
        g,
        drawn=drawn,
        input_bugs=lambda ref_grad: {
            "an extra residual x (its gradient g is added once more)": lambda: ref_grad + g
        },
    )
