"""Grader for challenge 07 · LearnablePrefix. Run: peft-zoo check 7 (or pytest this file)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from peft_zoo.exercises.grading import assert_matches, learner_code, require
from peft_zoo.testing import dims, explain, seeds

CHALLENGE = "ex07_learnable_prefix"
pytestmark = pytest.mark.timeout(120)

# Classic mistakes planted into a copy of the answer; the grader must reject every one.
PLANTED_BUGS: list[tuple[str, ...]] = [
    (
        "the prefix is appended instead of prepended",
        "torch.cat([p, x], dim=1)",
        "torch.cat([x, p], dim=1)",
        (
            "the prefix is appended after the tokens instead of prepended (cat([x, p]))",
            "the prefix sits at the end of the sequence (appended)",
        ),
    ),
    (
        "the prefix overwrites the first tokens instead of being prepended",
        "return torch.cat([p, x], dim=1)",
        "return torch.cat([p, x[:, p.shape[1] :]], dim=1)",
        "the prefix overwrites the first prefix_len tokens instead of being prepended",
    ),
    (
        "the prefix is written into batch row 0 only (an indexing slip in a preallocated output)",
        "return torch.cat([p, x], dim=1)",
        "out = x.new_zeros(x.shape[0], p.shape[1] + x.shape[1], x.shape[2])\n"
        "        out[:, p.shape[1] :] = x\n"
        "        out[0, : p.shape[1]] = self.prefix\n"
        "        return out",
        (
            "only batch row 0 gets the prefix (the other rows' prefix positions are left at zero)",
            "only batch row 0 gets the prefix",
            "only row 0's gradient reaches the prefix",
        ),
    ),
    (
        "batch and prefix axes mixed up: a (P, B, d) tensor reshaped to (B, P, d)",
        "self.prefix.unsqueeze(0).expand(x.shape[0], -1, -1)",
        "self.prefix.unsqueeze(1).expand(-1, x.shape[0], -1).reshape(x.shape[0], -1, x.shape[2])",
        "batch and prefix axes mixed up: prefix.unsqueeze(1).expand(P, B, d) reshaped to (B, P, d) scrambles the rows",
    ),
    (
        "a shortcut for empty sequences returns the expand()ed view: rows alias each other and the prefix",
        "return torch.cat([p, x], dim=1)",
        "return p if x.shape[1] == 0 else torch.cat([p, x], dim=1)",
        "the rows alias one buffer",
    ),
    (
        "the prefix is detached (it never learns)",
        "self.prefix.unsqueeze(0)",
        "self.prefix.detach().unsqueeze(0)",
        "is it detached (.detach(), .data, torch.tensor(...))",
    ),
    (
        "the prefix is a plain tensor, not an nn.Parameter",
        "nn.Parameter(torch.randn(prefix_len, d_model) * 0.02)",
        "torch.randn(prefix_len, d_model) * 0.02",
        "a plain tensor attribute is not trained",
    ),
    (
        "the prefix is not scaled by 0.02",
        "torch.randn(prefix_len, d_model) * 0.02",
        "torch.randn(prefix_len, d_model)",
        "scale the draw: torch.randn(prefix_len, d_model) * 0.02",
    ),
]


def _drawn(**kw):
    return kw


def _pair(impl, ref, prefix_len, d, seed, *, dtype=torch.float32):
    """The learner's module and the reference module holding the same prefix."""
    (impl_cls,) = require(impl, "LearnablePrefix")
    mine = impl_cls(prefix_len, d)
    theirs = ref.LearnablePrefix(prefix_len, d)
    torch.manual_seed(seed)
    with torch.no_grad():
        theirs.prefix.normal_()  # unit scale: a swapped or misplaced row stands out
        p = getattr(mine, "prefix", None)
        if not isinstance(p, torch.Tensor) or tuple(p.shape) != (prefix_len, d):
            raise AssertionError(
                explain(
                    "self.prefix must be a tensor of shape (prefix_len, d_model)",
                    drawn=_drawn(prefix_len=prefix_len, d_model=d),
                    expected=f"shape {(prefix_len, d)}",
                    got=repr(getattr(p, "shape", p)),
                )
            )
        p.copy_(theirs.prefix)
    return mine.to(dtype), theirs.to(dtype)


