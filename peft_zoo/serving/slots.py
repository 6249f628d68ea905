"""What goes into one slot of an :class:`~peft_zoo.serving.bank.AdapterBank`: a single LoRA
adapter, read from a path written by ``save_adapter`` or from an adapter state dict, and
checked against every batched layer of the model before anything is written.

:func:`plan_slot` reads and checks; it returns a :class:`SlotPlan` (``layer name -> (A, B,
scale)``) ready to copy, or raises :class:`BankError` listing every problem at once. It
touches neither the bank nor the model.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from ..core.checks import check_bool, check_positive_float
from ..interop.checkpoint import CheckpointError, read_adapter
from ..lora import lora_scale
from .batched import BatchedLoRALinear

__all__ = ["AdapterSource", "BankError", "SlotPlan", "plan_slot"]

AdapterSource = str | os.PathLike[str] | Mapping[str, torch.Tensor]
LORA_PARTS = ("lora_A", "lora_B")


class BankError(ValueError):
    """A bank operation that cannot be done (full bank, unknown name, mismatched adapter).
    The bank and the model are unchanged."""


@dataclass
class SlotPlan:
    """One validated adapter, ready to copy: ``layer name -> (A (r', in), B (out, r'), scale)``."""

    tensors: dict[str, tuple[torch.Tensor, torch.Tensor, float]]


def _check_options(name: object, alpha: object, rslora: object, strict: object, unverified: object) -> None:
    """Refuse bad arguments of ``load`` (wrong types are refused, never coerced)."""
    if not isinstance(name, str) or not name:
        raise BankError(f"adapter names must be non-empty strings, got {name!r}")
    try:
        if alpha is not None:
            check_positive_float(alpha, "alpha")
        check_bool(rslora, "rslora")
        check_bool(strict, "strict")
        check_bool(unverified, "allow_unverified")
    except (TypeError, ValueError) as err:
        raise BankError(f"cannot load {name!r}: {err}") from None


def _layer_scale(cfg: Mapping[str, object], rank: int, alpha: float | None, rslora: bool) -> float:
    """One layer's scale: the file's alpha / rsLoRA where it records them, else the arguments."""
    layer_alpha = check_positive_float(
        cfg.get("alpha", alpha if alpha is not None else max(rank, 1)), "alpha"
    )
    layer_rslora = check_bool(cfg.get("rslora", rslora), "rslora")
    return lora_scale(rank, layer_alpha, layer_rslora) if rank else float("nan")


def _read(
    name: str, adapter: object, allow_unverified: bool
) -> tuple[Iterable[tuple[object, object]], dict[str, dict[str, object]]]:
    """The adapter's ``(key, tensor)`` entries and, for a file, its per-layer config (alpha,
    rsLoRA). The entries are not checked yet: a state dict may hold anything."""
    if not isinstance(adapter, (str, os.PathLike)):
        if isinstance(adapter, Mapping):
            return dict(adapter).items(), {}
        raise BankError(
            f"adapter must be a path written by save_adapter or an adapter state dict, got {type(adapter).__name__}"
        )
    try:
        state, config = read_adapter(adapter, allow_unverified=allow_unverified)
    except CheckpointError as err:
        raise BankError(f"cannot load {name!r}: {err}") from None
    per_layer_cfg = config.get("layers") or {}
    methods = {str(rec.get("method")) for rec in per_layer_cfg.values()}
    if methods - {"lora"}:
        raise BankError(f"cannot load {name!r} from {adapter}: it holds {sorted(methods)} adapters, not LoRA")
    return state.items(), per_layer_cfg


def _group(items: Iterable[tuple[object, object]], problems: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """``layer -> {"lora_A": A, "lora_B": B}`` from ``"<layer>.lora_A"`` keys; other entries
    go to ``problems``."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in items:
        layer, _, part = key.rpartition(".") if isinstance(key, str) else ("", "", "")
        if part not in LORA_PARTS or not isinstance(tensor, torch.Tensor):
            problems.append(f"{key!r} is not a LoRA tensor (expected '<layer>.lora_A' / '<layer>.lora_B')")
            continue
        grouped.setdefault(layer, {})[part] = tensor
    return grouped


def _coverage_problems(
    grouped: Mapping[str, object], layers: Mapping[str, object], strict: bool
) -> list[str]:
    """Layers the model lacks, layers the adapter lacks (under ``strict``), an empty adapter."""
    problems = []
    for layer in sorted(set(grouped) - set(layers)):
        close = difflib.get_close_matches(layer, list(layers), n=2, cutoff=0.6)
        problems.append(
            f"{layer!r} is not a batched layer of this model" + (f" (close: {close})" if close else "")
        )
    missing = sorted(set(layers) - set(grouped))
    if strict and missing:
        problems.append(f"no tensors for batched layers {missing} (pass strict=False to leave them at zero)")
    if not grouped:
        problems.append("the adapter has no LoRA tensors")
    return problems


def _plan_layer(
    layer: BatchedLoRALinear,
    parts: Mapping[str, torch.Tensor],
    cfg: Mapping[str, object],
    alpha: float | None,
    rslora: bool,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One layer's ``(A, B, scale)``; raises ``ValueError`` naming what does not fit."""
    if set(parts) != set(LORA_PARTS):
        raise ValueError(f"needs both lora_A and lora_B, got {sorted(parts)}")
    a, b = parts["lora_A"], parts["lora_B"]
    rank = a.shape[0] if a.dim() == 2 else 0
    scale = _layer_scale(cfg, rank, alpha, rslora)
    layer.check_slot(0, a, b, scale)
    if not (a.is_floating_point() and b.is_floating_point()):
        raise ValueError(f"adapter tensors must be floating point, got {a.dtype}/{b.dtype}")
    return a, b, scale


def plan_slot(
    layers: Mapping[str, BatchedLoRALinear],
    name: str,
    adapter: AdapterSource,
    alpha: float | None,
    rslora: bool,
    strict: bool,
    allow_unverified: bool = False,
) -> SlotPlan:
    """Read ``adapter`` and check it against every batched layer in ``layers``; touch nothing.

    Raises :class:`BankError` for a bad argument, an unreadable file, or, listing all of them,
    every tensor that does not fit (unknown or missing layers, a rank larger than the slot's,
    a shape mismatch, non-finite or non-float weights)."""
    _check_options(name, alpha, rslora, strict, allow_unverified)
    entries, per_layer_cfg = _read(name, adapter, allow_unverified)
    problems: list[str] = []
    grouped = _group(entries, problems)
    problems += _coverage_problems(grouped, layers, strict)
    plan: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    for layer_name in sorted(set(grouped) & set(layers)):
        cfg = per_layer_cfg.get(layer_name, {})
        try:
            plan[layer_name] = _plan_layer(layers[layer_name], grouped[layer_name], cfg, alpha, rslora)
        except (TypeError, ValueError) as err:
            problems.append(f"{layer_name}: {err}")
    if problems:
        raise BankError(f"cannot load {name!r}; the bank was not changed:\n  - " + "\n  - ".join(problems))
    return SlotPlan(plan)
