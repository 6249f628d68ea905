"""Tests for peft_zoo.serving.bank: named adapter slots over a model's BatchedLoRALinear layers.

The reference for every batched output is the ordinary single-adapter model: each sample
run alone through a copy of the base with ``inject_lora`` and the same adapter weights
(``None``: the base model). Every refused operation checks that the error names the
problem and that the bank and the model are exactly as they were.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

import pytest
import torch
from bank_helpers import (
    SLOTS,
    TARGETS,
    assert_bank_unchanged,
    bank_factory,
    bank_state,
    base_model,
    batched_model,
    lora_model,
    lora_state,
    random_tokens,
    reference_run,
    run_bank,
)
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from peft_zoo import (
    AdapterBank,
    BankError,
    adapter_state_dict,
    batched_lora_layers,
    save_adapter,
    use_adapters,
)
from peft_zoo.testing import assert_close, seeds


@pytest.fixture
def make_bank():
    yield from bank_factory()


# ----------------------------------------------------------------------------- loading = per-sample LoRA


@pytest.fixture(scope="module", params=["auto", "bag"])
def loaded(request, tmp_path_factory):
    """A bank holding four adapters of every kind the loader accepts, with their references."""
    refs: dict[str | None, nn.Module] = {None: base_model()}
    bank = AdapterBank(batched_model(strategy=request.param))
    refs["a"] = lora_model(1)
    bank.load("a", adapter_state_dict(refs["a"]))
    refs["small"] = lora_model(2, rank=2)  # rank 2 in rank-4 slots: zero padding
    bank.load("small", adapter_state_dict(refs["small"]))
    refs["alpha"] = lora_model(3, rank=3, alpha=6.0)  # a state dict's scale comes from alpha=...
    bank.load("alpha", adapter_state_dict(refs["alpha"]), alpha=6.0)
    refs["saved"] = lora_model(4, rank=4, alpha=8.0, rslora=True)  # the file's config carries alpha, rslora
    path = save_adapter(refs["saved"], tmp_path_factory.mktemp("bank") / "saved")
    bank.load("saved", path.parent)
    yield bank, refs
    bank.close()


@given(
    names=st.lists(st.sampled_from(["a", "small", "alpha", "saved", None]), min_size=1, max_size=6),
    seed=seeds(),
)
def test_batched_bank_equals_each_sample_through_its_own_lora_model(loaded, names, seed):
    bank, refs = loaded
    x = random_tokens(seed, len(names))
    assert_close(
        run_bank(bank, names, x),
        reference_run(refs, names, x),
        what="bank forward vs per-sample LoRALinear model",
        drawn={"names": names, "seed": seed, "strategy": next(iter(bank.layers.values())).strategy},
        hint="wrong slot scale (alpha / r, rsLoRA), padding of a smaller rank, or None not giving the base",
    )


def test_mixed_batch_with_repeats_and_base_rows(loaded):
    bank, refs = loaded
    names = ["a", None, "a", "saved", "small", None, "alpha", "a"]
    x = random_tokens(7, len(names))
    out = run_bank(bank, names, x)
    assert_close(out, reference_run(refs, names, x), what="mixed batch")
    # Adapters really differ from the base (otherwise the comparison above proves little).
    base = reference_run({n: refs[None] for n in refs}, names, x)
    for i, n in enumerate(names):
        assert torch.allclose(out[i], base[i], atol=1e-5) == (n is None), f"sample {i} ({n!r})"


def test_state_dict_without_alpha_uses_scale_one_and_alpha_changes_it(make_bank):
    bank = make_bank()
    ref = lora_model(5, rank=2, alpha=6.0)
    bank.load("default", adapter_state_dict(ref))  # alpha defaults to the rank: scale 1
    bank.load("scaled", adapter_state_dict(ref), alpha=6.0)
    x = random_tokens(0, 3)
    assert_close(run_bank(bank, ["scaled"] * 3, x), reference_run({"s": ref}, ["s"] * 3, x), what="alpha=6")
    plain = lora_model(5, rank=2)  # same weights, alpha = rank
    assert_close(
        run_bank(bank, ["default"] * 3, x), reference_run({"p": plain}, ["p"] * 3, x), what="no alpha"
    )
    assert not torch.allclose(run_bank(bank, ["default"], x[:1]), run_bank(bank, ["scaled"], x[:1]))


def test_load_returns_slots_in_order_and_names_track_them(make_bank):
    bank = make_bank()
    assert bank.free_slots == SLOTS and len(bank) == 0
    assert bank.load("a", adapter_state_dict(lora_model(1))) == 0
    assert bank.load("b", adapter_state_dict(lora_model(2))) == 1
    assert bank.names == {"a": 0, "b": 1} and bank.free_slots == SLOTS - 2
    assert "a" in bank and "zzz" not in bank and bank.slot("b") == 1


# ----------------------------------------------------------------------------- ids


def test_ids_maps_names_to_slots_and_none_to_minus_one(make_bank):
    bank = make_bank()
    bank.load("cell_type", adapter_state_dict(lora_model(1)))
    bank.load("disease", adapter_state_dict(lora_model(2)))
    ids = bank.ids(["disease", None, "cell_type", "disease"])
    assert ids.dtype == torch.long
    assert ids.tolist() == [1, -1, 0, 1]


def test_ids_unknown_name_is_named_with_close_matches(make_bank):
    bank = make_bank()
    bank.load("cell_type", adapter_state_dict(lora_model(1)))
    with pytest.raises(BankError, match="'cell_typ'") as info:
        bank.ids(["cell_type", "cell_typ"])
    assert "did you mean ['cell_type']" in str(info.value)


def test_ids_refuses_a_single_string(make_bank):
    bank = make_bank()
    bank.load("ab", adapter_state_dict(lora_model(1)))
    with pytest.raises(BankError, match="list"):
        bank.ids("ab")


# ----------------------------------------------------------------------------- evict


def test_evict_frees_the_slot_zeroes_it_and_stale_ids_give_the_base(make_bank):
    bank = make_bank()
    refs = {None: base_model(), "a": lora_model(1), "b": lora_model(2)}
    bank.load("a", adapter_state_dict(refs["a"]))
    bank.load("b", adapter_state_dict(refs["b"]))
    stale = bank.ids(["a", "b", None])
    free = bank.free_slots
    assert bank.evict("a") == 0
    assert bank.free_slots == free + 1 and "a" not in bank.names and bank.names == {"b": 1}
    for name, layer in bank.layers.items():
        assert not layer.lora_A[0].any() and not layer.lora_B[0].any(), f"{name}: slot 0 not zeroed"
    x = random_tokens(5, 3)
    with torch.no_grad(), use_adapters(bank.model, stale):
        out = bank.model(x)
    # The evicted slot acts as the base; the other adapter is untouched.
    assert_close(
        out, reference_run({**refs, "a": refs[None]}, ["a", "b", None], x), what="stale ids after evict"
    )
    with pytest.raises(BankError, match="'a'"):
        bank.ids(["a"])


def test_evict_unknown_name_raises_and_changes_nothing(make_bank):
    bank = make_bank()
    bank.load("alpha", lora_state(1))
    before = bank_state(bank)
    with pytest.raises(BankError, match="'alpah'") as info:
        bank.evict("alpah")
    assert "did you mean ['alpha']" in str(info.value)
    assert_bank_unchanged(bank, before, "evict unknown")


def test_load_after_evict_reuses_the_slot(make_bank):
    bank = make_bank(num_slots=2)
    bank.load("a", lora_state(1))
    bank.load("b", lora_state(2))
    slot = bank.evict("a")
    ref = lora_model(3, rank=2)
    assert bank.load("c", adapter_state_dict(ref)) == slot
    assert bank.free_slots == 0
    x = random_tokens(1, 2)
    assert_close(run_bank(bank, ["c", "c"], x), reference_run({"c": ref}, ["c", "c"], x), what="reused slot")


# ----------------------------------------------------------------------------- load_async


def test_load_async_runs_beside_batches_and_ids_waits_for_it(make_bank, monkeypatch):
    bank = make_bank()
    refs = {None: base_model(), "a": lora_model(1), "new": lora_model(2, rank=3)}
    bank.load("a", adapter_state_dict(refs["a"]))
    gate = threading.Event()
    write = bank._write

    def gated_write(slot, plan):  # hold the copy on the worker thread until we open the gate
        assert gate.wait(timeout=10), "test gate never opened"
        write(slot, plan)

    monkeypatch.setattr(bank, "_write", gated_write)
    fut = bank.load_async("new", adapter_state_dict(refs["new"]))
    assert isinstance(fut, Future)
    assert not fut.done()
    assert "new" in bank.names and bank.free_slots == SLOTS - 2  # reserved at once
    # A batch of other adapters runs while the load is pending.
    x = random_tokens(2, 3)
    assert_close(
        run_bank(bank, ["a", None, "a"], x), reference_run(refs, ["a", None, "a"], x), what="during load"
    )
    assert not fut.done()
    threading.Timer(0.05, gate.set).start()
    ids = bank.ids(["new", "a", None])  # blocks until "new" is copied
    assert fut.done() and fut.result() == ids[0].item() == 1
    with torch.no_grad(), use_adapters(bank.model, ids):
        out = bank.model(x)
    assert_close(out, reference_run(refs, ["new", "a", None], x), what="after load_async")


def test_load_async_result_is_the_slot(make_bank):
    bank = make_bank()
    ref = lora_model(3)
    fut = bank.load_async("x", adapter_state_dict(ref))
    assert fut.result(timeout=10) == 0
    x = random_tokens(0, 2)
    assert_close(run_bank(bank, ["x", "x"], x), reference_run({"x": ref}, ["x", "x"], x), what="load_async")


def test_load_async_full_bank_raises_immediately(make_bank):
    bank = make_bank(num_slots=1)
    bank.load("a", lora_state(1))
    before = bank_state(bank)
    with pytest.raises(BankError, match="full"):
        bank.load_async("b", lora_state(2))
    assert_bank_unchanged(bank, before, "load_async into a full bank")


def test_bank_leaves_other_tensors_alone(make_bank):
    """Loading and evicting touch only the adapter slots, never the frozen base."""
    bank = make_bank()
    before = {k: v.clone() for k, v in bank.model.state_dict().items() if "lora_" not in k}
    bank.load("a", lora_state(1))
    bank.evict("a")
    after = bank.model.state_dict()
    assert [k for k, v in before.items() if not torch.equal(after[k], v)] == []
    assert all(not p.requires_grad for layer in bank.layers.values() for p in layer.base.parameters())
    assert len(batched_lora_layers(bank.model)) == len(TARGETS)
