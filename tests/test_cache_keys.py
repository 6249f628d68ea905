"""EmbeddingCache argument checks and input_keys, the per-sample content digest."""

from __future__ import annotations

import pytest
import torch
from cache_helpers import Counting, value_inputs
from hypothesis import given
from hypothesis import strategies as st

import peft_zoo.serving.cache as cache_mod
from peft_zoo import (
    EmbeddingCache,
)
from peft_zoo.serving.cache import input_keys

# ----------------------------------------------------------------------------- argument checks and keys


def test_wrong_number_of_adapter_names_raises():
    cache = EmbeddingCache(Counting())
    with pytest.raises(ValueError, match="one adapter name"):
        cache(value_inputs([1.0, 2.0]), ["a"])
    with pytest.raises(ValueError, match="one adapter name"):
        cache(value_inputs([1.0]), "a")  # a string is not a list of names
    assert len(cache) == 0


def test_wrong_number_of_keys_raises():
    cache = EmbeddingCache(Counting())
    with pytest.raises(ValueError, match="one key per sample"):
        cache(value_inputs([1.0, 2.0]), ["a", "a"], keys=["k"])
    assert len(cache) == 0


def test_compute_returning_the_wrong_batch_raises():
    cache = EmbeddingCache(lambda inputs, names: torch.zeros(1, 3))
    with pytest.raises(ValueError, match="for 2 samples"):
        cache(value_inputs([1.0, 2.0]), ["a", "a"])


def test_explicit_keys_skip_hashing(monkeypatch):
    def no_hashing(inputs):
        raise AssertionError("input_keys must not run when keys= is given")

    monkeypatch.setattr(cache_mod, "input_keys", no_hashing)
    compute = Counting()
    cache = EmbeddingCache(compute)
    first = cache(value_inputs([1.0, 2.0]), ["a", "a"], keys=["cell-1", "cell-2"])
    # The key, not the content, identifies a sample: different rows, same key -> the cached row.
    again = cache(value_inputs([9.0, 2.0]), ["a", "a"], keys=["cell-1", "cell-2"])
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
