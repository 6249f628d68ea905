"""Module surgery: the find, validate, replace and freeze steps every injector shares, and the
trainability helpers.

An injector (``inject_lora``, ``inject_ia3``, ``adapt_model``, ``inject_qlora``,
``inject_batched_lora``) is a thin layer over these functions:

1. :func:`as_name_list` turns the caller's names into a checked list;
2. :func:`validate_targets` resolves every dotted path (as ``named_modules()`` prints it) to
   an ``nn.Linear`` or GPT-2 ``Conv1D`` that no adapter owns yet (:func:`adapter_owned`), or
   raises one :class:`InjectionError` listing every problem;
3. :func:`replace_linears` builds every replacement before installing any (all or nothing,
   each at :func:`parent_of` the name) and then freezes every parameter that is not an
   adapter parameter (:func:`freeze_non_adapters`), as Hugging Face PEFT's
   ``inject_adapter_in_model`` does.

The trainability helpers act on any model that holds adapters, injected or built by hand:
:func:`adapter_named_parameters`, :func:`mark_only_adapters_trainable` (with PEFT's ``bias``
modes), :func:`trainable_parameters`, :func:`count_parameters` and
:func:`print_trainable_parameters` (PEFT's line).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from typing import cast

from torch import nn

from ..core.base import AdapterModule
from ..core.checks import check_name_list, is_conv1d

__all__ = [
    "InjectionError",
    "adapter_named_parameters",
    "adapter_owned",
    "as_name_list",
    "count_parameters",
    "freeze_non_adapters",
    "mark_only_adapters_trainable",
    "parent_of",
    "print_trainable_parameters",
    "replace_linears",
    "trainable_parameters",
    "validate_targets",
]


class InjectionError(ValueError):
    """A module name or module type that an injector cannot use. Nothing was changed."""


# ----------------------------------------------------------------------------- find and replace


def as_name_list(names: str | Iterable[str], what: str) -> list[str]:
    """``names`` as a checked list: one name (a ``str``) or an iterable of distinct ``str``.
    Anything else (``None``, bytes, a dict, a number) raises ``TypeError`` naming ``what``;
    a name listed twice raises :class:`InjectionError`."""
    return check_name_list(names, what, InjectionError)


def adapter_owned(model: nn.Module) -> dict[int, str]:
    """``id(module) -> adapter path`` for every module that lives inside an adapter module
    (the frozen base of a LoRA layer, the projections of a bottleneck adapter)."""
    owned: dict[int, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, AdapterModule):
            for sub in module.modules():
                if sub is not module:
                    owned.setdefault(id(sub), name)
    return owned


def parent_of(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    return model.get_submodule(parent_name), attr


def _unknown_name_message(name: str, all_names: Sequence[str]) -> str:
    suffix_hits = [n for n in all_names if n.endswith("." + name)]
    close = suffix_hits or difflib.get_close_matches(name, all_names, n=5, cutoff=0.5)
    hint = f"; did you mean {close[:5]}?" if close else ""
    return f"no module named {name!r} in the model{hint}"


def validate_targets(
    model: nn.Module,
    names: list[str],
    method: str,
    allow_conv1d: bool = True,
    extra_types: tuple[type[nn.Module], ...] = (),
) -> list[nn.Linear]:
    """Resolve every name to an injectable ``nn.Linear`` (or GPT-2 ``Conv1D``, or one of
    ``extra_types``) or raise one error listing all problems."""
    if not names:
        raise InjectionError(f"{method}: no module names given")
    all_names = [n for n, _ in model.named_modules() if n]
    owned = adapter_owned(model)
    problems: list[str] = []
    targets: list[nn.Linear] = []
    for name in names:
        if name == "":
            problems.append("'' names the root module, which cannot be replaced in place")
            continue
        try:
            module = model.get_submodule(name)
        except AttributeError:
            problems.append(_unknown_name_message(name, all_names))
            continue
        if isinstance(module, AdapterModule):
            problems.append(f"{name!r} already is a {type(module).__name__}: it was injected before")
        elif id(module) in owned:
            problems.append(
                f"{name!r} belongs to the adapter layer {owned[id(module)]!r} (for example its "
                "frozen base); target the adapter layer's own name only once"
            )
        elif not (
            isinstance(module, nn.Linear)
            or (allow_conv1d and is_conv1d(module))
            or (extra_types and isinstance(module, extra_types))
        ):
            kinds = "an nn.Linear or a Conv1D" if allow_conv1d else "an nn.Linear"
            kinds += "".join(f" or an nn.{t.__name__}" for t in extra_types)
            problems.append(f"{name!r} is a {type(module).__name__}, not {kinds}")
        elif isinstance(parent_of(model, name)[0], nn.MultiheadAttention):
            problems.append(
                f"{name!r} is used inside nn.MultiheadAttention, which reads its weight "
                "directly; it cannot be wrapped"
            )
        else:
            # An nn.Linear, or a Conv1D: the same (weight, bias) layer stored transposed, which
            # every adapter reads through core.checks.linear_features.
            targets.append(cast(nn.Linear, module))
    if problems:
        raise InjectionError(f"{method}: " + "; ".join(problems) + ". The model was not changed.")
    return targets


def replace_linears(
    model: nn.Module,
    names: list[str],
    build: Callable[[str, nn.Linear], AdapterModule],
    method: str,
    allow_conv1d: bool = True,
    extra_types: tuple[type[nn.Module], ...] = (),
) -> list[nn.Parameter]:
    """Swap each named Linear (or ``extra_types`` module) for ``build(name, module)``, all or
    nothing; return the new adapter parameters in name order."""
    targets = validate_targets(model, names, method, allow_conv1d, extra_types)
    flags = {id(p): (p, p.requires_grad) for t in targets for p in t.parameters()}
    try:
        # Build every replacement before installing any, so a failing build changes nothing.
        built = [build(name, linear) for name, linear in zip(names, targets, strict=True)]
    except Exception:
        for p, flag in flags.values():
            p.requires_grad_(flag)
        raise
    for name, module in zip(names, built, strict=True):
        parent, attr = parent_of(model, name)
        setattr(parent, attr, module)
    params = [p for module in built for _, p in module.adapter_named_parameters()]
    freeze_non_adapters(model)
    for p in params:
        p.requires_grad_(True)
    return params


def freeze_non_adapters(model: nn.Module) -> None:
    """Set ``requires_grad=False`` on every parameter of ``model`` that is not an adapter
    parameter (what every injector does last). Adapter parameters keep their flags."""
    adapter_ids = {id(p) for _, p in adapter_named_parameters(model)}
    for p in model.parameters():
        if id(p) not in adapter_ids:
            p.requires_grad_(False)


# ----------------------------------------------------------------------------- trainability


def adapter_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(qualified_name, parameter)`` for every adapter parameter in ``model``, each once,
    in module order. The names are the keys ``model.state_dict()`` uses."""
    seen: set[int] = set()
    out = []
    for mod_name, module in model.named_modules():
        if isinstance(module, AdapterModule):
            for name, p in module.adapter_named_parameters(mod_name):
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append((name, p))
    return out


