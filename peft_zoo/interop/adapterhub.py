"""AdapterHub's on-disk bottleneck adapter format (``adapters`` 1.3), both ways.

    save_adapterhub(model, "out/", name="sst2")        # peft_zoo -> model.load_adapter("out/") in adapters
    model.save_adapter("out/", "sst2")                  # adapters -> ...
    model, params = load_adapterhub(base, "out/")       # ... peft_zoo sites on the plain model

A directory holds ``adapter_config.json`` (``{"config": {BnConfig fields}, "hidden_size",
"model_class", "model_name", "model_type", "name", "version"}``) and the weights:
``pytorch_adapter.bin`` (what ``load_adapter`` reads by default: ``torch.save`` of a dict of
tensors, read here with ``weights_only=True``) and/or ``adapter.safetensors`` (read by
``load_adapter(..., use_safetensors=True)``; preferred here). A site's tensors, under
``<layer>.attention.output`` / ``<layer>.output`` (BERT) or ``<layer>.attention_adapters`` /
``<layer>.output_adapters`` (GPT-2, LLaMA), then ``.adapters.<name>.``::

    adapter_down.0.weight / .bias   (r, d), (r,)     W_down (adapter_down.1 with ln_before,
    adapter_norm_before.*           (d,)             whose LayerNorm is also written as adapter_down.0)
    adapter_up.weight / .bias       (d, r), (d,)     W_up
    adapter_norm_after.*, scaling (1,) or (d,), gate.weight (1, d), gate.bias (1,)

Keys start at the model AdapterHub was given (``bert.`` for a model with a head); either form
loads. Everything is checked (config fields, names, keys, shapes) before the model changes.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from ..bottleneck import BnAdapter
from ..core.checks import short_repr
from ..core.io import atomic_write, read_torch_state_dict
from ..injection.bottleneck_config import BottleneckConfig
from ..injection.bottleneck_placement import (
    NamedBottleneckSite,
    PostNormSite,
    PreNormSite,
    Site,
    bottleneck_sites,
    build_sites,
    install_sites,
)
from .checkpoint import read_safetensors
from .peft_checks import read_json_object

__all__ = [
    "ADAPTERHUB_CONFIG",
    "ADAPTERHUB_SAFE_WEIGHTS",
    "ADAPTERHUB_WEIGHTS",
    "AdapterHubFormatError",
    "adapterhub_config_dict",
    "adapterhub_parameters",
    "config_from_adapterhub",
    "load_adapterhub",
    "read_adapterhub",
    "save_adapterhub",
]

ADAPTERHUB_CONFIG = "adapter_config.json"
ADAPTERHUB_WEIGHTS = "pytorch_adapter.bin"
ADAPTERHUB_SAFE_WEIGHTS = "adapter.safetensors"
FORMAT_VERSION = "adapters.1.3.0"  # the release whose format this writes; no version = a legacy file
_LEGACY_ACTIVATIONS = {"gelu": "gelu_new", "gelu_orig": "gelu"}  # AdapterHub's ACTIVATION_RENAME
# AdapterHub's BnConfig defaults, for a file that leaves a field out.
_BN_DEFAULTS: dict[str, Any] = {
    "original_ln_before": False,
    "original_ln_after": True,
    "ln_before": False,
    "ln_after": False,
    "init_weights": "bert",
    "init_weights_seed": None,
    "is_parallel": False,
    "scaling": 1.0,
    "use_gating": False,
    "residual_before_ln": True,
    "adapter_residual_before_ln": False,
    "leave_out": [],
    "dropout": 0.0,
}
_REQUIRED = ("mh_adapter", "output_adapter", "reduction_factor", "non_linearity")
# BnConfig fields for what peft_zoo does not build: written with these values, refused otherwise.
_UNSUPPORTED: dict[str, Any] = {
    "inv_adapter": None,
    "inv_adapter_reduction_factor": None,
    "cross_adapter": False,
    "phm_layer": False,
    "phm_dim": 4,
    "factorized_phm_W": True,
    "shared_W_phm": False,
    "shared_phm_rule": True,
    "factorized_phm_rule": False,
    "phm_c_init": "normal",
    "phm_init_range": 0.0001,
    "learn_phm": True,
    "hypercomplex_nonlinearity": "glorot-uniform",
    "phm_rank": 1,
    "phm_bias": True,
    "stochastic_depth": 0.0,
}
_MUST_BE_OFF = {"inv_adapter", "cross_adapter", "phm_layer", "stochastic_depth"}


class AdapterHubFormatError(ValueError):
    """An AdapterHub adapter directory that peft_zoo cannot read or that does not fit the model."""


def adapterhub_config_dict(config: BottleneckConfig) -> dict[str, Any]:
    """``config`` as AdapterHub's full ``BnConfig`` dict (the ``"config"`` entry of the file)."""
    config.validate()
    return {**config.to_dict(), **_UNSUPPORTED}


