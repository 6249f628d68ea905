"""Refused loads of adapter checkpoints: every error names the problem and the model is exactly
as it was (loading validates everything before the first tensor is copied). Also legacy
``.pt`` / ``.bin`` files (read with ``weights_only=True``, never unpickling code) and
``read_adapter``. Shared helpers: checkpoint_helpers.py.
"""

from __future__ import annotations

import copy
import json
import os

import pytest
import safetensors.torch
import torch
from checkpoint_helpers import (
    MLP_TARGETS,
    assert_same_adapters,
    base_block,
    base_mlp,
    lora_pair,
    refused_load,
    rewrite_checkpoint,
)

from peft_zoo import (
    CheckpointError,
    adapter_config,
    adapter_state_dict,
    inject_ia3,
    load_adapter,
    read_adapter,
    save_adapter,
)
from peft_zoo.interop import checkpoint as ckpt
from peft_zoo.testing import assert_model_unchanged, fingerprint


@pytest.fixture
def saved(tmp_path):
    """(trained model, fresh target model with the same adapters, saved file path)."""
    model, fresh = lora_pair(rank=2, alpha=4.0)
    path = save_adapter(model, tmp_path / "adapter.safetensors")
    return model, fresh, path


# ----------------------------------------------------------------------------- refused loads


def test_truncated_file_is_refused(saved):
    _, fresh, path = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    refused_load(fresh, path, "truncated or corrupt")


def test_garbage_file_is_refused(saved):
    _, fresh, path = saved
    g = torch.Generator().manual_seed(0)
    path.write_bytes(bytes(torch.randint(0, 256, (512,), generator=g, dtype=torch.uint8).tolist()))
    refused_load(fresh, path, "not a readable safetensors file")


def test_garbage_file_is_refused_by_read_adapter(saved):
    _, _, path = saved
    path.write_bytes(b"\xff" * 7)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_adapter(path)


def test_missing_tensor_is_refused(saved):
    _, fresh, path = saved
    state, config = read_adapter(path)
    del state["encoder.2.branch.fc1.lora_B"]
    rewrite_checkpoint(path, state, config)
    refused_load(fresh, path, "missing tensors", "encoder.2.branch.fc1.lora_B")


def test_unexpected_tensor_is_refused(saved):
    _, fresh, path = saved
    state, config = read_adapter(path)
    state["encoder.2.branch.fc2.lora_A"] = torch.zeros(2, 32)
    rewrite_checkpoint(path, state, config)
    refused_load(fresh, path, "unexpected tensors", "encoder.2.branch.fc2.lora_A")


def test_wrong_shape_is_refused(tmp_path):
    model, _ = lora_pair(rank=4, alpha=4.0)
    _, fresh = lora_pair(rank=2, alpha=4.0)
    path = save_adapter(model, tmp_path / "r4")
    refused_load(fresh, path, "head.lora_A: shape (4, 16) in file, (2, 16) in model")


def test_wrong_shape_without_config_is_refused(saved):
    _, fresh, path = saved
    state, _ = read_adapter(path)
    state["head.lora_B"] = torch.zeros(4, 3)
    safetensors.torch.save_file(state, str(path))  # no config at all: shapes still checked
    refused_load(fresh, path, "no integrity digest", "allow_unverified=True")
    refused_load(fresh, path, "head.lora_B: shape (4, 3) in file, (4, 2) in model", allow_unverified=True)


def test_wrong_dtype_is_refused(saved):
    _, fresh, path = saved
    state, config = read_adapter(path)
    state["head.lora_A"] = state["head.lora_A"].double()
    rewrite_checkpoint(path, state, config)
    refused_load(fresh, path, "head.lora_A: dtype torch.float64 in file, torch.float32 in model")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_tensor_is_refused(saved, bad):
    _, fresh, path = saved
    state, config = read_adapter(path)
    state["encoder.0.lora_B"][3, 1] = bad
    rewrite_checkpoint(path, state, config)
    refused_load(fresh, path, "encoder.0.lora_B: contains NaN or inf")


def test_different_alpha_is_refused(tmp_path):
    model, _ = lora_pair(rank=2, alpha=4.0)
    _, fresh = lora_pair(rank=2, alpha=8.0)
    path = save_adapter(model, tmp_path / "a4")
    refused_load(fresh, path, "alpha=4.0 in file, 8.0 in model")


def test_different_rslora_is_refused(tmp_path):
    model, _ = lora_pair(rank=4, alpha=4.0, rslora=True)
    _, fresh = lora_pair(rank=4, alpha=4.0, rslora=False)
    path = save_adapter(model, tmp_path / "rs")
    refused_load(fresh, path, "rslora=True in file, False in model")


def test_different_ia3_form_is_refused(tmp_path):
    base = base_block()
    fresh = copy.deepcopy(base)
    inject_ia3(base, [], feedforward_names="attn.branch.q")  # square layer: same shape
    inject_ia3(fresh, "attn.branch.q")
    path = save_adapter(base, tmp_path / "ia3")
    refused_load(fresh, path, "attn.branch.q: feedforward=True in file, False in model")


def test_loading_into_a_model_without_adapters_is_refused(saved):
    _, _, path = saved
    refused_load(base_mlp(), path, "no adapter layers")


