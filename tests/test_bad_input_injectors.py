"""Bad input to ``inject_lora_recursive`` / ``inject_ia3`` / ``inject_qlora`` /
``inject_batched_lora`` / ``build_lora_adapter_model``: every call is refused with an error that
names the problem, and the model (module tree, tensors, ``requires_grad`` flags) is exactly as it
was.

One table of :class:`badinput.Refusal` cases run by :func:`badinput.check_refusal`. The models
are partly frozen and may hold an earlier adapter (tests/bad_inject_helpers.py), so a refused
call that touches any ``requires_grad`` flag is caught.
"""

from __future__ import annotations

import pytest
from bad_inject_helpers import (
    HUGE,
    NAN,
    B,
    M,
    all_lora_state,
    base_state,
    mlp_state,
    mlp_with_lora_state,
)
from badinput import Refusal, check_refusal

import peft_zoo as pz

CASES: list[Refusal] = [
    # ------------------------------------------------------------------ inject_lora_recursive
    Refusal(
        "recursive-rank-str",
        lambda s: pz.inject_lora_recursive(s["model"], "2"),
        TypeError,
        ["rank"],
        mlp_state,
        M,
    ),
    Refusal(
        "recursive-alpha-nan",
        lambda s: pz.inject_lora_recursive(s["model"], 2, NAN),
        ValueError,
        ["alpha"],
        mlp_with_lora_state,
        M,
    ),
    Refusal(
        "recursive-exclude-None",
        lambda s: pz.inject_lora_recursive(s["model"], 2, exclude=None),
        TypeError,
        ["exclude"],
        mlp_state,
        M,
    ),
    Refusal(
        "recursive-exclude-int",
        lambda s: pz.inject_lora_recursive(s["model"], 2, exclude=3),
        TypeError,
        ["exclude"],
        mlp_state,
        M,
    ),
    Refusal(
        "recursive-linear-root",
        lambda s: pz.inject_lora_recursive(s["base"], 2),
        pz.InjectionError,
        ["root"],
        base_state,
        B,
    ),
    Refusal(
        "recursive-nothing-left",
        lambda s: pz.inject_lora_recursive(s["model"], 2),
        pz.InjectionError,
        ["no nn.linear"],
        all_lora_state,
        M,
    ),
    Refusal("recursive-model-None", lambda s: pz.inject_lora_recursive(None, 2), TypeError, ["model"]),
    Refusal(
        "recursive-rank-huge",
        lambda s: pz.inject_lora_recursive(s["model"], HUGE),
        RuntimeError,
        ["allocate"],
        mlp_with_lora_state,
        M,
    ),
    # ------------------------------------------------------------------ inject_ia3
    Refusal(
        "ia3-names-None", lambda s: pz.inject_ia3(s["model"], None), TypeError, ["linear_names"], mlp_state, M
    ),
    Refusal(
        "ia3-ff-None",
        lambda s: pz.inject_ia3(s["model"], ["head"], feedforward_names=None),
        TypeError,
        ["feedforward_names"],
        mlp_state,
        M,
    ),
    Refusal(
        "ia3-overlap",
        lambda s: pz.inject_ia3(s["model"], ["head"], feedforward_names=["head"]),
        pz.InjectionError,
        ["more than once"],
        mlp_state,
        M,
    ),
    Refusal(
        "ia3-unknown-ff",
        lambda s: pz.inject_ia3(s["model"], ["encoder.0"], feedforward_names=["fc3"]),
        pz.InjectionError,
        ["fc3"],
        mlp_with_lora_state,
        M,
    ),
    Refusal("ia3-model-None", lambda s: pz.inject_ia3(None, ["head"]), TypeError, ["model"]),
    # ------------------------------------------------------------------ inject_qlora
    Refusal(
        "qlora-names-int",
        lambda s: pz.inject_qlora(s["model"], 7, rank=2),
        TypeError,
        ["linear_names"],
        mlp_state,
        M,
    ),
    Refusal(
        "qlora-rank-bool",
        lambda s: pz.inject_qlora(s["model"], ["head"], rank=True),
        TypeError,
        ["rank"],
        mlp_state,
        M,
    ),
    Refusal(
        "qlora-unknown",
        lambda s: pz.inject_qlora(s["model"], ["head", "nope"], rank=2),
        pz.InjectionError,
        ["nope"],
        mlp_with_lora_state,
        M,
    ),
    Refusal("qlora-model-None", lambda s: pz.inject_qlora(None, ["head"], rank=2), TypeError, ["model"]),
    # ------------------------------------------------------------------ inject_batched_lora
    Refusal(
        "batched-names-None",
        lambda s: pz.inject_batched_lora(s["model"], None, 3, 2),
        TypeError,
        ["linear_names"],
        mlp_state,
        M,
    ),
    Refusal(
        "batched-num-adapters-zero",
        lambda s: pz.inject_batched_lora(s["model"], ["head"], 0, 2),
        ValueError,
        ["num_adapters"],
        mlp_state,
        M,
    ),
    Refusal(
        "batched-num-adapters-bool",
        lambda s: pz.inject_batched_lora(s["model"], ["head"], True, 2),
        TypeError,
        ["num_adapters"],
        mlp_state,
        M,
    ),
    Refusal(
        "batched-rslora-str",
        lambda s: pz.inject_batched_lora(s["model"], ["head"], 3, 2, rslora="no"),
        TypeError,
        ["rslora"],
        mlp_state,
        M,
    ),
    Refusal(
        "batched-strategy",
        lambda s: pz.inject_batched_lora(s["model"], ["head"], 3, 2, strategy="fast"),
        ValueError,
        ["strategy"],
        mlp_state,
        M,
    ),
    Refusal(
        "batched-huge",
        lambda s: pz.inject_batched_lora(s["model"], ["encoder.0", "encoder.2.branch.fc1"], HUGE, 2),
        RuntimeError,
        ["allocate"],
        mlp_with_lora_state,
        M,
    ),
    Refusal(
        "batched-model-None", lambda s: pz.inject_batched_lora(None, ["head"], 3, 2), TypeError, ["model"]
    ),
    # ------------------------------------------------------------------ build_lora_adapter_model
    Refusal(
        "build-bottleneck-huge",
        lambda s: pz.build_lora_adapter_model(s["model"], ["head"], 2, None, HUGE),
        MemoryError,
        ["adapter_bottleneck", "allocate", "not changed"],
        mlp_state,
        M,
    ),
    Refusal(
        "build-bottleneck-huge-no-lora",
        lambda s: pz.build_lora_adapter_model(s["model"], [], 2, None, HUGE),
        MemoryError,
        ["adapter_bottleneck"],
        mlp_with_lora_state,
        M,
    ),
    Refusal(
        "build-bottleneck-str",
        lambda s: pz.build_lora_adapter_model(s["model"], ["head"], 2, None, "4"),
        TypeError,
        ["adapter_bottleneck"],
        mlp_state,
        M,
    ),
    Refusal(
        "build-bottleneck-bool",
        lambda s: pz.build_lora_adapter_model(s["model"], ["head"], 2, None, True),
        TypeError,
        ["adapter_bottleneck"],
        mlp_state,
        M,
    ),
    Refusal(
        "build-names-None",
        lambda s: pz.build_lora_adapter_model(s["model"], None, 2),
        TypeError,
        ["lora_names"],
        mlp_state,
        M,
    ),
    Refusal(
        "build-d-model-neg",
        lambda s: pz.build_lora_adapter_model(s["model"], ["head"], 2, None, 4, d_model=-1),
        ValueError,
        ["d_model"],
        mlp_state,
        M,
    ),
    Refusal(
        "build-bad-name",
        lambda s: pz.build_lora_adapter_model(s["model"], ["head", "hed"], 2, None, 4),
        pz.InjectionError,
        ["hed"],
        mlp_state,
        M,
    ),
    Refusal(
        "build-rank-str",
        lambda s: pz.build_lora_adapter_model(s["model"], ["head"], "2", None, 4),
        TypeError,
        ["rank"],
        mlp_state,
        M,
    ),
    Refusal(
        "build-nothing",
        lambda s: pz.build_lora_adapter_model(s["model"], [], 2),
        pz.InjectionError,
        ["nothing to train"],
        mlp_state,
        M,
    ),
    Refusal("build-base-None", lambda s: pz.build_lora_adapter_model(None, ["head"], 2), TypeError, ["base"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_and_changes_nothing(case: Refusal) -> None:
    check_refusal(case)
