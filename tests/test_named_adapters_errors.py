"""Named adapters refuse bad input with an error naming the problem, and change nothing:
unknown, duplicate and malformed names, configs they cannot build, ``adapter_names`` of the
wrong length or type or in training mode, files that do not fit; deleting the active or the
only adapter follows PEFT (tested against PEFT in test_named_adapters.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("transformers")

from named_adapter_helpers import build_pair, ids
from peft_format_helpers import base

import peft_zoo as pz
from peft_zoo.interop import PeftFormatError
from peft_zoo.serving.named import (
    active_adapters,
    add_adapter,
    delete_adapter,
    disable_adapters,
    list_adapters,
    load_peft_adapter,
    set_adapter,
    use_adapter_names,
)
from peft_zoo.testing import assert_model_unchanged, fingerprint

LORA = pz.LoraConfig(rank=2, target_modules=["query"])


def state(model: torch.nn.Module) -> tuple[Any, list[str], list[str], str]:
    return fingerprint(model), list_adapters(model), active_adapters(model), repr(model)


def refused(model: torch.nn.Module, call: Callable[[], object], error: type[Exception], match: str) -> None:
    before = state(model)
    with pytest.raises(error, match=match):
        call()
    assert_model_unchanged(model, before[0], what=f"a refused call ({match})")
    assert state(model)[1:] == before[1:]


@pytest.fixture
def model() -> torch.nn.Module:
    return build_pair("bert", seed=0).ours


CASES: dict[str, tuple[Callable[[torch.nn.Module], object], type[Exception], str]] = {
    "add-duplicate": (lambda m: add_adapter(m, "b", LORA), ValueError, "named 'b' already exists"),
    "add-default-duplicate": (lambda m: add_adapter(m, "default", LORA), ValueError, "already exists"),
    "add-name-int": (lambda m: add_adapter(m, 3, LORA), TypeError, "must be a str"),
    "add-name-dot": (lambda m: add_adapter(m, "a.b", LORA), ValueError, "not allowed"),
    "add-name-empty": (lambda m: add_adapter(m, "", LORA), ValueError, "not allowed"),
    "add-name-base": (lambda m: add_adapter(m, "__base__", LORA), ValueError, "base model"),
    "add-config-dict": (lambda m: add_adapter(m, "c", {"rank": 2}), TypeError, "config must be one of"),
    "add-dora": (
        lambda m: add_adapter(m, "c", pz.LoraConfig(rank=2, target_modules=["query"], use_dora=True)),
        ValueError,
        "use_dora",
    ),
    "add-unknown-target": (
        lambda m: add_adapter(m, "c", pz.LoraConfig(rank=2, target_modules=["nope"])),
        ValueError,
        "nope",
    ),
    "add-bad-rank-pattern": (
        lambda m: add_adapter(
            m, "c", pz.LoraConfig(rank=2, target_modules=["query"], rank_pattern={"value": 3})
        ),
        ValueError,
        "rank_pattern",
    ),
    "set-unknown": (lambda m: set_adapter(m, "nope"), ValueError, "no adapter named 'nope'.*holds"),
    "set-unknown-in-list": (lambda m: set_adapter(m, ["b", "nope"]), ValueError, "'nope'"),
    "set-empty-list": (lambda m: set_adapter(m, []), TypeError, "non-empty list"),
    "set-non-str": (lambda m: set_adapter(m, ["b", 1]), TypeError, "must be str"),
    "set-inference-str": (lambda m: set_adapter(m, "b", inference_mode="yes"), TypeError, "inference_mode"),
    "delete-unknown": (lambda m: delete_adapter(m, "nope"), ValueError, "no adapter named 'nope'"),
    "delete-non-str": (lambda m: delete_adapter(m, None), TypeError, "must be a str"),
    "names-unknown": (lambda m: use_adapter_names(m, ["b", "x"]).__enter__(), ValueError, "'x'"),
    "names-str": (lambda m: use_adapter_names(m, "b").__enter__(), TypeError, "not a str"),
    "names-non-str": (lambda m: use_adapter_names(m, ["b", 0]).__enter__(), TypeError, "must be str"),
    "names-empty": (lambda m: use_adapter_names(m, []).__enter__(), TypeError, "non-empty"),
    "disable-not-a-model": (lambda m: disable_adapters("model").__enter__(), TypeError, "model"),
    "save-unknown-name": (
        lambda m: pz.save_peft(m, "/nonexistent/never", adapter_name="nope"),
        PeftFormatError,
        "no adapter named 'nope'",
    ),
    "save-name-int": (
        lambda m: pz.save_peft(m, "/nonexistent/never", adapter_name=1),
        TypeError,
        "adapter_name",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_and_nothing_changes(model: torch.nn.Module, case: str) -> None:
    call, error, match = CASES[case]
    refused(model, lambda: call(model), error, match)


def test_adapter_names_of_the_wrong_length(model: torch.nn.Module) -> None:
    model.eval()
    with use_adapter_names(model, ["b", "default"]):
        refused(model, lambda: model(input_ids=ids(3, 4)), ValueError, "Length of `adapter_names`.*2 and 3")


def test_adapter_names_in_training_mode(model: torch.nn.Module) -> None:
    model.train()
    refused(model, lambda: use_adapter_names(model, ["b"]).__enter__(), ValueError, "training mode")


def test_a_model_with_other_adapters_is_refused() -> None:
    model, _ = pz.adapt_model(base("bert"), pz.IA3Config(target_modules=["query"]))
    refused(model, lambda: add_adapter(model, "b", LORA), ValueError, "different peft types")
    dora, _ = pz.adapt_model(base("bert"), pz.LoraConfig(rank=2, target_modules=["query"], use_dora=True))
    refused(dora, lambda: set_adapter(dora, "default"), ValueError, "DoRALinear")


def test_load_adapter_refusals(model: torch.nn.Module, tmp_path: Path) -> None:
    refused(model, lambda: load_peft_adapter(model, tmp_path / "missing", "c"), PeftFormatError, "no such")
    pz.save_peft(model, tmp_path / "b", adapter_name="b")
    refused(model, lambda: load_peft_adapter(model, tmp_path / "b", "b"), ValueError, "already exists")
    refused(
        model,
        lambda: load_peft_adapter(model, tmp_path / "b", "c", is_trainable=1),
        TypeError,
        "is_trainable",
    )
    ia3, _ = pz.adapt_model(base("bert"), pz.IA3Config(target_modules=["value"]))
    pz.save_peft(ia3, tmp_path / "ia3")
    refused(model, lambda: load_peft_adapter(model, tmp_path / "ia3", "c"), ValueError, "holds LORA adapters")
    other = base("gpt2")  # the adapter's modules do not exist in GPT-2
    refused(other, lambda: load_peft_adapter(other, tmp_path / "b", "c"), PeftFormatError, "does not have")


def test_a_failed_add_on_a_plain_lora_model_keeps_its_layers() -> None:
    plain, _ = pz.adapt_model(base("bert"), LORA)
    bad = pz.LoraConfig(rank=2, target_modules=["missing_layer"])
    refused(plain, lambda: add_adapter(plain, "c", bad), ValueError, "missing_layer")
    assert any(type(m) is pz.LoRALinear for m in plain.modules())


def test_a_failed_add_puts_every_flag_back(model: torch.nn.Module) -> None:
    set_adapter(model, "b")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(ValueError):
        add_adapter(model, "c", pz.LoraConfig(rank=2, target_modules=["missing_layer"]))
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_deleting_the_only_adapter_leaves_the_base_model() -> None:
    model, _ = pz.adapt_model(base("bert"), LORA)
    x = ids(2, 4)
    with torch.no_grad():
        expected = base("bert")(input_ids=x).logits
    delete_adapter(model, "default")
    assert list_adapters(model) == [] and active_adapters(model) == []
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, expected)
    refused(model, lambda: set_adapter(model, "default"), ValueError, "holds \\[\\]")
    add_adapter(model, "again", LORA)  # an empty model takes a first adapter again: active
    assert active_adapters(model) == ["again"]


def test_merge_and_unload_refuses_a_non_finite_merge(model: torch.nn.Module) -> None:
    set_adapter(model, "b")
    layer = next(m for m in model.modules() if hasattr(m, "lora_A") and "b" in getattr(m, "lora_A", {}))
    with torch.no_grad():
        layer.lora_B["b"][0, 0] = float("inf")
    refused(model, lambda: pz.merge_and_unload(model), pz.UnloadError, "NaN or inf")
