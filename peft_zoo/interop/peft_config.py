"""Translate between Hugging Face PEFT's ``adapter_config.json`` and peft_zoo's configs.

:func:`lora_config_from_peft` / :func:`ia3_config_from_peft` read a PEFT config (a dict or a
``peft`` config object) into a :class:`~peft_zoo.LoraConfig` / :class:`~peft_zoo.IA3Config`;
:func:`peft_dict_from_config` goes the other way. Every field PEFT may write is sorted into
an explicit list: translated, ignored (bookkeeping, or used only to initialise fresh
weights), or accepted only when off (a bias on B, layer replication, ...). Anything else is refused by
name, so an unknown option never silently loads a different model. The tensors and the
directory layout are read by :mod:`peft_zoo.interop.peft_read` and written by
:mod:`peft_zoo.interop.peft_write`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from ..core.checks import check_names, is_conv1d
from ..injection.config import IA3Config, LoraConfig
from ..injection.targets import TargetSpec
from .checkpoint import CheckpointError
from .peft_checks import TASK_TYPES, field_problems, read_json_object

__all__ = [
    "COMMON_FIELDS",
    "LORA_IGNORED",
    "LORA_MUST_BE_OFF",
    "PeftFormatError",
    "common_fields",
    "config_from_peft",
    "ia3_config_from_peft",
    "is_off",
    "json_number",
    "lora_config_from_peft",
    "peft_dict_from_config",
    "read_config_file",
    "saves_list",
    "target_spec",
]


class PeftConfigObject(Protocol):
    """A ``peft.LoraConfig`` / ``peft.IA3Config`` object: what ``to_dict()`` gives is what
    ``save_pretrained`` writes to ``adapter_config.json``."""

    def to_dict(self) -> dict[str, Any]: ...


# A PEFT config as the translators accept it: the contents of an adapter_config.json, or the object.
PeftConfigData = Mapping[str, Any] | PeftConfigObject


class PeftFormatError(CheckpointError):
    """A PEFT adapter that cannot be read, does not fit the model, or uses a feature peft_zoo
    does not implement; or a model whose adapters PEFT's format cannot express. Nothing changed."""


# ----------------------------------------------------------------------------- config fields
#
# Every field of a PEFT adapter_config.json that peft_zoo knows, by what it does with it. A
# field in none of these lists is refused: an unknown option may change the function, and
# guessing would load a different model without a word.

# Bookkeeping, no effect on the function.
_IGNORED_COMMON = frozenset(
    {"task_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision", "inference_mode"}
)
COMMON_FIELDS = _IGNORED_COMMON | {"peft_type"}
_TARGETING = frozenset({"target_modules", "exclude_modules", "modules_to_save", "fan_in_fan_out"})
_LORA_TRANSLATED = _TARGETING | {
    "r",
    "lora_alpha",
    "lora_dropout",
    "use_rslora",
    "bias",
    "layers_to_transform",
    "layers_pattern",
    "rank_pattern",
    "alpha_pattern",
    "use_dora",
}
# Only used while *initialising* fresh adapter weights (or at run time); a load replaces the weights.
LORA_IGNORED = frozenset(
    {
        "init_lora_weights",  # checked below: some initialisations rewrite the base weights
        "loftq_config",
        "eva_config",
        "corda_config",
        "lora_ga_config",
        "megatron_core",
        "qalora_group_size",
        "runtime_config",
    }
)
# Features that change the function or the layer types; accepted only when off (None/False/empty).
LORA_MUST_BE_OFF = {
    "lora_bias": "a bias on lora_B is not implemented in peft_zoo",
    "target_parameters": "LoRA on raw nn.Parameters (target_parameters) is not implemented in peft_zoo",
    "layer_replication": "layer replication changes the model's layer stack; not implemented in peft_zoo",
    "megatron_config": "Megatron parallel layers are not supported",
    "trainable_token_indices": "trainable token indices (a partial embedding update) are not implemented",
    "velora_config": "VeLoRA is not implemented in peft_zoo",
    "alora_invocation_tokens": "activated LoRA (aLoRA) changes when the adapter applies; not implemented",
    "use_qalora": "QA-LoRA (quantization-aware pooling of the input) is not implemented",
    "monteclora_config": "MonteCLoRA is not implemented in peft_zoo",
    "use_bdlora": "block-diagonal LoRA (BD-LoRA) is not implemented in peft_zoo",
    "arrow_config": "Arrow routing between adapters is not implemented in peft_zoo",
    "kasa_config": "KaSA is not implemented in peft_zoo",
    "ensure_weight_tying": "adapters tied across tied weights are not implemented in peft_zoo",
}
_IA3_TRANSLATED = _TARGETING | {"feedforward_modules"}
_IA3_IGNORED = frozenset({"init_ia3_weights"})
_IA3_MUST_BE_OFF: dict[str, str] = {}

