"""AdapterBank refuses what it cannot load and then changes nothing: bad adapters (shapes,
ranks, unknown or missing layers, NaN, corrupt or non-LoRA files), a full bank, a taken or
bad name. Every refusal checks that the error names the problem and that the bank and the
model are exactly as they were.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bank_helpers import (
    CFG,
    RANK,
    TARGETS,
    assert_bank_unchanged,
    bank_factory,
    bank_state,
    base_model,
    lora_model,
    lora_state,
    random_tokens,
    reference_run,
    run_bank,
)

from peft_zoo import AdapterBank, BankError, adapter_state_dict, inject_ia3, save_adapter
from peft_zoo.testing import assert_close


@pytest.fixture
def make_bank():
    yield from bank_factory()


# ----------------------------------------------------------------------------- refused loads change nothing


def _with(sd: dict, key: str, value: torch.Tensor) -> dict:
    return {**sd, key: value}


def _without(sd: dict, layer: str) -> dict:
    return {k: v for k, v in sd.items() if not k.startswith(layer + ".")}


def _nan(sd: dict) -> dict:
    t = sd["head.lora_B"].clone()
    t[0, 0] = float("nan")
    return _with(sd, "head.lora_B", t)


def _truncated_file(tmp: Path) -> Path:
    path = save_adapter(lora_model(9), tmp / "cut.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _garbage_file(tmp: Path) -> Path:
    path = tmp / "garbage.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    return path


def _ia3_file(tmp: Path) -> Path:
    model = base_model()
    inject_ia3(model, TARGETS)
    return save_adapter(model, tmp / "ia3")


BAD_ADAPTERS = {
    "rank larger than the bank's": (lambda tmp: lora_state(rank=RANK + 2), {}, "exceeds"),
    "wrong in_features": (
        lambda tmp: _with(lora_state(), "blocks.0.attn.branch.q.lora_A", torch.randn(RANK, CFG.d_model + 1)),
        {},
        "shape mismatch",
    ),
    "wrong out_features": (
        lambda tmp: _with(lora_state(), "head.lora_B", torch.randn(CFG.n_classes + 1, RANK)),
        {},
        "shape mismatch",
    ),
    "unknown layer key": (
        lambda tmp: {
            **lora_state(),
            "blocks.0.attn.branch.qq.lora_A": torch.randn(RANK, 16),
            "blocks.0.attn.branch.qq.lora_B": torch.randn(16, RANK),
        },
        {},
        "'blocks.0.attn.branch.qq' is not a batched layer",
    ),
    "missing layer, strict": (
        lambda tmp: _without(lora_state(), "head"),
        {},
        r"no tensors for batched layers \['head'\]",
    ),
    "lora_B missing for one layer": (
        lambda tmp: {k: v for k, v in lora_state().items() if k != "head.lora_B"},
        {"strict": False},
        "needs both",
    ),
    "NaN weights": (lambda tmp: _nan(lora_state()), {}, "NaN"),
    "not a LoRA tensor": (
        lambda tmp: _with(lora_state(), "head.weight", torch.randn(8, 16)),
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
    ref = lora_model(1)
    bank.load("a", adapter_state_dict(ref))
    adapter = build(tmp_path)
    before = bank_state(bank)
    with pytest.raises(BankError, match=message) as info:
        bank.load("new", adapter, **kwargs)
    assert "'new'" in str(info.value)
    assert_bank_unchanged(bank, before, case)
    with pytest.raises(BankError, match=message):
        bank.load_async("new", adapter, **kwargs)  # validation is synchronous
    assert_bank_unchanged(bank, before, f"{case} (load_async)")
    # Nothing was reserved: the name and the slot are still free, the old adapter still works.
    assert bank.load("new", adapter_state_dict(lora_model(2))) == 1
    x = random_tokens(0, 2)
    assert_close(
        run_bank(bank, ["a", None], x),
        reference_run({"a": ref, None: base_model()}, ["a", None], x),
        what=case,
    )


def test_full_bank_refuses_and_changes_nothing(make_bank):
    bank = make_bank(num_slots=2)
    bank.load("a", lora_state(1))
    bank.load("b", lora_state(2))
    before = bank_state(bank)
    with pytest.raises(BankError, match="full") as info:
        bank.load("c", lora_state(3))
    assert "'c'" in str(info.value)
    assert_bank_unchanged(bank, before, "full bank")


def test_duplicate_name_refuses_and_changes_nothing(make_bank):
    bank = make_bank()
    bank.load("a", lora_state(1))
    before = bank_state(bank)
    with pytest.raises(BankError, match="already loaded"):
        bank.load("a", lora_state(2))
    assert_bank_unchanged(bank, before, "duplicate name")


@pytest.mark.parametrize("name", ["", 3, None])
def test_bad_names_are_refused(make_bank, name):
    bank = make_bank()
    before = bank_state(bank)
    with pytest.raises(BankError, match="non-empty strings"):
        bank.load(name, lora_state(1))
    assert_bank_unchanged(bank, before, f"name {name!r}")


def test_not_strict_leaves_uncovered_layers_at_base(make_bank):
    bank = make_bank()
    full = lora_model(4)
    partial = _without(adapter_state_dict(full), "blocks.1.ffn.branch.fc1")
    bank.load("partial", partial, strict=False)
    # Reference: the same adapter on the covered layers only.
    ref = lora_model(4)
    with torch.no_grad():
        ref.get_submodule("blocks.1.ffn.branch.fc1").lora_B.zero_()
    x = random_tokens(3, 4)
    names = ["partial", None, "partial", "partial"]
    out = run_bank(bank, names, x)
    assert_close(out, reference_run({"partial": ref, None: base_model()}, names, x), what="strict=False")
    assert not torch.allclose(out[0], reference_run({"f": full}, ["f"], x[:1])[0]), (
        "the uncovered layer acted"
    )


def test_bank_needs_batched_layers():
    with pytest.raises(BankError, match="no BatchedLoRALinear"):
        AdapterBank(base_model())
