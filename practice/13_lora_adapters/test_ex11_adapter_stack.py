"""Grader for challenge 11 · AdapterStack. Run: peft-zoo check 11 (or pytest this file)."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from peft_zoo import BottleneckAdapter
from peft_zoo.exercises.grading import assert_matches, learner_code, require
from peft_zoo.testing import dims, dtypes, explain, leading_shapes, ranks, seeds

CHALLENGE = "ex11_adapter_stack"
pytestmark = pytest.mark.timeout(120)

# Classic mistakes planted into a copy of the answer; the grader must reject every one.
PLANTED_BUGS: list[tuple[str, ...]] = [
    (
        "adapter_id is ignored: always adapter 0",
        "self.adapters[adapter_id].forward_delta(x)",
        "self.adapters[0].forward_delta(x)",
        "adapter_id is ignored: adapter 0 is always used",
    ),
    (
        "negative ids silently accepted",
        "if not 0 <= adapter_id < n:",
        "if adapter_id >= n:",
        "negative ids are silently accepted",
    ),
    (
        "off-by-one bound (<= n)",
        "if not 0 <= adapter_id < n:",
        "if not 0 <= adapter_id <= n:",
        "your bound is off by one (<= num_adapters instead of <) or missing",
    ),
    (
        "ids treated as 1-based (adapters[adapter_id - 1])",
        "self.adapters[adapter_id]",
        "self.adapters[adapter_id - 1]",
        "ids treated as 1-based (adapters[adapter_id - 1]): id 0 then picks the last adapter",
    ),
    (
        "one adapter shared by every task ([adapter] * n)",
        "nn.ModuleList(BottleneckAdapter(d_model, bottleneck_dim) for _ in range(num_adapters))",
        "nn.ModuleList([BottleneckAdapter(d_model, bottleneck_dim)] * num_adapters)",
        "[BottleneckAdapter(...)] * n repeats ONE adapter n times",
    ),
    (
        "the residual is added twice (x + adapter(x))",
        "return x + self.adapters[adapter_id].forward_delta(x)",
        "return x + self.adapters[adapter_id](x)",
        (
            "the residual is added twice (x + adapter(x))",
            "the residual is added twice (x + adapter(x), and adapter(x) already adds x)",
        ),
    ),
    (
        "the IndexError does not name the valid range",
        "valid ids are 0..{n - 1} ({n} adapters)",
        "no such adapter",
        "put the range in the message",
    ),
]

ADAPTER_PARAMS = ("down_proj.bias", "down_proj.weight", "up_proj.bias", "up_proj.weight")


def _drawn(**kw):
    return kw


def _copy_params(mine: nn.Module, theirs: nn.Module, drawn: dict) -> None:
    """Give the learner's stack exactly the reference stack's weights, by parameter name."""
    own = dict(mine.named_parameters())
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            q = own.get(name)
            if q is None or tuple(q.shape) != tuple(p.shape):
                raise AssertionError(
                    explain(
                        f"cannot find parameter {name} of shape {tuple(p.shape)} in your stack",
                        drawn=drawn,
                        expected=str(sorted(n for n, _ in theirs.named_parameters())),
                        got=str(sorted(own)),
                        hint="self.adapters = nn.ModuleList(BottleneckAdapter(d_model, bottleneck_dim) "
                        "for _ in range(num_adapters)): one separate adapter per task",
                    )
                )
            q.copy_(p)


def _pair(impl, ref, d, r, n, seed, *, dtype=torch.float32):
    """The learner's stack and the reference stack holding identical random weights, a
    different up_proj in every adapter (so choosing the wrong one shows)."""
    (impl_cls,) = require(impl, "AdapterStack")
    drawn = _drawn(d_model=d, bottleneck_dim=r, num_adapters=n, seed=seed)
    mine = impl_cls(d, r, n)
    theirs = ref.AdapterStack(d, r, n)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0.0, 0.5)
    _copy_params(mine, theirs, drawn)
    return mine.to(dtype), theirs.to(dtype)


def _recheck(impl, ref):
    """Every adapter id of a fixed 4-adapter stack at once: on a small drawn stack "id ignored,
    adapter 0 used" and "1-based ids" pick the same adapter for id 1, here they differ."""

    def run():
        mine, theirs = _pair(impl, ref, 5, 3, 4, 1234, dtype=torch.float64)
        x = torch.randn(3, 5, dtype=torch.float64)
        with torch.no_grad():
            per_id = [_bugs(theirs, x, k) for k in range(4)]
            bugs = {name: (lambda name=name: torch.stack([b[name]() for b in per_id])) for name in per_id[0]}
            actual = torch.stack([mine(x, k) for k in range(4)])
            return actual, torch.stack([theirs(x, k) for k in range(4)]), bugs

    return run


