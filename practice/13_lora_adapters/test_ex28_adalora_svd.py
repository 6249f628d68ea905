"""Grader for challenge 28 · adalora_svd. Run: peft-zoo check 28 (or pytest this file).

Each test draws layers (widths, ranks, alpha, a seed), schedules or budgets, runs your code
beside peft_zoo's own AdaLoRA (peft_zoo.adalora.AdaLoRALinear, orthogonal_regulariser and
peft_zoo.adalora_allocator.RankAllocator, which reproduce Hugging Face PEFT 0.21.2) with the
same random tensors, and compares outputs, gradients, penalties, importance statistics,
budgets and masks.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from hypothesis import example, given, settings

from peft_zoo.adalora import AdaLoRALinear
from peft_zoo.adalora import orthogonal_regulariser as library_regulariser
from peft_zoo.adalora_allocator import RankAllocator, adalora_budget
from peft_zoo.exercises.graders.ex28_adalora_svd import (
    EXAMPLE,
    MASK_CASE,
    MASK_Q,
    NO_UNC,
    PARAMS,
    PATTERN_INVERTED,
    SCHEDULE,
    STACK,
    call_learner,
    delta_bugs,
    ema_bugs,
    forward_bugs,
    layer_triple,
    mask_bugs,
    mask_cases,
    mask_setup,
    regulariser_bugs,
    schedule_bugs,
    schedule_curve,
    schedules,
    score_bugs,
    specs,
    stack_layers,
    stacks,
    train_steps,
)
from peft_zoo.exercises.grading import assert_matches, learner_code, require
from peft_zoo.testing import explain

CHALLENGE = "ex28_adalora_svd"
pytestmark = pytest.mark.timeout(120)

# Classic mistakes, each planted alone into a copy of the answer: this grader must reject every one
# (checked by tests/test_exercises.py). (description, snippet in the answer, mistaken snippet,
# and the bug's name as this grader's "likely:" line gives it: tests/test_diagnosis.py checks it)
PLANTED_BUGS: list[tuple[str, ...]] = [
    (
        "λ left out of the forward (s · P Q x)",
        "h = x @ (self.lora_A * self.lora_E).T",
        "h = x @ self.lora_A.T",
        "λ is left out: the update is s · P diag(λ) Q, not s · P Q",
    ),
    (
        "the scale missing in the forward",
        "return self.base(x) + (h @ self.lora_B.T) * self.scale",
        "return self.base(x) + h @ self.lora_B.T",
        "the scale is missing: s · P diag(λ) Q, s = alpha / (ranknum + 1e-5)",
    ),
    (
        "λ left out of delta_weight",
        "self.scale * (self.lora_B @ (self.lora_A * self.lora_E))",
        "self.scale * (self.lora_B @ self.lora_A)",
        "λ is left out: the update is s · P diag(λ) Q, not s · P Q",
    ),
    (
        "the orthogonality penalty on P only",
        "        norms.append(torch.linalg.norm(q @ q.T - eye))  # ||Q Qᵀ - I||_F: the rows of Q orthonormal\n",
        "",
        "the penalty covers P only: add ||Q Qᵀ - I|| for every layer too",
    ),
    (
        "the squared norms of the paper's Eq. 4 instead of PEFT's",
        "norms.append(torch.linalg.norm(q @ q.T - eye))  # ||Q Qᵀ - I||_F: the rows of Q orthonormal\n"
        "        norms.append(torch.linalg.norm(p.T @ p - eye))",
        "norms.append(torch.linalg.norm(q @ q.T - eye) ** 2)\n        norms.append(torch.linalg.norm(p.T @ p - eye) ** 2)",
        "the norms are squared (the paper's Eq. 4): PEFT adds the unsquared Frobenius norms",
    ),
    (
        "the penalty summed instead of averaged",
        "return torch.stack(norms).mean()",
        "return torch.stack(norms).sum()",
        "the norms are summed: PEFT averages them over the 2 x layers matrices",
    ),
    (
        "Qᵀ Q - I_in instead of Q Qᵀ - I_r",
        "torch.linalg.norm(q @ q.T - eye)",
        "torch.linalg.norm(q.T @ q - torch.eye(q.shape[1], dtype=q.dtype))",
        "Qᵀ Q is (in, in): the rows of Q are the singular vectors, so the penalty is ||Q Qᵀ - I_r||",
    ),
    (
        "importance without the moving average",
        "avg = self.beta1 * avg + (1 - self.beta1) * ipt  # Ī (Eq. 8)",
        "avg = ipt",
        "no moving average: Ī must be β1 Ī + (1 - β1) I, not the latest sensitivity",
    ),
    (
        "the uncertainty computed with the old Ī",
        "        avg = self.beta1 * avg + (1 - self.beta1) * ipt  # Ī (Eq. 8)\n"
        "        self.exp_avg_ipt[name] = avg\n"
        "        self.exp_avg_unc[name] = self.beta2 * unc + (1 - self.beta2) * (ipt - avg).abs()  # U (Eq. 9)\n",
        "        self.exp_avg_unc[name] = self.beta2 * unc + (1 - self.beta2) * (ipt - avg).abs()\n"
        "        avg = self.beta1 * avg + (1 - self.beta1) * ipt\n"
        "        self.exp_avg_ipt[name] = avg\n",
        "the uncertainty uses the old Ī: update Ī first, then U with |I - Ī_new|",
    ),
    (
        "the sensitivity without the absolute value",
        "ipt = (param * grad).abs()",
        "ipt = param * grad",
        "the sensitivity is not an absolute value: I = |w · grad|",
    ),
    (
        "β1 and 1 - β1 swapped in the moving average",
        "avg = self.beta1 * avg + (1 - self.beta1) * ipt  # Ī (Eq. 8)",
        "avg = (1 - self.beta1) * avg + self.beta1 * ipt",
        "β and (1 - β) are swapped: Ī ← β1 Ī + (1 - β1) I",
    ),
    (
        "the score without the uncertainty term",
        "return self.exp_avg_ipt[name] * self.exp_avg_unc[name]",
        "return self.exp_avg_ipt[name]",
        "the uncertainty term is missing: the score is Ī · U, not Ī",
    ),
    (
        "the triplet score sums Q's row and P's column",
        "s_a.mean(dim=1) + s_b.mean(dim=0)",
        "s_a.sum(dim=1) + s_b.sum(dim=0)",
        "Q's row and P's column are summed: Eq. 11 takes their means",
    ),
    (
        "the budget falls linearly",
        "(1 - progress) ** 3",
        "(1 - progress)",
        "the budget falls linearly: AdaLoRA's schedule is cubic, (1 - progress) ** 3",
    ),
    (
        "the schedule ignores tfinal (the budget is off at total_step - tfinal)",
        "progress = (step - tinit) / (total_step - tfinal - tinit)",
        "progress = (step - tinit) / (total_step - tinit)",
        "progress ignores tfinal: it runs over tinit .. total_step - tfinal, reaching target_bgt there",
    ),
    (
        "the warm-up ends one step early",
        "if step <= tinit:",
        "if step < tinit:",
        "the warm-up ends one step early: no pruning while step <= tinit",
    ),
    (
        "masking at every budgeting step",
        "return budget, step % deltaT == 0",
        "return budget, True",
        "masking at every step: in the budgeting phase only when step % deltaT == 0",
    ),
    (
        "the threshold triplet kept (< instead of <=)",
        "dropped = scores[name].view(-1) <= threshold",
        "dropped = scores[name].view(-1) < threshold",
        "scores < threshold: the k-th smallest itself must go too (<= threshold)",
    ),
    (
        "Q's rows masked instead of λ",
        "layer.lora_E[dropped] = 0.0",
        "layer.lora_A[dropped] = 0.0",
        "Q (or P) was masked: only λ_i is set to zero, so the triplet can come back",
    ),
    (
        "k = budget instead of init_bgt - budget",
        "    k = init_bgt - budget\n    if k <= 0:",
        "    k = budget\n    if k <= 0:",
        "k = budget: the number of triplets to prune is init_bgt - budget",
    ),
    (
        "the rank pattern inverted",
        "pattern[name] = (~dropped).tolist()",
        "pattern[name] = dropped.tolist()",
        "the pattern is inverted: True means the triplet is KEPT",
    ),
]


@settings(max_examples=20, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@learner_code()
def test_forward_delta_and_gradients_match_peft_zoo_adalora(impl, ref, spec) -> None:
    mine, theirs, lib = layer_triple(impl, ref, spec)
    x = torch.randn(*spec["lead"], spec["in"], dtype=torch.float64)
    with torch.no_grad():
        out = call_learner(lambda: mine(x), "forward", spec)
        assert_matches(out, lib(x), what="forward vs AdaLoRALinear", drawn=spec, bugs=forward_bugs(theirs, x))
        delta = call_learner(mine.delta_weight, "delta_weight()", spec)
        assert_matches(
            delta, lib.delta_weight(), what="delta_weight() (out, in)", drawn=spec, bugs=delta_bugs(theirs)
        )
    g = torch.randn(*spec["lead"], spec["out"], dtype=torch.float64)
    got = torch.autograd.grad((mine(x) * g).sum(), [getattr(mine, p) for p in PARAMS], allow_unused=True)
    expected = torch.autograd.grad((lib(x) * g).sum(), [getattr(lib, p) for p in PARAMS])
    for name, a, b in zip(PARAMS, got, expected, strict=True):
        assert a is not None, explain(f"{name} received no gradient", drawn=spec)
        assert_matches(a, b, what=f"gradient of {name}", drawn=spec)


@settings(max_examples=20, deadline=None)
@given(spec=stacks())
@example(spec=STACK)
@learner_code()
def test_orthogonal_regulariser_matches_peft_zoo(impl, spec) -> None:
    cls, fn = require(impl, "SVDLinear", "orthogonal_regulariser")
    mine, lib = stack_layers(cls, spec), stack_layers(AdaLoRALinear, spec)
    got = call_learner(lambda: fn(list(mine)), "orthogonal_regulariser(layers)", spec)
    expected = library_regulariser(lib)
    assert_matches(
        got, expected, what="the orthogonality penalty", drawn=spec, bugs=regulariser_bugs(list(lib))
    )
    own = torch.autograd.grad(got, [getattr(m, p) for m in mine for p in ("lora_A", "lora_B")])
    want = torch.autograd.grad(expected, [getattr(m, p) for m in lib for p in ("lora_A", "lora_B")])
    for a, b in zip(own, want, strict=True):
        assert_matches(a, b, what="gradient of the penalty with respect to P and Q", drawn=spec)


@settings(max_examples=15, deadline=None)
@given(spec=stacks())
@example(spec=STACK)
@learner_code()
def test_importance_and_masking_match_rank_allocator(impl, spec) -> None:
    tracker_cls, scores_mask, svd_cls = require(impl, "ImportanceTracker", "mask_to_budget", "SVDLinear")
    tracker = tracker_cls(spec["beta1"], spec["beta2"])
    lib = stack_layers(AdaLoRALinear, spec)
    alloc = RankAllocator(lib, target_r=1, total_step=100, beta1=spec["beta1"], beta2=spec["beta2"])

    def after() -> None:
        alloc.update_ipt(lib)
        for i, layer in enumerate(lib):
            call_learner(partial(tracker.update_layer, str(i), layer), "update()", spec)

    history = train_steps(lib, spec, after)
    for name in history[0]:
        for which, attr in enumerate(("exp_avg_ipt", "exp_avg_unc")):
            table = getattr(tracker, attr)
            assert name in table, explain(f"{attr} has no entry {name!r} after update()", drawn=spec)
            assert_matches(
                table[name],
                getattr(alloc, attr)[name],
                what=f"{attr}[{name!r}] after {spec['steps']} step(s)",
                drawn=spec,
                bugs=ema_bugs(history, name, spec, which),
            )
    scores = {
        str(i): call_learner(partial(tracker.triplet_scores, str(i)), "triplet_scores", spec)
        for i in range(len(lib))
    }
    for prefix, s in scores.items():
        want = alloc.triplet_scores()[f"{prefix}.lora_E"].view(-1)
        assert_matches(s, want, what=f"triplet_scores({prefix!r})", drawn=spec)
    mine = stack_layers(svd_cls, spec)
    with torch.no_grad():
        for a, b in zip(mine, lib, strict=True):
            for p in PARAMS:
                getattr(a, p).copy_(getattr(b, p))
    budget = alloc.init_bgt // 2
    call_learner(
        lambda: scores_mask(dict(zip(scores, mine, strict=True)), scores, alloc.init_bgt, budget),
        "mask_to_budget",
        spec,
    )
    alloc.mask_to_budget(lib, budget)
    lib_layers = [m for m in lib if isinstance(m, AdaLoRALinear)]
    for i, (a, b) in enumerate(zip(mine, lib_layers, strict=True)):
        assert_matches(a.lora_E, b.lora_E, what=f"layer {i}: λ after masking to budget {budget}", drawn=spec)


@settings(max_examples=20, deadline=None)
@given(spec=stacks())
@example(spec=STACK)
@learner_code()
def test_score_and_triplet_scores(impl, ref, spec) -> None:
    (tracker_cls,) = require(impl, "ImportanceTracker")
    lib = stack_layers(AdaLoRALinear, spec)
    alloc = RankAllocator(lib, target_r=1, total_step=100)
    g = torch.Generator().manual_seed(spec["seed"])
    tracker = tracker_cls()
    for i, layer in enumerate(lib):
        for p in PARAMS:
            shape = getattr(layer, p).shape
            alloc.exp_avg_ipt[f"{i}.{p}"] = torch.rand(shape, generator=g, dtype=torch.float64)
            alloc.exp_avg_unc[f"{i}.{p}"] = torch.rand(shape, generator=g, dtype=torch.float64) + 0.5
    tracker.exp_avg_ipt = {k: v.clone() for k, v in alloc.exp_avg_ipt.items()}
    tracker.exp_avg_unc = {k: v.clone() for k, v in alloc.exp_avg_unc.items()}
    expected = alloc.triplet_scores()
    for i in range(len(lib)):
        name = f"{i}.lora_E"
        s = call_learner(partial(tracker.score, name), f"score({name!r})", spec)
        assert_matches(
            s,
            alloc.exp_avg_ipt[name] * alloc.exp_avg_unc[name],
            what=f"score({name!r}) = Ī · U",
            drawn=spec,
            bugs={NO_UNC: partial(alloc.exp_avg_ipt.__getitem__, name)},
        )
        t = call_learner(partial(tracker.triplet_scores, str(i)), f"triplet_scores({str(i)!r})", spec)
        assert_matches(
            t,
            expected[name].view(-1),
            what=f"triplet_scores({str(i)!r}), shape (rank,)",
            drawn=spec,
            bugs=score_bugs(alloc.exp_avg_ipt, alloc.exp_avg_unc, str(i)),
        )


@settings(max_examples=40, deadline=None)
@given(spec=schedules())
@example(spec=SCHEDULE)
@example(spec={**SCHEDULE, "tinit": 4, "tfinal": 0})
@learner_code()
def test_budget_schedule_matches_peft_zoo(impl, spec) -> None:
    (fn,) = require(impl, "budget_schedule")
    for which, what in ((0, "the budget"), (1, "the mask flag")):
        got = call_learner(partial(schedule_curve, fn, spec, which), "budget_schedule", spec)
        assert_matches(
            got,
            schedule_curve(adalora_budget, spec, which),
            what=f"{what} at steps 0 .. total_step + 2",
            drawn=spec,
            bugs=schedule_bugs(spec, which),
        )


@settings(max_examples=25, deadline=None)
@given(case=mask_cases())
@example(case=MASK_CASE)
@learner_code()
def test_mask_to_budget_zeroes_the_lowest_lambdas(impl, ref, case) -> None:
    cls, fn = require(impl, "SVDLinear", "mask_to_budget")
    mine, scores = mask_setup(cls, case)
    theirs, _ = mask_setup(ref.SVDLinear, case)
    fresh, _ = mask_setup(ref.SVDLinear, case)  # unmasked, for the classic mistakes
    before = {n: layer.lora_A.detach().clone() for n, layer in mine.items()}
    init = sum(case["ranks"])
    pattern = call_learner(lambda: fn(mine, scores, init, case["budget"]), "mask_to_budget", case)
    expected = ref.mask_to_budget(theirs, scores, init, case["budget"])
    for name, layer in mine.items():
        assert torch.equal(layer.lora_A, before[name]), explain(
            f"{name}: lora_A (Q) changed", drawn=case, hint=MASK_Q
        )
    for name, layer in mine.items():
        assert_matches(
            layer.lora_E,
            theirs[name].lora_E,
            what=f"{name}: λ after masking",
            drawn=case,
            bugs=mask_bugs(fresh, scores, case, name),
        )
    assert isinstance(pattern, dict) and set(pattern) == set(expected), explain(
        "the pattern's keys", drawn=case, expected=str(sorted(expected)), got=repr(pattern)[:200]
    )
    for name in expected:
        want = torch.tensor(expected[name], dtype=torch.float64)
        assert_matches(
            torch.tensor(pattern[name], dtype=torch.float64),
            want,
            what=f"pattern[{name!r}]",
            drawn=case,
            bugs={PATTERN_INVERTED: partial(torch.sub, 1.0, want)},
        )
