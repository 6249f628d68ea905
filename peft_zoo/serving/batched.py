"""Many LoRA adapters in one batch: stacked adapter tensors, chosen per sample by an index tensor.

A serving batch often mixes requests for different fine-tuned adapters over one frozen
base. Splitting the batch per adapter (Hugging Face PEFT's ``adapter_names=`` mixed batch)
costs one loop iteration, and on a GPU one host synchronisation, per distinct adapter. Here
every adapter lives in a slot of stacked tensors and a LongTensor ``adapter_ids (B,)``
picks the slot of each sample (``-1``: base model only)::

    y[b] = W0 x[b] + bias + s[i] * B[i] (A[i] x[b])      with i = adapter_ids[b]
    A: (N, r, in)    B: (N, out, r)    s: (N,) per-slot scale alpha / r

Switching adapters is a new index tensor, nothing else. Adapters of a smaller rank sit in
a slot zero-padded to ``r`` (the padded rows and columns add exactly zero).

How each sample reaches its slot (four strategies that give the same numbers, and the
shape-only ``"auto"`` rule that picks one, so the same code runs under ``torch.export`` /
CUDA graphs) is :mod:`peft_zoo.serving.routing`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, TypedDict

import torch
from torch import nn

from ..core.base import AdapterModule
from ..core.checks import (
    check_bool,
    check_linear,
    check_module,
    check_positive_float,
    check_positive_int,
)
from ..injection.surgery import as_name_list, replace_linears
from ..lora import LoRALinear, lora_scale
from .routing import BAG_MAX_TOKENS, DENSE_MAX_INNER, STRATEGIES, STRATEGY_FNS, Routing, choose_strategy

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "BAG_MAX_TOKENS",
    "DENSE_MAX_INNER",
    "STRATEGIES",
    "BatchedLoRALinear",
    "BatchedOptions",
    "Routing",
    "batched_lora_layers",
    "inject_batched_lora",
    "use_adapters",
]

# The routing of the innermost ``use_adapters`` blocks: id(layer) -> Routing.
_ACTIVE: contextvars.ContextVar[dict[int, Routing] | None] = contextvars.ContextVar(
    "peft_zoo_active_routing", default=None
)


class BatchedLoRALinear(AdapterModule):
    """A frozen ``nn.Linear`` plus ``num_adapters`` LoRA adapters, chosen per sample.

    Args:
        base: the layer to adapt; frozen.
        num_adapters: ``N`` > 0 adapter slots.
        rank: ``r`` > 0, the largest rank a slot holds (smaller ones are zero-padded).
        alpha: default scale numerator for every slot (defaults to ``rank``, scale 1).
        rslora: default slot scale ``alpha / sqrt(r)`` instead of ``alpha / r``.
        strategy: one of ``STRATEGIES`` (see the module docstring); ``"auto"`` by default.

    Parameters: ``lora_A (N, r, in)``, ``lora_B (N, out, r)`` (each slot initialised like
    :class:`LoRALinear`: A Kaiming-uniform, B zero, so every slot starts equal to the base);
    buffer ``lora_scale (N,)``. The parameters are *stored* as ``(N, in, r)`` and
    ``(N, r, out)`` and exposed as transposed views, so both projections can read table rows
    in place (the ``"bag"`` strategy); the shapes users, optimizers and checkpoints see are
    still ``(N, r, in)`` and ``(N, out, r)``.

    ``forward(x, adapter_ids=None)``: ``x (B, ..., in) -> (B, ..., out)``; ``adapter_ids``
    ``(B,)``, or taken from the enclosing :func:`use_adapters` block.
    """

    adapter_param_names = ("lora_A", "lora_B")
    lora_scale: torch.Tensor  # (N,) buffer, registered in __init__

    def __init__(
        self,
        base: nn.Linear,
        num_adapters: int,
        rank: int,
        alpha: float | None = None,
        *,
        rslora: bool = False,
        strategy: str = "auto",
    ) -> None:
        check_linear(base, "BatchedLoRALinear base")
        num_adapters = check_positive_int(num_adapters, "num_adapters")
        rank = check_positive_int(rank, "rank")
        alpha = float(rank) if alpha is None else check_positive_float(alpha, "alpha")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        check_bool(rslora, "rslora")
        super().__init__()
        self.base = base
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.num_adapters = num_adapters
        self.rank = rank
        self.alpha = alpha
        self.rslora = bool(rslora)
        self.strategy = strategy
        device, dtype = base.weight.device, base.weight.dtype
        # Stored as (N, in, r) and (N, r, out), exposed as (N, r, in) and (N, out, r): see the
        # class docstring.
        self.lora_A = nn.Parameter(
            torch.empty(num_adapters, self.in_features, rank, device=device, dtype=dtype).transpose(1, 2)
        )
        self.lora_B = nn.Parameter(
            torch.empty(num_adapters, rank, self.out_features, device=device, dtype=dtype).transpose(1, 2)
        )
        default = lora_scale(rank, alpha, self.rslora)
        self.register_buffer("lora_scale", torch.full((num_adapters,), default, device=device, dtype=dtype))
        self.reset_lora_parameters()
        # Frozen last: a failed constructor (a table too large to allocate) leaves the caller's
        # layer as it was, requires_grad included.
        self.base.requires_grad_(False)

    # ------------------------------------------------------------------ slots

    @torch.no_grad()
    def reset_lora_parameters(self) -> None:
        """Every slot as a fresh :class:`LoRALinear`: A Kaiming-uniform, B = 0."""
        for i in range(self.num_adapters):
            nn.init.kaiming_uniform_(self.lora_A[i], a=math.sqrt(5))
        self.lora_B.zero_()

    @torch.no_grad()
    def set_slot(self, slot: int, lora_A: torch.Tensor, lora_B: torch.Tensor, scale: float) -> None:
        """Copy one adapter (``A (r', in)``, ``B (out, r')``, ``r' <= rank``) into ``slot``,
        zero-padding the unused ranks. Checks everything before writing."""
        self.check_slot(slot, lora_A, lora_B, scale)
        r = lora_A.shape[0]
        self.lora_A[slot].zero_()
        self.lora_B[slot].zero_()
        self.lora_A[slot, :r].copy_(lora_A)
        self.lora_B[slot, :, :r].copy_(lora_B)
        self.lora_scale[slot] = scale

    def check_slot(self, slot: int, lora_A: torch.Tensor, lora_B: torch.Tensor, scale: float) -> None:
        """Raise a ValueError naming the problem if ``(lora_A, lora_B, scale)`` cannot go into ``slot``."""
        if not 0 <= slot < self.num_adapters:
            raise IndexError(f"slot {slot} out of range: this layer has {self.num_adapters} slots")
        if lora_A.dim() != 2 or lora_B.dim() != 2:
            raise ValueError(
                f"expected lora_A (r, {self.in_features}) and lora_B ({self.out_features}, r), got "
                f"{tuple(lora_A.shape)} and {tuple(lora_B.shape)}"
            )
        r = lora_A.shape[0]
        if lora_A.shape[1] != self.in_features or lora_B.shape != (self.out_features, r):
            raise ValueError(
                f"shape mismatch: this layer needs lora_A (r, {self.in_features}) and lora_B "
                f"({self.out_features}, r); got {tuple(lora_A.shape)} and {tuple(lora_B.shape)}"
            )
        if r > self.rank:
            raise ValueError(f"adapter rank {r} exceeds this layer's slot rank {self.rank}")
        if not math.isfinite(scale):
            raise ValueError(f"scale must be finite, got {scale}")
        if not (bool(torch.isfinite(lora_A).all()) and bool(torch.isfinite(lora_B).all())):
            raise ValueError("adapter weights contain NaN or inf")

    def slot_as_lora(self, slot: int) -> LoRALinear:
        """A standalone :class:`LoRALinear` computing what ``slot`` computes (shares ``base``;
        copies the adapter weights): for checks, or to merge one adapter for serving."""
        layer = LoRALinear(self.base, self.rank)
        with torch.no_grad():
            layer.lora_A.copy_(self.lora_A[slot])
            layer.lora_B.copy_(self.lora_B[slot])
        layer.scale = float(self.lora_scale[slot])
        return layer

    # ------------------------------------------------------------------ forward

    def resolve_strategy(self, tokens: int) -> str:
        """The strategy ``"auto"`` takes for ``tokens`` tokens per sample (shape-only rule)."""
        return choose_strategy(self.strategy, self.num_adapters, self.rank, tokens)

    def _routing(self, adapter_ids: torch.Tensor | Routing | None) -> Routing:
        if adapter_ids is not None:
            return (
                adapter_ids if isinstance(adapter_ids, Routing) else Routing(adapter_ids, self.num_adapters)
            )
        active = _ACTIVE.get()
        routing = None if active is None else active.get(id(self))
        if routing is None:
            raise RuntimeError(
                "BatchedLoRALinear needs adapter ids: call it as layer(x, adapter_ids) or run the model "
                "inside `with use_adapters(model, adapter_ids):`"
            )
        return routing

    def forward(self, x: torch.Tensor, adapter_ids: torch.Tensor | Routing | None = None) -> torch.Tensor:
        """``x (B, ..., in) -> (B, ..., out)``; sample ``b`` uses slot ``adapter_ids[b]``."""
        x = _float_input(x)
        route = self._routing(adapter_ids)
        if x.dim() < 2 or x.shape[-1] != self.in_features or x.shape[0] != route.batch_size:
            raise ValueError(
                f"BatchedLoRALinear expects x of shape (batch={route.batch_size}, ..., {self.in_features}) "
                f"for {route.batch_size} adapter ids, got {tuple(x.shape)}"
            )
        if route.num_adapters > self.num_adapters:
            raise ValueError(
                f"the adapter ids were checked against {route.num_adapters} slots, this layer has "
                f"{self.num_adapters}"
            )
        lead = x.shape[:-1]
        x3 = x.reshape(lead[0], math.prod(lead[1:]), self.in_features)  # (B, T, in); B or T may be 0
        if x3.numel() == 0:  # an empty batch (or empty sequences): the empty output, as LoRALinear gives
            return self.base(x3).reshape(*lead, self.out_features)
        strategy = self.resolve_strategy(x3.shape[1])
        y = STRATEGY_FNS[strategy](x3, self.base(x3), self.lora_A, self.lora_B, self.lora_scale, route)
        return y.reshape(*lead, self.out_features)

    # ------------------------------------------------------------------ protocol

    def unload_refusal(self, merge: bool) -> str | None:
        """Why :func:`~peft_zoo.merge_and_unload` / :func:`~peft_zoo.unload` refuse this layer."""
        return "it holds many adapters, chosen per sample; pick one and build a LoRALinear"

    def unload_replacement(self, merge: bool) -> nn.Module:
        """Never called: :meth:`unload_refusal` always refuses."""
        raise RuntimeError(self.unload_refusal(merge))

    def adapter_config(self) -> dict[str, object]:
        return {
            "method": "batched_lora",
            "num_adapters": self.num_adapters,
            "rank": self.rank,
            "alpha": self.alpha,
            "rslora": self.rslora,
        }

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"num_adapters={self.num_adapters}, rank={self.rank}, strategy={self.strategy!r}"
        )


def _float_input(x: object) -> torch.Tensor:
    """``x`` if it is a floating-point tensor; else a ``TypeError`` naming what it is."""
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x
    got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
    raise TypeError(f"BatchedLoRALinear expects x to be a floating-point tensor, got {got}")


# ---------------------------------------------------------------------- model-level API


class BatchedOptions(TypedDict, total=False):
    """The keyword arguments :func:`inject_batched_lora` passes to :class:`BatchedLoRALinear`."""

    rslora: bool
    strategy: str


def batched_lora_layers(model: nn.Module) -> dict[str, BatchedLoRALinear]:
    """``name -> layer`` for every :class:`BatchedLoRALinear` in ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, BatchedLoRALinear)}


