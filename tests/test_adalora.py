"""AdaLoRALinear, orthogonal_regulariser and RankAllocator against Hugging Face PEFT 0.21.2: its
``adalora.layer.SVDLinear`` around a copy of the same base, the orthogonality term of
``AdaLoraModel.forward`` and its ``RankAllocator`` driven by ``AdaLoraModel.update_and_allocate``
(``get_peft_model`` with an ``AdaLoraConfig``). Identical randomised A / E / B and data; exact.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from peft_zoo.adalora import AdaLoRALinear, orthogonal_regulariser
from peft_zoo.adalora_allocator import RankAllocator, adalora_budget
from peft_zoo.core.checks import weight_of
from peft_zoo.testing import assert_close, assert_model_unchanged, fingerprint, leading_shapes, seeds

PROPERTY = settings(max_examples=15, deadline=None)
EXACT: dict[str, Any] = {"atol": 0.0, "rtol": 0.0}
NAMES = ("lora_A", "lora_E", "lora_B")


def peft_config(**kw: Any) -> Any:
    peft = pytest.importorskip("peft")
    kw.setdefault("total_step", 20)
    return peft.AdaLoraConfig(**kw)


def peft_layer(base: nn.Module, rank: int, alpha: float, dropout: float = 0.0, fifo: bool = False) -> Any:
    """PEFT's SVDLinear around a copy of ``base``."""
    pytest.importorskip("peft")
    from peft.tuners.adalora.layer import SVDLinear

    config = peft_config(init_r=rank, lora_alpha=alpha, lora_dropout=dropout, fan_in_fan_out=fifo)
    return SVDLinear(copy.deepcopy(base), "default", config=config, r=rank, lora_alpha=alpha)


def grad_of(p: torch.Tensor) -> torch.Tensor:
    assert p.grad is not None, "no gradient reached this parameter"
    return p.grad


def ada(model: nn.Module, name: str) -> AdaLoRALinear:
    layer = getattr(model, name)
    assert isinstance(layer, AdaLoRALinear)
    return layer


