"""Argument checks shared by every method: one place, one wording for each error.

Each check raises *before* anything is built or mutated, so a failed constructor or
injection leaves the caller's model exactly as it was.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import TypeGuard

import torch
from torch import nn


def check_positive_int(value: object, name: str) -> int:
    """Return ``value`` if it is an ``int`` > 0 (``bool`` is refused), else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int > 0, got {value!r} of type {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return int(value)


def check_positive_float(value: object, name: str) -> float:
    """Return ``value`` as a float if it is a finite real number > 0, else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number > 0, got {value!r} of type {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def check_probability(value: object, name: str) -> float:
    """Return ``value`` as a float if it lies in ``[0, 1)``, else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float in [0, 1), got {value!r}")
    if value < 0.0 or not value < 1.0:  # "not <" so that NaN is refused too
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return float(value)


def short_repr(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for error messages about values
    that came from a file (a 10 MB list must not end up in the message)."""
    import reprlib

    short = reprlib.Repr()
    short.maxstring, short.maxother, short.maxlevel = limit, limit, 3
    text = short.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def check_optional_bool(value: object, name: str) -> bool | None:
    """Return ``value`` if it is ``None`` or a real ``bool``; a string such as ``"no"`` or an
    int such as ``0`` is refused, never read as true or false."""
    if value is not None and not isinstance(value, bool):
        raise TypeError(
            f"{name} must be True, False or None, got {short_repr(value)} of type {type(value).__name__}"
        )
    return value


def check_int_in(value: object, name: str, low: int, high: int) -> int:
    """Return ``value`` if it is an ``int`` (not a ``bool``, not a float) with
    ``low <= value <= high``, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be an int in [{low}, {high}], got {short_repr(value)} of type {type(value).__name__}"
        )
    if not low <= int(value) <= high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {short_repr(value)}")
    return int(value)


def check_names(value: object, name: str) -> list[str]:
    """``value`` as a list of module names: a list, tuple or set of non-empty ``str``. A bare
    string is refused (it would be read one character at a time), so is any other type."""
    if isinstance(value, str):
        raise TypeError(
            f"{name} must be a list of module names, got the string {short_repr(value)}: write [{value!r:.60}]"
        )
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise TypeError(
            f"{name} must be a list of module names, got {short_repr(value)} of type {type(value).__name__}"
        )
    for item in value:
        if not isinstance(item, str):
            raise TypeError(
                f"{name} must hold module names (str), got {short_repr(item)} of type {type(item).__name__}"
            )
        if not item:
            raise ValueError(f"{name} holds an empty name, which names no module")
    return list(value)


def check_name_list(names: object, what: str, duplicate_error: type[ValueError] = ValueError) -> list[str]:
    """``names`` as a list of module names for a call's argument: one ``str`` is one name (never
    read one character at a time), otherwise any iterable of ``str`` (not ``bytes``, not a
    mapping). A name listed twice raises ``duplicate_error`` (an injector passes its
    ``InjectionError``); an empty list is returned as it is, for the caller to judge.
    (:func:`check_names` is the stricter check of a config field: a list, no bare string.)"""
    if isinstance(names, str):
        return [names]
    if names is None or isinstance(names, (bytes, Mapping)) or not isinstance(names, Iterable):
        raise TypeError(
            f"{what} must be a module name (str) or a list of module names, got {names!r} "
            f"of type {type(names).__name__}"
        )
    found = list(names)
    bad = [n for n in found if not isinstance(n, str)]
    if bad:
        raise TypeError(f"{what} must be module names (str), got {bad!r}")
    dupes = sorted({n for n in found if found.count(n) > 1})
    if dupes:
        raise duplicate_error(f"{what} lists these names more than once: {dupes}")
    return found


def check_linear(module: object, what: str) -> nn.Linear:
    """Return ``module`` if it is an ``nn.Linear``, else raise a TypeError naming it."""
    if not isinstance(module, nn.Linear):
        raise TypeError(f"{what} must be an nn.Linear, got {type(module).__name__}")
    return module


def is_conv1d(module: object) -> TypeGuard[nn.Module]:
    """Is ``module`` a Hugging Face ``Conv1D`` (GPT-2's projections): a linear layer that
    stores its weight as ``(in, out)`` and computes ``x @ W + b``? Checked by duck typing, so
    transformers is never imported."""
    weight = getattr(module, "weight", None)
    return (
        isinstance(module, nn.Module)
        and type(module).__name__ == "Conv1D"
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 2
        and getattr(module, "nf", None) == weight.shape[1]
    )


def linear_features(base: object, what: str, fan_in_fan_out: bool | None = None) -> tuple[int, int, bool]:
    """``(in_features, out_features, fan_in_fan_out)`` of a layer an adapter can wrap: an
    ``nn.Linear`` (weight ``(out, in)``) or a ``Conv1D`` (weight ``(in, out)``, so
    ``fan_in_fan_out`` is True). ``fan_in_fan_out=None`` infers it; a wrong explicit value raises."""
    if isinstance(base, nn.Linear):
        if fan_in_fan_out:
            raise ValueError(f"{what}: fan_in_fan_out=True, but an nn.Linear stores its weight as (out, in)")
        return base.in_features, base.out_features, False
    if is_conv1d(base):
        if fan_in_fan_out is False:
            raise ValueError(f"{what}: fan_in_fan_out=False, but a Conv1D stores its weight as (in, out)")
        d_in, d_out = weight_of(base).shape
        return int(d_in), int(d_out), True
    raise TypeError(f"{what} must be an nn.Linear or a transformers Conv1D, got {type(base).__name__}")


def weight_of(layer: nn.Module) -> torch.Tensor:
    """``layer.weight``, typed: the weight of a layer :func:`linear_features` accepted (an
    ``nn.Linear`` or a ``Conv1D``). Raises a TypeError when it is not a tensor."""
    weight = layer.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(layer).__name__}.weight must be a tensor, got {type(weight).__name__}")
    return weight


