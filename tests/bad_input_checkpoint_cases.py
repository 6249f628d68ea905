"""Bad input to adapter checkpoints (save_adapter destinations, damaged files for load_adapter,
bad state dicts for load_adapter_state_dict): a table of :class:`~badinput.Refusal` cases for
test_bad_input_modules.py."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bad_input_module_helpers import (
    CaseTable,
    flip_data_bit,
    legacy_pt,
    lora_model,
    lora_setup,
    no_metadata,
    previous_version,
    saved,
    tmp_dir,
    with_config,
    write_safetensors,
)
from torch import nn

from peft_zoo import (
    CheckpointError,
    adapter_state_dict,
    inject_lora,
    load_adapter,
    load_adapter_state_dict,
    read_adapter,
    save_adapter,
)
from peft_zoo.interop import checkpoint as ckpt

CHECKPOINT = CaseTable()
case = CHECKPOINT.add

# ----------------------------------------------------------------------------- save_adapter: bad destinations


def _in_the_way(kind: str) -> Callable[[], dict[str, Any]]:
    def setup() -> dict[str, Any]:
        d = tmp_dir()
        model = lora_model()
        if kind == "file-is-dir":
            (d / "a.safetensors").mkdir()
            (d / "a.safetensors" / "keep.txt").write_text("keep")
            target = d / "a.safetensors"
        elif kind == "weights-is-dir":
            (d / "out" / ckpt.WEIGHTS_NAME).mkdir(parents=True)
            target = d / "out"
        elif kind == "sidecar-is-dir":
            save_adapter(lora_model(), d / "out")
            (d / "out" / ckpt.CONFIG_NAME).unlink()
            (d / "out" / ckpt.CONFIG_NAME).mkdir()
            target = d / "out"
        elif kind == "parent-is-file":
            (d / "f").write_text("a file")
            target = d / "f" / "sub" / "a.safetensors"
        else:  # "dir-is-file": a directory save onto an existing file
            (d / "out").write_text("a file")
            target = d / "out"
        return {"model": model, "dir": d, "target": target}

    return setup


for kind in ("file-is-dir", "weights-is-dir", "sidecar-is-dir", "parent-is-file", "dir-is-file"):
    case(f"save-{kind}", lambda s: save_adapter(s["model"], s["target"]), CheckpointError, "cannot save to",
         setup=_in_the_way(kind), watch=("model",), paths=("dir",))  # fmt: skip
case("save-model-none", lambda s: save_adapter(None, s["dir"] / "a"), TypeError, "nn.Module",
     setup=lambda: {"dir": tmp_dir()}, paths=("dir",))  # fmt: skip
for bad in [None, 3, b"adapter", ""]:
    case(f"save-path-{bad!r}", lambda s, b=bad: save_adapter(s["model"], b), (TypeError, ValueError), "path",
         setup=lora_setup, watch=("model",))  # fmt: skip
case("save-no-adapters", lambda s: save_adapter(nn.Linear(2, 2), s["dir"] / "a"), CheckpointError,
     "no adapter parameters", setup=lambda: {"dir": tmp_dir()}, paths=("dir",))  # fmt: skip

# ----------------------------------------------------------------------------- load_adapter: bad files


def _load_file(**kw: Any) -> Callable[[dict[str, Any]], object]:
    return lambda s: load_adapter(s["model"], s["path"], **kw)


def _bytes(fn: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(fn(p.read_bytes()))


_deep = "[" * 100_000 + "]" * 100_000
BAD_FILES: list[tuple[str, Callable[[Path], None], tuple[str, ...]]] = [
    ("truncated-half", _bytes(lambda b: b[: len(b) // 2]), ("truncated or corrupt",)),
    ("truncated-header", _bytes(lambda b: b[:20]), ("truncated or corrupt",)),
    ("truncated-last-byte", _bytes(lambda b: b[:-1]), ("truncated or corrupt",)),
    ("empty", _bytes(lambda b: b""), ("truncated or corrupt",)),
    ("garbage", _bytes(lambda b: bytes(range(256)) * 4), ("truncated or corrupt",)),
    ("huge-header-length", _bytes(lambda b: struct.pack("<Q", 2**62) + b[8:]), ("corrupt",)),
    ("header-not-json", _bytes(lambda b: b[:8] + b"\xff" * (len(b) - 8)), ("corrupt",)),
    ("bit-flip-data", flip_data_bit, ("integrity check failed",)),
    ("extra-byte", _bytes(lambda b: b + b"\x00"), ("corrupt",)),
    ("previous-version", previous_version, ("no integrity digest", "allow_unverified=True")),
    ("no-metadata", no_metadata, ("no integrity digest", "allow_unverified=True")),
    ("config-deep", with_config(_deep), ("invalid JSON",)),
    ("config-list", with_config("[1, 2]"), ("config",)),
    ("config-not-json", with_config("{rank: 2"), ("invalid JSON",)),
    ("config-other-format", with_config(json.dumps({"format": "peft", "layers": {}})), ("'peft'",)),
    ("config-no-records", with_config(json.dumps({"format": ckpt.FORMAT, "layers": {}})), ("no record",)),
    (
        "config-alpha-str",
        with_config(json.dumps({"format": ckpt.FORMAT, "layers": {"0": {"method": "lora", "alpha": "4.0"}}})),
        ("alpha='4.0'",),
    ),
]
for name, mutate, words in BAD_FILES:
    case(f"load-{name}", _load_file(), CheckpointError, *words, setup=saved(mutate), watch=("model",),
         paths=("dir",))  # fmt: skip
case("load-digest-without-config", _load_file(), CheckpointError, "no peft_zoo config", "allow_unverified",
     setup=saved(lambda p: write_safetensors(p, read_adapter(p)[0], {ckpt.DIGEST_KEY: ckpt.checkpoint_digest(
         read_adapter(p)[0])})), watch=("model",))  # fmt: skip
case("load-bit-flip-even-if-unverified-allowed", _load_file(allow_unverified=True), CheckpointError, "integrity",
     setup=saved(flip_data_bit), watch=("model",))  # fmt: skip
case("load-legacy-pt", lambda s: load_adapter(s["model"], s["path"].with_suffix(".pt")), CheckpointError,
     "legacy", "allow_unverified=True", setup=saved(legacy_pt), watch=("model",))  # fmt: skip
case("load-flag-str", _load_file(allow_unverified="yes"), TypeError, "allow_unverified", setup=saved(),
     watch=("model",))  # fmt: skip
case("load-model-none", lambda s: load_adapter(None, s["path"]), TypeError, "nn.Module", setup=saved())
case(
    "load-path-none",
    lambda s: load_adapter(s["model"], None),
    TypeError,
    "path",
    setup=lora_setup,
    watch=("model",),
)
case("load-missing", lambda s: load_adapter(s["model"], s["dir"] / "nope"), CheckpointError, "no such",
     setup=saved(), watch=("model",))  # fmt: skip
case("load-wrong-rank", lambda s: load_adapter(s["other"], s["path"]), CheckpointError, "shape",
     setup=lambda: {**saved()(), "other": inject_lora(nn.Sequential(nn.Linear(4, 6), nn.ReLU(),
         nn.Linear(6, 3)), ["0", "2"], 3, 4.0)[0]}, watch=("other",))  # fmt: skip
case("read-path-int", lambda s: read_adapter(7), TypeError, "path")

# ----------------------------------------------------------------------------- load_adapter_state_dict

_good = lambda s: adapter_state_dict(lora_model())  # noqa: E731
for name, state in [
    ("list", lambda s: []),
    ("none", lambda s: None),
    ("tensor", lambda s: torch.zeros(3)),
    ("str", lambda s: "0.lora_A"),
    ("int-key", lambda s: {1: torch.zeros(2, 4), **_good(s)}),
    ("list-value", lambda s: {**_good(s), "0.lora_A": [[0.0] * 4] * 2}),
    ("none-value", lambda s: {**_good(s), "2.lora_B": None}),
]:
    case(f"state-{name}", lambda s, f=state: load_adapter_state_dict(s["model"], f(s)), TypeError, "state",
         setup=lora_setup, watch=("model",))  # fmt: skip
case("state-config-str", lambda s: load_adapter_state_dict(s["model"], _good(s), "lora"), TypeError, "config",
     setup=lora_setup, watch=("model",))  # fmt: skip
case("state-model-none", lambda s: load_adapter_state_dict(None, _good(s)), TypeError, "nn.Module")
case("state-nan", lambda s: load_adapter_state_dict(s["model"], {**_good(s), "0.lora_B": torch.full((6, 2),
     float("nan"))}), CheckpointError, "NaN", setup=lora_setup, watch=("model",))  # fmt: skip