def randomise(ours: AdaLoRALinear, theirs: Any, seed: int, std: float = 1.0) -> None:
    """The same random, nonzero A, E, B (normal, standard deviation ``std``) on both sides."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in NAMES:
            mine = getattr(ours, name)
            value = (std * torch.randn(mine.shape, generator=gen, dtype=torch.float64)).to(mine.dtype)
            mine.copy_(value)
            getattr(theirs, name)["default"].copy_(value)


@st.composite
def layer_specs(draw: st.DrawFn) -> dict:
    return {
        "d_in": draw(st.integers(1, 10)),
        "d_out": draw(st.integers(1, 10)),
        "rank": draw(st.integers(1, 6)),
        "alpha": draw(st.floats(0.1, 16.0)),
        "bias": draw(st.booleans()),
        "lead": draw(leading_shapes(max_dims=2, max_size=3)),
        "seed": draw(seeds()),
    }


def pair(spec: dict, dropout: float = 0.0) -> tuple[AdaLoRALinear, Any, torch.Tensor]:
    torch.manual_seed(spec["seed"])
    base = nn.Linear(spec["d_in"], spec["d_out"], bias=spec["bias"])
    theirs = peft_layer(base, spec["rank"], spec["alpha"], dropout)
    ours = AdaLoRALinear(copy.deepcopy(base), spec["rank"], spec["alpha"], dropout=dropout)
    randomise(ours, theirs, spec["seed"])
    return ours, theirs, torch.randn(*spec["lead"], spec["d_in"])


@PROPERTY
@given(layer_specs())
def test_layer_equals_peft_svdlinear(spec: dict) -> None:
    ours, theirs, x = pair(spec)
    xo, xt = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    yo, yt = ours(xo), theirs(xt)
    assert_close(yo, yt, what="output vs PEFT", drawn=spec, **EXACT)
    weight = torch.randn(yo.shape, generator=torch.Generator().manual_seed(spec["seed"] + 1))
    (yo * weight).sum().backward()
    (yt * weight).sum().backward()
    for name in NAMES:
        mine, ref = grad_of(getattr(ours, name)), grad_of(getattr(theirs, name)["default"])
        assert_close(mine, ref, what=f"grad {name} vs PEFT", drawn=spec, **EXACT)
    assert_close(grad_of(xo), grad_of(xt), what="input grad vs PEFT", drawn=spec, **EXACT)
    delta = theirs.get_delta_weight("default")
    assert_close(ours.delta_weight(), delta, what="delta_weight vs PEFT", drawn=spec, **EXACT)
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        ours.merge()
        theirs.merge()
        assert_close(
            weight_of(ours.base), theirs.base_layer.weight, what="merged weight", drawn=spec, **EXACT
        )
        assert_close(ours(x), theirs(x), what="merged output vs PEFT", drawn=spec, **EXACT)
        assert_close(ours(x), yo, what="merged vs unmerged output", drawn=spec, atol=1e-5, rtol=1e-5)
        ours.unmerge()
        assert_close(ours(x), yo, what="unmerged output", drawn=spec, atol=1e-5, rtol=1e-5)


def test_dropout_path_equals_peft_under_the_same_rng() -> None:
    spec = {"d_in": 6, "d_out": 4, "rank": 3, "alpha": 2.0, "bias": True, "lead": (5,), "seed": 3}
    ours, theirs, x = pair(spec, dropout=0.4)
    torch.manual_seed(11)
    yo = ours(x)
    torch.manual_seed(11)
    yt = theirs(x)
    assert_close(yo, yt, what="dropout output vs PEFT", **EXACT)
    ours.eval()
    assert not torch.equal(yo, ours(x)), "dropout must act in training mode"


def test_conv1d_base_equals_peft_with_fan_in_fan_out() -> None:
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    base = Conv1D(5, 7)  # weight (in=7, out=5)
    theirs = peft_layer(base, 3, 4.0, fifo=True)
    ours = AdaLoRALinear(copy.deepcopy(base), 3, 4.0)
    assert ours.fan_in_fan_out and (ours.in_features, ours.out_features) == (7, 5)
    randomise(ours, theirs, 5)
    x = torch.randn(2, 7)
    assert_close(ours(x), theirs(x), what="Conv1D output vs PEFT", **EXACT)
    ours.merge()
    theirs.merge()
    assert_close(weight_of(ours.base), theirs.base_layer.weight, what="Conv1D merged weight", **EXACT)


def test_init_is_peft_init_and_the_layer_starts_as_its_base() -> None:
    torch.manual_seed(0)
    base = nn.Linear(64, 48)
    layer = AdaLoRALinear(base, 32, 8.0)
    assert layer.lora_A.shape == (32, 64) and layer.lora_E.shape == (32, 1) and layer.lora_B.shape == (48, 32)
    assert torch.count_nonzero(layer.lora_E) == 0 and float(layer.ranknum) == 32.0
    for p in (layer.lora_A, layer.lora_B):
        assert 0.015 < float(p.detach().std()) < 0.025, "PEFT draws A and B from N(0, 0.02^2)"
    assert torch.equal(layer(x := torch.randn(3, 64)), base(x))
    assert layer.scale == pytest.approx(8.0 / (32 + 1e-5))
    assert set(layer.state_dict()) == {"base.weight", "base.bias", *NAMES}, (
        "ranknum is not saved (as in PEFT)"
    )
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["lora_A", "lora_E", "lora_B"]


class Two(nn.Module):
    """Two linears of different shapes whose forward returns PEFT-style outputs with ``loss``."""

    def __init__(self) -> None:
        super().__init__()
        self.a: nn.Module = nn.Linear(6, 5)
        self.b: nn.Module = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> SimpleNamespace:
        y = self.b(torch.tanh(self.a(x)))
        return SimpleNamespace(loss=(y - target).square().mean(), logits=y)


def both_models(rank: int, seed: int, **schedule: Any) -> tuple[Two, Any]:
    """Our Two with AdaLoRA on a and b, and PEFT's AdaLoraModel on a copy; same weights."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(seed)
    ours = Two()
    config = peft.AdaLoraConfig(init_r=rank, lora_alpha=2.0, target_modules=["a", "b"], **schedule)
    theirs = peft.get_peft_model(copy.deepcopy(ours), config).base_model  # the AdaLoraModel
    ours.a = AdaLoRALinear(ours.a, rank, 2.0)
    ours.b = AdaLoRALinear(ours.b, rank, 2.0)
    for i, name in enumerate(("a", "b")):
        randomise(ada(ours, name), getattr(theirs.model, name), seed + i, std=0.3)
    return ours, theirs


