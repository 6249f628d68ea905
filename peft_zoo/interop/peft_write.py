"""peft_zoo adapters -> a Hugging Face PEFT adapter directory (the format: :mod:`.peft_keys`).

    save_peft(model, "out/")                      # peft_zoo model -> a directory PEFT loads
    peft.PeftModel.from_pretrained(base, "out/")  # ... in PEFT

:func:`save_peft` works in named steps: sort the model's adapter layers by what PEFT's format
makes of them (``_sort_adapters``), refuse what it cannot express, all reasons at once
(LoRA and IA³ in one model, DoRA and plain LoRA in one model, a batched layer, other adapter
kinds, merged layers: ``_refusals``), build the config and the tensors of the one method
(``_lora_part`` / ``_ia3_part``) and of what is saved in full (``_whole_tensors``),
then write both files atomically (``_write``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeGuard, runtime_checkable

import torch
from torch import nn

from ..core.base import AdapterModule, outermost_adapters
from ..dora import DoRALinear
from ..fused import FusedLoRALinear
from ..ia3 import IA3Linear
from ..injection.config import ModulesToSave
from ..injection.prefix_model import PrefixTuningModel
from ..injection.prompt_model import PromptTuningModel
from .peft_config import PeftFormatError, common_fields
from .peft_keys import PEFT_PREFIX, write_adapter_dir
from .peft_methods import METHODS, method_layer_types, method_part
from .peft_parts import LORA_TYPES, LoraLayer, ia3_part, lora_part
from .peft_pissa import convert_pissa_layers
from .peft_prefix import save_prefix_peft
from .peft_prompt import save_prompt_peft

__all__ = ["NamedAdapterHolder", "held_adapter_names", "save_peft"]

Layer = LoraLayer | IA3Linear | AdapterModule

_HINTS = {
    "BatchedLoRALinear": "a BatchedLoRALinear holds many adapters; save one slot by putting "
    "layer.slot_as_lora(i) in its place",
}


def _is_lora(module: AdapterModule) -> TypeGuard[LoraLayer]:
    """Written as PEFT's LoRA as it is (linear, DoRA, QLoRA, embedding, convolution layers)."""
    return type(module) in LORA_TYPES


@dataclass
class _Adapters:
    """A model's outermost adapter layers, sorted by what PEFT's format makes of them."""

    lora: dict[str, LoraLayer]
    ia3: dict[str, IA3Linear]
    saves: dict[str, ModulesToSave]
    others: dict[str, str]  # name -> class name: layers the format cannot hold
    methods: dict[str, dict[str, AdapterModule]]  # LoHa, LoKr, VeRA, OFT, AdaLoRA: peft_type -> layers

    @property
    def layers(self) -> dict[str, Layer]:
        return {**self.lora, **self.ia3, **{n: m for ms in self.methods.values() for n, m in ms.items()}}


@runtime_checkable
class NamedAdapterHolder(Protocol):
    """A layer holding several named adapters (``serving.named_layer.NamedLoRALinear``,
    ``serving.named_ia3.NamedIA3Linear``), seen here by what it does so that interop needs
    nothing from the serving room: ``adapter_layer(name)`` is adapter ``name`` as the plain
    ``LoRALinear`` / ``IA3Linear`` this module writes, sharing its tensors."""

    @property
    def adapter_names(self) -> list[str]: ...

    def adapter_layer(self, name: str) -> AdapterModule: ...


def held_adapter_names(model: nn.Module) -> list[str]:
    """The adapter names the named layers of ``model`` hold, in module order (empty: none)."""
    names: dict[str, None] = {}
    for m in outermost_adapters(model).values():
        if isinstance(m, NamedAdapterHolder):
            names.update(dict.fromkeys(m.adapter_names))
    return list(names)


