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

**Strategies** (all give the same numbers, property-tested; ``strategy=`` picks one):

- ``"bmm"``: gather each sample's ``A`` and ``B`` (``index_select``), two batched matmuls,
  the second accumulating into the base output in place (``baddbmm_``). The gathers copy
  ``B * r * (in + out)`` numbers; with many tokens per sample that copy is negligible next
  to the matmuls, so this wins for long sequences.
- ``"bag"``: both projections as ``embedding_bag`` sums that read the stacked tables in
  place, no gathered copy: with ``A`` stored as ``(N, in, r)`` rows, ``x A_i^T`` is the sum
  of ``in`` rows weighted by ``x``; with ``B`` stored as ``(N, r, out)`` rows, ``h B_i^T`` is
  the sum of ``r`` rows weighted by ``h``. With one or two tokens per sample the adapter
  bytes *are* the cost (64 rank-8 adapters in flight weigh as much as the base weights),
  and reading them once instead of gather-copy-read wins (decode-like batches).
- ``"dense"``: no gather at all: every token goes through *all* ``N`` adapters'
  down-projections and a one-hot mask keeps its own; cost grows with ``N * r`` so it only
  pays for two or so slots.
- ``"loop"``: group samples by adapter and loop, as PEFT does. A host synchronisation per
  forward and Python control flow on the data: a reference, never chosen by ``"auto"``.

``"auto"`` (the default) picks by shape only, never by the values of the ids, so the same
code runs under ``torch.export`` / CUDA graphs without host synchronisation: ``"dense"`` when
``N * r <= DENSE_MAX_INNER``, else ``"bag"`` for at most ``BAG_MAX_TOKENS`` tokens per
sample and ``"bmm"`` beyond. The thresholds are crossovers measured with
``benchmarks/batched_lora.py`` on a BERT encoder of Geneformer geometry (2 CPU threads,
rank 8; time / base model): 64 adapters, 64 x 1 tokens: bag 1.22, bmm 1.27; 64 x 2: bag
1.19, bmm 1.21; 64 x 4: bmm 1.15, bag 1.19; 16 x 128: bmm 1.02-1.06, bag 1.13-1.23; two slots,
64 x 1: dense 1.10, bag 1.15; four slots: bag 1.16, dense 1.17.

The lookups that depend only on the ids (clamped ids, the keep mask, the embedding-bag row
indices) are computed once per forward by :class:`Routing` and shared by every layer.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
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

__all__ = [
    "BAG_MAX_TOKENS",
    "DENSE_MAX_INNER",
    "STRATEGIES",
    "BatchedLoRALinear",
    "Routing",
    "batched_lora_layers",
    "inject_batched_lora",
    "use_adapters",
]

STRATEGIES = ("auto", "bmm", "bag", "dense", "loop")
# "auto" thresholds: measured crossovers, see the module docstring.
BAG_MAX_TOKENS = 2  # tokens per sample up to which "bag" beats "bmm"
DENSE_MAX_INNER = 16  # N * r up to which "dense" beats gathering
_INT_DTYPES = frozenset({torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64})  # adapter ids


def _exporting() -> bool:
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


