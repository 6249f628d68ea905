"""AdapterBank.version: the identity an EmbeddingCache keys on changes whenever what a name
computes changes (a reload, an in-place update, an optimizer step) and only then.
"""

from __future__ import annotations

import pytest
import torch
from bank_helpers import bank_factory, lora_state, random_tokens, run_bank

from peft_zoo import BankError, adapter_state_dict


@pytest.fixture
def make_bank():
    yield from bank_factory()


# ----------------------------------------------------------------------------- versions


def test_version_changes_on_reload_of_the_same_name(make_bank):
    bank = make_bank()
    bank.load("a", lora_state(1))
    v = bank.version("a")
    assert bank.version("a") == v  # nothing changed
    bank.evict("a")
    bank.load("a", lora_state(2))
    assert bank.version("a") != v
    v2 = bank.version("a")
    bank.evict("a")
    bank.load("a", lora_state(2))  # even identical weights: a new load is a new version
    assert bank.version("a") != v2


def test_version_is_stable_across_forwards_and_reads(make_bank):
    bank = make_bank()
    bank.load("a", lora_state(1))
    v = bank.version("a")
    run_bank(bank, ["a", None], random_tokens(0, 2))
    bank.ids(["a"])
    _ = bank.names, bank.free_slots, adapter_state_dict(bank.model)
    assert bank.version("a") == v


def test_version_changes_after_in_place_update(make_bank):
    bank = make_bank()
    bank.load("a", lora_state(1))
    layer = bank.layers["head"]
    v = bank.version("a")
    with torch.no_grad():
        layer.lora_B.add_(1)
    assert bank.version("a") != v


def test_version_changes_after_an_optimizer_step(make_bank):
    bank = make_bank()
    bank.load("a", lora_state(1))
    v = bank.version("a")
    params = [p for layer in bank.layers.values() for p in (layer.lora_A, layer.lora_B)]
    opt = torch.optim.SGD(params, lr=0.1)
    for p in params:  # a gradient as backward() would leave it (backward itself is not under test)
        p.grad = torch.ones_like(p)
    opt.step()
    assert bank.version("a") != v


def test_in_place_update_is_not_hidden_by_a_later_load(make_bank):
    """An optimizer step followed by a load into another slot must still change the version:
    the load must not adopt the stepped weights as "known" without noticing the change."""
    bank = make_bank()
    bank.load("a", lora_state(1))
    v = bank.version("a")
    with torch.no_grad():
        bank.layers["head"].lora_B[0].add_(1)
    bank.load("b", lora_state(2))
    assert bank.version("a") != v
    v = bank.version("a")
    with torch.no_grad():
        bank.layers["head"].lora_A[0].mul_(2)
    bank.evict("b")
    assert bank.version("a") != v


def test_loading_or_evicting_another_adapter_keeps_a_version(make_bank):
    bank = make_bank()
    bank.load("a", lora_state(1))
    v = bank.version("a")
    bank.load("b", lora_state(2))
    assert bank.version("a") == v
    bank.load_async("c", lora_state(3)).result(timeout=10)
    assert bank.version("a") == v
    bank.evict("b")
    assert bank.version("a") == v
    vc = bank.version("c")
    bank.evict("c")
    bank.load("c", lora_state(4))
    assert bank.version("a") == v and bank.version("c") != vc


def test_version_of_base_is_constant(make_bank):
    bank = make_bank()
    v = bank.version(None)
    bank.load("a", lora_state(1))
    with torch.no_grad():
        bank.layers["head"].lora_B.add_(1)
    bank.evict("a")
    assert bank.version(None) == v


def test_version_of_unknown_name_raises(make_bank):
    bank = make_bank()
    with pytest.raises(BankError, match="'nope'"):
        bank.version("nope")
