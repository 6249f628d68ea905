"""Tests for peft_zoo.interop.checkpoint: adapter-only save/load, atomic writes, validation on load.

Every refused load checks that the error names the problem and that the model is exactly
as it was: loading validates everything before the first tensor is copied.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import peft_zoo
from peft_zoo import (
    AdapterBlock,
    BottleneckAdapter,
    CheckpointError,
    adapter_config,
    adapter_named_parameters,
    adapter_state_dict,
    inject_ia3,
    inject_lora,
    load_adapter,
    load_adapter_state_dict,
    read_adapter,
    save_adapter,
)
from peft_zoo.interop import checkpoint as ckpt
from peft_zoo.models import TinyMLP, TinyTransformerBlock
from peft_zoo.testing import (
    alphas,
    assert_model_unchanged,
    fingerprint,
)

MLP_TARGETS = ["encoder.0", "encoder.2.branch.fc1", "head"]


# ----------------------------------------------------------------------------- helpers


def _base_mlp(seed: int = 0) -> TinyMLP:
    torch.manual_seed(seed)
    return TinyMLP()


def _base_block(seed: int = 0) -> TinyTransformerBlock:
    torch.manual_seed(seed)
    return TinyTransformerBlock(d_model=16, n_heads=2, d_ff=32)


def _perturb(model: nn.Module, seed: int = 1) -> None:
    """Set every adapter tensor to random values (as if trained)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in adapter_named_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))


def _lora_pair(rank: int = 2, alpha: float | None = None, **kw) -> tuple[TinyMLP, TinyMLP]:
    """A trained LoRA model and a fresh copy of the same base with the same (untrained) LoRA."""
    base = _base_mlp()
    fresh = copy.deepcopy(base)
    inject_lora(base, MLP_TARGETS, rank, alpha, **kw)
    _perturb(base)
    inject_lora(fresh, MLP_TARGETS, rank, alpha, **kw)
    return base, fresh


def _mixed(base: TinyTransformerBlock) -> AdapterBlock:
    inject_lora(base, ["attn.branch.q", "attn.branch.v"], rank=2, alpha=4.0)
    inject_ia3(base, ["attn.branch.k"], feedforward_names=["ffn.branch.fc2"])
    return AdapterBlock(base, BottleneckAdapter(16, 4))


def _assert_same_adapters(a: nn.Module, b: nn.Module) -> None:
    sa, sb = adapter_state_dict(a), adapter_state_dict(b)
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def _rewrite(path: Path, state: dict[str, torch.Tensor], config: dict | str) -> None:
    """Write a safetensors file with the given tensors, peft_zoo config metadata and a
    matching digest (as a tool that edits a checkpoint on purpose would)."""
    text = config if isinstance(config, str) else json.dumps(config)
    state = {k: v.contiguous() for k, v in state.items()}
    metadata = {ckpt.METADATA_KEY: text, ckpt.DIGEST_KEY: ckpt.checkpoint_digest(state, text)}
    safetensors.torch.save_file(state, str(path), metadata=metadata)


@pytest.fixture
def saved(tmp_path):
    """(trained model, fresh target model with the same adapters, saved file path)."""
    model, fresh = _lora_pair(rank=2, alpha=4.0)
    path = save_adapter(model, tmp_path / "adapter.safetensors")
    return model, fresh, path


# ----------------------------------------------------------------------------- adapter_state_dict


def test_adapter_state_dict_lora_keys_match_model_state_dict():
    model, _ = _lora_pair()
    state = adapter_state_dict(model)
    full = model.state_dict()
    expected = {f"{n}.lora_{m}" for n in MLP_TARGETS for m in "AB"}
    assert set(state) == expected
    assert set(state) <= set(full)
    for k, v in state.items():
        assert torch.equal(v, full[k]) and not v.requires_grad
    assert not any(".base." in k for k in state)


