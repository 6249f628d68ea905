"""LoHaLinear: ΔW = (W1a W1b) ⊙ (W2a W2b) * alpha / r, checked by hand and against PEFT 0.21.2's
``peft.tuners.loha.layer.Linear`` built around a copy of the same base with the same factors:
outputs, factor gradients, delta weight, merge / unmerge, dropout under one RNG seed,
seeded initialisation and parameter counts. Bad arguments raise and leave the base untouched.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lycoris_helpers import (
    check,
    compare_training,
    full_comparison,
    peft_layer,
    randomise_and_copy,
    trainable_count,
)
from torch import nn

from peft_zoo.loha import LoHaLinear
from peft_zoo.testing import assert_model_unchanged, fingerprint, leading_shapes, seeds

PROPERTY = settings(max_examples=15, deadline=None)


@st.composite
def specs(draw: st.DrawFn) -> dict:
    return {
        "d_in": draw(st.integers(1, 24)),
        "d_out": draw(st.integers(1, 24)),
        "rank": draw(st.integers(1, 6)),
        "alpha": draw(st.sampled_from([1.0, 4.0, 8.0, 0.5, 3.0])),
        "bias": draw(st.booleans()),
        "lead": draw(leading_shapes(max_dims=2, max_size=3)),
        "seed": draw(seeds()),
    }


def make(
    spec: dict, dtype: torch.dtype = torch.float32, **kwargs
) -> tuple[LoHaLinear, nn.Module, torch.Tensor]:
    torch.manual_seed(spec["seed"])
    base = nn.Linear(spec["d_in"], spec["d_out"], bias=spec["bias"], dtype=dtype)
    ours = LoHaLinear(copy.deepcopy(base), spec["rank"], spec["alpha"], **kwargs)
    theirs = peft_layer("loha", base, spec["rank"], spec["alpha"], **kwargs)
    x = torch.randn(*spec["lead"], spec["d_in"], dtype=dtype)
    return ours, theirs, x


# ----------------------------------------------------------------------------- against PEFT


@PROPERTY
@given(specs(), st.sampled_from([torch.float32, torch.float64]))
def test_equals_peft_outputs_gradients_delta_and_merge(spec: dict, dtype: torch.dtype) -> None:
    ours, theirs, x = make(spec, dtype)
    diffs = full_comparison(ours, theirs, x)
    mag = float(ours.delta_weight().abs().max()) * (1 + float(x.abs().max())) * spec["d_in"]
    # PEFT multiplies by torch.tensor(alpha / r), a float32 scalar even for float64 factors.
    scale = spec["alpha"] / spec["rank"]
    exact = torch.tensor(scale, dtype=torch.float32).item() == scale
    check(diffs, mag, dtype if exact else torch.float32)


@PROPERTY
@given(specs(), st.sampled_from([0.3, 0.5, 0.9]), st.sampled_from([0.0, 0.4]))
def test_dropout_equals_peft_under_one_seed(spec: dict, rank_p: float, module_p: float) -> None:
    kwargs: dict = {"rank_dropout": rank_p, "module_dropout": module_p}
    ours, theirs, x = make(spec, **kwargs)
    randomise_and_copy(ours, theirs)
    ours.train()
    theirs.train()
    for step in range(3):
        diffs = compare_training(ours, theirs, x, seed=spec["seed"] + step)
        check(diffs, float(ours.delta_weight().abs().max()) * (1 + float(x.abs().max())) * 30, torch.float32)


def test_rank_dropout_drops_whole_rows_and_rescales() -> None:
    torch.manual_seed(0)
    layer = LoHaLinear(
        nn.Linear(5, 40, bias=False, dtype=torch.float64), 2, init_weights=False, rank_dropout=0.5
    )
    layer.train()
    x = torch.eye(5, dtype=torch.float64)
    with torch.no_grad():
        delta = layer(x).T - layer.base.weight  # (out, in): ΔW with dropped rows
    full = layer.delta_weight().detach()
    kept = delta.abs().sum(dim=1) > 0
    assert 0 < int(kept.sum()) < 40, "with p = 0.5 some, not all, of 40 rows are dropped"
    ratio = delta[kept] / full[kept]
    torch.testing.assert_close(ratio, torch.full_like(ratio, 40 / int(kept.sum())))


def test_module_dropout_skips_the_whole_update_in_training_only() -> None:
    torch.manual_seed(0)
    layer = LoHaLinear(nn.Linear(4, 3), 2, init_weights=False, module_dropout=0.99).train()
    x = torch.randn(2, 4)
    with torch.no_grad():
        outs = [layer(x) for _ in range(20)]
        skipped = sum(torch.equal(o, layer.base(x)) for o in outs)
        assert skipped >= 15
        assert not torch.equal(layer.eval()(x), layer.base(x)), "eval never drops the update"


@PROPERTY
@given(specs())
def test_seeded_init_equals_peft_and_delta_is_zero(spec: dict) -> None:
    torch.manual_seed(spec["seed"])
    base = nn.Linear(spec["d_in"], spec["d_out"], bias=spec["bias"])
    torch.manual_seed(1)
    ours = LoHaLinear(copy.deepcopy(base), spec["rank"], spec["alpha"])
    torch.manual_seed(1)
    theirs = peft_layer("loha", base, spec["rank"], spec["alpha"])
    for name, p in ours.adapter_named_parameters():
        assert torch.equal(p, getattr(theirs, name)["default"]), name
    assert torch.count_nonzero(ours.delta_weight()) == 0
    assert torch.count_nonzero(ours.hada_w2_b) == 0 and torch.count_nonzero(ours.hada_w1_a) > 0
    x = torch.randn(*spec["lead"], spec["d_in"])
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), base(x)), "at init the layer equals its base"
    assert (
        trainable_count(ours) == trainable_count(theirs) == 2 * spec["rank"] * (spec["d_in"] + spec["d_out"])
    )


# ----------------------------------------------------------------------------- the maths by hand


@PROPERTY
@given(specs())
def test_delta_is_the_scaled_hadamard_product_and_reaches_rank_r_squared(spec: dict) -> None:
    torch.manual_seed(spec["seed"])
    layer = LoHaLinear(
        nn.Linear(spec["d_in"], spec["d_out"], dtype=torch.float64), spec["rank"], spec["alpha"]
    )
    with torch.no_grad():
        for p in (layer.hada_w1_a, layer.hada_w1_b, layer.hada_w2_a, layer.hada_w2_b):
            p.normal_()
    w1 = layer.hada_w1_a @ layer.hada_w1_b
    w2 = layer.hada_w2_a @ layer.hada_w2_b
    expected = w1 * w2 * (spec["alpha"] / spec["rank"])
    torch.testing.assert_close(layer.delta_weight(), expected, rtol=1e-12, atol=1e-12)
    rank = int(torch.linalg.matrix_rank(layer.delta_weight().detach()))
    assert rank <= min(spec["rank"] ** 2, spec["d_in"], spec["d_out"])


def test_rank_can_exceed_twice_r() -> None:
    """r = 3: LoRA with the same number of parameters reaches rank 2 r = 6 at most; random LoHa
    factors reach r² = 9 (each product alone has rank 3)."""
    torch.manual_seed(3)
    layer = LoHaLinear(nn.Linear(16, 16, dtype=torch.float64), 3, init_weights=False)
    assert int(torch.linalg.matrix_rank(layer.delta_weight().detach())) == 9


def test_training_merged_is_refused_and_eval_merged_works() -> None:
    layer = LoHaLinear(nn.Linear(4, 3), 2, init_weights=False)
    layer.merge()
    with pytest.raises(RuntimeError, match="unmerge"):
        layer.train()(torch.randn(1, 4))
    layer.eval()(torch.randn(1, 4))
    layer.merge()  # no-op
    layer.unmerge()
    assert not layer.merged


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rank": 0}, ValueError, "rank"),
        ({"rank": -2}, ValueError, "rank"),
        ({"rank": 2.0}, TypeError, "rank"),
        ({"rank": True}, TypeError, "rank"),
        ({"alpha": 0.0}, ValueError, "alpha"),
        ({"alpha": "8"}, TypeError, "alpha"),
        ({"rank_dropout": 1.0}, ValueError, "rank_dropout"),
        ({"module_dropout": -0.1}, ValueError, "module_dropout"),
        ({"module_dropout": "0.1"}, TypeError, "module_dropout"),
        ({"init_weights": "yes"}, TypeError, "init_weights"),
        ({"init_weights": 1}, TypeError, "init_weights"),
    ],
)
def test_bad_arguments_raise_and_change_nothing(kwargs: dict, error: type, match: str) -> None:
    base = nn.Linear(4, 3)
    before = fingerprint(base)
    args = {"rank": 2, **kwargs}
    rank = args.pop("rank")
    with pytest.raises(error, match=match):
        LoHaLinear(base, rank, **args)
    assert_model_unchanged(base, before, what="base after a refused LoHaLinear")


@pytest.mark.parametrize("base", [nn.Conv2d(2, 2, 3), nn.Embedding(4, 3), "linear"])
def test_non_linear_base_is_refused(base: object) -> None:
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        LoHaLinear(base, 2)  # type: ignore[arg-type]  # deliberately wrong type


def test_wrong_input_width_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        LoHaLinear(nn.Linear(4, 3), 2)(torch.randn(2, 5))