# init_lora_weights values whose adapters fit the *unchanged* base model (the initialisation is
# replaced by the loaded weights). PiSSA and OLoRA rewrite the base weights when the adapter is
# created, and PEFT's from_pretrained does that again on the base it is given (the decomposition
# of the ORIGINAL weights gives the residual the adapter was trained on): LoraConfig does the
# same. CorDA, LoftQ and LoRA-GA need data or quantisation peft_zoo does not have: refused
# (PEFT converts any of them to plain LoRA: save_pretrained(path_initial_model_for_weight_conversion=...)).
_PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal")
_REDONE_INITS = re.compile(r"pissa|pissa_niter_\d{1,6}|olora")


def read_config_file(file: str | Path) -> dict[str, Any]:
    """The JSON object in ``adapter_config.json`` ``file``, read with bounds (size, nesting,
    UTF-8, no duplicate keys); raises :class:`PeftFormatError` naming the file."""
    return read_json_object(file, PeftFormatError)


def is_off(value: object) -> bool:
    return value is None or value is False or (isinstance(value, (list, tuple, dict, str)) and not value)


def _check_peft_dict(data: object) -> list[str]:
    """Every reason peft_zoo cannot reproduce this PEFT config exactly (empty list: fine)."""
    if not isinstance(data, Mapping):
        return [f"the config must be a JSON object, got {type(data).__name__}"]
    peft_type = data.get("peft_type")
    if peft_type not in ("LORA", "IA3"):
        return [
            f"peft_type={peft_type!r}: peft_zoo reads PEFT's 'LORA', 'IA3', 'LOHA', 'LOKR', 'VERA', 'OFT', "
            "'BOFT', 'ADALORA', 'PROMPT_TUNING', 'P_TUNING' and 'PREFIX_TUNING' adapters only (this translation: "
            "LORA and IA3; the layer methods: peft_zoo.interop.peft_methods.method_config_from_peft)"
        ]
    if peft_type == "LORA":
        known, off = COMMON_FIELDS | _LORA_TRANSLATED | LORA_IGNORED, LORA_MUST_BE_OFF
    else:
        known, off = COMMON_FIELDS | _IA3_TRANSLATED | _IA3_IGNORED, _IA3_MUST_BE_OFF
    problems = field_problems(data)  # every field's type and range, by name
    unknown = sorted(set(data) - known - set(off))
    if unknown:
        problems.append(
            f"unknown config fields {unknown}: peft_zoo does not know what they do, so it refuses "
            "rather than load a different function (the fields it knows are listed in peft_zoo/interop/peft_config.py)"
        )
    for name, why in off.items():
        if name in data and not is_off(data[name]):
            problems.append(f"{name}={data[name]!r}: {why}")
    init = data.get("init_lora_weights", True)
    redone = isinstance(init, str) and _REDONE_INITS.fullmatch(init)
    if peft_type == "LORA" and isinstance(init, (bool, str)) and init not in _PLAIN_INITS and not redone:
        problems.append(
            f"init_lora_weights={init!r} is not supported: it rewrites the base weights from data or "
            "a quantisation peft_zoo does not have (convert it to plain LoRA when saving: "
            "save_pretrained(..., path_initial_model_for_weight_conversion=...)); supported: "
            f"{_PLAIN_INITS} and 'pissa', 'pissa_niter_K', 'olora'"
        )
    if data.get("target_modules") is None:
        problems.append(
            "target_modules is missing: PEFT fills it in from the model type when it saves; this "
            "config never went through PEFT, so write the module names into it"
        )
    return problems