def test_loading_into_a_merged_layer_is_refused(saved):
    _, fresh, path = saved
    fresh.head.merge()
    msg = refused_load(fresh, path, "merged", "'head'")
    assert "unmerge" in msg
    assert fresh.head.merged


def test_nonexistent_path_is_refused(tmp_path):
    model, _ = lora_pair()
    refused_load(model, tmp_path / "nope.safetensors", "no such adapter file")
    refused_load(model, tmp_path / "nope_dir", "no such adapter file")


def test_directory_without_weights_is_refused(tmp_path):
    model, fresh = lora_pair()
    save_adapter(model, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "adapter_model.safetensors").unlink()
    refused_load(fresh, tmp_path / "ckpt", "no adapter_model.safetensors")


def test_file_whose_config_names_another_format_is_refused(saved):
    _, fresh, path = saved
    state, config = read_adapter(path)
    rewrite_checkpoint(path, state, {**config, "format": "peft"})
    refused_load(fresh, path, "format 'peft'")


def test_peft_directory_is_refused(tmp_path):
    model, fresh = lora_pair()
    peft_dir = tmp_path / "peft"
    peft_dir.mkdir()
    # a Hugging Face PEFT adapter: its own key names, no peft_zoo metadata
    state = {f"base_model.model.{k}.weight": v.contiguous() for k, v in adapter_state_dict(model).items()}
    safetensors.torch.save_file(state, str(peft_dir / "adapter_model.safetensors"))
    (peft_dir / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ["head"]})
    )
    refused_load(fresh, peft_dir, "no integrity digest")
    refused_load(fresh, peft_dir, "'LORA'", "peft_zoo adapters only", allow_unverified=True)
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
    rewrite_checkpoint(path, state, config)
    refused_load(fresh, path, "config")


def test_invalid_adapter_config_json_is_refused(tmp_path):
    model, fresh = lora_pair()
    d = tmp_path / "ckpt"
    state = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    d.mkdir()
    safetensors.torch.save_file(state, str(d / "adapter_model.safetensors"))
    (d / "adapter_config.json").write_text("{not json")
    refused_load(fresh, d, "invalid JSON", allow_unverified=True)


# ----------------------------------------------------------------------------- legacy .pt


def test_legacy_pt_file_loads(tmp_path):
    model, fresh = lora_pair()
    state = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    torch.save(state, tmp_path / "adapter.pt")
    refused_load(fresh, tmp_path / "adapter.pt", "legacy torch file", "allow_unverified=True")
    config = load_adapter(fresh, tmp_path / "adapter.pt", allow_unverified=True)
    assert config == {}
    assert_same_adapters(fresh, model)
    x = torch.randn(2, 8)
    assert torch.equal(fresh(x), model(x))


def test_legacy_bin_in_a_directory_loads(tmp_path):
    model, fresh = lora_pair()
    torch.save({k: v.clone() for k, v in adapter_state_dict(model).items()}, tmp_path / "adapter_model.bin")
    load_adapter(fresh, tmp_path, allow_unverified=True)
    assert_same_adapters(fresh, model)


CALLS: list[str] = []


def _record_call(tag: str) -> str:
    CALLS.append(tag)
    return tag


class Payload:
    """Unpickling this calls _record_call: arbitrary code a weights-only load must refuse."""

    def __reduce__(self):
        return (_record_call, ("executed",))


def test_legacy_pt_with_a_pickled_object_is_refused_and_nothing_runs(tmp_path):
    model, fresh = lora_pair()
    state = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    path = tmp_path / "adapter.pt"
    torch.save({**state, "evil": Payload()}, path)
    CALLS.clear()
    refused_load(fresh, path, "cannot be read as a tensor checkpoint", allow_unverified=True)
    assert CALLS == [], "the pickled payload ran"
    # sanity: the payload is real, an unsafe load would have executed it
    torch.load(path, weights_only=False)
    assert CALLS == ["executed"]
    CALLS.clear()


def test_legacy_pt_that_is_not_a_tensor_dict_is_refused(tmp_path):
    model, fresh = lora_pair()
    path = tmp_path / "adapter.pt"
    torch.save([v.clone() for v in adapter_state_dict(model).values()], path)
    refused_load(fresh, path, "expected a dict of name -> tensor", allow_unverified=True)
    torch.save({"head.lora_A": 3}, path)
    refused_load(fresh, path, "expected a dict of name -> tensor", allow_unverified=True)


def test_legacy_pt_is_validated_like_safetensors(tmp_path):
    model, fresh = lora_pair()
    state = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    state["head.lora_A"] = state["head.lora_A"][:1]
    torch.save(state, tmp_path / "adapter.pt")
    refused_load(
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
    model, _ = lora_pair()
    save_adapter(model, tmp_path)
    state, config = read_adapter(str(tmp_path))
    assert config["targets"] == MLP_TARGETS
    assert torch.equal(state["head.lora_B"], model.head.lora_B)


def test_load_error_names_the_path(saved):
    _, _, path = saved
    with pytest.raises(CheckpointError, match=os.path.basename(str(path))):
        load_adapter(base_mlp(), path)
