"""PEFT's format for the layer methods beyond LoRA and IA³: LoHa, LoKr, VeRA, OFT, BOFT, AdaLoRA.

Every one of them is a layer per adapted module whose trainable tensors PEFT saves under the
module's name and the tensor's (``base_model.model.<module>.<tensor>``), so one table,
:data:`METHODS`, says all there is per method: the ``peft_type``, peft_zoo's config class
(its fields carry PEFT's names), the adapter layer class, where a tensor's key differs from
the layer attribute, which PEFT fields do nothing to a loaded adapter or must be off, and how
the layers' settings become the config's fields::

    LOHA     <module>.hada_w1_a (out, r)  .hada_w1_b (r, in)  .hada_w2_a (out, r)  .hada_w2_b (r, in)
    LOKR     <module>.lokr_w1 (a, c) or .lokr_w1_a / .lokr_w1_b;  .lokr_w2 (b, d) or .lokr_w2_a / .lokr_w2_b
    VERA     <module>.vera_lambda_b (out,)  .vera_lambda_d (r,);   once: base_model.vera_A (r, in_max),
             base_model.vera_B (out_max, r)   (with save_projection; else drawn from projection_prng_key)
    OFT      <module>.oft_R.weight (r, b (b - 1) / 2)   ((1, ...) with block_share)
    BOFT     <module>.boft_R (1, D, b, b)  .boft_s (out, 1)   (boft_n_butterfly_factor 1 only, below)
    ADALORA  <module>.lora_A (r, in)  .lora_E (r, 1)  .lora_B (out, r); rank_pattern: module -> kept mask

:func:`method_config_from_peft` reads a config of one of these types (every field sorted:
translated, ignored, or accepted only when off; anything else refused by name);
:func:`method_part` writes one (:func:`~peft_zoo.save_peft`). Loading the tensors is
:mod:`.peft_method_load`.

BOFT with ``boft_n_butterfly_factor`` m > 1: PEFT without its CUDA extension (any CPU) silently
builds ONE factor, ``boft_R (1, D, b, b)``, whatever its config says (and writes the config's m).
So a save of m > 1 layers is refused (PEFT on a CPU would refuse the ``(m, D, b, b)`` tensors or
compute another function), and :func:`boft_effective` turns a file's m > 1 with ``(1, D, b, b)``
tensors into m = 1, what PEFT computes from it; ``(m, D, b, b)`` tensors (PEFT's CUDA kernel)
are refused, since PEFT's kernel path cannot be checked here.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from ..adalora import AdaLoRALinear
from ..boft import BOFTLinear
from ..core.base import AdapterModule
from ..injection.adalora_config import AdaLoraConfig
from ..injection.boft_config import BOFTConfig
from ..injection.config_base import TargetingConfig
from ..injection.lycoris_config import LoHaConfig, LoKrConfig
from ..injection.oft_config import OFTConfig
from ..injection.vera_config import VeraConfig
from ..loha import LoHaLinear
from ..lokr import LoKrLinear
from ..oft import OFTLinear
from ..vera import VeRALinear
from .peft_config import (
    COMMON_FIELDS,
    LORA_IGNORED,
    LORA_MUST_BE_OFF,
    PeftFormatError,
    is_off,
    json_number,
    saves_list,
    target_spec,
)
from .peft_keys import exact_pattern

__all__ = [
    "METHODS",
    "Method",
    "boft_effective",
    "method_config_from_peft",
    "method_layer_types",
    "method_part",
    "tensor_key",
]

Fields = dict[str, Any]


@dataclass(frozen=True)
class Method:
    """What PEFT's format of one layer method needs besides the layers themselves."""

    peft_type: str
    config_class: type[TargetingConfig]
    layer_type: type[AdapterModule]
    fields_of: Callable[[Mapping[str, Any]], Fields]  # the layers (name -> layer) -> config fields
    renamed: Mapping[str, str] = field(default_factory=dict)  # layer attribute -> key suffix
    ignored: frozenset[str] = frozenset()  # PEFT fields that do nothing to a loaded adapter
    off: Mapping[str, str] = field(default_factory=dict)  # PEFT fields accepted only when off
    absent: frozenset[str] = frozenset()  # targeting fields PEFT's config of this type lacks
    read_apart: frozenset[str] = frozenset()  # PEFT fields read by the loader itself


def tensor_key(method: Method, name: str, attr: str) -> str:
    """The file key (without PEFT's prefix) of layer ``name``'s tensor ``attr``."""
    return f"{name}.{method.renamed.get(attr, attr)}"


