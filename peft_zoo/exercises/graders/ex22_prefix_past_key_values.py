"""Grader machinery of challenge 22 · prefix_past_key_values: drawn grouped-query shapes, the
learner's prefix beside the reference's with the same trained tensors, and the classic layout
mistakes written out (to name the learner's bug)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from hypothesis import strategies as st
from torch import nn

from peft_zoo.exercises.grading import require, run_learner
from peft_zoo.testing import explain, seeds

# The bugs' names, as the "likely:" lines give them.
KV_SWAP = "keys and values swapped: index 2l holds layer l's keys, 2l + 1 its values"
HEADS = "the prefix is sized by num_heads: the cache holds num_kv_heads key/value heads, D = num_kv_heads * head_dim"
MASK_END = "the mask's ones are appended: the prefix is in front, so its n ones go in front"
MASK_ZEROS = "the prefix positions are masked out: they must be ones (every token may attend to the prefix)"
NOT_EXPANDED = "the prefix is not expanded over the batch: each key/value is (batch_size, H_kv, n, d_head)"
TRANSPOSED = (
    "tokens and heads mixed up: view P as (n, 2L, H_kv, d_head), then move n after the heads (permute)"
)
HALVES = "all keys first, then all values: PEFT interleaves them per layer (2l keys, 2l + 1 values)"
PER_LAYER = (
    "the projection outputs one layer's keys and values: one MLP runs once and outputs all layers, 2 L D"
)
NO_TANH = "the tanh between the projection's two Linear layers is missing"
NO_PROJECTION = "the projection is never applied: with encoder_hidden_size, P = transform(E), not E"


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    """Virtual tokens, layers, grouped-query heads, head width, projection width, batch, seed."""
    kv = draw(st.integers(1, 2))
    return {
        "n": draw(st.integers(1, 4)),
        "layers": draw(st.integers(1, 3)),
        "heads": kv * draw(st.integers(1, 3)),
        "kv_heads": kv,
        "head_dim": draw(st.integers(1, 3)),
        "hidden": draw(st.one_of(st.none(), st.integers(2, 5))),
        "batch": draw(st.integers(1, 3)),
        "seed": draw(seeds()),
    }


EXAMPLE = {
    "n": 3,
    "layers": 2,
    "heads": 4,
    "kv_heads": 2,
    "head_dim": 2,
    "hidden": None,
    "batch": 2,
    "seed": 0,
}
PROJECTED = EXAMPLE | {"hidden": 3, "n": 2, "seed": 1}


def args(spec: dict[str, Any]) -> tuple[Any, ...]:
    return (spec["n"], spec["layers"], spec["heads"], spec["kv_heads"], spec["head_dim"], spec["hidden"])


def call_learner(fn: Callable[[], Any], what: str, spec: dict[str, Any], hint: str | None = None) -> Any:
    """Run learner code; a shape error becomes a failure that says where to look."""
    return run_learner(fn, what, spec, hint, (RuntimeError, IndexError, AttributeError, TypeError))


def expected_shapes(spec: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Parameter shapes PEFT's PrefixEncoder has for these sizes."""
    n, width = spec["n"], spec["kv_heads"] * spec["head_dim"]
    out = spec["layers"] * 2 * width
    if spec["hidden"] is None:
        return {"embedding.weight": (n, out)}
    h = spec["hidden"]
    return {
        "embedding.weight": (n, width),
        "transform.0.weight": (h, width),
        "transform.0.bias": (h,),
        "transform.2.weight": (out, h),
        "transform.2.bias": (out,),
    }


def shape_hint(spec: dict[str, Any], name: str, got: tuple[int, ...]) -> str | None:
    """Which classic sizing mistake gives ``got`` for parameter ``name``."""
    if spec["heads"] != spec["kv_heads"] and got == expected_shapes(spec | {"kv_heads": spec["heads"]}).get(
        name
    ):
        return HEADS
    if spec["layers"] > 1 and got == expected_shapes(spec | {"layers": 1}).get(name):
        return PER_LAYER
    return None


def check_parameters(module: nn.Module, spec: dict[str, Any]) -> None:
    """Exactly PEFT's parameters, of PEFT's shapes, all trainable."""
    got = {n: tuple(p.shape) for n, p in module.named_parameters()}
    want = expected_shapes(spec)
    for name, shape in want.items():
        if got.get(name) != shape:
            shifted = name.startswith("transform.2") and "transform.1.weight" in got  # no layer at index 1
            hint = shape_hint(spec, name, got[name]) if name in got else (NO_TANH if shifted else None)
            raise AssertionError(
                explain(
                    f"parameter {name} is missing or has the wrong shape",
                    drawn=spec,
                    expected=str(shape),
                    got=str(got.get(name, "missing")),
                    hint=hint
                    or "D = num_kv_heads * head_dim; transform is Linear(D, h), Tanh, Linear(h, 2 L D)",
                )
            )
    extra = sorted(set(got) - set(want))
    assert not extra, explain("unexpected parameters", drawn=spec, got=str(extra))


def prefix_pair(impl: ModuleType, ref: ModuleType, spec: dict[str, Any]) -> tuple[Any, Any]:
    """The learner's and the reference's ``PrefixKV``, float64, same random parameters."""
    (cls,) = require(impl, "PrefixKV")
    torch.manual_seed(spec["seed"])
    theirs = ref.PrefixKV(*args(spec)).double()
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0.0, 1.0)
    mine = call_learner(lambda: cls(*args(spec)).double(), "PrefixKV(...)", spec)
    check_parameters(mine, spec)
    mine.load_state_dict(theirs.state_dict())
    return mine, theirs


def kv_bugs(theirs: Any, batch: int, layer: int, which: int) -> dict[str, Callable[[], torch.Tensor]]:
    """What each classic layout mistake gives for ``layer``'s keys (``which`` 0) or values (1)."""
    n, layers, heads, dh = theirs.num_virtual_tokens, theirs.num_layers, theirs.num_kv_heads, theirs.head_dim
    p = theirs.prompt()

    def pick(order: torch.Tensor, index: int) -> torch.Tensor:  # (2L, H, n, dh) -> (B, H, n, dh)
        return order[index].unsqueeze(0).expand(batch, -1, -1, -1)

    right = p.view(n, 2 * layers, heads, dh).permute(1, 2, 0, 3)  # (2L, H_kv, n, d_head)
    return {
        KV_SWAP: lambda: pick(right, layer * 2 + 1 - which),
        NOT_EXPANDED: lambda: right[layer * 2 + which].unsqueeze(0),
        TRANSPOSED: lambda: pick(p.reshape(2 * layers, heads, n, dh), layer * 2 + which),
        HALVES: lambda: pick(right, layer + which * layers),
    }


def mask_bugs(mask: torch.Tensor, n: int) -> dict[str, Callable[[], torch.Tensor]]:
    ones = mask.new_ones(mask.shape[0], n)
    return {
        MASK_END: lambda: torch.cat([mask, ones], dim=1),
        MASK_ZEROS: lambda: torch.cat([torch.zeros_like(ones), mask], dim=1),
        "the mask is not extended (n + T positions need n + T entries)": lambda: mask,
    }
