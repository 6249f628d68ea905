"""Grader for challenge 20 · dora_linear. Run: peft-zoo check 20 (or pytest this file)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings

from peft_zoo.exercises.graders.ex20_dora_linear import (
    EXAMPLE,
    NORM_HINT,
    SQUARE,
    base_layer,
    call_learner,
    check_attributes,
    eq5,
    forward_bugs,
    layer_pair,
    specs,
)
from peft_zoo.exercises.grading import assert_matches, learner_code, require
from peft_zoo.testing import explain

CHALLENGE = "ex20_dora_linear"
pytestmark = pytest.mark.timeout(120)

# Classic mistakes, each planted alone into a copy of the answer: this grader must reject every one
# (checked by tests/test_exercises.py). (description, snippet in the answer, mistaken snippet,
# and the bug's name as this grader's "likely:" line gives it: tests/test_diagnosis.py checks it)
PLANTED_BUGS: list[tuple[str, ...]] = [
    (
        "magnitude initialised to ones",
        "nn.Parameter(torch.linalg.norm(base.weight.detach(), dim=1))",
        "nn.Parameter(torch.ones(base.out_features, **factory))",
        "magnitude initialised to ones",
    ),
    (
        "magnitude initialised with the column norms of W0",
        "torch.linalg.norm(base.weight.detach(), dim=1)",
        "torch.linalg.norm(base.weight.detach(), dim=0)",
        "one norm per OUTPUT feature",
    ),
    (
        "B initialised non-zero (the layer no longer starts as its base)",
        "self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))",
        "self.lora_B = nn.Parameter(0.1 * torch.randn(base.out_features, rank, **factory))",
        "B random at init: W0 + s B A != W0",
    ),
    (
        "the norm is not detached (gradients flow through ||V||)",
        "return torch.linalg.norm(v, dim=1).detach()",
        "return torch.linalg.norm(v, dim=1)",
        (
            "return the norm .detach()-ed",
            "||V|| is not detached: gradients flow through the norm (Sec. 4.3 treats it as a constant)",
        ),
    ),
    (
        "the norm taken over the columns (dim=0) instead of the rows",
        "return torch.linalg.norm(v, dim=1).detach()",
        "return torch.linalg.norm(v, dim=0).detach()",
        (
            "one norm per OUTPUT feature",
            "the norm over the columns (dim=0)",
            "the norm is taken over the columns (dim=0): it must be one per row (output feature)",
        ),
    ),
    (
        "the norm of W0 instead of W0 + s B A",
        "v = self.base.weight + self.scale * (self.lora_B @ self.lora_A)",
        "v = self.base.weight",
        (
            "the norm of W0 alone (leave out the update and ||V|| ignores B and A)",
            "||V|| uses W0 only: the norm must include the update, ||W0 + s B A||",
        ),
    ),
    (
        "the scale missing inside the norm (||W0 + B A||)",
        "v = self.base.weight + self.scale * (self.lora_B @ self.lora_A)",
        "v = self.base.weight + (self.lora_B @ self.lora_A)",
        (
            "the scale is missing: ||W0 + B A||",
            "the scale is missing inside the norm: ||W0 + s B A||, not ||W0 + B A||",
        ),
    ),
    (
        "the ratio inverted (||V|| / m)",
        "ratio = self.magnitude / self.weight_norm()  # (out,)  m / ||V||",
        "ratio = self.weight_norm() / self.magnitude",
        "the ratio is inverted: it is m / ||V||, not ||V|| / m",
    ),
    (
        "the scale missing on the LoRA path of forward",
        "lora_out = F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale",
        "lora_out = F.linear(F.linear(x, self.lora_A), self.lora_B)",
        "the scale is missing on the LoRA path (B A x instead of s B A x)",
    ),
    (
        "the bias multiplied by the magnitude ratio",
        "return out if self.base.bias is None else out + self.base.bias",
        "return out if self.base.bias is None else out + ratio * self.base.bias",
        "the bias is multiplied by m / ||V||: add the base's bias after the rescaling",
    ),
    (
        "merge forgets the magnitude (writes V / ||V||)",
        "self.base.weight.copy_(ratio[:, None] * adapted)",
        "self.base.weight.copy_(adapted / self.weight_norm()[:, None])",
        "the magnitude is missing: W' = m V / ||V||, not V / ||V||",
    ),
    (
        "merge writes the plain LoRA weight V (no DoRA rescaling)",
        "self.base.weight.copy_(ratio[:, None] * adapted)",
        "self.base.weight.copy_(adapted)",
        "that is the plain LoRA merge V = W0 + s B A: DoRA rescales each row by m / ||V||",
    ),
    (
        "merge scales the columns instead of the rows",
        "self.base.weight.copy_(ratio[:, None] * adapted)",
        "self.base.weight.copy_(adapted * ratio[: adapted.shape[1]])",
        ("one factor per ROW", "the columns are scaled, not the rows: use (m / ||V||)[:, None]"),
    ),
    (
        "merge never sets the merged flag",
        "        self.merged = True\n",
        "        self.merged = False\n",
        "merge never set the merged flag",
    ),
    (
        "merging twice applies the update twice",
        "        if self.merged:\n            return\n",
        "",
        "merge() on a merged layer must return at once",
    ),
]


# ----------------------------------------------------------------------------- initialisation


@settings(max_examples=25, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@learner_code()
def test_initialisation_magnitude_is_row_norms_and_output_equalsbase_layer(impl, spec) -> None:
    (cls,) = require(impl, "DoRALinear")
    base = base_layer(spec)
    layer = call_learner(
        lambda: cls(copy.deepcopy(base), spec["rank"], spec["alpha"]), "DoRALinear(...)", spec, NORM_HINT
    )
    check_attributes(layer, spec)
    assert torch.count_nonzero(layer.lora_B) == 0, explain(
        "lora_B must start at zero",
        drawn=spec,
        hint="B random at init: W0 + s B A != W0, so the layer is not its base",
    )
    frozen = [n for n, p in layer.base.named_parameters() if p.requires_grad]
    assert not frozen, explain("the base layer must stay frozen", drawn=spec, got=f"trainable base.{frozen}")
    row_norms = base.weight.norm(dim=1)
    hint = None
    if torch.allclose(layer.magnitude.detach(), torch.ones_like(row_norms)):
        hint = "magnitude initialised to ones: it must be ||W0|| per row, so that m V / ||V|| = W0 at init"
    elif spec["in"] == spec["out"] and torch.allclose(layer.magnitude.detach(), base.weight.norm(dim=0)):
        hint = "those are the column norms (dim=0): DoRA keeps one magnitude per row (output feature)"
    assert_matches(
        layer.magnitude,
        row_norms,
        what="magnitude at initialisation (the row norms of W0)",
        drawn=spec,
        hint=hint,
    )
    x = torch.randn(*spec["lead"], spec["in"], dtype=torch.float64)
    with torch.no_grad():
        out = call_learner(lambda: layer(x), "forward", spec, NORM_HINT)
        assert_matches(out, base(x), what="output at initialisation must equal the base output", drawn=spec)


# ----------------------------------------------------------------------------- the norm and forward


@settings(max_examples=25, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@example(spec=SQUARE)
@learner_code()
def test_weight_norm_is_the_detached_row_norm_of_w0_plus_sba(impl, ref, spec) -> None:
    mine, theirs = layer_pair(impl, ref, spec)
    norm = call_learner(mine.weight_norm, "weight_norm()", spec, NORM_HINT)
    w0, a, b, s = theirs.base.weight, theirs.lora_A, theirs.lora_B, theirs.scale
    bugs = {
        "the norm of W0 alone (leave out the update and ||V|| ignores B and A)": lambda: w0.norm(dim=1),
        "the scale is missing: ||W0 + B A||": lambda: (w0 + b @ a).norm(dim=1),
        "the norm over the columns (dim=0)": lambda: (w0 + s * b @ a).norm(dim=0),
    }
    assert_matches(
        norm, theirs.weight_norm(), what="weight_norm() = ||W0 + s B A|| per row", drawn=spec, bugs=bugs
    )
    assert not norm.requires_grad, explain(
        "weight_norm() is still attached to the autograd graph",
        drawn=spec,
        got="a tensor with requires_grad=True",
        hint="DoRA treats ||V|| as a constant (Sec. 4.3): return the norm .detach()-ed",
    )


@settings(max_examples=30, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@example(spec=SQUARE)
@learner_code()
def test_forward_matcheseq5(impl, ref, spec) -> None:
    mine, theirs = layer_pair(impl, ref, spec)
    x = torch.randn(*spec["lead"], spec["in"], dtype=torch.float64)
    with torch.no_grad():
        out = call_learner(lambda: mine(x), "forward", spec, NORM_HINT)
        bugs = forward_bugs(theirs, x)
        assert_matches(
            out,
            eq5(theirs, x),
            what="forward vs m (W0 + s B A) x / ||W0 + s B A|| + b",
            drawn=spec,
            bugs=bugs,
        )
        assert_matches(out, theirs(x), what="forward vs the reference answer", drawn=spec, bugs=bugs)


@settings(max_examples=25, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@learner_code()
def test_gradients_treat_the_norm_as_a_constant(impl, ref, spec) -> None:
    mine, theirs = layer_pair(impl, ref, spec)
    x = torch.randn(*spec["lead"], spec["in"], dtype=torch.float64)
    g = torch.randn(*spec["lead"], spec["out"], dtype=torch.float64)
    names = ("lora_A", "lora_B", "magnitude")
    out = call_learner(lambda: mine(x), "forward", spec, NORM_HINT)
    got = torch.autograd.grad((out * g).sum(), [getattr(mine, n) for n in names], allow_unused=True)
    expected = torch.autograd.grad((theirs(x) * g).sum(), [getattr(theirs, n) for n in names])

    def attached():  # the gradients with ||V|| left in the graph
        w0, a, b, m = theirs.base.weight, theirs.lora_A, theirs.lora_B, theirs.magnitude
        v = w0 + theirs.scale * b @ a
        y = F.linear(x, m[:, None] * v / v.norm(dim=1, keepdim=True), theirs.base.bias)
        return torch.autograd.grad((y * g).sum(), [a, b, m])

    for i, name in enumerate(names):
        assert got[i] is not None, explain(
            f"{name} received no gradient",
            drawn=spec,
            hint="is the path through it detached? Only ||V|| is a constant; m, A and B must train",
        )
        assert_matches(
            got[i],
            expected[i],
            what=f"gradient of {name}",
            drawn=spec,
            bugs={
                "||V|| is not detached: gradients flow through the norm (Sec. 4.3 treats it as a constant)": (
                    lambda i=i: attached()[i]
                )
            },
        )


# ----------------------------------------------------------------------------- merge


@settings(max_examples=25, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@example(spec=SQUARE)
@learner_code()
def test_merge_writes_m_v_over_norm_and_keeps_the_output(impl, ref, spec) -> None:
    mine, theirs = layer_pair(impl, ref, spec)
    x = torch.randn(*spec["lead"], spec["in"], dtype=torch.float64)
    weight = mine.base.weight
    with torch.no_grad():
        before = theirs(x)
        w0, a, b, s, m = (
            theirs.base.weight.clone(),
            theirs.lora_A,
            theirs.lora_B,
            theirs.scale,
            theirs.magnitude,
        )
        v = w0 + s * b @ a
        norm = v.norm(dim=1, keepdim=True)
        call_learner(mine.merge, "merge()", spec, "W' = (m / ||V||)[:, None] * V: one factor per ROW")
        theirs.merge()
        bugs = {
            "the magnitude is missing: W' = m V / ||V||, not V / ||V||": lambda: v / norm,
            "that is the plain LoRA merge V = W0 + s B A: DoRA rescales each row by m / ||V||": lambda: v,
            "the rows are scaled by ||V|| / m (inverted)": lambda: norm / m[:, None] * v,
        }
        if spec["in"] == spec["out"]:
            bugs["the columns are scaled, not the rows: use (m / ||V||)[:, None]"] = lambda: (
                (m / norm[:, 0])[None, :] * v
            )
        assert mine.base.weight is weight, explain(
            "merge must write into base.weight in place",
            drawn=spec,
            hint="use base.weight.copy_(...) under no_grad",
        )
        assert_matches(
            mine.base.weight, theirs.base.weight, what="base.weight after merge()", drawn=spec, bugs=bugs
        )
        assert mine.merged is True, explain(
            "merge() must set merged = True",
            drawn=spec,
            got=repr(mine.merged),
            hint="merge never set the merged flag: forward then adds the LoRA path on top of the merged "
            "weight, and a second merge() applies the update again",
        )
        assert_matches(
            call_learner(lambda: mine(x), "forward after merge()", spec, NORM_HINT),
            before,
            what="the merged layer's output must equal the unmerged output",
            drawn=spec,
            hint="once merged, forward is just base(x): the DoRA weight is in base.weight already",
        )
        mine.merge()
        assert_matches(
            mine.base.weight,
            theirs.base.weight,
            what="base.weight after merging a second time (must not change)",
            drawn=spec,
            hint="merge() on a merged layer must return at once",
        )
    assert not mine.base.weight.requires_grad, explain("merge must leave the base frozen", drawn=spec)
