"""EmbeddingCache over a real AdapterBank: equal to a fresh forward, and never stale after a
reload, an in-place update or an eviction (the bank's versions key the entries)."""

from __future__ import annotations

import pytest
import torch

from peft_zoo import (
    AdapterBank,
    EmbeddingCache,
    adapter_named_parameters,
    adapter_state_dict,
    inject_batched_lora,
    inject_lora,
    use_adapters,
)
from peft_zoo.models import TinyTransformer, TinyTransformerConfig
from peft_zoo.testing import assert_close

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