def _one_adapter(found: dict[str, AdapterModule], name: str | None) -> dict[str, AdapterModule]:
    """``found`` with every named layer replaced by adapter ``name``'s ``LoRALinear`` view
    (dropped where the layer does not hold it)."""
    out: dict[str, AdapterModule] = {}
    for n, m in found.items():
        if not isinstance(m, NamedAdapterHolder):
            out[n] = m
        elif name is not None and name in m.adapter_names:
            out[n] = m.adapter_layer(name)
        elif name is None:
            out[n] = m  # refused below as a kind the format cannot hold
    return out


def _sort_adapters(model: nn.Module, adapter_name: str | None = None) -> _Adapters:
    found = _one_adapter(outermost_adapters(model), adapter_name)
    lora = {n: m for n, m in found.items() if _is_lora(m)}
    # A partial fused LoRA is exactly a plain LoRA of rank k * r with a block-structured B.
    lora.update({n: m.as_lora() for n, m in found.items() if type(m) is FusedLoRALinear})
    ia3 = {n: m for n, m in found.items() if type(m) is IA3Linear}
    saves = {n: m for n, m in found.items() if type(m) is ModulesToSave}
    kinds = method_layer_types()
    methods: dict[str, dict[str, AdapterModule]] = {}
    for n, m in found.items():
        if type(m) in kinds:
            methods.setdefault(kinds[type(m)].peft_type, {})[n] = m
    sorted_ = {*lora, *ia3, *saves, *(n for ms in methods.values() for n in ms)}
    others = {n: type(m).__name__ for n, m in found.items() if n not in sorted_}
    return _Adapters(lora, ia3, saves, others, methods)


def _refusals(adapters: _Adapters, bias: str | None) -> list[str]:
    """Every reason PEFT's format cannot hold these adapters as asked (empty: it can)."""
    lora, ia3, others = adapters.lora, adapters.ia3, adapters.others
    problems = []
    if others:
        why = "; ".join(h for kind, h in _HINTS.items() if kind in others.values())
        problems.append(
            f"PEFT's format cannot hold these adapter layers: {others}" + (f" ({why})" if why else "")
        )
    kinds: dict[str, Mapping[str, object]] = {"LoRA": lora, "IA3": ia3, **adapters.methods}
    mixed = [f"{kind} {sorted(layers)[:3]}" for kind, layers in kinds.items() if layers]
    if len(mixed) > 1:
        problems.append(
            f"the model mixes {' and '.join(mixed)} layers; a PEFT adapter is one method: save them as separate models"
        )
    dora = [n for n, m in lora.items() if type(m) is DoRALinear]
    if dora and len(dora) < len(lora):
        plain = [n for n in lora if n not in dora]
        problems.append(
            f"the model mixes DoRA {dora[:3]} and plain LoRA {plain[:3]} layers; PEFT's use_dora holds for "
            "every layer of an adapter: save them as two models"
        )
    if not adapters.layers and not others:
        problems.append(
            "the model has no LoRALinear, DoRALinear or IA3Linear layers (nor LoRA embedding / convolution, "
            "LoHa, LoKr, VeRA, OFT or AdaLoRA ones) to save"
        )
    merged = [n for n, m in adapters.layers.items() if m.merged]
    if merged:
        problems.append(f"layers {merged[:5]} are merged; unmerge_adapters(model) before saving")
    if bias not in (None, "none", "lora_only", "all"):
        problems.append(f"bias must be 'none', 'lora_only' or 'all', got {bias!r}")
    return problems


def _base_bias(layer: Layer) -> torch.Tensor | None:
    bias = getattr(layer.base, "bias", None)  # an embedding has none
    return bias if isinstance(bias, torch.Tensor) else None


def _adapter_parameter_ids(layers: Iterable[nn.Module], saves: Iterable[nn.Module]) -> set[int]:
    return {id(p) for m in (*layers, *saves) for p in m.parameters()}


