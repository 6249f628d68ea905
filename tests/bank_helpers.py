"""Models and helpers shared by the AdapterBank tests (test_bank*.py).

The reference for every batched output is the ordinary single-adapter model: each sample
run alone through a copy of the base with ``inject_lora`` and the same adapter weights
(``None``: the base model).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from peft_zoo import (
    AdapterBank,
    adapter_named_parameters,
    adapter_state_dict,
    inject_batched_lora,
    inject_lora,
    use_adapters,
)
from peft_zoo.models import TinyTransformer, TinyTransformerConfig
from peft_zoo.testing import assert_model_unchanged, fingerprint

CFG = TinyTransformerConfig(vocab_size=16, max_len=8, d_model=16, n_heads=2, d_ff=32, n_layers=2, n_classes=8)
TARGETS = ["blocks.0.attn.branch.q", "blocks.0.attn.branch.v", "blocks.1.ffn.branch.fc1", "head"]
SLOTS, RANK = 4, 4


def base_model() -> TinyTransformer:
    torch.manual_seed(0)
    return TinyTransformer(CFG).eval()


def lora_model(seed: int, rank: int = RANK, alpha: float | None = None, targets=TARGETS, **kw) -> nn.Module:
    """A copy of the base with ``inject_lora`` and random nonzero ("trained") A and B."""
    model = base_model()
    inject_lora(model, targets, rank, alpha, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in adapter_named_parameters(model):
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return model.eval()


def batched_model(num_slots: int = SLOTS, rank: int = RANK, **kw) -> nn.Module:
    model = base_model()
    inject_batched_lora(model, TARGETS, num_slots, rank, **kw)
    return model.eval()


def random_tokens(seed: int, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, CFG.vocab_size, (batch, 6), generator=g)


@torch.no_grad()
def run_bank(bank: AdapterBank, names: list[str | None], x: torch.Tensor) -> torch.Tensor:
    with use_adapters(bank.model, bank.ids(names)):
        return bank.model(x)


@torch.no_grad()
def reference_run(
    models: dict[str | None, nn.Module], names: list[str | None], x: torch.Tensor
) -> torch.Tensor:
    """Each sample alone through its own single-adapter model (``None``: the base)."""
    return torch.cat([models[n](x[i : i + 1]) for i, n in enumerate(names)])


def bank_state(bank: AdapterBank) -> dict:
    """What a refused operation must leave as it was: the model, slots and versions."""
    return {
        "model": fingerprint(bank.model),
        "names": bank.names,
        "free": bank.free_slots,
        "versions": {n: bank.version(n) for n in bank.names},
    }


def assert_bank_unchanged(bank: AdapterBank, before: dict, what: str) -> None:
    assert_model_unchanged(bank.model, before["model"], what=what)
    assert bank.names == before["names"], f"{what}: slot names changed"
    assert bank.free_slots == before["free"], f"{what}: free slots changed"
    now = {n: bank.version(n) for n in bank.names}
    assert now == before["versions"], f"{what}: versions changed"


def lora_state(seed: int = 9, rank: int = RANK) -> dict[str, torch.Tensor]:
    """The adapter state dict of :func:`lora_model` (cloned tensors)."""
    return {k: v.clone() for k, v in adapter_state_dict(lora_model(seed, rank=rank)).items()}


def bank_factory() -> Iterator[Callable[..., AdapterBank]]:
    """Body of the ``make_bank`` fixture: ``make(**batched_model kwargs)`` builds banks, all
    closed at teardown."""
    banks: list[AdapterBank] = []

    def make(**kw) -> AdapterBank:
        bank = AdapterBank(batched_model(**kw))
        banks.append(bank)
        return bank

    yield make
    for bank in banks:
        bank.close()
