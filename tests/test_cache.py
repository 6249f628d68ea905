"""Tests for peft_zoo.serving.cache: the LRU cache of per-sample outputs keyed by (input, adapter, version).

A counting ``compute`` records every sub-batch it is asked for, so the tests can say
exactly what was computed; the LRU policy is checked against a plain OrderedDict model.
Over a real bank (test_cache_bank.py) the cache must never return an output computed with
old weights; argument checks and content keys: test_cache_keys.py.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from cache_helpers import ADAPTERS, WIDTH, Counting, expected_rows, value_inputs
from hypothesis import given
from hypothesis import strategies as st

from peft_zoo import (
    CacheStats,
    EmbeddingCache,
)

# ----------------------------------------------------------------------------- computing only the misses


def test_first_call_computes_all_misses_in_one_call_second_computes_nothing():
    compute = Counting()
    cache = EmbeddingCache(compute)
    values, names = [1.0, 2.0, 3.0, 4.0], ["a", None, "b", "a"]
    first = cache(value_inputs(values), names)
    assert len(compute.calls) == 1 and compute.rows == 4
    assert torch.equal(first, expected_rows(values, names))
    second = cache(value_inputs(values), names)
    assert len(compute.calls) == 1, "a repeated call must compute nothing"
    assert torch.equal(second, first)
    assert cache.stats == CacheStats(hits=4, misses=4, evictions=0, entries=4, bytes=4 * 4 * WIDTH)


def test_mixed_hits_and_misses_compute_only_the_misses_and_keep_the_order():
    compute = Counting()
    cache = EmbeddingCache(compute)
    cache(value_inputs([1.0, 2.0]), ["a", "b"])
    values, names = [5.0, 2.0, 1.0, 6.0, 1.0], ["a", "b", "a", None, "b"]
    out = cache(value_inputs(values), names)
    assert torch.equal(out, expected_rows(values, names))
    assert len(compute.calls) == 2
    # The second call saw only the misses, in the order they were asked for.
    assert compute.calls[1] == ([5.0, 6.0, 1.0], ["a", None, "b"])
    assert cache.stats.hits == 2 and cache.stats.misses == 5


def test_duplicate_pairs_in_one_call_are_computed_once():
    compute = Counting()
    cache = EmbeddingCache(compute)
    values, names = [7.0, 7.0, 7.0, 8.0, 7.0], ["a", "a", "b", "a", "a"]
    out = cache(value_inputs(values), names)
    assert torch.equal(out, expected_rows(values, names))
    assert compute.calls == [([7.0, 7.0, 8.0], ["a", "b", "a"])]
    assert len(cache) == 3


def test_the_same_input_under_different_adapters_are_different_entries():
    compute = Counting()
    cache = EmbeddingCache(compute)
    out = cache(value_inputs([1.0, 1.0, 1.0]), [None, "a", "b"])
    assert out[:, 0].tolist() == [1.0, 101.0, 201.0]
    assert compute.rows == 3


def test_returned_rows_are_not_views_of_the_stored_entries():
    cache = EmbeddingCache(Counting())
    out = cache(value_inputs([1.0]), ["a"])
    out.add_(1000)
    assert torch.equal(cache(value_inputs([1.0]), ["a"]), expected_rows([1.0], ["a"]))


def test_dict_inputs_are_selected_field_by_field():
    seen = []

    def compute(inputs, names):
        seen.append({k: v.clone() for k, v in inputs.items()})
        return (inputs["input_ids"] * inputs["attention_mask"]).sum(dim=1, keepdim=True).float()

    cache = EmbeddingCache(compute)
    ids = torch.tensor([[1, 2, 3], [4, 5, 6], [1, 2, 3]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 0]])
    out = cache({"input_ids": ids, "attention_mask": mask}, ["a", "a", "a"])
    assert out[:, 0].tolist() == [6.0, 9.0, 3.0]  # row 2 differs from row 0 only in its mask
    out = cache({"input_ids": ids[[2, 0]], "attention_mask": mask[[2, 0]]}, ["a", "a"])
    assert out[:, 0].tolist() == [3.0, 6.0] and len(seen) == 1


# ----------------------------------------------------------------------------- LRU against a reference model


class ReferenceLRU:
    """The policy in a dozen lines: hits move to the end, misses are stored in the order
    first seen, and the oldest entries go while over capacity."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: OrderedDict[tuple[float, str | None], None] = OrderedDict()
        self.hits = self.misses = self.evictions = 0

    def call(self, pairs: list[tuple[float, str | None]]) -> list[tuple[float, str | None]]:
        misses = []
        for pair in pairs:
            if pair in self.entries:
                self.entries.move_to_end(pair)
                self.hits += 1
            else:
                self.misses += 1
                misses.append(pair)
        for pair in misses:
            self.entries[pair] = None
            while len(self.entries) > self.capacity:
                self.entries.popitem(last=False)
                self.evictions += 1
        return misses


