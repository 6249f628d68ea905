"""Tests for peft_zoo.serving.cache: the LRU cache of per-sample outputs keyed by (input, adapter, version).

A counting ``compute`` records every sub-batch it is asked for, so the tests can say
exactly what was computed; the LRU policy is checked against a plain OrderedDict model;
and over a real bank the cache must never return an output computed with old weights.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import peft_zoo.serving.cache as cache_mod
from peft_zoo import (
    AdapterBank,
    CacheStats,
    EmbeddingCache,
    adapter_named_parameters,
    adapter_state_dict,
    inject_batched_lora,
    inject_lora,
    use_adapters,
)
from peft_zoo.models import TinyTransformer, TinyTransformerConfig
from peft_zoo.serving.cache import input_keys
from peft_zoo.testing import assert_close

ADAPTERS = {None: 0.0, "a": 100.0, "b": 200.0, "c": 300.0}
WIDTH = 3  # float32 entries of WIDTH numbers: 12 bytes each


# ----------------------------------------------------------------------------- helpers


class Counting:
    """``compute(inputs, names)``: row ``i`` is ``inputs[i, 0] + offset(names[i])`` repeated
    ``width`` times; records the size and contents of every call."""

    def __init__(self, width: int = WIDTH) -> None:
        self.width = width
        self.calls: list[tuple[list[float], list[str | None]]] = []

    def __call__(self, inputs: torch.Tensor, names: list[str | None]) -> torch.Tensor:
        self.calls.append((inputs[:, 0].tolist(), list(names)))
        offsets = torch.tensor([ADAPTERS[n] for n in names])
        return (inputs[:, :1].float() + offsets[:, None]).repeat(1, self.width)

    @property
    def rows(self) -> int:
        return sum(len(c[0]) for c in self.calls)


def _expected(values: list[float], names: list[str | None], width: int = WIDTH) -> torch.Tensor:
    return torch.tensor([[v + ADAPTERS[n]] * width for v, n in zip(values, names, strict=True)])


def _inputs(values: list[float]) -> torch.Tensor:
    """(B, 2) rows whose content is the value: equal values give equal rows."""
    return torch.tensor([[v, -v] for v in values], dtype=torch.float32)


# ----------------------------------------------------------------------------- computing only the misses


def test_first_call_computes_all_misses_in_one_call_second_computes_nothing():
    compute = Counting()
    cache = EmbeddingCache(compute)
    values, names = [1.0, 2.0, 3.0, 4.0], ["a", None, "b", "a"]
    first = cache(_inputs(values), names)
    assert len(compute.calls) == 1 and compute.rows == 4
    assert torch.equal(first, _expected(values, names))
    second = cache(_inputs(values), names)
    assert len(compute.calls) == 1, "a repeated call must compute nothing"
    assert torch.equal(second, first)
    assert cache.stats == CacheStats(hits=4, misses=4, evictions=0, entries=4, bytes=4 * 4 * WIDTH)


def test_mixed_hits_and_misses_compute_only_the_misses_and_keep_the_order():
    compute = Counting()
    cache = EmbeddingCache(compute)
    cache(_inputs([1.0, 2.0]), ["a", "b"])
    values, names = [5.0, 2.0, 1.0, 6.0, 1.0], ["a", "b", "a", None, "b"]
    out = cache(_inputs(values), names)
    assert torch.equal(out, _expected(values, names))
    assert len(compute.calls) == 2
    # The second call saw only the misses, in the order they were asked for.
    assert compute.calls[1] == ([5.0, 6.0, 1.0], ["a", None, "b"])
    assert cache.stats.hits == 2 and cache.stats.misses == 5


def test_duplicate_pairs_in_one_call_are_computed_once():
    compute = Counting()
    cache = EmbeddingCache(compute)
    values, names = [7.0, 7.0, 7.0, 8.0, 7.0], ["a", "a", "b", "a", "a"]
    out = cache(_inputs(values), names)
    assert torch.equal(out, _expected(values, names))
    assert compute.calls == [([7.0, 7.0, 8.0], ["a", "b", "a"])]
    assert len(cache) == 3


def test_the_same_input_under_different_adapters_are_different_entries():
    compute = Counting()
    cache = EmbeddingCache(compute)
    out = cache(_inputs([1.0, 1.0, 1.0]), [None, "a", "b"])
    assert out[:, 0].tolist() == [1.0, 101.0, 201.0]
    assert compute.rows == 3


def test_returned_rows_are_not_views_of_the_stored_entries():
    cache = EmbeddingCache(Counting())
    out = cache(_inputs([1.0]), ["a"])
    out.add_(1000)
    assert torch.equal(cache(_inputs([1.0]), ["a"]), _expected([1.0], ["a"]))


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


# ----------------------------------------------------------------------------- never stale over a real bank

CFG = TinyTransformerConfig(vocab_size=16, max_len=8, d_model=16, n_heads=2, d_ff=32, n_layers=1, n_classes=8)
TARGETS = ["blocks.0.attn.branch.q", "blocks.0.ffn.branch.fc1", "head"]


def _base() -> TinyTransformer:
    torch.manual_seed(0)
    return TinyTransformer(CFG).eval()


def _adapter(seed: int) -> dict[str, torch.Tensor]:
    model = _base()
    inject_lora(model, TARGETS, 2)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in adapter_named_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g))
    return {k: v.clone() for k, v in adapter_state_dict(model).items()}


@pytest.fixture
def bank():
    model = _base()
    inject_batched_lora(model, TARGETS, num_adapters=3, rank=2)
    bank = AdapterBank(model)
    bank.load("a", _adapter(1))
    bank.load("b", _adapter(2))
    yield bank
    bank.close()


def _fresh(bank: AdapterBank, x: torch.Tensor, names: list[str | None]) -> torch.Tensor:
    with torch.no_grad(), use_adapters(bank.model, bank.ids(names)):
        return bank.model(x)


X = torch.randint(0, CFG.vocab_size, (4, 5), generator=torch.Generator().manual_seed(0))
NAMES = ["a", None, "b", "a"]


def _differs(new: torch.Tensor, old: torch.Tensor, rows: list[int]) -> None:
    for i in rows:
        assert not torch.allclose(new[i], old[i]), f"row {i} kept its old value"


def test_for_bank_equals_a_fresh_forward_and_hits_on_repeat(bank):
    cache = EmbeddingCache.for_bank(bank, bank.model)
    out = cache(X, NAMES)
    assert_close(out, _fresh(bank, X, NAMES), what="cached forward")
    assert torch.equal(cache(X, NAMES), out)
    assert cache.stats.hits == 4 and cache.stats.misses == 4


def test_reload_under_the_same_name_is_never_served_stale(bank):
    cache = EmbeddingCache.for_bank(bank, bank.model)
    old = cache(X, NAMES)
    bank.evict("a")
    bank.load("a", _adapter(3))  # same name, different weights
    hits = cache.stats.hits
    new = cache(X, NAMES)
    assert_close(new, _fresh(bank, X, NAMES), what="after reload of 'a'")
    _differs(new, old, [0, 3])
    # The base row and the other adapter's row survive the reload of "a".
    assert torch.equal(new[[1, 2]], old[[1, 2]])
    assert cache.stats.hits - hits == 2


def test_in_place_update_is_never_served_stale(bank):
    cache = EmbeddingCache.for_bank(bank, bank.model)
    old = cache(X, NAMES)
    slot = bank.slot("a")
    with torch.no_grad():
        bank.layers["head"].lora_B[slot].add_(0.5)
    new = cache(X, NAMES)
    assert_close(new, _fresh(bank, X, NAMES), what="after an in-place update of 'a'")
    _differs(new, old, [0, 3])
    assert torch.equal(new[1], old[1]), "the base row must not change"


def test_in_place_update_then_loading_another_adapter_is_never_served_stale(bank):
    cache = EmbeddingCache.for_bank(bank, bank.model)
    old = cache(X, NAMES)
    with torch.no_grad():
        bank.layers["head"].lora_B[bank.slot("a")].add_(0.5)
    bank.load("c", _adapter(4))  # the bank writes after the update, before anyone asks
    new = cache(X, NAMES)
    assert_close(new, _fresh(bank, X, NAMES), what="update, then a load into another slot")
    _differs(new, old, [0, 3])


def test_evicted_adapter_cannot_be_looked_up(bank):
    cache = EmbeddingCache.for_bank(bank, bank.model)
    cache(X, NAMES)
    bank.evict("b")
    with pytest.raises(ValueError, match="'b'"):
        cache(X, NAMES)


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
        out = cache(_inputs(values), names)
        misses = ref.call(pairs)
        assert torch.equal(out, _expected(values, names)), f"wrong rows for {pairs}"
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
        cache(_inputs([v for v, _ in kept]), [a for _, a in kept])
        assert len(compute.calls) == n


def test_a_hit_refreshes_recency():
    compute = Counting()
    cache = EmbeddingCache(compute, max_entries=2)
    cache(_inputs([1.0]), ["a"])
    cache(_inputs([2.0]), ["a"])
    cache(_inputs([1.0]), ["a"])  # hit: 1 is now the most recent
    cache(_inputs([3.0]), ["a"])  # evicts 2, not 1
    n = compute.rows
    cache(_inputs([1.0]), ["a"])
    assert compute.rows == n, "the refreshed entry was evicted"
    cache(_inputs([2.0]), ["a"])
    assert compute.rows == n + 1, "the least recently used entry was kept"
    assert cache.stats.evictions == 2


def test_max_bytes_counts_bytes():
    cache = EmbeddingCache(Counting(width=4), max_bytes=40)  # 16-byte entries: 2 fit
    cache(_inputs([1.0, 2.0, 3.0]), ["a", "a", "a"])
    assert cache.stats.entries == 2 and cache.stats.bytes == 32 and cache.stats.evictions == 1
    assert cache.stats.bytes_per_entry == 16


def test_an_entry_larger_than_max_bytes_is_returned_but_not_kept():
    compute = Counting(width=20)  # 80-byte entries
    cache = EmbeddingCache(compute, max_bytes=40)
    out = cache(_inputs([1.0, 2.0]), ["a", "b"])
    assert torch.equal(out, _expected([1.0, 2.0], ["a", "b"], width=20))
    assert len(cache) == 0 and cache.stats.bytes == 0 and cache.stats.evictions == 0
    cache(_inputs([1.0]), ["a"])
    assert len(compute.calls) == 2, "an entry that cannot fit must be computed again"


@pytest.mark.parametrize("field", ["max_entries", "max_bytes"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True, "3"])
def test_invalid_capacities_raise(field, value):
    with pytest.raises(ValueError, match=field):
        EmbeddingCache(Counting(), **{field: value})


def test_unbounded_by_default_and_clear_keeps_statistics():
    cache = EmbeddingCache(Counting())
    cache(_inputs([float(i) for i in range(50)]), ["a"] * 50)
    assert len(cache) == 50 and cache.stats.evictions == 0
    cache.clear()
    assert len(cache) == 0 and cache.stats.bytes == 0 and cache.stats.misses == 50


def test_invalidate_drops_one_adapter():
    compute = Counting()
    cache = EmbeddingCache(compute)
    cache(_inputs([1.0, 1.0, 2.0]), ["a", "b", "a"])
    assert cache.invalidate("a") == 2
    assert len(cache) == 1 and cache.stats.bytes == 4 * WIDTH
    cache(_inputs([1.0, 1.0]), ["a", "b"])
    assert compute.calls[-1] == ([1.0], ["a"])


def test_version_callback_changes_invalidate_only_that_adapter():
    versions = {"a": 0, "b": 0, None: 0}
    compute = Counting()
    cache = EmbeddingCache(compute, version=versions.__getitem__)
    cache(_inputs([1.0, 1.0]), ["a", "b"])
    versions["a"] += 1
    cache(_inputs([1.0, 1.0]), ["a", "b"])
    assert compute.calls[-1] == ([1.0], ["a"])
    assert len(cache) == 2, "the entry of the old version must be dropped, not kept beside the new one"


# ----------------------------------------------------------------------------- argument checks and keys


def test_wrong_number_of_adapter_names_raises():
    cache = EmbeddingCache(Counting())
    with pytest.raises(ValueError, match="one adapter name"):
        cache(_inputs([1.0, 2.0]), ["a"])
    with pytest.raises(ValueError, match="one adapter name"):
        cache(_inputs([1.0]), "a")  # a string is not a list of names
    assert len(cache) == 0


def test_wrong_number_of_keys_raises():
    cache = EmbeddingCache(Counting())
    with pytest.raises(ValueError, match="one key per sample"):
        cache(_inputs([1.0, 2.0]), ["a", "a"], keys=["k"])
    assert len(cache) == 0


def test_compute_returning_the_wrong_batch_raises():
    cache = EmbeddingCache(lambda inputs, names: torch.zeros(1, 3))
    with pytest.raises(ValueError, match="for 2 samples"):
        cache(_inputs([1.0, 2.0]), ["a", "a"])


def test_explicit_keys_skip_hashing(monkeypatch):
    def no_hashing(inputs):
        raise AssertionError("input_keys must not run when keys= is given")

    monkeypatch.setattr(cache_mod, "input_keys", no_hashing)
    compute = Counting()
    cache = EmbeddingCache(compute)
    first = cache(_inputs([1.0, 2.0]), ["a", "a"], keys=["cell-1", "cell-2"])
    # The key, not the content, identifies a sample: different rows, same key -> the cached row.
    again = cache(_inputs([9.0, 2.0]), ["a", "a"], keys=["cell-1", "cell-2"])
    assert torch.equal(again, first) and len(compute.calls) == 1


def test_input_keys_equal_rows_equal_keys():
    x = torch.tensor([[1, 2, 3], [4, 5, 6], [1, 2, 3], [1, 2, 4]])
    k = input_keys(x)
    assert len(k) == 4 and all(isinstance(key, bytes) for key in k)
    assert k[0] == k[2]
    assert len({k[0], k[1], k[3]}) == 3
    assert input_keys(x[[2]]) == [k[0]], "a row's key must not depend on the rest of the batch"


def test_input_keys_see_dtype_and_shape():
    a = torch.tensor([[1, 2, 3, 4]])
    assert input_keys(a) != input_keys(a.int())
    assert input_keys(a) != input_keys(a.reshape(1, 2, 2))
    assert input_keys(a.float()) != input_keys(a.double())


def test_input_keys_of_dict_inputs_use_every_field_not_their_order():
    ids = torch.tensor([[1, 2, 3], [1, 2, 3]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    k = input_keys({"input_ids": ids, "attention_mask": mask})
    assert k[0] != k[1], "rows differing only in attention_mask must differ"
    assert input_keys({"attention_mask": mask, "input_ids": ids}) == k
    assert input_keys({"input_ids": ids}) == [input_keys({"input_ids": ids})[0]] * 2
    assert input_keys({"input_ids": ids, "attention_mask": mask}) != input_keys(
        {"input_ids": ids, "token_type_ids": mask}
    ), "the field name is part of the key"


def test_input_keys_rejects_mismatched_batches_and_0d_tensors():
    with pytest.raises(ValueError, match="batch size"):
        input_keys({"input_ids": torch.zeros(2, 3), "attention_mask": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="batch dimension"):
        input_keys(torch.tensor(1.0))


@given(rows=st.lists(st.lists(st.integers(0, 2), min_size=3, max_size=3), min_size=1, max_size=8))
def test_input_keys_equal_exactly_when_rows_equal(rows):
    keys = input_keys(torch.tensor(rows))
    for i in range(len(rows)):
        for j in range(len(rows)):
            assert (keys[i] == keys[j]) == (rows[i] == rows[j]), (rows[i], rows[j])


def test_bfloat16_inputs_hash():
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 3.0]], dtype=torch.bfloat16)
    k = input_keys(x)
    assert k[0] == k[1] != k[2]
