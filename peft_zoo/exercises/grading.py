"""Plumbing shared by the graders in ``practice/<track>/test_exNN_*.py``.

- :func:`load_module` imports a learner's file in isolation: a syntax error, an import
  error or an infinite loop at import time becomes one clear failure of that challenge.
- :func:`learner_code` wraps a (hypothesis) test body: an unfinished stub stops the test at
  once with "not implemented yet", and a call that never returns is cut off after a bounded
  time. Both raise ``BaseException`` subclasses on purpose: hypothesis does not try to
  shrink those, so the learner gets one short message instead of a long search.
- :func:`diagnose` recognises the classic wrong answers: when the learner's output equals
  what a known bug would produce, the failure names that bug, and only a bug that can be
  the cause (one that also gives the right answer here is ignored; coinciding bugs are
  told apart on a larger example, else all listed).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar, cast

import torch

F = TypeVar("F", bound=Callable[..., Any])

# Time limits for learner code; PEFT_ZOO_GRADER_TIMEOUT (seconds) overrides both.
DEFAULT_CALL_SECONDS = float(os.environ.get("PEFT_ZOO_GRADER_TIMEOUT", 20.0))  # one example
DEFAULT_IMPORT_SECONDS = float(os.environ.get("PEFT_ZOO_GRADER_TIMEOUT", 20.0))  # one import


class NotImplementedYet(BaseException):
    """The learner's code still raises ``NotImplementedError`` (an untouched stub)."""


class LearnerTimeout(BaseException):
    """The learner's code did not return within the time limit (an infinite loop?)."""


class LearnerLoadError(BaseException):
    """The learner's file cannot be imported (syntax error, import error, timeout)."""


@contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise :class:`LearnerTimeout` in the main thread if the block runs past ``seconds``.

    Uses ``SIGALRM``; where that is unavailable (Windows, a worker thread) the block runs
    unguarded and pytest-timeout remains the backstop.
    """
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable or seconds <= 0:
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise LearnerTimeout(
            f"{what} did not finish within {seconds:g} s: look for an infinite loop or a very "
            "expensive operation"
        )

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _not_implemented_message(err: NotImplementedError) -> str:
    text = str(err) or "a function still raises NotImplementedError"
    return f"not implemented yet: {text}. Fill in its TODO, then grade again."


def learner_code(seconds: float = DEFAULT_CALL_SECONDS) -> Callable[[F], F]:
    """Decorate a test body that calls learner code (put it *under* ``@given``)."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                with time_limit(seconds, "your code"):
                    return fn(*args, **kwargs)
            except NotImplementedError as err:
                raise NotImplementedYet(_not_implemented_message(err)) from None

        return cast(F, wrapper)  # functools.wraps keeps the signature, which mypy cannot see

    return decorate


def run_learner(
    fn: Callable[[], Any],
    what: str,
    drawn: Mapping[str, Any],
    hint: str | None,
    errors: tuple[type[Exception], ...] = (RuntimeError, IndexError),
) -> Any:
    """``fn()`` (learner code); one of ``errors`` (a shape mismatch, a wrong index...) becomes
    a failure that names ``what``, shows the drawn example and says where to look (``hint``).
    ``NotImplementedError`` passes through: an unfinished stub is reported as such."""
    from peft_zoo.testing import explain

    try:
        return fn()
    except NotImplementedError:
        raise
    except errors as err:
        raise AssertionError(
            explain(f"{what} raised {type(err).__name__}: {err}", drawn=dict(drawn), hint=hint)
        ) from None


