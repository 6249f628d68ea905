"""Adapter-only checkpoints: save the few adapter tensors, not the frozen model.

On disk an adapter is one safetensors file whose header metadata carries its config
(method, rank, alpha, targets, library version) under the key ``peft_zoo_config``, so
tensors and config are always replaced together by one atomic rename. Saving to a
directory also writes ``adapter_config.json``, a human-readable copy of that config.

The header also carries ``peft_zoo_sha256``, a SHA-256 digest of the config text and of
every tensor (name, dtype, shape and raw bytes, in name order: :func:`checkpoint_digest`),
so a flipped bit anywhere in the tensor data or the config is detected on load.

Loading reads and validates everything (the digest, every key, shape and dtype, the
hyperparameters that change the function, finite values) *before* the first tensor is
copied into the model: a bad file raises :class:`CheckpointError` and the model is left
exactly as it was. A file without the config or the digest (saved by peft_zoo before the
digest existed, by another tool, or a legacy ``.pt`` / ``.bin``) cannot be checked that
way and is refused unless the caller passes ``allow_unverified=True``. Nothing is
unpickled: safetensors, or ``torch.load(weights_only=True)`` for legacy files.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from ..core.base import AdapterModule, outermost_adapters
from ..core.checks import check_bool, check_module
from ..core.io import atomic_write, read_torch_state_dict
from ..core.version import __version__
from ..injection.surgery import adapter_named_parameters

FORMAT = "peft_zoo.adapter"
FORMAT_VERSION = 1
WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
METADATA_KEY = "peft_zoo_config"
DIGEST_KEY = "peft_zoo_sha256"
_DIGEST_DOMAIN = b"peft_zoo.adapter.sha256.v1\0"
_LEGACY_NAMES = ("adapter_model.bin", "adapter_model.pt")
# Hyperparameters that only matter while training; a mismatch is not an error on load.
_TRAINING_ONLY = frozenset({"dropout"})


class CheckpointError(ValueError):
    """An adapter checkpoint that cannot be read or does not fit the model. Nothing changed."""


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors of ``model`` only, keyed as in ``model.state_dict()``.

    The tensors are detached views of the live parameters (no copy).
    """
    check_module(model, "adapter_state_dict: model")
    return {name: p.detach() for name, p in adapter_named_parameters(model)}


def adapter_config(model: nn.Module) -> dict[str, Any]:
    """Describe the adapters in ``model``: one record per adapter layer, plus a summary."""
    check_module(model, "adapter_config: model")
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


# ----------------------------------------------------------------------------- argument checks


def _check_path(path: object, fn: str) -> Path:
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{fn}: path must be a str or os.PathLike, got {type(path).__name__}")
    if not str(os.fspath(path)):
        raise ValueError(f"{fn}: path is empty")
    return Path(path)


