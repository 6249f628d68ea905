"""Grader machinery of challenge 28 · adalora_svd: drawn layers and schedules, the learner's
objects beside peft_zoo's own AdaLoRA (:mod:`peft_zoo.adalora`, :mod:`peft_zoo.adalora_allocator`)
holding the same random tensors, and the classic AdaLoRA mistakes written out (to name the
learner's bug)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from hypothesis import strategies as st
from torch import nn

from peft_zoo.adalora import AdaLoRALinear
from peft_zoo.exercises.grading import require, run_learner
from peft_zoo.testing import leading_shapes, seeds

PARAMS = ("lora_A", "lora_E", "lora_B")
EPS = 1e-5

# The bugs' names, as the "likely:" lines give them.
NO_LAMBDA = "λ is left out: the update is s · P diag(λ) Q, not s · P Q"
NO_SCALE = "the scale is missing: s · P diag(λ) Q, s = alpha / (ranknum + 1e-5)"
P_ONLY = "the penalty covers P only: add ||Q Qᵀ - I|| for every layer too"
SQUARED = "the norms are squared (the paper's Eq. 4): PEFT adds the unsquared Frobenius norms"
SUMMED = "the norms are summed: PEFT averages them over the 2 x layers matrices"
QTQ = "Qᵀ Q is (in, in): the rows of Q are the singular vectors, so the penalty is ||Q Qᵀ - I_r||"
NO_EMA = "no moving average: Ī must be β1 Ī + (1 - β1) I, not the latest sensitivity"
OLD_AVG = "the uncertainty uses the old Ī: update Ī first, then U with |I - Ī_new|"
NO_ABS = "the sensitivity is not an absolute value: I = |w · grad|"
GRAD_ONLY = "the sensitivity is |grad| alone: I = |w · grad| (weight times gradient)"
BETA_SWAPPED = "β and (1 - β) are swapped: Ī ← β1 Ī + (1 - β1) I"
NO_UNC = "the uncertainty term is missing: the score is Ī · U, not Ī"
TRIPLET_SUM = "Q's row and P's column are summed: Eq. 11 takes their means"
TRIPLET_E_ONLY = "only λ's score: a triplet also counts the mean scores of Q's row and P's column"
LINEAR = "the budget falls linearly: AdaLoRA's schedule is cubic, (1 - progress) ** 3"
NO_TFINAL = "progress ignores tfinal: it runs over tinit .. total_step - tfinal, reaching target_bgt there"
WARMUP = "the warm-up ends one step early: no pruning while step <= tinit"
ALWAYS_MASK = "masking at every step: in the budgeting phase only when step % deltaT == 0"
STRICT = "scores < threshold: the k-th smallest itself must go too (<= threshold)"
HIGHEST = "the highest scores were pruned: keep the important triplets, drop the k lowest"
K_BUDGET = "k = budget: the number of triplets to prune is init_bgt - budget"
PATTERN_INVERTED = "the pattern is inverted: True means the triplet is KEPT"
MASK_Q = "Q (or P) was masked: only λ_i is set to zero, so the triplet can come back"


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    """Features, rank, alpha, leading dims and a seed for one layer."""
    return {
        "in": draw(st.integers(1, 6)),
        "out": draw(st.integers(1, 6)),
        "rank": draw(st.integers(1, 4)),
        "alpha": draw(st.one_of(st.none(), st.sampled_from([0.5, 3.0, 8.0]))),
        "lead": draw(leading_shapes(max_dims=2, max_size=3)),
        "seed": draw(seeds()),
    }


@st.composite
def stacks(draw: st.DrawFn) -> dict[str, Any]:
    """1-3 layers (widths, ranks), betas, training steps and a seed."""
    n = draw(st.integers(1, 3))
    return {
        "widths": [draw(st.integers(1, 5)) for _ in range(n + 1)],
        "ranks": [draw(st.integers(1, 4)) for _ in range(n)],
        "beta1": draw(st.sampled_from([0.85, 0.5, 0.7])),
        "beta2": draw(st.sampled_from([0.85, 0.6, 0.3])),
        "steps": draw(st.integers(1, 3)),
        "seed": draw(seeds()),
    }


EXAMPLE = {"in": 5, "out": 3, "rank": 2, "alpha": 3.0, "lead": (4,), "seed": 0}
STACK = {"widths": [4, 3, 5], "ranks": [3, 2], "beta1": 0.7, "beta2": 0.3, "steps": 2, "seed": 0}


def call_learner(fn: Callable[[], Any], what: str, spec: dict[str, Any], hint: str | None = None) -> Any:
    """Run learner code; a shape error becomes a failure that says where to look."""
    return run_learner(
        fn, what, spec, hint, (RuntimeError, IndexError, KeyError, TypeError, ValueError, AttributeError)
    )


def _randomise(layers: list[Any], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers:
            for name in PARAMS:
                p = getattr(layer, name)
                p.copy_(0.7 * torch.randn(p.shape, generator=g, dtype=torch.float64))


def _copy(src: Any, dst: nn.Module) -> None:
    with torch.no_grad():
        for name in PARAMS:
            getattr(dst, name).copy_(getattr(src, name))


def layer_triple(impl: ModuleType, ref: ModuleType, spec: dict[str, Any]) -> tuple[Any, Any, AdaLoRALinear]:
    """The learner's SVDLinear, the reference's and peft_zoo's AdaLoRALinear over copies of one
    base, all holding the same random P, λ (non-zero) and Q."""
    (cls,) = require(impl, "SVDLinear")
    torch.manual_seed(spec["seed"])
    base = nn.Linear(spec["in"], spec["out"], dtype=torch.float64)
    mine = call_learner(lambda: cls(_clone(base), spec["rank"], spec["alpha"]), "SVDLinear(...)", spec)
    theirs = ref.SVDLinear(_clone(base), spec["rank"], spec["alpha"])
    lib = AdaLoRALinear(_clone(base), spec["rank"], spec["alpha"])
    _randomise([theirs], spec["seed"])
    _copy(theirs, mine)
    _copy(theirs, lib)
    return mine, theirs, lib


def _clone(base: nn.Linear) -> nn.Linear:
    new = nn.Linear(base.in_features, base.out_features, dtype=base.weight.dtype)
    new.load_state_dict(base.state_dict())
    return new


def stack_layers(cls: Any, spec: dict[str, Any], seed_offset: int = 0) -> nn.Sequential:
    """``nn.Sequential`` of ``cls`` layers (SVDLinear or AdaLoRALinear) with tanh-free chaining,
    the same random tensors for every ``cls``."""
    w = spec["widths"]
    torch.manual_seed(spec["seed"])
    bases = [nn.Linear(w[i], w[i + 1], dtype=torch.float64) for i in range(len(spec["ranks"]))]
    model = nn.Sequential(*(cls(b, r, 2.0) for b, r in zip(bases, spec["ranks"], strict=True)))
    _randomise(list(model), spec["seed"] + seed_offset)
    return model


def forward_bugs(layer: Any, x: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    """What each classic mistake returns as the layer's output."""
    a, e, b, s = layer.lora_A, layer.lora_E, layer.lora_B, layer.scale
    return {
        NO_LAMBDA: lambda: layer.base(x) + (x @ a.T @ b.T) * s,
        NO_SCALE: lambda: layer.base(x) + x @ (a * e).T @ b.T,
    }


