"""Hypothesis strategies and assertion helpers shared by the tests and the exercise graders.

Needs the ``dev`` extra (hypothesis). Sizes are bounded so property tests stay fast on a
2-core CPU. Every assertion helper raises an ``AssertionError`` whose message says what
was drawn, what was expected, what came back and, when given, which classic mistake that
pattern usually means.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from hypothesis import strategies as st
from torch import nn

# ----------------------------------------------------------------------------- strategies


def dims(max_value: int = 16) -> st.SearchStrategy[int]:
    """A feature dimension in ``[1, max_value]``."""
    return st.integers(min_value=1, max_value=max_value)


def ranks(max_rank: int = 8) -> st.SearchStrategy[int]:
    """A LoRA rank / bottleneck width in ``[1, max_rank]``."""
    return st.integers(min_value=1, max_value=max_rank)


def alphas() -> st.SearchStrategy[float | None]:
    """``None`` (alpha defaults to rank) or a positive alpha, including awkward values."""
    return st.one_of(st.none(), st.sampled_from([1.0, 2.0, 16.0, 32.0]), st.floats(0.1, 64.0))


def leading_shapes(max_dims: int = 3, max_size: int = 4) -> st.SearchStrategy[tuple[int, ...]]:
    """Leading (batch-like) dimensions: ``()`` up to ``max_dims`` sizes in ``[1, max_size]``."""
    return st.lists(st.integers(1, max_size), min_size=0, max_size=max_dims).map(tuple)


def dtypes(include_bfloat16: bool = False) -> st.SearchStrategy[torch.dtype]:
    """float32 / float64 (and bfloat16 on request)."""
    choices = [torch.float32, torch.float64] + ([torch.bfloat16] if include_bfloat16 else [])
    return st.sampled_from(choices)


def seeds() -> st.SearchStrategy[int]:
    """A seed for ``torch.manual_seed``: the draw fixes every random tensor in a test."""
    return st.integers(min_value=0, max_value=2**31 - 1)


@st.composite
def linear_specs(draw: st.DrawFn, max_dim: int = 16, max_rank: int = 8) -> dict[str, Any]:
    """Everything needed to build one LoRA layer: in/out features, bias, rank, alpha, seed."""
    return {
        "in_features": draw(dims(max_dim)),
        "out_features": draw(dims(max_dim)),
        "bias": draw(st.booleans()),
        "rank": draw(ranks(max_rank)),
        "alpha": draw(alphas()),
        "seed": draw(seeds()),
    }


# ----------------------------------------------------------------------------- tolerances


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """``(rtol, atol)`` for comparing two computations of the same value in ``dtype``."""
    return {
        torch.float64: (1e-9, 1e-10),
        torch.float32: (1e-4, 1e-5),
        torch.bfloat16: (2e-2, 2e-2),
        torch.float16: (5e-3, 5e-3),
    }.get(dtype, (1e-4, 1e-5))


# ----------------------------------------------------------------------------- assertions


def _describe(t: torch.Tensor, n: int = 6) -> str:
    flat = t.detach().reshape(-1)[:n].float().tolist()
    more = ", ..." if t.numel() > n else ""
    vals = ", ".join(f"{v:.6g}" for v in flat)
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, values [{vals}{more}]"


def explain(
    what: str,
    *,
    drawn: Mapping[str, Any] | None = None,
    expected: str | None = None,
    got: str | None = None,
    hint: str | None = None,
) -> str:
    """Format a teaching failure message: what, drawn, expected, got, likely cause."""
    lines = [what]
    if drawn:
        lines.append("  drawn:    " + ", ".join(f"{k}={v!r}" for k, v in drawn.items()))
    if expected is not None:
        lines.append(f"  expected: {expected}")
    if got is not None:
        lines.append(f"  got:      {got}")
    if hint:
        lines.append(f"  likely:   {hint}")
    return "\n".join(lines)


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    what: str,
    drawn: Mapping[str, Any] | None = None,
    hint: str | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Assert two tensors have the same shape and values (within dtype tolerance)."""
    if not isinstance(actual, torch.Tensor):
        raise AssertionError(explain(what, drawn=drawn, expected="a tensor", got=repr(actual), hint=hint))
    if actual.shape != expected.shape:
        raise AssertionError(
            explain(
                f"{what}: wrong shape",
                drawn=drawn,
                expected=_describe(expected),
                got=_describe(actual),
                hint=hint,
            )
        )
    d_rtol, d_atol = tolerance(expected.dtype)
    rtol, atol = (d_rtol if rtol is None else rtol), (d_atol if atol is None else atol)
    a, e = actual.detach().to(torch.float64), expected.detach().to(torch.float64)
    if not torch.allclose(a, e, rtol=rtol, atol=atol, equal_nan=False):
        diff = (a - e).abs()
        worst = int(diff.reshape(-1).argmax()) if diff.numel() else 0
        idx = (
            tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), diff.shape)) if diff.dim() else ()
        )
        raise AssertionError(
            explain(
                f"{what}: values differ (max |diff| {diff.max().item():.3g} at index {idx}, "
                f"rtol={rtol:g}, atol={atol:g})",
                drawn=drawn,
                expected=_describe(expected),
                got=_describe(actual),
                hint=hint,
            )
        )


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Clones of every parameter and buffer, to compare against after an operation."""
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=False).items()}


def changed_tensors(model: nn.Module, before: Mapping[str, torch.Tensor]) -> list[str]:
    """Names whose value, shape or presence differs from ``before`` (a :func:`snapshot`)."""
    now = model.state_dict()
    names = sorted(set(now) | set(before))
    return [
        n
        for n in names
        if n not in now
        or n not in before
        or now[n].shape != before[n].shape
        or now[n].dtype != before[n].dtype
        or not torch.equal(now[n], before[n])
    ]


def assert_unchanged(model: nn.Module, before: Mapping[str, torch.Tensor], *, what: str) -> None:
    """Assert ``model`` holds exactly the tensors of ``before`` (same names, values, dtypes)."""
    changed = changed_tensors(model, before)
    if changed:
        raise AssertionError(f"{what}: these tensors changed: {changed[:10]}")


def requires_grad_map(model: nn.Module) -> dict[str, bool]:
    """``name -> requires_grad`` for every parameter."""
    return {n: p.requires_grad for n, p in model.named_parameters()}


def fingerprint(model: nn.Module) -> dict[str, Any]:
    """Everything an operation that "changes nothing" must leave as it was: tensor values,
    the module tree (names, types, identities) and every ``requires_grad`` flag."""
    return {
        "tensors": snapshot(model),
        "types": {n: type(m) for n, m in model.named_modules()},
        "ids": {n: id(m) for n, m in model.named_modules()},
        "requires_grad": requires_grad_map(model),
    }


def assert_model_unchanged(model: nn.Module, before: Mapping[str, Any], *, what: str) -> None:
    """Assert ``model`` still matches ``before`` (a :func:`fingerprint`) in every respect."""
    assert_unchanged(model, before["tensors"], what=what)
    now = fingerprint(model)
    for key, problem in (
        ("types", "module types changed"),
        ("ids", "a module was replaced"),
        ("requires_grad", "requires_grad flags changed"),
    ):
        if now[key] != before[key]:
            diff = sorted(
                k for k in set(now[key]) | set(before[key]) if now[key].get(k) != before[key].get(k)
            )
            raise AssertionError(f"{what}: {problem}: {diff[:10]}")
