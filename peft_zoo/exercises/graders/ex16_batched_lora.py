"""Grader machinery of challenge 16 · batched_lora: drawn batches, an independent loop
reference (one ``peft_zoo.LoRALinear`` per sample), what each classic bug would output, and
the output check that points at the first wrong sample and names the bug."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

from peft_zoo import LoRALinear
from peft_zoo.exercises.grading import Candidates, Recheck, assert_matches, diagnose
from peft_zoo.testing import assert_close, seeds, tolerance

Setup = dict[str, Any]
# A frozen base, x (B, T, in), ids (B,), stacked A (N, r, in), B (N, out, r), scales (N,).
Tensors = tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
Pick = Callable[[int, int], int]  # (sample b, its id i) -> the adapter a bug uses
ScaleOf = Callable[[int, int], Any]  # (sample b, its id i) -> the scale a bug uses


@st.composite
def setups(draw: st.DrawFn, base_only: bool = False, adapted: bool = False) -> Setup:
    """Batch, sequence, number of adapters, rank, features, and one id per sample (with -1 and
    repeats); ``base_only=True`` makes at least one sample base-only (id -1), ``adapted=True``
    at least one sample use an adapter."""
    n = draw(st.integers(1, 4))
    batch = draw(st.integers(1, 5))
    ids = draw(st.lists(st.integers(-1, n - 1), min_size=batch, max_size=batch))
    if base_only and -1 not in ids:
        ids[draw(st.integers(0, batch - 1))] = -1
    if adapted and all(i == -1 for i in ids):
        ids[draw(st.integers(0, batch - 1))] = draw(st.integers(0, n - 1))
    return {
        "B": batch,
        "T": draw(st.integers(1, 3)),
        "N": n,
        "r": draw(st.integers(1, 4)),
        "in": draw(st.integers(1, 6)),
        "out": draw(st.integers(1, 6)),
        "ids": ids,
        "seed": draw(seeds()),
    }


def tensors(setup: Setup, dtype: torch.dtype = torch.float32) -> Tensors:
    """A frozen base, x (B, T, in), ids (B,), stacked A (N, r, in), B (N, out, r) and distinct scales (N,)."""
    torch.manual_seed(setup["seed"])
    base = nn.Linear(setup["in"], setup["out"], dtype=dtype).requires_grad_(False)
    x = torch.randn(setup["B"], setup["T"], setup["in"], dtype=dtype)
    ids = torch.tensor(setup["ids"], dtype=torch.long)
    A = torch.randn(setup["N"], setup["r"], setup["in"], dtype=dtype)
    B = torch.randn(setup["N"], setup["out"], setup["r"], dtype=dtype)
    scale = (
        0.5 + torch.arange(setup["N"], dtype=dtype) + torch.rand(setup["N"], dtype=dtype) / 2
    )  # all distinct
    return base, x, ids, A, B, scale


def loop_reference(
    base: nn.Module, x: torch.Tensor, ids: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Each sample alone through a peft_zoo.LoRALinear holding its adapter (the base alone for -1)."""
    rows = []
    for b, i in enumerate(ids.tolist()):
        if i == -1:
            rows.append(base(x[b]))
            continue
        layer = LoRALinear(base, A.shape[1])
        layer.scale = float(scale[i])
        # functional_call swaps in A[i] and B[i] for the layer's parameters, so gradients
        # flow back into the stacked tensors.
        rows.append(functional_call(layer, {"lora_A": A[i], "lora_B": B[i]}, (x[b],)))
    return torch.stack(rows)  # (B, T, out)


def with_adapters(
    t: Tensors, pick: Pick, scale_of: ScaleOf, *, mask_minus_one: bool = True, use_scale: bool = True
) -> torch.Tensor:
    """What a forward computes when sample b uses adapter ``pick(b, i)`` and scale ``scale_of(b, i)``."""
    base, x, ids, A, B, _ = t
    n = A.shape[0]
    rows = []
    for b, i in enumerate(ids.tolist()):
        if i == -1 and mask_minus_one:
            rows.append(base(x[b]))
            continue
        k = pick(b, i) % n
        s = scale_of(b, i) if use_scale else 1.0
        rows.append(base(x[b]) + s * (x[b] @ A[k].T @ B[k].T))
    return torch.stack(rows)


