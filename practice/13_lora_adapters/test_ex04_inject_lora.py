"""Grader for challenge 04 · inject_lora. Run: peft-zoo check 4 (or pytest this file).

Each test draws a small model (TinyMLP, TinyTransformerBlock, TinyTransformer, or a Stack of
nn.Sequential inside an nn.ModuleList), which of its Linear layers to target (in a random
order), a rank, an alpha and a seed; it applies your inject_lora and the reference's to two
identical copies and compares them.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from peft_zoo import LoRALinear
from peft_zoo.exercises.graders.injection_calls import (
    NESTED_HINT,
    call,
    check_refused,
    library_injectors_closed,
    unpack,
)
from peft_zoo.exercises.graders.injection_checks import (
    check_lora_settings,
    check_param_list,
    check_requires_grad,
    check_same_tree,
    check_wrapped,
    compare_outputs_and_grads,
)
from peft_zoo.exercises.graders.injection_zoo import (
    bad_name_cases,
    build_model,
    example_input,
    injection_cases,
)
from peft_zoo.exercises.grading import learner_code, require

CHALLENGE = "ex04_inject_lora"
pytestmark = pytest.mark.timeout(120)

# Classic mistakes, planted into a copy of the reference answer by the test suite: the
# grader must reject every one. (description, exact snippet of the answer, replacement)
PLANTED_BUGS: list[tuple[str, str, str]] = [
    (
        "the returned list contains the frozen base weights (layer.parameters())",
        "params += [layer.lora_A, layer.lora_B]",
        "params += list(layer.parameters())",
    ),
    (
        "nested names are missed: getattr(model, name) does not follow dots",
        "module = model.get_submodule(name)",
        "module = getattr(model, name)",
    ),
    (
        "the new layer is set on the root (setattr(model, 'a.b', layer)) instead of on the parent",
        "setattr(model.get_submodule(parent_name), attr, layer)",
        "setattr(model, name, layer)",
    ),
    (
        "no validation before mutating: layers are replaced while the names are checked",
        "        targets.append(module)\n",
        "        targets.append(module)\n"
        '        parent_name, _, attr = name.rpartition(".")\n'
        "        setattr(model.get_submodule(parent_name), attr, LoRALinear(module, rank, alpha))\n",
    ),
    (
        "a non-Linear name is not checked (LoRALinear's TypeError comes mid-injection)",
        "if not isinstance(module, nn.Linear):",
        "if False:",
    ),
    (
        "a missing name escapes as AttributeError instead of ValueError",
        "except AttributeError:",
        "except KeyError:",
    ),
    (
        "alpha is not passed on (the scale is always 1)",
        "layer = LoRALinear(linear, rank, alpha)",
        "layer = LoRALinear(linear, rank)",
    ),
    (
        "the parameters come back in module order, not in the order of the names",
        "    return model, params\n",
        "    order = {id(m): i for i, m in enumerate(model.modules())}\n"
        "    layers = sorted((model.get_submodule(n) for n in names), key=lambda m: order[id(m)])\n"
        "    return model, [p for m in layers for p in (m.lora_A, m.lora_B)]\n",
    ),
    (
        "base layer not frozen: only the wrapped Linears are frozen, the rest of the model still trains",
        "    model.requires_grad_(False)\n    for p in params:\n        p.requires_grad_(True)\n",
        "",
    ),
    (
        "everything is frozen, the new adapter parameters too",
        "    for p in params:\n        p.requires_grad_(True)\n",
        "",
    ),
    (
        "the model is frozen before the names are checked (a refused call changes requires_grad)",
        "    names, targets = list(linear_names), []\n",
        "    model.requires_grad_(False)\n    names, targets = list(linear_names), []\n",
    ),
]

# What a learner's exception on valid input usually means.
HINTS = {
    ValueError: NESTED_HINT,
    AttributeError: NESTED_HINT,
    KeyError: NESTED_HINT,
    TypeError: "LoRALinear(base, rank, alpha): pass the nn.Linear object, then rank and alpha",
}


def _drawn(case):
    return {k: case[k] for k in ("model", "names", "rank", "alpha", "seed")}


def _inject_both(impl, ref, case):
    """Inject into two identical models: the learner's (checked to return itself and a list)
    and the reference's. Returns (mine, theirs, before, params)."""
    (inject,) = require(impl, "inject_lora")
    drawn = _drawn(case)
    mine = build_model(case["model"], case["seed"])
    theirs = build_model(case["model"], case["seed"])
    before = dict(mine.named_modules())
    with library_injectors_closed("inject_lora"):
        out = call(
            inject,
            mine,
            list(case["names"]),
            case["rank"],
            case["alpha"],
            what="inject_lora",
            drawn=drawn,
            hints=HINTS,
        )
    _, params = unpack(out, mine, what="inject_lora", drawn=drawn)
    ref.inject_lora(theirs, list(case["names"]), case["rank"], case["alpha"])
    return mine, theirs, before, params


@settings(max_examples=20, deadline=None, report_multiple_bugs=False)
@given(case=injection_cases())
@learner_code()
def test_replaces_exactly_the_named_layers_in_place(impl, ref, case) -> None:
    mine, theirs, before, _ = _inject_both(impl, ref, case)
    drawn = _drawn(case)
    check_wrapped(mine, before, case["names"], LoRALinear, drawn=drawn)
    check_lora_settings(mine, case["names"], case["rank"], case["alpha"], drawn=drawn)
    check_requires_grad(mine, theirs, drawn=drawn)
    check_same_tree(mine, theirs, drawn=drawn)


@settings(max_examples=20, deadline=None, report_multiple_bugs=False)
@given(case=injection_cases())
@learner_code()
def test_returns_exactly_the_new_lora_parameters_in_name_order(impl, ref, case) -> None:
    mine, _, before, params = _inject_both(impl, ref, case)
    drawn = _drawn(case)
    check_wrapped(mine, before, case["names"], LoRALinear, drawn=drawn)
    layers = [mine.get_submodule(n) for n in case["names"]]
    expected = [p for layer in layers for p in (layer.lora_A, layer.lora_B)]
    check_param_list(
        params, expected, mine, what="the returned params", drawn=drawn, order="the order of linear_names"
    )


@settings(max_examples=15, deadline=None, report_multiple_bugs=False)
@given(case=injection_cases())
@learner_code()
def test_outputs_and_gradients_match_reference(impl, ref, case) -> None:
    mine, theirs, _, _ = _inject_both(impl, ref, case)
    drawn = _drawn(case)
    check_same_tree(mine, theirs, drawn=drawn)
    adapter = [f"{n}.{p}" for n in case["names"] for p in ("lora_A", "lora_B")]
    x = example_input(case["model"], case["seed"])
    compare_outputs_and_grads(mine, theirs, adapter, x, drawn=drawn, seed=case["seed"])


@settings(max_examples=20, deadline=None, report_multiple_bugs=False)
@given(case=bad_name_cases())
@learner_code()
def test_a_bad_name_raises_value_error_and_changes_nothing(impl, case) -> None:
    (inject,) = require(impl, "inject_lora")
    model = build_model(case["model"], case["seed"])
    drawn = {**_drawn(case), "bad": case["bad"], "problem": case["problem"]}
    with library_injectors_closed("inject_lora"):
        check_refused(
            inject,
            model,
            list(case["names"]),
            case["rank"],
            case["alpha"],
            model=model,
            bad=case["bad"],
            what="inject_lora",
            drawn=drawn,
            not_raised_hint=f"a name that {case['problem']} must not be skipped silently: raise ValueError",
        )
