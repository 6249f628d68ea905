"""Several named LoRA adapters side by side on one frozen layer, as Hugging Face PEFT keeps them.

PEFT's ``LoraLayer`` holds one ``lora_A`` / ``lora_B`` pair per adapter *name* and a list of
active names; :class:`NamedLoRALinear` does the same with peft_zoo's shapes::

    y = W0 x + b + sum over active names a of  s_a B_a (A_a dropout_a(x))
    A_a: (r_a, in)    B_a: (out, r_a)    s_a = alpha_a / r_a  (alpha_a / sqrt(r_a) with rsLoRA)

Every adapter keeps its own rank, alpha, rsLoRA flag and dropout. Three ways to run it:

- the active adapters (:meth:`set_active`), summed in the order given, as PEFT does;
- none at all while :attr:`disabled` is set (PEFT's ``disable_adapter()`` context);
- one adapter per *sample* (PEFT's ``adapter_names=`` mixed batch, ``"__base__"`` for the
  base model): inside :func:`mixed_batch` the layer stacks its adapters into the zero-padded
  tables of :mod:`peft_zoo.serving.routing` once (cached until a weight changes) and sends
  each sample to its own slot with one of the batched strategies, with no Python loop over
  the adapters and no host synchronisation.

The model-level API (``add_adapter``, ``set_adapter``, ...) is :mod:`peft_zoo.serving.named`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from ..core.base import AdapterModule
from ..core.checks import bias_of, check_last_dim, linear_features, weight_of
from ..lora import LoRALinear
from .routing import STRATEGIES, STRATEGY_FNS, Routing, choose_strategy

__all__ = [
    "BASE_NAME",
    "LoraHyper",
    "NamedAdapterLayer",
    "NamedLoRALinear",
    "mixed_batch",
    "mixed_names",
]

BASE_NAME = "__base__"  # PEFT's name for "no adapter" in a mixed batch

# The names of the innermost ``mixed_batch`` block: id(layer) -> one adapter name per sample.
_MIXED: contextvars.ContextVar[dict[int, tuple[str, ...]] | None] = contextvars.ContextVar(
    "peft_zoo_mixed_names", default=None
)


def mixed_names(layer: nn.Module) -> tuple[str, ...] | None:
    """The per-sample adapter names the enclosing :func:`mixed_batch` gives ``layer``, or ``None``.
    Any layer kind that holds named adapters (LoRA here; bottleneck adapters can do the same)
    reads its routing through this one function."""
    active = _MIXED.get()
    return None if active is None else active.get(id(layer))


@contextlib.contextmanager
def mixed_batch(layers: Iterable[object], names: Sequence[str]) -> Iterator[None]:
    """Give every layer in ``layers`` the per-sample ``names`` (already checked) for the block."""
    current = _MIXED.get() or {}
    token = _MIXED.set({**current, **{id(layer): tuple(names) for layer in layers}})
    try:
        yield
    finally:
        _MIXED.reset(token)


@runtime_checkable
class NamedAdapterLayer(Protocol):
    """What the model-level API (:mod:`peft_zoo.serving.named`) needs of a layer holding named
    adapters: :class:`NamedLoRALinear` here, ``NamedIA3Linear``; another kind (bottleneck adapters) joins by
    implementing the same attributes and reading :func:`mixed_names` in its forward."""

    active: list[str]
    disabled: bool

    @property
    def adapter_names(self) -> list[str]: ...

    def set_active(self, names: Sequence[str]) -> None: ...

    def remove(self, name: str) -> None: ...

    def parameters_of(self, name: str) -> list[nn.Parameter]: ...


@dataclass(frozen=True)
class LoraHyper:
    """One adapter's hyperparameters: rank ``r``, ``alpha``, rsLoRA flag, ``scale``, dropout."""

    rank: int
    alpha: float
    rslora: bool
    scale: float
    dropout: float


