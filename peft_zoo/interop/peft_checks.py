"""Checks on a PEFT ``adapter_config.json`` before anything is translated or loaded.

:func:`read_json_object` reads the file with bounds (size, nesting, encoding, duplicate
keys); :func:`field_problems` checks the type and range of every field PEFT may write, by
name, so ``"use_rslora": "no"`` or ``"lora_alpha": "8"`` is refused instead of being read
as ``True`` / ``8.0``. :mod:`peft_zoo.interop.peft_config` sorts the fields by what they do.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..core.checks import (
    check_bool,
    check_int_in,
    check_names,
    check_optional_bool,
    check_positive_float,
    check_probability,
    short_repr,
)
from ..injection.config_base import MAX_RANK, check_pattern_map
from ..injection.targets import check_layers, check_layers_pattern, check_spec

__all__ = [
    "FIELD_CHECKS",
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_DEPTH",
    "TASK_TYPES",
    "field_problems",
    "read_json_object",
]

TASK_TYPES = ("SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION")

# The type (and range) of every field peft_zoo reads or ignores: a string where a bool belongs
# ("use_rslora": "no") or a string where a number belongs ("lora_alpha": "8") is refused by
# name, never coerced. Each check raises TypeError / ValueError naming the field.
Check = Callable[[object, str], object]


def _optional(check: Check) -> Check:
    return lambda value, name: None if value is None else check(value, name)


def _of_type(kind: type | tuple[type, ...], label: str) -> Check:
    def check(value: object, name: str) -> None:
        if not isinstance(value, kind):
            raise TypeError(f"{name} must be {label}, got {short_repr(value)} of type {type(value).__name__}")

    return check


def _one_of(choices: tuple[str, ...]) -> Check:
    def check(value: object, name: str) -> None:
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {short_repr(value)}")

    return check


FIELD_CHECKS: dict[str, Check] = {
    "task_type": _optional(_one_of(TASK_TYPES)),
    "peft_version": _optional(_of_type(str, "a str")),
    "base_model_name_or_path": _optional(_of_type(str, "a str")),
    "revision": _optional(_of_type(str, "a str")),
    "auto_mapping": _optional(_of_type(dict, "an object")),
    "inference_mode": check_bool,
    "target_modules": _optional(check_spec),  # missing: reported below
    "exclude_modules": _optional(check_spec),
    "feedforward_modules": _optional(check_spec),
    "modules_to_save": _optional(check_names),
    "fan_in_fan_out": check_optional_bool,
    "r": lambda v, n: check_int_in(v, n, 1, MAX_RANK),
    "lora_alpha": check_positive_float,
    "lora_dropout": check_probability,
    "use_rslora": check_bool,
    "use_dora": check_optional_bool,
    # each method checks its own
    "bias": _one_of(("none", "all", "lora_only", "vera_only", "oft_only", "boft_only")),
    "layers_to_transform": check_layers,
    "layers_pattern": check_layers_pattern,
    "rank_pattern": _optional(
        lambda v, n: check_pattern_map(v, n, lambda x, k: check_int_in(x, k, 1, MAX_RANK))
    ),
    "alpha_pattern": _optional(lambda v, n: check_pattern_map(v, n, check_positive_float)),
    "init_lora_weights": _of_type((bool, str), "true, false or the name of an initialisation"),
    "init_ia3_weights": check_bool,
    "megatron_core": _optional(_of_type(str, "a str")),
    "qalora_group_size": _optional(lambda v, n: check_int_in(v, n, 1, MAX_RANK)),
    **{k: _optional(_of_type(dict, "an object")) for k in ("loftq_config", "eva_config", "corda_config")},
    **{k: _optional(_of_type(dict, "an object")) for k in ("lora_ga_config", "runtime_config")},
}


# Where a method gives a field another meaning: OFT's r = 0 means "from oft_block_size"; AdaLoRA's
# rank_pattern holds masks (module -> kept triplets), checked by its loader (.peft_method_load).
_BY_TYPE: dict[str, dict[str, Check]] = {
    "OFT": {"r": lambda v, n: check_int_in(v, n, 0, MAX_RANK)},
    "ADALORA": {"rank_pattern": lambda v, n: None},
}


def field_problems(data: Mapping[str, Any]) -> list[str]:
    """One message per field of ``data`` whose type or range is wrong, each naming the field
    (empty: every known field is well-typed; unknown fields are judged by the caller)."""
    problems = []
    checks = {**FIELD_CHECKS, **_BY_TYPE.get(str(data.get("peft_type")), {})}
    for name, check in checks.items():
        if name in data:
            try:
                check(data[name], name)
            except (TypeError, ValueError) as err:
                problems.append(str(err))
    return problems


MAX_CONFIG_BYTES = 16 << 20  # a PEFT config is a few kilobytes; a rank_pattern per module stays far below
MAX_CONFIG_DEPTH = 32  # nesting of objects and arrays; PEFT's configs nest 3 deep


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _too_deep(value: object, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


def read_json_object(file: str | Path, error: type[Exception] = ValueError) -> dict[str, Any]:
    """The JSON object in ``file`` (an ``adapter_config.json``), read with bounds: at most
    :data:`MAX_CONFIG_BYTES` bytes, UTF-8, nesting at most :data:`MAX_CONFIG_DEPTH`, no
    duplicate keys (which would make a field mean two things). Raises ``error`` naming the
    file; the fields themselves are checked by :func:`field_problems`."""
    file = Path(file)
    try:
        with open(file, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise error(f"{file}: cannot be read ({err.strerror or err})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise error(f"{file}: too large (over {MAX_CONFIG_BYTES} bytes) to be a PEFT config")
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError as err:
        raise error(f"{file}: not UTF-8 text ({err})") from None
    except RecursionError:
        raise error(f"{file}: JSON nested too deeply to be a PEFT config") from None
    except _DuplicateKey as err:
        raise error(
            f"{file}: the key {str(err)!r} appears twice (JSON would keep the last one silently)"
        ) from None
    except json.JSONDecodeError as err:
        raise error(f"{file}: invalid JSON ({err})") from None
    if not isinstance(data, dict):
        raise error(f"{file}: expected a JSON object, got a JSON {type(data).__name__}")
    if _too_deep(data, MAX_CONFIG_DEPTH):
        raise error(f"{file}: JSON nested more than {MAX_CONFIG_DEPTH} deep; not a PEFT config")
    return data
