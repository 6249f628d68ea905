# Challenge 17 · embedding_cache: a versioned LRU cache that never serves stale embeddings. Replace each TODO(ex17) with your code, then run:
#     peft-zoo check 17        (or: pytest practice/13_lora_adapters/test_ex17_embedding_cache.py)
# Stuck? `peft-zoo hint 17`. Start over: `peft-zoo reset 17` (your file is backed up).
"""A versioned LRU cache of embeddings: never serve an embedding computed by old weights.

An embedding service over many adapters recomputes the same inputs again and again, so it
caches ``(input key, adapter) -> embedding``. Two things make such a cache correct:

1. **Staleness.** When an adapter is retrained its embeddings change, and a cache keyed by
   ``(key, adapter)`` keeps serving the old ones. Give every adapter a version number
   (starting at 0) and key the entries by ``(key, adapter, version)``. An update is then
   one increment, ``bump(adapter)``: no scan of the cache, and the old entries can never be
   hit again. They simply stop being used and age out through the LRU order.
2. **Bounded memory.** Keep at most ``capacity`` entries and evict the *least recently
   used* one when a new entry would exceed that. ``collections.OrderedDict`` is an LRU in
   two calls: ``move_to_end(k)`` marks ``k`` most recent, ``popitem(last=False)`` removes
   the least recent (the front). Both are O(1).

``lookup`` serves a whole batch: it answers the hits from the cache and calls the expensive
model (``compute``) exactly once, on the misses only, so a batch that is all hits costs
no model call at all.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import torch


class VersionedLRUCache:
    """An LRU cache of tensors keyed by ``(key, adapter name, adapter version)``.

    Attributes to create (the graders read these names):
        capacity   the most entries kept (``capacity <= 0`` raises ``ValueError``)
        hits, misses, evictions   counters, all starting at 0

    Semantics (the graders compare every step with a model of exactly this):

    - ``version(adapter)`` is 0 until the first ``bump(adapter)``; each bump adds 1.
    - ``get(key, adapter)`` looks up ``(key, adapter, version(adapter))``: a hit counts in
      ``hits``, marks the entry most recently used and returns its tensor; a miss counts in
      ``misses`` and returns ``None``.
    - ``put(key, adapter, value)`` stores ``value`` under the current version as the most
      recently used entry (overwriting an existing one), then evicts least recently used
      entries, one ``evictions`` each, while there are more than ``capacity``.
    - ``len(cache)`` is the number of entries held, old versions included until evicted.
    """

    def __init__(self, capacity: int) -> None:
        # TODO(ex17): reject capacity <= 0; an OrderedDict of entries (least recent first), versions, counters
        raise NotImplementedError("ex17 (embedding_cache): VersionedLRUCache.__init__ is not implemented yet")

    def __len__(self) -> int:
        """The number of entries held. 1 line."""
        # TODO(ex17): the number of entries
        raise NotImplementedError("ex17 (embedding_cache): VersionedLRUCache.__len__ is not implemented yet")

    def version(self, adapter: str) -> int:
        """The current version of ``adapter``: 0 until it is first bumped. 1 line."""
        # TODO(ex17): the stored version, 0 by default
        raise NotImplementedError("ex17 (embedding_cache): VersionedLRUCache.version is not implemented yet")

    def bump(self, adapter: str) -> None:
        """``adapter``'s weights changed: increment its version, so no entry computed before
        can be returned again. O(1): do not search the cache. 1 line."""
        # TODO(ex17): increment the adapter's version
        raise NotImplementedError("ex17 (embedding_cache): VersionedLRUCache.bump is not implemented yet")

    def _key(self, key: Hashable, adapter: str) -> tuple[Hashable, str, int]:
        """The full cache key of ``key`` under ``adapter``'s current version. 1 line."""
        # TODO(ex17): the input key, the adapter and its CURRENT version
        raise NotImplementedError("ex17 (embedding_cache): VersionedLRUCache._key is not implemented yet")

    def get(self, key: Hashable, adapter: str) -> torch.Tensor | None:
        """The cached tensor for ``key`` under ``adapter``'s current version, or ``None``.

        A hit marks the entry most recently used. Count the hit or the miss. About 7 lines.
        """
        # TODO(ex17): look the full key up; on a hit move it to the end (most recent); count hit or miss
        raise NotImplementedError("ex17 (embedding_cache): VersionedLRUCache.get is not implemented yet")

    def put(self, key: Hashable, adapter: str, value: torch.Tensor) -> None:
        """Store ``value`` as the most recent entry, then evict the least recent ones while
        there are more than ``capacity``. About 5 lines."""
        # TODO(ex17): store under the full key as the most recent entry; evict from the front while over capacity
        raise NotImplementedError("ex17 (embedding_cache): VersionedLRUCache.put is not implemented yet")

    def lookup(
        self,
        keys: Sequence[Hashable],
        adapters: Sequence[str],
        compute: Callable[[list[int]], torch.Tensor],
    ) -> torch.Tensor:
        """The embeddings of a batch, ``(len(keys), ...)``, computing only what is not cached.

        ``keys[i]`` and ``adapters[i]`` name item i (parallel lists of the same non-zero
        length, else ``ValueError``). Go through the items in order with :meth:`get` (so
        every item counts one hit or one miss, and hits are refreshed in that order). Then,
        if anything missed, call ``compute(miss_indices)`` exactly once: ``miss_indices`` is
        the ascending list of the positions that missed, keeping only the first position of
        a ``(key, adapter)`` pair that appears more than once; it returns one row per index,
        ``(len(miss_indices), ...)``. :meth:`put` each computed row (in that order) and use it
        for every position of its pair. Do not call ``compute`` when everything hits.
        Return the rows stacked in the order of ``keys``. About 20 lines.
        """
        # TODO(ex17): get() each item; compute the first position of each missing pair once; put; stack
        raise NotImplementedError("ex17 (embedding_cache): VersionedLRUCache.lookup is not implemented yet")
