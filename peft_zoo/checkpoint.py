"""Adapter-only checkpoints: save the few adapter tensors, not the frozen model.

On disk an adapter is one safetensors file whose header metadata carries its config
(method, rank, alpha, targets, library version) under the key ``peft_zoo_config``, so
tensors and config are always replaced together by one atomic rename. Saving to a
directory also writes ``adapter_config.json``, a human-readable copy of that config.

Loading reads and validates everything (file integrity, every key, shape and dtype, the
hyperparameters that change the function, finite values) *before* the first tensor is
copied into the model: a bad file raises :class:`CheckpointError` and the model is left
exactly as it was. Nothing is unpickled: safetensors, or ``torch.load(weights_only=True)``
for legacy ``.pt`` / ``.bin`` files.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from ._base import AdapterModule, outermost_adapters
from ._io import atomic_write
from .inject import adapter_named_parameters

FORMAT = "peft_zoo.adapter"
FORMAT_VERSION = 1
WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
METADATA_KEY = "peft_zoo_config"
_LEGACY_NAMES = ("adapter_model.bin", "adapter_model.pt")
# Hyperparameters that only matter while training; a mismatch is not an error on load.
_TRAINING_ONLY = frozenset({"dropout"})


class CheckpointError(ValueError):
    """An adapter checkpoint that cannot be read or does not fit the model. Nothing changed."""


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors of ``model`` only, keyed as in ``model.state_dict()``.

    The tensors are detached views of the live parameters (no copy).
    """
    return {name: p.detach() for name, p in adapter_named_parameters(model)}


def adapter_config(model: nn.Module) -> dict[str, Any]:
    """Describe the adapters in ``model``: one record per adapter layer, plus a summary."""
    from . import __version__

    layers = {name: module.adapter_config() for name, module in outermost_adapters(model).items()}
    methods = sorted({str(rec["method"]) for rec in layers.values()})

    def common(key: str) -> object:
        values = {json.dumps(rec.get(key)) for rec in layers.values()}
        return json.loads(values.pop()) if len(values) == 1 else None

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library": "peft_zoo",
        "library_version": __version__,
        "method": methods[0] if len(methods) == 1 else "mixed",
        "rank": common("rank"),
        "alpha": common("alpha"),
        "targets": list(layers),
        "layers": layers,
    }


# ----------------------------------------------------------------------------- saving


