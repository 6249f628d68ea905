"""The model zoo and the hypothesis strategies of the injection graders (challenges 04, 05, 09, 10).

- small models (float64 unless asked otherwise) whose ``nn.Linear`` layers sit at every kind of dotted
  path: inside ``nn.Sequential`` (``encoder.0``), ``nn.ModuleList`` (``blocks.1.attn.branch.q``),
  both (``layers.0.2``) and residual units several levels deep;
- hypothesis strategies that draw which of those layers to target (and bad names).

The checks that use them: :mod:`.injection_calls` (calling the learner's injector) and
:mod:`.injection_checks` (the module tree, the flags, the parameters, the behaviour).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from hypothesis import strategies as st
from torch import nn

from peft_zoo.models import TinyMLP, TinyTransformer, TinyTransformerBlock, TinyTransformerConfig
from peft_zoo.testing import alphas, seeds

# ----------------------------------------------------------------------------- the model zoo


class Stack(nn.Module):
    """``(..., d) -> (..., d)``: an ``nn.ModuleList`` of ``nn.Sequential`` residual layers.

    Linear paths: ``inp``, ``layers.{0,1}.0``, ``layers.{0,1}.2``, ``out`` (no bias).
    """

    def __init__(self, d_model: int = 6, n_layers: int = 2) -> None:
        super().__init__()
        self.d_model = d_model
        self.inp = nn.Linear(d_model, d_model)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.Tanh(), nn.Linear(2 * d_model, d_model))
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for layer in self.layers:
            h = h + layer(h)
        return self.out(self.norm(h))


D_MODEL = 6  # every zoo model maps (..., 6) -> (..., 6) except the token classifier


def _transformer() -> nn.Module:
    cfg = TinyTransformerConfig(vocab_size=11, max_len=6, d_model=D_MODEL, n_heads=2, d_ff=8, n_layers=2)
    return TinyTransformer(cfg)


_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "TinyMLP": lambda: TinyMLP(d_in=D_MODEL, d_hidden=D_MODEL, d_out=D_MODEL),
    "TinyTransformerBlock": lambda: TinyTransformerBlock(d_model=D_MODEL, n_heads=2, d_ff=8),
    "Stack": Stack,
    "TinyTransformer": _transformer,
}
KINDS: tuple[str, ...] = tuple(_BUILDERS)
# Models that map (..., d_model) -> (..., d_model), so an AdapterBlock can wrap them.
SQUARE_KINDS: tuple[str, ...] = ("TinyMLP", "TinyTransformerBlock", "Stack")


def build_model(kind: str, seed: int, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A fresh model of ``kind`` in ``dtype``; the same ``seed`` gives the same weights."""
    torch.manual_seed(seed)
    return _BUILDERS[kind]().to(dtype)


def example_input(kind: str, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """An input batch for a model of ``kind``."""
    g = torch.Generator().manual_seed(seed + 1)
    if kind == "TinyTransformer":
        return torch.randint(0, 11, (2, 5), generator=g)  # (B, T) token ids
    if kind == "TinyTransformerBlock":
        return torch.randn(2, 3, D_MODEL, generator=g, dtype=dtype)  # (B, T, d)
    return torch.randn(3, D_MODEL, generator=g, dtype=dtype)  # (B, d)


def _names(kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    model = _BUILDERS[kind]()
    linears = tuple(n for n, m in model.named_modules() if isinstance(m, nn.Linear))
    others = tuple(n for n, m in model.named_modules() if not isinstance(m, nn.Linear))
    return linears, others


LINEARS: dict[str, tuple[str, ...]] = {}  # kind -> dotted paths of its nn.Linear layers
NON_LINEARS: dict[str, tuple[str, ...]] = {}  # kind -> every other module path ('' is the root)
for _kind in KINDS:
    LINEARS[_kind], NON_LINEARS[_kind] = _names(_kind)


def missing_names(kind: str) -> tuple[str, ...]:
    """Names that ``named_modules()`` does not list: a parameter path, an index past the end,
    a bare last component of a nested path, a typo."""
    nested_all = [n for n in LINEARS[kind] if "." in n]
    nested = next((n for n in nested_all if not n.rpartition(".")[2].isdigit()), nested_all[0])
    container = nested.split(".")[0]
    return (
        f"{LINEARS[kind][0]}.weight",  # a parameter, not a module
        f"{container}.9",  # index / attribute that does not exist
        nested.rpartition(".")[2],  # the short name only ("fc1" for "encoder.2.branch.fc1")
        nested.upper(),  # wrong case
        "no_such_layer",
    )


# ----------------------------------------------------------------------------- strategies


@st.composite
def injection_cases(
    draw: st.DrawFn, kinds: Sequence[str] = KINDS, min_size: int = 1, max_rank: int = 4
) -> dict[str, Any]:
    """A model kind, a non-empty list of its Linear paths in a drawn order, rank, alpha, seed."""
    kind = draw(st.sampled_from(list(kinds)))
    names = draw(st.lists(st.sampled_from(LINEARS[kind]), min_size=min_size, unique=True))
    return {
        "model": kind,
        "names": names,
        "rank": draw(st.integers(1, max_rank)),
        "alpha": draw(alphas()),
        "seed": draw(seeds()),
    }


@st.composite
def bad_name_cases(draw: st.DrawFn, kinds: Sequence[str] = KINDS) -> dict[str, Any]:
    """Valid Linear paths with one bad name inserted *after* at least one of them, so an
    injector that mutates before validating has already changed something when it fails."""
    case = draw(injection_cases(kinds))
    problem = draw(st.sampled_from(["does not exist", "is not an nn.Linear"]))
    pool = missing_names(case["model"]) if problem == "does not exist" else NON_LINEARS[case["model"]]
    bad = draw(st.sampled_from(pool))
    at = draw(st.integers(1, len(case["names"])))
    return {**case, "names": [*case["names"][:at], bad, *case["names"][at:]], "bad": bad, "problem": problem}