_BIAS_MODES = ("none", "all", "adapter_only")


def mark_only_adapters_trainable(model: nn.Module, bias: str = "none") -> list[nn.Parameter]:
    """Freeze everything except adapter parameters; return the trainable parameters.

    ``bias``: ``"none"`` (freeze every bias), ``"all"`` (train every bias in the model), or
    ``"adapter_only"`` (train the biases of adapted layers, e.g. a LoRA layer's base bias;
    ``"lora_only"`` is accepted as PEFT's name for it).
    """
    mode = "adapter_only" if bias == "lora_only" else bias
    if mode not in _BIAS_MODES:
        raise ValueError(f"bias must be one of {_BIAS_MODES}, got {bias!r}")
    adapter_ids = {id(p) for _, p in adapter_named_parameters(model)}
    if not adapter_ids:
        raise ValueError("mark_only_adapters_trainable: the model contains no adapter modules")
    for p in model.parameters():
        p.requires_grad_(id(p) in adapter_ids)
    if mode == "all":
        kept = {id(p) for m in model.modules() if isinstance(m, AdapterModule) for p in m.never_trained()}
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1] == "bias" and id(p) not in kept:
                p.requires_grad_(True)
    elif mode == "adapter_only":
        for module in model.modules():
            # The wrapped layer's bias: nn.Linear, Conv1D, or QLoRA's quantised NF4Linear.
            inner_bias = getattr(getattr(module, "base", None), "bias", None)
            if isinstance(module, AdapterModule) and isinstance(inner_bias, nn.Parameter):
                inner_bias.requires_grad_(True)
    return trainable_parameters(model)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters with ``requires_grad=True``, each once (tied weights are not repeated)."""
    return [p for p in model.parameters() if p.requires_grad]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` element counts, each parameter counted once."""
    total = trainable = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def print_trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """Print ``trainable params: N || all params: M || trainable%: P`` (Hugging Face PEFT's
    line, so the numbers can be compared directly) and return ``(N, M)``."""
    trainable, total = count_parameters(model)
    pct = 100 * trainable / total if total else 0.0
    print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {pct:.4f}")
    return trainable, total
