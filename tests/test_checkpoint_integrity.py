"""Integrity and crash safety of adapter checkpoints (issue 12, §5).

- Every saved file carries a SHA-256 digest of its config and tensors; a flipped bit
  anywhere in the tensor data (or the header) is refused before the model is touched.
- A file without the digest or the config (older peft_zoo, another tool) is refused with a
  message that says how to opt in (``allow_unverified=True``).
- A save killed with SIGKILL mid-write leaves an orphaned temporary file with a
  recognisable name; the next save into that directory removes it, and the previous
  checkpoint is intact throughout. Files of live writers are never removed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from peft_zoo import (
    CheckpointError,
    adapter_state_dict,
    inject_lora,
    load_adapter,
    read_adapter,
    save_adapter,
)
from peft_zoo.core import io as atomic_io
from peft_zoo.interop import checkpoint as ckpt
from peft_zoo.testing import assert_model_unchanged, fingerprint

REPO = Path(__file__).resolve().parents[1]


def _model(seed: int = 0, trained: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    inject_lora(model, ["0", "2"], 4, 8.0)
    if trained:
        with torch.no_grad():
            for p in adapter_state_dict(model).values():
                p.normal_()
    return model


def _header_len(data: bytes) -> int:
    return struct.unpack("<Q", data[:8])[0]


def _flip_and_load(path: Path, good: bytes, position: int, bit: int) -> bool:
    """Flip one bit of the file, try to load it; True when refused with the model unchanged."""
    data = bytearray(good)
    data[position] ^= 1 << bit
    path.write_bytes(bytes(data))
    target = _model(seed=1)
    before = fingerprint(target)
    try:
        load_adapter(target, path)
    except CheckpointError:
        assert_model_unchanged(target, before, what=f"refused load after a flip at byte {position}")
        return True
    return False


def test_bit_flips_in_tensor_data_are_detected(tmp_path, capsys):
    path = save_adapter(_model(trained=True), tmp_path / "a.safetensors")
    good = path.read_bytes()
    start = 8 + _header_len(good)
    rng = random.Random(12)
    trials = [(rng.randrange(start, len(good)), rng.randrange(8)) for _ in range(32)]
    detected = sum(_flip_and_load(path, good, pos, bit) for pos, bit in trials)
    with capsys.disabled():
        print(f"\nbit flips in tensor data: detected {detected} of {len(trials)}")
    assert detected == len(trials)


def test_bit_flips_in_the_header_are_detected(tmp_path):
    path = save_adapter(_model(trained=True), tmp_path / "a.safetensors")
    good = path.read_bytes()
    rng = random.Random(7)
    trials = [(rng.randrange(0, 8 + _header_len(good)), rng.randrange(8)) for _ in range(24)]
    missed = [(pos, bit) for pos, bit in trials if not _flip_and_load(path, good, pos, bit)]
    assert not missed, f"flips accepted at (byte, bit) {missed}"


def test_flipping_the_digest_itself_is_detected(tmp_path):
    path = save_adapter(_model(trained=True), tmp_path / "a.safetensors")
    good = path.read_bytes()
    digest = ckpt.checkpoint_digest(*_tensors_and_config(good))
    pos = good.index(digest.encode()) + 3
    assert _flip_and_load(path, good, pos, 0)


def _tensors_and_config(data: bytes) -> tuple[dict[str, torch.Tensor], str]:
    meta = json.loads(data[8 : 8 + _header_len(data)])["__metadata__"]
    return safetensors.torch.load(data), meta[ckpt.METADATA_KEY]


def test_the_digest_covers_names_dtypes_shapes_and_config_in_a_canonical_order():
    a = {"x.lora_A": torch.arange(6.0).reshape(2, 3), "x.lora_B": torch.ones(3, 2)}
    d = ckpt.checkpoint_digest(a, "{}")
    assert d == ckpt.checkpoint_digest(dict(reversed(list(a.items()))), "{}"), "order must not matter"
    assert d != ckpt.checkpoint_digest({**a, "x.lora_A": a["x.lora_A"].reshape(3, 2)}, "{}"), "shape"
    assert d != ckpt.checkpoint_digest({**a, "x.lora_A": a["x.lora_A"].view(torch.int32)}, "{}"), "dtype"
    assert d != ckpt.checkpoint_digest({"y.lora_A": a["x.lora_A"], "x.lora_B": a["x.lora_B"]}, "{}"), "name"
    assert d != ckpt.checkpoint_digest(a, '{"rank": 2}'), "config"


def _previous_version_file(path: Path, model: nn.Module, with_config: bool) -> None:
    """Write ``model``'s adapter as peft_zoo did before the digest existed (or with no config)."""
    tensors = {k: v.contiguous() for k, v in adapter_state_dict(model).items()}
    meta = {ckpt.METADATA_KEY: json.dumps(ckpt.adapter_config(model))} if with_config else None
    safetensors.torch.save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("with_config", [True, False], ids=["old-version", "no-config"])
def test_files_without_a_digest_need_an_explicit_opt_in(tmp_path, with_config):
    trained = _model(trained=True)
    path = tmp_path / "old.safetensors"
    _previous_version_file(path, trained, with_config)
    fresh = _model(seed=1)
    before = fingerprint(fresh)
    with pytest.raises(CheckpointError, match=r"no integrity digest.*allow_unverified=True"):
        load_adapter(fresh, path)
    assert_model_unchanged(fresh, before, what="refused unverified file")
    load_adapter(fresh, path, allow_unverified=True)
    for k, v in adapter_state_dict(trained).items():
        assert torch.equal(adapter_state_dict(fresh)[k], v), k