class NamedLoRALinear(AdapterModule):
    """A frozen ``nn.Linear`` (or GPT-2 ``Conv1D``) with any number of named LoRA adapters.

    Args:
        base: the layer to adapt; frozen.
        fan_in_fan_out: the base stores its weight ``(in, out)`` (GPT-2's ``Conv1D``); ``None``
            infers it from the base's type.
        strategy: how a mixed batch reaches its adapters (one of ``routing.STRATEGIES``).

    Parameters: ``lora_A[name] (r, in)``, ``lora_B[name] (out, r)`` in two ``ParameterDict`` s
    (state-dict keys ``lora_A.<name>``, ``lora_B.<name>``). ``forward`` maps
    ``(B, ..., in) -> (B, ..., out)``. Adapters are added with :meth:`add_lora` (taking over a
    built :class:`~peft_zoo.LoRALinear`'s parameters, so every config option of
    :func:`~peft_zoo.adapt_model` carries over).
    """

    def __init__(
        self, base: nn.Module, *, fan_in_fan_out: bool | None = None, strategy: str = "auto"
    ) -> None:
        d_in, d_out, fan_in_fan_out = linear_features(base, "NamedLoRALinear base", fan_in_fan_out)
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        super().__init__()
        self.base = base
        self.in_features, self.out_features, self.fan_in_fan_out = d_in, d_out, fan_in_fan_out
        self.strategy = strategy
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.lora_dropout = nn.ModuleDict()
        self.hyper: dict[str, LoraHyper] = {}
        self.active: list[str] = []
        self.disabled = False
        self._tables: tuple[tuple[object, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
        self.base.requires_grad_(False)

    # ------------------------------------------------------------------ adapters

    @property
    def adapter_names(self) -> list[str]:
        """The names this layer holds, in the order they were added."""
        return list(self.lora_A.keys())

    def add_lora(self, name: str, lora: LoRALinear) -> None:
        """Hold ``lora``'s adapter (its very ``lora_A`` / ``lora_B`` parameters) under ``name``.
        ``lora`` must wrap this layer's own base; the new adapter is not activated."""
        if lora.base is not self.base:
            raise ValueError(f"adapter {name!r}: the LoRALinear wraps another base layer")
        if name in self.lora_A:
            raise ValueError(f"this layer already holds an adapter named {name!r}")
        self.lora_A[name] = lora.lora_A
        self.lora_B[name] = lora.lora_B
        self.lora_dropout[name] = lora.lora_dropout
        self.hyper[name] = LoraHyper(lora.rank, lora.alpha, lora.rslora, lora.scale, lora.dropout_p)

    def remove(self, name: str) -> None:
        """Drop adapter ``name`` (and from the active list); unknown names are ignored."""
        if name in self.lora_A:
            del self.lora_A[name], self.lora_B[name], self.lora_dropout[name]
            del self.hyper[name]
        self.active = [n for n in self.active if n != name]

    def set_active(self, names: Sequence[str]) -> None:
        """Run ``names`` (summed, in this order); names this layer does not hold are skipped,
        as PEFT skips an adapter that does not target a layer."""
        self.active = list(names)

    def as_lora(self, name: str) -> LoRALinear:
        """A :class:`LoRALinear` sharing this layer's base and adapter ``name``'s parameters
        (the same tensors, not copies): what saving one adapter by name writes."""
        h = self.hyper[name]
        layer = LoRALinear(
            self.base, h.rank, h.alpha, dropout=h.dropout, rslora=h.rslora, fan_in_fan_out=self.fan_in_fan_out
        )
        layer.lora_A, layer.lora_B = self.lora_A[name], self.lora_B[name]
        layer.scale = h.scale
        return layer

    def adapter_layer(self, name: str) -> LoRALinear:
        """Adapter ``name`` as a :class:`LoRALinear` view (:meth:`as_lora`): what saving writes."""
        return self.as_lora(name)

    def parameters_of(self, name: str) -> list[nn.Parameter]:
        """Adapter ``name``'s parameters (empty when this layer does not hold it)."""
        return [self.lora_A[name], self.lora_B[name]] if name in self.lora_A else []

    def adapter_named_parameters(self, prefix: str = "") -> Iterator[tuple[str, nn.Parameter]]:
        """``(qualified_name, parameter)`` for every adapter's ``lora_A`` and ``lora_B``."""
        dot = f"{prefix}." if prefix else ""
        for name in self.lora_A:
            yield f"{dot}lora_A.{name}", self.lora_A[name]
            yield f"{dot}lora_B.{name}", self.lora_B[name]

    # ------------------------------------------------------------------ weights

    def delta_weight(self, names: Iterable[str] | None = None) -> torch.Tensor:
        """``sum_a s_a B_a A_a`` over ``names`` (default: the active ones it holds), shape
        ``(out, in)``, formed in float32 at least."""
        w = weight_of(self.base)
        dtype = torch.promote_types(w.dtype, torch.float32)
        delta = torch.zeros(self.out_features, self.in_features, dtype=dtype, device=w.device)
        for name in self.active if names is None else names:
            if name in self.lora_A:
                delta += (self.lora_B[name].to(dtype) @ self.lora_A[name].to(dtype)) * self.hyper[name].scale
        return delta

    @property
    def weight(self) -> torch.Tensor:
        """The weight the active adapters apply, in the base's layout (``W0`` while disabled)."""
        w = weight_of(self.base)
        if self.disabled or not any(n in self.lora_A for n in self.active):
            return w
        return self._merged_weight()

    @property
    def bias(self) -> torch.Tensor | None:
        """The base layer's bias, ``(out,)`` (LoRA leaves it unchanged)."""
        return bias_of(self.base)

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, ..., in) -> (B, ..., out)``: the active adapters, or the mixed batch's."""
        check_last_dim(x, self.in_features, "NamedLoRALinear")
        result = self.base(x)
        if self.disabled:
            return result
        names = mixed_names(self)
        if names is not None:
            return self._mixed(x, result, names)
        for name in self.active:  # PEFT's loop: result + lora_B(lora_A(dropout(x))) * scaling
            if name in self.lora_A:
                h = F.linear(self.lora_dropout[name](x), self.lora_A[name])  # (..., r)
                result = result + F.linear(h, self.lora_B[name]) * self.hyper[name].scale
        return result

    def _mixed(self, x: torch.Tensor, result: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
        if x.dim() < 2 or x.shape[0] != len(names):
            raise ValueError(
                "Length of `adapter_names` should be the same as the number of inputs, but got "
                f"{len(names)} and {x.shape[0] if x.dim() else 0} respectively"
            )
        held = {n: i for i, n in enumerate(self.lora_A)}
        ids = [held.get(n, -1) for n in names]  # "__base__" and adapters not on this layer: -1
        if max(ids, default=-1) < 0 or x.numel() == 0:
            return result
        table_a, table_b, scale = self.stacked_tables()
        route = Routing(torch.tensor(ids, device=x.device), len(held))
        x3 = x.reshape(x.shape[0], -1, self.in_features)  # (B, T, in)
        y3 = result.reshape(x.shape[0], -1, self.out_features)  # (B, T, out)
        strategy = choose_strategy(self.strategy, len(held), table_a.shape[1], x3.shape[1])
        y = STRATEGY_FNS[strategy](x3, y3, table_a, table_b, scale, route)
        return y.reshape(result.shape)

    def stacked_tables(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All adapters in slot order (:attr:`adapter_names`), zero-padded to the largest rank
        ``R``: ``A (N, R, in)``, ``B (N, out, R)`` (stored as ``(N, in, R)`` / ``(N, R, out)``
        rows, the layout :mod:`.routing` reads in place) and ``scale (N,)``. Cached while no
        weight changes; rebuilt with gradients when a weight wants one."""
        params = [*self.lora_A.values(), *self.lora_B.values()]
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in params)
        key = (tuple(self.lora_A), tuple((id(p), p._version, p.dtype, p.device) for p in params))
        if not grad and self._tables is not None and self._tables[0] == key:
            return self._tables[1]
        with contextlib.nullcontext() if grad else torch.no_grad():
            r = max(h.rank for h in self.hyper.values())
            a_rows = torch.stack(
                [F.pad(a.T, (0, r - a.shape[0])) for a in self.lora_A.values()]
            )  # (N, in, R)
            b_rows = torch.stack([F.pad(b.T, (0, 0, 0, r - b.shape[1])) for b in self.lora_B.values()])
            ref = a_rows
            scale = torch.tensor([h.scale for h in self.hyper.values()], dtype=ref.dtype, device=ref.device)
            tables = (a_rows.transpose(1, 2), b_rows.transpose(1, 2), scale)  # (N, R, in), (N, out, R)
        if not grad:
            self._tables = (key, tables)
        return tables

    # ------------------------------------------------------------------ export

    @torch.no_grad()
    def unload_refusal(self, merge: bool) -> str | None:
        """Why :func:`~peft_zoo.merge_and_unload` / :func:`~peft_zoo.unload` cannot take this
        layer apart: only a merge whose weight would hold NaN or inf where ``W0`` did not."""
        if not merge or not any(n in self.lora_A for n in self.active):
            return None
        w = weight_of(self.base)
        merged = self._merged_weight()
        if bool((~torch.isfinite(merged) & torch.isfinite(w)).any()):
            return "its merged weight has NaN or inf entries"
        return None

    def _merged_weight(self) -> torch.Tensor:
        """``W0 + sum_active s B A`` in the base's layout and dtype (a new tensor)."""
        w = weight_of(self.base)
        delta = self.delta_weight()
        return (w.to(delta.dtype) + (delta.T if self.fan_in_fan_out else delta)).to(w.dtype)

    @torch.no_grad()
    def unload_replacement(self, merge: bool) -> nn.Module:
        """The module to put back: the base, holding ``W0 + sum_active s B A`` when ``merge``
        (PEFT's ``merge_and_unload`` merges the active adapters), else ``W0`` as it was."""
        if merge and any(n in self.lora_A for n in self.active):
            weight_of(self.base).copy_(self._merged_weight())
        return self.base

    def adapter_config(self) -> dict[str, object]:
        return {
            "method": "named_lora",
            "adapters": {n: asdict(h) for n, h in self.hyper.items()},
            "active": list(self.active),
        }

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"adapters={self.adapter_names}, active={self.active}"
            + (", disabled=True" if self.disabled else "")
        )