def test_adapter_state_dict_mixed_holds_only_adapter_tensors():
    model = _mixed(_base_block())
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
    model = _base_mlp()
    assert adapter_state_dict(model) == {}
    with pytest.raises(CheckpointError, match="no adapter"):
        save_adapter(model, tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- save


def test_save_to_directory_writes_weights_and_config(tmp_path):
    model, _ = _lora_pair(rank=3, alpha=6.0, rslora=True, dropout=0.1)
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
    model, _ = _lora_pair()
    target = tmp_path / "nested" / "my_lora.safetensors"
    out = save_adapter(model, target)
    assert out == target
    assert [p.name for p in (tmp_path / "nested").iterdir()] == ["my_lora.safetensors"]
    state, config = read_adapter(target)
    assert config["targets"] == MLP_TARGETS and config["method"] == "lora"
    for k, v in adapter_state_dict(model).items():
        assert torch.equal(state[k], v)


def test_mixed_config_summarises_and_records_each_layer(tmp_path):
    model = _mixed(_base_block())
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
    model, _ = _lora_pair()
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
    _assert_same_adapters(fresh, model)
    assert saved_path.is_file()


@settings(deadline=None, max_examples=15)
@given(rank=st.integers(1, 6), alpha=alphas(), rslora=st.booleans(), as_dir=st.booleans())
def test_lora_round_trip(rank, alpha, rslora, as_dir):
    model, fresh = _lora_pair(rank, alpha, rslora=rslora)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / ("ckpt" if as_dir else "ckpt.safetensors")
        _round_trip(model, fresh, path, torch.randn(4, 8))


def test_ia3_round_trip(tmp_path):
    base = _base_block()
    fresh = copy.deepcopy(base)
    names, ff = ["attn.branch.k", "attn.branch.v"], ["ffn.branch.fc2"]
    inject_ia3(base, names, feedforward_names=ff)
    _perturb(base)
    inject_ia3(fresh, names, feedforward_names=ff)
    _round_trip(base, fresh, tmp_path / "ia3", torch.randn(2, 5, 16))


def test_mixed_round_trip(tmp_path):
    base = _base_block()
    fresh = _mixed(copy.deepcopy(base))
    model = _mixed(base)
    _perturb(model)
    _round_trip(model, fresh, tmp_path / "mixed.safetensors", torch.randn(2, 5, 16))


def test_round_trip_float64(tmp_path):
    base = _base_mlp().double()
    fresh = copy.deepcopy(base)
    inject_lora(base, ["head"], 2)
    _perturb(base)
    inject_lora(fresh, ["head"], 2)
    _round_trip(base, fresh, tmp_path / "f64", torch.randn(3, 8, dtype=torch.float64))
    assert fresh.head.lora_A.dtype == torch.float64


def test_dropout_mismatch_is_not_an_error(tmp_path):
    """Dropout only matters in training: a checkpoint trained with dropout loads without it."""
    model, _ = _lora_pair(rank=2, dropout=0.2)
    _, fresh = _lora_pair(rank=2)
    model.eval()
    _round_trip(model, fresh, tmp_path / "d", torch.randn(3, 8))


def test_load_adapter_state_dict_directly():
    model, fresh = _lora_pair()
    state = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    load_adapter_state_dict(fresh, state)
    _assert_same_adapters(fresh, model)
    # copied, not aliased: changing the source dict afterwards leaves the model alone
    state["head.lora_A"].zero_()
    assert torch.equal(fresh.head.lora_A, model.head.lora_A)


# ----------------------------------------------------------------------------- atomic save


@pytest.mark.parametrize("fail_at", ["fsync", "replace"])
@pytest.mark.parametrize("as_dir", [True, False], ids=["dir", "file"])
def test_crashed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch, fail_at, as_dir):
    model, fresh = _lora_pair()
    target = tmp_path / ("ckpt" if as_dir else "ckpt.safetensors")
    save_adapter(model, target)
    old = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    files_before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    bytes_before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    _perturb(model, seed=99)  # new values that must not reach the disk

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


# ----------------------------------------------------------------------------- refused loads


def _refused(model: nn.Module, path, *fragments: str, **kwargs) -> str:
    before = fingerprint(model)
    with pytest.raises(CheckpointError) as info:
        load_adapter(model, path, **kwargs)
    msg = str(info.value)
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    assert_model_unchanged(model, before, what="refused load")
    return msg


def test_truncated_file_is_refused(saved):
    _, fresh, path = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _refused(fresh, path, "truncated or corrupt")


def test_garbage_file_is_refused(saved):
    _, fresh, path = saved
    g = torch.Generator().manual_seed(0)
    path.write_bytes(bytes(torch.randint(0, 256, (512,), generator=g, dtype=torch.uint8).tolist()))
    _refused(fresh, path, "not a readable safetensors file")


def test_garbage_file_is_refused_by_read_adapter(saved):
    _, _, path = saved
    path.write_bytes(b"\xff" * 7)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_adapter(path)


def test_missing_tensor_is_refused(saved):
    _, fresh, path = saved
    state, config = read_adapter(path)
    del state["encoder.2.branch.fc1.lora_B"]
    _rewrite(path, state, config)
    _refused(fresh, path, "missing tensors", "encoder.2.branch.fc1.lora_B")


def test_unexpected_tensor_is_refused(saved):
    _, fresh, path = saved
    state, config = read_adapter(path)
    state["encoder.2.branch.fc2.lora_A"] = torch.zeros(2, 32)
    _rewrite(path, state, config)
    _refused(fresh, path, "unexpected tensors", "encoder.2.branch.fc2.lora_A")


