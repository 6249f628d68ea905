"""The steps behind :mod:`peft_zoo.serving.named`: argument checks, turning ``adapt_model``'s
plain layers into named ones, and building a new adapter on the base layers.

A new adapter is built by :func:`~peft_zoo.adapt_model` (or :func:`~peft_zoo.load_peft`)
itself, so every config option carries over: :func:`build_on_bases` puts each named layer's
base back in its place for the duration, lets the builder make plain ``LoRALinear`` /
``IA3Linear`` layers, and moves their very parameters into named layers under the new name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from ..bottleneck import BnAdapter
from ..core.base import outermost_adapters
from ..core.checks import check_module, short_repr
from ..ia3 import IA3Linear
from ..injection.bottleneck_placement import bottleneck_sites
from ..injection.surgery import parent_of
from ..lora import LoRALinear
from .named_bottleneck import NamedBnSite, adopt_bottleneck
from .named_ia3 import NamedIA3Linear
from .named_layer import BASE_NAME, NamedAdapterLayer, NamedLoRALinear

__all__ = [
    "DEFAULT_NAME",
    "PLAIN",
    "NamedLayer",
    "adopt_plain",
    "build_on_bases",
    "check_model",
    "check_name",
    "check_names_known",
    "kind_of",
    "names_arg",
    "plain_layers",
]

DEFAULT_NAME = "default"  # the adapter adapt_model / load_peft built, as PEFT's get_peft_model names it
PLAIN = (LoRALinear, IA3Linear)  # the layers adapt_model builds that named layers can hold
NamedLayer = NamedLoRALinear | NamedIA3Linear


def plain_layers(model: nn.Module) -> dict[str, LoRALinear | IA3Linear]:
    """The plain ``LoRALinear`` / ``IA3Linear`` layers of a model that holds no named layers."""
    found = outermost_adapters(model)
    if any(isinstance(m, NamedAdapterLayer) for m in found.values()):
        return {}
    return {n: m for n, m in found.items() if isinstance(m, PLAIN) and type(m) in PLAIN}


def kind_of(model: nn.Module) -> str | None:
    """``"LORA"``, ``"IA3"`` or ``"BOTTLENECK"``: the method of the adapters in ``model`` (``None``: none yet)."""
    for m in outermost_adapters(model).values():
        if isinstance(m, NamedLoRALinear | LoRALinear):
            return "LORA"
        if isinstance(m, NamedIA3Linear | IA3Linear):
            return "IA3"
        if isinstance(m, NamedBnSite | BnAdapter):
            return "BOTTLENECK"
    return None


def check_model(model: object, what: str) -> nn.Module:
    """The model, if named adapters can go into it; else a ValueError naming what is in the way."""
    model = check_module(model, f"{what}: model")
    found = outermost_adapters(model)
    if "" in found:
        raise ValueError(f"{what}: the model itself is an adapter layer; pass the model that holds it")
    in_sites = {f"{p}.adapter" for p in bottleneck_sites(model)}  # adapt_model's bottleneck adapters
    others = {
        n: type(m).__name__
        for n, m in found.items()
        if type(m) not in PLAIN
        and not isinstance(m, NamedLoRALinear | NamedIA3Linear | NamedBnSite)
        and n not in in_sites
    }
    if others:
        raise ValueError(
            f"{what}: named adapters work on LoRA, IA3 and bottleneck (AdapterHub site) layers; the model "
            f"also holds {dict(list(others.items())[:4])}"
        )
    plain = [n for n, m in found.items() if type(m) in PLAIN or n in in_sites]
    if plain and len(plain) < len(found):
        raise ValueError(f"{what}: the model mixes plain adapter layers {plain[:3]} with named layers")
    kinds = {type(m) for m in found.values()}
    if len(kinds) > 1:
        raise ValueError(f"{what}: the model mixes adapter kinds {sorted(k.__name__ for k in kinds)}")
    merged = [n for n in plain if getattr(found[n], "merged", False)]
    if merged:
        raise ValueError(f"{what}: layers {merged[:4]} are merged; unmerge_adapters(model) first")
    return model


def check_name(name: object, what: str) -> str:
    """``name`` if it can name an adapter: a non-empty ``str`` without ``.``, not ``"__base__"``."""
    if not isinstance(name, str):
        raise TypeError(
            f"{what}: an adapter name must be a str, got {short_repr(name)} of type {type(name).__name__}"
        )
    if not name or "." in name or name == BASE_NAME:
        raise ValueError(
            f"{what}: adapter name {name!r} is not allowed (it must be non-empty, hold no '.', and "
            f"not be {BASE_NAME!r}, which means the base model)"
        )
    return name


def names_arg(names: object, what: str) -> list[str]:
    """``names`` as a list of str: one ``str`` or a non-empty list/tuple of ``str``."""
    if isinstance(names, str):
        return [names]
    if not isinstance(names, (list, tuple)) or not names:
        raise TypeError(
            f"{what}: adapter names must be a str or a non-empty list of str, got {short_repr(names)}"
        )
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(
            f"{what}: adapter names must be str, got {short_repr(bad[0])} of type {type(bad[0]).__name__}"
        )
    return list(names)


def _put(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, attr = parent_of(model, path)
    setattr(parent, attr, module)


def _named_for(layer: LoRALinear | IA3Linear, existing: NamedLayer | None) -> NamedLayer:
    """``existing`` or a new named layer of ``layer``'s kind around its base."""
    if isinstance(layer, IA3Linear):
        held = existing or NamedIA3Linear(
            layer.base, feedforward=layer.feedforward, fan_in_fan_out=layer.fan_in_fan_out
        )
        if not isinstance(held, NamedIA3Linear) or held.feedforward != layer.feedforward:
            raise ValueError(
                "an IA3 layer scales its inputs or its outputs for every adapter (fixed by the first, "
                "as in PEFT); the new adapter's feedforward_modules disagree"
            )
        return held
    held = existing or NamedLoRALinear(layer.base, fan_in_fan_out=layer.fan_in_fan_out)
    if not isinstance(held, NamedLoRALinear):
        raise ValueError("cannot combine adapters with different peft types (LoRA and IA3) in one model")
    return held