def _bugs(theirs, x, k):
    """What the classic mistakes would output for ``forward(x, k)``."""
    delta = [a.forward_delta for a in theirs.adapters]
    return {
        "adapter_id is ignored: adapter 0 is always used": lambda: x + delta[0](x),
        "ids treated as 1-based (adapters[adapter_id - 1]): id 0 then picks the last adapter": lambda: (
            x + delta[k - 1](x)
        ),
        "adapter_id is ignored: the last adapter is always used": lambda: x + delta[-1](x),
        "the residual is added twice (x + adapter(x), and adapter(x) already adds x)": lambda: (
            2 * x + delta[k](x)
        ),
        "the residual is missing (only the delta is returned)": lambda: delta[k](x),
    }


@settings(max_examples=15, deadline=None)
@given(d=dims(), r=ranks(), n=st.integers(1, 4))
@learner_code()
def test_one_separate_bottleneck_adapter_per_task(impl, d, r, n) -> None:
    (impl_cls,) = require(impl, "AdapterStack")
    stack = impl_cls(d, r, n)
    drawn = _drawn(d_model=d, bottleneck_dim=r, num_adapters=n)
    adapters = getattr(stack, "adapters", None)
    assert isinstance(adapters, nn.ModuleList), explain(
        "self.adapters must be an nn.ModuleList",
        drawn=drawn,
        got=f"{type(adapters).__name__}",
        hint="a plain Python list hides the adapters from .parameters(), .to() and state_dict()",
    )
    assert len(adapters) == n, explain(
        "self.adapters has the wrong number of adapters", drawn=drawn, expected=str(n), got=str(len(adapters))
    )
    for k, a in enumerate(adapters):
        assert isinstance(a, BottleneckAdapter), explain(
            f"adapters[{k}] must be a peft_zoo.BottleneckAdapter",
            drawn=drawn,
            got=type(a).__name__,
            hint="from peft_zoo import BottleneckAdapter; BottleneckAdapter(d_model, bottleneck_dim)",
        )
        assert (a.down_proj.in_features, a.down_proj.out_features) == (d, r), explain(
            f"adapters[{k}] has the wrong size",
            drawn=drawn,
            expected=f"BottleneckAdapter({d}, {r})",
            got=f"down_proj {a.down_proj.in_features} -> {a.down_proj.out_features}",
        )
    distinct = len({id(a) for a in adapters})
    assert distinct == n, explain(
        "the adapters are not separate modules",
        drawn=drawn,
        expected=f"{n} distinct adapters",
        got=f"{distinct} distinct object(s)",
        hint="[BottleneckAdapter(...)] * n repeats ONE adapter n times, so every task shares its weights: "
        "build a new one per task (a generator or list comprehension)",
    )
    expected = sorted(f"adapters.{k}.{p}" for k in range(n) for p in ADAPTER_PARAMS)
    names = sorted(name for name, _ in stack.named_parameters())
    assert names == expected, explain(
        "the stack's parameters must be exactly its adapters' parameters",
        drawn=drawn,
        expected=str(expected),
        got=str(names),
    )


@settings(max_examples=15, deadline=None)
@given(d=dims(), r=ranks(), n=st.integers(1, 4), lead=leading_shapes(), seed=seeds())
@learner_code()
def test_every_adapter_starts_as_the_identity(impl, d, r, n, lead, seed) -> None:
    (impl_cls,) = require(impl, "AdapterStack")
    torch.manual_seed(seed)
    stack = impl_cls(d, r, n)
    x = torch.randn(*lead, d)
    with torch.no_grad():
        for k in range(n):
            assert_matches(
                stack(x, k),
                x,
                what=f"forward(x, {k}) at initialisation must equal x (up_proj starts at zero)",
                drawn=_drawn(d_model=d, bottleneck_dim=r, num_adapters=n, lead=lead, adapter_id=k),
                bugs={
                    "the residual is added twice (x + adapter(x))": lambda: 2 * x,
                    "the residual is missing (only the delta is returned)": lambda: 0 * x,
                },
            )


@settings(max_examples=25, deadline=None)
@given(
    d=dims(),
    r=ranks(),
    n=st.integers(2, 4),
    lead=leading_shapes(),
    dtype=dtypes(),
    seed=seeds(),
)
@learner_code()
def test_forward_uses_the_chosen_adapter(impl, ref, d, r, n, lead, dtype, seed) -> None:
    mine, theirs = _pair(impl, ref, d, r, n, seed, dtype=dtype)
    x = torch.randn(*lead, d, dtype=dtype)
    with torch.no_grad():
        for k in range(n):
            assert_matches(
                mine(x, k),
                theirs(x, k),
                what=f"forward(x, adapter_id={k}) = x + adapters[{k}].forward_delta(x)",
                drawn=_drawn(
                    d_model=d, bottleneck_dim=r, num_adapters=n, lead=lead, dtype=dtype, adapter_id=k
                ),
                bugs=_bugs(theirs, x, k),
                recheck=_recheck(impl, ref),
            )