def test_orthogonal_regulariser_equals_peft_and_its_gradients() -> None:
    ours, theirs = both_models(4, 0, total_step=10, orth_reg_weight=1.0)
    x, t = torch.randn(4, 6), torch.randn(4, 3)
    task = ours(x, t).loss
    reg = orthogonal_regulariser(ours)
    total_theirs = theirs(x, t).loss  # PEFT adds orth_reg_weight * its regulariser to the loss
    assert_close(task + reg, total_theirs, what="loss + orth reg vs PEFT", **EXACT)
    (task + reg).backward()
    total_theirs.backward()
    for layer in ("a", "b"):
        for name in ("lora_A", "lora_B"):
            mine = grad_of(getattr(ada(ours, layer), name))
            ref = grad_of(getattr(getattr(theirs.model, layer), name)["default"])
            assert_close(mine, ref, what=f"grad {layer}.{name} with orth reg", **EXACT)
    eye_q = torch.linalg.qr(torch.randn(6, 4))[0].T  # orthonormal rows: Q Q^T = I
    layer_a = ada(ours, "a")
    with torch.no_grad():
        layer_a.lora_A.copy_(eye_q)
    alone = orthogonal_regulariser(nn.Sequential(layer_a))
    p = layer_a.lora_B
    expected = torch.norm(p.T @ p - torch.eye(4), p="fro") / 2
    assert_close(alone, expected, what="orthonormal Q contributes zero", atol=1e-5, rtol=1e-5)
    assert float(orthogonal_regulariser(nn.Linear(2, 2))) == 0.0


def train_both(ours: Two, theirs: Any, alloc: RankAllocator, steps: int, seed: int) -> list[tuple[int, int]]:
    """The same SGD steps on both sides; after each, both allocators run; compared exactly."""
    gen = torch.Generator().manual_seed(seed)
    budgets = []
    for step in range(steps):
        x, t = torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen)
        loss = ours(x, t).loss
        assert torch.isfinite(loss), f"step {step}: the synthetic training diverged"
        loss.backward()
        theirs.model(x, t).loss.backward()
        with torch.no_grad():
            for layer in ("a", "b"):
                for name in NAMES:
                    mine = getattr(ada(ours, layer), name)
                    ref = getattr(getattr(theirs.model, layer), name)["default"]
                    assert_close(
                        grad_of(mine), grad_of(ref), what=f"step {step} grad {layer}.{name}", **EXACT
                    )
                    mine -= 0.1 * grad_of(mine)
                    ref -= 0.1 * grad_of(ref)
        budget, _ = alloc.step(ours, step)
        theirs.update_and_allocate(step)
        budgets.append((budget, theirs.rankallocator.budget_schedule(step)[0]))
        compare_state(ours, theirs, alloc, step)
        ours.zero_grad()
        theirs.zero_grad()
    return budgets