def delta_bugs(layer: Any) -> dict[str, Callable[[], torch.Tensor]]:
    a, e, b, s = layer.lora_A, layer.lora_E, layer.lora_B, layer.scale
    return {NO_LAMBDA: lambda: s * b @ a, NO_SCALE: lambda: b @ (a * e)}


def regulariser_bugs(layers: list[Any]) -> dict[str, Callable[[], torch.Tensor]]:
    """What each classic mistake returns as the penalty."""

    def norms(square: bool = False, q_term: bool = True, qtq: bool = False) -> list[torch.Tensor]:
        out = []
        for layer in layers:
            q, p = layer.lora_A, layer.lora_B
            eye = torch.eye(q.shape[0], dtype=q.dtype)
            cov_q = q.T @ q - torch.eye(q.shape[1], dtype=q.dtype) if qtq else q @ q.T - eye
            terms = ([cov_q] if q_term else []) + [p.T @ p - eye]
            out += [torch.linalg.norm(t) ** (2 if square else 1) for t in terms]
        return out

    return {
        P_ONLY: lambda: torch.stack(norms(q_term=False)).mean(),
        SQUARED: lambda: torch.stack(norms(square=True)).mean(),
        SUMMED: lambda: torch.stack(norms()).sum(),
        QTQ: lambda: torch.stack(norms(qtq=True)).mean(),
    }