class Routing:
    """Everything about one batch's adapter ids that does not depend on a layer's weights,
    computed once per forward and shared by every batched layer.

    Args:
        adapter_ids: integer tensor ``(B,)``; ``-1`` means "base only".
        num_adapters: slots available; ids must lie in ``[-1, num_adapters)``.

    Values are checked on CPU tensors only: on an accelerator, or while tracing, that check
    would need a host synchronisation (use :meth:`AdapterBank.ids`, which checks names on
    the host before the ids ever reach the device).
    """

    def __init__(self, adapter_ids: torch.Tensor, num_adapters: int) -> None:
        if not isinstance(adapter_ids, torch.Tensor):
            raise TypeError(
                f"adapter_ids must be a LongTensor of shape (batch,), got {type(adapter_ids).__name__}"
            )
        if adapter_ids.dim() != 1:
            raise ValueError(f"adapter_ids must have shape (batch,), got {tuple(adapter_ids.shape)}")
        if adapter_ids.dtype not in _INT_DTYPES:  # float, complex, bool, quantized...: refused
            raise TypeError(f"adapter_ids must be an integer tensor (torch.long), got {adapter_ids.dtype}")
        if adapter_ids.device.type == "cpu" and not _exporting() and adapter_ids.numel():
            lo, hi = int(adapter_ids.min()), int(adapter_ids.max())
            if lo < -1 or hi >= num_adapters:
                bad = lo if lo < -1 else hi
                raise IndexError(
                    f"adapter id {bad} out of range: ids must lie in [-1, {num_adapters}) "
                    f"({num_adapters} adapter slots; -1 means base only)"
                )
        self.num_adapters = num_adapters
        self.ids = adapter_ids.long()  # (B,)
        self.safe_ids = self.ids.clamp(min=0)  # (B,) gather index; -1 rows are masked below
        self.keep = self.ids >= 0  # (B,) bool
        self._bag_index: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._onehot: dict[int, torch.Tensor] = {}
        self._keep: dict[torch.dtype, torch.Tensor] = {}

    @property
    def batch_size(self) -> int:
        return self.ids.shape[0]

    def sample_scale(self, slot_scale: torch.Tensor) -> torch.Tensor:
        """Per-sample scale ``(B,)``: the slot's scale, or 0 where the id is -1."""
        keep = self._keep.get(slot_scale.dtype)
        if keep is None:
            keep = self._keep[slot_scale.dtype] = self.keep.to(slot_scale.dtype)
        return slot_scale.index_select(0, self.safe_ids) * keep

    def bag_index(self, width: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """For a table whose slot ``i`` owns rows ``i * width ... i * width + width - 1``: the
        rows each token sums, flat ``(B * T * width,)``, and where each token's bag starts,
        ``(B * T,)``. Shared by every layer with the same ``width``."""
        key = (width, tokens)
        if key not in self._bag_index:
            dev = self.ids.device
            rows = self.safe_ids[:, None] * width + torch.arange(width, device=dev)  # (B, width)
            flat = rows[:, None, :].expand(-1, tokens, -1).reshape(-1)  # (B * T * width,)
            offsets = torch.arange(0, flat.shape[0], width, device=dev)  # (B * T,)
            self._bag_index[key] = (flat, offsets)
        return self._bag_index[key]

    def onehot(self, num_adapters: int) -> torch.Tensor:
        """``(B, N)`` float mask: 1 at each sample's slot, a zero row for -1."""
        if num_adapters not in self._onehot:
            hot = F.one_hot(self.safe_ids, num_adapters) * self.keep[:, None]
            self._onehot[num_adapters] = hot
        return self._onehot[num_adapters]


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
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        # Stored as (N, in, r) and (N, r, out), exposed as (N, r, in) and (N, out, r): see the
        # class docstring.
        self.lora_A = nn.Parameter(
            torch.empty(num_adapters, self.in_features, rank, **factory).transpose(1, 2)
        )
        self.lora_B = nn.Parameter(
            torch.empty(num_adapters, rank, self.out_features, **factory).transpose(1, 2)
        )
        default = lora_scale(rank, alpha, self.rslora)
        self.register_buffer("lora_scale", torch.full((num_adapters,), default, **factory))
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

    def _a_rows(self) -> torch.Tensor:
        """``lora_A`` as ``(N, in, r)``; a view unless someone replaced its storage."""
        rows = self.lora_A.transpose(1, 2)
        return rows if rows.is_contiguous() else rows.contiguous()

    def _b_rows(self) -> torch.Tensor:
        """``lora_B`` as ``(N, r, out)``; a view unless someone replaced its storage."""
        rows = self.lora_B.transpose(1, 2)
        return rows if rows.is_contiguous() else rows.contiguous()

    def resolve_strategy(self, tokens: int) -> str:
        """The strategy ``"auto"`` takes for ``tokens`` tokens per sample (shape-only rule)."""
        if self.strategy != "auto":
            return self.strategy
        if self.num_adapters * self.rank <= DENSE_MAX_INNER:
            return "dense"
        return "bag" if tokens <= BAG_MAX_TOKENS else "bmm"

    def _routing(self, adapter_ids: torch.Tensor | None) -> Routing:
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
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise TypeError(f"BatchedLoRALinear expects x to be a floating-point tensor, got {got}")
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
        y = _STRATEGY_FN[strategy](self, x3, route)  # (B, T, out)
        return y.reshape(*lead, self.out_features)

    # ------------------------------------------------------------------ protocol

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


# ---------------------------------------------------------------------- strategies
# Each takes x3 (B, T, in) and returns base(x3) + delta, shape (B, T, out).


def _down(layer: BatchedLoRALinear, x3: torch.Tensor, route: Routing) -> torch.Tensor:
    """Gathered down-projection, scaled: ``s_b * x_b A_b^T``, shape (B, T, r)."""
    a_t = layer._a_rows().index_select(0, route.safe_ids)  # (B, in, r), a copy
    s = route.sample_scale(layer.lora_scale)[:, None, None]  # (B, 1, 1)
    if x3.shape[1] <= BAG_MAX_TOKENS:
        return torch.bmm(x3, a_t) * s  # (B, T, r)
    # With many tokens the wide-by-thin product runs ~1.5x faster as A_b x_b^T, (B, r, T),
    # on CPU BLAS; with few tokens the other orientation wins (benchmarks/batched_lora.py).
    return (torch.bmm(a_t.transpose(1, 2), x3.transpose(1, 2)) * s).transpose(1, 2)  # (B, T, r), a view


def _forward_bmm(layer: BatchedLoRALinear, x3: torch.Tensor, route: Routing) -> torch.Tensor:
    h = _down(layer, x3, route)  # (B, T, r)
    b_rows = layer._b_rows().index_select(0, route.safe_ids)  # (B, r, out), a copy
    return layer.base(x3).baddbmm_(h, b_rows)  # base + h @ B_b^T, accumulated in place


def _forward_bag(layer: BatchedLoRALinear, x3: torch.Tensor, route: Routing) -> torch.Tensor:
    bsz, tokens, _ = x3.shape
    r, d_in, d_out = layer.rank, layer.in_features, layer.out_features
    # Both projections as weighted sums of table rows, read in place (the aten op directly:
    # F.embedding_bag would rebuild the same indices and offsets in every layer).
    # Down: h[b, t, :] = sum_i x[b, t, i] * A_rows[slot_b * in + i]   (A_rows: (N * in, r)).
    rows, offsets = route.bag_index(d_in, tokens)  # (B * T * in,), (B * T,)
    table = layer._a_rows().reshape(-1, r)
    h = torch.embedding_bag(table, rows, offsets, False, 0, False, x3.reshape(-1), False, None)[0]
    h = h * route.sample_scale(layer.lora_scale).repeat_interleave(tokens)[:, None]  # (B * T, r)
    # Up: delta[b, t, :] = sum_j h[b, t, j] * B_rows[slot_b * r + j]   (B_rows: (N * r, out)).
    rows, offsets = route.bag_index(r, tokens)  # (B * T * r,), (B * T,)
    table = layer._b_rows().reshape(-1, d_out)
    delta = torch.embedding_bag(table, rows, offsets, False, 0, False, h.reshape(-1), False, None)[0]
    return layer.base(x3).add_(delta.view(bsz, tokens, d_out))


def _forward_dense(layer: BatchedLoRALinear, x3: torch.Tensor, route: Routing) -> torch.Tensor:
    n, r = layer.num_adapters, layer.rank
    h_all = F.linear(x3, layer.lora_A.reshape(n * r, layer.in_features))  # (B, T, N*r): every slot
    mask = route.onehot(n).to(x3.dtype) * layer.lora_scale  # (B, N): own slot's scale, else 0
    h = h_all * mask.repeat_interleave(r, dim=1)[:, None, :]  # (B, T, N*r)
    table = layer._b_rows().reshape(n * r, layer.out_features)  # (N*r, out)
    y = layer.base(x3)
    y.view(-1, layer.out_features).addmm_(h.reshape(-1, n * r), table)  # y += h @ table, in place
    return y


def _forward_loop(layer: BatchedLoRALinear, x3: torch.Tensor, route: Routing) -> torch.Tensor:
    y = layer.base(x3)
    deltas = torch.zeros_like(y)
    for slot in route.ids.unique().tolist():  # host sync + data-dependent loop: reference only
        if slot < 0:
            continue
        rows = (route.ids == slot).nonzero().squeeze(1)
        h = x3.index_select(0, rows) @ layer.lora_A[slot].T  # (b_i, T, r)
        deltas = deltas.index_add(0, rows, (h @ layer.lora_B[slot].T) * layer.lora_scale[slot])
    return y + deltas


_STRATEGY_FN = {"bmm": _forward_bmm, "bag": _forward_bag, "dense": _forward_dense, "loop": _forward_loop}


# ---------------------------------------------------------------------- model-level API


def batched_lora_layers(model: nn.Module) -> dict[str, BatchedLoRALinear]:
    """``name -> layer`` for every :class:`BatchedLoRALinear` in ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, BatchedLoRALinear)}


def inject_batched_lora(
    model: nn.Module,
    linear_names: str | Iterable[str],
    num_adapters: int,
    rank: int,
    alpha: float | None = None,
    **kwargs: object,
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