def _numbers(text: str) -> list[int]:
    return [abs(int(m)) for m in re.findall(r"-?\d+", text)]


@settings(max_examples=20, deadline=None)
@example(d=4, r=2, n=3, offset=0, negative=False)  # adapter_id = num_adapters
@example(d=4, r=2, n=3, offset=0, negative=True)  # adapter_id = -1
@given(
    d=dims(8),
    r=ranks(4),
    n=st.integers(1, 4),
    offset=st.integers(0, 3),
    negative=st.booleans(),
)
@learner_code()
def test_out_of_range_ids_raise_index_error(impl, d, r, n, offset, negative) -> None:
    (impl_cls,) = require(impl, "AdapterStack")
    stack = impl_cls(d, r, n)
    bad = -1 - offset if negative else n + offset  # -1, -2, ... or n, n + 1, ...
    drawn = _drawn(d_model=d, bottleneck_dim=r, num_adapters=n, adapter_id=bad)
    x = torch.randn(2, d)
    what = f"adapter_id={bad} is outside [0, {n}): forward must raise IndexError"
    try:
        out = stack(x, bad)
    except IndexError as err:
        message = str(err)
    except NotImplementedError:
        raise
    except Exception as err:
        raise AssertionError(
            explain(what, drawn=drawn, got=f"{type(err).__name__}: {err}", hint="raise IndexError yourself")
        ) from None
    else:
        picked = f"adapter {n + bad} (Python counted from the end)" if -n <= bad < 0 else "some adapter"
        raise AssertionError(
            explain(
                what,
                drawn=drawn,
                got=f"no error: a tensor of shape {tuple(getattr(out, 'shape', ()))} from {picked}",
                hint="negative ids are silently accepted: check 0 <= adapter_id < num_adapters yourself"
                if negative
                else "check 0 <= adapter_id < num_adapters yourself",
            )
        )
    if re.fullmatch(r"index -?\d+ is out of range", message):
        raise AssertionError(
            explain(
                f"{what}, from your own check",
                drawn=drawn,
                got=f"nn.ModuleList's own IndexError: {message!r}",
                hint="negative ids are not checked: adapters[-k] counts from the end and only ids below "
                "-num_adapters reach this error; check 0 <= adapter_id < num_adapters yourself"
                if negative
                else "your bound is off by one (<= num_adapters instead of <) or missing: check "
                "0 <= adapter_id < num_adapters before indexing and say which ids are valid",
            )
        )
    numbers = _numbers(message)
    if abs(bad) in numbers:
        numbers.remove(abs(bad))  # the id itself does not name the range
    assert n in numbers or n - 1 in numbers, explain(
        "the IndexError message must name the valid range",
        drawn=drawn,
        expected=f"a message naming the range, e.g. 'adapter_id {bad} out of range: valid ids are 0..{n - 1}'",
        got=repr(message),
        hint="whoever hits this error needs to know which ids exist: put the range in the message",
    )


@settings(max_examples=15, deadline=None)
@given(
    d=dims(),
    r=ranks(),
    n=st.integers(2, 4),
    k=st.integers(0, 3),
    lead=leading_shapes(max_dims=2),
    seed=seeds(),
)
@learner_code()
def test_gradients_reach_only_the_chosen_adapter(impl, ref, d, r, n, k, lead, seed) -> None:
    k = k % n
    mine, theirs = _pair(impl, ref, d, r, n, seed, dtype=torch.float64)
    drawn = _drawn(d_model=d, bottleneck_dim=r, num_adapters=n, adapter_id=k, lead=lead, seed=seed)
    x = torch.randn(*lead, d, dtype=torch.float64)
    g = torch.randn(*lead, d, dtype=torch.float64)
    x_mine, x_ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    (mine(x_mine, k) * g).sum().backward()
    (theirs(x_ref, k) * g).sum().backward()
    own = dict(mine.named_parameters())
    for name, p in theirs.named_parameters():
        got = own[name].grad
        if name.startswith(f"adapters.{k}."):
            assert got is not None, explain(f"{name} received no gradient", drawn=drawn)
            assert_matches(got, p.grad, what=f"gradient of {name}", drawn=drawn)
        else:
            assert got is None or torch.count_nonzero(got) == 0, explain(
                f"{name} received a gradient, but only adapter {k} was used",
                drawn=drawn,
                hint="is adapter_id ignored, or do the adapters share their parameters?",
            )
    assert_matches(x_mine.grad, x_ref.grad, what="gradient with respect to the input x", drawn=drawn)