def per_sample(
    x: torch.Tensor,
    ids: torch.Tensor,
    scale: torch.Tensor,
    first: Callable[[int], torch.Tensor],
    second: Callable[[int], torch.Tensor],
) -> torch.Tensor:
    """``scale[i] * x[b] @ first(i) @ second(i)`` per sample (zero for id -1): for wrong-matrix bugs."""
    rows = []
    for b, i in enumerate(ids.tolist()):
        if i == -1:
            rows.append(torch.zeros(x.shape[1], second(0).shape[1], dtype=x.dtype))
        else:
            rows.append(scale[i] * (x[b] @ first(i) @ second(i)))
    return torch.stack(rows)


def _id_bugs(t: Tensors) -> dict[str, tuple[Pick, ScaleOf, dict[str, bool]]]:
    """The bugs in which sample b uses the wrong adapter, the wrong scale or no -1 mask."""
    _, _, ids, A, _, scale = t
    n = A.shape[0]
    first = int(ids[0]) if len(ids) else 0

    def by_id(b: int, i: int) -> Any:
        return scale[i % n]

    no_mask = {"mask_minus_one": False}
    return {
        "-1 picked the LAST adapter (plain lora_A[ids]: Python negative indexing)": (
            lambda b, i: i % n,
            by_id,
            no_mask,
        ),
        "-1 was clamped to 0 but never masked: base-only samples got adapter 0": (
            lambda b, i: max(i, 0),
            lambda b, i: scale[max(i, 0)],
            no_mask,
        ),
        "ids shifted by one: id i used adapter i + 1": (
            lambda b, i: i + 1,
            lambda b, i: scale[(i + 1) % n],
            {},
        ),
        "ids shifted by one: id i used adapter i - 1 (1-based ids)": (
            lambda b, i: i - 1,
            lambda b, i: scale[(i - 1) % n],
            {},
        ),
        "ids treated as 1-based: id i used adapter i - 1 (id 0 clamped to adapter 0)": (
            lambda b, i: max(i - 1, 0),
            lambda b, i: scale[max(i - 1, 0)],
            {},
        ),
        "the scale of adapter 0 is used for every sample": (lambda b, i: i, lambda b, i: scale[0], {}),
        "the scale is indexed by position b instead of by the sample's adapter id": (
            lambda b, i: i,
            lambda b, i: scale[b % n],
            {},
        ),
        "the scale is missing (no alpha / r)": (lambda b, i: i, by_id, {"use_scale": False}),
        "the scale is missing and -1 picked the last adapter": (
            lambda b, i: i % n,
            by_id,
            {"use_scale": False, "mask_minus_one": False},
        ),
        "the scale is missing and -1 picked adapter 0": (
            lambda b, i: max(i, 0),
            by_id,
            {"use_scale": False, "mask_minus_one": False},
        ),
        "one adapter for the whole batch: every sample used the adapter (and scale) of sample 0": (
            lambda b, i: max(first, 0),
            lambda b, i: scale[max(first, 0)],
            {},
        ),
    }


def classic_bugs(
    base: nn.Module, x: torch.Tensor, ids: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: torch.Tensor
) -> dict[str, Callable[[], torch.Tensor]]:
    """What the classic mistakes would output for these inputs."""
    t: Tensors = (base, x, ids, A, B, scale)
    n = A.shape[0]
    out: dict[str, Callable[[], torch.Tensor]] = {
        name: functools.partial(with_adapters, t, pick, sc, **kw)
        for name, (pick, sc, kw) in _id_bugs(t).items()
    }
    out["A and B swapped (x @ B @ A instead of x @ A^T @ B^T)"] = lambda: (
        base(x) + per_sample(x, ids, scale, lambda i: B[i], lambda i: A[i])
    )
    out["A reshaped instead of transposed (A.view(in, r) is not A^T)"] = lambda: (
        base(x) + per_sample(x, ids, scale, lambda i: A[i].reshape(A.shape[2], A.shape[1]), lambda i: B[i].T)
    )
    out["the LoRA path is never added (output = base(x))"] = lambda: base(x)
    out["the base output is missing (only the LoRA delta)"] = lambda: (
        with_adapters(t, lambda b, i: i, lambda b, i: scale[i % n]) - base(x)
    )
    return out