def checkpoint_digest(tensors: Mapping[str, torch.Tensor], config_text: str = "") -> str:
    """SHA-256 (hex) of ``config_text`` and of every tensor in name order: its name, dtype,
    shape and raw bytes, each length-prefixed so no two different inputs share an encoding.

    ``save_adapter`` stores it under ``peft_zoo_sha256``; loading recomputes it over what it
    read. To rewrite a file by hand, store ``checkpoint_digest(tensors, config_json)``.
    """
    h = hashlib.sha256(_DIGEST_DOMAIN)

    def chunk(data: bytes) -> None:
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)

    chunk(config_text.encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        chunk(json.dumps([name, str(t.dtype), list(t.shape)]).encode("utf-8"))
        chunk(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # (numel * itemsize,) bytes
    return h.hexdigest()


# ----------------------------------------------------------------------------- saving


def _check_destination(path: Path, files: list[Path]) -> None:
    """Refuse, before anything is written, a destination that something is in the way of."""
    for ancestor in (files[0].parent, *files[0].parent.parents):
        if ancestor.is_dir():
            break
        if ancestor.exists() or ancestor.is_symlink():
            raise CheckpointError(
                f"save_adapter: cannot save to {path}: {ancestor} exists and is not a directory"
            )
    for file in files:
        if file.is_dir():
            raise CheckpointError(
                f"save_adapter: cannot save to {path}: {file} is an existing directory in the way; "
                "remove it or choose another path (nothing was written)"
            )
        if file.exists() and not file.is_file():
            raise CheckpointError(f"save_adapter: cannot save to {path}: {file} is not a regular file")


def save_adapter(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Save only the adapter tensors of ``model``, their config and their digest.

    ``path`` ending in ``.safetensors`` writes that one file; any other path is a directory
    (created if needed) receiving ``adapter_model.safetensors`` and ``adapter_config.json``.
    Each file is written to a temporary name and renamed into place (see
    :func:`peft_zoo.core.io.atomic_write`). A destination blocked by an existing directory, or
    whose parent is a file, raises :class:`CheckpointError` before anything is written.
    Returns the path of the safetensors file.
    """
    check_module(model, "save_adapter: model")
    path = _check_path(path, "save_adapter")
    state = adapter_state_dict(model)
    if not state:
        raise CheckpointError("save_adapter: the model contains no adapter parameters")
    as_file = path.suffix == ".safetensors"
    files = [path] if as_file else [path / WEIGHTS_NAME, path / CONFIG_NAME]
    _check_destination(path, files)
    config = adapter_config(model)
    config_text = json.dumps(config)
    # Own, contiguous CPU copies: safetensors refuses views and shared storage.
    tensors = {k: v.to("cpu", copy=True).contiguous() for k, v in state.items()}
    metadata = {METADATA_KEY: config_text, DIGEST_KEY: checkpoint_digest(tensors, config_text)}
    blob = safetensors.torch.save(tensors, metadata=metadata)
    atomic_write(files[0], blob)
    if not as_file:
        atomic_write(files[1], (json.dumps(config, indent=2) + "\n").encode())
    return files[0]


# ----------------------------------------------------------------------------- loading


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    # Layout: 8-byte little-endian header length, then a JSON header with "__metadata__".
    (n,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8 : 8 + n]).get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError("the header's __metadata__ is not a map of strings")
    return meta


def _json(text: str, where: object) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:  # RecursionError: absurdly deep nesting
        raise CheckpointError(f"{where}: invalid JSON ({type(err).__name__}: {err})") from None


def find_weights_file(directory: Path, legacy_names: Sequence[str]) -> Path | None:
    """The tensors file of an adapter ``directory``: ``adapter_model.safetensors``, else the
    first of ``legacy_names`` there (``adapter_model.bin``...); ``None`` when there is none."""
    for name in (WEIGHTS_NAME, *legacy_names):
        if (directory / name).is_file():
            return directory / name
    return None


def read_safetensors(file: Path, error: type[Exception]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the header metadata of the safetensors ``file`` (shared by this module
    and the PEFT reader). A missing, truncated or corrupt file raises ``error`` naming it."""
    try:
        data = file.read_bytes()
        state = safetensors.torch.load(data)
        meta = _safetensors_metadata(data)
    except Exception as err:  # safetensors raises several types for bad bytes
        raise error(
            f"{file}: not a readable safetensors file; it may be truncated or corrupt ({err})"
        ) from err
    return state, meta


def _resolve_file(path: Path) -> Path:
    if path.is_dir():
        file = find_weights_file(path, _LEGACY_NAMES)
        if file is None:
            raise CheckpointError(f"{path}: no {WEIGHTS_NAME} (or legacy {_LEGACY_NAMES}) in this directory")
        return file
    if not path.is_file():
        raise CheckpointError(f"{path}: no such adapter file or directory")
    return path


_OPT_IN = "pass allow_unverified=True to load it without that check"


def _read_safetensors(file: Path, allow_unverified: bool) -> tuple[dict[str, torch.Tensor], str | None]:
    """The tensors and the config text of a safetensors file, its digest verified."""
    state, meta = read_safetensors(file, CheckpointError)
    config_text = meta.get(METADATA_KEY)
    digest = meta.get(DIGEST_KEY)
    if digest is not None:  # a digest that is present is always checked
        if checkpoint_digest(state, config_text or "") != digest:
            raise CheckpointError(
                f"{file}: integrity check failed: the SHA-256 of its tensors and config does not "
                "match the digest stored at save time; the file is corrupt or was modified"
            )
    elif not allow_unverified:
        raise CheckpointError(
            f"{file}: has no integrity digest ({DIGEST_KEY!r}): it was saved by an older peft_zoo "
            f"or another tool, so corruption cannot be detected; {_OPT_IN}, or re-save it"
        )
    return state, config_text


def _read_legacy(file: Path, allow_unverified: bool) -> dict[str, torch.Tensor]:
    if not allow_unverified:
        raise CheckpointError(
            f"{file}: a legacy torch file carries no integrity digest, so corruption cannot be "
            f"detected; {_OPT_IN}, or re-save it with save_adapter"
        )
    return read_torch_state_dict(file, CheckpointError)


def read_adapter(
    path: str | os.PathLike[str], *, allow_unverified: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an adapter file or directory into ``(state_dict, config)`` without touching any
    model. Raises :class:`CheckpointError` for a missing, truncated, corrupt or modified file
    (the stored digest does not match), and for a file without a config or a digest unless
    ``allow_unverified=True`` (then the config may come back empty: ``{}``)."""
    file = _resolve_file(_check_path(path, "read_adapter"))
    check_bool(allow_unverified, "read_adapter: allow_unverified")
    config_text = None
    if file.suffix == ".safetensors":
        state, config_text = _read_safetensors(file, allow_unverified)
    else:
        state = _read_legacy(file, allow_unverified)
    if config_text is None and (file.parent / CONFIG_NAME).is_file():
        config_text = (file.parent / CONFIG_NAME).read_text(encoding="utf-8", errors="replace")
        where: object = file.parent / CONFIG_NAME
    else:
        where = file
    if config_text is None and not allow_unverified:
        raise CheckpointError(
            f"{file}: has no peft_zoo config (no {METADATA_KEY!r} metadata, no {CONFIG_NAME}), so "
            f"its method, rank and alpha cannot be checked against the model; {_OPT_IN}"
        )
    config = _json(config_text, where) if config_text is not None else {}
    layers = (config.get("layers") or {}) if isinstance(config, dict) else None
    if not isinstance(layers, dict) or not all(isinstance(r, dict) for r in layers.values()):
        raise CheckpointError(
            f"{where}: malformed adapter config (expected a JSON object whose 'layers' maps "
            "layer names to objects)"
        )
    if config and config.get("format") != FORMAT:
        raise CheckpointError(
            f"{where}: its config says format {config.get('format', config.get('peft_type'))!r}, "
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
    records = config.get("layers") or {}
    layers = outermost_adapters(model)
    if config and (unrecorded := [n for n in layers if n not in records]):
        problems.append(f"the config has no record of adapter layers {unrecorded}")
    for name, record in records.items():
        module = layers.get(name)
        if module is None:
            continue  # reported above as unexpected tensors
        mine = module.adapter_config()
        for field, saved in record.items():
            if field not in _TRAINING_ONLY and mine.get(field) != saved:
                problems.append(f"{name}: {field}={saved!r} in file, {mine.get(field)!r} in model")
    return problems


def _check_state(state: object, config: object) -> None:
    if not isinstance(state, Mapping):
        raise TypeError(
            f"load_adapter_state_dict: state must be a dict of name -> tensor, got {type(state).__name__}"
        )
    bad = [repr(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(
            "load_adapter_state_dict: state must map str names to tensors; bad entries: "
            + ", ".join(bad[:5])
            + (" ..." if len(bad) > 5 else "")
        )
    if config is not None and not isinstance(config, Mapping):
        raise TypeError(
            f"load_adapter_state_dict: config must be a dict or None, got {type(config).__name__}"
        )


def load_adapter_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], config: Mapping[str, Any] | None = None
) -> None:
    """Copy an adapter state dict into ``model`` after checking that it fits exactly.

    ``state`` maps the keys of :func:`adapter_state_dict` to tensors of the model's shapes
    and dtypes; ``config`` (optional, as :func:`adapter_config` returns it) is compared
    with each layer's hyperparameters. Raises ``TypeError`` for a state that is not a
    ``str -> Tensor`` mapping and :class:`CheckpointError` for one that does not fit; the
    model is unchanged either way."""
    check_module(model, "load_adapter_state_dict: model")
    _check_state(state, config)
    problems = _check_fits(model, dict(state), dict(config or {}))
    if problems:
        raise CheckpointError(
            "adapter does not fit the model; nothing was loaded:\n  - " + "\n  - ".join(problems)
        )
    with torch.no_grad():
        for name, p in adapter_named_parameters(model):
            p.copy_(state[name])


def load_adapter(
    model: nn.Module, path: str | os.PathLike[str], *, allow_unverified: bool = False
) -> dict[str, Any]:
    """Load an adapter saved by :func:`save_adapter` into ``model`` (which must already hold
    the same adapter layers, e.g. from the same ``inject_*`` call). Returns the config.

    Everything is checked before the first tensor is copied: the stored SHA-256 digest, every
    key, shape and dtype, finite values, and each layer's hyperparameters (method, rank,
    alpha, rsLoRA, ...) against the model. A file that lacks the digest or the config (an
    older peft_zoo, another tool, a legacy ``.pt`` / ``.bin``) is refused unless
    ``allow_unverified=True``: then the missing checks are skipped (shapes and dtypes are
    still checked; a digest that is present is still verified).
    """
    check_module(model, "load_adapter: model")
    state, config = read_adapter(path, allow_unverified=allow_unverified)
    try:
        load_adapter_state_dict(model, state, config)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    return config
