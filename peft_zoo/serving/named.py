"""Named adapters on a real model, with Hugging Face PEFT's semantics (``PeftModel.add_adapter``,
``set_adapter``, ``delete_adapter``, ``disable_adapter``, ``load_adapter`` and the
``adapter_names=`` mixed batch)::

    model, _ = pz.adapt_model(model, pz.LoraConfig(rank=8, target_modules=["query", "value"]))
    pz.add_adapter(model, "sql", pz.LoraConfig(rank=16, target_modules=["query"]))   # inactive
    pz.set_adapter(model, "sql")                    # "sql" runs and trains, "default" is frozen
    with pz.disable_adapters(model):                # the base model
        ...
    model.eval()
    with pz.use_adapter_names(model, ["sql", "__base__", "default"]):   # one adapter per sample
        out = model(input_ids)                      # input_ids: (3, T)
    pz.save_peft(model, "out/sql", adapter_name="sql")      # PEFT's format, one adapter
    pz.load_peft_adapter(model, "out/other", "other")            # a PEFT adapter, by name

The adapters live in :class:`~peft_zoo.serving.named_layer.NamedLoRALinear` layers (one
``lora_A`` / ``lora_B`` per name, as PEFT's ``LoraLayer``) or
:class:`~peft_zoo.serving.named_ia3.NamedIA3Linear` layers (one IA³ vector per name; one
method per model, as in PEFT). A model adapted by :func:`~peft_zoo.adapt_model` holds plain
``LoRALinear`` / ``IA3Linear`` layers; the first call here turns them into named layers holding
adapter ``"default"`` (PEFT's name for the adapter ``get_peft_model`` creates). Every option of
:class:`~peft_zoo.LoraConfig` but DoRA, ``target_parts`` and ``modules_to_save`` works per
adapter (rank, alpha, rsLoRA, dropout, patterns, GPT-2 ``Conv1D`` targets), and every option of
:class:`~peft_zoo.IA3Config` but ``modules_to_save``: each new adapter is built by
``adapt_model`` itself on the base layers, then moved into the named layers
(:mod:`.named_build`).

Semantics follow PEFT 0.21: a new adapter is not active and is frozen; :func:`set_adapter`
makes the named adapter(s) active and trainable and freezes the others; deleting the active
adapter activates the first remaining one (sorted, with a warning); deleting the last one
leaves no active adapter. Every function checks its arguments first and changes nothing
when it raises.

Bottleneck adapters (AdapterHub's, ``SeqBnConfig`` / ``DoubleSeqBnConfig`` / ``ParBnConfig`` /
``BottleneckConfig``) live in :class:`~peft_zoo.serving.named_bottleneck.NamedBnSite` sites,
with AdapterHub's ``add_adapter`` / ``set_active_adapters`` / ``train_adapter`` /
``delete_adapter`` semantics, one active at a time; :func:`load_adapterhub_adapter` loads an
AdapterHub file by name (``load_adapter(..., load_as=)``) and :func:`~peft_zoo.save_adapterhub`
saves one by name.

Another adapter kind joins through :data:`ADDERS` (config type -> function building it) and a
layer class that follows :class:`~peft_zoo.serving.named_layer.NamedAdapterLayer`.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torch import nn

from ..core.checks import check_module, short_repr
from ..injection.adapt import adapt_model
from ..injection.bottleneck_config import BottleneckConfig, DoubleSeqBnConfig, ParBnConfig, SeqBnConfig
from ..injection.bottleneck_placement import bottleneck_sites
from ..injection.config import IA3Config, LoraConfig
from ..interop.adapterhub import load_adapterhub, read_adapterhub
from ..interop.peft_read import load_peft, read_peft
from .named_bottleneck import build_bottleneck_on_bases
from .named_build import (
    DEFAULT_NAME,
    adopt_plain,
    build_on_bases,
    check_model,
    check_name,
    check_names_known,
    kind_of,
    names_arg,
    plain_layers,
)
from .named_layer import BASE_NAME, NamedAdapterLayer, mixed_batch

__all__ = [
    "ADDERS",
    "DEFAULT_NAME",
    "active_adapters",
    "add_adapter",
    "delete_adapter",
    "disable_adapters",
    "list_adapters",
    "load_adapterhub_adapter",
    "load_peft_adapter",
    "named_adapter_layers",
    "set_adapter",
    "use_adapter_names",
]

Adder = Callable[[nn.Module, str, Any], list[nn.Parameter]]


def named_adapter_layers(model: nn.Module) -> dict[str, NamedAdapterLayer]:
    """``path -> layer`` for every layer of ``model`` holding named adapters, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, NamedAdapterLayer)}