def config_from_adapterhub(data: object, legacy: bool = False) -> BottleneckConfig:
    """The :class:`BottleneckConfig` of AdapterHub's ``"config"`` dict; fields for features
    peft_zoo does not build (PHM, invertible or cross adapters, stochastic depth) must be off."""
    if not isinstance(data, Mapping):
        raise AdapterHubFormatError(f"'config' must be a JSON object, got {short_repr(data)}")
    if data.get("architecture") is not None:
        raise AdapterHubFormatError(f"not a bottleneck adapter: architecture={data['architecture']!r}")
    fields = dict(data)
    fields.pop("architecture", None)
    missing = [k for k in _REQUIRED if k not in fields]
    if missing:
        raise AdapterHubFormatError(f"the adapter config lacks the required fields {missing}")
    on = [k for k in _MUST_BE_OFF if k in fields and fields[k] not in (None, False, 0, 0.0)]
    if on:
        raise AdapterHubFormatError(f"peft_zoo does not build these AdapterHub features: {sorted(on)}")
    for key in _UNSUPPORTED:
        fields.pop(key, None)
    if legacy and fields.get("non_linearity") in _LEGACY_ACTIVATIONS:
        fields["non_linearity"] = _LEGACY_ACTIVATIONS[fields["non_linearity"]]
    try:
        return BottleneckConfig.from_dict({**_BN_DEFAULTS, **fields})
    except (TypeError, ValueError) as err:
        raise AdapterHubFormatError(f"adapter config: {err}") from err


_Entry = tuple[str, bool, str, BnAdapter]  # (module path, post-norm (BERT)?, location, adapter)


def _entries(sites: Mapping[str, PostNormSite | PreNormSite]) -> list[_Entry]:
    return [(p, isinstance(s, PostNormSite), s.location, s.adapter) for p, s in sites.items()]


def _site_prefix(path: str, post_norm: bool, location: str, name: str) -> str:
    """Where AdapterHub keeps this site's adapter, relative to the same model."""
    if post_norm:
        return f"{path}.adapters.{name}."
    layer = path.rpartition(".")[0]
    holder = "attention_adapters" if location == "mh_adapter" else "output_adapters"
    return f"{layer}.{holder}.adapters.{name}." if layer else f"{holder}.adapters.{name}."


def _local_keys(local: str, ln_before: bool) -> list[str]:
    """AdapterHub's names for one of :class:`~peft_zoo.bottleneck.BnAdapter`'s parameters."""
    module, _, leaf = local.partition(".")
    if module == "norm_before":
        return [f"adapter_norm_before.{leaf}", f"adapter_down.0.{leaf}"]
    renamed = {
        "down": f"adapter_down.{int(ln_before)}",
        "up": "adapter_up",
        "norm_after": "adapter_norm_after",
    }
    return [f"{renamed.get(module, module)}.{leaf}" if leaf else module]


def _key_map(entries: list[_Entry], name: str) -> dict[str, list[nn.Parameter]]:
    """AdapterHub key -> the peft_zoo parameters it holds (one, ``adapter_down.0`` of a
    ``ln_before`` site aside, which is the same tensor as ``adapter_norm_before``)."""
    out: dict[str, list[nn.Parameter]] = {}
    for path, post_norm, location, adapter in entries:
        prefix = _site_prefix(path, post_norm, location, name)
        ln_before = adapter.norm_before is not None
        for local, param in adapter.named_parameters():
            for key in _local_keys(local, ln_before):
                out.setdefault(prefix + key, []).append(param)
    return out


