"""Bad input to the injectors and the adapter-layer constructors: every call is refused with an
error that names the problem, and the model (module tree, tensors, ``requires_grad`` flags) is
exactly as it was.

One table of :class:`badinput.Refusal` cases run by :func:`badinput.check_refusal`:
``inject_lora`` / ``inject_lora_recursive`` / ``inject_ia3`` / ``inject_qlora`` /
``inject_batched_lora`` / ``build_lora_adapter_model`` (name arguments that are not names,
unknown, duplicate and non-Linear names, wrong types and values of rank / alpha / dropout /
rslora, sizes that cannot be allocated), and ``LoRALinear`` / ``DoRALinear`` /
``BatchedLoRALinear`` constructors failing after the point where they freeze their base.
The models are partly frozen and may hold an earlier adapter, so a refused call that touches
any ``requires_grad`` flag is caught.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from badinput import Refusal, check_refusal
from torch import nn

import peft_zoo as pz
from peft_zoo.models import TinyMLP

HUGE = 10**13  # a rank / size no allocator grants: fails inside the constructor, after the checks


def _mlp() -> dict[str, Any]:
    """TinyMLP(8, 16, 4) with mixed flags: encoder.0 frozen, the rest trainable."""
    torch.manual_seed(0)
    model = TinyMLP()
    model.encoder[0].requires_grad_(False)
    return {"model": model}


def _mlp_with_lora() -> dict[str, Any]:
    """TinyMLP with LoRA already on ``head``, one LoRA tensor frozen and one bias trained by hand."""
    torch.manual_seed(0)
    model = TinyMLP()
    pz.inject_lora(model, ["head"], 2)
    model.head.lora_A.requires_grad_(False)
    model.encoder[0].bias.requires_grad_(True)
    return {"model": model}


def _all_lora() -> dict[str, Any]:
    state = _mlp()
    pz.inject_lora_recursive(state["model"], 2)
    return state


def _base() -> dict[str, Any]:
    """A lone Linear whose bias is frozen and weight trainable (a constructor must keep both)."""
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    base.bias.requires_grad_(False)
    return {"base": base}


def _dora_norm_fails(state: dict[str, Any]) -> None:
    """DoRALinear whose magnitude cannot be computed (after LoRALinear froze the base)."""
    original = pz.DoRALinear.weight_norm

    def broken(self: pz.DoRALinear) -> torch.Tensor:
        raise RuntimeError("weight norm failed on purpose")

    pz.DoRALinear.weight_norm = broken  # type: ignore[method-assign]
    try:
        pz.DoRALinear(state["base"], 2)
    finally:
        pz.DoRALinear.weight_norm = original  # type: ignore[method-assign]


M = ("model",)
B = ("base",)
NAN, INF = math.nan, math.inf

CASES: list[Refusal] = [
    # ------------------------------------------------------------------ inject_lora: names
    Refusal(
        "lora-names-None",
        lambda s: pz.inject_lora(s["model"], None, 4),
        TypeError,
        ["linear_names", "None"],
        _mlp,
        M,
    ),
    Refusal(
        "lora-names-int",
        lambda s: pz.inject_lora(s["model"], 5, 4),
        TypeError,
        ["linear_names", "int"],
        _mlp,
        M,
    ),
    Refusal(
        "lora-names-bytes",
        lambda s: pz.inject_lora(s["model"], b"head", 4),
        TypeError,
        ["linear_names"],
        _mlp,
        M,
    ),
    Refusal(
        "lora-names-dict",
        lambda s: pz.inject_lora(s["model"], {"head": 1}, 4),
        TypeError,
        ["linear_names"],
        _mlp,
        M,
    ),
    Refusal(
        "lora-names-module",
        lambda s: pz.inject_lora(s["model"], [s["model"].head], 4),
        TypeError,
        ["module names"],
        _mlp,
        M,
    ),
    Refusal(
        "lora-names-None-inside",
        lambda s: pz.inject_lora(s["model"], ["head", None], 4),
        TypeError,
        ["module names", "None"],
        _mlp,
        M,
    ),
    Refusal(
        "lora-unknown",
        lambda s: pz.inject_lora(s["model"], ["head", "encoder.9"], 4),
        pz.InjectionError,
        ["encoder.9", "not changed"],
        _mlp,
        M,
    ),
    Refusal(
        "lora-typo-suggests",
        lambda s: pz.inject_lora(s["model"], ["hed"], 4),
        pz.InjectionError,
        ["'hed'", "head"],
        _mlp,
        M,
    ),
    Refusal(
        "lora-not-linear",
        lambda s: pz.inject_lora(s["model"], ["head", "encoder.1"], 4),
        pz.InjectionError,
        ["encoder.1", "GELU"],
        _mlp,
        M,
    ),
    Refusal(
        "lora-duplicate",
        lambda s: pz.inject_lora(s["model"], ["head", "encoder.0", "head"], 4),
        pz.InjectionError,
        ["more than once", "head"],
        _mlp,
        M,
    ),
    Refusal(
        "lora-empty",
        lambda s: pz.inject_lora(s["model"], [], 4),
        pz.InjectionError,
        ["no module names"],
        _mlp,
        M,
    ),
    Refusal("lora-root", lambda s: pz.inject_lora(s["model"], "", 4), pz.InjectionError, ["root"], _mlp, M),
    Refusal(
        "lora-already-adapted",
        lambda s: pz.inject_lora(s["model"], ["encoder.0", "head"], 4),
        pz.InjectionError,
        ["head", "already"],
        _mlp_with_lora,
        M,
    ),
    Refusal(
        "lora-base-of-adapter",
        lambda s: pz.inject_lora(s["model"], ["head.base"], 4),
        pz.InjectionError,
        ["head.base"],
        _mlp_with_lora,
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
        _mlp,
        M,
    ),
    Refusal(
        "lora-rank-bool", lambda s: pz.inject_lora(s["model"], ["head"], True), TypeError, ["rank"], _mlp, M
    ),
    Refusal(
        "lora-rank-float", lambda s: pz.inject_lora(s["model"], ["head"], 2.5), TypeError, ["rank"], _mlp, M
    ),
    Refusal(
        "lora-rank-neg", lambda s: pz.inject_lora(s["model"], ["head"], -1), ValueError, ["rank"], _mlp, M
    ),
    Refusal(
        "lora-rank-zero", lambda s: pz.inject_lora(s["model"], ["head"], 0), ValueError, ["rank"], _mlp, M
    ),
    Refusal(
        "lora-rank-nan", lambda s: pz.inject_lora(s["model"], ["head"], NAN), TypeError, ["rank"], _mlp, M
    ),
    Refusal(
        "lora-rank-huge",
        lambda s: pz.inject_lora(s["model"], ["encoder.0", "encoder.2.branch.fc1"], HUGE),
        RuntimeError,
        ["allocate"],
        _mlp_with_lora,
        M,
    ),
    Refusal(
        "lora-alpha-str",
        lambda s: pz.inject_lora(s["model"], ["head"], 2, "8"),
        TypeError,
        ["alpha"],
        _mlp,
        M,
    ),
    Refusal(
        "lora-alpha-bool",
        lambda s: pz.inject_lora(s["model"], ["head"], 2, True),
        TypeError,
        ["alpha"],
        _mlp,
        M,
    ),
    Refusal(
        "lora-alpha-nan",
        lambda s: pz.inject_lora(s["model"], ["head"], 2, NAN),
        ValueError,
        ["alpha"],
        _mlp,
        M,
    ),
    Refusal(
        "lora-alpha-inf",
        lambda s: pz.inject_lora(s["model"], ["head"], 2, INF),
        ValueError,
        ["alpha"],
        _mlp,
        M,
    ),
    Refusal(
        "lora-alpha-neg",
        lambda s: pz.inject_lora(s["model"], ["head"], 2, -1.0),
        ValueError,
        ["alpha"],
        _mlp,
        M,
    ),
    Refusal(
        "lora-dropout-str",
        lambda s: pz.inject_lora(s["model"], ["head"], 2, dropout="0.1"),
        TypeError,
        ["dropout"],
        _mlp,
        M,
    ),
    Refusal(
        "lora-dropout-bool",
        lambda s: pz.inject_lora(s["model"], ["head"], 2, dropout=True),
        TypeError,
        ["dropout"],
        _mlp,
        M,
    ),
    Refusal(
        "lora-dropout-one",
        lambda s: pz.inject_lora(s["model"], ["head"], 2, dropout=1.0),
        ValueError,
        ["dropout"],
        _mlp,
        M,
    ),
    Refusal(
        "lora-dropout-nan",
        lambda s: pz.inject_lora(s["model"], ["head"], 2, dropout=NAN),
        ValueError,
        ["dropout"],
        _mlp,
        M,
    ),
    Refusal(
        "lora-rslora-str",
        lambda s: pz.inject_lora(s["model"], ["head"], 2, rslora="yes"),
        TypeError,
        ["rslora"],
        _mlp,
        M,
    ),
    Refusal(
        "lora-unknown-kwarg",
        lambda s: pz.inject_lora(s["model"], ["head"], 2, no_such_option=1),
        TypeError,
        ["no_such_option"],
        _mlp,
        M,
    ),
    # ------------------------------------------------------------------ inject_lora_recursive
    Refusal(
        "recursive-rank-str",
        lambda s: pz.inject_lora_recursive(s["model"], "2"),
        TypeError,
        ["rank"],
        _mlp,
        M,
    ),
    Refusal(
        "recursive-alpha-nan",
        lambda s: pz.inject_lora_recursive(s["model"], 2, NAN),
        ValueError,
        ["alpha"],
        _mlp_with_lora,
        M,
    ),
    Refusal(
        "recursive-exclude-None",
        lambda s: pz.inject_lora_recursive(s["model"], 2, exclude=None),
        TypeError,
        ["exclude"],
        _mlp,
        M,
    ),
    Refusal(
        "recursive-exclude-int",
        lambda s: pz.inject_lora_recursive(s["model"], 2, exclude=3),
        TypeError,
        ["exclude"],
        _mlp,
        M,
    ),
    Refusal(
        "recursive-linear-root",
        lambda s: pz.inject_lora_recursive(s["base"], 2),
        pz.InjectionError,
        ["root"],
        _base,
        B,
    ),
    Refusal(
        "recursive-nothing-left",
        lambda s: pz.inject_lora_recursive(s["model"], 2),
        pz.InjectionError,
        ["no nn.linear"],
        _all_lora,
        M,
    ),
    Refusal("recursive-model-None", lambda s: pz.inject_lora_recursive(None, 2), TypeError, ["model"]),
    Refusal(
        "recursive-rank-huge",
        lambda s: pz.inject_lora_recursive(s["model"], HUGE),
        RuntimeError,
        ["allocate"],
        _mlp_with_lora,
        M,
    ),
    # ------------------------------------------------------------------ inject_ia3
    Refusal(
        "ia3-names-None", lambda s: pz.inject_ia3(s["model"], None), TypeError, ["linear_names"], _mlp, M
    ),
    Refusal(
        "ia3-ff-None",
        lambda s: pz.inject_ia3(s["model"], ["head"], feedforward_names=None),
        TypeError,
        ["feedforward_names"],
        _mlp,
        M,
    ),
    Refusal(
        "ia3-overlap",
        lambda s: pz.inject_ia3(s["model"], ["head"], feedforward_names=["head"]),
        pz.InjectionError,
        ["more than once"],
        _mlp,
        M,
    ),
    Refusal(
        "ia3-unknown-ff",
        lambda s: pz.inject_ia3(s["model"], ["encoder.0"], feedforward_names=["fc3"]),
        pz.InjectionError,
        ["fc3"],
        _mlp_with_lora,
        M,
    ),
    Refusal("ia3-model-None", lambda s: pz.inject_ia3(None, ["head"]), TypeError, ["model"]),
    # ------------------------------------------------------------------ inject_qlora
    Refusal(
        "qlora-names-int",
        lambda s: pz.inject_qlora(s["model"], 7, rank=2),
        TypeError,
        ["linear_names"],
        _mlp,
        M,
    ),
    Refusal(
        "qlora-rank-bool",
        lambda s: pz.inject_qlora(s["model"], ["head"], rank=True),
        TypeError,
        ["rank"],
        _mlp,
        M,
    ),
    Refusal(
        "qlora-unknown",
        lambda s: pz.inject_qlora(s["model"], ["head", "nope"], rank=2),
        pz.InjectionError,
        ["nope"],
        _mlp_with_lora,
        M,
    ),
    Refusal("qlora-model-None", lambda s: pz.inject_qlora(None, ["head"], rank=2), TypeError, ["model"]),
    # ------------------------------------------------------------------ inject_batched_lora
    Refusal(
        "batched-names-None",
        lambda s: pz.inject_batched_lora(s["model"], None, 3, 2),
        TypeError,
        ["linear_names"],
        _mlp,
        M,
    ),
    Refusal(
        "batched-num-adapters-zero",
        lambda s: pz.inject_batched_lora(s["model"], ["head"], 0, 2),
        ValueError,
        ["num_adapters"],
        _mlp,
        M,
    ),
    Refusal(
        "batched-num-adapters-bool",
        lambda s: pz.inject_batched_lora(s["model"], ["head"], True, 2),
        TypeError,
        ["num_adapters"],
        _mlp,
        M,
    ),
    Refusal(
        "batched-rslora-str",
        lambda s: pz.inject_batched_lora(s["model"], ["head"], 3, 2, rslora="no"),
        TypeError,
        ["rslora"],
        _mlp,
        M,
    ),
    Refusal(
        "batched-strategy",
        lambda s: pz.inject_batched_lora(s["model"], ["head"], 3, 2, strategy="fast"),
        ValueError,
        ["strategy"],
        _mlp,
        M,
    ),
    Refusal(
        "batched-huge",
        lambda s: pz.inject_batched_lora(s["model"], ["encoder.0", "encoder.2.branch.fc1"], HUGE, 2),
        RuntimeError,
        ["allocate"],
        _mlp_with_lora,
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
        _mlp,
        M,
    ),
    Refusal(
        "build-bottleneck-huge-no-lora",
        lambda s: pz.build_lora_adapter_model(s["model"], [], 2, None, HUGE),
        MemoryError,
        ["adapter_bottleneck"],
        _mlp_with_lora,
        M,
    ),
    Refusal(
        "build-bottleneck-str",
        lambda s: pz.build_lora_adapter_model(s["model"], ["head"], 2, None, "4"),
        TypeError,
        ["adapter_bottleneck"],
        _mlp,
        M,
    ),
    Refusal(
        "build-bottleneck-bool",
        lambda s: pz.build_lora_adapter_model(s["model"], ["head"], 2, None, True),
        TypeError,
        ["adapter_bottleneck"],
        _mlp,
        M,
    ),
    Refusal(
        "build-names-None",
        lambda s: pz.build_lora_adapter_model(s["model"], None, 2),
        TypeError,
        ["lora_names"],
        _mlp,
        M,
    ),
    Refusal(
        "build-d-model-neg",
        lambda s: pz.build_lora_adapter_model(s["model"], ["head"], 2, None, 4, d_model=-1),
        ValueError,
        ["d_model"],
        _mlp,
        M,
    ),
    Refusal(
        "build-bad-name",
        lambda s: pz.build_lora_adapter_model(s["model"], ["head", "hed"], 2, None, 4),
        pz.InjectionError,
        ["hed"],
        _mlp,
        M,
    ),
    Refusal(
        "build-rank-str",
        lambda s: pz.build_lora_adapter_model(s["model"], ["head"], "2", None, 4),
        TypeError,
        ["rank"],
        _mlp,
        M,
    ),
    Refusal(
        "build-nothing",
        lambda s: pz.build_lora_adapter_model(s["model"], [], 2),
        pz.InjectionError,
        ["nothing to train"],
        _mlp,
        M,
    ),
    Refusal("build-base-None", lambda s: pz.build_lora_adapter_model(None, ["head"], 2), TypeError, ["base"]),
    # ------------------------------------------------------------------ constructors keep the base's flags
    Refusal(
        "LoRALinear-rank-huge", lambda s: pz.LoRALinear(s["base"], HUGE), RuntimeError, ["allocate"], _base, B
    ),
    Refusal(
        "LoRALinear-rslora-str",
        lambda s: pz.LoRALinear(s["base"], 2, rslora="yes"),
        TypeError,
        ["rslora"],
        _base,
        B,
    ),
    Refusal("LoRALinear-rank-str", lambda s: pz.LoRALinear(s["base"], "2"), TypeError, ["rank"], _base, B),
    Refusal(
        "LoRALinear-alpha-nan", lambda s: pz.LoRALinear(s["base"], 2, NAN), ValueError, ["alpha"], _base, B
    ),
    Refusal(
        "LoRALinear-dropout-neg",
        lambda s: pz.LoRALinear(s["base"], 2, dropout=-0.1),
        ValueError,
        ["dropout"],
        _base,
        B,
    ),
    Refusal(
        "DoRALinear-rank-huge", lambda s: pz.DoRALinear(s["base"], HUGE), RuntimeError, ["allocate"], _base, B
    ),
    Refusal("DoRALinear-norm-fails", _dora_norm_fails, RuntimeError, ["weight norm failed"], _base, B),
    Refusal(
        "DoRALinear-rslora-str",
        lambda s: pz.DoRALinear(s["base"], 2, rslora="yes"),
        TypeError,
        ["rslora"],
        _base,
        B,
    ),
    Refusal(
        "BatchedLoRALinear-huge",
        lambda s: pz.BatchedLoRALinear(s["base"], HUGE, 2),
        RuntimeError,
        ["allocate"],
        _base,
        B,
    ),
    Refusal(
        "BatchedLoRALinear-rslora-str",
        lambda s: pz.BatchedLoRALinear(s["base"], 3, 2, rslora="yes"),
        TypeError,
        ["rslora"],
        _base,
        B,
    ),
    Refusal(
        "BatchedLoRALinear-rank-bool",
        lambda s: pz.BatchedLoRALinear(s["base"], 3, True),
        TypeError,
        ["rank"],
        _base,
        B,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_and_changes_nothing(case: Refusal) -> None:
    check_refusal(case)