def list_adapters(model: nn.Module) -> list[str]:
    """Every adapter name in ``model`` (PEFT's ``peft_config`` keys), in module order; a model
    adapted by ``adapt_model`` (plain ``LoRALinear`` layers) holds ``["default"]``."""
    check_module(model, "list_adapters: model")
    if plain_layers(model) or bottleneck_sites(model):
        return [DEFAULT_NAME]
    names: dict[str, None] = {}
    for layer in named_adapter_layers(model).values():
        names.update(dict.fromkeys(layer.adapter_names))
    return list(names)


def active_adapters(model: nn.Module) -> list[str]:
    """The active adapter names (PEFT's ``model.active_adapters``)."""
    check_module(model, "active_adapters: model")
    if plain_layers(model) or bottleneck_sites(model):
        return [DEFAULT_NAME]
    layers = list(named_adapter_layers(model).values())
    return list(layers[0].active) if layers else []


# ----------------------------------------------------------------------------- adders


def _add_lora(model: nn.Module, name: str, config: LoraConfig) -> list[nn.Parameter]:
    config.validate()
    unsupported = [
        f for f, on in (("use_dora", config.use_dora), ("target_parts", config.target_parts),
                        ("modules_to_save", config.modules_to_save)) if on
    ]  # fmt: skip
    if unsupported:
        raise ValueError(f"add_adapter: {unsupported} are not supported for named LoRA adapters")
    return build_on_bases(model, name, lambda: adapt_model(model, config))


def _add_ia3(model: nn.Module, name: str, config: IA3Config) -> list[nn.Parameter]:
    config.validate()
    if config.modules_to_save:
        raise ValueError("add_adapter: modules_to_save is not supported for named IA3 adapters")
    return build_on_bases(model, name, lambda: adapt_model(model, config))


def _add_bottleneck(model: nn.Module, name: str, config: BottleneckConfig) -> list[nn.Parameter]:
    config.validate()
    return build_bottleneck_on_bases(model, name, lambda: adapt_model(model, config), default=DEFAULT_NAME)


_BN_CONFIGS = (BottleneckConfig, SeqBnConfig, DoubleSeqBnConfig, ParBnConfig)
ADDERS: dict[type, Adder] = {
    LoraConfig: _add_lora,
    IA3Config: _add_ia3,
    **{t: _add_bottleneck for t in _BN_CONFIGS},
}
# PEFT's peft_type of each config ("BOTTLENECK": AdapterHub's bottleneck adapters)
_KINDS: dict[type, str] = {LoraConfig: "LORA", IA3Config: "IA3", **{t: "BOTTLENECK" for t in _BN_CONFIGS}}


# ----------------------------------------------------------------------------- the API