def save_adapter(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Save only the adapter tensors of ``model`` and their config.

    ``path`` ending in ``.safetensors`` writes that one file; any other path is a directory
    (created if needed) receiving ``adapter_model.safetensors`` and ``adapter_config.json``.
    Each file is written to a temporary name and renamed into place. Returns the path of
    the safetensors file.
    """
    state = adapter_state_dict(model)
    if not state:
        raise CheckpointError("save_adapter: the model contains no adapter parameters")
    config = adapter_config(model)
    # Own, contiguous CPU copies: safetensors refuses views and shared storage.
    tensors = {k: v.to("cpu", copy=True).contiguous() for k, v in state.items()}
    blob = safetensors.torch.save(tensors, metadata={METADATA_KEY: json.dumps(config)})
    path = Path(path)
    if path.suffix == ".safetensors":
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, blob)
        return path
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / WEIGHTS_NAME, blob)
    atomic_write(path / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())
    return path / WEIGHTS_NAME


# ----------------------------------------------------------------------------- loading


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    # Layout: 8-byte little-endian header length, then a JSON header with "__metadata__".
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]).get("__metadata__") or {}


def _resolve_file(path: Path) -> Path:
    if path.is_dir():
        for name in (WEIGHTS_NAME, *_LEGACY_NAMES):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: no {WEIGHTS_NAME} (or legacy {_LEGACY_NAMES}) in this directory")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such adapter file or directory")
    return path


def read_adapter(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an adapter file or directory into ``(state_dict, config)`` without touching any
    model. Raises :class:`CheckpointError` for a missing, truncated or corrupt file."""
    file = _resolve_file(Path(path))
    config: dict[str, Any] = {}
    if file.suffix == ".safetensors":
        data = file.read_bytes()
        try:
            state = safetensors.torch.load(data)
            meta = _safetensors_metadata(data)
            if METADATA_KEY in meta:
                config = json.loads(meta[METADATA_KEY])
        except Exception as err:  # safetensors raises several types for bad bytes
            raise CheckpointError(
                f"{file}: not a readable safetensors file; it may be truncated or corrupt ({err})"
            ) from err
    else:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(f"{file}: cannot be read as a tensor checkpoint ({err})") from err
        if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
        ):
            raise CheckpointError(f"{file}: expected a dict of name -> tensor")
    if not config and (file.parent / CONFIG_NAME).is_file():
        try:
            config = json.loads((file.parent / CONFIG_NAME).read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{file.parent / CONFIG_NAME}: invalid JSON ({err})") from err
    layers = (config.get("layers") or {}) if isinstance(config, dict) else None
    if not isinstance(layers, dict) or not all(isinstance(r, dict) for r in layers.values()):
        raise CheckpointError(
            f"{file}: malformed adapter config (expected a JSON object whose 'layers' maps "
            "layer names to objects)"
        )
    if config and config.get("format") != FORMAT:
        raise CheckpointError(
            f"{file}: its config says format {config.get('format', config.get('peft_type'))!r}, "
            f"not {FORMAT!r}; this loader reads peft_zoo adapters only"
        )
    return state, config


def _check_fits(model: nn.Module, state: dict[str, torch.Tensor], config: dict[str, Any]) -> list[str]:
    expected = adapter_state_dict(model)
    if not expected:
        return ["the model has no adapter layers: inject the same adapters before loading"]
    problems: list[str] = []
    merged = [
        n for n, m in model.named_modules() if isinstance(m, AdapterModule) and getattr(m, "merged", False)
    ]
    if merged:
        problems.append(f"layers {merged} are merged; unmerge() them before loading new weights")
    missing = [k for k in expected if k not in state]
    unexpected = sorted(k for k in state if k not in expected)  # a file's key order is not meaningful
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected} (saved from a different model or targets?)")
    for key, param in expected.items():
        t = state.get(key)
        if t is None:
            continue
        if t.shape != param.shape:
            problems.append(f"{key}: shape {tuple(t.shape)} in file, {tuple(param.shape)} in model")
        elif t.dtype != param.dtype:
            problems.append(f"{key}: dtype {t.dtype} in file, {param.dtype} in model")
        elif t.is_floating_point() and not bool(torch.isfinite(t).all()):
            problems.append(f"{key}: contains NaN or inf")
    layers = dict(model.named_modules())
    for name, record in (config.get("layers") or {}).items():
        module = layers.get(name)
        if not isinstance(module, AdapterModule):
            continue  # reported above as unexpected tensors
        mine = module.adapter_config()
        for field, saved in record.items():
            if field not in _TRAINING_ONLY and mine.get(field) != saved:
                problems.append(f"{name}: {field}={saved!r} in file, {mine.get(field)!r} in model")
    return problems


def load_adapter_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], config: dict[str, Any] | None = None
) -> None:
    """Copy an adapter state dict into ``model`` after checking that it fits exactly."""
    problems = _check_fits(model, state, config or {})
    if problems:
        raise CheckpointError(
            "adapter does not fit the model; nothing was loaded:\n  - " + "\n  - ".join(problems)
        )
    with torch.no_grad():
        for name, p in adapter_named_parameters(model):
            p.copy_(state[name])


def load_adapter(model: nn.Module, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load an adapter saved by :func:`save_adapter` into ``model`` (which must already hold
    the same adapter layers, e.g. from the same ``inject_*`` call). Returns the config."""
    state, config = read_adapter(path)
    try:
        load_adapter_state_dict(model, state, config)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    return config
