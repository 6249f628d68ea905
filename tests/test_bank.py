"""Tests for peft_zoo.serving.bank: named adapter slots over a model's BatchedLoRALinear layers.

The reference for every batched output is the ordinary single-adapter model: each sample
run alone through a copy of the base with ``inject_lora`` and the same adapter weights
(``None``: the base model). Every refused operation checks that the error names the
problem and that the bank and the model are exactly as they were.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from peft_zoo import (
    AdapterBank,
    BankError,
    adapter_named_parameters,
    adapter_state_dict,
    batched_lora_layers,
    inject_batched_lora,
    inject_ia3,
    inject_lora,
    save_adapter,
    use_adapters,
)
from peft_zoo.models import TinyTransformer, TinyTransformerConfig
from peft_zoo.testing import assert_close, assert_model_unchanged, fingerprint, seeds

CFG = TinyTransformerConfig(vocab_size=16, max_len=8, d_model=16, n_heads=2, d_ff=32, n_layers=2, n_classes=8)
TARGETS = ["blocks.0.attn.branch.q", "blocks.0.attn.branch.v", "blocks.1.ffn.branch.fc1", "head"]
SLOTS, RANK = 4, 4


# ----------------------------------------------------------------------------- helpers


def _base() -> TinyTransformer:
    torch.manual_seed(0)
    return TinyTransformer(CFG).eval()


def _lora(seed: int, rank: int = RANK, alpha: float | None = None, targets=TARGETS, **kw) -> nn.Module:
    """A copy of the base with ``inject_lora`` and random nonzero ("trained") A and B."""
    model = _base()
    inject_lora(model, targets, rank, alpha, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in adapter_named_parameters(model):
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return model.eval()


def _batched(num_slots: int = SLOTS, rank: int = RANK, **kw) -> nn.Module:
    model = _base()
    inject_batched_lora(model, TARGETS, num_slots, rank, **kw)
    return model.eval()


def _tokens(seed: int, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, CFG.vocab_size, (batch, 6), generator=g)


@torch.no_grad()
def _run(bank: AdapterBank, names: list[str | None], x: torch.Tensor) -> torch.Tensor:
    with use_adapters(bank.model, bank.ids(names)):
        return bank.model(x)


@torch.no_grad()
def _reference(models: dict[str | None, nn.Module], names: list[str | None], x: torch.Tensor) -> torch.Tensor:
    """Each sample alone through its own single-adapter model (``None``: the base)."""
    return torch.cat([models[n](x[i : i + 1]) for i, n in enumerate(names)])


def _state(bank: AdapterBank) -> dict:
    """What a refused operation must leave as it was: the model, slots and versions."""
    return {
        "model": fingerprint(bank.model),
        "names": bank.names,
        "free": bank.free_slots,
        "versions": {n: bank.version(n) for n in bank.names},
    }


def _assert_bank_unchanged(bank: AdapterBank, before: dict, what: str) -> None:
    assert_model_unchanged(bank.model, before["model"], what=what)
    assert bank.names == before["names"], f"{what}: slot names changed"
    assert bank.free_slots == before["free"], f"{what}: free slots changed"
    now = {n: bank.version(n) for n in bank.names}
    assert now == before["versions"], f"{what}: versions changed"


@pytest.fixture
def make_bank():
    banks: list[AdapterBank] = []

    def make(**kw) -> AdapterBank:
        bank = AdapterBank(_batched(**kw))
        banks.append(bank)
        return bank

    yield make
    for bank in banks:
        bank.close()


# ----------------------------------------------------------------------------- loading = per-sample LoRA


@pytest.fixture(scope="module", params=["auto", "bag"])
def loaded(request, tmp_path_factory):
    """A bank holding four adapters of every kind the loader accepts, with their references."""
    refs: dict[str | None, nn.Module] = {None: _base()}
    bank = AdapterBank(_batched(strategy=request.param))
    refs["a"] = _lora(1)
    bank.load("a", adapter_state_dict(refs["a"]))
    refs["small"] = _lora(2, rank=2)  # rank 2 in rank-4 slots: zero padding
    bank.load("small", adapter_state_dict(refs["small"]))
    refs["alpha"] = _lora(3, rank=3, alpha=6.0)  # a state dict's scale comes from alpha=...
    bank.load("alpha", adapter_state_dict(refs["alpha"]), alpha=6.0)
    refs["saved"] = _lora(4, rank=4, alpha=8.0, rslora=True)  # the file's config carries alpha, rslora
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
    x = _tokens(seed, len(names))
    assert_close(
        _run(bank, names, x),
        _reference(refs, names, x),
        what="bank forward vs per-sample LoRALinear model",
        drawn={"names": names, "seed": seed, "strategy": next(iter(bank.layers.values())).strategy},
        hint="wrong slot scale (alpha / r, rsLoRA), padding of a smaller rank, or None not giving the base",
    )


def test_mixed_batch_with_repeats_and_base_rows(loaded):
    bank, refs = loaded
    names = ["a", None, "a", "saved", "small", None, "alpha", "a"]
    x = _tokens(7, len(names))
    out = _run(bank, names, x)
    assert_close(out, _reference(refs, names, x), what="mixed batch")
    # Adapters really differ from the base (otherwise the comparison above proves little).
    base = _reference({n: refs[None] for n in refs}, names, x)
    for i, n in enumerate(names):
        assert torch.allclose(out[i], base[i], atol=1e-5) == (n is None), f"sample {i} ({n!r})"


def test_state_dict_without_alpha_uses_scale_one_and_alpha_changes_it(make_bank):
    bank = make_bank()
    ref = _lora(5, rank=2, alpha=6.0)
    bank.load("default", adapter_state_dict(ref))  # alpha defaults to the rank: scale 1
    bank.load("scaled", adapter_state_dict(ref), alpha=6.0)
    x = _tokens(0, 3)
    assert_close(_run(bank, ["scaled"] * 3, x), _reference({"s": ref}, ["s"] * 3, x), what="alpha=6")
    plain = _lora(5, rank=2)  # same weights, alpha = rank
    assert_close(_run(bank, ["default"] * 3, x), _reference({"p": plain}, ["p"] * 3, x), what="no alpha")
    assert not torch.allclose(_run(bank, ["default"], x[:1]), _run(bank, ["scaled"], x[:1]))


def test_load_returns_slots_in_order_and_names_track_them(make_bank):
    bank = make_bank()
    assert bank.free_slots == SLOTS and len(bank) == 0
    assert bank.load("a", adapter_state_dict(_lora(1))) == 0
    assert bank.load("b", adapter_state_dict(_lora(2))) == 1
    assert bank.names == {"a": 0, "b": 1} and bank.free_slots == SLOTS - 2
    assert "a" in bank and "zzz" not in bank and bank.slot("b") == 1


# ----------------------------------------------------------------------------- ids


def test_ids_maps_names_to_slots_and_none_to_minus_one(make_bank):
    bank = make_bank()
    bank.load("cell_type", adapter_state_dict(_lora(1)))
    bank.load("disease", adapter_state_dict(_lora(2)))
    ids = bank.ids(["disease", None, "cell_type", "disease"])
    assert ids.dtype == torch.long
    assert ids.tolist() == [1, -1, 0, 1]


def test_ids_unknown_name_is_named_with_close_matches(make_bank):
    bank = make_bank()
    bank.load("cell_type", adapter_state_dict(_lora(1)))
    with pytest.raises(BankError, match="'cell_typ'") as info:
        bank.ids(["cell_type", "cell_typ"])
    assert "did you mean ['cell_type']" in str(info.value)


def test_ids_refuses_a_single_string(make_bank):
    bank = make_bank()
    bank.load("ab", adapter_state_dict(_lora(1)))
    with pytest.raises(BankError, match="list"):
        bank.ids("ab")


# ----------------------------------------------------------------------------- refused loads change nothing


def _sd(seed: int = 9, rank: int = RANK) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in adapter_state_dict(_lora(seed, rank=rank)).items()}


def _with(sd: dict, key: str, value: torch.Tensor) -> dict:
    return {**sd, key: value}


def _without(sd: dict, layer: str) -> dict:
    return {k: v for k, v in sd.items() if not k.startswith(layer + ".")}


def _nan(sd: dict) -> dict:
    t = sd["head.lora_B"].clone()
    t[0, 0] = float("nan")
    return _with(sd, "head.lora_B", t)


def _truncated_file(tmp: Path) -> Path:
    path = save_adapter(_lora(9), tmp / "cut.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _garbage_file(tmp: Path) -> Path:
    path = tmp / "garbage.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    return path


def _ia3_file(tmp: Path) -> Path:
    model = _base()
    inject_ia3(model, TARGETS)
    return save_adapter(model, tmp / "ia3")


BAD_ADAPTERS = {
    "rank larger than the bank's": (lambda tmp: _sd(rank=RANK + 2), {}, "exceeds"),
    "wrong in_features": (
        lambda tmp: _with(_sd(), "blocks.0.attn.branch.q.lora_A", torch.randn(RANK, CFG.d_model + 1)),
        {},
        "shape mismatch",
    ),
    "wrong out_features": (
        lambda tmp: _with(_sd(), "head.lora_B", torch.randn(CFG.n_classes + 1, RANK)),
        {},
        "shape mismatch",
    ),
    "unknown layer key": (
        lambda tmp: {
            **_sd(),
            "blocks.0.attn.branch.qq.lora_A": torch.randn(RANK, 16),
            "blocks.0.attn.branch.qq.lora_B": torch.randn(16, RANK),
        },
        {},
        "'blocks.0.attn.branch.qq' is not a batched layer",
    ),
    "missing layer, strict": (
        lambda tmp: _without(_sd(), "head"),
        {},
        r"no tensors for batched layers \['head'\]",
    ),
    "lora_B missing for one layer": (
        lambda tmp: {k: v for k, v in _sd().items() if k != "head.lora_B"},
        {"strict": False},
        "needs both",
    ),
    "NaN weights": (lambda tmp: _nan(_sd()), {}, "NaN"),
    "not a LoRA tensor": (
        lambda tmp: _with(_sd(), "head.weight", torch.randn(8, 16)),
        {},
        "not a LoRA tensor",
    ),
    "empty state dict": (lambda tmp: {}, {"strict": False}, "no LoRA tensors"),
    "truncated safetensors": (_truncated_file, {}, "truncated or corrupt"),
    "corrupt safetensors": (_garbage_file, {}, "truncated or corrupt"),
    "missing file": (lambda tmp: tmp / "nope.safetensors", {}, "no such adapter"),
    "IA3 adapter file": (_ia3_file, {}, "not LoRA"),
}


@pytest.mark.parametrize("case", sorted(BAD_ADAPTERS))
def test_refused_load_changes_nothing(make_bank, tmp_path, case):
    build, kwargs, message = BAD_ADAPTERS[case]
    bank = make_bank()
    ref = _lora(1)
    bank.load("a", adapter_state_dict(ref))
    adapter = build(tmp_path)
    before = _state(bank)
    with pytest.raises(BankError, match=message) as info:
        bank.load("new", adapter, **kwargs)
    assert "'new'" in str(info.value)
    _assert_bank_unchanged(bank, before, case)
    with pytest.raises(BankError, match=message):
        bank.load_async("new", adapter, **kwargs)  # validation is synchronous
    _assert_bank_unchanged(bank, before, f"{case} (load_async)")
    # Nothing was reserved: the name and the slot are still free, the old adapter still works.
    assert bank.load("new", adapter_state_dict(_lora(2))) == 1
    x = _tokens(0, 2)
    assert_close(_run(bank, ["a", None], x), _reference({"a": ref, None: _base()}, ["a", None], x), what=case)


def test_full_bank_refuses_and_changes_nothing(make_bank):
    bank = make_bank(num_slots=2)
    bank.load("a", _sd(1))
    bank.load("b", _sd(2))
    before = _state(bank)
    with pytest.raises(BankError, match="full") as info:
        bank.load("c", _sd(3))
    assert "'c'" in str(info.value)
    _assert_bank_unchanged(bank, before, "full bank")


def test_duplicate_name_refuses_and_changes_nothing(make_bank):
    bank = make_bank()
    bank.load("a", _sd(1))
    before = _state(bank)
    with pytest.raises(BankError, match="already loaded"):
        bank.load("a", _sd(2))
    _assert_bank_unchanged(bank, before, "duplicate name")


@pytest.mark.parametrize("name", ["", 3, None])
def test_bad_names_are_refused(make_bank, name):
    bank = make_bank()
    before = _state(bank)
    with pytest.raises(BankError, match="non-empty strings"):
        bank.load(name, _sd(1))
    _assert_bank_unchanged(bank, before, f"name {name!r}")


def test_not_strict_leaves_uncovered_layers_at_base(make_bank):
    bank = make_bank()
    full = _lora(4)
    partial = _without(adapter_state_dict(full), "blocks.1.ffn.branch.fc1")
    bank.load("partial", partial, strict=False)
    # Reference: the same adapter on the covered layers only.
    ref = _lora(4)
    with torch.no_grad():
        ref.get_submodule("blocks.1.ffn.branch.fc1").lora_B.zero_()
    x = _tokens(3, 4)
    names = ["partial", None, "partial", "partial"]
    out = _run(bank, names, x)
    assert_close(out, _reference({"partial": ref, None: _base()}, names, x), what="strict=False")
    assert not torch.allclose(out[0], _reference({"f": full}, ["f"], x[:1])[0]), "the uncovered layer acted"


def test_bank_needs_batched_layers():
    with pytest.raises(BankError, match="no BatchedLoRALinear"):
        AdapterBank(_base())


# ----------------------------------------------------------------------------- evict


def test_evict_frees_the_slot_zeroes_it_and_stale_ids_give_the_base(make_bank):
    bank = make_bank()
    refs = {None: _base(), "a": _lora(1), "b": _lora(2)}
    bank.load("a", adapter_state_dict(refs["a"]))
    bank.load("b", adapter_state_dict(refs["b"]))
    stale = bank.ids(["a", "b", None])
    free = bank.free_slots
    assert bank.evict("a") == 0
    assert bank.free_slots == free + 1 and "a" not in bank.names and bank.names == {"b": 1}
    for name, layer in bank.layers.items():
        assert not layer.lora_A[0].any() and not layer.lora_B[0].any(), f"{name}: slot 0 not zeroed"
    x = _tokens(5, 3)
    with torch.no_grad(), use_adapters(bank.model, stale):
        out = bank.model(x)
    # The evicted slot acts as the base; the other adapter is untouched.
    assert_close(
        out, _reference({**refs, "a": refs[None]}, ["a", "b", None], x), what="stale ids after evict"
    )
    with pytest.raises(BankError, match="'a'"):
        bank.ids(["a"])


def test_evict_unknown_name_raises_and_changes_nothing(make_bank):
    bank = make_bank()
    bank.load("alpha", _sd(1))
    before = _state(bank)
    with pytest.raises(BankError, match="'alpah'") as info:
        bank.evict("alpah")
    assert "did you mean ['alpha']" in str(info.value)
    _assert_bank_unchanged(bank, before, "evict unknown")


def test_load_after_evict_reuses_the_slot(make_bank):
    bank = make_bank(num_slots=2)
    bank.load("a", _sd(1))
    bank.load("b", _sd(2))
    slot = bank.evict("a")
    ref = _lora(3, rank=2)
    assert bank.load("c", adapter_state_dict(ref)) == slot
    assert bank.free_slots == 0
    x = _tokens(1, 2)
    assert_close(_run(bank, ["c", "c"], x), _reference({"c": ref}, ["c", "c"], x), what="reused slot")


# ----------------------------------------------------------------------------- load_async


def test_load_async_runs_beside_batches_and_ids_waits_for_it(make_bank, monkeypatch):
    bank = make_bank()
    refs = {None: _base(), "a": _lora(1), "new": _lora(2, rank=3)}
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
    x = _tokens(2, 3)
    assert_close(_run(bank, ["a", None, "a"], x), _reference(refs, ["a", None, "a"], x), what="during load")
    assert not fut.done()
    threading.Timer(0.05, gate.set).start()
    ids = bank.ids(["new", "a", None])  # blocks until "new" is copied
    assert fut.done() and fut.result() == ids[0].item() == 1
    with torch.no_grad(), use_adapters(bank.model, ids):
        out = bank.model(x)
    assert_close(out, _reference(refs, ["new", "a", None], x), what="after load_async")


def test_load_async_result_is_the_slot(make_bank):
    bank = make_bank()
    ref = _lora(3)
    fut = bank.load_async("x", adapter_state_dict(ref))
    assert fut.result(timeout=10) == 0
    x = _tokens(0, 2)
    assert_close(_run(bank, ["x", "x"], x), _reference({"x": ref}, ["x", "x"], x), what="load_async")


def test_load_async_full_bank_raises_immediately(make_bank):
    bank = make_bank(num_slots=1)
    bank.load("a", _sd(1))
    before = _state(bank)
    with pytest.raises(BankError, match="full"):
        bank.load_async("b", _sd(2))
    _assert_bank_unchanged(bank, before, "load_async into a full bank")


# ----------------------------------------------------------------------------- versions


def test_version_changes_on_reload_of_the_same_name(make_bank):
    bank = make_bank()
    bank.load("a", _sd(1))
    v = bank.version("a")
    assert bank.version("a") == v  # nothing changed
    bank.evict("a")
    bank.load("a", _sd(2))
    assert bank.version("a") != v
    v2 = bank.version("a")
    bank.evict("a")
    bank.load("a", _sd(2))  # even identical weights: a new load is a new version
    assert bank.version("a") != v2


def test_version_is_stable_across_forwards_and_reads(make_bank):
    bank = make_bank()
    bank.load("a", _sd(1))
    v = bank.version("a")
    _run(bank, ["a", None], _tokens(0, 2))
    bank.ids(["a"])
    _ = bank.names, bank.free_slots, adapter_state_dict(bank.model)
    assert bank.version("a") == v


def test_version_changes_after_in_place_update(make_bank):
    bank = make_bank()
    bank.load("a", _sd(1))
    layer = bank.layers["head"]
    v = bank.version("a")
    with torch.no_grad():
        layer.lora_B.add_(1)
    assert bank.version("a") != v


def test_version_changes_after_an_optimizer_step(make_bank):
    bank = make_bank()
    bank.load("a", _sd(1))
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
    bank.load("a", _sd(1))
    v = bank.version("a")
    with torch.no_grad():
        bank.layers["head"].lora_B[0].add_(1)
    bank.load("b", _sd(2))
    assert bank.version("a") != v
    v = bank.version("a")
    with torch.no_grad():
        bank.layers["head"].lora_A[0].mul_(2)
    bank.evict("b")
    assert bank.version("a") != v


def test_loading_or_evicting_another_adapter_keeps_a_version(make_bank):
    bank = make_bank()
    bank.load("a", _sd(1))
    v = bank.version("a")
    bank.load("b", _sd(2))
    assert bank.version("a") == v
    bank.load_async("c", _sd(3)).result(timeout=10)
    assert bank.version("a") == v
    bank.evict("b")
    assert bank.version("a") == v
    vc = bank.version("c")
    bank.evict("c")
    bank.load("c", _sd(4))
    assert bank.version("a") == v and bank.version("c") != vc


def test_version_of_base_is_constant(make_bank):
    bank = make_bank()
    v = bank.version(None)
    bank.load("a", _sd(1))
    with torch.no_grad():
        bank.layers["head"].lora_B.add_(1)
    bank.evict("a")
    assert bank.version(None) == v


def test_version_of_unknown_name_raises(make_bank):
    bank = make_bank()
    with pytest.raises(BankError, match="'nope'"):
        bank.version("nope")


def test_bank_leaves_other_tensors_alone(make_bank):
    """Loading and evicting touch only the adapter slots, never the frozen base."""
    bank = make_bank()
    before = {k: v.clone() for k, v in bank.model.state_dict().items() if "lora_" not in k}
    bank.load("a", _sd(1))
    bank.evict("a")
    after = bank.model.state_dict()
    assert [k for k, v in before.items() if not torch.equal(after[k], v)] == []
    assert all(not p.requires_grad for layer in bank.layers.values() for p in layer.base.parameters())
    assert len(batched_lora_layers(bank.model)) == len(TARGETS)