def add_adapter(model: nn.Module, adapter_name: str, config: Any) -> list[nn.Parameter]:
    """Add adapter ``adapter_name`` built from ``config`` (a :class:`~peft_zoo.LoraConfig`,
    :class:`~peft_zoo.IA3Config` or bottleneck config; one kind per model, as in PEFT);
    return its parameters. Like PEFT's ``add_adapter`` the new adapter is neither active nor
    trainable (call :func:`set_adapter`), except in a model holding no adapter yet, where it
    becomes the active, trainable one (as ``get_peft_model(model, config, adapter_name)``)."""
    model = check_model(model, "add_adapter")
    name = check_name(adapter_name, "add_adapter")
    if name in list_adapters(model):
        raise ValueError(f"add_adapter: an adapter named {name!r} already exists; pick another name")
    adder = ADDERS.get(type(config))
    if adder is None:
        raise TypeError(
            f"add_adapter: config must be one of {[t.__name__ for t in ADDERS]}, got {type(config).__name__}"
        )
    kind, new_kind = kind_of(model), _KINDS[type(config)]
    if kind is not None and kind != new_kind and (list_adapters(model) or "BOTTLENECK" in (kind, new_kind)):
        raise ValueError(
            f"add_adapter: cannot combine adapters with different peft types: the model holds {kind}, "
            f"the config is {_KINDS[type(config)]} (as in PEFT)"
        )
    return adder(model, name, config)


def set_adapter(model: nn.Module, adapter_name: str | Sequence[str], *, inference_mode: bool = False) -> None:
    """Make ``adapter_name`` (one name or a list: their updates add up) the active adapter(s);
    they become trainable (frozen with ``inference_mode=True``) and every other adapter frozen."""
    model = check_model(model, "set_adapter")
    names = names_arg(adapter_name, "set_adapter")
    if not isinstance(inference_mode, bool):
        raise TypeError(f"set_adapter: inference_mode must be a bool, got {short_repr(inference_mode)}")
    check_names_known(list_adapters(model), names, "set_adapter")
    if len(names) > 1 and kind_of(model) == "BOTTLENECK":
        raise ValueError(
            f"set_adapter: bottleneck adapters run one at a time, got {names} (AdapterHub's Stack / "
            "Parallel compositions are not supported)"
        )
    adopt_plain(model)
    _activate(model, names, inference_mode)


def _activate(model: nn.Module, names: list[str], inference_mode: bool) -> None:
    for layer in named_adapter_layers(model).values():
        layer.set_active(names)
        for held in layer.adapter_names:
            for p in layer.parameters_of(held):
                p.requires_grad_(held in names and not inference_mode)


def delete_adapter(model: nn.Module, adapter_name: str) -> None:
    """Remove adapter ``adapter_name`` from every layer. If it was active, the other active
    adapters stay; if none is left, the first remaining name (sorted) becomes active, with a
    warning, as in PEFT; deleting the last adapter leaves the layers with none (the base model)."""
    model = check_model(model, "delete_adapter")
    name = check_name(adapter_name, "delete_adapter")
    check_names_known(list_adapters(model), [name], "delete_adapter")
    adopt_plain(model)
    active = active_adapters(model)
    for layer in named_adapter_layers(model).values():
        layer.remove(name)
    if name not in active:
        return
    rest = [n for n in active if n != name]
    if not rest and list_adapters(model):
        rest = [sorted(list_adapters(model))[0]]
        warnings.warn(
            f"Adapter {name} was active which is now deleted. Setting active adapter to {rest[0]}.",
            stacklevel=2,
        )
    if rest:
        _activate(model, rest, inference_mode=False)


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[None]:
    """Run the base model inside the block (PEFT's ``with model.disable_adapter():``)."""
    model = check_model(model, "disable_adapters")
    adopt_plain(model)
    layers = list(named_adapter_layers(model).values())
    before = [layer.disabled for layer in layers]
    for layer in layers:
        layer.disabled = True
    try:
        yield
    finally:
        for layer, flag in zip(layers, before, strict=True):
            layer.disabled = flag


