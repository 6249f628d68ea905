"""Hugging Face PEFT's on-disk adapter format, both ways.

    save_peft(model, "out/")                      # peft_zoo model -> a directory PEFT loads
    peft.PeftModel.from_pretrained(base, "out/")  # ... in PEFT

    peft_model.save_pretrained("out/")            # a PEFT adapter ...
    model, params = load_peft(base, "out/")       # ... -> peft_zoo layers on the plain base model

A PEFT adapter directory holds two files:

- ``adapter_config.json``: the PEFT config (``peft_type`` "LORA" or "IA3", ``r``,
  ``lora_alpha``, ``target_modules``, ``rank_pattern``...). peft_zoo's
  :class:`~peft_zoo.LoraConfig` / :class:`~peft_zoo.IA3Config` carry the same rules under
  their own names; :func:`lora_config_from_peft`, :func:`ia3_config_from_peft` and
  :func:`peft_dict_from_config` translate.
- ``adapter_model.safetensors``: the adapter tensors, keyed by the module path in the base
  model behind PEFT's wrapper prefix ``base_model.model.``, with the adapter name removed::

      base_model.model.<module>.lora_A.weight   (r, in)     A
      base_model.model.<module>.lora_B.weight   (out, r)    B        y = W0 x + s B A x
      base_model.model.<module>.lora_magnitude_vector  (out,)  m     DoRA (use_dora): y = m ⊙ V x / ||V||
                                                                     with V = W0 + s B A, row norms
      base_model.model.<module>.ia3_l           (out, 1)    l        y = l ⊙ (W0 x + b)
                                                 (1, in)     (feed-forward modules: y = W0 (l ⊙ x) + b)
      base_model.model.<module>.<param>                      a modules_to_save copy, in full
      base_model.model.<module>.base_layer.bias              a trained bias (bias="lora_only")

The scale ``s`` is ``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with ``use_rslora``), with
per-module exceptions in ``rank_pattern`` / ``alpha_pattern`` (a key is a regex that must
match a dotted suffix of the module name; the first matching key wins).

Loading validates everything before the model is touched (``adapter_config.json`` read with
bounds on size and nesting; every config field against an explicit list, with its type and
range; every key, shape and value; that each named module exists; regexes matched with a
time bound) and raises :class:`PeftFormatError` listing all the problems; the model is then
exactly as it was.
Saving refuses what PEFT's format cannot express (LoRA and IA³ in one model, DoRA and plain
LoRA in one model, a batched layer, other adapter kinds, merged layers) and writes each file
atomically.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from ..core.base import AdapterModule, outermost_adapters
from ..core.checks import is_conv1d, linear_features
from ..core.io import atomic_write, read_torch_state_dict
from ..core.regex import PatternError, fullmatch, match, time_budget
from ..dora import DoRALinear
from ..fused import FusedLoRALinear
from ..ia3 import IA3Linear
from ..injection.config import IA3Config, LoraConfig, ModulesToSave, adapt_model
from ..injection.surgery import mark_only_adapters_trainable
from ..injection.targets import MATCH_BUDGET, TargetSpec, output_head_names, target_matches
from ..lora import LoRALinear, lora_scale
from ..qlora import QLoRALinear
from .checkpoint import CONFIG_NAME, WEIGHTS_NAME
from .peft_checks import field_problems
from .peft_config import (
    _TASK_SAVES,
    PeftFormatError,
    _common_fields,
    _number,
    config_from_peft,
    ia3_config_from_peft,
    lora_config_from_peft,
    peft_dict_from_config,
    read_config_file,
)

__all__ = [
    "PEFT_PREFIX",
    "PeftFormatError",
    "config_from_peft",
    "ia3_config_from_peft",
    "load_peft",
    "lora_config_from_peft",
    "peft_dict_from_config",
    "read_peft",
    "save_peft",
]

PEFT_PREFIX = "base_model.model."  # PeftModel -> LoraModel / IA3Model -> the base model
LEGACY_WEIGHTS_NAME = "adapter_model.bin"  # older PEFT releases; read with weights_only=True


# ----------------------------------------------------------------------------- saving


def _exact(name: str) -> str:
    """A rank/alpha pattern key matching module ``name`` only (PEFT's rule matches dotted suffixes)."""
    return "^" + re.escape(name)


def _peft_alpha(layer: LoRALinear, rslora: bool) -> float:
    """The ``lora_alpha`` that gives ``layer`` its scale under PEFT's global ``use_rslora``."""
    r = layer.rank
    if lora_scale(r, layer.alpha, layer.rslora) == layer.scale:  # the usual case: clean numbers
        return layer.alpha * math.sqrt(r) if layer.rslora and not rslora else layer.alpha
    return layer.scale * (math.sqrt(r) if rslora else r)  # someone set .scale directly


def _most_common(values: Iterable[Any]) -> Any:
    return Counter(values).most_common(1)[0][0]


def _infer_bias(model: nn.Module, layers: Mapping[str, nn.Module], saves: Iterable[nn.Module]) -> str:
    """Which PEFT ``bias`` mode the trainable flags show: adapted layers' base biases are frozen
    by the adapter layers, so a trainable one means somebody asked for it (``adapt_model``
    with ``bias="lora_only"`` or ``"all"``)."""
    own = [m.base.bias for m in layers.values() if m.base.bias is not None]
    trained = [b.requires_grad for b in own]
    if not any(trained):
        return "none"
    if not all(trained):
        raise PeftFormatError(
            "some adapted layers' biases are trainable and some are not; PEFT saves all or none "
            "of them: pass bias='none', 'lora_only' or 'all' to save_peft"
        )
    skip = {id(p) for m in (*layers.values(), *saves) for p in m.parameters()}
    rest = [(n, p) for n, p in model.named_parameters() if id(p) not in skip]
    others_bias = [p.requires_grad for n, p in rest if n.rsplit(".", 1)[-1] == "bias"]
    others_weight = [p.requires_grad for n, p in rest if n.rsplit(".", 1)[-1] != "bias"]
    if others_bias and all(others_bias) and not any(others_weight):
        return "all"
    return "lora_only"


def save_peft(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    base_model_name_or_path: str | None = None,
    task_type: str | None = None,
    bias: str | None = None,
) -> Path:
    """Write the adapters of a peft_zoo model (``LoRALinear``, ``DoRALinear`` or ``IA3Linear`` layers, plus
    ``ModulesToSave`` copies) as a PEFT adapter directory: ``adapter_config.json`` and
    ``adapter_model.safetensors``, which ``peft.PeftModel.from_pretrained(base, path)`` loads
    into the unadapted base model. Returns the directory.

    The config names the adapted modules exactly (``target_modules`` lists their full
    names), takes the most common rank and alpha as ``r`` / ``lora_alpha`` and writes every
    other module's into ``rank_pattern`` / ``alpha_pattern`` under an anchored key, so each
    layer gets exactly its own scale (a mix of rsLoRA and plain layers is written as plain
    LoRA with ``alpha * sqrt(r)`` for the rsLoRA ones). ``bias`` (PEFT's ``"none"``,
    ``"lora_only"``, ``"all"``) defaults to what the trainable flags show.

    A :class:`~peft_zoo.FusedLoRALinear` (LoRA on some slices of a fused projection) is
    written as the plain LoRA of rank ``k * r`` it equals (:meth:`FusedLoRALinear.as_lora`).

    ``DoRALinear`` layers are written as PEFT writes DoRA: ``use_dora: true`` and a
    ``lora_magnitude_vector`` tensor per layer besides ``lora_A`` / ``lora_B``.

    A :class:`~peft_zoo.QLoRALinear` is written as the plain LoRA it carries: PEFT applies it
    to the same base quantised with bitsandbytes, or to a float base (equal outputs when that
    base holds the dequantised NF4 weights). ``load_peft`` builds float ``LoRALinear`` layers.

    Raises :class:`PeftFormatError` (nothing written) for what PEFT cannot express: LoRA and
    IA³ in one model, DoRA and plain LoRA in one model (PEFT's ``use_dora`` is per adapter),
    ``BatchedLoRALinear``, any other adapter kind, merged layers.
    """
    found = outermost_adapters(model)
    # A QLoRA layer's adapter is a plain LoRA: PEFT loads it onto a (4-bit or float) base.
    lora = {n: m for n, m in found.items() if type(m) in (LoRALinear, DoRALinear, QLoRALinear)}
    # A partial fused LoRA is exactly a plain LoRA of rank k * r with a block-structured B.
    lora.update({n: m.as_lora() for n, m in found.items() if type(m) is FusedLoRALinear})
    ia3 = {n: m for n, m in found.items() if type(m) is IA3Linear}
    saves = {n: m for n, m in found.items() if type(m) is ModulesToSave}
    problems = []
    others = {
        n: type(m).__name__ for n, m in found.items() if n not in lora and n not in ia3 and n not in saves
    }
    if others:
        hints = {
            "BatchedLoRALinear": "a BatchedLoRALinear holds many adapters; save one slot by putting "
            "layer.slot_as_lora(i) in its place",
        }
        why = "; ".join(h for kind, h in hints.items() if kind in others.values())
        problems.append(
            f"PEFT's LoRA/IA3 format cannot hold these adapter layers: {others}"
            + (f" ({why})" if why else "")
        )
    if lora and ia3:
        problems.append(
            f"the model mixes LoRA {sorted(lora)[:3]} and IA3 {sorted(ia3)[:3]} layers; a PEFT adapter "
            "is one method: save them as two models"
        )
    dora = [n for n, m in lora.items() if type(m) is DoRALinear]
    if dora and len(dora) < len(lora):
        plain = [n for n in lora if n not in dora]
        problems.append(
            f"the model mixes DoRA {dora[:3]} and plain LoRA {plain[:3]} layers; PEFT's use_dora holds for "
            "every layer of an adapter: save them as two models"
        )
    if not lora and not ia3 and not others:
        problems.append("the model has no LoRALinear, DoRALinear or IA3Linear layers to save")
    merged = [n for n, m in {**lora, **ia3}.items() if m.merged]
    if merged:
        problems.append(f"layers {merged[:5]} are merged; unmerge_adapters(model) before saving")
    if bias not in (None, "none", "lora_only", "all"):
        problems.append(f"bias must be 'none', 'lora_only' or 'all', got {bias!r}")
    if problems:
        raise PeftFormatError("save_peft: " + "; ".join(problems) + ". Nothing was written.")

    layers: dict[str, LoRALinear | IA3Linear] = {**lora, **ia3}
    bias = _infer_bias(model, layers, saves.values()) if bias is None else bias
    tensors: dict[str, torch.Tensor] = {}
    if lora:
        rslora = all(m.rslora for m in lora.values())
        ranks = {n: m.rank for n, m in lora.items()}
        alphas = {n: _peft_alpha(m, rslora) for n, m in lora.items()}
        r, alpha = _most_common(ranks.values()), _most_common(alphas.values())
        dropouts = sorted({m.dropout_p for m in lora.values()})
        if len(dropouts) > 1:
            warnings.warn(
                f"save_peft: the layers use different dropouts {dropouts}; PEFT keeps one, "
                f"lora_dropout={dropouts[-1]} (dropout only matters while training)",
                stacklevel=2,
            )
        config = _common_fields("LORA", task_type, base_model_name_or_path)
        config.update(
            r=r,
            lora_alpha=_number(alpha),
            lora_dropout=dropouts[-1],
            use_rslora=rslora,
            bias=bias,
            rank_pattern={_exact(n): v for n, v in ranks.items() if v != r},
            alpha_pattern={_exact(n): _number(v) for n, v in alphas.items() if v != alpha},
            layers_to_transform=None,
            layers_pattern=None,
            init_lora_weights=True,
            use_dora=bool(dora),
            lora_bias=False,
        )
        for n, m in lora.items():
            tensors[f"{n}.lora_A.weight"] = m.lora_A  # (r, in)
            tensors[f"{n}.lora_B.weight"] = m.lora_B  # (out, r)
            if isinstance(m, DoRALinear):
                tensors[f"{n}.lora_magnitude_vector"] = m.magnitude  # (out,)
    else:
        if bias != "none":
            raise PeftFormatError(
                f"save_peft: bias={bias!r}, but PEFT's IA3 format saves no biases; freeze the adapted "
                "layers' biases or pass bias='none'. Nothing was written."
            )
        config = _common_fields("IA3", task_type, base_model_name_or_path)
        config["feedforward_modules"] = [n for n, m in ia3.items() if m.feedforward]
        config["init_ia3_weights"] = True
        for n, m in ia3.items():  # (1, in) for feed-forward layers, else (out, 1)
            tensors[f"{n}.ia3_l"] = m.scale[None, :] if m.feedforward else m.scale[:, None]
    config.update(
        target_modules=list(layers),
        exclude_modules=None,
        modules_to_save=list(saves) or None,
        fan_in_fan_out=any(m.fan_in_fan_out for m in layers.values()),
        inference_mode=True,
    )
    for n, m in saves.items():
        tensors.update({f"{n}.{k}": v for k, v in m.trained_module.state_dict().items()})
    if bias != "none":
        tensors.update(
            {f"{n}.base_layer.bias": m.base.bias for n, m in layers.items() if m.base.bias is not None}
        )
    if bias == "all":
        skip = {id(p) for m in (*layers.values(), *saves.values()) for p in m.parameters()}
        tensors.update(
            {
                n: p
                for n, p in model.named_parameters()
                if n.rsplit(".", 1)[-1] == "bias" and id(p) not in skip
            }
        )
    # Own contiguous CPU copies: safetensors refuses views and shared storage.
    blob = safetensors.torch.save(
        {PEFT_PREFIX + k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()},
        metadata={"format": "pt"},
    )
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PeftFormatError(f"save_peft: {path} is a file; PEFT adapters are directories")
    path.mkdir(parents=True, exist_ok=True)
    # Weights first: PEFT reads the config first, so a crash in between leaves the old config
    # beside new weights only if the weights' keys still fit it (load_peft checks every key).
    atomic_write(path / WEIGHTS_NAME, blob)
    atomic_write(path / CONFIG_NAME, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    return path


# ----------------------------------------------------------------------------- reading


def read_peft(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a PEFT adapter directory into ``(config dict, state dict)`` without touching any
    model and without unpickling (safetensors, or ``torch.load(weights_only=True)`` for a
    legacy ``adapter_model.bin``). Raises :class:`PeftFormatError` for a missing, truncated
    or corrupt file, a config that is not a bounded JSON object, or a config field of the
    wrong type or range (``"use_rslora": "no"``). Whether peft_zoo supports every feature
    the config uses is checked by :func:`load_peft` / :func:`config_from_peft`."""
    path = Path(path)
    if path.is_file() and path.name in (CONFIG_NAME, WEIGHTS_NAME, LEGACY_WEIGHTS_NAME):
        path = path.parent
    if not path.is_dir():
        raise PeftFormatError(f"{path}: no such adapter directory")
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        nested = sorted(p.parent.name for p in path.glob(f"*/{CONFIG_NAME}"))
        hint = f"; PEFT saves named adapters in subfolders: {nested}" if nested else ""
        raise PeftFormatError(f"{path}: no {CONFIG_NAME} in this directory{hint}")
    config = read_config_file(config_file)
    problems = field_problems(config)  # each known field's type and range (support: load_peft)
    if problems:
        raise PeftFormatError(f"{config_file}: invalid PEFT config:\n  - " + "\n  - ".join(problems))
    if (path / WEIGHTS_NAME).is_file():
        file = path / WEIGHTS_NAME
        try:
            state = safetensors.torch.load(file.read_bytes())
        except Exception as err:  # safetensors raises several types for bad bytes
            raise PeftFormatError(
                f"{file}: not a readable safetensors file; it may be truncated or corrupt ({err})"
            ) from err
    elif (path / LEGACY_WEIGHTS_NAME).is_file():
        file = path / LEGACY_WEIGHTS_NAME
        state = read_torch_state_dict(file, PeftFormatError)
    else:
        raise PeftFormatError(
            f"{path}: no {WEIGHTS_NAME} (or legacy {LEGACY_WEIGHTS_NAME}) in this directory"
        )
    return config, state


# ----------------------------------------------------------------------------- loading


@dataclass
class _Names:
    """Module names as saved (the PEFT model's base) <-> names in the model being loaded.

    A checkpoint saved on ``BertForSequenceClassification`` names ``bert.encoder...``; the
    same adapter loaded into a bare ``BertModel`` must drop the ``bert.`` (the model's
    ``base_model_prefix``), and the other way round.
    """

    strip: str = ""  # removed from a saved name ...
    add: str = ""  # ... and this put in front

    def to_model(self, saved: str) -> str | None:
        if not saved.startswith(self.strip):
            return None
        return self.add + saved[len(self.strip) :]

    def to_saved(self, name: str) -> str | None:
        if not name.startswith(self.add):
            return None
        return self.strip + name[len(self.add) :]

    def describe(self) -> str:
        if self.strip:
            return f"(saved names start with {self.strip!r}, which this model lacks: dropped)"
        return f"(saved names lack this model's prefix {self.add!r}: added)" if self.add else ""


def _name_mapping(model: nn.Module, saved_modules: set[str]) -> _Names | None:
    modules = {n for n, _ in model.named_modules()}
    prefix = getattr(model, "base_model_prefix", "")
    candidates = [_Names()]
    if isinstance(prefix, str) and prefix:
        candidates += [_Names(strip=prefix + "."), _Names(add=prefix + ".")]
    for names in candidates:
        if all(names.to_model(s) in modules for s in saved_modules):
            return names
    return None


def _unknown_modules_message(model: nn.Module, missing: list[str]) -> str:
    names = [n for n, _ in model.named_modules() if n]
    first = missing[0]
    close = difflib.get_close_matches(first, names, n=3, cutoff=0.5)
    hint = f"; closest names here: {close}" if close else ""
    return (
        f"the checkpoint names {len(missing)} modules that this model does not have, e.g. "
        f"{missing[:4]} (saved for another architecture?{hint})"
    )


def _peft_ff(spec: TargetSpec | None, saved_name: str) -> bool:
    """PEFT's ``IA3Model._check_target_module_feedforward``: regex fullmatch, or a plain
    string suffix for a list."""
    if not spec:
        return False
    if isinstance(spec, str):
        return fullmatch(spec, saved_name, "feedforward_modules") is not None
    return any(saved_name.endswith(f) for f in spec)


def _selected_targets(
    model: nn.Module, config: LoraConfig | IA3Config, names: _Names, saves: list[str]
) -> list[str]:
    """The Linear/Conv1D modules (model names) PEFT's rules select for ``config``, judged on the
    names as saved; never a modules_to_save module or one inside it (PEFT's guard)."""
    spec = config.target_modules
    heads = output_head_names(model) if isinstance(spec, str) and spec.lower() == "all-linear" else None
    guard = list(config.modules_to_save or [])
    chosen = []
    for name, module in model.named_modules():
        saved = names.to_saved(name)
        if not name or saved is None or not (isinstance(module, nn.Linear) or is_conv1d(module)):
            continue
        if any(name == s or name.startswith(s + ".") for s in saves):
            continue
        if any(match(rf"(^|.*\.){m}($|\..*)", saved, "modules_to_save") for m in guard):
            continue
        if heads is not None:
            hit = not any(name == h or name.startswith(h + ".") for h in heads) and target_matches(
                saved, ".*", exclude_modules=config.exclude_modules
            )
        else:
            hit = target_matches(
                saved,
                spec,  # type: ignore[arg-type]
                exclude_modules=config.exclude_modules,
                layers_to_transform=config.layers_to_transform,
                layers_pattern=config.layers_pattern,
            )
        if hit:
            chosen.append(name)
    return chosen


def _selected_saves(model: nn.Module, wanted: Sequence[str], names: _Names) -> list[str]:
    """PEFT's modules_to_save rule (a plain string suffix of the saved name), outermost only.
    An entry that matches nothing is allowed, as in PEFT (its classifier wrappers add
    ``"classifier"`` and ``"score"`` to every config)."""
    chosen: list[str] = []
    for name, _ in model.named_modules():
        saved = names.to_saved(name)
        if not name or saved is None or any(name.startswith(c + ".") for c in chosen):
            continue
        if any(saved.endswith(w) for w in wanted):
            chosen.append(name)
    return chosen


@dataclass
class _Expected:
    """The tensors the selected modules need: saved key -> (shape, path in the adapted model)."""

    tensors: dict[str, tuple[tuple[int, ...], str]] = field(default_factory=dict)
    other_form: dict[str, tuple[int, int]] = field(default_factory=dict)  # IA3 key -> the other form's shape
    ignorable: set[str] = field(default_factory=set)  # keys PEFT writes that carry nothing new
    ranks: dict[str, int] = field(default_factory=dict)  # LoRA: module -> rank
    alphas: dict[str, float] = field(default_factory=dict)  # LoRA: module -> alpha
    feedforward: list[str] = field(default_factory=list)  # IA3: feed-forward modules
    base_paths: dict[str, str] = field(
        default_factory=dict
    )  # base-model tensors overwritten: new -> old path


@dataclass
class _Plan:
    """Everything :func:`load_peft` will do, worked out before it does any of it."""

    config: LoraConfig | IA3Config  # for adapt_model: exactly the targets, in this model's names
    targets: list[str]
    saves: list[str]
    bias: str
    copies: dict[str, torch.Tensor]  # adapted-model tensor path -> value
    base_paths: dict[str, str]


def _regex_of(names: Sequence[str]) -> str:
    """A target regex (full match) selecting exactly ``names``."""
    return "(?:" + "|".join(re.escape(n) for n in names) + ")"


# PEFT's bias="all" also saves the biases inside its modules_to_save wrappers (both copies).
_WRAPPED_BIAS = re.compile(r"(.*)\.(original_module|modules_to_save)\..*bias")


def _resolve_names(model: nn.Module, config: LoraConfig | IA3Config, saved: Mapping[str, Any]) -> _Names:
    """Map the saved module names onto this model's, or raise naming what does not exist."""
    suffixes = (
        (".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector")
        if isinstance(config, LoraConfig)
        else (".ia3_l",)
    )
    owners = set()
    for key in saved:
        if _WRAPPED_BIAS.fullmatch(key):
            continue
        owner = key.rpartition(".")[0]
        for suffix in (*suffixes, ".base_layer.bias"):
            if key.endswith(suffix):
                owner = key[: -len(suffix)]
        owners.add(owner)
    names = _name_mapping(model, owners)
    if names is None:
        modules = {n for n, _ in model.named_modules()}
        raise PeftFormatError(_unknown_modules_message(model, sorted(owners - modules)))
    return names


def _select(
    model: nn.Module,
    config: LoraConfig | IA3Config,
    task_type: object,
    saved: Mapping[str, Any],
    names: _Names,
) -> tuple[list[str], list[str]]:
    """``(targets, modules_to_save)`` in this model's names, by PEFT's rules on the saved names."""
    own = list(config.modules_to_save or [])
    task = getattr(task_type, "value", task_type)  # a TaskType enum or its string
    implicit = [c for c in _TASK_SAVES.get(str(task), ()) if c not in own]
    saves = _selected_saves(model, own, names) if own else []
    # A module only the task wrapper adds, and the file holds nothing for, stays as it is (in
    # PEFT its copy keeps the original weights).
    for name in _selected_saves(model, implicit, names) if implicit else []:
        if name not in saves and any(k.startswith(f"{names.to_saved(name)}.") for k in saved):
            saves.append(name)
    config.modules_to_save = own + implicit or None  # PEFT never targets these
    targets = _selected_targets(model, config, names, saves)
    if not targets:
        raise PeftFormatError(
            f"target_modules={config.target_modules!r} selects no Linear/Conv1D module of this model "
            f"{names.describe()}(saved for another architecture?)"
        )
    return targets, saves


def _expect(
    model: nn.Module,
    config: LoraConfig | IA3Config,
    names: _Names,
    targets: list[str],
    saves: list[str],
    saved: Mapping[str, Any],
) -> _Expected:
    out = _Expected()
    bias = getattr(config, "bias", "none")
    for name in targets:
        key = names.to_saved(name)
        module = model.get_submodule(name)
        d_in, d_out, _ = linear_features(module, name)
        if isinstance(config, LoraConfig):
            rank, out.alphas[name] = config.rank_alpha(key)  # PEFT matches patterns on its own names
            out.ranks[name] = rank
            out.tensors[f"{key}.lora_A.weight"] = ((rank, d_in), f"{name}.lora_A")  # (r, in)
            out.tensors[f"{key}.lora_B.weight"] = ((d_out, rank), f"{name}.lora_B")  # (out, r)
            if config.use_dora:
                out.tensors[f"{key}.lora_magnitude_vector"] = ((d_out,), f"{name}.magnitude")  # (out,)
        elif _peft_ff(config.feedforward_modules, key):
            out.feedforward.append(name)
            out.tensors[f"{key}.ia3_l"] = ((1, d_in), f"{name}.scale")
            out.other_form[f"{key}.ia3_l"] = (d_out, 1)
        else:
            out.tensors[f"{key}.ia3_l"] = ((d_out, 1), f"{name}.scale")
            out.other_form[f"{key}.ia3_l"] = (1, d_in)
        if bias != "none" and module.bias is not None:
            out.tensors[f"{key}.base_layer.bias"] = (tuple(module.bias.shape), f"{name}.base.bias")
            out.base_paths[f"{name}.base.bias"] = f"{name}.bias"
    for name in saves:
        key = names.to_saved(name)
        for k, v in model.get_submodule(name).state_dict().items():
            out.tensors[f"{key}.{k}"] = (tuple(v.shape), f"{name}.trained_module.{k}")
    if bias == "all":  # every other bias of the model too
        skip = {id(p) for n in (*targets, *saves) for p in model.get_submodule(n).parameters()}
        for n, p in model.named_parameters():
            key = names.to_saved(n)
            if n.rsplit(".", 1)[-1] == "bias" and id(p) not in skip and key is not None:
                out.tensors[key] = (tuple(p.shape), n)
                out.base_paths[n] = n
        for name in saves:
            prefix = f"{names.to_saved(name)}."
            out.ignorable.update(k for k in saved if k.startswith(prefix) and _WRAPPED_BIAS.fullmatch(k))
    return out


_UNEXPECTED_HINTS = {
    "lora_magnitude_vector": "DoRA magnitudes, but the config has use_dora off",
    "lora_embedding_": "LoRA on an Embedding (not implemented)",
    "lora_A.bias": "lora_bias",
    "lora_B.bias": "lora_bias",
    "lora_": "a LoRA layer the config does not target",
    "ia3_l": "an IA3 layer the config does not target",
}


def _compare(
    expected: _Expected, saved: Mapping[str, torch.Tensor], names: _Names
) -> dict[str, torch.Tensor]:
    """The copies to make (adapted-model path -> value), or raise listing every mismatch."""
    problems = []
    missing = [k for k in expected.tensors if k not in saved]
    unexpected = [k for k in saved if k not in expected.tensors and k not in expected.ignorable]
    if missing:
        dora = any(k.endswith(".lora_magnitude_vector") for k in missing)
        problems.append(
            f"missing tensors {missing[:6]}{' ...' if len(missing) > 6 else ''}"
            + (" (use_dora is on: DoRA needs a lora_magnitude_vector for every layer)" if dora else "")
        )
    if unexpected:
        why = sorted({h for k in unexpected for pat, h in _UNEXPECTED_HINTS.items() if pat in k})
        problems.append(
            f"unexpected tensors {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}"
            + (f" ({'; '.join(why)})" if why else "")
        )
    copies: dict[str, torch.Tensor] = {}
    for key, (shape, dest) in expected.tensors.items():
        t = saved.get(key)
        if t is None:
            continue
        if tuple(t.shape) != shape:
            hint = ""
            if tuple(t.shape) == expected.other_form.get(key):
                hint = " (feed-forward (1, in) vs output (out, 1) scaling: does feedforward_modules match?)"
            problems.append(f"{PEFT_PREFIX}{key}: shape {tuple(t.shape)} in file, {shape} expected{hint}")
        elif not t.is_floating_point():
            problems.append(f"{PEFT_PREFIX}{key}: dtype {t.dtype}, expected a floating-point tensor")
        elif not bool(torch.isfinite(t).all()):
            problems.append(f"{PEFT_PREFIX}{key}: contains NaN or inf")
        else:
            copies[dest] = t.reshape(-1) if key.endswith(".ia3_l") else t  # IA3: (out, 1) -> (out,)
    if problems:
        note = names.describe()
        raise PeftFormatError(
            "the PEFT adapter does not fit the model; nothing was loaded"
            + (f" {note}" if note else "")
            + ":\n  - "
            + "\n  - ".join(problems)
        )
    return copies


def _adapt_config(
    config: LoraConfig | IA3Config, expected: _Expected, targets: list[str]
) -> LoraConfig | IA3Config:
    """The peft_zoo config that builds exactly these layers: exact names, ranks and alphas."""
    if isinstance(config, IA3Config):
        ff = expected.feedforward
        return IA3Config(target_modules=_regex_of(targets), feedforward_modules=_regex_of(ff) if ff else None)
    r, alpha = config.rank, float(config.alpha)  # type: ignore[arg-type]
    return LoraConfig(
        target_modules=_regex_of(targets),
        rank=r,
        alpha=alpha,
        dropout=config.dropout,
        rslora=config.rslora,
        bias=config.bias,
        rank_pattern={_exact(n): v for n, v in expected.ranks.items() if v != r},
        alpha_pattern={_exact(n): v for n, v in expected.alphas.items() if v != alpha},
        use_dora=config.use_dora,
    )


def _plan(model: nn.Module, data: dict[str, Any], state: dict[str, torch.Tensor]) -> _Plan:
    """Check everything against ``model`` without changing it; raise listing every problem."""
    config = config_from_peft(data)
    adapted = [n for n, m in model.named_modules() if isinstance(m, AdapterModule)]
    if adapted:
        raise PeftFormatError(
            f"the model already has adapter layers {adapted[:4]}; load_peft adapts the plain base model"
        )
    outside = sorted(k for k in state if not k.startswith(PEFT_PREFIX))
    if outside:
        raise PeftFormatError(f"tensor names {outside[:4]} lack PEFT's prefix {PEFT_PREFIX!r}")
    saved = {k[len(PEFT_PREFIX) :]: v for k, v in state.items()}
    names = _resolve_names(model, config, saved)
    with time_budget(MATCH_BUDGET):  # every regex from the file is matched here, time-bounded
        targets, saves = _select(model, config, data.get("task_type"), saved, names)
        expected = _expect(model, config, names, targets, saves, saved)
    copies = _compare(expected, saved, names)
    adapt = _adapt_config(config, expected, targets)
    if adapt.find(model) != targets:  # cannot happen: exact names; checked so it never mutates on it
        raise PeftFormatError(f"internal: the translated config does not select exactly {targets[:4]}...")
    bias = getattr(config, "bias", "none")
    return _Plan(adapt, targets, saves, bias, copies, expected.base_paths)


def _tensor_at(model: nn.Module, path: str) -> torch.Tensor:
    owner, _, attr = path.rpartition(".")
    tensor = getattr(model.get_submodule(owner), attr)
    if not isinstance(tensor, torch.Tensor):
        raise AttributeError(f"{path} is not a tensor")
    return tensor


def _apply(model: nn.Module, plan: _Plan) -> list[nn.Parameter]:
    """Adapt, wrap, copy; on any failure put every module, flag and value back."""
    originals = {n: model.get_submodule(n) for n in (*plan.targets, *plan.saves)}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    # Tensors of the base model that the copy overwrites in place (trained biases).
    before = {old: _tensor_at(model, old).detach().clone() for old in plan.base_paths.values()}
    try:
        adapt_model(model, plan.config)
        for name in plan.saves:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, ModulesToSave(originals[name]))
        params = mark_only_adapters_trainable(
            model, bias="adapter_only" if plan.bias == "lora_only" else plan.bias
        )
        with torch.no_grad():
            for path, value in plan.copies.items():
                _tensor_at(model, path).copy_(value)
    except BaseException:
        for name, module in originals.items():
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, module)
        for p, flag in flags:
            p.requires_grad_(flag)
        with torch.no_grad():
            for path, value in before.items():
                _tensor_at(model, path).copy_(value)
        raise
    return params


def load_peft(model: nn.Module, path: str | os.PathLike[str]) -> tuple[nn.Module, list[nn.Parameter]]:
    """Adapt the plain base ``model`` as the PEFT adapter in directory ``path`` says (saved by
    ``peft_model.save_pretrained(path)`` or :func:`save_peft`) and load its tensors.

    The layers are peft_zoo's (``LoRALinear``, ``DoRALinear`` with ``use_dora``, ``IA3Linear``;
    ``ModulesToSave`` for the ``modules_to_save`` modules), built by :func:`~peft_zoo.adapt_model` with a config
    translated from ``adapter_config.json`` and matched by PEFT's own rules on the names
    as saved. A checkpoint saved on the task model (``bert.encoder...``) loads into the bare
    base model and the other way round (the model's ``base_model_prefix``). Tensors are
    cast to the dtype of the layer they go into. Returns ``(model, trainable parameters)``.

    Raises :class:`PeftFormatError` and leaves the model exactly as it was for: a missing or
    corrupt file, an unknown config field or an unsupported feature (``lora_bias``,
    ``target_parameters``, layer replication...), missing or unexpected tensors, a shape
    mismatch, non-finite values, names of modules this model does not have.
    """
    data, state = read_peft(path)
    config_file = (Path(path).parent if Path(path).is_file() else Path(path)) / CONFIG_NAME
    try:
        config_from_peft(data)  # what the config asks for, checked before the model is looked at
    except PeftFormatError as err:
        raise PeftFormatError(f"{config_file}: {err}") from None
    try:
        plan = _plan(model, data, state)
    except PeftFormatError as err:
        raise PeftFormatError(f"{path}: {err}") from None
    except PatternError as err:  # a regex of the config is too slow on this model's names
        raise PeftFormatError(f"{config_file}: {err}") from None
    return model, _apply(model, plan)