def adapterhub_parameters(model: nn.Module, name: str = "adapter") -> dict[str, nn.Parameter]:
    """AdapterHub's key -> the model's parameter holding it, for every bottleneck site (the
    names ``save_adapterhub`` writes; handy to compare weights or gradients with AdapterHub's)."""
    return {
        k: params[0] for k, params in _key_map(_entries(bottleneck_sites(model)), _check_name(name)).items()
    }


def _strip(key: str, model: nn.Module) -> str:
    prefix = getattr(model, "base_model_prefix", "") + "."
    return key[len(prefix) :] if prefix != "." and key.startswith(prefix) else key


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name or any(c in name for c in "./\\ ,") or len(name) > 200:
        raise AdapterHubFormatError(
            f"an adapter name must be a non-empty word without '.', '/', ',' or spaces, got {short_repr(name)}"
        )
    return name


def _named_sites(model: nn.Module) -> dict[str, NamedBottleneckSite]:
    return {n: m for n, m in model.named_modules() if isinstance(m, NamedBottleneckSite)}


def _sites_to_save(model: nn.Module, name: str) -> tuple[list[_Entry], BottleneckConfig]:
    """The sites of the plain adapter, or of named adapter ``name``, and their one config."""
    sites = bottleneck_sites(model)
    named = _named_sites(model)
    if sites:
        entries = _entries(sites)
        configs = [s.bottleneck_config for s in sites.values()]
    else:
        held = {p: pair for p, s in named.items() if (pair := s.site_adapter(name)) is not None}
        if named and not held:
            known = list(dict.fromkeys(n for s in named.values() for n in s.adapter_names))
            raise AdapterHubFormatError(
                f"save_adapterhub: no adapter named {name!r} in the model; it holds {known}"
            )
        entries = [(p, named[p].post_norm, named[p].location, pair[0]) for p, pair in held.items()]
        configs = [pair[1] for pair in held.values()]
    if not entries:
        raise AdapterHubFormatError("save_adapterhub: the model holds no bottleneck adapters")
    if len({json.dumps(c.to_dict(), sort_keys=True) for c in configs}) != 1:
        raise AdapterHubFormatError("save_adapterhub: the sites were built from different configs")
    return entries, configs[0]