def compare_state(ours: Two, theirs: Any, alloc: RankAllocator, step: int) -> None:
    ref_alloc = theirs.rankallocator
    assert set(alloc.ipt) == {k.replace(".default", "") for k in ref_alloc.ipt}
    for mine_d, ref_d in ((alloc.ipt, ref_alloc.ipt), (alloc.exp_avg_ipt, ref_alloc.exp_avg_ipt)):
        for key, value in mine_d.items():
            assert_close(value, ref_d[f"{key}.default"], what=f"step {step} {key}", **EXACT)
    for key, value in alloc.exp_avg_unc.items():
        assert_close(value, ref_alloc.exp_avg_unc[f"{key}.default"], what=f"step {step} unc {key}", **EXACT)
    for layer in ("a", "b"):
        mine_e, ref_e = ada(ours, layer).lora_E, getattr(theirs.model, layer).lora_E["default"]
        assert torch.equal(mine_e == 0, ref_e == 0), f"step {step}: masks differ on {layer}"
        assert_close(mine_e, ref_e, what=f"step {step} lora_E {layer}", **EXACT)
    ref_pattern = theirs.peft_config["default"].rank_pattern
    mine_pattern = alloc.rank_pattern
    if ref_pattern is None:
        assert mine_pattern is None
    else:
        assert mine_pattern == {k.replace(".default", ""): v for k, v in ref_pattern.items()}


@pytest.mark.parametrize(
    "schedule",
    [
        {"total_step": 20, "tinit": 3, "tfinal": 5, "deltaT": 2, "target_r": 2},
        {"total_step": 16, "tinit": 0, "tfinal": 2, "deltaT": 1, "target_r": 1, "beta1": 0.7, "beta2": 0.9},
    ],
)
def test_allocator_follows_peft_step_by_step(schedule: dict) -> None:
    ours, theirs = both_models(4, 1, **schedule)
    alloc = RankAllocator(ours, **schedule)
    assert (alloc.init_bgt, alloc.target_bgt) == (
        theirs.rankallocator.init_bgt,
        theirs.rankallocator.target_bgt,
    )
    budgets = train_both(ours, theirs, alloc, schedule["total_step"] + 3, seed=7)
    assert [m for m, _ in budgets] == [r for _, r in budgets]
    assert any(alloc.target_bgt < m < alloc.init_bgt for m, _ in budgets), "no budgeting phase was exercised"
    assert budgets[-1][0] == alloc.target_bgt == 2 * schedule["target_r"]
    alive = ada(ours, "a").active_rank() + ada(ours, "b").active_rank()
    assert 0 < alive <= alloc.target_bgt, "masking must have pruned down to the target budget"


@settings(max_examples=6, deadline=None)
@given(
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(1, 3),
    st.integers(1, 8),
    st.integers(1, 3),
    st.integers(2, 4),
    seeds(),
)
def test_allocator_equals_peft_over_drawn_schedules(
    tinit: int, tfinal: int, dt: int, extra: int, target_r: int, rank: int, seed: int
) -> None:
    schedule = {"total_step": tinit + tfinal + extra, "tinit": tinit, "tfinal": tfinal, "deltaT": dt}
    schedule["target_r"] = min(target_r, rank - 1)  # target_r == init_r: PEFT's kthvalue(k=0) fails
    ours, theirs = both_models(rank, seed % 1000, **schedule)
    alloc = RankAllocator(ours, **schedule)
    budgets = train_both(ours, theirs, alloc, schedule["total_step"] + 2, seed=seed)
    assert [m for m, _ in budgets] == [r for _, r in budgets], schedule
    assert ada(ours, "a").active_rank() + ada(ours, "b").active_rank() <= alloc.target_bgt, schedule


@settings(max_examples=20, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(0, 40),
    st.integers(0, 10),
    st.integers(0, 10),
    st.integers(1, 5),
    st.integers(1, 30),
    st.integers(0, 60),
)
def test_budget_schedule_equals_peft(
    init: int, target: int, tinit: int, tfinal: int, dt: int, extra: int, step: int
) -> None:
    pytest.importorskip("peft")
    from peft.tuners.adalora.layer import RankAllocator as PeftAllocator

    total = tinit + tfinal + extra
    target = min(target, init)
    ref = PeftAllocator(
        nn.Linear(1, 1), peft_config(total_step=total, tinit=tinit, tfinal=tfinal, deltaT=dt), "x"
    )
    ref.init_bgt, ref.target_bgt = init, target
    mine = adalora_budget(step, init, target, tinit=tinit, tfinal=tfinal, total_step=total, deltaT=dt)
    assert mine == ref.budget_schedule(step), (step, init, target, tinit, tfinal, total, dt)