def load_module(path: Path, tag: str, seconds: float = DEFAULT_IMPORT_SECONDS) -> ModuleType:
    """Import the Python file at ``path`` under a private module name and return it.

    Raises :class:`LearnerLoadError` with a message that says what went wrong and where.
    """
    if not path.is_file():
        raise LearnerLoadError(f"{path} does not exist (run `peft-zoo reset` to restore the stub)")
    name = f"_peft_zoo_graded_{tag}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise LearnerLoadError(f"{path} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        with time_limit(seconds, f"importing {path.name}"):
            spec.loader.exec_module(module)
    except SyntaxError as err:
        sys.modules.pop(name, None)
        raise LearnerLoadError(
            f"{path.name} has a syntax error at line {err.lineno}: {err.msg}\n    {(err.text or '').rstrip()}"
        ) from None
    except NotImplementedError as err:
        sys.modules.pop(name, None)
        raise NotImplementedYet(_not_implemented_message(err)) from None
    except LearnerTimeout as err:
        sys.modules.pop(name, None)
        raise LearnerLoadError(str(err)) from None
    except Exception as err:
        sys.modules.pop(name, None)
        where = traceback.extract_tb(err.__traceback__)[-1]
        raise LearnerLoadError(
            f"importing {path.name} raised {type(err).__name__}: {err} "
            f"(at {Path(where.filename).name}:{where.lineno})"
        ) from None
    return module


def require(module: ModuleType, *names: str) -> list[Any]:
    """The named objects of a learner module; a clear error when one is missing."""
    missing = [n for n in names if not hasattr(module, n)]
    if missing:
        raise LearnerLoadError(
            f"{Path(module.__file__ or '?').name} does not define {missing}; keep the names of the stub"
        )
    return [getattr(module, n) for n in names]


# Candidate bugs: description -> what that bug would output (computed lazily).
Candidates = Mapping[str, Callable[[], torch.Tensor]]
# A second, larger and fixed example, for when the drawn one cannot tell bugs apart (hypothesis
# shrinks towards in = out = 1, where many bugs coincide): returns the learner's output, the
# reference output and the candidates, all computed on that example.
Recheck = Callable[[], tuple[Any, torch.Tensor, Candidates]]

CLASSIC_BUG = "your result equals what this classic bug produces: "
SEVERAL_BUGS = "your result equals what each of these classic bugs produces on this example; one of: "


def _same(a: Any, b: torch.Tensor, rtol: float, atol: float) -> bool:
    return (
        isinstance(a, torch.Tensor)
        and a.shape == b.shape
        and bool(torch.allclose(a.detach().double(), b.detach().double(), rtol=rtol, atol=atol))
    )


def matching_bugs(
    actual: torch.Tensor,
    candidates: Candidates,
    *,
    rtol: float,
    atol: float,
    expected: torch.Tensor | None = None,
) -> list[str]:
    """Every candidate whose output ``actual`` reproduces, in the order given.

    A candidate that also reproduces the correct ``expected`` is left out: a bug that gives
    the right answer on this example cannot be what made the answer wrong.
    """
    names = []
    for description, compute in candidates.items():
        try:
            wrong: object = compute()  # a candidate may return anything (None, a tuple, ...)
        except Exception:  # a candidate that does not apply to these shapes
            continue
        if not isinstance(wrong, torch.Tensor) or not _same(actual, wrong, rtol, atol):
            continue
        if expected is not None and _same(expected, wrong, rtol, atol):
            continue
        names.append(description)
    return names


def _confirm(names: list[str], recheck: Recheck) -> list[str]:
    """Keep the ``names`` the learner's code still reproduces on the larger example."""
    from peft_zoo.testing import tolerance

    try:
        actual, expected, candidates = recheck()
    except Exception:  # the larger example could not be run: say which candidates remain
        return names
    rtol, atol = tolerance(expected.dtype)
    unchecked = [n for n in names if n not in candidates]
    checked = {n: candidates[n] for n in names if n in candidates}
    kept = set(matching_bugs(actual, checked, rtol=rtol, atol=atol, expected=expected)) | set(unchecked)
    return [n for n in names if n in kept]


