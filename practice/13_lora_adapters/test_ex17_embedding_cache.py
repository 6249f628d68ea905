"""Grader for challenge 17 · embedding_cache. Run: peft-zoo check 17 (or pytest this file)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from peft_zoo.exercises.graders.ex17_embedding_cache import ADAPTERS, KEYS, as_list, run_learner
from peft_zoo.exercises.grading import learner_code, require
from peft_zoo.testing import explain

CHALLENGE = "ex17_embedding_cache"
pytestmark = pytest.mark.timeout(120)

# Classic mistakes, each planted alone into a copy of the answer: this grader must reject every one
# (checked by tests/test_exercises.py). (description, snippet in the answer, mistaken snippet,
# and the bug's name as this grader's "likely:" line gives it: tests/test_diagnosis.py checks it)
PLANTED_BUGS: list[tuple[str, ...]] = [
    (
        "stale entry after an update: the version is not part of the key",
        "return (key, adapter, self.version(adapter))",
        "return (key, adapter, 0)",
        "stale entry after an update: the adapter version is not part of the key, so bump() changes nothing and old embeddings are served",
    ),
    (
        "bump sets the version to 1 instead of incrementing it (the second update serves stale entries)",
        "self._versions[adapter] = self.version(adapter) + 1",
        "self._versions[adapter] = 1",
        "bump() sets the version to 1 instead of incrementing it: after the second update the entries of the first are served again (stale)",
    ),
    (
        "LRU evicts the most recent entry (popitem(last=True))",
        "self._entries.popitem(last=False)",
        "self._entries.popitem(last=True)",
        "the LRU evicts the MOST recent entry (popitem(last=True)); the front of an OrderedDict is the least recently used: popitem(last=False)",
    ),
    (
        "get() does not refresh recency",
        "self._entries.move_to_end(full)  # a hit refreshes recency",
        "pass",
        (
            "get() does not refresh recency: a hit must move_to_end the entry",
            "a hit must mark the entry most recently used",
        ),
    ),
    (
        "put() over an existing entry does not refresh its recency",
        "self._entries.move_to_end(slot)",
        "pass",
        "put() over an existing entry does not refresh it: assigning to an existing OrderedDict key keeps its old position, so move_to_end it",
    ),
    (
        "compute called with all indices instead of only the misses",
        "computed = compute(miss)",
        "computed = compute(list(range(len(keys))))[miss]",
        "compute is called with every index instead of only the misses",
    ),
    (
        "duplicate misses in one lookup are computed twice",
        "if rows[i] is None and pair not in first_miss:",
        "if rows[i] is None:",
        "a (key, adapter) pair that misses twice in one lookup is computed twice",
    ),
    (
        "off-by-one capacity: evicts at len == capacity (holds capacity - 1)",
        "while len(self._entries) > self.capacity:",
        "while len(self._entries) >= self.capacity:",
        "off-by-one capacity: entries are evicted at len == capacity (the cache holds capacity - 1)",
    ),
    (
        "off-by-one capacity: holds capacity + 1 entries",
        "while len(self._entries) > self.capacity:",
        "while len(self._entries) > self.capacity + 1:",
        "off-by-one capacity: the cache holds capacity + 1 entries",
    ),
    (
        "a non-positive capacity is accepted",
        "if capacity <= 0:",
        "if capacity < 0:",
        "reject capacity <= 0 in __init__",
    ),
]

# ----------------------------------------------------------------------------- graders


OPS = st.one_of(
    st.tuples(st.just("put"), KEYS, ADAPTERS),
    st.tuples(st.just("get"), KEYS, ADAPTERS),
    st.tuples(st.just("bump"), ADAPTERS),
    st.tuples(st.just("lookup"), st.lists(st.tuples(KEYS, ADAPTERS), min_size=1, max_size=5)),
)


@settings(max_examples=80, deadline=None)
@given(capacity=st.integers(1, 4), ops=st.lists(OPS, min_size=1, max_size=20))
@example(
    capacity=2,
    ops=[
        ("lookup", [(0, "a"), (1, "a"), (0, "a")]),
        ("get", 0, "a"),
        ("put", 2, "b"),
        ("bump", "a"),
        ("lookup", [(0, "a"), (2, "b")]),
        ("bump", "a"),
        ("put", 2, "b"),
        ("put", 3, "c"),
        ("get", 2, "b"),
    ],
)
@learner_code()
def test_every_operation_matches_a_model_lru_cache(impl, ref, capacity, ops) -> None:
    (cache_cls,) = require(impl, "VersionedLRUCache")
    run_learner(cache_cls, ref.VersionedLRUCache, capacity, ops)


@settings(max_examples=10, deadline=None)
@given(capacity=st.integers(-3, 0))
@example(capacity=0)  # the boundary: a cache that can hold nothing
@learner_code()
def test_capacity_must_be_positive(impl, capacity) -> None:
    (cache_cls,) = require(impl, "VersionedLRUCache")
    try:
        cache_cls(capacity)
    except ValueError:
        pass
    else:
        raise AssertionError(
            explain(
                f"VersionedLRUCache({capacity}) was accepted",
                expected="ValueError",
                got="no error",
                hint="a cache that can hold nothing evicts every entry as soon as it is stored: reject "
                "capacity <= 0 in __init__",
            )
        )
    assert len(cache_cls(1)) == 0, explain("a new cache must be empty", got=str(len(cache_cls(1))))


def _emb(tag: float, n: int) -> torch.Tensor:
    return torch.full((n, 3), tag)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 4), updates=st.integers(1, 3))
@learner_code()
def test_an_update_makes_the_next_lookup_recompute(impl, n, updates) -> None:
    (cache_cls,) = require(impl, "VersionedLRUCache")
    cache = cache_cls(4 * n)
    keys = list(range(n))
    drawn = {"capacity": 4 * n, "keys": keys, "updates": updates}
    calls: list[tuple[str, list[int]]] = []

    def compute_for(weights: str, tag: float):
        def compute(indices):
            calls.append((weights, [int(i) for i in indices]))
            return _emb(tag, len(indices))

        return compute

    assert cache.version("lora") == 0, explain(
        "versions start at 0", drawn=drawn, got=str(cache.version("lora"))
    )
    cache.lookup(keys, ["lora"] * n, compute_for("v0", 0.0))
    cache.lookup(keys, ["other"] * n, compute_for("other", 9.0))
    for u in range(1, updates + 1):
        calls.clear()
        cache.bump("lora")  # the adapter's weights changed
        assert cache.version("lora") == u, explain(
            f"after {u} bump(s) the version must be {u}",
            drawn=drawn,
            got=str(cache.version("lora")),
            hint="bump increments: self._versions[adapter] = self.version(adapter) + 1",
        )
        out = cache.lookup(keys, ["lora"] * n, compute_for(f"v{u}", float(u)))
        assert calls == [(f"v{u}", keys)], explain(
            f"after update {u} the next lookup must recompute every embedding of that adapter",
            drawn=drawn,
            expected=f"compute called once with {keys}",
            got=f"compute calls {calls}",
            hint="key the entries by (key, adapter, version): otherwise the old embeddings are served "
            "(stale) after the weights changed",
        )
        assert torch.equal(out, _emb(float(u), n)), explain(
            f"after update {u} lookup returned stale embeddings",
            drawn=drawn,
            expected=f"rows computed with the new weights (all {float(u)})",
            got=str(out.tolist()),
        )
    calls.clear()
    out = cache.lookup(keys, ["other"] * n, compute_for("other", -1.0))
    assert calls == [] and torch.equal(out, _emb(9.0, n)), explain(
        "an update of one adapter must not invalidate another adapter's entries",
        drawn=drawn,
        expected="no compute call, the cached rows (all 9.0)",
        got=f"compute calls {calls}, rows {out.tolist()}",
    )


@settings(max_examples=10, deadline=None)
@given(capacity=st.integers(1, 5))
@learner_code()
def test_the_least_recently_used_entry_is_evicted(impl, capacity) -> None:
    (cache_cls,) = require(impl, "VersionedLRUCache")
    cache = cache_cls(capacity)
    drawn = {"capacity": capacity, "puts": list(range(capacity + 1))}
    for k in range(capacity):
        cache.put(k, "a", _emb(float(k), 1)[0])
    assert len(cache) == capacity and cache.evictions == 0, explain(
        f"after {capacity} puts into a cache of capacity {capacity} nothing may be evicted",
        drawn=drawn,
        expected=f"len {capacity}, evictions 0",
        got=f"len {len(cache)}, evictions {cache.evictions}",
        hint="evict only while len > capacity (after inserting)",
    )
    cache.put(capacity, "a", _emb(float(capacity), 1)[0])
    assert len(cache) == capacity and cache.evictions == 1, explain(
        "one put into a full cache must evict exactly one entry",
        drawn=drawn,
        expected=f"len {capacity}, evictions 1",
        got=f"len {len(cache)}, evictions {cache.evictions}",
        hint="insert, then evict while len(self._entries) > self.capacity",
    )
    gone = cache.get(0, "a")
    assert gone is None, explain(
        "key 0 was put first and never used again: it is the least recently used and must be evicted",
        drawn=drawn,
        expected="get(0, 'a') is None",
        got=f"{as_list(gone)}",
        hint="OrderedDict.popitem(last=False) removes the front, the least recently used; "
        "popitem() (last=True) removes the most recent",
    )
    for k in range(1, capacity + 1):
        got = cache.get(k, "a")
        assert got is not None and torch.equal(got, _emb(float(k), 1)[0]), explain(
            f"key {k} is among the {capacity} most recent entries and must still be cached",
            drawn=drawn,
            got=f"get({k}, 'a') = {as_list(got) if got is not None else None}",
        )


@settings(max_examples=10, deadline=None)
@given(capacity=st.integers(2, 5))
@learner_code()
def test_get_refreshes_recency(impl, capacity) -> None:
    (cache_cls,) = require(impl, "VersionedLRUCache")
    cache = cache_cls(capacity)
    drawn = {"capacity": capacity, "operations": [f"put({k}, 'a')" for k in range(capacity)]}
    drawn["operations"] += ["get(0, 'a')", f"put({capacity}, 'a')"]
    for k in range(capacity):
        cache.put(k, "a", _emb(float(k), 1)[0])
    assert cache.get(0, "a") is not None and cache.hits == 1, explain(
        "get of a cached key must hit and count one hit", drawn=drawn, got=f"hits {cache.hits}"
    )
    cache.put(capacity, "a", _emb(float(capacity), 1)[0])
    kept, dropped = cache.get(0, "a"), cache.get(1, "a")
    assert kept is not None and dropped is None, explain(
        "key 0 was just read, so key 1 is now the least recently used: it must be the one evicted",
        drawn=drawn,
        expected="get(0, 'a') cached, get(1, 'a') None",
        got=f"get(0, 'a') {'cached' if kept is not None else 'None'}, get(1, 'a') "
        f"{'cached' if dropped is not None else 'None'}",
        hint="a hit must mark the entry most recently used: self._entries.move_to_end(full_key)",
    )


@settings(max_examples=20, deadline=None)
@given(
    cached=st.lists(KEYS, min_size=1, max_size=4, unique=True),
    batch=st.lists(st.integers(0, 6), min_size=1, max_size=8),
)
@learner_code()
def test_compute_receives_only_the_misses(impl, cached, batch) -> None:
    (cache_cls,) = require(impl, "VersionedLRUCache")
    cache = cache_cls(32)
    for k in cached:
        cache.put(k, "a", _emb(float(k), 1)[0])
    calls: list[list[int]] = []

    def compute(indices):
        calls.append([int(i) for i in indices])
        return torch.stack([_emb(float(batch[int(i)]), 1)[0] for i in indices])

    out = cache.lookup(batch, ["a"] * len(batch), compute)
    first: dict[int, int] = {}
    for i, k in enumerate(batch):
        if k not in cached:
            first.setdefault(k, i)
    expected_calls = [sorted(first.values())] if first else []
    drawn = {"cached keys": cached, "lookup keys": batch}
    assert calls == expected_calls, explain(
        "compute must be called once with the positions of the misses only (first occurrence of a "
        "repeated key), and not at all when everything hits",
        drawn=drawn,
        expected=f"compute calls {expected_calls}",
        got=f"compute calls {calls}",
        hint="collect the missing positions while you look the items up, skip a pair already "
        "collected, then call compute(miss) once if miss is not empty",
    )
    want = torch.stack([_emb(float(k), 1)[0] for k in batch])
    assert isinstance(out, torch.Tensor) and torch.equal(out, want), explain(
        "lookup returned the wrong rows",
        drawn=drawn,
        expected=str(want[:, 0].tolist()),
        got=str(out[:, 0].tolist() if isinstance(out, torch.Tensor) and out.dim() == 2 else out),
        hint="row i of the result belongs to keys[i]: a hit comes from the cache, a miss from "
        "compute's row for its first occurrence",
    )
    hits = sum(k in cached for k in batch)
    assert (cache.hits, cache.misses) == (hits, len(batch) - hits), explain(
        "every item of a lookup counts one hit or one miss",
        drawn=drawn,
        expected=f"hits {hits}, misses {len(batch) - hits}",
        got=f"hits {cache.hits}, misses {cache.misses}",
    )
