"""Choose which modules to adapt, by name, with the same rules as Hugging Face PEFT.

A module is addressed by its dotted path in ``model.named_modules()``
(``"bert.encoder.layer.3.attention.self.query"``). The rules, chosen so that one config
means the same modules here and in PEFT (``peft.tuners.tuners_utils.check_target_module_exists``):

- ``target_modules`` as a **list**: a name matches when it equals an entry or ends with
  ``"." + entry`` (``"query"`` matches every layer's query projection).
- ``target_modules`` as a **string**: a regular expression that must match the *whole* name
  (``r".*\\.layer\\.1\\d\\..*(query|value)"``), or ``"all-linear"``: every linear layer except
  the output head.
- ``exclude_modules``: the same two forms; an excluded name never matches.
- ``layers_to_transform``: an int or a list of ints; with a *list* of ``target_modules``, only
  modules whose layer index is in it match. The index is the first number that follows a
  ``layers_pattern`` component (``"layer"``, ``"h"``, ``"layers"``...), or, without a
  pattern, the first ``.<name>.<number>.`` in the path. As in PEFT, a name listed exactly in
  ``target_modules`` and a regex ``target_modules`` ignore ``layers_to_transform``.

Every regex here (a string ``target_modules`` / ``exclude_modules``, ``layers_pattern``) is
matched with a time bound (:mod:`peft_zoo.core.regex`): a pattern that backtracks exponentially,
such as ``"(a|aa)+$"``, raises a ``ValueError`` naming the argument instead of hanging, and
:func:`find_targets` checks the type of every argument first (``check_spec``, ``check_layers``,
``check_layers_pattern``).
"""

from __future__ import annotations

import difflib
import numbers
import re
from collections.abc import Collection, Iterable, Sequence
from typing import Literal, overload

from torch import nn

from ..core.checks import check_int_in, check_module, check_names, is_conv1d, short_repr
from ..core.regex import check_pattern, fullmatch, match, time_budget
from .surgery import InjectionError, adapter_owned

ALL_LINEAR = "all-linear"
# Names that usually hold a model's output layer; "all-linear" never adapts them.
HEAD_NAMES = ("lm_head", "head", "classifier", "score", "cls", "output_layer")

TargetSpec = str | Collection[str]  # a regex, or module names (a list, tuple or set)
MAX_LAYER_INDEX = 1 << 20  # layers_to_transform entries above this are a mistake, not a model
MATCH_BUDGET = 2.0  # seconds all regex matches of one find_targets / load_peft call may take


@overload
def check_spec(value: object, what: str, *, optional: Literal[False] = False) -> TargetSpec: ...
@overload
def check_spec(value: object, what: str, *, optional: bool) -> TargetSpec | None: ...
def check_spec(value: object, what: str, *, optional: bool = False) -> TargetSpec | None:
    """Return ``value`` if it is a valid target spec for field ``what``: a regex (a ``str`` that
    compiles) or a list / tuple / set of non-empty module names; ``None`` when ``optional``.
    Anything else raises a ``TypeError`` / ``ValueError`` naming ``what``."""
    if value is None and optional:
        return None
    if isinstance(value, str):
        return check_pattern(value, what)
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise TypeError(
            f"{what} must be a list of module names or a regex string, got {short_repr(value)} "
            f"of type {type(value).__name__}"
        )
    check_names(value, what)
    return value


def check_layers(value: object, what: str = "layers_to_transform") -> int | Collection[int] | None:
    """``None``, a layer index or a list / tuple / set of them, each an ``int`` in
    ``[0, MAX_LAYER_INDEX]``; anything else raises naming ``what``."""
    if value is None:
        return None
    if isinstance(value, (list, tuple, set, frozenset, range)):
        for index in value:
            check_int_in(index, f"{what} entry", 0, MAX_LAYER_INDEX)
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{what} must be a layer index (int) or a list of them, got {short_repr(value)} "
            f"of type {type(value).__name__}"
        )
    return check_int_in(value, what, 0, MAX_LAYER_INDEX)


def _layer_regex(pattern: str) -> str:
    return rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\."


