"""Regular expressions from configs and files, matched with a bound on time.

A regex in ``target_modules``, ``exclude_modules``, ``feedforward_modules``, a rank/alpha
pattern key or ``layers_pattern`` comes from the user or from an ``adapter_config.json``
somebody sent. Python's ``re`` backtracks without limit: ``"(a+)+$"`` against
``"a" * 30 + "b"`` runs for minutes. Here every such pattern is

- checked once (:func:`check_pattern`): a ``str`` of bounded length that compiles under
  ``re``, the engine PEFT uses, so a pattern PEFT refuses is refused here too;
- matched with the ``regex`` package (same syntax and results as ``re`` for these patterns)
  under a timeout: :data:`MATCH_TIMEOUT` per call, and a total of at most ``seconds`` inside
  a :func:`time_budget` block (one ``find_targets`` / ``load_peft`` call), so a slow pattern
  cannot take minutes by being slow on each of many module names.

Both failures raise :class:`PatternError` naming the field the pattern came from.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import re
import time
from collections.abc import Iterator

import regex

__all__ = [
    "MATCH_TIMEOUT",
    "MAX_PATTERN_LENGTH",
    "PatternError",
    "check_pattern",
    "fullmatch",
    "match",
    "time_budget",
]

MATCH_TIMEOUT = 0.5  # seconds for one match; a module name matches in microseconds
MAX_PATTERN_LENGTH = 1 << 20  # characters (load_peft writes one alternative per adapted module)

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "peft_zoo_regex_deadline", default=None
)


class PatternError(ValueError):
    """A regular expression from a config or a file that is invalid or takes too long to match."""


def _show(text: str, limit: int = 80) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


@functools.lru_cache(maxsize=4096)
def _compile(pattern: str, what: str) -> regex.Pattern:
    try:
        re.compile(pattern)  # what PEFT runs: refuse what it refuses
        return regex.compile(pattern)
    except (re.error, regex.error, OverflowError, RecursionError, ValueError) as err:
        raise PatternError(f"{what}: invalid regular expression {_show(pattern)}: {err}") from None


def check_pattern(pattern: object, what: str) -> str:
    """Return ``pattern`` if it is a ``str`` that compiles (with ``re`` and ``regex``), else raise
    naming ``what`` (the field): ``TypeError`` for a non-string, :class:`PatternError` otherwise."""
    if not isinstance(pattern, str):
        raise TypeError(f"{what} must be a regular expression (a str), got {pattern!r:.80}")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise PatternError(
            f"{what}: the regular expression has {len(pattern)} characters, more than {MAX_PATTERN_LENGTH}"
        )
    _compile(pattern, what)
    return pattern


@contextlib.contextmanager
def time_budget(seconds: float) -> Iterator[None]:
    """Every match inside the block shares ``seconds`` in total (a nested block never extends
    an outer one)."""
    deadline = time.monotonic() + seconds
    outer = _deadline.get()
    token = _deadline.set(deadline if outer is None else min(outer, deadline))
    try:
        yield
    finally:
        _deadline.reset(token)


def _run(kind: str, pattern: str, string: str, what: str) -> regex.Match | None:
    compiled = _compile(check_pattern(pattern, what), what)
    deadline = _deadline.get()
    timeout = MATCH_TIMEOUT if deadline is None else min(MATCH_TIMEOUT, deadline - time.monotonic())
    try:
        if timeout <= 0:
            raise TimeoutError
        return getattr(compiled, kind)(string, timeout=timeout)
    except TimeoutError:
        raise PatternError(
            f"{what}: the regular expression {_show(pattern)} did not finish in time on {_show(string)} "
            "(a nested repetition such as '(a+)+' or '(a|aa)+' backtracks exponentially); simplify it"
        ) from None


def fullmatch(pattern: str, string: str, what: str) -> regex.Match | None:
    """``re.fullmatch(pattern, string)`` with a bounded time; raises :class:`PatternError`
    naming ``what`` when the pattern is invalid or too slow."""
    return _run("fullmatch", pattern, string, what)


def match(pattern: str, string: str, what: str) -> regex.Match | None:
    """``re.match(pattern, string)`` with a bounded time (see :func:`fullmatch`)."""
    return _run("match", pattern, string, what)