def _infer_bias(model: nn.Module, layers: Mapping[str, Layer], saves: Iterable[nn.Module]) -> str:
    """Which PEFT ``bias`` mode the trainable flags show: adapted layers' base biases are frozen
    by the adapter layers, so a trainable one means somebody asked for it (``adapt_model``
    with ``bias="lora_only"`` or ``"all"``)."""
    trained = [b.requires_grad for m in layers.values() if (b := _base_bias(m)) is not None]
    if not any(trained):
        return "none"
    if not all(trained):
        raise PeftFormatError(
            "some adapted layers' biases are trainable and some are not; PEFT saves all or none "
            "of them: pass bias='none', 'lora_only' or 'all' to save_peft"
        )
    skip = _adapter_parameter_ids(layers.values(), saves)
    rest = [(n, p) for n, p in model.named_parameters() if id(p) not in skip]
    others_bias = [p.requires_grad for n, p in rest if n.rsplit(".", 1)[-1] == "bias"]
    others_weight = [p.requires_grad for n, p in rest if n.rsplit(".", 1)[-1] != "bias"]
    if others_bias and all(others_bias) and not any(others_weight):
        return "all"
    return "lora_only"


def _whole_tensors(model: nn.Module, adapters: _Adapters, bias: str) -> dict[str, torch.Tensor]:
    """What is saved in full: the ``modules_to_save`` copies and the biases ``bias`` trains."""
    tensors: dict[str, torch.Tensor] = {}
    for n, m in adapters.saves.items():
        tensors.update({f"{n}.{k}": v for k, v in m.trained_module.state_dict().items()})
    layers = adapters.layers
    if bias != "none":
        tensors.update(
            {f"{n}.base_layer.bias": b for n, m in layers.items() if (b := _base_bias(m)) is not None}
        )
    if bias == "all":
        skip = _adapter_parameter_ids(layers.values(), adapters.saves.values())
        tensors.update(
            {
                n: p
                for n, p in model.named_parameters()
                if n.rsplit(".", 1)[-1] == "bias" and id(p) not in skip
            }
        )
    return tensors


def _save_wrapper(
    model: PromptTuningModel | PrefixTuningModel,
    path: str | os.PathLike[str],
    base_model_name_or_path: str | None,
    task_type: str | None,
) -> Path:
    """A virtual-token wrapper: prompt / P-tuning (.peft_prompt) or prefix tuning (.peft_prefix)."""
    if isinstance(model, PromptTuningModel):
        return save_prompt_peft(model, path, base_model_name_or_path, task_type)
    return save_prefix_peft(model, path, base_model_name_or_path, task_type)


