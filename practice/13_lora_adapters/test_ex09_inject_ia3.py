"""Grader for challenge 09 · inject_ia3. Run: peft-zoo check 9 (or pytest this file).

Each test draws a small model (TinyMLP, TinyTransformerBlock, TinyTransformer, or a Stack of
nn.Sequential inside an nn.ModuleList), which of its Linear layers to target (in a random
order) and a seed; it applies your inject_ia3 and the reference's to two identical copies
and compares them.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from peft_zoo import IA3Linear
from peft_zoo.exercises.graders.injection_calls import (
    NESTED_HINT,
    call,
    check_refused,
    library_injectors_closed,
    unpack,
)
from peft_zoo.exercises.graders.injection_checks import (
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

CHALLENGE = "ex09_inject_ia3"
pytestmark = pytest.mark.timeout(120)

# Classic mistakes, planted into a copy of the reference answer by the test suite: the
# grader must reject every one. (description, exact snippet of the answer, replacement)
PLANTED_BUGS: list[tuple[str, str, str]] = [
    (
        "nested names are missed: getattr(model, name) does not follow dots",
        "module = model.get_submodule(name)",
        "module = getattr(model, name)",
    ),
    (
        "the returned list contains the frozen base weights (layer.parameters())",
        "params.append(layer.scale)",
        "params += list(layer.parameters())",
    ),
    (
        "the base weight is returned instead of the scale",
        "params.append(layer.scale)",
        "params.append(layer.base.weight)",
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
        "        setattr(model.get_submodule(parent_name), attr, IA3Linear(module))\n",
    ),
    (
        "a missing name escapes as AttributeError instead of ValueError",
        "except AttributeError:",
        "except KeyError:",
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
    TypeError: "IA3Linear(base) takes the nn.Linear object itself",
}


def _drawn(case):
    return {k: case[k] for k in ("model", "names", "seed")}


def _inject_both(impl, ref, case):
    """Inject into two identical models: the learner's (checked to return itself and a list)
    and the reference's. Returns (mine, theirs, before, params)."""
    (inject,) = require(impl, "inject_ia3")
    drawn = _drawn(case)
    mine = build_model(case["model"], case["seed"])
    theirs = build_model(case["model"], case["seed"])
    before = dict(mine.named_modules())
    with library_injectors_closed("inject_ia3"):
        out = call(inject, mine, list(case["names"]), what="inject_ia3", drawn=drawn, hints=HINTS)
    _, params = unpack(out, mine, what="inject_ia3", drawn=drawn)
    ref.inject_ia3(theirs, list(case["names"]))
    return mine, theirs, before, params


@settings(max_examples=20, deadline=None, report_multiple_bugs=False)
@given(case=injection_cases())
@learner_code()
def test_replaces_exactly_the_named_layers_in_place(impl, ref, case) -> None:
    mine, theirs, before, _ = _inject_both(impl, ref, case)
    drawn = _drawn(case)
    check_wrapped(mine, before, case["names"], IA3Linear, drawn=drawn)
    check_requires_grad(mine, theirs, drawn=drawn)
    check_same_tree(mine, theirs, drawn=drawn)


@settings(max_examples=20, deadline=None, report_multiple_bugs=False)
@given(case=injection_cases())
@learner_code()
def test_returns_exactly_the_new_scales_in_name_order(impl, ref, case) -> None:
    mine, _, before, params = _inject_both(impl, ref, case)
    drawn = _drawn(case)
    check_wrapped(mine, before, case["names"], IA3Linear, drawn=drawn)
    expected = [mine.get_submodule(n).scale for n in case["names"]]
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
    x = example_input(case["model"], case["seed"])
    scales = [f"{n}.scale" for n in case["names"]]
    compare_outputs_and_grads(mine, theirs, scales, x, drawn=drawn, seed=case["seed"])


@settings(max_examples=20, deadline=None, report_multiple_bugs=False)
@given(case=bad_name_cases())
@learner_code()
def test_a_bad_name_raises_value_error_and_changes_nothing(impl, case) -> None:
    (inject,) = require(impl, "inject_ia3")
    model = build_model(case["model"], case["seed"])
    drawn = {**_drawn(case), "bad": case["bad"], "problem": case["problem"]}
    with library_injectors_closed("inject_ia3"):
        check_refused(
            inject,
            model,
            list(case["names"]),
            model=model,
            bad=case["bad"],
            what="inject_ia3",
            drawn=drawn,
            not_raised_hint=f"a name that {case['problem']} must not be skipped silently: raise ValueError",
        )
