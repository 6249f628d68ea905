"""Grader for challenge 05 · build_lora_adapter_model. Run: peft-zoo check 5 (or pytest this file).

Each test draws a small (..., d) -> (..., d) model (TinyMLP, TinyTransformerBlock, or a Stack
of nn.Sequential inside an nn.ModuleList), which Linear layers get LoRA (in a random order),
rank, alpha, an adapter bottleneck (or None) and a seed; it builds your model and the
reference's from two identical copies and compares them.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from peft_zoo import AdapterBlock, BottleneckAdapter, LoRALinear
from peft_zoo.exercises.graders.injection_calls import call, library_function_closed, unpack
from peft_zoo.exercises.graders.injection_checks import (
    check_param_list,
    check_same_tree,
    check_wrapped,
    compare_outputs_and_grads,
)
from peft_zoo.exercises.graders.injection_zoo import SQUARE_KINDS, build_model, example_input, injection_cases
from peft_zoo.exercises.grading import assert_matches, learner_code, require
from peft_zoo.testing import explain

CHALLENGE = "ex05_build_lora_adapter_model"
pytestmark = pytest.mark.timeout(120)

# Classic mistakes, planted into a copy of the reference answer by the test suite: the
# grader must reject every one. (description, exact snippet of the answer, replacement,
# and the bug's name as this grader's "likely:" line gives it: tests/test_diagnosis.py checks it)
PLANTED_BUGS: list[tuple[str, ...]] = [
    (
        # (leaving the freeze out is no longer a bug: inject_lora itself freezes every other parameter)
        "the LoRA parameters are left frozen (only the adapter parameters are re-enabled)",
        "for p in params:",
        "for p in adapter_params:",
        (
            "the LoRA parameters were left frozen",
            "every parameter you return (LoRA and adapter) must be re-enabled",
        ),
    ),
    (
        "the returned list contains the base weights (model.parameters())",
        "    return model, params\n",
        "    return model, list(model.parameters())\n",
        "the list holds frozen base weights",
    ),
    (
        "the adapter parameters are left frozen (only the LoRA parameters are re-enabled)",
        "for p in params:",
        "for p in lora_params:",
        "the adapter parameters were left frozen",
    ),
    (
        "the adapter parameters are missing from the returned list",
        "params = lora_params + adapter_params",
        "params = lora_params",
        "these parameters are missing from the list",
    ),
    (
        "everything is frozen after the new parameters were enabled (nothing trains)",
        "    model.requires_grad_(False)  # freeze everything: embeddings, norms, untouched Linears, ...\n"
        "    for p in params:  # ... then re-enable exactly the new parameters\n"
        "        p.requires_grad_(True)\n",
        "    for p in params:\n        p.requires_grad_(True)\n    model.requires_grad_(False)\n",
        "freeze first, then re-enable: model.requires_grad_(False) after the loop undoes it",
    ),
    (
        "the adapter is created but the base is returned without it",
        "        model = AdapterBlock(base, adapter)",
        "        model = base",
        "model = AdapterBlock(base, BottleneckAdapter(base.d_model, adapter_bottleneck))",
    ),
]

DTYPE = torch.float32  # BottleneckAdapter(d_model, r) is created in the default dtype


@st.composite
def build_cases(draw):
    case = draw(injection_cases(SQUARE_KINDS))
    return {**case, "adapter_bottleneck": draw(st.none() | st.integers(1, 4))}


def _drawn(case):
    return {k: case[k] for k in ("model", "names", "rank", "alpha", "adapter_bottleneck", "seed")}


def _build_both(impl, ref, case):
    """Build the learner's model and the reference's from identical bases.
    Returns (mine, theirs, base, before, params): ``base`` is the learner's base object and
    ``before`` its modules before the call."""
    (build,) = require(impl, "build_lora_adapter_model")
    drawn = _drawn(case)
    base = build_model(case["model"], case["seed"], DTYPE)
    ref_base = build_model(case["model"], case["seed"], DTYPE)
    before = dict(base.named_modules())
    args = (list(case["names"]), case["rank"], case["alpha"], case["adapter_bottleneck"])
    torch.manual_seed(case["seed"])  # the adapter's random down projection: same draw for both
    with library_function_closed("build_lora_adapter_model", "build_lora_adapter_model"):
        out = call(
            build,
            base,
            *args,
            what="build_lora_adapter_model",
            drawn=drawn,
            hints={
                AttributeError: "the adapter needs base.d_model: BottleneckAdapter(base.d_model, bottleneck)"
            },
        )
    mine, params = unpack(out, base, what="build_lora_adapter_model", drawn=drawn, in_place=False)
    torch.manual_seed(case["seed"])
    theirs, _ = ref.build_lora_adapter_model(ref_base, *args)
    return mine, theirs, base, before, params


def _check_structure(mine, base, before, case, drawn) -> None:
    """The returned model is base itself (no adapter) or AdapterBlock(base, BottleneckAdapter)."""
    r = case["adapter_bottleneck"]
    if r is None:
        assert mine is base, explain(
            "with adapter_bottleneck=None the result must be the base model itself (LoRA injected in place)",
            drawn=drawn,
            got=f"a {type(mine).__name__}",
            hint="only wrap the base in an AdapterBlock when adapter_bottleneck is not None",
        )
    else:
        assert isinstance(mine, AdapterBlock) and getattr(mine, "sublayer", None) is base, explain(
            "with an adapter the result must be AdapterBlock(base, adapter), around the base you were given",
            drawn=drawn,
            got=f"a {type(mine).__name__}"
            + ("" if not isinstance(mine, AdapterBlock) else " whose sublayer is not that base"),
            hint="model = AdapterBlock(base, BottleneckAdapter(base.d_model, adapter_bottleneck))",
        )
        adapter = mine.adapter
        assert isinstance(adapter, BottleneckAdapter) and (adapter.d_model, adapter.bottleneck_dim) == (
            base.d_model,
            r,
        ), explain(
            "the adapter must be BottleneckAdapter(base.d_model, adapter_bottleneck)",
            drawn=drawn,
            expected=f"d_model={base.d_model}, bottleneck_dim={r}",
            got=f"{type(adapter).__name__}(d_model={getattr(adapter, 'd_model', '?')}, "
            f"bottleneck_dim={getattr(adapter, 'bottleneck_dim', '?')})",
        )
    check_wrapped(base, before, case["names"], LoRALinear, drawn=drawn)


@settings(max_examples=20, deadline=None, report_multiple_bugs=False)
@given(case=build_cases())
@learner_code()
def test_lora_in_the_named_layers_and_an_optional_adapter_block(impl, ref, case) -> None:
    mine, theirs, base, before, _ = _build_both(impl, ref, case)
    drawn = _drawn(case)
    _check_structure(mine, base, before, case, drawn)
    check_same_tree(mine, theirs, drawn=drawn)


@settings(max_examples=20, deadline=None, report_multiple_bugs=False)
@given(case=build_cases())
@learner_code()
def test_exactly_the_lora_and_adapter_parameters_train_and_are_returned(impl, ref, case) -> None:
    mine, _, base, before, params = _build_both(impl, ref, case)
    drawn = _drawn(case)
    _check_structure(mine, base, before, case, drawn)
    lora = [p for n in case["names"] for p in (base.get_submodule(n).lora_A, base.get_submodule(n).lora_B)]
    adapter = [] if case["adapter_bottleneck"] is None else list(mine.adapter.parameters())
    expected = lora + adapter
    check_param_list(
        params,
        expected,
        mine,
        what="the returned params",
        drawn=drawn,
        order="LoRA first (A1, B1, A2, B2, ... in the order of lora_names), then the adapter's",
    )
    wanted = {id(p) for p in expected}
    should_freeze = [n for n, p in mine.named_parameters() if p.requires_grad and id(p) not in wanted]
    should_train = [n for n, p in mine.named_parameters() if not p.requires_grad and id(p) in wanted]
    assert not should_freeze, explain(
        "these parameters are trainable but should be frozen",
        drawn=drawn,
        got=str(should_freeze[:8]) + (" ..." if len(should_freeze) > 8 else ""),
        hint="the base was left trainable: freeze everything first (model.requires_grad_(False)), "
        "then re-enable the new parameters",
    )
    adapter_names = [n for n in should_train if n.startswith("adapter.")]
    adapter_trains = any(p.requires_grad for n, p in mine.named_parameters() if n.startswith("adapter."))
    hint = (
        "freeze first, then re-enable: model.requires_grad_(False) after the loop undoes it, and every "
        "parameter you return (LoRA and adapter) must be re-enabled"
    )
    if adapter_names and len(adapter_names) == len(should_train):
        hint = (
            "the adapter parameters were left frozen: after freezing the whole model, re-enable the "
            "adapter's parameters too, not only the LoRA ones"
        )
    elif not adapter_names and adapter_trains:
        hint = (
            "the LoRA parameters were left frozen: after freezing the whole model, re-enable every "
            "parameter you return, the LoRA ones too"
        )
    assert not should_train, explain(
        "these parameters are frozen but should be trainable",
        drawn=drawn,
        got=str(should_train[:8]) + (" ..." if len(should_train) > 8 else ""),
        hint=hint,
    )


@settings(max_examples=15, deadline=None, report_multiple_bugs=False)
@given(case=build_cases())
@learner_code()
def test_starts_equal_to_the_base_and_matches_the_reference(impl, ref, case) -> None:
    mine, theirs, _, _, _ = _build_both(impl, ref, case)
    drawn = _drawn(case)
    check_same_tree(mine, theirs, drawn=drawn)
    x = example_input(case["model"], case["seed"], DTYPE)
    original = build_model(case["model"], case["seed"], DTYPE)
    with torch.no_grad():
        # B = 0 and up_proj = 0 at initialisation: LoRA adds nothing, the adapter block is x + base(x).
        at_init = original(x) if case["adapter_bottleneck"] is None else x + original(x)
        assert_matches(
            mine(x),
            at_init,
            what="output at initialisation ("
            + ("base(x)" if case["adapter_bottleneck"] is None else "AdapterBlock: x + base(x)")
            + ")",
            drawn=drawn,
            bugs={
                "the base output without the block's residual (not a serial AdapterBlock?)": lambda: original(
                    x
                )
            },
        )
    trained = [n for n, p in theirs.named_parameters() if p.requires_grad]
    compare_outputs_and_grads(mine, theirs, trained, x, drawn=drawn, seed=case["seed"])