calls = st.lists(
    st.lists(
        st.tuples(st.integers(0, 5).map(float), st.sampled_from(list(ADAPTERS))),
        min_size=1,
        max_size=4,
        unique=True,
    ),
    min_size=1,
    max_size=12,
)


@given(capacity=st.integers(1, 5), by_bytes=st.booleans(), ops=calls)
def test_lru_matches_a_reference_model(capacity, by_bytes, ops):
    entry = 4 * WIDTH
    kwargs = {"max_bytes": capacity * entry + entry // 2} if by_bytes else {"max_entries": capacity}
    compute = Counting()
    cache = EmbeddingCache(compute, **kwargs)
    ref = ReferenceLRU(capacity)
    for pairs in ops:
        values, names = [v for v, _ in pairs], [n for _, n in pairs]
        before = len(compute.calls)
        out = cache(value_inputs(values), names)
        misses = ref.call(pairs)
        assert torch.equal(out, expected_rows(values, names)), f"wrong rows for {pairs}"
        if misses:
            assert compute.calls[-1] == ([v for v, _ in misses], [n for _, n in misses]), pairs
        else:
            assert len(compute.calls) == before, f"computed although every pair was cached: {pairs}"
        expected = CacheStats(ref.hits, ref.misses, ref.evictions, len(ref.entries), len(ref.entries) * entry)
        assert cache.stats == expected, f"after {pairs} ({kwargs})"
    # What is kept is exactly the reference's content: asking for it computes nothing.
    kept = list(ref.entries)
    if kept:
        n = len(compute.calls)
        cache(value_inputs([v for v, _ in kept]), [a for _, a in kept])
        assert len(compute.calls) == n


def test_a_hit_refreshes_recency():
    compute = Counting()
    cache = EmbeddingCache(compute, max_entries=2)
    cache(value_inputs([1.0]), ["a"])
    cache(value_inputs([2.0]), ["a"])
    cache(value_inputs([1.0]), ["a"])  # hit: 1 is now the most recent
    cache(value_inputs([3.0]), ["a"])  # evicts 2, not 1
    n = compute.rows
    cache(value_inputs([1.0]), ["a"])
    assert compute.rows == n, "the refreshed entry was evicted"
    cache(value_inputs([2.0]), ["a"])
    assert compute.rows == n + 1, "the least recently used entry was kept"
    assert cache.stats.evictions == 2


def test_max_bytes_counts_bytes():
    cache = EmbeddingCache(Counting(width=4), max_bytes=40)  # 16-byte entries: 2 fit
    cache(value_inputs([1.0, 2.0, 3.0]), ["a", "a", "a"])
    assert cache.stats.entries == 2 and cache.stats.bytes == 32 and cache.stats.evictions == 1
    assert cache.stats.bytes_per_entry == 16


def test_an_entry_larger_than_max_bytes_is_returned_but_not_kept():
    compute = Counting(width=20)  # 80-byte entries
    cache = EmbeddingCache(compute, max_bytes=40)
    out = cache(value_inputs([1.0, 2.0]), ["a", "b"])
    assert torch.equal(out, expected_rows([1.0, 2.0], ["a", "b"], width=20))
    assert len(cache) == 0 and cache.stats.bytes == 0 and cache.stats.evictions == 0
    cache(value_inputs([1.0]), ["a"])
    assert len(compute.calls) == 2, "an entry that cannot fit must be computed again"


@pytest.mark.parametrize("field", ["max_entries", "max_bytes"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True, "3"])
def test_invalid_capacities_raise(field, value):
    with pytest.raises(ValueError, match=field):
        EmbeddingCache(Counting(), **{field: value})


def test_unbounded_by_default_and_clear_keeps_statistics():
    cache = EmbeddingCache(Counting())
    cache(value_inputs([float(i) for i in range(50)]), ["a"] * 50)
    assert len(cache) == 50 and cache.stats.evictions == 0
    cache.clear()
    assert len(cache) == 0 and cache.stats.bytes == 0 and cache.stats.misses == 50


def test_invalidate_drops_one_adapter():
    compute = Counting()
    cache = EmbeddingCache(compute)
    cache(value_inputs([1.0, 1.0, 2.0]), ["a", "b", "a"])
    assert cache.invalidate("a") == 2
    assert len(cache) == 1 and cache.stats.bytes == 4 * WIDTH
    cache(value_inputs([1.0, 1.0]), ["a", "b"])
    assert compute.calls[-1] == ([1.0], ["a"])


def test_version_callback_changes_invalidate_only_that_adapter():
    versions = {"a": 0, "b": 0, None: 0}
    compute = Counting()
    cache = EmbeddingCache(compute, version=versions.__getitem__)
    cache(value_inputs([1.0, 1.0]), ["a", "b"])
    versions["a"] += 1
    cache(value_inputs([1.0, 1.0]), ["a", "b"])
    assert compute.calls[-1] == ([1.0], ["a"])
    assert len(cache) == 2, "the entry of the old version must be dropped, not kept beside the new one"
