"""An LRU cache of output embeddings for repeated (input, adapter) pairs, never stale.

Evaluating many adapters over a fixed set of inputs (every cell of a dataset through every
task adapter) repeats work: the same (input, adapter) pair is embedded again and again.
:class:`EmbeddingCache` remembers outputs per sample, keyed by

    (input key, adapter name, adapter version)

where the version comes from the adapter's owner (:meth:`AdapterBank.version`) and
changes whenever that adapter's weights change, so an entry computed with old weights
can never be returned. A call computes only the misses, in one batched forward, and
returns the rows in the order asked. Capacity is a number of entries and/or of bytes;
the least recently used entries go first.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import torch

from .bank import AdapterBank
from .batched import use_adapters

__all__ = ["CacheStats", "EmbeddingCache", "input_keys"]

Batch = torch.Tensor | Mapping[str, torch.Tensor]
EntryKey = tuple[Hashable, str | None, Hashable]  # (input key, adapter name, adapter version)


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    @property
    def bytes_per_entry(self) -> float:
        return self.bytes / self.entries if self.entries else 0.0


def _batch_size(inputs: object) -> int:
    """Rows of ``inputs`` (a tensor, or a dict of tensors that agree on it); checks the batch."""
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() == 0:
            raise ValueError("inputs must have a batch dimension, got a 0-d tensor")
        return inputs.shape[0]
    if not isinstance(inputs, Mapping) or not inputs:
        raise TypeError(f"inputs must be a tensor or a non-empty dict of tensors, got {inputs!r:.80}")
    bad = [
        k
        for k, v in inputs.items()
        if not isinstance(k, str) or not isinstance(v, torch.Tensor) or v.dim() == 0
    ]
    if bad:
        raise TypeError(
            f"every input field must be a str name -> tensor with a batch dimension; bad fields {bad}"
        )
    sizes = {k: v.shape[0] for k, v in inputs.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"every input field needs the same batch size, got {sizes}")
    return next(iter(sizes.values()))


def input_keys(inputs: Batch) -> list[bytes]:
    """A content key per sample: a 128-bit BLAKE2 digest of each row's dtype, shape and
    bytes (all fields of a dict batch, by field name). Equal rows give equal keys."""
    fields = [("", inputs)] if isinstance(inputs, torch.Tensor) else sorted(inputs.items())
    hashers = [hashlib.blake2b(digest_size=16) for _ in range(_batch_size(inputs))]
    for name, tensor in fields:
        rows = tensor.detach().cpu().contiguous()
        header = f"{name}|{rows.dtype}|{tuple(rows.shape[1:])}|".encode()
        flat = rows.reshape(rows.shape[0], -1)
        if flat.dtype == torch.bfloat16:
            flat = flat.view(torch.int16)
        data = flat.numpy()
        for h, row in zip(hashers, data, strict=True):
            h.update(header)
            h.update(row.tobytes())
    return [h.digest() for h in hashers]


def _select(inputs: Batch, rows: torch.Tensor) -> Batch:
    if isinstance(inputs, torch.Tensor):
        return inputs.index_select(0, rows.to(inputs.device))
    return {k: v.index_select(0, rows.to(v.device)) for k, v in inputs.items()}


class EmbeddingCache:
    """LRU cache of per-sample outputs keyed by (input, adapter, adapter version).

    Args:
        compute: ``compute(inputs, adapter_names) -> Tensor (b, ...)`` runs one batched
            forward for a sub-batch (``inputs`` with the same fields, ``b`` rows).
        version: ``version(adapter_name) -> hashable``, which must change whenever that
            adapter's weights change (:meth:`AdapterBank.version`); ``None``: adapters
            never change (only safe for frozen adapters).
        max_entries, max_bytes: capacity; either, both, or neither (unbounded).

    Call it as ``cache(inputs, adapter_names, keys=None) -> Tensor (B, ...)``; ``keys``
    (one hashable per sample, e.g. a cell id) skips hashing the inputs.
    """

    def __init__(
        self,
        compute: Callable[[Batch, list[str | None]], torch.Tensor],
        *,
        version: Callable[[str | None], Hashable] | None = None,
        max_entries: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        if not callable(compute):
            raise TypeError(
                f"EmbeddingCache: compute must be a callable (inputs, adapter_names) -> Tensor, "
                f"got {type(compute).__name__}"
            )
        if version is not None and not callable(version):
            raise TypeError(
                f"EmbeddingCache: version must be a callable adapter_name -> hashable or None, "
                f"got {type(version).__name__}"
            )
        self.max_entries = _check_capacity(max_entries, "max_entries")
        self.max_bytes = _check_capacity(max_bytes, "max_bytes")
        self.compute = compute
        self.version = version or (lambda _name: 0)
        self._entries: OrderedDict[EntryKey, torch.Tensor] = OrderedDict()
        self._current: dict[str | None, Hashable] = {}  # the version each adapter's entries have
        self._bytes = 0
        self._hits = self._misses = self._evictions = 0

    @classmethod
    def for_bank(
        cls,
        bank: AdapterBank,
        forward: Callable[[Batch], torch.Tensor],
        *,
        max_entries: int | None = None,
        max_bytes: int | None = None,
    ) -> EmbeddingCache:
        """A cache over ``bank``'s model: misses run ``forward(inputs)`` inside
        ``use_adapters(bank.model, bank.ids(names))``; versions come from ``bank.version``."""
        if not isinstance(bank, AdapterBank):
            raise TypeError(
                f"EmbeddingCache.for_bank: bank must be an AdapterBank, got {type(bank).__name__}"
            )
        if not callable(forward):
            raise TypeError(
                f"EmbeddingCache.for_bank: forward must be callable, got {type(forward).__name__}"
            )

        def compute(inputs: Batch, names: list[str | None]) -> torch.Tensor:
            with torch.no_grad(), use_adapters(bank.model, bank.ids(names)):
                return forward(inputs)

        return cls(compute, version=bank.version, max_entries=max_entries, max_bytes=max_bytes)

    # ------------------------------------------------------------------ bookkeeping

    @property
    def stats(self) -> CacheStats:
        return CacheStats(self._hits, self._misses, self._evictions, len(self._entries), self._bytes)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Drop every entry (statistics are kept)."""
        self._entries.clear()
        self._current.clear()
        self._bytes = 0

    def invalidate(self, adapter: str | None) -> int:
        """Drop every entry of ``adapter``; return how many."""
        doomed = [k for k in self._entries if k[1] == adapter]
        for key in doomed:
            self._bytes -= _nbytes(self._entries.pop(key))
        self._current.pop(adapter, None)
        return len(doomed)

    def _refresh_version(self, adapter: str | None) -> Hashable:
        """The adapter's version now; entries of an older version are dropped at once."""
        version = self.version(adapter)
        if adapter in self._current and self._current[adapter] != version:
            self.invalidate(adapter)
        self._current[adapter] = version
        return version

    def _store(self, key: EntryKey, value: torch.Tensor) -> None:
        size = _nbytes(value)
        if self.max_bytes is not None and size > self.max_bytes:
            return  # larger than the whole cache: return it, do not keep it
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= _nbytes(old)
        self._entries[key] = value
        self._bytes += size
        while (self.max_entries is not None and len(self._entries) > self.max_entries) or (
            self.max_bytes is not None and self._bytes > self.max_bytes
        ):
            _, evicted = self._entries.popitem(last=False)  # least recently used first
            self._bytes -= _nbytes(evicted)
            self._evictions += 1

    # ------------------------------------------------------------------ lookup

    def __call__(
        self,
        inputs: Batch,
        adapters: Sequence[str | None],
        keys: Sequence[Hashable] | None = None,
    ) -> torch.Tensor:
        """Outputs ``(B, ...)`` for ``B`` samples and their adapter names; only misses are
        computed, in one ``compute`` call, and identical pairs only once."""
        names, sample_keys = _call_arguments(inputs, adapters, keys)
        versions = {a: self._refresh_version(a) for a in dict.fromkeys(names)}
        full = [(k, a, versions[a]) for k, a in zip(sample_keys, names, strict=True)]
        rows: list[torch.Tensor | None] = []
        todo: dict[EntryKey, int] = {}  # miss key -> first sample
        for i, key in enumerate(full):
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                self._hits += 1
            else:
                self._misses += 1
                todo.setdefault(key, i)
            rows.append(hit)
        fresh = self._compute_misses(inputs, names, todo) if todo else {}
        return torch.stack([fresh[full[i]] if r is None else r for i, r in enumerate(rows)])

    def _compute_misses(
        self, inputs: Batch, names: list[str | None], todo: dict[EntryKey, int]
    ) -> dict[EntryKey, torch.Tensor]:
        """One ``compute`` call for the samples ``todo`` names (miss key -> first sample); the
        outputs are stored and returned by key."""
        first = torch.tensor(list(todo.values()), dtype=torch.long)
        out: object = self.compute(_select(inputs, first), [names[i] for i in first.tolist()])
        if not isinstance(out, torch.Tensor) or out.shape[0] != len(todo):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"compute returned {got} for {len(todo)} samples")
        fresh = {}
        for j, key in enumerate(todo):
            fresh[key] = out[j].detach().clone()  # own storage: do not pin the whole batch
            self._store(key, fresh[key])
        return fresh


