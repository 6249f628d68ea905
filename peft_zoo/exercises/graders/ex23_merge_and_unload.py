"""Grader machinery of challenge 23 · merge_and_unload: drawn stacks of nn.Linear and GPT-2
Conv1D layers, some wrapped with LoRA or a (non-mergeable) bottleneck adapter, built twice
from the reference's given classes with the same random weights, and the classic merge
mistakes written out (to name the learner's bug)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from hypothesis import strategies as st
from torch import nn

from peft_zoo.exercises.grading import run_learner
from peft_zoo.testing import explain, seeds

# The bugs' names, as the "likely:" lines give them.
NO_SCALE = "the scale is missing: the update is scale * B A, not B A"
FIFO = (
    "fan_in_fan_out ignored: a Conv1D weight is (in, out), so the update is added transposed, (scale B A)^T"
)
SUBTRACTED = "the update is subtracted (that is unmerging): merge adds scale * B A"
WRAPPER_LEFT = "the LoRA wrapper is still in the model: put its base layer back in its place"
PARTIAL = "the model was changed before the refusal: check every layer first, then merge"
NO_REFUSAL = "a non-mergeable layer was skipped silently: merge_and_unload must refuse the model"
NOT_NAMED = "the error must name the layer that cannot merge (its qualified name)"
UNLOAD_MERGES = "unload merged the update: unload removes the adapters and keeps the base weights"
UNLOAD_SKIPS = "unload left a non-mergeable wrapper in place: unload removes every adapter"

KINDS = ("linear", "conv", "lora_linear", "lora_conv", "bottleneck")


class Stack(nn.Module):
    """``blocks[i]["proj"]`` maps ``widths[i] -> widths[i + 1]``; a tanh after each."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.ModuleDict({"proj": layer}) for layer in layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = torch.tanh(block.get_submodule("proj")(x))
        return x


@st.composite
def stacks(draw: st.DrawFn, with_bottleneck: bool = False) -> dict[str, Any]:
    """Layer kinds, widths, rank, alpha, a seed; with ``with_bottleneck`` one bottleneck layer
    at a drawn position (after at least one LoRA layer when there are several)."""
    n = draw(st.integers(1, 4))
    mergeable = [k for k in KINDS if k != "bottleneck"]
    kinds = [draw(st.sampled_from(mergeable)) for _ in range(n)]
    if with_bottleneck:
        kinds[0] = "lora_conv" if draw(st.booleans()) else "lora_linear"
        kinds.insert(draw(st.integers(1, n)), "bottleneck")
    return {
        "kinds": kinds,
        "widths": [draw(st.integers(1, 5)) for _ in range(len(kinds) + 1)],
        "rank": draw(st.integers(1, 3)),
        "alpha": draw(st.sampled_from([None, 0.5, 4.0])),
        "seed": draw(seeds()),
    }


EXAMPLE = {
    "kinds": ["lora_conv", "lora_linear", "conv"],
    "widths": [3, 4, 2, 3],
    "rank": 2,
    "alpha": 4.0,
    "seed": 0,
}
SQUARE = {"kinds": ["lora_conv", "lora_linear"], "widths": [3, 3, 3], "rank": 2, "alpha": 4.0, "seed": 1}
WITH_BN = {
    "kinds": ["lora_linear", "bottleneck", "lora_conv"],
    "widths": [3, 4, 2, 3],
    "rank": 2,
    "alpha": 4.0,
    "seed": 2,
}


def _layer(ref: ModuleType, kind: str, d_in: int, d_out: int, spec: dict[str, Any]) -> nn.Module:
    base = ref.Conv1D(d_out, d_in) if kind.endswith("conv") else nn.Linear(d_in, d_out)
    if kind.startswith("lora"):
        return ref.LoRAWrapper(base, spec["rank"], spec["alpha"], fan_in_fan_out=kind.endswith("conv"))
    if kind == "bottleneck":
        return ref.BottleneckWrapper(base, d_out, 2)
    return base


def build(ref: ModuleType, spec: dict[str, Any]) -> Stack:
    """The stack, float64, every tensor random (LoRA B included), from the reference's classes."""
    w = spec["widths"]
    model = Stack([_layer(ref, k, w[i], w[i + 1], spec) for i, k in enumerate(spec["kinds"])]).double()
    torch.manual_seed(spec["seed"])
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.normal_(0.0, 0.5)
    return model


def paths(spec: dict[str, Any]) -> list[str]:
    return [f"blocks.{i}.proj" for i in range(len(spec["kinds"]))]


def call_learner(fn: Callable[[], Any], what: str, spec: dict[str, Any], hint: str | None = None) -> Any:
    """Run learner code; a shape error becomes a failure that says where to look."""
    return run_learner(
        fn, what, spec, hint, (RuntimeError, IndexError, AttributeError, TypeError, ValueError)
    )


def delta_bugs(layer: Any) -> dict[str, Callable[[], torch.Tensor]]:
    """What each classic mistake returns as ``delta_weight(layer)``."""
    ba = layer.lora_B @ layer.lora_A  # (out, in)
    return {
        NO_SCALE: lambda: ba.T if layer.fan_in_fan_out else ba,
        FIFO: lambda: layer.scale * ba,
    }


def merged_bugs(base_weight: torch.Tensor, layer: Any) -> dict[str, Callable[[], torch.Tensor]]:
    """What each classic mistake leaves in ``base.weight`` (``base_weight``: the weight before)."""
    ba = layer.lora_B @ layer.lora_A
    delta = layer.scale * (ba.T if layer.fan_in_fan_out else ba)
    return {
        NO_SCALE: lambda: base_weight + (ba.T if layer.fan_in_fan_out else ba),
        FIFO: lambda: base_weight + layer.scale * ba,
        SUBTRACTED: lambda: base_weight - delta,
    }


def unload_bugs(base_weight: torch.Tensor, layer: Any) -> dict[str, Callable[[], torch.Tensor]]:
    """What merging by mistake leaves in ``base.weight`` after ``unload`` (LoRA layers only)."""
    if not hasattr(layer, "lora_A"):
        return {}
    ba = layer.lora_B @ layer.lora_A
    return {UNLOAD_MERGES: lambda: base_weight + layer.scale * (ba.T if layer.fan_in_fan_out else ba)}


def check_plain(model: nn.Module, bases: dict[str, nn.Module], spec: dict[str, Any], *, skipped: str) -> None:
    """Every adapted position holds its original base layer again, and no wrapper is left."""
    for name, base in bases.items():
        now = model.get_submodule(name)
        if now is base:
            continue
        left = isinstance(getattr(now, "mergeable", None), bool)
        hint = (skipped if not now.mergeable else WRAPPER_LEFT) if left else None
        raise AssertionError(
            explain(
                f"{name} is not the original base layer",
                drawn=spec,
                expected=f"the very {type(base).__name__} the wrapper held",
                got=type(now).__name__,
                hint=hint or "replace(model, name, layer.base): the base object itself, not a copy",
            )
        )
