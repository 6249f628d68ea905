"""LoKrLinear: ΔW = (alpha / r) W1 ⊗ W2 with PEFT's factorisation and "use full matrix" rule,
checked by hand and against PEFT 0.21.2's ``peft.tuners.lokr.layer.Linear`` built around a copy
of the same base with the same factors: which tensors exist and their shapes, outputs, factor
gradients, delta weight, merge / unmerge, dropout under one RNG seed, seeded initialisation
(all three ``init_weights`` values) and parameter counts. Bad arguments raise and change nothing.
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
    peft_params,
    randomise_and_copy,
    trainable_count,
)
from torch import nn

from peft_zoo.lokr import LoKrLinear, factorization, lokr_shapes, use_full_matrices
from peft_zoo.testing import assert_model_unchanged, fingerprint, leading_shapes, seeds

PROPERTY = settings(max_examples=20, deadline=None)
FACTORS = st.sampled_from([-1, -1, 1, 2, 3, 4, 5, 8])


@st.composite
def specs(draw: st.DrawFn) -> dict:
    return {
        "d_in": draw(st.sampled_from([1, 4, 6, 7, 8, 12, 16, 18, 24, 32])),
        "d_out": draw(st.sampled_from([1, 3, 4, 8, 9, 10, 16, 20, 32])),
        "rank": draw(st.integers(1, 10)),
        "alpha": draw(st.sampled_from([1.0, 4.0, 8.0, 0.5, 3.0])),
        "decompose_both": draw(st.booleans()),
        "decompose_factor": draw(FACTORS),
        "bias": draw(st.booleans()),
        "lead": draw(leading_shapes(max_dims=2, max_size=3)),
        "seed": draw(seeds()),
    }


def make(
    spec: dict, dtype: torch.dtype = torch.float32, **kwargs
) -> tuple[LoKrLinear, nn.Module, torch.Tensor]:
    torch.manual_seed(spec["seed"])
    base = nn.Linear(spec["d_in"], spec["d_out"], bias=spec["bias"], dtype=dtype)
    hp = {"decompose_both": spec["decompose_both"], "decompose_factor": spec["decompose_factor"], **kwargs}
    ours = LoKrLinear(copy.deepcopy(base), spec["rank"], spec["alpha"], **hp)
    theirs = peft_layer("lokr", base, spec["rank"], spec["alpha"], **hp)
    x = torch.randn(*spec["lead"], spec["d_in"], dtype=dtype)
    return ours, theirs, x


# ----------------------------------------------------------------------------- against PEFT


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 600), st.one_of(st.just(-1), st.integers(1, 40)))
def test_factorization_equals_peft(dimension: int, factor: int) -> None:
    layer_module = pytest.importorskip("peft.tuners.lokr.layer")
    m, n = factorization(dimension, factor)
    assert (m, n) == layer_module.factorization(dimension, factor)
    assert m * n == dimension


def test_factorization_examples_from_peft_docs() -> None:
    assert factorization(256) == (16, 16)
    assert factorization(128) == (8, 16)
    assert factorization(127) == (1, 127)
    assert factorization(128, 4) == (4, 32)
    assert factorization(12, 5) == (3, 4)  # 5 does not divide 12: the best pair with m <= 5


@PROPERTY
@given(specs(), st.sampled_from([torch.float32, torch.float64]))
def test_equals_peft_tensors_outputs_gradients_delta_and_merge(spec: dict, dtype: torch.dtype) -> None:
    ours, theirs, x = make(spec, dtype)
    shapes = {n: tuple(p.shape) for n, p in peft_params(theirs).items()}
    assert {n: tuple(p.shape) for n, p in ours.adapter_named_parameters()} == shapes
    diffs = full_comparison(ours, theirs, x)
    mag = float(ours.delta_weight().abs().max()) * (1 + float(x.abs().max())) * spec["d_in"]
    check(diffs, mag, dtype)


@PROPERTY
@given(specs(), st.sampled_from([0.3, 0.9]), st.sampled_from([0.0, 0.4]), st.booleans())
def test_dropout_equals_peft_under_one_seed(
    spec: dict, rank_p: float, module_p: float, rescale: bool
) -> None:
    kwargs: dict = {"rank_dropout": rank_p, "module_dropout": module_p, "rank_dropout_scale": rescale}
    ours, theirs, x = make(spec, **kwargs)
    randomise_and_copy(ours, theirs)
    ours.train()
    theirs.train()
    for step in range(3):
        diffs = compare_training(ours, theirs, x, seed=spec["seed"] + step)
        check(diffs, float(ours.delta_weight().abs().max()) * (1 + float(x.abs().max())) * 40, torch.float32)


@PROPERTY
@given(specs(), st.sampled_from([True, False, "lycoris"]))
def test_seeded_init_equals_peft(spec: dict, init: bool | str) -> None:
    torch.manual_seed(spec["seed"])
    base = nn.Linear(spec["d_in"], spec["d_out"], bias=spec["bias"])
    hp = {"decompose_both": spec["decompose_both"], "decompose_factor": spec["decompose_factor"]}
    torch.manual_seed(1)
    ours = LoKrLinear(copy.deepcopy(base), spec["rank"], spec["alpha"], init_weights=init, **hp)
    torch.manual_seed(1)
    theirs = peft_layer("lokr", base, spec["rank"], spec["alpha"], init_weights=init, **hp)
    other = peft_params(theirs)
    for name, p in ours.adapter_named_parameters():
        assert torch.equal(p, other[name]), name
    assert trainable_count(ours) == trainable_count(theirs)
    zero = torch.count_nonzero(ours.delta_weight()) == 0
    assert zero == (init is not False), "ΔW = 0 exactly when init_weights is True or 'lycoris'"


# ----------------------------------------------------------------------------- the maths by hand


@PROPERTY
@given(specs())
def test_delta_is_the_scaled_kronecker_product_with_the_full_matrix_rule(spec: dict) -> None:
    torch.manual_seed(spec["seed"])
    base = nn.Linear(spec["d_in"], spec["d_out"], dtype=torch.float64)
    layer = LoKrLinear(
        base, spec["rank"], spec["alpha"], init_weights=False, decompose_both=spec["decompose_both"]
    )
    a, b, c, d = lokr_shapes(spec["d_in"], spec["d_out"], -1)
    r = spec["rank"]
    assert a * b == spec["d_out"] and c * d == spec["d_in"]
    assert layer.use_w2 == (2 * r >= max(b, d))
    assert layer.use_w1 == (not spec["decompose_both"] or 2 * r >= max(a, c))
    w1 = layer.lokr_w1 if layer.use_w1 else layer.lokr_w1_a @ layer.lokr_w1_b  # (a, c)
    w2 = layer.lokr_w2 if layer.use_w2 else layer.lokr_w2_a @ layer.lokr_w2_b  # (b, d)
    # Block (i, j) of ΔW is W1[i, j] * W2, written out without torch.kron.
    blocks = [[w1[i, j] * w2 for j in range(c)] for i in range(a)]
    expected = torch.cat([torch.cat(row, dim=1) for row in blocks], dim=0) * (spec["alpha"] / r)
    torch.testing.assert_close(layer.delta_weight(), expected, rtol=1e-12, atol=1e-12)


def test_parameter_count_of_a_4096_square_layer() -> None:
    """4096 = 64 * 64: W1 and W2 are (64, 64) each whatever the rank >= 32: 8192 parameters."""
    assert use_full_matrices(32, lokr_shapes(4096, 4096, -1), True) == (True, True)
    assert use_full_matrices(8, lokr_shapes(4096, 4096, -1), True) == (False, False)
    layer = LoKrLinear(nn.Linear(256, 256, bias=False), 4, decompose_both=True)
    assert trainable_count(layer) == 2 * (16 * 4 + 4 * 16)


def test_training_merged_is_refused_and_unmerge_restores_the_base() -> None:
    layer = LoKrLinear(nn.Linear(8, 6), 2, init_weights=False)
    w0 = layer.base.weight.detach().clone()
    layer.merge()
    with pytest.raises(RuntimeError, match="unmerge"):
        layer.train()(torch.randn(1, 8))
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, w0)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rank": 0}, ValueError, "rank"),
        ({"rank": -1}, ValueError, "rank"),
        ({"rank": "4"}, TypeError, "rank"),
        ({"alpha": -1.0}, ValueError, "alpha"),
        ({"decompose_factor": 0}, ValueError, "decompose_factor"),
        ({"decompose_factor": -2}, ValueError, "decompose_factor"),
        ({"decompose_factor": 2.0}, TypeError, "decompose_factor"),
        ({"decompose_factor": True}, TypeError, "decompose_factor"),
        ({"decompose_both": "yes"}, TypeError, "decompose_both"),
        ({"rank_dropout_scale": 1}, TypeError, "rank_dropout_scale"),
        ({"rank_dropout": 1.5}, ValueError, "rank_dropout"),
        ({"init_weights": "gaussian"}, TypeError, "init_weights"),
        ({"init_weights": 0}, TypeError, "init_weights"),
    ],
)
def test_bad_arguments_raise_and_change_nothing(kwargs: dict, error: type, match: str) -> None:
    base = nn.Linear(8, 6)
    before = fingerprint(base)
    args = {"rank": 2, **kwargs}
    rank = args.pop("rank")
    with pytest.raises(error, match=match):
        LoKrLinear(base, rank, **args)
    assert_model_unchanged(base, before, what="base after a refused LoKrLinear")


@pytest.mark.parametrize("base", [nn.Conv1d(2, 2, 3), nn.Identity(), None])
def test_non_linear_base_is_refused(base: object) -> None:
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        LoKrLinear(base, 2)  # type: ignore[arg-type]  # deliberately wrong type
