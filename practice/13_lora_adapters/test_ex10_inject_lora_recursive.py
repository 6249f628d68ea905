"""Grader for challenge 10 · inject_lora_recursive. Run: peft-zoo check 10 (or pytest this file).

Each test draws a small model (TinyMLP, TinyTransformerBlock, TinyTransformer, or a Stack of
nn.Sequential inside an nn.ModuleList), some of its Linear layers that already carry LoRA
(put there with peft_zoo.inject_lora), a rank, an alpha and a seed; it applies your
inject_lora_recursive and the reference's to two identical copies and compares them.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import peft_zoo
from peft_zoo import LoRALinear
from peft_zoo.exercises.graders.injection_calls import call, check_refused, library_injectors_closed, unpack
from peft_zoo.exercises.graders.injection_checks import (
    check_lora_settings,
    check_param_list,
    check_requires_grad,
    check_same_tree,
    check_wrapped,
    compare_outputs_and_grads,
)
from peft_zoo.exercises.graders.injection_zoo import KINDS, LINEARS, build_model, example_input
from peft_zoo.exercises.grading import learner_code, require
from peft_zoo.testing import alphas, dims, seeds

CHALLENGE = "ex10_inject_lora_recursive"
pytestmark = pytest.mark.timeout(120)

# Classic mistakes, planted into a copy of the reference answer by the test suite: the
# grader must reject every one. (description, exact snippet of the answer, replacement)
PLANTED_BUGS: list[tuple[str, str, str]] = [
    (
        "nested modules are missed: named_children() sees only the direct children",
        "for name, m in model.named_modules()",
        "for name, m in model.named_children()",
    ),
    (
        "a Linear root is not refused (the call silently adapts nothing)",
        "    if isinstance(model, nn.Linear):  # the root has no parent to replace it through\n"
        '        raise ValueError("inject_lora_recursive: the model is an nn.Linear; use LoRALinear(model, rank)")\n',
        "",
    ),
    (
        "the root is wrapped: no Linear-root check and name '' is not skipped",
        "    if isinstance(model, nn.Linear):  # the root has no parent to replace it through\n"
        '        raise ValueError("inject_lora_recursive: the model is an nn.Linear; use LoRALinear(model, rank)")\n'
        "    # 1. Collect first: never mutate the tree while named_modules() walks it.\n"
        "    targets = [\n"
        "        (name, m)\n"
        "        for name, m in model.named_modules()\n"
        "        if name and isinstance(m, nn.Linear)",
        "    targets = [\n"
        "        (name, m)\n"
        "        for name, m in model.named_modules()\n"
        "        if isinstance(m, nn.Linear)",
    ),
    (
        "double wrapping: the .base of an existing LoRALinear is wrapped again",
        " and id(m) not in lora_bases",
        "",
    ),
    (
        "the returned list also holds the parameters of LoRA layers that were already there",
        "    return model, params\n",
        "    return model, [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_A, m.lora_B)]\n",
    ),
    (
        "alpha is not passed on (the scale is always 1)",
        "layer = LoRALinear(linear, rank, alpha)",
        "layer = LoRALinear(linear, rank)",
    ),
    (
        "base layer not frozen: only the wrapped Linears are frozen, the rest of the model still trains",
        "    model.requires_grad_(False)\n    for p in params:\n        p.requires_grad_(True)\n",
        "",
    ),
    (
        "the model is frozen before the Linear root is refused (a refused call changes requires_grad)",
        "    if isinstance(model, nn.Linear):  # the root has no parent to replace it through\n",
        "    model.requires_grad_(False)\n"
        "    if isinstance(model, nn.Linear):  # the root has no parent to replace it through\n",
    ),
]


@st.composite
def recursive_cases(draw):
    """A model kind, which of its Linears already carry LoRA (maybe none), rank, alpha, seed."""
    kind = draw(st.sampled_from(KINDS))
    return {
        "model": kind,
        "already_lora": draw(st.lists(st.sampled_from(LINEARS[kind]), unique=True, max_size=3)),
        "rank": draw(st.integers(1, 4)),
        "alpha": draw(alphas()),
        "seed": draw(seeds()),
    }


def _model(case) -> nn.Module:
    model = build_model(case["model"], case["seed"])
    if case["already_lora"]:
        peft_zoo.inject_lora(model, case["already_lora"], 2)
    return model


def _earlier_lora_params(model: nn.Module) -> set[str]:
    """Names of the LoRA parameters already in the model: an answer may keep their flags or
    freeze them (the stub's docstring allows either)."""
    return {
        f"{n}.{p}"
        for n, m in model.named_modules()
        if isinstance(m, LoRALinear)
        for p in ("lora_A", "lora_B")
    }


def _targets(model: nn.Module) -> list[str]:
    """What must be wrapped: every Linear below the root that is not an existing LoRA's base, in module order."""
    bases = {id(m.base) for m in model.modules() if isinstance(m, LoRALinear)}
    return [n for n, m in model.named_modules() if n and isinstance(m, nn.Linear) and id(m) not in bases]


def _inject_both(impl, ref, case):
    """Run the learner's injector and the reference's on identical models.
    Returns (mine, theirs, before, targets, params)."""
    (inject,) = require(impl, "inject_lora_recursive")
    mine, theirs = _model(case), _model(case)
    before = dict(mine.named_modules())
    targets = _targets(mine)
    with library_injectors_closed("inject_lora_recursive"):
        out = call(
            inject,
            mine,
            case["rank"],
            case["alpha"],
            what="inject_lora_recursive",
            drawn=case,
            hints={
                TypeError: "LoRALinear(base, rank, alpha): pass the nn.Linear object, then rank and alpha"
            },
        )
    _, params = unpack(out, mine, what="inject_lora_recursive", drawn=case)
    ref.inject_lora_recursive(theirs, case["rank"], case["alpha"])
    return mine, theirs, before, targets, params


MISSED = (
    "a nested Linear was not wrapped: named_children() (or a loop over model.children()) only sees "
    "the direct children; named_modules() walks the whole tree"
)


@settings(max_examples=20, deadline=None, report_multiple_bugs=False)
@given(case=recursive_cases())
@learner_code()
def test_wraps_every_linear_exactly_once(impl, ref, case) -> None:
    earlier = _earlier_lora_params(_model(case))
    mine, theirs, before, targets, _ = _inject_both(impl, ref, case)
    check_wrapped(mine, before, targets, LoRALinear, drawn=case, missed_hint=MISSED)
    check_lora_settings(mine, targets, case["rank"], case["alpha"], drawn=case)
    check_requires_grad(mine, theirs, drawn=case, either=earlier)
    check_same_tree(mine, theirs, drawn=case)


@settings(max_examples=20, deadline=None, report_multiple_bugs=False)
@given(case=recursive_cases())
@learner_code()
def test_returns_only_the_new_parameters_in_module_order(impl, ref, case) -> None:
    mine, _, before, targets, params = _inject_both(impl, ref, case)
    check_wrapped(mine, before, targets, LoRALinear, drawn=case, missed_hint=MISSED)
    layers = [mine.get_submodule(n) for n in targets]
    expected = [p for layer in layers for p in (layer.lora_A, layer.lora_B)]
    check_param_list(
        params, expected, mine, what="the returned params", drawn=case, order="module order (named_modules())"
    )


@settings(max_examples=15, deadline=None, report_multiple_bugs=False)
@given(case=recursive_cases())
@learner_code()
def test_outputs_and_gradients_match_reference(impl, ref, case) -> None:
    earlier = _earlier_lora_params(_model(case))
    mine, theirs, _, _, _ = _inject_both(impl, ref, case)
    check_same_tree(mine, theirs, drawn=case)
    adapter = [n for n, _ in theirs.named_parameters() if n.rsplit(".", 1)[-1] in ("lora_A", "lora_B")]
    x = example_input(case["model"], case["seed"])
    compare_outputs_and_grads(mine, theirs, adapter, x, drawn=case, seed=case["seed"], either=earlier)


@settings(max_examples=10, deadline=None, report_multiple_bugs=False)
@given(d_in=dims(8), d_out=dims(8), bias=st.booleans(), rank=st.integers(1, 4), seed=seeds())
@learner_code()
def test_a_linear_root_is_refused_and_left_unchanged(impl, d_in, d_out, bias, rank, seed) -> None:
    (inject,) = require(impl, "inject_lora_recursive")
    torch.manual_seed(seed)
    model = nn.Linear(d_in, d_out, bias=bias)
    drawn = {"model": f"nn.Linear({d_in}, {d_out}, bias={bias})", "rank": rank, "seed": seed}
    with library_injectors_closed("inject_lora_recursive"):
        check_refused(
            inject,
            model,
            rank,
            model=model,
            bad=None,
            what="inject_lora_recursive",
            reason="when the model itself is an nn.Linear",
            drawn=drawn,
            not_raised_hint="the root has no parent, so it cannot be replaced in place: skipping it silently "
            "adapts nothing, and wrapping it (name '' not skipped) only adds a child named '' and freezes the "
            "weight. If isinstance(model, nn.Linear), raise ValueError",
        )