def test_wrong_shape_is_refused(tmp_path):
    model, _ = _lora_pair(rank=4, alpha=4.0)
    _, fresh = _lora_pair(rank=2, alpha=4.0)
    path = save_adapter(model, tmp_path / "r4")
    _refused(fresh, path, "head.lora_A: shape (4, 16) in file, (2, 16) in model")


def test_wrong_shape_without_config_is_refused(saved):
    _, fresh, path = saved
    state, _ = read_adapter(path)
    state["head.lora_B"] = torch.zeros(4, 3)
    safetensors.torch.save_file(state, str(path))  # no config at all: shapes still checked
    _refused(fresh, path, "no integrity digest", "allow_unverified=True")
    _refused(fresh, path, "head.lora_B: shape (4, 3) in file, (4, 2) in model", allow_unverified=True)


def test_wrong_dtype_is_refused(saved):
    _, fresh, path = saved
    state, config = read_adapter(path)
    state["head.lora_A"] = state["head.lora_A"].double()
    _rewrite(path, state, config)
    _refused(fresh, path, "head.lora_A: dtype torch.float64 in file, torch.float32 in model")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_tensor_is_refused(saved, bad):
    _, fresh, path = saved
    state, config = read_adapter(path)
    state["encoder.0.lora_B"][3, 1] = bad
    _rewrite(path, state, config)
    _refused(fresh, path, "encoder.0.lora_B: contains NaN or inf")


def test_different_alpha_is_refused(tmp_path):
    model, _ = _lora_pair(rank=2, alpha=4.0)
    _, fresh = _lora_pair(rank=2, alpha=8.0)
    path = save_adapter(model, tmp_path / "a4")
    _refused(fresh, path, "alpha=4.0 in file, 8.0 in model")


def test_different_rslora_is_refused(tmp_path):
    model, _ = _lora_pair(rank=4, alpha=4.0, rslora=True)
    _, fresh = _lora_pair(rank=4, alpha=4.0, rslora=False)
    path = save_adapter(model, tmp_path / "rs")
    _refused(fresh, path, "rslora=True in file, False in model")


def test_different_ia3_form_is_refused(tmp_path):
    base = _base_block()
    fresh = copy.deepcopy(base)
    inject_ia3(base, [], feedforward_names="attn.branch.q")  # square layer: same shape
    inject_ia3(fresh, "attn.branch.q")
    path = save_adapter(base, tmp_path / "ia3")
    _refused(fresh, path, "attn.branch.q: feedforward=True in file, False in model")


def test_loading_into_a_model_without_adapters_is_refused(saved):
    _, _, path = saved
    _refused(_base_mlp(), path, "no adapter layers")


def test_loading_into_a_merged_layer_is_refused(saved):
    _, fresh, path = saved
    fresh.head.merge()
    msg = _refused(fresh, path, "merged", "'head'")
    assert "unmerge" in msg
    assert fresh.head.merged


def test_nonexistent_path_is_refused(tmp_path):
    model, _ = _lora_pair()
    _refused(model, tmp_path / "nope.safetensors", "no such adapter file")
    _refused(model, tmp_path / "nope_dir", "no such adapter file")


def test_directory_without_weights_is_refused(tmp_path):
    model, fresh = _lora_pair()
    save_adapter(model, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "adapter_model.safetensors").unlink()
    _refused(fresh, tmp_path / "ckpt", "no adapter_model.safetensors")


def test_file_whose_config_names_another_format_is_refused(saved):
    _, fresh, path = saved
    state, config = read_adapter(path)
    _rewrite(path, state, {**config, "format": "peft"})
    _refused(fresh, path, "format 'peft'")


def test_peft_directory_is_refused(tmp_path):
    model, fresh = _lora_pair()
    peft_dir = tmp_path / "peft"
    peft_dir.mkdir()
    # a Hugging Face PEFT adapter: its own key names, no peft_zoo metadata
    state = {f"base_model.model.{k}.weight": v.contiguous() for k, v in adapter_state_dict(model).items()}
    safetensors.torch.save_file(state, str(peft_dir / "adapter_model.safetensors"))
    (peft_dir / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ["head"]})
    )
    _refused(fresh, peft_dir, "no integrity digest")
    _refused(fresh, peft_dir, "'LORA'", "peft_zoo adapters only", allow_unverified=True)
    with pytest.raises(CheckpointError, match="LORA"):
        read_adapter(peft_dir, allow_unverified=True)