def train_steps(
    model: nn.Sequential, spec: dict[str, Any], after: Callable[[], None]
) -> list[dict[str, Any]]:
    """``spec["steps"]`` backward passes of a fixed random loss through ``model``; ``after()``
    runs after each, before the gradients are cleared. Returns each step's (w, grad) per name."""
    g = torch.Generator().manual_seed(spec["seed"] + 1)
    history = []
    for _ in range(spec["steps"]):
        x = torch.randn(3, spec["widths"][0], generator=g, dtype=torch.float64)
        target = torch.randn(3, spec["widths"][-1], generator=g, dtype=torch.float64)
        ((model(x) - target) ** 2).sum().backward()
        history.append(
            {
                f"{i}.{p}": (getattr(layer, p).detach().clone(), getattr(layer, p).grad.clone())
                for i, layer in enumerate(model)
                for p in PARAMS
            }
        )
        after()
        model.zero_grad()
        with torch.no_grad():  # move the weights, so later steps differ
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return history


def simulate(
    history: list[dict[str, Any]], name: str, b1: float, b2: float, variant: str = ""
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Ī, U) of ``name`` after every step of ``history``, the right way or with ``variant``."""
    avg = unc = torch.zeros_like(history[0][name][0])
    for step in history:
        w, grad = step[name]
        ipt = {NO_ABS: w * grad, GRAD_ONLY: grad.abs()}.get(variant, (w * grad).abs())
        old = avg
        if variant == NO_EMA:
            avg = ipt
        elif variant == BETA_SWAPPED:
            avg = (1 - b1) * avg + b1 * ipt
        else:
            avg = b1 * avg + (1 - b1) * ipt
        centre = old if variant == OLD_AVG else avg
        unc = b2 * unc + (1 - b2) * (ipt - centre).abs()
    return avg, unc


def ema_bugs(history: list[dict[str, Any]], name: str, spec: dict[str, Any], which: int) -> dict[str, Any]:
    """What each classic mistake leaves in ``exp_avg_ipt`` (``which=0``) or ``exp_avg_unc`` (1)."""
    variants = (NO_EMA, OLD_AVG, NO_ABS, GRAD_ONLY, BETA_SWAPPED)
    return {
        v: (lambda v=v: simulate(history, name, spec["beta1"], spec["beta2"], v)[which]) for v in variants
    }


def score_bugs(avg: dict[str, torch.Tensor], unc: dict[str, torch.Tensor], prefix: str) -> dict[str, Any]:
    """What each classic mistake returns as ``triplet_scores(prefix)``."""
    s_a, s_e, s_b = (avg[f"{prefix}.{p}"] * unc[f"{prefix}.{p}"] for p in PARAMS)
    i_a, i_e, i_b = (avg[f"{prefix}.{p}"] for p in PARAMS)
    return {
        NO_UNC: lambda: i_e.view(-1) + i_a.mean(dim=1) + i_b.mean(dim=0),
        TRIPLET_SUM: lambda: s_e.view(-1) + s_a.sum(dim=1) + s_b.sum(dim=0),
        TRIPLET_E_ONLY: lambda: s_e.view(-1),
    }


def schedule_curve(fn: Callable[..., tuple[int, bool]], spec: dict[str, Any], which: int) -> torch.Tensor:
    """Budget (``which=0``) or mask flag (1) at every step 0 .. total_step + 2, as a float tensor."""
    kwargs = {k: spec[k] for k in ("init_bgt", "target_bgt", "tinit", "tfinal", "total_step", "deltaT")}
    return torch.tensor([float(fn(t, **kwargs)[which]) for t in range(spec["total_step"] + 3)])


def schedule_bugs(spec: dict[str, Any], which: int) -> dict[str, Callable[[], torch.Tensor]]:
    """The classic schedules, written out."""
    init, target, t0, tf, total, dt = (
        spec[k] for k in ("init_bgt", "target_bgt", "tinit", "tfinal", "total_step", "deltaT")
    )

    def make(variant: str) -> Callable[..., tuple[int, bool]]:
        def fn(step: int, **_: Any) -> tuple[int, bool]:
            if step < t0 or (step == t0 and variant != WARMUP):
                return init, False
            if step > total - tf:
                return target, True
            span = total - t0 if variant == NO_TFINAL else total - tf - t0
            progress = (step - t0) / span
            power = 1 if variant == LINEAR else 3
            return int((init - target) * (1 - progress) ** power + target), (
                variant == ALWAYS_MASK or step % dt == 0
            )

        return fn

    def curve(variant: str) -> Callable[[], torch.Tensor]:
        return lambda: schedule_curve(make(variant), spec, which)

    return {v: curve(v) for v in (LINEAR, NO_TFINAL, WARMUP, ALWAYS_MASK)}


@st.composite
def schedules(draw: st.DrawFn) -> dict[str, Any]:
    """A valid AdaLoRA schedule: tinit < total_step - tfinal, target_bgt < init_bgt."""
    total = draw(st.integers(2, 40))
    tfinal = draw(st.integers(0, total - 1))
    tinit = draw(st.integers(0, total - tfinal - 1))
    init = draw(st.integers(2, 48))
    return {
        "init_bgt": init,
        "target_bgt": draw(st.integers(0, init - 1)),
        "tinit": tinit,
        "tfinal": tfinal,
        "total_step": total,
        "deltaT": draw(st.integers(1, 5)),
    }


SCHEDULE = {"init_bgt": 24, "target_bgt": 4, "tinit": 3, "tfinal": 5, "total_step": 30, "deltaT": 2}


@st.composite
def mask_cases(draw: st.DrawFn) -> dict[str, Any]:
    """1-3 layers' ranks, a budget below the initial one, and a seed for distinct scores."""
    ranks = [draw(st.integers(1, 4)) for _ in range(draw(st.integers(1, 3)))]
    return {"ranks": ranks, "budget": draw(st.integers(0, sum(ranks) - 1)), "seed": draw(seeds())}


