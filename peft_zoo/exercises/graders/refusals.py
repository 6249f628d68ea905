"""The one way the graders check that learner code refuses bad input (challenges 13, 16, 19).

The call must raise one of the expected exception types, whose message names the offending
value; a different exception, or none at all, fails with an explanation of what was drawn and
the classic mistake behind it. ``NotImplementedError`` passes through: the harness reports an
unfinished stub as "not implemented yet".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from peft_zoo.testing import explain


def expect_refusal(
    call: Callable[[], object],
    *,
    drawn: Mapping[str, Any],
    errors: tuple[type[BaseException], ...] = (ValueError,),
    mention: str | None = None,
    when_unnamed: str,
    when_wrong: str,
    wrong_hint: str | None = None,
    when_accepted: str,
    accepted_hint: str | None = None,
    accepted_expected: str | None = None,
) -> None:
    """``call()`` must raise one of ``errors`` whose message contains ``mention`` (when given).

    The titles of the three failures: ``when_unnamed`` (the message does not name ``mention``),
    ``when_wrong`` (another exception, explained by ``wrong_hint``) and ``when_accepted`` (no
    exception, explained by ``accepted_hint``; expected ``accepted_expected``, else the error
    names).
    """
    names = " or ".join(e.__name__ for e in errors)
    try:
        call()
    except NotImplementedError:
        raise  # an unfinished stub: reported as "not implemented yet"
    except errors as err:
        if mention is not None and mention not in str(err):
            raise AssertionError(
                explain(
                    when_unnamed,
                    drawn=drawn,
                    expected=f"a message mentioning {mention!r}",
                    got=f"{type(err).__name__}: {err}",
                )
            ) from None
    except Exception as err:
        raise AssertionError(
            explain(
                when_wrong, drawn=drawn, expected=names, got=f"{type(err).__name__}: {err}", hint=wrong_hint
            )
        ) from None
    else:
        raise AssertionError(
            explain(
                when_accepted,
                drawn=drawn,
                expected=accepted_expected or names,
                got="no error",
                hint=accepted_hint,
            )
        )
