"""Calling the learner's injector (challenges 04, 05, 09, 10): the library's own injectors
closed, exceptions turned into explanations, refusals that must leave the model untouched,
and the ``(model, params)`` pair it returns.

Every failure message says what was drawn, what was expected, what came back and which
classic mistake that pattern usually means.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn

from torch import nn

import peft_zoo
import peft_zoo.injection.inject
import peft_zoo.injection.surgery
from peft_zoo.testing import assert_model_unchanged, explain, fingerprint

# ----------------------------------------------------------------------------- calling learner code


@contextlib.contextmanager
def library_injectors_closed(exercise: str) -> Iterator[None]:
    """While active, peft_zoo's own injectors refuse to run: the exercise is to write one."""
    injectors = peft_zoo.injection.inject  # the module whose replace_linears inject_* call
    original = injectors.replace_linears

    def refuse(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError(
            f"{exercise} called peft_zoo's own injector (peft_zoo.inject_lora / inject_ia3): "
            "write the injection yourself, using only the layer class"
        )

    injectors.replace_linears = refuse
    try:
        yield
    finally:
        injectors.replace_linears = original


@contextlib.contextmanager
def library_function_closed(name: str, exercise: str) -> Iterator[None]:
    """While active, ``peft_zoo.<name>`` (and the same name in the injection modules) refuses to run."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{exercise} called peft_zoo.{name}: write it yourself")

    homes = (peft_zoo, peft_zoo.injection.inject, peft_zoo.injection.surgery)
    owners = [m for m in homes if hasattr(m, name)]
    originals = [getattr(m, name) for m in owners]
    for m in owners:
        setattr(m, name, refuse)
    try:
        yield
    finally:
        for m, original in zip(owners, originals, strict=True):
            setattr(m, name, original)


def call(
    fn: Callable[..., Any],
    *args: Any,
    what: str,
    drawn: Mapping[str, Any],
    hints: Mapping[type[BaseException], str] | None = None,
) -> Any:
    """Call learner code. ``NotImplementedError`` passes through (the harness turns it into
    "not implemented yet"); any other exception becomes a failure that explains itself, with
    the hint of the first matching exception type in ``hints``."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise
    except Exception as err:
        hint = next((h for kind, h in (hints or {}).items() if isinstance(err, kind)), None)
        raise AssertionError(
            explain(
                f"{what} raised {type(err).__name__} on valid input",
                drawn=drawn,
                got=f"{type(err).__name__}: {err}",
                hint=hint,
            )
        ) from None


def _changes(model: nn.Module, before: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Module paths whose module was replaced and parameters whose ``requires_grad`` changed
    since ``before`` (a :func:`peft_zoo.testing.fingerprint`). Safe on a model that now
    contains itself (``state_dict`` would recurse forever there)."""
    ids = {n: id(m) for n, m in model.named_modules()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    replaced = sorted(n for n, i in before["ids"].items() if ids.get(n) != i)
    flags = sorted(n for n, f in before["requires_grad"].items() if grads.get(n) != f)
    return replaced, flags


def check_refused(
    fn: Callable[..., Any],
    *args: Any,
    model: nn.Module,
    bad: str | None,
    what: str,
    drawn: Mapping[str, Any],
    not_raised_hint: str,
    reason: str = "for a bad name",
) -> None:
    """``fn(*args)`` must raise ``ValueError`` (mentioning ``bad`` unless it is None) and leave
    ``model`` exactly as it was: same modules (same objects), same tensors, same
    ``requires_grad`` flags."""
    wanted = "ValueError" if bad is None else f"ValueError naming {bad!r}"
    before = fingerprint(model)
    try:
        fn(*args)
    except NotImplementedError:
        raise
    except ValueError as err:
        message = str(err)
    except Exception as err:
        raise AssertionError(
            explain(
                f"{what} must raise ValueError {reason}",
                drawn=drawn,
                expected=wanted,
                got=f"{type(err).__name__}: {err}",
                hint=_wrong_error_hint(err),
            )
        ) from None
    else:
        _not_raised(model, before, what=what, reason=reason, wanted=wanted, drawn=drawn, hint=not_raised_hint)
    if bad is not None and bad not in message:
        raise AssertionError(
            explain(
                "the ValueError should name the problem",
                drawn=drawn,
                expected=f"a message that contains {bad!r}",
                got=repr(message),
                hint='say which name is wrong and why, e.g. f"no module named {name!r}"',
            )
        )
    _check_untouched(model, before, what=what, drawn=drawn)


def _wrong_error_hint(err: Exception) -> str | None:
    """What an exception other than ``ValueError`` from a refusing injector usually means."""
    if isinstance(err, AttributeError):
        return "model.get_submodule raises AttributeError for a missing path: catch it and raise ValueError"
    if isinstance(err, TypeError):
        return (
            "the layer class refused a module with a TypeError, probably in the middle of the injection: "
            "check isinstance(module, nn.Linear) yourself, before replacing anything, and raise ValueError"
        )
    return None


def _not_raised(
    model: nn.Module,
    before: Mapping[str, Any],
    *,
    what: str,
    reason: str,
    wanted: str,
    drawn: Mapping[str, Any],
    hint: str,
) -> NoReturn:
    """The injector accepted what it must refuse: say so, and whether it changed the model."""
    replaced, flags = _changes(model, before)
    got = "no exception"
    if replaced or flags:
        got += f", and the model was changed (modules replaced: {replaced}, requires_grad changed: {flags})"
    raise AssertionError(
        explain(f"{what} must raise ValueError {reason}", drawn=drawn, expected=wanted, got=got, hint=hint)
    )


def _check_untouched(
    model: nn.Module, before: Mapping[str, Any], *, what: str, drawn: Mapping[str, Any]
) -> None:
    """After the refusal the model must be exactly as ``before``: modules, flags and tensors."""
    replaced, flags = _changes(model, before)
    if replaced or flags:
        got = f"replaced before the error: {replaced}" if replaced else f"requires_grad changed: {flags}"
        raise AssertionError(
            explain(
                f"{what} raised, but only after changing the model",
                drawn=drawn,
                expected="the model exactly as it was (validate every name before replacing any)",
                got=got,
                hint="no validation before mutating: the names before the bad one were already injected, "
                "leaving a half-injected model"
                if replaced
                else "building the layer freezes the Linear it wraps, and freezing the model changes every flag: "
                "build layers and freeze only after every name is checked",
            )
        )
    try:
        assert_model_unchanged(model, before, what=f"{what} raised, but the model was changed first")
    except RecursionError:
        raise AssertionError(
            explain(
                f"{what} raised, but the model now contains itself", drawn=drawn, hint="was the root wrapped?"
            )
        ) from None


NESTED_HINT = (
    "every drawn name exists: model.named_modules() lists it. getattr(model, 'encoder.0') does "
    "not follow dots; resolve names with model.get_submodule(name)"
)


def unpack(
    out: Any, model: nn.Module, *, what: str, drawn: Mapping[str, Any], in_place: bool = True
) -> tuple[nn.Module, list[Any]]:
    """Check that ``out`` is ``(model, params)`` (with the same model object when ``in_place``)."""
    if not (isinstance(out, tuple) and len(out) == 2):
        raise AssertionError(
            explain(
                f"{what} must return a pair (model, params)",
                drawn=drawn,
                got=f"{type(out).__name__}: {out!r:.150}",
                hint="end with `return model, params`",
            )
        )
    returned, params = out
    if in_place and returned is not model:
        raise AssertionError(
            explain(
                f"{what} must modify the model in place and return that same object",
                drawn=drawn,
                got=f"a different {type(returned).__name__} object",
                hint="replace layers with setattr on their parent; do not deepcopy or rebuild the model",
            )
        )
    if not isinstance(params, list):
        raise AssertionError(
            explain(
                f"{what}: params must be a list",
                drawn=drawn,
                got=type(params).__name__,
                hint="a generator is used up after one pass; build a list",
            )
        )
    return returned, params