def save_peft(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    base_model_name_or_path: str | None = None,
    task_type: str | None = None,
    bias: str | None = None,
    adapter_name: str | None = None,
    path_initial_model_for_weight_conversion: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the adapters of a peft_zoo model (LoRA, DoRA, IA³, LoHa, LoKr, VeRA, OFT or AdaLoRA
    layers, plus ``ModulesToSave`` copies) as a PEFT adapter directory, which
    ``peft.PeftModel.from_pretrained(base, path)`` loads into the unadapted base. Returns it.

    The config names the adapted modules exactly (``target_modules`` lists their full
    names), takes the most common rank and alpha as ``r`` / ``lora_alpha`` and writes every
    other module's into ``rank_pattern`` / ``alpha_pattern`` under an anchored key, so each
    layer gets exactly its own scale (a mix of rsLoRA and plain layers is written as plain
    LoRA with ``alpha * sqrt(r)`` for the rsLoRA ones). ``bias`` (PEFT's ``"none"``,
    ``"lora_only"``, ``"all"``) defaults to what the trainable flags show.

    Fused LoRA and QLoRA are written as the plain LoRA they carry, DoRA with ``use_dora``; the
    other methods with PEFT's keys and fields (:mod:`.peft_methods`: settings that decide
    shapes must agree across layers). PiSSA / OLoRA layers fit the residual base the model holds;
    ``path_initial_model_for_weight_conversion`` (the adapter saved right after the
    initialisation) writes them as PEFT does with that argument, rank-``2r`` plain LoRA on the
    ORIGINAL weights (:mod:`.peft_pissa`).

    Named adapters (:func:`~peft_zoo.add_adapter`): ``adapter_name="x"`` writes adapter ``x``
    alone into ``path`` (``PeftModel.from_pretrained(base, path)`` or
    ``peft_model.load_adapter(path, "x")`` load it); without ``adapter_name`` every adapter is
    written in PEFT's ``save_pretrained`` layout: ``"default"`` in ``path``, each other one in
    ``path/<name>``.

    Raises :class:`PeftFormatError` (nothing written) for what PEFT cannot express: two
    methods in one model, DoRA and plain LoRA in one model (PEFT's ``use_dora`` is per
    adapter), ``BatchedLoRALinear``, any other adapter kind, merged layers.
    """
    no_bias = bias in (None, "none") and adapter_name is None
    if isinstance(model, (PromptTuningModel, PrefixTuningModel)) and no_bias:
        return _save_wrapper(model, path, base_model_name_or_path, task_type)
    if adapter_name is not None and not isinstance(adapter_name, str):
        raise TypeError(f"save_peft: adapter_name must be a str or None, got {type(adapter_name).__name__}")
    held = held_adapter_names(model)
    if adapter_name is not None and adapter_name not in held:
        raise PeftFormatError(
            f"save_peft: no adapter named {adapter_name!r} in the model"
            + (f"; it holds {held}" if held else " (it holds no named adapters: omit adapter_name)")
            + ". Nothing was written."
        )
    todo: list[str | None] = [adapter_name] if adapter_name is not None or not held else list(held)
    # Everything is checked and built before anything is written.
    initial = path_initial_model_for_weight_conversion
    parts = [
        (name, _prepare(model, name, bias, (task_type, base_model_name_or_path), initial)) for name in todo
    ]
    for name, (config, tensors) in parts:
        where = Path(path) if adapter_name is not None or name in (None, "default") else Path(path) / name
        write_adapter_dir(where, config, tensors)
    return Path(path)


def _prepare(
    model: nn.Module,
    adapter_name: str | None,
    bias: str | None,
    names: tuple[str | None, str | None],  # task_type, base_model_name_or_path
    initial: str | os.PathLike[str] | None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The config and the file's tensors for one adapter (the model's only one, or a named one)."""
    adapters = _sort_adapters(model, adapter_name)
    problems = _refusals(adapters, bias)
    if problems:
        what = f" (adapter {adapter_name!r})" if adapter_name is not None else ""
        raise PeftFormatError(f"save_peft{what}: " + "; ".join(problems) + ". Nothing was written.")
    layers = adapters.layers
    bias = _infer_bias(model, layers, adapters.saves.values()) if bias is None else bias
    if initial is not None:
        if not adapters.lora:
            raise PeftFormatError(
                "save_peft: path_initial_model_for_weight_conversion converts LoRA layers only"
            )
        adapters.lora = dict(convert_pissa_layers(adapters.lora, initial))
    top: dict[str, torch.Tensor] = {}
    if adapters.lora:
        peft_type, (fields, tensors) = "LORA", lora_part(adapters.lora, bias)
    elif adapters.ia3:
        peft_type, (fields, tensors) = "IA3", ia3_part(adapters.ia3, bias)
    else:
        peft_type, layers = next(iter(adapters.methods.items()))
        fields, tensors, top = method_part(METHODS[peft_type], layers, bias)
    config = common_fields(peft_type, *names)
    config.update(
        target_modules=list(layers),
        exclude_modules=None,
        modules_to_save=list(adapters.saves) or None,
        fan_in_fan_out=any(getattr(m, "fan_in_fan_out", False) for m in layers.values()),
        inference_mode=True,
    )
    config.update(fields)
    for absent in METHODS[peft_type].absent if peft_type in METHODS else ():
        config.pop(absent, None)  # PEFT's config of this type has no such field
    tensors.update(_whole_tensors(model, adapters, bias))
    return config, {PEFT_PREFIX + k: v for k, v in tensors.items()} | top