def _bugs(theirs, x):
    """What the classic mistakes would output for input ``x``: (B, L, d)."""
    prefix = theirs.prefix.to(x.dtype)
    b, _, d = x.shape
    n = prefix.shape[0]
    p = prefix.unsqueeze(0).expand(b, -1, -1)  # (B, P, d)

    def row_zero_only() -> torch.Tensor:
        out = torch.cat([torch.zeros_like(p), x], dim=1)
        out[0, :n] = prefix
        return out

    return {
        "the prefix is appended after the tokens instead of prepended (cat([x, p]))": lambda: torch.cat(
            [x, p], dim=1
        ),
        "the prefix overwrites the first prefix_len tokens instead of being prepended": lambda: torch.cat(
            [p, x[:, n:]], dim=1
        ),
        "only batch row 0 gets the prefix (the other rows' prefix positions are left at zero)": row_zero_only,
        "batch and prefix axes mixed up: prefix.unsqueeze(1).expand(P, B, d) reshaped to (B, P, d) "
        "scrambles the rows": lambda: torch.cat(
            [prefix.unsqueeze(1).expand(-1, b, -1).reshape(b, n, d), x], dim=1
        ),
        "the prefix is never added (x returned unchanged)": lambda: x,
        "concatenated along the feature axis (dim=-1) instead of the sequence axis (dim=1)": lambda: (
            torch.cat([p, x], dim=-1)
        ),
    }


@settings(max_examples=20, deadline=None)
@given(prefix_len=st.integers(1, 8), d=dims(), seed=seeds())
@learner_code()
def test_prefix_is_the_only_parameter_and_small(impl, prefix_len, d, seed) -> None:
    (impl_cls,) = require(impl, "LearnablePrefix")
    torch.manual_seed(seed)
    module = impl_cls(prefix_len, d)
    drawn = _drawn(prefix_len=prefix_len, d_model=d, seed=seed)
    p = getattr(module, "prefix", None)
    assert isinstance(p, nn.Parameter), explain(
        "self.prefix must be an nn.Parameter",
        drawn=drawn,
        got=f"{type(p).__name__}",
        hint="a plain tensor attribute is not trained: the optimizer never sees it (wrap it in nn.Parameter)",
    )
    assert tuple(p.shape) == (prefix_len, d), explain(
        "self.prefix has the wrong shape", drawn=drawn, expected=str((prefix_len, d)), got=str(tuple(p.shape))
    )
    names = [n for n, _ in module.named_parameters()]
    assert names == ["prefix"], explain(
        "the module's only parameter must be prefix", drawn=drawn, expected="['prefix']", got=str(names)
    )
    assert p.requires_grad, explain("the prefix must be trainable (requires_grad=True)", drawn=drawn)
    values = p.detach()
    assert torch.count_nonzero(values) == values.numel(), explain(
        "the prefix has zero entries",
        drawn=drawn,
        hint="draw it at random: torch.randn(prefix_len, d_model) * 0.02",
    )
    assert values.abs().max() < 0.15, explain(
        "the prefix is far larger than N(0, 0.02^2) allows",
        drawn=drawn,
        expected="|prefix| < 0.15 (std 0.02)",
        got=f"max |prefix| = {values.abs().max().item():.3g}, std {values.std().item() if values.numel() > 1 else 0:.3g}",
        hint="scale the draw: torch.randn(prefix_len, d_model) * 0.02; large prefix vectors swamp the real tokens",
    )
    if values.numel() >= 32:
        assert 0.006 < values.std() < 0.05, explain(
            "the prefix's spread does not look like std 0.02",
            drawn=drawn,
            got=f"std {values.std().item():.3g}",
            hint="torch.randn(prefix_len, d_model) * 0.02 (normal, not uniform, times 0.02)",
        )


@settings(max_examples=25, deadline=None)
@example(batch=3, prefix_len=2, length=3, d=4, dtype=torch.float32, seed=0)
@given(
    batch=st.integers(1, 4),
    prefix_len=st.integers(1, 6),
    length=st.integers(0, 6),
    d=dims(8),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=seeds(),
)
@learner_code()
def test_forward_matches_reference(impl, ref, batch, prefix_len, length, d, dtype, seed) -> None:
    mine, theirs = _pair(impl, ref, prefix_len, d, seed, dtype=dtype)
    drawn = _drawn(B=batch, prefix_len=prefix_len, L=length, d_model=d, dtype=dtype, seed=seed)
    x = torch.randn(batch, length, d, dtype=dtype)
    with torch.no_grad():
        out = mine(x)
        assert_matches(
            out,
            theirs(x),
            what=f"forward: (B, L, d) = {tuple(x.shape)} -> (B, prefix_len + L, d) = "
            f"{(batch, prefix_len + length, d)}, prefix first",
            drawn=drawn,
            bugs=_bugs(theirs, x),
        )