def save_adapterhub(
    model: nn.Module,
    directory: str | os.PathLike[str],
    name: str = "adapter",
    *,
    weights: tuple[str, ...] = ("safetensors", "bin"),
) -> Path:
    """Write the model's bottleneck adapters (in a model holding named adapters: adapter
    ``name``, as AdapterHub's ``save_adapter(directory, name)``) as AdapterHub's adapter ``name`` into
    ``directory``: ``adapter.safetensors`` and/or ``pytorch_adapter.bin`` (``weights``),
    then ``adapter_config.json``. Returns the directory."""
    name = _check_name(name)
    if not weights or any(w not in ("safetensors", "bin") for w in weights):
        raise ValueError(f"weights must name 'safetensors' and/or 'bin', got {weights!r}")
    entries, config = _sites_to_save(model, name)
    tensors = {
        k: params[0].detach().to("cpu", copy=True).contiguous()
        for k, params in _key_map(entries, name).items()
    }
    model_config = getattr(model, "config", None)
    meta = {
        "config": adapterhub_config_dict(config),
        "hidden_size": getattr(model_config, "hidden_size", None),
        "model_class": type(model).__name__,
        "model_name": getattr(model_config, "name_or_path", "") or "",
        "model_type": getattr(model_config, "model_type", None),
        "name": name,
        "version": FORMAT_VERSION,
    }
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise AdapterHubFormatError(f"save_adapterhub: {path} is a file; AdapterHub adapters are directories")
    path.mkdir(parents=True, exist_ok=True)
    if "safetensors" in weights:
        atomic_write(
            path / ADAPTERHUB_SAFE_WEIGHTS, safetensors.torch.save(tensors, metadata={"format": "pt"})
        )
    if "bin" in weights:
        buffer = io.BytesIO()
        torch.save(tensors, buffer)  # a dict of tensors only: torch.load(weights_only=True) reads it
        atomic_write(path / ADAPTERHUB_WEIGHTS, buffer.getvalue())
    atomic_write(path / ADAPTERHUB_CONFIG, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return path


def read_adapterhub(
    directory: str | os.PathLike[str],
) -> tuple[dict[str, Any], BottleneckConfig, dict[str, torch.Tensor]]:
    """``(file config, BottleneckConfig, tensors)`` of an AdapterHub adapter directory; the
    safetensors file is preferred, the ``.bin`` read with ``torch.load(weights_only=True)``."""
    path = Path(directory)
    if not path.is_dir():
        raise AdapterHubFormatError(f"{path}: not a directory")
    meta = read_json_object(path / ADAPTERHUB_CONFIG, AdapterHubFormatError)
    _check_name(meta.get("name"))
    config = config_from_adapterhub(meta.get("config"), legacy="version" not in meta)
    if (path / ADAPTERHUB_SAFE_WEIGHTS).is_file():
        tensors, _ = read_safetensors(path / ADAPTERHUB_SAFE_WEIGHTS, AdapterHubFormatError)
    elif (path / ADAPTERHUB_WEIGHTS).is_file():
        tensors = read_torch_state_dict(path / ADAPTERHUB_WEIGHTS, AdapterHubFormatError)
    else:
        raise AdapterHubFormatError(f"{path}: neither {ADAPTERHUB_SAFE_WEIGHTS} nor {ADAPTERHUB_WEIGHTS}")
    return meta, config, tensors


def _match(
    model: nn.Module, keymap: dict[str, list[nn.Parameter]], tensors: Mapping[str, torch.Tensor]
) -> None:
    """Refuse (naming them) missing or unexpected keys, wrong shapes, non-float tensors, and an
    ``adapter_down.0`` that differs from the ``adapter_norm_before`` it duplicates."""
    want = {_strip(k, model): v for k, v in keymap.items()}
    have = {_strip(k, model): v for k, v in tensors.items()}
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or unexpected:
        raise AdapterHubFormatError(
            f"the adapter does not fit this model: missing keys {missing[:4]} ({len(missing)}), "
            f"unexpected keys {unexpected[:4]} ({len(unexpected)})"
        )
    for key, params in want.items():
        tensor = have[key]
        if not tensor.is_floating_point() or tuple(tensor.shape) != tuple(params[0].shape):
            raise AdapterHubFormatError(
                f"{key}: expected a float tensor of shape {tuple(params[0].shape)}, got {tensor.dtype} "
                f"{tuple(tensor.shape)}"
            )
    for key, tensor in have.items():
        twin = key.replace("adapter_norm_before.", "adapter_down.0.")
        if twin != key and not torch.equal(tensor, have[twin]):
            raise AdapterHubFormatError(f"{twin} must equal {key} (one LayerNorm, stored twice)")


def load_adapterhub(
    model: nn.Module, directory: str | os.PathLike[str]
) -> tuple[nn.Module, list[nn.Parameter]]:
    """Load AdapterHub's adapter in ``directory`` into ``model``: into its bottleneck sites when
    it has them (built from an equal config), else into new sites where AdapterHub places them.
    Returns ``(model, trainable adapter parameters)``; on any error the model is unchanged."""
    meta, config, tensors = read_adapterhub(directory)
    name = meta["name"]
    if _named_sites(model):
        raise AdapterHubFormatError(
            "load_adapterhub: the model holds named bottleneck adapters; add this one by name with "
            "load_adapterhub_adapter(model, directory, adapter_name)"
        )
    sites = bottleneck_sites(model)
    built: list[Site] = []
    if sites:
        ours = next(iter(sites.values())).bottleneck_config.to_dict()
        if ours != config.to_dict():
            changed = sorted(k for k in ours if ours[k] != config.to_dict()[k])
            raise AdapterHubFormatError(f"the model's bottleneck config differs from the file's in {changed}")
        entries = _entries(sites)
    else:
        built = build_sites(model, config)
        entries = [(s.module_path, s.layout == "bert", s.location, s.adapter) for s in built]
    keymap = _key_map(entries, name)
    _match(model, keymap, tensors)
    have = {_strip(k, model): v for k, v in tensors.items()}
    with torch.no_grad():
        for key, params in keymap.items():
            for param in params:
                param.copy_(have[_strip(key, model)].to(param.dtype))
    if built:
        return install_sites(model, built)
    return model, [p for s in sites.values() for p in s.adapter.parameters()]