def inject_batched_lora(
    model: nn.Module,
    linear_names: str | Iterable[str],
    num_adapters: int,
    rank: int,
    alpha: float | None = None,
    **kwargs: Unpack[BatchedOptions],
) -> tuple[nn.Module, list[nn.Parameter]]:
    """Replace each named ``nn.Linear`` with a :class:`BatchedLoRALinear` of ``num_adapters``
    slots (all or nothing, like :func:`~peft_zoo.inject_lora`; names as ``named_modules()``
    prints them; :func:`~peft_zoo.injection.targets.find_targets` selects them by pattern or layer range).

    ``kwargs`` go to :class:`BatchedLoRALinear` (``rslora``, ``strategy``). Returns
    ``(model, [A_1, B_1, A_2, B_2, ...])`` in name order. Like :func:`~peft_zoo.inject_lora`
    it freezes every parameter of ``model`` that is not an adapter parameter.
    """

    check_module(model, "inject_batched_lora: model")
    names = as_name_list(linear_names, "linear_names")
    check_positive_int(num_adapters, "num_adapters")
    check_positive_int(rank, "rank")
    params = replace_linears(
        model,
        names,
        lambda _n, lin: BatchedLoRALinear(lin, num_adapters, rank, alpha, **kwargs),
        "inject_batched_lora",
        allow_conv1d=False,
    )
    return model, params


@contextlib.contextmanager
def use_adapters(model: nn.Module, adapter_ids: torch.Tensor) -> Iterator[Routing]:
    """Route ``adapter_ids (B,)`` to every batched layer of ``model`` for the forwards inside::

        with use_adapters(model, torch.tensor([0, 3, -1, 3])):
            out = model(input_ids)          # unchanged model code, e.g. a transformers forward

    The ids are checked and turned into a :class:`Routing` once, then shared by every
    layer. Blocks nest (an inner block overrides the outer one for its model) and are
    local to the thread / async context that opened them.
    """
    check_module(model, "use_adapters: model")
    layers = batched_lora_layers(model)
    if not layers:
        raise ValueError(
            "use_adapters: the model has no BatchedLoRALinear layers (inject_batched_lora first)"
        )
    route = Routing(adapter_ids, min(layer.num_adapters for layer in layers.values()))
    current = _ACTIVE.get() or {}
    token = _ACTIVE.set({**current, **{id(layer): route for layer in layers.values()}})
    try:
        yield route
    finally:
        _ACTIVE.reset(token)