def _call_arguments(inputs: Batch, adapters: object, keys: object) -> tuple[list[str | None], list[Hashable]]:
    """One adapter name (or ``None``) and one hashable key per sample of ``inputs``; ``keys``
    ``None``: each sample's :func:`input_keys` digest."""
    batch = _batch_size(inputs)
    if isinstance(adapters, (str, bytes)) or not isinstance(adapters, Sequence) or len(adapters) != batch:
        raise ValueError(f"need one adapter name (or None) per sample: {batch} samples, got {adapters!r}")
    if keys is not None and (isinstance(keys, (str, bytes)) or not isinstance(keys, Sequence)):
        raise TypeError(f"keys must be a sequence of one hashable per sample, got {type(keys).__name__}")
    sample_keys: list[Hashable] = list(input_keys(inputs) if keys is None else keys)
    if len(sample_keys) != batch:
        raise ValueError(f"need one key per sample: {batch} samples, {len(sample_keys)} keys")
    bad_names = [a for a in adapters if a is not None and not isinstance(a, str)]
    if bad_names:
        raise TypeError(f"adapter names must be str or None, got {bad_names[:3]!r}")
    for key in sample_keys:
        try:
            hash(key)
        except TypeError:
            raise TypeError(f"keys must be hashable, got {key!r:.60} of type {type(key).__name__}") from None
    return list(adapters), sample_keys


def _check_capacity(value: object, what: str) -> int | None:
    """``max_entries`` / ``max_bytes``: a positive int (not a bool), or ``None`` for no limit."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"{what} must be a positive int or None, got {value!r}")
    return value


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
