"""Grader machinery of challenge 30 · lora_conv_embedding: drawn embeddings and convolutions,
the learner's layer beside peft_zoo's own :class:`~peft_zoo.lora_embedding.LoRAEmbedding` /
:class:`~peft_zoo.lora_conv.LoRAConv` (equal to PEFT 0.21.2's ``lora.Embedding`` / ``lora.Conv2d``)
holding the same random factors, and the classic mistakes written out (to name the bug)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

from peft_zoo.exercises.grading import require, run_learner
from peft_zoo.lora_conv import LoRAConv
from peft_zoo.lora_embedding import LoRAEmbedding
from peft_zoo.testing import explain, seeds

# The bugs' names, as the "likely:" lines give them.
A_1X1 = "lora_A is a 1x1 kernel: A is a convolution with the base's kernel, (r, in, kh, kw); B is the 1x1"
B_KERNEL = "lora_B has the base's kernel: B is a pointwise (1x1) convolution, (out, r, 1, 1)"
NO_SCALE_C = "the scale is missing on the LoRA path: base(x) + s · B(A(x))"
CONV_ARGS = "conv A must use the base's stride, padding and dilation, so its output lines up with the base's"
RESHAPE_T = (
    "the merged kernel is scrambled: (B.flatten(1) @ A.flatten(1)).view(out, in, kh, kw), no transpose"
)
INIT_SWAPPED = (
    "the init is swapped: for an embedding PEFT sets A = 0 and B ~ N(0, 1) (the reverse of nn.Linear's)"
)
NONZERO_DELTA = (
    "A is random too: A must start at zero so that ΔW = s B A = 0 and the layer starts as its base"
)
LOOKUP_ROWS = "the ids pick COLUMNS of A (r, vocab): look them up in A.T (vocab, r), F.embedding(ids, lora_embedding_A.T)"
NO_SCALE_E = "the scale is missing: base(ids) + s · Aᵀ[ids] Bᵀ"
MERGE_T = "the table is (vocab, dim) and ΔW = s B A is (dim, vocab): merge adds its transpose"


@st.composite
def emb_specs(draw: st.DrawFn) -> dict[str, Any]:
    """Vocabulary, width, rank, alpha, the ids' shape and a seed."""
    return {
        "vocab": draw(st.integers(1, 8)),
        "dim": draw(st.integers(1, 5)),
        "rank": draw(st.integers(1, 4)),
        "alpha": draw(st.sampled_from([None, 0.5, 3.0])),
        "lead": tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=2))),
        "seed": draw(seeds()),
    }


