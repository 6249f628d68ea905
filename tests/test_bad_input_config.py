"""Bad configs and bad ``adapter_config.json`` files: every one is refused with an error that
names the field (and the file), and nothing is changed.

One table of :class:`badinput.Refusal` cases, run by :func:`badinput.check_refusal`:
``LoraConfig`` / ``IA3Config`` from Python (every field: wrong types, bad values, bad and
catastrophic regexes), ``adapt_model`` on a config mutated after construction,
``find_targets`` arguments, and PEFT ``adapter_config.json`` fields loaded through
``load_peft`` / ``read_peft`` / ``config_from_peft`` (wrong types, bad values, bad regexes,
catastrophic regexes, nested, non-object, invalid, oversized and duplicate-key JSON,
missing and unknown fields). The tables live in bad_input_config_cases.py (from Python) and
bad_input_peft_cases.py (PEFT files and dicts).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from bad_input_config_cases import ADAPT, FIND, IA3_PY, LORA_PY, tiny
from bad_input_peft_cases import DICTS, FILES, MORE, WORKDIR
from badinput import Refusal, check_refusal
from torch import nn

import peft_zoo as pz


@pytest.fixture(autouse=True)
def _workdir(tmp_path: Path):
    WORKDIR.append(tmp_path)
    yield
    WORKDIR.pop()


CASES = [*LORA_PY, *IA3_PY, *ADAPT, *FIND, *FILES, *DICTS, *MORE]


def test_there_are_enough_cases_and_unique_ids() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 80


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused(case: Refusal) -> None:
    check_refusal(case)


def test_catastrophic_regexes_are_refused_within_a_few_seconds() -> None:
    """The issue's case: ``(a+)+$`` ran > 10 s against ``'a'*30+'b'``; now each refusal (or the
    plain "no match") comes back in well under that."""
    slow = [c for c in CASES if "catastrophic" in c.id]
    assert len(slow) >= 10
    for case in slow:
        start = time.perf_counter()
        check_refusal(case)
        assert time.perf_counter() - start < 5.0, case.id
    model = tiny()
    model.add_module("a" * 30 + "b", nn.Linear(4, 4))
    start = time.perf_counter()
    with pytest.raises(ValueError, match="target_modules"):
        pz.find_targets(model, "(a+)+$")
    assert time.perf_counter() - start < 5.0
