"""Loading a PEFT adapter of a layer method (LoHa, LoKr, VeRA, OFT, BOFT, AdaLoRA; the table is
:data:`~peft_zoo.interop.peft_methods.METHODS`) without changing the model until it fits.

One path for every method: translate the config, select the modules by PEFT's rules on the
saved names (:mod:`.peft_match`), then BUILD every adapter layer with the config's own
``layer_builder`` without installing any (building leaves the base as it was; the frozen
flags it sets are put back). The built layers say which tensors the file must hold and their
shapes, so nothing method-specific is written twice. :mod:`.peft_read` compares the file with
that list, and only then adapts the model and copies.

Two methods need more. VeRA's shared pair is saved once, as ``base_model.vera_A`` /
``base_model.vera_B`` (with ``save_projection``; else it is drawn from
``projection_prng_key``, as PEFT does). AdaLoRA's ``rank_pattern`` (module -> a mask of the
``init_r`` triplets kept) makes PEFT save and load each layer shrunk to its kept triplets;
here the layer keeps ``init_r`` and the kept triplets go to their places, the pruned ones
zero: the same function (PEFT keeps the scale ``lora_alpha / (init_r + 1e-5)`` too).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..core.base import AdapterModule
from ..core.regex import time_budget
from ..injection.config_base import TargetingConfig
from ..injection.layer_adapt import LayerMethodConfig
from ..injection.surgery import InjectionError
from ..injection.targets import MATCH_BUDGET
from .peft_config import PeftFormatError
from .peft_keys import PEFT_PREFIX, exact_pattern
from .peft_match import (
    Expected,
    SavedNames,
    expected_bias,
    expected_saves,
    regex_of,
    resolve_names,
    select_modules,
)
from .peft_methods import METHODS, Method, boft_effective, method_config_from_peft, tensor_key

__all__ = ["MethodPlan", "plan_method"]

_VERA_TOP = ("base_model.vera_A", "base_model.vera_B")
_SUFFIXES = {  # the tensor names after a module's, to find the modules a file names
    "LOHA": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"),
    "LOKR": ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b"),
    "VERA": ("vera_lambda_b", "vera_lambda_d"),
    "OFT": ("oft_R.weight",),
    "BOFT": ("boft_R", "boft_s"),
    "ADALORA": ("lora_A", "lora_E", "lora_B"),
}


@dataclasses.dataclass
class MethodPlan:
    """What :func:`plan_method` worked out: the config that builds exactly the layers, the
    modules, the tensors the file must hold, and the file's tensors under their keys."""

    config: LayerMethodConfig
    targets: list[str]
    saves: list[str]
    expected: Expected
    saved: dict[str, torch.Tensor]
    names: SavedNames


def _exact_config(config: TargetingConfig, names: SavedNames, targets: list[str]) -> Any:
    """``config`` selecting exactly ``targets`` (model names), with each one's rank and alpha
    as PEFT gives it, from the patterns matched on the SAVED names."""
    changes: dict[str, Any] = {
        "target_modules": regex_of(targets),
        "exclude_modules": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "modules_to_save": None,
    }
    rank_alpha = getattr(config, "rank_alpha", None)
    if rank_alpha is not None and (
        getattr(config, "rank_pattern", None) or getattr(config, "alpha_pattern", None)
    ):
        with time_budget(MATCH_BUDGET):
            settings = {n: rank_alpha(names.saved_name(n)) for n in targets}
        r, alpha = getattr(config, "r"), getattr(config, "alpha")  # noqa: B009 (LoHa / LoKr fields)
        changes["rank_pattern"] = {exact_pattern(n): v[0] for n, v in settings.items() if v[0] != r}
        changes["alpha_pattern"] = {exact_pattern(n): v[1] for n, v in settings.items() if v[1] != alpha}
    try:
        return dataclasses.replace(config, **changes)
    except (TypeError, ValueError) as err:
        raise PeftFormatError(f"the adapter's per-layer settings are invalid here: {err}") from err


