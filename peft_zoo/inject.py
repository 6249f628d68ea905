"""Put adapters into an existing model, and control which parameters train.

Injection replaces ``nn.Linear`` modules *in place*, addressed by the dotted paths that
``model.named_modules()`` prints (``"encoder.0.attn.q"``). Every injector validates all
names first and only then swaps modules, so a call that raises leaves the model exactly
as it was (``requires_grad`` flags included). Each returns ``(model, params)`` where
``params`` are exactly the new adapter parameters, ready for an optimizer.

Freezing follows Hugging Face PEFT's ``inject_adapter_in_model``: after a successful call
every parameter of ``model`` that is not an adapter parameter has ``requires_grad=False``,
so on a model without earlier adapters ``params`` is exactly the trainable set. Adapter
parameters that were already in the model (an earlier injection, a ``modules_to_save``
copy) keep their flags. To train more, use ``modules_to_save`` / ``bias`` in a config, or
:func:`mark_only_adapters_trainable` with ``bias=``, or set ``requires_grad`` yourself.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

from torch import nn

from ._base import AdapterModule
from ._checks import check_module, check_positive_int, is_conv1d
from .adapters import AdapterBlock, BottleneckAdapter
from .ia3 import IA3Linear
from .lora import LoRALinear

__all__ = [
    "InjectionError",
    "adapter_named_parameters",
    "build_lora_adapter_model",
    "count_parameters",
    "inject_ia3",
    "inject_lora",
    "inject_lora_recursive",
    "mark_only_adapters_trainable",
    "print_trainable_parameters",
    "trainable_parameters",
]


class InjectionError(ValueError):
    """A module name or module type that an injector cannot use. Nothing was changed."""


# ----------------------------------------------------------------------------- helpers


def _as_name_list(names: str | Iterable[str], what: str) -> list[str]:
    # A bare string would otherwise be iterated character by character.
    if isinstance(names, str):
        return [names]
    if names is None or isinstance(names, (bytes, Mapping)) or not isinstance(names, Iterable):
        raise TypeError(
            f"{what} must be a module name (str) or a list of module names, got {names!r} "
            f"of type {type(names).__name__}"
        )
    names = list(names)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"{what} must be module names (str), got {bad!r}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InjectionError(f"{what} lists these names more than once: {dupes}")
    return names


def _adapter_owned(model: nn.Module) -> dict[int, str]:
    """``id(module) -> adapter path`` for every module that lives inside an adapter module
    (the frozen base of a LoRA layer, the projections of a bottleneck adapter)."""
    owned: dict[int, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, AdapterModule):
            for sub in module.modules():
                if sub is not module:
                    owned.setdefault(id(sub), name)
    return owned


def _parent_of(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    return model.get_submodule(parent_name), attr


def _unknown_name_message(name: str, all_names: Sequence[str]) -> str:
    suffix_hits = [n for n in all_names if n.endswith("." + name)]
    close = suffix_hits or difflib.get_close_matches(name, all_names, n=5, cutoff=0.5)
    hint = f"; did you mean {close[:5]}?" if close else ""
    return f"no module named {name!r} in the model{hint}"


def _validate_targets(
    model: nn.Module, names: list[str], method: str, allow_conv1d: bool = True
) -> list[nn.Linear]:
    """Resolve every name to an injectable ``nn.Linear`` (or GPT-2 ``Conv1D``) or raise one
    error listing all problems."""
    if not names:
        raise InjectionError(f"{method}: no module names given")
    all_names = [n for n, _ in model.named_modules() if n]
    owned = _adapter_owned(model)
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
        elif not (isinstance(module, nn.Linear) or (allow_conv1d and is_conv1d(module))):
            kinds = "an nn.Linear or a Conv1D" if allow_conv1d else "an nn.Linear"
            problems.append(f"{name!r} is a {type(module).__name__}, not {kinds}")
        elif isinstance(_parent_of(model, name)[0], nn.MultiheadAttention):
            problems.append(
                f"{name!r} is used inside nn.MultiheadAttention, which reads its weight "
                "directly; it cannot be wrapped"
            )
        else:
            targets.append(module)
    if problems:
        raise InjectionError(f"{method}: " + "; ".join(problems) + ". The model was not changed.")
    return targets


def _replace_linears(
    model: nn.Module,
    names: list[str],
    build: Callable[[str, nn.Linear], AdapterModule],
    method: str,
    allow_conv1d: bool = True,
) -> list[nn.Parameter]:
    """Swap each named Linear for ``build(name, linear)``, all or nothing; return the new
    adapter parameters in name order."""
    targets = _validate_targets(model, names, method, allow_conv1d)
    flags = {id(p): (p, p.requires_grad) for t in targets for p in t.parameters()}
    try:
        # Build every replacement before installing any, so a failing build changes nothing.
        built = [build(name, linear) for name, linear in zip(names, targets, strict=True)]
    except Exception:
        for p, flag in flags.values():
            p.requires_grad_(flag)
        raise
    for name, module in zip(names, built, strict=True):
        parent, attr = _parent_of(model, name)
        setattr(parent, attr, module)
    params = [p for module in built for _, p in module.adapter_named_parameters()]
    _freeze_non_adapters(model)
    for p in params:
        p.requires_grad_(True)
    return params


def _freeze_non_adapters(model: nn.Module) -> None:
    """Set ``requires_grad=False`` on every parameter of ``model`` that is not an adapter
    parameter (what every injector does last). Adapter parameters keep their flags."""
    adapter_ids = {id(p) for _, p in adapter_named_parameters(model)}
    for p in model.parameters():
        if id(p) not in adapter_ids:
            p.requires_grad_(False)


def _matches(name: str, pattern: str) -> bool:
    """``pattern`` names this module, a module it sits in, or ends its dotted path."""
    return (
        name == pattern
        or name.endswith("." + pattern)
        or name.startswith(pattern + ".")
        or f".{pattern}." in f".{name}."
    )


# ----------------------------------------------------------------------------- injectors


def inject_lora(
    model: nn.Module,
    linear_names: str | Iterable[str],
    rank: int,
    alpha: float | None = None,
    **lora_kwargs: object,
) -> tuple[nn.Module, list[nn.Parameter]]:
    """Replace each named ``nn.Linear`` with a :class:`LoRALinear` and freeze everything else.

    Args:
        model: modified in place and returned.
        linear_names: dotted module paths as ``model.named_modules()`` prints them.
        rank, alpha, lora_kwargs: passed to :class:`LoRALinear` (``dropout``, ``rslora``).

    Returns:
        ``(model, params)``: ``params`` is ``[A_1, B_1, A_2, B_2, ...]`` in name order. Every
        parameter of ``model`` that is not an adapter parameter is now frozen (as PEFT's
        ``inject_adapter_in_model`` does), so without earlier adapters ``params`` is exactly
        the set with ``requires_grad=True``; earlier adapters keep their flags.

    Raises:
        InjectionError: a name is unknown (close matches are listed), is not an
            ``nn.Linear``, is already adapted, or appears twice. The model is unchanged.
        TypeError: ``linear_names`` is not a name or a list of names (``None``, a number).
        TypeError, ValueError: a bad ``rank``, ``alpha`` or ``dropout`` (from
            :class:`LoRALinear`'s checks). The model is unchanged.
    """
    check_module(model, "inject_lora: model")
    names = _as_name_list(linear_names, "linear_names")
    params = _replace_linears(
        model, names, lambda _n, lin: LoRALinear(lin, rank, alpha, **lora_kwargs), "inject_lora"
    )
    return model, params


def inject_lora_recursive(
    model: nn.Module,
    rank: int,
    alpha: float | None = None,
    *,
    exclude: str | Iterable[str] = (),
    **lora_kwargs: object,
) -> tuple[nn.Module, list[nn.Parameter]]:
    """Wrap every ``nn.Linear`` below ``model`` in a :class:`LoRALinear`.

    Never the root, never a Linear that already belongs to an adapter (a LoRA layer's base,
    a bottleneck adapter's projections), never one inside ``nn.MultiheadAttention``. Names
    in ``exclude`` (exact, dotted suffix, or a containing module such as ``"head"``) are
    skipped. Returns ``(model, params)`` like :func:`inject_lora`, and freezes every
    non-adapter parameter the same way.
    """
    check_module(model, "inject_lora_recursive: model")
    if isinstance(model, nn.Linear):
        raise InjectionError(
            "inject_lora_recursive never replaces the root module; wrap a lone Linear with "
            "LoRALinear(linear, rank) instead"
        )
    excluded = _as_name_list(exclude, "exclude")
    owned = _adapter_owned(model)
    names, skipped = [], []
    for name, module in model.named_modules():
        if not name or not (isinstance(module, nn.Linear) or is_conv1d(module)) or id(module) in owned:
            continue
        if any(_matches(name, p) for p in excluded):
            continue
        if isinstance(_parent_of(model, name)[0], nn.MultiheadAttention):
            skipped.append(name)
            continue
        names.append(name)
    if skipped:
        warnings.warn(
            f"inject_lora_recursive skipped {skipped}: nn.MultiheadAttention reads these "
            "weights directly, so they cannot be wrapped",
            stacklevel=2,
        )
    if not names:
        raise InjectionError(
            "inject_lora_recursive found no nn.Linear to wrap (all are excluded or already "
            "adapted). The model was not changed."
        )
    return inject_lora(model, names, rank, alpha, **lora_kwargs)


def inject_ia3(
    model: nn.Module,
    linear_names: str | Iterable[str],
    *,
    feedforward_names: str | Iterable[str] = (),
) -> tuple[nn.Module, list[nn.Parameter]]:
    """Replace each named ``nn.Linear`` with an :class:`IA3Linear` scaling its output.

    Names in ``feedforward_names`` get the feed-forward form, which scales the layer's
    *input* (the IA³ paper applies it to the feed-forward down projection). Returns
    ``(model, [scale, ...])`` in name order; like :func:`inject_lora` it freezes every
    non-adapter parameter of ``model`` and raises (changing nothing) on a bad name.
    """
    check_module(model, "inject_ia3: model")
    names = _as_name_list(linear_names, "linear_names")
    ff = _as_name_list(feedforward_names, "feedforward_names")
    all_names = _as_name_list(names + ff, "linear_names + feedforward_names")
    ff_set = set(ff)
    params = _replace_linears(
        model, all_names, lambda n, lin: IA3Linear(lin, feedforward=n in ff_set), "inject_ia3"
    )
    return model, params


def _infer_d_model(model: nn.Module) -> int | None:
    for attr in ("d_model", "hidden_size", "embed_dim"):
        value = getattr(model, attr, None) or getattr(getattr(model, "config", None), attr, None)
        if isinstance(value, int):
            return value
    first = next((m for m in model.modules() if isinstance(m, nn.Linear)), None)
    return None if first is None else first.in_features


def build_lora_adapter_model(
    base: nn.Module,
    lora_names: str | Iterable[str],
    rank: int,
    alpha: float | None = None,
    adapter_bottleneck: int | None = None,
    *,
    d_model: int | None = None,
    **lora_kwargs: object,
) -> tuple[nn.Module, list[nn.Parameter]]:
    """LoRA on the named linears of ``base``, optionally a serial adapter around all of it.

    With ``adapter_bottleneck`` the result is ``AdapterBlock(base, BottleneckAdapter(d_model,
    adapter_bottleneck))``, i.e. ``h = x + base(x); out = h + delta(h)``; ``base`` must map
    ``(..., d_model) -> (..., d_model)``. ``d_model`` defaults to ``base.d_model``, then the
    ``in_features`` of its first Linear. Everything except the LoRA and adapter weights is
    frozen. Returns ``(model, params)`` with exactly the trainable parameters (LoRA first).

    All or nothing: every argument is checked and the adapter is built before LoRA is
    injected, so a call that raises (a bad name, an adapter too large to allocate) leaves
    ``base`` exactly as it was, ``requires_grad`` flags included.
    """
    check_module(base, "build_lora_adapter_model: base")
    names = _as_name_list(lora_names, "lora_names")
    if adapter_bottleneck is not None:
        check_positive_int(adapter_bottleneck, "adapter_bottleneck")
        d_model = _infer_d_model(base) if d_model is None else check_positive_int(d_model, "d_model")
        if d_model is None:
            raise InjectionError("build_lora_adapter_model: pass d_model; it cannot be inferred")
    if not names and adapter_bottleneck is None:
        raise InjectionError("build_lora_adapter_model: no LoRA targets and no adapter: nothing to train")
    adapter = None if adapter_bottleneck is None else _build_adapter(base, d_model, adapter_bottleneck)
    params: list[nn.Parameter] = []
    if names:
        base, params = inject_lora(base, names, rank, alpha, **lora_kwargs)  # checks, then mutates
    model: nn.Module = base
    if adapter is not None:
        model = AdapterBlock(base, adapter)
        params = params + list(adapter.parameters())
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return model, params


def _build_adapter(base: nn.Module, d_model: int, bottleneck: int) -> BottleneckAdapter:
    """The serial adapter of :func:`build_lora_adapter_model`, built before anything changes."""
    ref = next(base.parameters(), None)
    factory = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    try:
        return BottleneckAdapter(d_model, bottleneck, **factory)
    except (RuntimeError, MemoryError) as err:  # e.g. the allocator refuses the size
        raise MemoryError(
            f"build_lora_adapter_model: cannot allocate BottleneckAdapter(d_model={d_model}, "
            f"adapter_bottleneck={bottleneck}) ({err}). The model was not changed."
        ) from err


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
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1] == "bias":
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