@pytest.mark.parametrize(
    "config",
    [
        "[1, 2]",
        '"lora"',
        json.dumps({"format": ckpt.FORMAT, "layers": ["head"]}),
        json.dumps({"format": ckpt.FORMAT, "layers": {"head": 3}}),
    ],
    ids=["list", "string", "layers-list", "layer-record-int"],
)
def test_config_of_the_wrong_shape_is_refused(saved, config):
    _, fresh, path = saved
    state, _ = read_adapter(path)
    _rewrite(path, state, config)
    _refused(fresh, path, "config")


def test_invalid_adapter_config_json_is_refused(tmp_path):
    model, fresh = _lora_pair()
    d = tmp_path / "ckpt"
    state = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    d.mkdir()
    safetensors.torch.save_file(state, str(d / "adapter_model.safetensors"))
    (d / "adapter_config.json").write_text("{not json")
    _refused(fresh, d, "invalid JSON", allow_unverified=True)


# ----------------------------------------------------------------------------- legacy .pt


def test_legacy_pt_file_loads(tmp_path):
    model, fresh = _lora_pair()
    state = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    torch.save(state, tmp_path / "adapter.pt")
    _refused(fresh, tmp_path / "adapter.pt", "legacy torch file", "allow_unverified=True")
    config = load_adapter(fresh, tmp_path / "adapter.pt", allow_unverified=True)
    assert config == {}
    _assert_same_adapters(fresh, model)
    x = torch.randn(2, 8)
    assert torch.equal(fresh(x), model(x))


def test_legacy_bin_in_a_directory_loads(tmp_path):
    model, fresh = _lora_pair()
    torch.save({k: v.clone() for k, v in adapter_state_dict(model).items()}, tmp_path / "adapter_model.bin")
    load_adapter(fresh, tmp_path, allow_unverified=True)
    _assert_same_adapters(fresh, model)


CALLS: list[str] = []


def _record_call(tag: str) -> str:
    CALLS.append(tag)
    return tag


class Payload:
    """Unpickling this calls _record_call: arbitrary code a weights-only load must refuse."""

    def __reduce__(self):
        return (_record_call, ("executed",))


def test_legacy_pt_with_a_pickled_object_is_refused_and_nothing_runs(tmp_path):
    model, fresh = _lora_pair()
    state = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    path = tmp_path / "adapter.pt"
    torch.save({**state, "evil": Payload()}, path)
    CALLS.clear()
    _refused(fresh, path, "cannot be read as a tensor checkpoint", allow_unverified=True)
    assert CALLS == [], "the pickled payload ran"
    # sanity: the payload is real, an unsafe load would have executed it
    torch.load(path, weights_only=False)
    assert CALLS == ["executed"]
    CALLS.clear()


def test_legacy_pt_that_is_not_a_tensor_dict_is_refused(tmp_path):
    model, fresh = _lora_pair()
    path = tmp_path / "adapter.pt"
    torch.save([v.clone() for v in adapter_state_dict(model).values()], path)
    _refused(fresh, path, "expected a dict of name -> tensor", allow_unverified=True)
    torch.save({"head.lora_A": 3}, path)
    _refused(fresh, path, "expected a dict of name -> tensor", allow_unverified=True)


def test_legacy_pt_is_validated_like_safetensors(tmp_path):
    model, fresh = _lora_pair()
    state = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    state["head.lora_A"] = state["head.lora_A"][:1]
    torch.save(state, tmp_path / "adapter.pt")
    _refused(
        fresh,
        tmp_path / "adapter.pt",
        "head.lora_A: shape (1, 16) in file, (2, 16) in model",
        allow_unverified=True,
    )


# ----------------------------------------------------------------------------- read_adapter


def test_read_adapter_returns_state_and_config_without_a_model(saved):
    model, fresh, path = saved
    before = fingerprint(fresh)
    state, config = read_adapter(path)
    assert config == adapter_config(model)
    assert set(state) == set(adapter_state_dict(model))
    for k, v in adapter_state_dict(model).items():
        assert torch.equal(state[k], v) and state[k].dtype == v.dtype
    assert_model_unchanged(fresh, before, what="read_adapter")
    # the tensors are independent of any model
    state["head.lora_A"].zero_()
    assert not torch.equal(model.head.lora_A, state["head.lora_A"])


def test_read_adapter_of_a_directory(tmp_path):
    model, _ = _lora_pair()
    save_adapter(model, tmp_path)
    state, config = read_adapter(str(tmp_path))
    assert config["targets"] == MLP_TARGETS
    assert torch.equal(state["head.lora_B"], model.head.lora_B)


def test_load_error_names_the_path(saved):
    _, _, path = saved
    with pytest.raises(CheckpointError, match=os.path.basename(str(path))):
        load_adapter(_base_mlp(), path)