def _dry_build(model: nn.Module, config: LayerMethodConfig, targets: list[str]) -> dict[str, AdapterModule]:
    """Every adapter layer ``config`` would install, built and NOT installed; the base's frozen
    flags, which a layer's constructor sets, are put back."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        if config.find(model) != targets:  # cannot happen: exact names; checked so it never mutates on it
            raise PeftFormatError(f"internal: the translated config does not select exactly {targets[:4]}...")
        build = config.layer_builder(model, targets)
        return {n: build(n, model.get_submodule(n)) for n in targets}
    except (InjectionError, TypeError, ValueError) as err:
        raise PeftFormatError(f"the adapter's layers cannot be built on this model: {err}") from None
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


_MASK_KEY = re.compile(r"(.+)\.lora_E(?:\.[^.]+)?")


def _adalora_masks(
    data: Mapping[str, Any], names: SavedNames, targets: list[str], init_r: int
) -> dict[str, list[bool]]:
    """AdaLoRA's ``rank_pattern`` as model module name -> mask of the kept triplets."""
    pattern = data.get("rank_pattern")
    if pattern is None:
        return {}
    if not isinstance(pattern, dict):
        raise PeftFormatError(
            f"rank_pattern must be an object of module -> mask, got {type(pattern).__name__}"
        )
    by_saved = {names.saved_name(n): n for n in targets}
    masks, problems = {}, []
    for key, mask in pattern.items():
        found = _MASK_KEY.fullmatch(key)
        module = by_saved.get(found.group(1)) if found else None
        if module is None:
            problems.append(f"rank_pattern key {key!r} names no adapted module (expected '<module>.lora_E')")
        elif not isinstance(mask, list) or len(mask) != init_r or not all(isinstance(b, bool) for b in mask):
            problems.append(
                f"rank_pattern[{key!r}] must be a list of {init_r} booleans (init_r), got {mask!r:.80}"
            )
        else:
            masks[module] = mask
    if problems:
        raise PeftFormatError("invalid AdaLoRA rank_pattern:\n  - " + "\n  - ".join(problems))
    return masks


def _scatter(mask: list[bool], full: tuple[int, ...], dim: int) -> Any:
    """The function putting the kept triplets (``sum(mask)`` along ``dim``) at their places in a
    zero tensor of shape ``full``."""
    index = torch.tensor(mask)

    def put(t: torch.Tensor) -> torch.Tensor:
        out = t.new_zeros(full)
        if dim == 0:
            out[index] = t
        else:
            out[:, index] = t
        return out

    return put


def _layer_tensors(
    method: Method,
    layers: Mapping[str, AdapterModule],
    names: SavedNames,
    masks: Mapping[str, list[bool]],
    out: Expected,
) -> None:
    """Every adapter tensor of the built ``layers``: saved key -> (shape in the file, path)."""
    for name, layer in layers.items():
        key = names.saved_name(name)
        kept = sum(masks[name]) if name in masks else None
        for attr in layer.adapter_param_names or ():
            shape = tuple(getattr(layer, attr).shape)
            file_key = tensor_key(method, key, attr)
            if kept is not None:  # AdaLoRA: the file holds the kept triplets only
                dim = 1 if attr == "lora_B" else 0
                out.reshape[file_key] = _scatter(masks[name], shape, dim)
                shape = (shape[0], kept) if dim else (kept, *shape[1:])
            out.tensors[file_key] = (shape, f"{name}.{attr}")


def _split_top(state: Mapping[str, torch.Tensor], method: Method) -> dict[str, torch.Tensor]:
    """The file's tensors under the keys compared: the module tensors without PEFT's prefix,
    VeRA's shared pair under its own name."""
    top = set(_VERA_TOP) if method.peft_type == "VERA" else set()
    outside = sorted(k for k in state if not k.startswith(PEFT_PREFIX) and k not in top)
    if outside:
        raise PeftFormatError(f"tensor names {outside[:4]} lack PEFT's prefix {PEFT_PREFIX!r}")
    return {(k if k in top else k[len(PEFT_PREFIX) :]): v for k, v in state.items()}


def plan_method(model: nn.Module, data: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> MethodPlan:
    """Check a layer-method adapter against ``model`` without changing it; raise
    :class:`PeftFormatError` listing what does not fit."""
    method = METHODS[str(data["peft_type"])]
    data = boft_effective(data, state)  # BOFT: the butterfly factor PEFT builds (else unchanged)
    config = method_config_from_peft(data)
    saved = _split_top(state, method)
    suffixes = (*(f".{s}" for s in _SUFFIXES[method.peft_type]), ".base_layer.bias")
    module_keys = {k: v for k, v in saved.items() if k not in _VERA_TOP}
    names = resolve_names(model, config, module_keys, suffixes)
    with time_budget(MATCH_BUDGET):
        targets, saves = select_modules(model, config, data.get("task_type"), module_keys, names)
    exact = _exact_config(config, names, targets)
    layers = _dry_build(model, exact, targets)
    init_r = getattr(config, "init_r", 0)
    masks = _adalora_masks(data, names, targets, init_r) if method.peft_type == "ADALORA" else {}
    expected = Expected()
    _layer_tensors(method, layers, names, masks, expected)
    bias = getattr(config, "bias", "none")
    for name in targets:
        expected_bias(expected, bias, model.get_submodule(name), name, names.saved_name(name))
    expected_saves(expected, model, config, names, targets, saves, module_keys)
    if method.peft_type == "VERA":
        pair = layers[targets[0]].projections
        for key in _VERA_TOP:
            attr = key.rsplit(".", 1)[1]
            if getattr(config, "save_projection", True):
                expected.tensors[key] = (tuple(getattr(pair, attr).shape), f"{targets[0]}.projections.{attr}")
            else:  # PEFT draws the pair from projection_prng_key and ignores a saved one
                expected.ignorable.add(key)
    return MethodPlan(exact, targets, saves, expected, saved, names)