def _one(layers: Mapping[str, Any], attr: str, what: str | None = None) -> Any:
    """The value of ``attr`` all ``layers`` share; PEFT keeps one per adapter, so several are refused."""
    values = {getattr(m, attr) for m in layers.values()}
    if len(values) > 1:
        raise PeftFormatError(
            f"save_peft: the layers differ in {what or attr} ({sorted(values, key=repr)}); a PEFT "
            "adapter has one value for all its layers: save them as separate adapters"
        )
    return values.pop()


def _largest(layers: Mapping[str, Any], attr: str) -> float:
    """A training-only setting (a dropout): the largest, with a warning when they differ."""
    values = sorted({float(getattr(m, attr)) for m in layers.values()})
    if len(values) > 1:
        warnings.warn(
            f"save_peft: the layers use different {attr} {values}; PEFT keeps one, {values[-1]} "
            "(it only matters while training)",
            stacklevel=4,
        )
    return values[-1]


def _patterned(layers: Mapping[str, Any], attr: str, key: str) -> tuple[Fields, Fields]:
    """``{key: most common value}`` and the exact-name pattern of every other layer's."""
    values = {n: getattr(m, attr) for n, m in layers.items()}
    common = Counter(values.values()).most_common(1)[0][0]
    pattern = {exact_pattern(n): json_number(v) for n, v in values.items() if v != common}
    return {key: json_number(common)}, pattern


def _lycoris_fields(layers: Mapping[str, Any]) -> Fields:
    r, rank_pattern = _patterned(layers, "rank", "r")
    alpha, alpha_pattern = _patterned(layers, "alpha", "alpha")
    return {
        **r,
        **alpha,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "rank_dropout": _largest(layers, "rank_dropout"),
        "module_dropout": _largest(layers, "module_dropout"),
        "init_weights": True,
        "use_effective_conv2d": False,
    }


def _lokr_fields(layers: Mapping[str, Any]) -> Fields:
    return {
        **_lycoris_fields(layers),
        "decompose_both": _one(layers, "decompose_both"),
        "decompose_factor": _one(layers, "decompose_factor"),
        "rank_dropout_scale": _one(layers, "rank_dropout_scale"),
    }


def _vera_fields(layers: Mapping[str, Any]) -> Fields:
    shared = {id(m.projections) for m in layers.values()}
    if len(shared) > 1:
        raise PeftFormatError(
            f"save_peft: the VeRA layers use {len(shared)} different projection pairs; PEFT shares one "
            "pair among all layers of an adapter"
        )
    projections = next(iter(layers.values())).projections
    return {
        "r": projections.rank,
        "projection_prng_key": projections.seed,
        "save_projection": True,
        "vera_dropout": _largest(layers, "dropout_p"),
        "d_initial": float(_one(layers, "d_initial")),
        "init_weights": True,
    }


def _oft_fields(layers: Mapping[str, Any]) -> Fields:
    return {
        "r": 0,  # derived per layer from oft_block_size, as PEFT does
        "oft_block_size": _one(layers, "oft_block_size", "oft_block_size (the block size)"),
        "coft": _one(layers, "coft"),
        "eps": _one(layers, "eps"),
        "block_share": _one(layers, "block_share"),
        "use_cayley_neumann": _one(layers, "use_cayley_neumann"),
        "num_cayley_neumann_terms": _one(layers, "num_cayley_neumann_terms"),
        "module_dropout": 0.0,
        "init_weights": True,
        "peft_version": "0.21.2",  # the Cayley-Neumann form of PEFT >= 0.18, which OFTLinear computes
    }


def _boft_fields(layers: Mapping[str, Any]) -> Fields:
    factor = _one(layers, "boft_n_butterfly_factor")
    if factor != 1:
        raise PeftFormatError(
            f"save_peft: boft_n_butterfly_factor={factor}: PEFT without its CUDA extension (any CPU) "
            "silently builds one butterfly factor, boft_R (1, D, b, b), so it would refuse these tensors "
            "or compute another function; only boft_n_butterfly_factor=1 is written"
        )
    sizes = {m.boft_block_size for m in layers.values()}
    blocks = {"boft_block_size": sizes.pop(), "boft_block_num": 0} if len(sizes) == 1 else {}
    if not blocks:  # PEFT derives the size per layer from one block number
        blocks = {
            "boft_block_size": 0,
            "boft_block_num": _one(layers, "boft_block_num", "block size and number"),
        }
    return {
        **blocks,
        "boft_n_butterfly_factor": 1,
        "boft_dropout": _largest(layers, "boft_dropout"),
        "init_weights": True,
    }