def target_spec(value: object, what: str) -> TargetSpec | None:
    """A PEFT target spec (a list, a set saved as a list, or a regex string) as peft_zoo's."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, set)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise PeftFormatError(f"{what} must be a list of module names or a regex string, got {value!r}")


def _plain(data: object) -> object:
    """A PEFT config object (``peft.LoraConfig`` / ``IA3Config``) as its dict; anything else as is."""
    if hasattr(data, "to_dict") and not isinstance(data, Mapping):
        return data.to_dict()
    return data


def _checked(data: object, peft_type: str) -> dict[str, Any]:
    """``data`` (a mapping, or a PEFT config object) as a dict, or raise listing every problem."""
    data = _plain(data)
    problems = _check_peft_dict(data)
    if not problems and isinstance(data, Mapping) and data["peft_type"] != peft_type:
        problems = [f"peft_type={data['peft_type']!r}, expected {peft_type!r} (use config_from_peft)"]
    if problems or not isinstance(data, Mapping):
        raise PeftFormatError("invalid or unsupported PEFT config:\n  - " + "\n  - ".join(problems))
    return dict(data)


def saves_list(value: object) -> list[str] | None:
    """PEFT's modules_to_save: a list of names. A bare string is refused (by the field checks):
    PEFT would read it one character at a time, and guessing one name would differ from PEFT."""
    return list(check_names(value, "modules_to_save")) if value else None


def _init_of(init: object) -> bool | str:
    """The ``init_lora_weights`` a loaded adapter needs: PiSSA / OLoRA (they rewrite the base,
    so loading redoes it, as PEFT does); any other one is replaced by the loaded weights."""
    return init if isinstance(init, str) and _REDONE_INITS.fullmatch(init) else True


def lora_config_from_peft(data: PeftConfigData) -> LoraConfig:
    """A :class:`~peft_zoo.LoraConfig` selecting the same modules with the same ranks and scales
    as the PEFT LoRA config ``data`` (the contents of an ``adapter_config.json``, or
    a ``peft.LoraConfig`` itself).

    Missing fields take PEFT's defaults (``r=8``, ``lora_alpha=8``...). ``alpha`` is always
    explicit, because PEFT's ``lora_alpha`` does not follow a pattern's rank.
    ``fan_in_fan_out`` becomes ``None`` (inferred per layer): PEFT corrects it per layer type
    too. ``use_dora`` carries over (DoRA layers, :class:`~peft_zoo.dora.DoRALinear`).
    Raises :class:`PeftFormatError` listing every field peft_zoo cannot honour.
    """
    data = _checked(data, "LORA")
    try:
        return LoraConfig(
            target_modules=target_spec(data.get("target_modules"), "target_modules"),
            exclude_modules=target_spec(data.get("exclude_modules"), "exclude_modules"),
            layers_to_transform=data.get("layers_to_transform"),
            layers_pattern=data.get("layers_pattern"),
            modules_to_save=saves_list(data.get("modules_to_save")),
            fan_in_fan_out=None,
            rank=data.get("r", 8),
            alpha=float(data.get("lora_alpha", 8)),  # a number: checked above
            dropout=float(data.get("lora_dropout", 0.0)),
            rslora=data.get("use_rslora", False),  # a real bool: checked above, never coerced
            bias=data.get("bias", "none"),
            rank_pattern=dict(data.get("rank_pattern") or {}),
            alpha_pattern={k: float(v) for k, v in (data.get("alpha_pattern") or {}).items()},
            use_dora=False if data.get("use_dora") is None else data["use_dora"],
            init_lora_weights=_init_of(data.get("init_lora_weights", True)),
        )
    except (TypeError, ValueError) as err:
        raise PeftFormatError(f"invalid PEFT LoRA config: {err}") from err


def ia3_config_from_peft(data: PeftConfigData) -> IA3Config:
    """An :class:`~peft_zoo.IA3Config` equivalent to the PEFT IA³ config ``data``.

    Note PEFT's rule for a *list* of ``feedforward_modules``: a plain string suffix
    (``"proj"`` would match ``"c_proj"``); peft_zoo's is a dotted suffix. :func:`load_peft`
    applies PEFT's rule; for configs you translate yourself, write whole name components.
    """
    data = _checked(data, "IA3")
    try:
        return IA3Config(
            target_modules=target_spec(data.get("target_modules"), "target_modules"),
            exclude_modules=target_spec(data.get("exclude_modules"), "exclude_modules"),
            feedforward_modules=target_spec(data.get("feedforward_modules"), "feedforward_modules"),
            modules_to_save=saves_list(data.get("modules_to_save")),
            fan_in_fan_out=None,
        )
    except (TypeError, ValueError) as err:
        raise PeftFormatError(f"invalid PEFT IA3 config: {err}") from err


def config_from_peft(data: PeftConfigData) -> LoraConfig | IA3Config:
    """:func:`lora_config_from_peft` or :func:`ia3_config_from_peft`, by ``data["peft_type"]``."""
    plain = _plain(data)
    if isinstance(plain, Mapping) and plain.get("peft_type") == "IA3":
        return ia3_config_from_peft(plain)
    return lora_config_from_peft(data)


def _json_spec(spec: TargetSpec | None) -> str | list[str] | None:
    return spec if spec is None or isinstance(spec, str) else list(spec)


def json_number(x: float) -> int | float:
    """``8.0 -> 8`` (PEFT types ``lora_alpha`` as int); other values unchanged."""
    return int(x) if float(x).is_integer() else float(x)


def common_fields(
    peft_type: str, task_type: str | None, base_model_name_or_path: str | None
) -> dict[str, Any]:
    """The fields every ``adapter_config.json`` starts with; raises :class:`PeftFormatError`
    for a ``task_type`` PEFT does not know."""
    if task_type is not None and task_type not in TASK_TYPES:
        raise PeftFormatError(f"task_type={task_type!r}; PEFT knows {TASK_TYPES} (or None)")
    return {
        "peft_type": peft_type,
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "inference_mode": False,
    }


def _lora_fields(config: LoraConfig) -> dict[str, Any]:
    """The LoRA-specific fields of the PEFT config equivalent to ``config``."""
    if getattr(config, "target_parts", None):
        raise PeftFormatError(
            f"target_parts={config.target_parts!r}: LoRA on part of a fused projection has no PEFT "
            "equivalent (PEFT adapts a layer's whole output)"
        )
    alpha_pattern: dict[str, float] = dict(config.alpha_pattern)
    if config.alpha is None:
        for key, rank in config.rank_pattern.items():
            alpha_pattern.setdefault(key, float(rank))
    return {
        "r": config.rank,
        "lora_alpha": json_number(config.rank if config.alpha is None else config.alpha),
        "lora_dropout": config.dropout,
        "use_rslora": config.rslora,
        "bias": config.bias,
        "rank_pattern": dict(config.rank_pattern),
        "alpha_pattern": {k: json_number(v) for k, v in alpha_pattern.items()},
        "layers_to_transform": config.layers_to_transform,
        "layers_pattern": config.layers_pattern,
        "init_lora_weights": config.init_lora_weights,
        "use_dora": config.use_dora,
        "lora_bias": False,
    }


def _ia3_fields(config: IA3Config) -> dict[str, Any]:
    """The IA3-specific fields of the PEFT config equivalent to ``config``."""
    if config.layers_to_transform is not None:
        raise PeftFormatError(
            "PEFT's IA3Config has no layers_to_transform: write the layer numbers into a regex "
            "target_modules instead"
        )
    ff = config.feedforward_modules
    if isinstance(ff, (list, tuple)) and not isinstance(config.target_modules, str):
        extra = sorted(set(ff) - set(config.target_modules or ()))
        if extra:
            raise PeftFormatError(
                f"PEFT needs feedforward_modules to be a subset of target_modules; not targeted: {extra}"
            )
    # None would mean "PEFT's defaults for this model type" to PEFT; peft_zoo's None means none.
    return {"feedforward_modules": _json_spec(ff) if ff else [], "init_ia3_weights": True}


def peft_dict_from_config(
    config: LoraConfig | IA3Config,
    *,
    model: nn.Module | None = None,
    task_type: str | None = None,
    base_model_name_or_path: str | None = None,
) -> dict[str, Any]:
    """The PEFT config equivalent to a peft_zoo config, as a dict: ``peft.LoraConfig(**d)`` /
    ``peft.IA3Config(**d)``, or the body of an ``adapter_config.json``.

    ``alpha=None`` (peft_zoo: alpha = that module's rank) becomes ``lora_alpha = rank`` plus an
    ``alpha_pattern`` entry for each ``rank_pattern`` key, because PEFT's alpha does not
    follow a pattern's rank. ``model`` (unadapted), when given, decides ``fan_in_fan_out``
    (True when the targets are GPT-2 ``Conv1D`` layers), which spares PEFT's warning.
    """
    if isinstance(config, LoraConfig):
        config.validate()  # a field set after construction must not reach a file unchecked
        fields = _lora_fields(config)
        out = common_fields("LORA", task_type, base_model_name_or_path)
    elif isinstance(config, IA3Config):
        config.validate()
        fields = _ia3_fields(config)
        out = common_fields("IA3", task_type, base_model_name_or_path)
    else:
        raise TypeError(f"config must be a LoraConfig or IA3Config, got {type(config).__name__}")
    out.update(fields)
    fan_in_fan_out = config.fan_in_fan_out
    if fan_in_fan_out is None and model is not None:
        fan_in_fan_out = any(is_conv1d(model.get_submodule(n)) for n in config.find(model))
    out.update(
        target_modules=_json_spec(config.target_modules),
        exclude_modules=_json_spec(config.exclude_modules),
        modules_to_save=list(config.modules_to_save) if config.modules_to_save else None,
        fan_in_fan_out=bool(fan_in_fan_out),
    )
    return out
