"""Grader for challenge 03 · AdapterBlock. Run: peft-zoo check 3 (or pytest this file)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from peft_zoo.exercises.graders.adapter_blocks import block_pair, sublayer_and_adapter
from peft_zoo.exercises.grading import assert_gradients_match, assert_matches, learner_code, require
from peft_zoo.testing import dims, dtypes, explain, leading_shapes, ranks, seeds

CHALLENGE = "ex03_adapter_block"
pytestmark = pytest.mark.timeout(120)

# Classic mistakes planted into a copy of the answer; the grader must reject every one.
PLANTED_BUGS: list[tuple[str, ...]] = [
    (
        "the residual is added twice (h + adapter(h), the adapter adding its own h)",
        "return h + self.adapter.forward_delta(h)",
        "return h + self.adapter(h)",
        (
            "the residual is added twice (2h + delta(h)): adapter(h) already adds h, so use h + adapter.forward_delta(h)",
            "the residual is added twice (2h): adapter(h) already adds h",
        ),
    ),
    (
        "the adapter is fed x instead of h",
        "self.adapter.forward_delta(h)",
        "self.adapter.forward_delta(x)",
        "the adapter is fed x instead of h (h + delta(x))",
    ),
    (
        "the sublayer's residual is missing",
        "h = x + self.sublayer(x)",
        "h = self.sublayer(x)",
        (
            "the sublayer's residual is missing (h = sublayer(x))",
            "the sublayer's residual is missing (sublayer(x))",
        ),
    ),
    (
        "adapter(h) returned, relying on the adapter's own residual flag",
        "return h + self.adapter.forward_delta(h)",
        "return self.adapter(h)",
        "only adapter(h) is returned: it adds h back only when the adapter has residual=True; use h + adapter.forward_delta(h)",
    ),
    (
        "the adapter is fed the sublayer output instead of h",
        "self.adapter.forward_delta(h)",
        "self.adapter.forward_delta(h - x)",
        "the adapter is fed the sublayer output instead of h (h + delta(sublayer(x)))",
    ),
    (
        "the adapter's delta is never added",
        "return h + self.adapter.forward_delta(h)",
        "return h",
        "the adapter's delta is never added (returns x + sublayer(x))",
    ),
]


def _bugs(theirs, x):
    """What the classic mistakes would output for input ``x``."""
    f, delta = theirs.sublayer, theirs.adapter.forward_delta
    h = x + f(x)
    return {
        "the residual is added twice (2h + delta(h)): adapter(h) already adds h, so use "
        "h + adapter.forward_delta(h)": lambda: 2 * h + delta(h),
        "the adapter is fed x instead of h (h + delta(x))": lambda: h + delta(x),
        "the adapter is fed the sublayer output instead of h (h + delta(sublayer(x)))": lambda: (
            h + delta(f(x))
        ),
        "the sublayer's residual is missing (h = sublayer(x))": lambda: f(x) + delta(f(x)),
        "only adapter(h) is returned: it adds h back only when the adapter has residual=True; "
        "use h + adapter.forward_delta(h)": lambda: theirs.adapter(h),
        "the adapter's delta is never added (returns x + sublayer(x))": lambda: h,
        "the adapter runs before the sublayer (x + sublayer(x + delta(x)))": lambda: x + f(x + delta(x)),
    }


@settings(max_examples=10, deadline=None)
@given(d=dims(), r=ranks(), seed=seeds())
@learner_code()
def test_keeps_the_sublayer_and_the_adapter(impl, d, r, seed) -> None:
    (impl_cls,) = require(impl, "AdapterBlock")
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
def test_initialisation_equals_the_sublayer_with_its_residual(impl, d, r, lead, seed) -> None:
    (impl_cls,) = require(impl, "AdapterBlock")
    sub, adapter = sublayer_and_adapter(d, r, seed, trained=False)  # up_proj zero: delta(h) = 0
    block = impl_cls(sub, adapter)
    drawn = {"d_model": d, "bottleneck_dim": r, "lead": lead, "seed": seed}
    x = torch.randn(*lead, d)
    with torch.no_grad():
        h = x + sub(x)
        assert_matches(
            block(x),
            h,
            what="with a fresh adapter (delta = 0) the block must compute x + sublayer(x)",
            drawn=drawn,
            bugs={
                "the residual is added twice (2h): adapter(h) already adds h": lambda: 2 * h,
                "the sublayer's residual is missing (sublayer(x))": lambda: sub(x),
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
        impl, ref, "AdapterBlock", d, r, seed, dtype=dtype, adapter_residual=adapter_residual
    )
    drawn = {"d_model": d, "bottleneck_dim": r, "lead": lead, "adapter.residual": adapter_residual}
    drawn |= {"dtype": dtype, "seed": seed}
    x = torch.randn(*lead, d, dtype=dtype)
    with torch.no_grad():
        assert_matches(
            mine(x),
            theirs(x),
            what="forward(x) = h + adapter.forward_delta(h), h = x + sublayer(x)",
            drawn=drawn,
            bugs=_bugs(theirs, x),
        )


@settings(max_examples=15, deadline=None)
@given(d=dims(), r=ranks(), lead=leading_shapes(max_dims=2), seed=seeds())
@learner_code()
def test_gradients_match_reference(impl, ref, d, r, lead, seed) -> None:
    mine, theirs = block_pair(impl, ref, "AdapterBlock", d, r, seed, dtype=torch.float64)
    drawn = {"d_model": d, "bottleneck_dim": r, "lead": lead, "seed": seed}
    x = torch.randn(*lead, d, dtype=torch.float64)
    g = torch.randn(*lead, d, dtype=torch.float64)
    assert_gradients_match(mine, theirs, x, g, drawn=drawn)