def test_opting_in_still_checks_the_config_that_is_there(tmp_path):
    path = tmp_path / "old.safetensors"
    _previous_version_file(path, _model(trained=True), with_config=True)
    torch.manual_seed(0)
    other = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    inject_lora(other, ["0", "2"], 4, 2.0)  # same shapes, another alpha
    with pytest.raises(CheckpointError, match=r"alpha=8\.0 in file, 2\.0 in model"):
        load_adapter(other, path, allow_unverified=True)


def test_a_file_with_a_digest_but_no_config_is_refused_unless_opted_in(tmp_path):
    trained = _model(trained=True)
    tensors = {k: v.contiguous() for k, v in adapter_state_dict(trained).items()}
    path = tmp_path / "a.safetensors"
    safetensors.torch.save_file(
        tensors, str(path), metadata={ckpt.DIGEST_KEY: ckpt.checkpoint_digest(tensors)}
    )
    with pytest.raises(CheckpointError, match=r"no peft_zoo config.*rank and alpha"):
        read_adapter(path)
    state, config = read_adapter(path, allow_unverified=True)
    assert config == {} and set(state) == set(tensors)


# ----------------------------------------------------------------------------- kill -9 during a save

_CHILD = textwrap.dedent(
    """
    import os, sys, time
    import torch
    from torch import nn
    import peft_zoo
    from peft_zoo.core import io as atomic_io

    real_fsync = os.fsync

    def slow_fsync(fd):  # the temporary file is fully written: announce it, then hang
        real_fsync(fd)
        print("WRITTEN", flush=True)
        time.sleep(120)

    atomic_io.os.fsync = slow_fsync
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1024))
    peft_zoo.inject_lora(model, ["0", "2"], 64, 64.0)
    with torch.no_grad():
        for p in peft_zoo.adapter_state_dict(model).values():
            p.normal_()
    peft_zoo.save_adapter(model, sys.argv[1])
    """
)


def _temp_files(directory: Path) -> list[Path]:
    """Every file in ``directory`` other than the checkpoint itself."""
    keep = {ckpt.WEIGHTS_NAME, ckpt.CONFIG_NAME, "ckpt.safetensors"}
    return sorted(p for p in directory.iterdir() if p.name not in keep)


@pytest.mark.parametrize("as_dir", [True, False], ids=["dir", "file"])
def test_a_save_killed_mid_write_leaves_the_old_file_and_the_next_save_cleans_up(tmp_path, as_dir):
    target = tmp_path / ("ckpt" if as_dir else "ckpt.safetensors")
    folder = target if as_dir else tmp_path
    good = _model(trained=True)
    save_adapter(good, target)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(target)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        line = child.stdout.readline()  # type: ignore[union-attr]
        assert line.strip() == b"WRITTEN", child.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    orphans = _temp_files(folder)
    assert len(orphans) == 1 and orphans[0].stat().st_size > 500_000, orphans  # the crash left one
    assert orphans[0].name.startswith(f".{target.name if not as_dir else ckpt.WEIGHTS_NAME}.peft_zoo-tmp-")
    fresh = _model(seed=1)
    load_adapter(fresh, target)  # the previous checkpoint is intact
    for k, v in adapter_state_dict(good).items():
        assert torch.equal(adapter_state_dict(fresh)[k], v), k

    newer = _model(seed=2, trained=True)
    save_adapter(newer, target)
    assert _temp_files(folder) == [], "the stale temporary file was not removed"
    load_adapter(fresh, target)
    for k, v in adapter_state_dict(newer).items():
        assert torch.equal(adapter_state_dict(fresh)[k], v), k


# ----------------------------------------------------------------------------- which temporary files go


def _orphan(directory: Path, host: str, pid: int, age_s: float = 0.0, name: str = "x.safetensors") -> Path:
    path = directory / f".{name}{atomic_io.TMP_MARK}{host}-{pid}-{'ab' * 8}"
    path.write_bytes(b"partial")
    if age_s:
        t = time.time() - age_s
        os.utime(path, (t, t))
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.skipif(os.name == "nt", reason="pid liveness is not probed on Windows")
def test_only_provably_stale_temporary_files_are_removed(tmp_path):
    here = atomic_io.temp_path(tmp_path / "x").name.split(atomic_io.TMP_MARK)[1][:8]  # this host's tag
    dead = _orphan(tmp_path, here, _dead_pid(), name="a")
    live_other = _orphan(tmp_path, here, os.getppid(), name="b")  # a live writer's file
    mine = _orphan(tmp_path, here, os.getpid(), name="c")  # another thread of this process
    far_fresh = _orphan(tmp_path, "0badf00d" if here != "0badf00d" else "0badf00e", _dead_pid(), name="d")
    far_old = _orphan(
        tmp_path, "0badf00d" if here != "0badf00d" else "0badf00e", 1, age_s=2 * 86400, name="e"
    )
    unrelated = tmp_path / ".notes.peft_zoo-tmp-keep"
    unrelated.write_text("not ours")
    lookalike_dir = tmp_path / f".f{atomic_io.TMP_MARK}{here}-{_dead_pid()}-{'cd' * 8}"
    lookalike_dir.mkdir()
    removed = atomic_io.remove_stale_temp_files(tmp_path)
    assert sorted(removed) == sorted([dead, far_old])
    for kept in (live_other, mine, far_fresh, unrelated, lookalike_dir):
        assert kept.exists(), kept


@pytest.mark.skipif(os.name == "nt", reason="directories cannot be fsynced on Windows")
def test_the_directory_is_flushed_after_the_rename(tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(atomic_io.os, "fsync", fsync)
    monkeypatch.setattr(atomic_io.os, "replace", replace)
    atomic_io.atomic_write(tmp_path / "f.bin", b"data")
    assert events == ["fsync-file", "replace", "fsync-dir"]
    assert (tmp_path / "f.bin").read_bytes() == b"data"