def check_layers_pattern(value: object, what: str = "layers_pattern") -> str | Sequence[str] | None:
    """``None``, a regex or a list / tuple of them (the path component before the layer
    index, placed into PEFT's layer regex); anything else raises naming ``what``."""
    if value is None:
        return None
    if not isinstance(value, (str, list, tuple)):
        raise TypeError(
            f"{what} must be a str or a list of str, got {short_repr(value)} of type {type(value).__name__}"
        )
    for pattern in [value] if isinstance(value, str) else value:
        check_pattern(pattern, what)
        check_pattern(_layer_regex(pattern), what)
    return value


def _excluded(key: str, exclude_modules: TargetSpec | None) -> bool:
    if not exclude_modules:
        return False
    if isinstance(exclude_modules, str):
        return fullmatch(exclude_modules, key, "exclude_modules") is not None
    return key in exclude_modules or any(key.endswith(f".{e}") for e in exclude_modules)


def layer_index(key: str, layers_pattern: str | Sequence[str] | None = None) -> int | None:
    """The transformer-layer index in a module path, or ``None`` when it has none.

    ``layer_index("encoder.layer.11.attention.self.query") == 11``. With ``layers_pattern``
    (``"layer"`` or a list of candidates) the index is the number right after that component;
    the *first* match counts, so an expert index deeper in the path is never taken for it.
    """
    if not layers_pattern:
        plain = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)  # a fixed pattern: stdlib re
        return int(plain.group("idx")) if plain else None
    patterns = [layers_pattern] if isinstance(layers_pattern, str) else list(layers_pattern)
    for pattern in patterns:
        found = match(_layer_regex(pattern), key, "layers_pattern")
        if found is not None:
            return int(found.group("idx"))
    return None


def target_matches(
    key: str,
    target_modules: TargetSpec,
    *,
    exclude_modules: TargetSpec | None = None,
    layers_to_transform: int | Iterable[int] | None = None,
    layers_pattern: str | Sequence[str] | None = None,
) -> bool:
    """Does the module path ``key`` match? (PEFT's rules; see the module docstring.)"""
    if _excluded(key, exclude_modules):
        return False
    if isinstance(target_modules, str):
        return fullmatch(target_modules, key, "target_modules") is not None
    if key in target_modules:
        return True
    if not any(key.endswith(f".{t}") for t in target_modules):
        return False
    if layers_to_transform is None:
        return True
    wanted = {layers_to_transform} if isinstance(layers_to_transform, int) else set(layers_to_transform)
    if not wanted and not isinstance(layers_to_transform, int):
        return True  # an empty list means "no restriction", as in PEFT
    index = layer_index(key, layers_pattern)
    return index is not None and index in wanted


def output_head_names(model: nn.Module) -> set[str]:
    """Names of the model's output layer(s), which ``"all-linear"`` leaves alone: the module
    ``model.get_output_embeddings()`` returns (``transformers`` models), else top-level
    modules with a usual head name."""
    names: set[str] = set()
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if callable(get_out) else None
    if out is not None:
        names.update(n for n, m in model.named_modules() if m is out)
    if not names:
        names.update(n for n in HEAD_NAMES if n in dict(model.named_children()))
    return names


def _target_hint(target: str, names: Sequence[str]) -> str:
    """Why ``target`` selected nothing, with close names: targets are usually the last
    component(s) of a path (``"qeury"`` -> ``"query"``), so compare with those first."""
    hits = [n for n in names if n == target or n.endswith("." + target)]
    if hits:
        return f"{target!r} names {hits[:5]}, but layers_to_transform / exclude_modules rule them out"
    depth = target.count(".") + 1
    suffixes = sorted({".".join(n.split(".")[-depth:]) for n in names})
    close = difflib.get_close_matches(target, suffixes, n=5, cutoff=0.6) or difflib.get_close_matches(
        target, names, n=5, cutoff=0.5
    )
    hint = f"; did you mean {close}?" if close else ""
    return f"no module named {target!r} in the model{hint}"


def _is_target_type(
    module: nn.Module, types: tuple[type[nn.Module], ...] | None, extra: tuple[type[nn.Module], ...] = ()
) -> bool:
    if types is None:
        return (
            isinstance(module, nn.Linear) or is_conv1d(module) or (bool(extra) and isinstance(module, extra))
        )
    return isinstance(module, types)


