"""Bad input to ``inject_lora``: every call is refused with an error that names the problem, and
the model (module tree, tensors, ``requires_grad`` flags) is exactly as it was.

One table of :class:`badinput.Refusal` cases run by :func:`badinput.check_refusal`: name
arguments that are not names, unknown, duplicate and non-Linear names, wrong types and values of
rank / alpha / dropout / rslora, ranks that cannot be allocated. The models are partly frozen and
may hold an earlier adapter (tests/bad_inject_helpers.py), so a refused call that touches any
``requires_grad`` flag is caught. The other injectors are in test_bad_input_injectors.py, the
layer constructors in test_bad_input_layers.py.
"""

from __future__ import annotations

import pytest
from bad_inject_helpers import (
    HUGE,
    INF,
    NAN,
    M,
    mlp_state,
    mlp_with_lora_state,
)
from badinput import Refusal, check_refusal

import peft_zoo as pz

CASES: list[Refusal] = [
    # ------------------------------------------------------------------ inject_lora: names
    Refusal(
        "lora-names-None",
        lambda s: pz.inject_lora(s["model"], None, 4),
        TypeError,
        ["linear_names", "None"],
        mlp_state,
        M,
    ),
    Refusal(
        "lora-names-int",
        lambda s: pz.inject_lora(s["model"], 5, 4),
        TypeError,
        ["linear_names", "int"],
        mlp_state,
        M,
    ),
    Refusal(
        "lora-names-bytes",
        lambda s: pz.inject_lora(s["model"], b"head", 4),
        TypeError,
        ["linear_names"],
        mlp_state,
        M,
    ),
    Refusal(
        "lora-names-dict",
        lambda s: pz.inject_lora(s["model"], {"head": 1}, 4),
        TypeError,
        ["linear_names"],
        mlp_state,
        M,
    ),
    Refusal(
        "lora-names-module",
        lambda s: pz.inject_lora(s["model"], [s["model"].head], 4),
        TypeError,
        ["module names"],
        mlp_state,
        M,
    ),
    Refusal(
        "lora-names-None-inside",
        lambda s: pz.inject_lora(s["model"], ["head", None], 4),
        TypeError,
        ["module names", "None"],
        mlp_state,
        M,
    ),
    Refusal(
        "lora-unknown",
        lambda s: pz.inject_lora(s["model"], ["head", "encoder.9"], 4),
        pz.InjectionError,
        ["encoder.9", "not changed"],
        mlp_state,
        M,
    ),
    Refusal(
        "lora-typo-suggests",
        lambda s: pz.inject_lora(s["model"], ["hed"], 4),
        pz.InjectionError,
        ["'hed'", "head"],
        mlp_state,
        M,
    ),
    Refusal(
        "lora-not-linear",
        lambda s: pz.inject_lora(s["model"], ["head", "encoder.1"], 4),
        pz.InjectionError,
        ["encoder.1", "GELU"],
        mlp_state,
        M,
    ),
    Refusal(
        "lora-duplicate",
        lambda s: pz.inject_lora(s["model"], ["head", "encoder.0", "head"], 4),
        pz.InjectionError,
        ["more than once", "head"],
        mlp_state,
        M,
    ),
    Refusal(
        "lora-empty",
        lambda s: pz.inject_lora(s["model"], [], 4),
        pz.InjectionError,
        ["no module names"],
        mlp_state,
        M,
    ),
    Refusal(
        "lora-root", lambda s: pz.inject_lora(s["model"], "", 4), pz.InjectionError, ["root"], mlp_state, M
    ),
    Refusal(
        "lora-already-adapted",
        lambda s: pz.inject_lora(s["model"], ["encoder.0", "head"], 4),
        pz.InjectionError,
        ["head", "already"],
        mlp_with_lora_state,
        M,
    ),
    Refusal(
        "lora-base-of-adapter",
        lambda s: pz.inject_lora(s["model"], ["head.base"], 4),
        pz.InjectionError,
        ["head.base"],
        mlp_with_lora_state,
        M,
    ),
    Refusal(
        "lora-model-None", lambda s: pz.inject_lora(None, ["head"], 4), TypeError, ["model", "nn.Module"]
    ),
    # ------------------------------------------------------------------ inject_lora: hyperparameters
    Refusal(
        "lora-rank-str",
        lambda s: pz.inject_lora(s["model"], ["encoder.0", "head"], "4"),
        TypeError,
        ["rank"],
        mlp_state,
        M,
    ),
    Refusal(
        "lora-rank-bool",
        lambda s: pz.inject_lora(s["model"], ["head"], True),
        TypeError,
        ["rank"],
        mlp_state,
        M,
    ),
    Refusal(
        "lora-rank-float",
        lambda s: pz.inject_lora(s["model"], ["head"], 2.5),
        TypeError,
        ["rank"],
        mlp_state,
        M,
    ),
    Refusal(
        "lora-rank-neg",
        lambda s: pz.inject_lora(s["model"], ["head"], -1),
        ValueError,
        ["rank"],
        mlp_state,
        M,
    ),
    Refusal(
        "lora-rank-zero",
        lambda s: pz.inject_lora(s["model"], ["head"], 0),
        ValueError,
        ["rank"],
        mlp_state,
        M,
    ),
    Refusal(
        "lora-rank-nan",
        lambda s: pz.inject_lora(s["model"], ["head"], NAN),
        TypeError,
        ["rank"],
        mlp_state,
        M,
    ),
    Refusal(
        "lora-rank-huge",
        lambda s: pz.inject_lora(s["model"], ["encoder.0", "encoder.2.branch.fc1"], HUGE),
        RuntimeError,
        ["allocate"],
        mlp_with_lora_state,
        M,
    ),
    Refusal(
        "lora-alpha-str",
        lambda s: pz.inject_lora(s["model"], ["head"], 2, "8"),
        TypeError,
        ["alpha"],
        mlp_state,
        M,
    ),
    Refusal(
        "lora-alpha-bool",
        lambda s: pz.inject_lora(s["model"], ["head"], 2, True),
        TypeError,
        ["alpha"],
        mlp_state,
        M,
    ),
    Refusal(
        "lora-alpha-nan",
        lambda s: pz.inject_lora(s["model"], ["head"], 2, NAN),
        ValueError,
        ["alpha"],
        mlp_state,
        M,
    ),
    Refusal(
        "lora-alpha-inf",
        lambda s: pz.inject_lora(s["model"], ["head"], 2, INF),
        ValueError,
        ["alpha"],
        mlp_state,
        M,
    ),
    Refusal(
        "lora-alpha-neg",
        lambda s: pz.inject_lora(s["model"], ["head"], 2, -1.0),
        ValueError,
        ["alpha"],
        mlp_state,
        M,
    ),
    Refusal(
        "lora-dropout-str",
        lambda s: pz.inject_lora(s["model"], ["head"], 2, dropout="0.1"),
        TypeError,
        ["dropout"],
        mlp_state,
        M,
    ),
    Refusal(
        "lora-dropout-bool",
        lambda s: pz.inject_lora(s["model"], ["head"], 2, dropout=True),
        TypeError,
        ["dropout"],
        mlp_state,
        M,
    ),
    Refusal(
        "lora-dropout-one",
        lambda s: pz.inject_lora(s["model"], ["head"], 2, dropout=1.0),
        ValueError,
        ["dropout"],
        mlp_state,
        M,
    ),
    Refusal(
        "lora-dropout-nan",
        lambda s: pz.inject_lora(s["model"], ["head"], 2, dropout=NAN),
        ValueError,
        ["dropout"],
        mlp_state,
        M,
    ),
    Refusal(
        "lora-rslora-str",
        lambda s: pz.inject_lora(s["model"], ["head"], 2, rslora="yes"),
        TypeError,
        ["rslora"],
        mlp_state,
        M,
    ),
    Refusal(
        "lora-unknown-kwarg",
        lambda s: pz.inject_lora(s["model"], ["head"], 2, no_such_option=1),
        TypeError,
        ["no_such_option"],
        mlp_state,
        M,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_and_changes_nothing(case: Refusal) -> None:
    check_refusal(case)
