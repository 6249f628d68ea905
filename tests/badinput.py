"""A harness for bad-input cases: each call must raise a clear error and change nothing.

A :class:`Refusal` is one adversarial call. :func:`check_refusal` runs it and asserts

- it raises one of the expected exception types (never a bare ``RecursionError``,
  ``re.error``, ``OSError`` or ``AttributeError`` from deep inside the library),
- the message contains every expected word (so it names the problem: the field, the file,
  the value),
- every watched module is unchanged (tensor values, module tree, ``requires_grad`` flags:
  :func:`peft_zoo.testing.fingerprint`) and every watched file or directory is unchanged.

Test files list their cases in a table and parametrise over it, so the count of cases is
the count of collected tests (``pytest tests/test_bad_input_*.py -q``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from peft_zoo.testing import assert_model_unchanged, fingerprint


@dataclass
class Refusal:
    """One bad input.

    ``setup()`` builds fresh state and returns a dict that ``call(state)`` uses; the keys
    of ``watch_modules`` / ``watch_paths`` name the entries of that dict that must be left
    unchanged.
    """

    id: str
    call: Callable[[dict[str, Any]], object]
    raises: type[BaseException] | tuple[type[BaseException], ...]
    words: Sequence[str] = ()  # each must occur in the message (case-insensitive)
    setup: Callable[[], dict[str, Any]] = dict
    watch_modules: Sequence[str] = ()
    watch_paths: Sequence[str] = ()
    extra: dict[str, Any] = field(default_factory=dict)


def _tree_digest(path: Path) -> dict[str, str]:
    """``relative path -> sha256`` of every file under ``path`` (or of ``path`` itself)."""
    if not path.exists():
        return {}
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(path)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
        for p in sorted(path.rglob("*"))
    }


# Errors that mean "the library did not check this input": never acceptable as the refusal.
UNCLEAR = (RecursionError, AttributeError, KeyError, IndexError, ZeroDivisionError, UnboundLocalError)


def check_refusal(case: Refusal) -> BaseException:
    """Run ``case`` and assert a clear refusal with nothing changed; return the error."""
    state = case.setup()
    modules: dict[str, nn.Module] = {k: state[k] for k in case.watch_modules}
    before_m = {k: fingerprint(m) for k, m in modules.items()}
    before_p = {k: _tree_digest(Path(state[k])) for k in case.watch_paths}
    try:
        case.call(state)
    except case.raises as err:
        error: BaseException = err
    except BaseException as err:  # a wrong exception type: say which
        raise AssertionError(f"{case.id}: expected {case.raises}, got {type(err).__name__}: {err}") from err
    else:
        raise AssertionError(f"{case.id}: the bad input was accepted (no error raised)")
    if isinstance(error, UNCLEAR) and not any(
        isinstance(case.raises, type) and issubclass(case.raises, u) for u in UNCLEAR
    ):
        raise AssertionError(f"{case.id}: an unclear {type(error).__name__}: {error}")
    message = str(error).lower()
    missing = [w for w in case.words if w.lower() not in message]
    assert not missing, f"{case.id}: the message does not name {missing}: {error}"
    for key, module in modules.items():
        assert_model_unchanged(module, before_m[key], what=f"{case.id}: {key}")
    for key in case.watch_paths:
        assert _tree_digest(Path(state[key])) == before_p[key], f"{case.id}: {key} changed on disk"
    return error