def bias_of(layer: nn.Module) -> torch.Tensor | None:
    """``layer.bias``, typed: a tensor, or ``None`` for a layer built with ``bias=False``.
    Raises a TypeError when it is anything else."""
    bias: object = layer.bias  # nn.Module types it Tensor | Module, but an unset bias reads None
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"{type(layer).__name__}.bias must be a tensor or None, got {type(bias).__name__}")
    return bias


def check_last_dim(x: torch.Tensor, expected: int, layer: str) -> None:
    """Raise a ValueError when ``x.shape[-1] != expected`` (or ``x`` is 0-d)."""
    if x.dim() == 0 or x.shape[-1] != expected:
        raise ValueError(f"{layer} expects input of shape (..., {expected}), got {tuple(x.shape)}")


def check_module(value: object, name: str) -> nn.Module:
    """Return ``value`` if it is an ``nn.Module``, else raise a TypeError naming ``name``."""
    if not isinstance(value, nn.Module):
        raise TypeError(f"{name} must be an nn.Module, got {type(value).__name__}")
    return value


def check_bool(value: object, name: str) -> bool:
    """Return ``value`` if it is a real ``bool`` (a string such as ``"no"`` or an int is refused)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} of type {type(value).__name__}")
    return value


def check_nonnegative_float(value: object, name: str) -> float:
    """Return ``value`` as a float if it is a finite real number >= 0, else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number >= 0, got {value!r} of type {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


def check_float_dtype(dtype: object, name: str = "dtype") -> torch.dtype | None:
    """Return ``dtype`` if it is ``None`` or a floating-point ``torch.dtype``, else raise."""
    if dtype is None:
        return None
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"{name} must be a floating-point torch.dtype or None, got {dtype!r}")
    return dtype


def check_blocksize(blocksize: object, name: str = "blocksize") -> int:
    """A 4-bit quantisation block size: an even int > 0 (NF4 packs two codes per byte)."""
    blocksize = check_positive_int(blocksize, name)
    if blocksize % 2:
        raise ValueError(f"{name} must be even so that two 4-bit codes fill each byte, got {blocksize}")
    return blocksize


def check_weight(w: object, what: str) -> torch.Tensor:
    """A non-empty floating-point tensor to quantise, or a clear error (the quantiser itself
    catches NaN and inf)."""
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(w).__name__}")
    if not w.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor to quantise, got dtype {w.dtype}")
    if w.numel() == 0:
        raise ValueError(f"{what} is empty (shape {tuple(w.shape)}): nothing to quantise")
    return w