@contextlib.contextmanager
def use_adapter_names(model: nn.Module, adapter_names: Sequence[str]) -> Iterator[None]:
    """Run sample ``b`` of every forward inside through adapter ``adapter_names[b]``
    (``"__base__"``: the base model), PEFT's ``model(..., adapter_names=[...])``. Inference
    only, as in PEFT: the model must be in eval mode. The batch size must equal
    ``len(adapter_names)`` (checked by the first adapted layer)."""
    model = check_model(model, "use_adapter_names")
    if isinstance(adapter_names, str):
        raise TypeError("use_adapter_names: adapter_names must be a list of str, one per sample, not a str")
    names = names_arg(adapter_names, "use_adapter_names")
    check_names_known(list_adapters(model), [n for n in names if n != BASE_NAME], "use_adapter_names")
    if model.training:
        raise ValueError("use_adapter_names: cannot route adapter_names while the model is in training mode")
    adopt_plain(model)
    with mixed_batch(named_adapter_layers(model).values(), names):
        yield


def load_peft_adapter(
    model: nn.Module, path: str | os.PathLike[str], adapter_name: str, *, is_trainable: bool = False
) -> list[nn.Parameter]:
    """Load the PEFT LoRA adapter in directory ``path`` (``peft_model.save_pretrained`` or
    :func:`~peft_zoo.save_peft`) as adapter ``adapter_name`` (PEFT's ``load_adapter``); not
    activated (unless it is the model's first adapter), frozen unless ``is_trainable``.
    Returns its parameters. PEFT's own files, checks and all-or-nothing load: :func:`~peft_zoo.load_peft`."""
    model = check_model(model, "load_peft_adapter")
    name = check_name(adapter_name, "load_peft_adapter")
    if name in list_adapters(model):
        raise ValueError(f"load_peft_adapter: an adapter named {name!r} already exists; pick another name")
    if not isinstance(is_trainable, bool):
        raise TypeError(f"load_peft_adapter: is_trainable must be a bool, got {short_repr(is_trainable)}")
    data, _ = read_peft(path)
    kind, held = data.get("peft_type"), kind_of(model)
    if kind not in ("LORA", "IA3") or data.get("use_dora") or data.get("modules_to_save"):
        raise ValueError(
            f"load_peft_adapter: {path} holds a {kind} adapter"
            + (" with DoRA" if data.get("use_dora") else "")
            + (" with modules_to_save" if data.get("modules_to_save") else "")
            + "; named adapters are plain LoRA or IA3 (use load_peft on the plain model)"
        )
    if list_adapters(model) and held != kind:
        raise ValueError(f"load_peft_adapter: the model holds {held} adapters, {path} a {kind} one")
    params = build_on_bases(model, name, lambda: load_peft(model, path))
    for p in params:
        p.requires_grad_(is_trainable)  # PeftModel.load_adapter: frozen unless is_trainable
    return params


def load_adapterhub_adapter(
    model: nn.Module, path: str | os.PathLike[str], adapter_name: str, *, is_trainable: bool = False
) -> list[nn.Parameter]:
    """Load the AdapterHub bottleneck adapter in directory ``path`` (``model.save_adapter`` in
    ``adapters`` or :func:`~peft_zoo.save_adapterhub`) as adapter ``adapter_name``, whatever name
    the file holds (AdapterHub's ``load_adapter(path, load_as=...)``); not activated (unless it
    is the model's first adapter), frozen unless ``is_trainable``. Returns its parameters."""
    model = check_model(model, "load_adapterhub_adapter")
    name = check_name(adapter_name, "load_adapterhub_adapter")
    if name in list_adapters(model):
        raise ValueError(
            f"load_adapterhub_adapter: an adapter named {name!r} already exists; pick another name"
        )
    if not isinstance(is_trainable, bool):
        raise TypeError(
            f"load_adapterhub_adapter: is_trainable must be a bool, got {short_repr(is_trainable)}"
        )
    read_adapterhub(path)  # its own errors first, before the model changes
    held = kind_of(model)
    if list_adapters(model) and held != "BOTTLENECK":
        raise ValueError(f"load_adapterhub_adapter: the model holds {held} adapters, {path} a bottleneck one")
    params = build_bottleneck_on_bases(
        model, name, lambda: load_adapterhub(model, path), default=DEFAULT_NAME
    )
    for p in params:
        p.requires_grad_(is_trainable)
    return params
