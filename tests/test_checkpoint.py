"""Tests for peft_zoo.interop.checkpoint: adapter-only state dicts, saving, round trips, atomic
writes. Refused loads, legacy files and read_adapter: test_checkpoint_load.py; integrity
digests and crash cleanup: test_checkpoint_integrity.py; shared helpers: checkpoint_helpers.py.
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from checkpoint_helpers import (
    MLP_TARGETS,
    assert_same_adapters,
    base_block,
    base_mlp,
    lora_pair,
    mixed_adapters,
    perturb_adapters,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import peft_zoo
from peft_zoo import (
    CheckpointError,
    adapter_config,
    adapter_state_dict,
    inject_ia3,
    inject_lora,
    load_adapter,
    load_adapter_state_dict,
    read_adapter,
    save_adapter,
)
from peft_zoo.interop import checkpoint as ckpt
from peft_zoo.testing import alphas

# ----------------------------------------------------------------------------- adapter_state_dict


def test_adapter_state_dict_lora_keys_match_model_state_dict():
    model, _ = lora_pair()
    state = adapter_state_dict(model)
    full = model.state_dict()
    expected = {f"{n}.lora_{m}" for n in MLP_TARGETS for m in "AB"}
    assert set(state) == expected
    assert set(state) <= set(full)
    for k, v in state.items():
        assert torch.equal(v, full[k]) and not v.requires_grad
    assert not any(".base." in k for k in state)


def test_adapter_state_dict_mixed_holds_only_adapter_tensors():
    model = mixed_adapters(base_block())
    state = adapter_state_dict(model)
    expected = {
        "sublayer.attn.branch.q.lora_A",
        "sublayer.attn.branch.q.lora_B",
        "sublayer.attn.branch.v.lora_A",
        "sublayer.attn.branch.v.lora_B",
        "sublayer.attn.branch.k.scale",
        "sublayer.ffn.branch.fc2.scale",
        "adapter.down_proj.weight",
        "adapter.down_proj.bias",
        "adapter.up_proj.weight",
        "adapter.up_proj.bias",
    }
    assert set(state) == expected
    full = model.state_dict()
    assert all(torch.equal(state[k], full[k]) for k in state)
    assert state["sublayer.ffn.branch.fc2.scale"].shape == (32,)


def test_adapter_state_dict_of_a_plain_model_is_empty_and_save_refuses(tmp_path):
    model = base_mlp()
    assert adapter_state_dict(model) == {}
    with pytest.raises(CheckpointError, match="no adapter"):
        save_adapter(model, tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- save


def test_save_to_directory_writes_weights_and_config(tmp_path):
    model, _ = lora_pair(rank=3, alpha=6.0, rslora=True, dropout=0.1)
    out = save_adapter(model, tmp_path / "run" / "adapter")
    directory = tmp_path / "run" / "adapter"
    assert out == directory / "adapter_model.safetensors"
    assert sorted(p.name for p in directory.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    config = json.loads((directory / "adapter_config.json").read_text())
    assert config["method"] == "lora"
    assert config["rank"] == 3 and config["alpha"] == 6.0
    assert config["targets"] == MLP_TARGETS
    assert config["library_version"] == peft_zoo.__version__
    assert config["format"] == ckpt.FORMAT
    assert config["layers"] == {
        n: {"method": "lora", "rank": 3, "alpha": 6.0, "rslora": True, "dropout": 0.1} for n in MLP_TARGETS
    }
    # the same config travels inside the weights file
    state, inner = read_adapter(out)
    assert inner == config
    assert set(state) == set(adapter_state_dict(model))


def test_save_to_safetensors_path_writes_one_file(tmp_path):
    model, _ = lora_pair()
    target = tmp_path / "nested" / "my_lora.safetensors"
    out = save_adapter(model, target)
    assert out == target
    assert [p.name for p in (tmp_path / "nested").iterdir()] == ["my_lora.safetensors"]
    state, config = read_adapter(target)
    assert config["targets"] == MLP_TARGETS and config["method"] == "lora"
    for k, v in adapter_state_dict(model).items():
        assert torch.equal(state[k], v)


def test_mixed_config_summarises_and_records_each_layer(tmp_path):
    model = mixed_adapters(base_block())
    config = adapter_config(model)
    assert config["method"] == "mixed" and config["rank"] is None
    assert config["targets"] == [
        "sublayer.attn.branch.q",
        "sublayer.attn.branch.k",
        "sublayer.attn.branch.v",
        "sublayer.ffn.branch.fc2",
        "adapter",
    ]
    assert config["layers"]["sublayer.attn.branch.k"] == {"method": "ia3", "feedforward": False}
    assert config["layers"]["sublayer.ffn.branch.fc2"]["feedforward"] is True
    assert config["layers"]["adapter"]["bottleneck_dim"] == 4
    save_adapter(model, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text()) == config


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_saved_file_gets_the_usual_permissions(tmp_path):
    model, _ = lora_pair()
    out = save_adapter(model, tmp_path / "a")
    (tmp_path / "plain").write_bytes(b"x")  # what open() gives under the current umask
    usual = (tmp_path / "plain").stat().st_mode & 0o777
    assert out.stat().st_mode & 0o777 == usual
    assert (tmp_path / "a" / "adapter_config.json").stat().st_mode & 0o777 == usual


# ----------------------------------------------------------------------------- round trip


def _round_trip(model: nn.Module, fresh: nn.Module, path: Path, x: torch.Tensor) -> None:
    expected = model(x)
    assert not torch.equal(fresh(x), expected), "test setup: the adapters must differ"
    saved_path = save_adapter(model, path)
    config = load_adapter(fresh, path)
    assert config == adapter_config(model)
    assert torch.equal(fresh(x), expected)
    assert_same_adapters(fresh, model)
    assert saved_path.is_file()


@settings(deadline=None, max_examples=15)
@given(rank=st.integers(1, 6), alpha=alphas(), rslora=st.booleans(), as_dir=st.booleans())
def test_lora_round_trip(rank, alpha, rslora, as_dir):
    model, fresh = lora_pair(rank, alpha, rslora=rslora)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / ("ckpt" if as_dir else "ckpt.safetensors")
        _round_trip(model, fresh, path, torch.randn(4, 8))


def test_ia3_round_trip(tmp_path):
    base = base_block()
    fresh = copy.deepcopy(base)
    names, ff = ["attn.branch.k", "attn.branch.v"], ["ffn.branch.fc2"]
    inject_ia3(base, names, feedforward_names=ff)
    perturb_adapters(base)
    inject_ia3(fresh, names, feedforward_names=ff)
    _round_trip(base, fresh, tmp_path / "ia3", torch.randn(2, 5, 16))


def test_mixed_round_trip(tmp_path):
    base = base_block()
    fresh = mixed_adapters(copy.deepcopy(base))
    model = mixed_adapters(base)
    perturb_adapters(model)
    _round_trip(model, fresh, tmp_path / "mixed.safetensors", torch.randn(2, 5, 16))


def test_round_trip_float64(tmp_path):
    base = base_mlp().double()
    fresh = copy.deepcopy(base)
    inject_lora(base, ["head"], 2)
    perturb_adapters(base)
    inject_lora(fresh, ["head"], 2)
    _round_trip(base, fresh, tmp_path / "f64", torch.randn(3, 8, dtype=torch.float64))
    assert fresh.head.lora_A.dtype == torch.float64


def test_dropout_mismatch_is_not_an_error(tmp_path):
    """Dropout only matters in training: a checkpoint trained with dropout loads without it."""
    model, _ = lora_pair(rank=2, dropout=0.2)
    _, fresh = lora_pair(rank=2)
    model.eval()
    _round_trip(model, fresh, tmp_path / "d", torch.randn(3, 8))


def test_load_adapter_state_dict_directly():
    model, fresh = lora_pair()
    state = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    load_adapter_state_dict(fresh, state)
    assert_same_adapters(fresh, model)
    # copied, not aliased: changing the source dict afterwards leaves the model alone
    state["head.lora_A"].zero_()
    assert torch.equal(fresh.head.lora_A, model.head.lora_A)


# ----------------------------------------------------------------------------- atomic save


@pytest.mark.parametrize("fail_at", ["fsync", "replace"])
@pytest.mark.parametrize("as_dir", [True, False], ids=["dir", "file"])
def test_crashed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch, fail_at, as_dir):
    model, fresh = lora_pair()
    target = tmp_path / ("ckpt" if as_dir else "ckpt.safetensors")
    save_adapter(model, target)
    old = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    files_before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    bytes_before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    perturb_adapters(model, seed=99)  # new values that must not reach the disk

    def crash(*args, **kwargs):
        raise OSError("simulated crash")

    monkeypatch.setattr(ckpt.os, fail_at, crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_adapter(model, target)
    monkeypatch.undo()

    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == files_before, (
        "no temporary files may be left behind"
    )
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == bytes_before
    load_adapter(fresh, target)
    for k, v in adapter_state_dict(fresh).items():
        assert torch.equal(v, old[k]), k