MASK_CASE = {"ranks": [3, 2, 4], "budget": 5, "seed": 0}


def mask_setup(cls: Any, case: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Layers of ``cls`` (width 3) with non-zero λ, and distinct random triplet scores."""
    torch.manual_seed(case["seed"])
    layers = {f"layer{i}": cls(nn.Linear(3, 3, dtype=torch.float64), r) for i, r in enumerate(case["ranks"])}
    _randomise(list(layers.values()), case["seed"])
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_E.add_(layer.lora_E.sign() + (layer.lora_E == 0).double())  # |λ| >= 1
    g = torch.Generator().manual_seed(case["seed"])
    order = torch.randperm(sum(case["ranks"]), generator=g).double() + 1.0
    scores, start = {}, 0
    for name, r in zip(layers, case["ranks"], strict=True):
        scores[name] = order[start : start + r] / 7.0
        start += r
    return layers, scores


def masked_e(
    layers: dict[str, Any],
    scores: dict[str, torch.Tensor],
    k: int,
    keep_low: bool = False,
    strict: bool = False,
) -> dict[str, torch.Tensor]:
    """λ of every layer after pruning the ``k`` lowest (or, ``keep_low``, the ``k`` highest)."""
    flat = torch.cat([s for s in scores.values()])
    out = {}
    for name, layer in layers.items():
        e = layer.lora_E.detach().clone()
        if k > 0:
            if keep_low:
                drop = scores[name] >= torch.kthvalue(flat, flat.numel() - k + 1).values
            else:
                t = torch.kthvalue(flat, k).values
                drop = scores[name] < t if strict else scores[name] <= t
            e[drop] = 0.0
        out[name] = e
    return out


def mask_bugs(
    layers: dict[str, Any], scores: dict[str, torch.Tensor], case: dict[str, Any], name: str
) -> dict[str, Callable[[], torch.Tensor]]:
    """What each classic mistake leaves in ``layers[name].lora_E``."""
    k = sum(case["ranks"]) - case["budget"]
    return {
        STRICT: lambda: masked_e(layers, scores, k, strict=True)[name],
        HIGHEST: lambda: masked_e(layers, scores, k, keep_low=True)[name],
        K_BUDGET: lambda: masked_e(layers, scores, min(case["budget"], sum(case["ranks"])))[name],
    }
