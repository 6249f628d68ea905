"""Grader for challenge 23 · merge_and_unload. Run: peft-zoo check 23 (or pytest this file).

Each test draws a stack of nn.Linear and GPT-2 Conv1D layers (widths, which are LoRA-wrapped,
rank, alpha, a seed; sometimes a non-mergeable bottleneck adapter), builds it twice with the
same random weights, runs your function on one copy and the reference on the other, and
compares the weights, the module tree and the outputs.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from peft_zoo.exercises.graders.ex23_merge_and_unload import (
    EXAMPLE,
    FIFO,
    NO_REFUSAL,
    NOT_NAMED,
    PARTIAL,
    SQUARE,
    UNLOAD_SKIPS,
    WITH_BN,
    build,
    call_learner,
    check_plain,
    delta_bugs,
    merged_bugs,
    paths,
    stacks,
    unload_bugs,
)
from peft_zoo.exercises.grading import assert_matches, learner_code, require
from peft_zoo.testing import explain, seeds, snapshot

CHALLENGE = "ex23_merge_and_unload"
pytestmark = pytest.mark.timeout(120)

# Classic mistakes, each planted alone into a copy of the answer: this grader must reject every one
# (checked by tests/test_exercises.py). (description, snippet in the answer, mistaken snippet,
# and the bug's name as this grader's "likely:" line gives it: tests/test_diagnosis.py checks it)
PLANTED_BUGS: list[tuple[str, ...]] = [
    (
        "the scale left out of the update",
        "delta = layer.scale * (layer.lora_B @ layer.lora_A)",
        "delta = layer.lora_B @ layer.lora_A",
        "the scale is missing: the update is scale * B A, not B A",
    ),
    (
        "fan_in_fan_out ignored (the Conv1D update not transposed)",
        "return delta.T if layer.fan_in_fan_out else delta",
        "return delta",
        "fan_in_fan_out ignored: a Conv1D weight is (in, out), so the update is added transposed, (scale B A)^T",
    ),
    (
        "the update subtracted instead of added",
        "layer.base.weight.add_(delta_weight(layer))",
        "layer.base.weight.sub_(delta_weight(layer))",
        "the update is subtracted (that is unmerging): merge adds scale * B A",
    ),
    (
        "merged but the wrapper left in the model (the update counts twice)",
        "        replace(model, name, layer.base)  # the wrapper goes, or the update would count twice\n",
        "",
        "the LoRA wrapper is still in the model: put its base layer back in its place",
    ),
    (
        "the refusal checked inside the merge loop (earlier layers already merged)",
        "    refused = [name for name, layer in layers if not layer.mergeable]\n    if refused:\n",
        "    for name, layer in layers:\n        refused = [] if layer.mergeable else [name]\n        if refused:\n            raise ValueError(f'cannot merge {refused}')\n        with torch.no_grad():\n            layer.base.weight.add_(delta_weight(layer))\n    if refused:\n",
        "the model was changed before the refusal: check every layer first, then merge",
    ),
    (
        "non-mergeable layers skipped silently instead of refused",
        "    refused = [name for name, layer in layers if not layer.mergeable]\n",
        "    layers = [(name, layer) for name, layer in layers if layer.mergeable]\n    refused = []\n",
        "a non-mergeable layer was skipped silently: merge_and_unload must refuse the model",
    ),
    (
        "the refusal does not name the layer",
        'f"cannot merge {refused}:',
        'f"cannot merge this model:',
        "the error must name the layer that cannot merge (its qualified name)",
    ),
    (
        "unload merges the update as well",
        "    for name, layer in adapter_layers(model):\n        replace(model, name, layer.base)\n",
        "    for name, layer in adapter_layers(model):\n        if layer.mergeable:\n            with torch.no_grad():\n                layer.base.weight.add_(delta_weight(layer))\n        replace(model, name, layer.base)\n",
        "unload merged the update: unload removes the adapters and keeps the base weights",
    ),
    (
        "unload skips the non-mergeable wrappers",
        "    for name, layer in adapter_layers(model):\n        replace(model, name, layer.base)\n",
        "    for name, layer in adapter_layers(model):\n        if layer.mergeable:\n            replace(model, name, layer.base)\n",
        "unload left a non-mergeable wrapper in place: unload removes every adapter",
    ),
]


@settings(max_examples=25, deadline=None)
@given(
    d_in=st.integers(1, 5),
    d_out=st.integers(1, 5),
    rank=st.integers(1, 3),
    alpha=st.sampled_from([None, 0.5, 4.0]),
    conv=st.booleans(),
    seed=seeds(),
)
@example(d_in=3, d_out=3, rank=2, alpha=4.0, conv=True, seed=0)
@example(d_in=3, d_out=2, rank=2, alpha=4.0, conv=False, seed=0)
@learner_code()
def test_delta_weight_has_the_base_weights_layout(impl, ref, d_in, d_out, rank, alpha, conv, seed) -> None:
    (delta_weight,) = require(impl, "delta_weight")
    spec = {"kinds": ["lora_conv" if conv else "lora_linear"], "widths": [d_in, d_out], "rank": rank}
    spec |= {"alpha": alpha, "seed": seed}
    layer = build(ref, spec).blocks[0]["proj"]
    got = call_learner(lambda: delta_weight(layer), "delta_weight(layer)", spec)
    wrong_layout = conv and d_in != d_out and getattr(got, "shape", None) == (d_out, d_in)
    assert_matches(
        got,
        ref.delta_weight(layer),
        what=f"delta_weight, shaped like base.weight {tuple(layer.base.weight.shape)}",
        drawn=spec,
        bugs=delta_bugs(layer),
        hint=FIFO if wrong_layout else None,
    )


@settings(max_examples=25, deadline=None)
@given(spec=stacks())
@example(spec=EXAMPLE)
@example(spec=SQUARE)
@learner_code()
def test_merge_and_unload_gives_the_plain_model_with_the_same_outputs(impl, ref, spec) -> None:
    (merge_and_unload,) = require(impl, "merge_and_unload")
    mine, theirs = build(ref, spec), build(ref, spec)
    x = torch.randn(2, spec["widths"][0], dtype=torch.float64)
    with torch.no_grad():
        adapted = theirs(x)
    wrapped = {
        n: mine.get_submodule(n) for n, k in zip(paths(spec), spec["kinds"], strict=True) if "lora" in k
    }
    before = {n: layer.base.weight.detach().clone() for n, layer in wrapped.items()}
    got = call_learner(lambda: merge_and_unload(mine), "merge_and_unload(model)", spec, FIFO)
    ref.merge_and_unload(theirs)
    assert got is mine, explain("merge_and_unload must return the model it was given", drawn=spec)
    for name, layer in wrapped.items():
        assert_matches(
            layer.base.weight,
            theirs.get_submodule(name).weight,
            what=f"{name}: the base weight after merging",
            drawn=spec,
            bugs=merged_bugs(before[name], layer),
        )
    check_plain(mine, {n: layer.base for n, layer in wrapped.items()}, spec, skipped=NO_REFUSAL)
    assert sorted(mine.state_dict()) == sorted(theirs.state_dict()), explain(
        "the merged model's state_dict keys differ from the plain model's", drawn=spec
    )
    with torch.no_grad():
        out = call_learner(lambda: mine(x), "the merged model", spec)
        assert_matches(out, adapted, what="the merged model's output equals the adapted model's", drawn=spec)


@settings(max_examples=20, deadline=None)
@given(spec=stacks(with_bottleneck=True))
@example(spec=WITH_BN)
@learner_code()
def test_non_mergeable_layer_refused_by_name_before_any_change(impl, ref, spec) -> None:
    (merge_and_unload,) = require(impl, "merge_and_unload")
    model = build(ref, spec)
    name = paths(spec)[spec["kinds"].index("bottleneck")]
    tensors, modules = snapshot(model), dict(model.named_modules())
    try:
        merge_and_unload(model)
    except NotImplementedError:
        raise
    except ValueError as err:
        assert name in str(err), explain(
            "the error does not name the layer", drawn=spec, expected=repr(name), got=str(err), hint=NOT_NAMED
        )
    except Exception as err:  # any other exception is the wrong refusal
        raise AssertionError(
            explain("expected a ValueError", drawn=spec, got=f"{type(err).__name__}: {err}", hint=NOT_NAMED)
        ) from None
    else:
        raise AssertionError(explain(f"{name} cannot merge, yet no error", drawn=spec, hint=NO_REFUSAL))
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, tensors[k])]
    moved = [k for k, m in model.named_modules() if modules.get(k) is not m]
    assert not changed and not moved, explain(
        "the refused model was changed",
        drawn=spec,
        got=f"changed {changed[:3]}, moved {moved[:3]}",
        hint=PARTIAL,
    )


@settings(max_examples=20, deadline=None)
@given(spec=st.one_of(stacks(), stacks(with_bottleneck=True)))
@example(spec=WITH_BN)
@learner_code()
def test_unload_puts_every_base_back_unchanged(impl, ref, spec) -> None:
    (unload,) = require(impl, "unload")
    mine, theirs = build(ref, spec), build(ref, spec)
    wrapped = {
        n: mine.get_submodule(n) for n, k in zip(paths(spec), spec["kinds"], strict=True) if k != "linear"
    }
    wrapped = {n: m for n, m in wrapped.items() if hasattr(m, "base")}
    before = {n: layer.base.weight.detach().clone() for n, layer in wrapped.items()}
    got = call_learner(lambda: unload(mine), "unload(model)", spec)
    ref.unload(theirs)
    assert got is mine, explain("unload must return the model it was given", drawn=spec)
    for name, layer in wrapped.items():
        bugs = unload_bugs(before[name], layer)
        assert_matches(
            layer.base.weight,
            before[name],
            what=f"{name}: the base weight after unload",
            drawn=spec,
            bugs=bugs,
        )
    check_plain(mine, {n: layer.base for n, layer in wrapped.items()}, spec, skipped=UNLOAD_SKIPS)
    x = torch.randn(2, spec["widths"][0], dtype=torch.float64)
    with torch.no_grad():
        assert_matches(
            mine(x), theirs(x), what="the unloaded model's output equals the base model's", drawn=spec
        )