def _adalora_fields(layers: Mapping[str, Any]) -> Fields:
    init_r = _one(layers, "rank", "rank (init_r)")
    # The schedule the config recorded on its layers; layers built by hand have none: then
    # nothing is left to prune (target_r = init_r) and PEFT's defaults, with some total_step > 0.
    recorded = _one(layers, "schedule")
    schedule = dict(recorded) if recorded is not None else {}
    return {
        "init_r": init_r,
        "target_r": schedule.get("target_r", init_r),
        "lora_alpha": json_number(_one(layers, "alpha", "alpha (lora_alpha)")),
        "lora_dropout": _largest(layers, "dropout_p"),
        "total_step": schedule.get("total_step", 1),
        "tinit": schedule.get("tinit", 0),
        "tfinal": schedule.get("tfinal", 0),
        "deltaT": schedule.get("deltaT", 1),
        "beta1": schedule.get("beta1", 0.85),
        "beta2": schedule.get("beta2", 0.85),
        "orth_reg_weight": schedule.get("orth_reg_weight", 0.5),
        "rank_pattern": None,  # every triplet saved at its place: a pruned one has lora_E = 0
        "init_lora_weights": True,
        "use_dora": False,
        "lora_bias": False,
    }


_LYCORIS_IGNORED = frozenset({"use_effective_conv2d"})  # for convolutions, which are not adapted here

METHODS: dict[str, Method] = {
    m.peft_type: m
    for m in (
        Method(
            "LOHA",
            LoHaConfig,
            LoHaLinear,
            _lycoris_fields,
            ignored=_LYCORIS_IGNORED,
            absent=frozenset({"fan_in_fan_out"}),
        ),
        Method(
            "LOKR",
            LoKrConfig,
            LoKrLinear,
            _lokr_fields,
            ignored=_LYCORIS_IGNORED,
            absent=frozenset({"fan_in_fan_out"}),
        ),
        Method("VERA", VeraConfig, VeRALinear, _vera_fields, absent=frozenset({"exclude_modules"})),
        Method("OFT", OFTConfig, OFTLinear, _oft_fields, renamed={"oft_R": "oft_R.weight"}),
        Method("BOFT", BOFTConfig, BOFTLinear, _boft_fields),
        Method(
            "ADALORA",
            AdaLoraConfig,
            AdaLoRALinear,
            _adalora_fields,
            # AdaLoRA's own layers read init_r and lora_alpha only; these LoRA fields do nothing
            ignored=LORA_IGNORED | {"r", "use_rslora", "alpha_pattern"},
            off={k: v for k, v in LORA_MUST_BE_OFF.items()} | {"use_dora": "AdaLoRA has no DoRA"},
            read_apart=frozenset({"rank_pattern"}),
        ),
    )
}


def method_layer_types() -> dict[type[AdapterModule], Method]:
    """Adapter layer class -> its method (exact classes: a subclass may compute something else)."""
    return {m.layer_type: m for m in METHODS.values()}


def _field_problems(method: Method, data: Mapping[str, Any], ours: set[str]) -> list[str]:
    problems = []
    known = ours | COMMON_FIELDS | method.ignored | set(method.off) | method.read_apart
    unknown = sorted(set(data) - known)
    if unknown:
        problems.append(
            f"unknown config fields {unknown} for peft_type {method.peft_type!r}: peft_zoo does not know "
            "what they do, so it refuses rather than load a different function"
        )
    problems += [
        f"{k}={data[k]!r}: {why}" for k, why in method.off.items() if k in data and not is_off(data[k])
    ]
    if data.get("target_modules") is None:
        problems.append("target_modules is missing: write the module names into the config")
    if method.peft_type == "OFT":
        problems += _oft_problems(data)
    return problems


def _oft_problems(data: Mapping[str, Any]) -> list[str]:
    """PEFT's own refusals of an OFT config from an older release (another parameterisation)."""
    if "oft_block_size" not in data:
        return [
            "an OFT config without oft_block_size is from PEFT < 0.14, whose OFT computes another function"
        ]
    version = str(data.get("peft_version") or "0.0.0").partition("@")[0]
    parts = [int(p) if p.isdigit() else 0 for p in version.split(".")[:2]]
    if data.get("use_cayley_neumann", True) is True and parts + [0] * (2 - len(parts)) < [0, 18]:
        return [
            f"use_cayley_neumann with peft_version={data.get('peft_version')!r}: PEFT changed this "
            "parameterisation in 0.18, and peft_zoo computes the new one"
        ]
    return []