def drawn_of(setup: Setup, **extra: Any) -> Setup:
    return {**setup, **extra}


# A fixed, non-degenerate batch (distinct ids, a -1 in the middle, in != out, rank >= 2) for
# telling apart bugs that coincide on a tiny drawn one (one adapter for the whole batch and
# "ids shifted by one" agree on a batch of two).
RECHECK = {"B": 6, "T": 2, "N": 4, "r": 3, "in": 5, "out": 4, "ids": [2, -1, 0, 3, 1, 2], "seed": 3}


def recheck(fn: Callable[..., Any], *, delta: bool = False) -> Recheck:
    """A :data:`peft_zoo.exercises.grading.Recheck` running ``fn`` (the learner's forward, or
    delta when ``delta``) on :data:`RECHECK`."""

    def run() -> tuple[Any, torch.Tensor, Candidates]:
        base, x, ids, A, B, scale = tensors(RECHECK, dtype=torch.float64)
        with torch.no_grad():
            found = classic_bugs(base, x, ids, A, B, scale)
            expected = loop_reference(base, x, ids, A, B, scale)
            if not delta:
                return fn(base, x, ids, A, B, scale), expected, found
            shifted = {name: (lambda f=f: f() - base(x)) for name, f in found.items()}
            return fn(x, ids, A, B, scale), expected - base(x), shifted

    return run


def check_output(
    got: Any,
    expected: torch.Tensor,
    setup: Setup,
    found: Candidates,
    *,
    what: str,
    recheck: Recheck | None = None,
) -> None:
    """Compare the whole output; on a mismatch, point at the first wrong sample and its id, and
    name the classic bug that reproduces the whole output (re-checked on a larger batch)."""
    ids = setup["ids"]
    drawn = drawn_of(setup)
    rtol, atol = tolerance(expected.dtype)
    if isinstance(got, torch.Tensor) and got.shape == expected.shape:
        for b in range(expected.shape[0]):
            if not torch.allclose(got[b].double(), expected[b].double(), rtol=rtol, atol=atol):
                hint = diagnose(got, found, rtol=rtol, atol=atol, expected=expected, recheck=recheck)
                if hint is None and ids[b] == -1:
                    hint = "a sample with id -1 must get exactly base(x[b]): no adapter, no scale"
                assert_close(
                    got[b],
                    expected[b],
                    what=f"{what}: sample b={b} (adapter id {ids[b]}) is wrong",
                    drawn=drawn,
                    hint=hint,
                )
    assert_matches(got, expected, what=what, drawn=drawn, bugs=found, recheck=recheck)


class Batched(nn.Module):
    """``fn(base, x, ids, lora_A, lora_B, scale)`` as a module with lora_A and lora_B as parameters,
    for :func:`assert_gradients_match`. The frozen base is kept out of ``named_parameters``."""

    frozen_base: nn.Module

    def __init__(
        self,
        fn: Callable[..., torch.Tensor],
        base: nn.Module,
        ids: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        scale: torch.Tensor,
    ) -> None:
        super().__init__()
        self.fn, self.ids, self.scale = fn, ids, scale
        object.__setattr__(self, "frozen_base", base)  # not a submodule
        self.lora_A = nn.Parameter(A.clone())
        self.lora_B = nn.Parameter(B.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.frozen_base, x, self.ids, self.lora_A, self.lora_B, self.scale)