def find_targets(
    model: nn.Module,
    target_modules: TargetSpec,
    *,
    exclude_modules: TargetSpec | None = None,
    layers_to_transform: int | Iterable[int] | None = None,
    layers_pattern: str | Sequence[str] | None = None,
    types: tuple[type[nn.Module], ...] | None = None,
    extra_types: tuple[type[nn.Module], ...] = (),
) -> list[str]:
    """The dotted names of the ``types`` modules (default: ``nn.Linear`` and GPT-2's ``Conv1D``,
    what PEFT's LoRA adapts) in ``model`` that the rules select, in
    ``named_modules()`` order. Modules inside an already-injected adapter layer (its frozen
    base) are never returned.

    Raises ``InjectionError`` when nothing matches, listing close names, so a typo is never
    a silent no-op. ``"all-linear"`` selects every module of ``types`` except the output head
    and anything inside it. ``extra_types`` widens the default (LoRA also adapts embeddings and
    convolutions); ``"all-linear"`` ignores it.
    """
    _check_find_args(model, target_modules, exclude_modules, layers_to_transform, layers_pattern, types)
    if layers_to_transform is not None and isinstance(target_modules, str):
        raise InjectionError(
            "layers_to_transform only works with a list of target_modules; with a regex, write "
            "the layer numbers into the pattern"
        )
    with time_budget(MATCH_BUDGET):
        return _find(
            model, target_modules, exclude_modules, layers_to_transform, layers_pattern, types, extra_types
        )


def _check_find_args(
    model: object,
    target_modules: object,
    exclude_modules: object,
    layers_to_transform: object,
    layers_pattern: object,
    types: object,
) -> None:
    """Refuse, naming the argument, anything :func:`find_targets` cannot use."""
    check_module(model, "model")
    if types is not None and not (
        isinstance(types, tuple)
        and types
        and all(isinstance(t, type) and issubclass(t, nn.Module) for t in types)
    ):
        raise TypeError(f"types must be a non-empty tuple of nn.Module classes, got {short_repr(types)}")
    check_spec(target_modules, "target_modules")
    check_spec(exclude_modules, "exclude_modules", optional=True)
    check_layers(layers_to_transform)
    check_layers_pattern(layers_pattern)


def _find(
    model: nn.Module,
    target_modules: TargetSpec,
    exclude_modules: TargetSpec | None,
    layers_to_transform: int | Iterable[int] | None,
    layers_pattern: str | Sequence[str] | None,
    types: tuple[type[nn.Module], ...] | None,
    extra_types: tuple[type[nn.Module], ...] = (),
) -> list[str]:
    inside_adapter = adapter_owned(model)
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if name and _is_target_type(module, types, extra_types) and id(module) not in inside_adapter
    ]
    if isinstance(target_modules, str) and target_modules.lower() == ALL_LINEAR:
        heads = output_head_names(model)
        return [
            name
            for name, module in candidates
            if _is_target_type(module, types)
            and not any(name == h or name.startswith(h + ".") for h in heads)
            and not _excluded(name, exclude_modules)
        ]
    chosen = [
        name
        for name, _ in candidates
        if target_matches(
            name,
            target_modules,
            exclude_modules=exclude_modules,
            layers_to_transform=layers_to_transform,
            layers_pattern=layers_pattern,
        )
    ]
    if not chosen:
        all_names = [n for n, _ in candidates]
        wanted = [target_modules] if isinstance(target_modules, str) else list(target_modules)
        hints = "; ".join(_target_hint(t, all_names) for t in wanted[:5])
        kinds = (
            "/".join(["Linear", "Conv1D", *(t.__name__ for t in extra_types)])
            if types is None
            else "/".join(t.__name__ for t in types)
        )
        raise InjectionError(
            f"no {kinds} module matches target_modules={target_modules!r}"
            + (
                f" with layers_to_transform={layers_to_transform!r}"
                if layers_to_transform is not None
                else ""
            )
            + (f" and exclude_modules={exclude_modules!r}" if exclude_modules else "")
            + f" ({hints})"
        )
    return chosen
