"""How one batch's adapter ids reach the stacked adapter tables of a
:class:`~peft_zoo.serving.batched.BatchedLoRALinear`: the id lookups shared by every layer
(:class:`Routing`) and the four strategies that compute ``base(x) + s_i B_i (A_i x)``.

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

Each strategy is a function of tensors (``STRATEGY_FNS``): ``x3 (B, T, in)``, the base
output ``y (B, T, out)`` it may accumulate into in place, the layer's ``lora_A (N, r, in)``,
``lora_B (N, out, r)`` and per-slot ``scale (N,)``, and the batch's :class:`Routing`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "BAG_MAX_TOKENS",
    "DENSE_MAX_INNER",
    "STRATEGIES",
    "STRATEGY_FNS",
    "Routing",
    "choose_strategy",
    "table_rows",
]

STRATEGIES = ("auto", "bmm", "bag", "dense", "loop")
# "auto" thresholds: measured crossovers, see the module docstring.
BAG_MAX_TOKENS = 2  # tokens per sample up to which "bag" beats "bmm"
DENSE_MAX_INNER = 16  # N * r up to which "dense" beats gathering
_INT_DTYPES = frozenset({torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64})  # adapter ids


def choose_strategy(strategy: str, num_adapters: int, rank: int, tokens: int) -> str:
    """The strategy ``strategy`` stands for with ``num_adapters`` slots of rank ``rank`` and
    ``tokens`` tokens per sample: itself, or for ``"auto"`` the shape-only rule above."""
    if strategy != "auto":
        return strategy
    if num_adapters * rank <= DENSE_MAX_INNER:
        return "dense"
    return "bag" if tokens <= BAG_MAX_TOKENS else "bmm"


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
        # Whether every sample has an adapter (no -1): known without a host synchronisation
        # only for CPU ids; None (unknown) keeps the mask in every per-sample scale.
        self.all_kept: bool | None = None
        if adapter_ids.device.type == "cpu" and not _exporting() and adapter_ids.numel():
            lo, hi = int(adapter_ids.min()), int(adapter_ids.max())
            self.all_kept = lo >= 0
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
        if self.all_kept:  # no -1 ids: the gather alone (one op fewer in every layer)
            return slot_scale.index_select(0, self.safe_ids)
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


# ---------------------------------------------------------------------- strategies
# Each takes x3 (B, T, in) and the base output y = base(x3), and returns y + delta, (B, T, out).


def table_rows(param: torch.Tensor) -> torch.Tensor:
    """A stacked ``(N, a, b)`` adapter parameter as the ``(N, b, a)`` table it is stored as:
    ``lora_A`` as ``(N, in, r)``, ``lora_B`` as ``(N, r, out)``; a view unless someone
    replaced the parameter's storage."""
    rows = param.transpose(1, 2)
    return rows if rows.is_contiguous() else rows.contiguous()


def _down(x3: torch.Tensor, lora_A: torch.Tensor, scale: torch.Tensor, route: Routing) -> torch.Tensor:
    """Gathered down-projection, scaled: ``s_b * x_b A_b^T``, shape (B, T, r)."""
    a_t = table_rows(lora_A).index_select(0, route.safe_ids)  # (B, in, r), a copy
    s = route.sample_scale(scale)[:, None, None]  # (B, 1, 1)
    if x3.shape[1] <= BAG_MAX_TOKENS:
        return torch.bmm(x3, a_t).mul_(s)  # (B, T, r), scaled in place
    # With many tokens the wide-by-thin product runs ~1.5x faster as A_b x_b^T, (B, r, T),
    # on CPU BLAS; with few tokens the other orientation wins (benchmarks/batched_lora.py).
    return torch.bmm(a_t.transpose(1, 2), x3.transpose(1, 2)).mul_(s).transpose(1, 2)  # (B, T, r), a view


def _forward_bmm(
    x3: torch.Tensor,
    y: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scale: torch.Tensor,
    route: Routing,
) -> torch.Tensor:
    h = _down(x3, lora_A, scale, route)  # (B, T, r)
    b_rows = table_rows(lora_B).index_select(0, route.safe_ids)  # (B, r, out), a copy
    return y.baddbmm_(h, b_rows)  # base + h @ B_b^T, accumulated in place


def _forward_bag(
    x3: torch.Tensor,
    y: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scale: torch.Tensor,
    route: Routing,
) -> torch.Tensor:
    bsz, tokens, _ = x3.shape
    r, d_in, d_out = lora_A.shape[1], lora_A.shape[2], lora_B.shape[1]
    # Both projections as weighted sums of table rows, read in place (the aten op directly:
    # F.embedding_bag would rebuild the same indices and offsets in every layer).
    # Down: h[b, t, :] = sum_i x[b, t, i] * A_rows[slot_b * in + i]   (A_rows: (N * in, r)).
    rows, offsets = route.bag_index(d_in, tokens)  # (B * T * in,), (B * T,)
    table = table_rows(lora_A).reshape(-1, r)
    h = torch.embedding_bag(table, rows, offsets, False, 0, False, x3.reshape(-1), False, None)[0]
    h.view(bsz, tokens, r).mul_(route.sample_scale(scale)[:, None, None])  # (B * T, r), scaled in place
    # Up: delta[b, t, :] = sum_j h[b, t, j] * B_rows[slot_b * r + j]   (B_rows: (N * r, out)).
    rows, offsets = route.bag_index(r, tokens)  # (B * T * r,), (B * T,)
    table = table_rows(lora_B).reshape(-1, d_out)
    delta = torch.embedding_bag(table, rows, offsets, False, 0, False, h.reshape(-1), False, None)[0]
    return y.add_(delta.view(bsz, tokens, d_out))


def _forward_dense(
    x3: torch.Tensor,
    y: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scale: torch.Tensor,
    route: Routing,
) -> torch.Tensor:
    n, r, d_in = lora_A.shape
    d_out = lora_B.shape[1]
    h_all = F.linear(x3, lora_A.reshape(n * r, d_in))  # (B, T, N*r): every slot
    mask = route.onehot(n).to(x3.dtype) * scale  # (B, N): own slot's scale, else 0
    h = h_all * mask.repeat_interleave(r, dim=1)[:, None, :]  # (B, T, N*r)
    table = table_rows(lora_B).reshape(n * r, d_out)  # (N*r, out)
    y.view(-1, d_out).addmm_(h.reshape(-1, n * r), table)  # y += h @ table, in place
    return y


def _forward_loop(
    x3: torch.Tensor,
    y: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scale: torch.Tensor,
    route: Routing,
) -> torch.Tensor:
    deltas = torch.zeros_like(y)
    for slot in route.ids.unique().tolist():  # host sync + data-dependent loop: reference only
        if slot < 0:
            continue
        rows = (route.ids == slot).nonzero().squeeze(1)
        h = x3.index_select(0, rows) @ lora_A[slot].T  # (b_i, T, r)
        deltas = deltas.index_add(0, rows, (h @ lora_B[slot].T) * scale[slot])
    return y + deltas


Strategy = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Routing], torch.Tensor
]
STRATEGY_FNS: dict[str, Strategy] = {
    "bmm": _forward_bmm,
    "bag": _forward_bag,
    "dense": _forward_dense,
    "loop": _forward_loop,
}