def test_bad_layer_arguments_are_refused_and_change_nothing() -> None:
    base = nn.Linear(4, 3)
    before = fingerprint(base)
    cases: list[tuple[tuple[Any, ...], dict[str, Any], type[Exception]]] = [
        ((0,), {}, ValueError),
        (("2",), {}, TypeError),
        ((True,), {}, TypeError),
        ((2, -1.0), {}, ValueError),
        ((2,), {"dropout": 1.0}, ValueError),
        ((2,), {"fan_in_fan_out": True}, ValueError),
    ]
    for args, kwargs, error in cases:
        with pytest.raises(error):
            AdaLoRALinear(base, *args, **kwargs)
        assert_model_unchanged(base, before, what=f"AdaLoRALinear{args}{kwargs}")
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        AdaLoRALinear(nn.Conv2d(2, 2, 1), 2)
    layer = AdaLoRALinear(base, 2)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        layer(torch.randn(2, 5))
    layer.merge()
    with pytest.raises(RuntimeError, match="unmerge"):
        layer(torch.randn(2, 4))


def test_bad_allocator_arguments_are_refused() -> None:
    model = nn.Sequential(AdaLoRALinear(nn.Linear(4, 3), 3), AdaLoRALinear(nn.Linear(3, 2), 3))
    bad: list[tuple[dict, type[Exception], str]] = [
        ({}, ValueError, "total_step"),
        ({"total_step": 0}, ValueError, "total_step"),
        ({"total_step": 10, "tinit": 5, "tfinal": 5}, ValueError, "budgeting phase"),
        ({"total_step": 10, "beta1": 1.0}, ValueError, "beta1"),
        ({"total_step": 10, "beta2": "0.5"}, TypeError, "beta2"),
        ({"total_step": 10, "target_r": 4}, ValueError, "target_r"),
        ({"total_step": 10, "deltaT": 0}, ValueError, "deltaT"),
        ({"total_step": 10.0}, TypeError, "total_step"),
    ]
    for kwargs, error, match in bad:
        with pytest.raises(error, match=match):
            RankAllocator(model, **kwargs)
    with pytest.raises(ValueError, match="no AdaLoRALinear"):
        RankAllocator(nn.Linear(2, 2), total_step=10)
    alloc, before = RankAllocator(model, total_step=10, target_r=1), fingerprint(model)
    with pytest.raises(RuntimeError, match="no gradient"):
        alloc.step(model, 0)
    assert_model_unchanged(model, before, what="step without gradients")
    assert alloc.ipt == {} and alloc.rank_pattern is None
    with pytest.raises(TypeError, match="global_step"):
        alloc.step(model, "3")  # type: ignore[arg-type]  # refused on purpose
    with pytest.raises(RuntimeError, match="never run"):
        alloc.step(model, 11)
    with pytest.raises(ValueError, match="built for layers"):
        alloc.update_ipt(nn.Sequential(model[0]))


def test_target_equal_to_init_rank_masks_nothing() -> None:
    """PEFT's kthvalue(k=0) fails when target_r == init_r; the budget never drops, so ours keeps all."""
    layers = [AdaLoRALinear(nn.Linear(4, 3), 2), AdaLoRALinear(nn.Linear(3, 2), 2)]
    model, alloc = nn.Sequential(*layers), RankAllocator(nn.Sequential(*layers), target_r=2, total_step=3)
    for layer in layers:
        nn.init.constant_(layer.lora_E, 0.5)
    for step in range(5):
        model(torch.randn(2, 4)).sum().backward()
        kept = {"0.lora_E": [True] * 2, "1.lora_E": [True] * 2}
        assert alloc.step(model, step) == (4, kept if step else None)  # step 0 <= tinit: no masking yet
        model.zero_grad()
    assert all(layer.active_rank() == 2 for layer in layers)
