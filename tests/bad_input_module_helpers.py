"""What the bad-input tables of test_bad_input_modules.py share: the table type, a small LoRA
model, and adapter checkpoints saved (and then damaged) in a temporary directory."""

from __future__ import annotations

import json
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from badinput import Refusal
from torch import nn

from peft_zoo import adapter_state_dict, inject_lora, read_adapter, save_adapter
from peft_zoo.interop import checkpoint as ckpt

TMP = tempfile.TemporaryDirectory(prefix="peft_zoo_bad_input_")


class CaseTable(list[Refusal]):
    """A table of :class:`~badinput.Refusal` cases; ``case = table.add`` keeps each case one call."""

    def add(
        self,
        id: str,
        call: Callable[[dict[str, Any]], object],
        raises: type[BaseException] | tuple[type[BaseException], ...],
        *words: str,
        setup: Callable[[], dict[str, Any]] = dict,
        watch: tuple[str, ...] = (),
        paths: tuple[str, ...] = (),
    ) -> None:
        self.append(Refusal(id, call, raises, words, setup, watch, paths))


def lora_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    inject_lora(model, ["0", "2"], 2, 4.0)
    return model


def lora_setup() -> dict[str, Any]:
    return {"model": lora_model()}


def tmp_dir() -> Path:
    return Path(tempfile.mkdtemp(dir=TMP.name))


def saved(mutate: Callable[[Path], None] | None = None) -> Callable[[], dict[str, Any]]:
    """A trained model saved to ``<tmp>/a.safetensors`` (then ``mutate``d), and a fresh target."""

    def setup() -> dict[str, Any]:
        trained, fresh = lora_model(), lora_model()
        with torch.no_grad():
            for p in adapter_state_dict(trained).values():
                p.add_(1.0)
        d = tmp_dir()
        path = save_adapter(trained, d / "a.safetensors")
        if mutate is not None:
            mutate(path)
        return {"model": fresh, "path": path, "dir": d}

    return setup


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str] | None) -> None:
    safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)


def with_config(config_text: str) -> Callable[[Path], None]:
    """Rewrite the file with ``config_text`` as its config and a matching digest."""

    def mutate(path: Path) -> None:
        state, _ = read_adapter(path)
        digest = ckpt.checkpoint_digest(state, config_text)
        write_safetensors(path, state, {ckpt.METADATA_KEY: config_text, ckpt.DIGEST_KEY: digest})

    return mutate


def flip_data_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    data[8 + n + 5] ^= 0x10
    path.write_bytes(bytes(data))


def previous_version(path: Path) -> None:  # as peft_zoo wrote it before the digest existed
    state, config = read_adapter(path)
    write_safetensors(path, state, {ckpt.METADATA_KEY: json.dumps(config)})


def no_metadata(path: Path) -> None:
    state, _ = read_adapter(path)
    write_safetensors(path, state, None)


def legacy_pt(path: Path) -> None:
    state, _ = read_adapter(path)
    torch.save(state, path.with_suffix(".pt"))