@st.composite
def conv_specs(draw: st.DrawFn) -> dict[str, Any]:
    """Channels, kernel, stride, padding, dilation, rank, alpha, image size and a seed."""
    return {
        "in": draw(st.integers(1, 3)),
        "out": draw(st.integers(1, 3)),
        "kernel": (draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        "stride": draw(st.integers(1, 2)),
        "padding": draw(st.integers(0, 1)),
        "dilation": draw(st.integers(1, 2)),
        "rank": draw(st.integers(1, 3)),
        "alpha": draw(st.sampled_from([None, 0.5, 3.0])),
        "size": draw(st.integers(5, 7)),
        "seed": draw(seeds()),
    }


EMB = {"vocab": 6, "dim": 3, "rank": 2, "alpha": 3.0, "lead": (2, 3), "seed": 0}
EMB_SQUARE = {"vocab": 3, "dim": 3, "rank": 3, "alpha": 3.0, "lead": (4,), "seed": 1}
CONV = {
    "in": 2,
    "out": 3,
    "kernel": (3, 2),
    "stride": 2,
    "padding": 1,
    "dilation": 1,
    "rank": 2,
    "alpha": 3.0,
    "size": 6,
    "seed": 0,
}


def call_learner(fn: Callable[[], Any], what: str, spec: dict[str, Any], hint: str | None = None) -> Any:
    """Run learner code; a shape error becomes a failure that says where to look."""
    return run_learner(
        fn, what, spec, hint, (RuntimeError, IndexError, TypeError, ValueError, AttributeError)
    )


def check_shapes(
    layer: nn.Module, shapes: dict[str, tuple[int, ...]], hints: dict[str, str], spec: dict[str, Any]
) -> None:
    """Each named attribute is an nn.Parameter of the given shape."""
    for name, shape in shapes.items():
        p = getattr(layer, name, None)
        if not isinstance(p, nn.Parameter):
            raise AssertionError(explain(f"{name} must be an nn.Parameter", drawn=spec, got=repr(p)[:100]))
        if tuple(p.shape) != shape:
            raise AssertionError(
                explain(
                    f"{name} has the wrong shape",
                    drawn=spec,
                    expected=str(shape),
                    got=str(tuple(p.shape)),
                    hint=hints.get(name),
                )
            )


def emb_base(spec: dict[str, Any]) -> nn.Embedding:
    torch.manual_seed(spec["seed"])
    return nn.Embedding(spec["vocab"], spec["dim"], dtype=torch.float64)


def conv_base(spec: dict[str, Any]) -> nn.Conv2d:
    torch.manual_seed(spec["seed"])
    return nn.Conv2d(
        spec["in"],
        spec["out"],
        spec["kernel"],
        stride=spec["stride"],
        padding=spec["padding"],
        dilation=spec["dilation"],
        dtype=torch.float64,
    )


def emb_shapes(spec: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {
        "lora_embedding_A": (spec["rank"], spec["vocab"]),
        "lora_embedding_B": (spec["dim"], spec["rank"]),
    }


def conv_shapes(spec: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {
        "lora_A": (spec["rank"], spec["in"], *spec["kernel"]),
        "lora_B": (spec["out"], spec["rank"], 1, 1),
    }


CONV_HINTS = {"lora_A": A_1X1, "lora_B": B_KERNEL}


def _fill(lib: nn.Module, mine: nn.Module, names: tuple[str, str], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in names:
            p = getattr(lib, name)
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
            getattr(mine, name).copy_(p)


def emb_pair(impl: ModuleType, spec: dict[str, Any]) -> tuple[Any, LoRAEmbedding]:
    """The learner's LoRAEmbedding and peft_zoo's over copies of one base, same random A and B."""
    (cls,) = require(impl, "LoRAEmbedding")
    base = emb_base(spec)
    mine = call_learner(
        lambda: cls(copy.deepcopy(base), spec["rank"], spec["alpha"]), "LoRAEmbedding(...)", spec
    )
    check_shapes(mine, emb_shapes(spec), {}, spec)
    lib = LoRAEmbedding(copy.deepcopy(base), spec["rank"], spec["alpha"])
    _fill(lib, mine, ("lora_embedding_A", "lora_embedding_B"), spec["seed"])
    return mine, lib


def conv_pair(impl: ModuleType, spec: dict[str, Any]) -> tuple[Any, LoRAConv]:
    """The learner's LoRAConv2d and peft_zoo's LoRAConv over copies of one base, same random A, B."""
    (cls,) = require(impl, "LoRAConv2d")
    base = conv_base(spec)
    mine = call_learner(
        lambda: cls(copy.deepcopy(base), spec["rank"], spec["alpha"]), "LoRAConv2d(...)", spec
    )
    check_shapes(mine, conv_shapes(spec), CONV_HINTS, spec)
    lib = LoRAConv(copy.deepcopy(base), spec["rank"], spec["alpha"])
    _fill(lib, mine, ("lora_A", "lora_B"), spec["seed"])
    return mine, lib


def ids_for(spec: dict[str, Any]) -> torch.Tensor:
    g = torch.Generator().manual_seed(spec["seed"])
    return torch.randint(0, spec["vocab"], spec["lead"], generator=g)


def emb_forward_bugs(lib: LoRAEmbedding, ids: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    a, b, s = lib.lora_embedding_A, lib.lora_embedding_B, lib.scale
    return {
        NO_SCALE_E: lambda: lib.base(ids) + F.embedding(ids, a.T) @ b.T,
        LOOKUP_ROWS: lambda: lib.base(ids) + F.embedding(ids, a) @ b.T * s,
    }


def emb_merge_bugs(w0: torch.Tensor, lib: LoRAEmbedding) -> dict[str, Callable[[], torch.Tensor]]:
    a, b, s = lib.lora_embedding_A, lib.lora_embedding_B, lib.scale
    return {MERGE_T: lambda: w0 + s * b @ a}


def conv_forward_bugs(lib: LoRAConv, x: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    base = lib.base
    h = F.conv2d(x, lib.lora_A, None, base.stride, base.padding, base.dilation)
    return {NO_SCALE_C: lambda: base(x) + F.conv2d(h, lib.lora_B)}


def conv_delta_bugs(lib: LoRAConv) -> dict[str, Callable[[], torch.Tensor]]:
    a, b = lib.lora_A, lib.lora_B
    product = b.flatten(1) @ a.flatten(1)
    return {RESHAPE_T: lambda: product.T.reshape(b.shape[0], *a.shape[1:]) * lib.scale}


def conv_input(spec: dict[str, Any]) -> torch.Tensor:
    g = torch.Generator().manual_seed(spec["seed"] + 1)
    return torch.randn(2, spec["in"], spec["size"], spec["size"], generator=g, dtype=torch.float64)