def diagnose(
    actual: torch.Tensor,
    candidates: Candidates,
    *,
    rtol: float,
    atol: float,
    expected: torch.Tensor | None = None,
    recheck: Recheck | None = None,
) -> str | None:
    """The "likely" line for a wrong ``actual``: which known bug(s) reproduce it, or ``None``.

    Never names a bug that is not the cause: candidates equal to the correct ``expected`` are
    ignored; with ``recheck`` (see :data:`Recheck`) a candidate is named only if the learner's
    code reproduces it on the larger example too; when several candidates remain they are all
    listed ("one of: ...") instead of picking the first.
    """
    names = matching_bugs(actual, candidates, rtol=rtol, atol=atol, expected=expected)
    if names and recheck is not None:
        names = _confirm(names, recheck)
    if not names:
        return None
    if len(names) == 1:
        return CLASSIC_BUG + names[0]
    return SEVERAL_BUGS + "; ".join(names)


def assert_matches(
    actual: Any,
    expected: torch.Tensor,
    *,
    what: str,
    drawn: Mapping[str, Any] | None = None,
    bugs: Candidates | None = None,
    hint: str | None = None,
    recheck: Recheck | None = None,
) -> None:
    """Assert the learner's ``actual`` equals the reference ``expected``; on a mismatch, name
    the classic bug from ``bugs`` that reproduces ``actual`` (else fall back to ``hint``).

    ``recheck`` (optional) recomputes everything on a larger fixed example, so that bugs that
    coincide on a tiny drawn example can be told apart (see :func:`diagnose`).
    """
    from peft_zoo.testing import assert_close, explain, tolerance

    if not isinstance(actual, torch.Tensor):
        raise AssertionError(
            explain(
                what,
                drawn=drawn,
                expected=f"a tensor of shape {tuple(expected.shape)}",
                got=f"{type(actual).__name__}: {actual!r:.200}",
                hint=hint,
            )
        )
    rtol, atol = tolerance(expected.dtype)
    if not _same(actual, expected, rtol, atol) and bugs:
        found = diagnose(actual, bugs, rtol=rtol, atol=atol, expected=expected, recheck=recheck)
        hint = found or hint
    assert_close(actual, expected, what=what, drawn=drawn, hint=hint)


def assert_gradients_match(
    mine: torch.nn.Module,
    theirs: torch.nn.Module,
    x: torch.Tensor,
    g: torch.Tensor,
    *,
    drawn: Mapping[str, Any],
    input_bugs: Callable[[torch.Tensor], Mapping[str, Callable[[], torch.Tensor]]] | None = None,
) -> None:
    """Backpropagate the upstream gradient ``g`` through ``mine(x)`` and ``theirs(x)`` and compare
    the gradient of every reference parameter (matched by name) and of the input ``x``.

    ``input_bugs(reference_input_grad)`` may name classic mistakes for the input gradient.
    """
    from peft_zoo.testing import explain

    x_mine, x_ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    (mine(x_mine) * g).sum().backward()
    (theirs(x_ref) * g).sum().backward()
    own = dict(mine.named_parameters())
    for name, p in theirs.named_parameters():
        got = own[name].grad if name in own else None
        assert got is not None, explain(
            f"{name} received no gradient",
            drawn=drawn,
            hint="is part of the path detached (.detach(), .data, torch.no_grad()) inside forward?",
        )
        assert_matches(got, _reference_grad(p.grad, name), what=f"gradient of {name}", drawn=drawn)
    expected = _reference_grad(x_ref.grad, "the input x")
    assert_matches(
        x_mine.grad,
        expected,
        what="gradient with respect to the input x",
        drawn=drawn,
        bugs=None if input_bugs is None else input_bugs(expected),
    )


def _reference_grad(grad: torch.Tensor | None, name: str) -> torch.Tensor:
    """The reference model's gradient of ``name``, which every graded path has."""
    if grad is None:
        raise AssertionError(f"grader error: {name} received no gradient in the reference model")
    return grad