@settings(max_examples=15, deadline=None)
@example(batch=3, prefix_len=2, length=3, d=4, seed=0)
@example(batch=2, prefix_len=2, length=0, d=3, seed=1)  # an empty sequence
@given(
    batch=st.integers(2, 4),
    prefix_len=st.integers(1, 4),
    length=st.integers(0, 4),
    d=dims(8),
    seed=seeds(),
)
@learner_code()
def test_every_row_owns_its_copy_of_the_prefix(impl, ref, batch, prefix_len, length, d, seed) -> None:
    mine, _ = _pair(impl, ref, prefix_len, d, seed)
    drawn = _drawn(B=batch, prefix_len=prefix_len, L=length, d_model=d, seed=seed)
    x = torch.randn(batch, length, d)
    prefix = mine.prefix.detach().clone()
    out = mine(x).detach()  # shares memory with the output, so aliasing shows up
    for b in range(batch):
        assert_matches(
            out[b, :prefix_len],
            prefix,
            what=f"out[{b}, :prefix_len] must be the prefix (every row gets the same prefix)",
            drawn=drawn,
            bugs={"only batch row 0 gets the prefix": lambda: torch.zeros_like(prefix)},
        )
        assert_matches(
            out[b, prefix_len:], x[b], what=f"out[{b}, prefix_len:] must be row {b} of x", drawn=drawn
        )
    try:
        out[0, :prefix_len] += 1.0  # a change to row 0's copy ...
    except RuntimeError as err:
        raise AssertionError(
            explain(
                "the output's rows share memory: writing to row 0 is refused",
                drawn=drawn,
                got=f"RuntimeError: {err}",
                hint="an expand()ed view was returned; torch.cat([prefix_expanded, x], dim=1) copies",
            )
        ) from None
    for b in range(1, batch):  # ... must not reach row b
        assert torch.equal(out[b, :prefix_len], prefix), explain(
            f"changing row 0's prefix in the output also changed row {b}'s",
            drawn=drawn,
            hint="the rows alias one buffer (an expand()ed view): torch.cat copies, so each row owns its prefix",
        )
    assert torch.equal(mine.prefix.detach(), prefix), explain(
        "changing the output changed the prefix parameter itself",
        drawn=drawn,
        hint="the output aliases the parameter's memory: build it with torch.cat, which copies",
    )


@settings(max_examples=15, deadline=None)
@given(
    batch=st.integers(1, 4),
    prefix_len=st.integers(1, 4),
    length=st.integers(0, 4),
    d=dims(8),
    seed=seeds(),
)
@learner_code()
def test_prefix_gradient_is_the_sum_over_rows(impl, ref, batch, prefix_len, length, d, seed) -> None:
    mine, _ = _pair(impl, ref, prefix_len, d, seed, dtype=torch.float64)
    drawn = _drawn(B=batch, prefix_len=prefix_len, L=length, d_model=d, seed=seed)
    x = torch.randn(batch, length, d, dtype=torch.float64, requires_grad=True)
    g = torch.randn(batch, prefix_len + length, d, dtype=torch.float64)  # upstream gradient dL/dout
    out = mine(x)
    assert tuple(out.shape) == tuple(g.shape), explain(
        "forward returned the wrong shape",
        drawn=drawn,
        expected=str(tuple(g.shape)),
        got=str(tuple(out.shape)),
    )
    (out * g).sum().backward()
    grad = mine.prefix.grad
    assert grad is not None, explain(
        "the prefix received no gradient",
        drawn=drawn,
        hint="is it detached (.detach(), .data, torch.tensor(...)) or not an nn.Parameter?",
    )
    assert_matches(
        grad,
        g[:, :prefix_len].sum(dim=0),
        what="prefix.grad must be the sum over batch rows of dL/dout[b, :prefix_len]",
        drawn=drawn,
        bugs={
            "only row 0's gradient reaches the prefix": lambda: g[0, :prefix_len],
            "the rows' gradients are averaged instead of summed": lambda: g[:, :prefix_len].mean(dim=0),
            "the prefix sits at the end of the sequence (appended)": lambda: g[:, length:].sum(dim=0),
        },
    )
    assert x.grad is not None, explain("x received no gradient", drawn=drawn)
    assert_matches(
        x.grad,
        g[:, prefix_len:],
        what="x.grad must be dL/dout[:, prefix_len:] (x passes through unchanged)",
        drawn=drawn,
    )