def _hold(named: NamedLayer, name: str, layer: LoRALinear | IA3Linear) -> None:
    if isinstance(named, NamedIA3Linear) and isinstance(layer, IA3Linear):
        named.add_ia3(name, layer)
    elif isinstance(named, NamedLoRALinear) and isinstance(layer, LoRALinear):
        named.add_lora(name, layer)


def adopt_plain(model: nn.Module) -> None:
    """Turn the plain layers ``adapt_model`` built into named layers holding ``"default"``
    (active), keeping their very parameters; bottleneck sites likewise (:mod:`.named_bottleneck`)."""
    adopt_bottleneck(model, DEFAULT_NAME)
    for path, layer in plain_layers(model).items():
        named = _named_for(layer, None)
        _hold(named, DEFAULT_NAME, layer)
        named.set_active([DEFAULT_NAME])
        _put(model, path, named)


def build_on_bases(model: nn.Module, name: str, build: Callable[[], object]) -> list[nn.Parameter]:
    """Run ``build`` (``adapt_model`` / ``load_peft``) on the model with every named layer's base
    in its place, then move the plain layers it made into named layers as ``name``; return the
    new parameters. All or nothing: a failure leaves the model (and every ``requires_grad``) as
    it was. The first adapter of a model is active and trainable, a later one neither (PEFT)."""
    plain = plain_layers(model)
    adopt_plain(model)  # cannot fail: checked by check_model; undone below on failure
    layers: dict[str, NamedLayer] = {
        p: m for p, m in model.named_modules() if isinstance(m, NamedLoRALinear | NamedIA3Linear)
    }
    was_empty = not any(layer.adapter_names for layer in layers.values())
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for path, layer in layers.items():
        _put(model, path, layer.base)
    built: dict[str, LoRALinear | IA3Linear] = {}
    try:
        build()
        built = {n: m for n, m in model.named_modules() if isinstance(m, PLAIN) and type(m) in PLAIN}
        if not built:
            raise ValueError(f"adapter {name!r}: nothing was built")
        holders = {path: _named_for(m, layers.get(path)) for path, m in built.items()}  # checks kinds
    except BaseException:
        for path, made in built.items():  # a layer the build made where no named layer was
            _put(model, path, made.base)
        for path, layer in layers.items():
            _put(model, path, plain.get(path, layer))
        for p, flag in flags:
            p.requires_grad_(flag)
        raise
    active = [name] if was_empty else list(next(iter(layers.values())).active)
    for path, holder in holders.items():
        _hold(holder, name, built[path])
        layers[path] = holder
    for path, layer in layers.items():
        layer.set_active(active)
        _put(model, path, layer)
    for p, flag in flags:
        p.requires_grad_(flag)
    new = [p for layer in layers.values() for p in layer.parameters_of(name)]
    for p in new:
        p.requires_grad_(was_empty)
    return new


def check_names_known(known: Sequence[str], names: Sequence[str], what: str) -> None:
    """Raise a ValueError naming the first of ``names`` not in ``known``."""
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"{what}: no adapter named {unknown[0]!r} in the model; it holds {list(known)}")