def boft_effective(data: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The BOFT config dict ``data`` with the butterfly factor PEFT computes from the file's
    tensors ``state`` (``boft_R`` of shape ``(m, D, b, b)``): PEFT without its CUDA extension
    uses 1 whatever ``boft_n_butterfly_factor`` says (with a warning here); a file with m > 1
    (PEFT's CUDA kernel) is refused, naming a tensor."""
    out = dict(data)
    factor = data.get("boft_n_butterfly_factor", 1)
    if (
        data.get("peft_type") != "BOFT"
        or isinstance(factor, bool)
        or not isinstance(factor, int)
        or factor <= 1
    ):
        return out  # 1, or an invalid value, which the config's own checks refuse
    several = sorted(k for k, v in state.items() if k.endswith(".boft_R") and v.dim() == 4 and v.shape[0] > 1)
    if several:
        raise PeftFormatError(
            f"boft_n_butterfly_factor={factor} with {several[0]} of shape {tuple(state[several[0]].shape)}: "
            "written by PEFT's CUDA kernel path, which peft_zoo cannot check here; PEFT without the "
            "kernel refuses it too"
        )
    warnings.warn(
        f"boft_n_butterfly_factor={factor} with boft_R of shape (1, D, b, b): PEFT without its CUDA "
        "extension built one butterfly factor, so one is loaded (the function PEFT computes from this file)",
        stacklevel=3,
    )
    out["boft_n_butterfly_factor"] = 1
    return out


def method_config_from_peft(data: Mapping[str, Any]) -> TargetingConfig:
    """peft_zoo's config (:class:`~peft_zoo.LoHaConfig`, ``LoKrConfig``, ``VeraConfig``,
    ``OFTConfig``, ``BOFTConfig``, ``AdaLoraConfig``) for a PEFT config dict of that ``peft_type``: the fields
    carry over by name, ``fan_in_fan_out`` is inferred per layer. Raises
    :class:`PeftFormatError` listing every field peft_zoo cannot honour."""
    method = METHODS.get(str(data.get("peft_type")))
    if method is None:
        raise PeftFormatError(f"peft_type={data.get('peft_type')!r}: not one of {sorted(METHODS)}")
    ours = {f.name for f in fields(method.config_class) if f.init}
    problems = _field_problems(method, data, ours)
    if problems:
        raise PeftFormatError("invalid or unsupported PEFT config:\n  - " + "\n  - ".join(problems))
    kwargs = {k: v for k, v in data.items() if k in ours}
    kwargs.update(
        target_modules=target_spec(data.get("target_modules"), "target_modules"),
        modules_to_save=saves_list(data.get("modules_to_save")),
    )
    if "exclude_modules" in ours:
        kwargs["exclude_modules"] = target_spec(data.get("exclude_modules"), "exclude_modules")
    if "fan_in_fan_out" in ours:
        kwargs["fan_in_fan_out"] = None  # per layer, as PEFT corrects it per layer type
    try:
        return method.config_class(**kwargs)
    except (TypeError, ValueError) as err:
        raise PeftFormatError(f"invalid PEFT {method.peft_type} config: {err}") from err


def method_part(
    method: Method, layers: Mapping[str, AdapterModule], bias: str
) -> tuple[Fields, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The config fields, the per-module tensors (keys without PEFT's prefix) and the tensors
    saved once at the top (VeRA's ``base_model.vera_A`` / ``vera_B``) of ``layers``."""
    fields_ = method.fields_of(layers)
    ours = {f.name for f in fields(method.config_class)}
    if "bias" in ours:  # PEFT's name for "the adapted layers' biases" differs per method
        own = {"VERA": "vera_only", "OFT": "oft_only", "BOFT": "boft_only"}.get(method.peft_type, "lora_only")
        fields_["bias"] = own if bias == "lora_only" else bias
    elif bias != "none":
        raise PeftFormatError(
            f"save_peft: bias={bias!r}, but PEFT's {method.peft_type} format saves no biases"
        )
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        for attr in layer.adapter_param_names or ():
            tensors[tensor_key(method, name, attr)] = getattr(layer, attr)
    top: dict[str, torch.Tensor] = {}
    vera = [m for m in layers.values() if isinstance(m, VeRALinear)]
    if vera:  # the shared pair, cut to what the layers use (PEFT's _find_dim)
        projections = vera[0].projections
        d_in, d_out = max(m.in_features for m in vera), max(m.out_features for m in vera)
        top["base_model.vera_A"] = projections.vera_A[:, :d_in]  # (r, in_max)
        top["base_model.vera_B"] = projections.vera_B[:d_out, :]  # (out_max, r)
    return fields_, tensors, top
