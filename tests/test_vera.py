"""VeRALinear and VeraProjections against Hugging Face PEFT 0.21.2's VeRA.

The reference is PEFT itself: its ``VeraModel`` for the seeded shared pair (built by
``get_peft_model`` on small models with layers of different shapes), and its layer class
``peft.tuners.vera.layer.Linear`` built as the tuner builds it (the shared pair passed in
``BufferDict``s under the adapter name). Both sides get identical randomised, nonzero
``lambda_d`` / ``lambda_b``; outputs, gradients, delta weights and merged outputs are compared.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from peft_zoo.core.checks import weight_of
from peft_zoo.testing import assert_close, assert_model_unchanged, fingerprint, leading_shapes, seeds
from peft_zoo.vera import VeRALinear, VeraProjections, vera_projection_pair

PROPERTY = settings(max_examples=15, deadline=None)
EXACT: dict[str, Any] = {"atol": 0.0, "rtol": 0.0}


class Two(nn.Module):
    """Two linears of different shapes: ``a`` (d_in_a -> d_out_a), ``b`` (d_in_b -> d_out_b)."""

    def __init__(self, spec: dict) -> None:
        super().__init__()
        self.a = nn.Linear(spec["in_a"], spec["out_a"], bias=spec["bias"])
        self.b = nn.Linear(spec["in_b"], spec["out_b"], bias=spec["bias"])

    def forward(self, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(xa), self.b(xb)], dim=-1)


@st.composite
def two_specs(draw: st.DrawFn) -> dict:
    dim = st.integers(1, 10)
    return {
        "in_a": draw(dim),
        "out_a": draw(dim),
        "in_b": draw(dim),
        "out_b": draw(dim),
        "rank": draw(st.integers(1, 6)),
        "bias": draw(st.booleans()),
        "d_initial": draw(st.floats(0.01, 2.0)),
        "prng": draw(st.integers(0, 2**31)),
        "seed": draw(seeds()),
    }


@st.composite
def layer_specs(draw: st.DrawFn) -> dict:
    return {
        "d_in": draw(st.integers(1, 10)),
        "d_out": draw(st.integers(1, 10)),
        "extra_in": draw(st.integers(0, 4)),  # the shared pair may be larger than the layer
        "extra_out": draw(st.integers(0, 4)),
        "rank": draw(st.integers(1, 6)),
        "bias": draw(st.booleans()),
        "d_initial": draw(st.floats(-2.0, 2.0).filter(lambda v: abs(v) > 1e-3)),
        "prng": draw(st.integers(0, 2**31)),
        "lead": draw(leading_shapes(max_dims=2, max_size=3)),
        "seed": draw(seeds()),
    }


def peft_two(model: Two, spec: dict) -> Any:
    """PEFT's VeRA model over a copy of ``model``, lambdas randomised from ``spec["seed"]``."""
    peft = pytest.importorskip("peft")
    config = peft.VeraConfig(
        r=spec["rank"],
        target_modules=["a", "b"],
        projection_prng_key=spec["prng"],
        d_initial=spec["d_initial"],
    )
    return peft.get_peft_model(copy.deepcopy(model), config)


def peft_layer(base: nn.Module, proj: VeraProjections, spec: dict, dropout: float = 0.0) -> Any:
    """PEFT's ``vera.layer.Linear`` around a copy of ``base``, given the shared pair the way
    ``VeraModel`` gives it: ``BufferDict``s keyed by the adapter name."""
    peft = pytest.importorskip("peft")
    from peft.tuners._buffer_dict import BufferDict
    from peft.tuners.vera.layer import Linear

    vera_A, vera_B = BufferDict({}, persistent=True), BufferDict({}, persistent=True)
    vera_A["default"], vera_B["default"] = proj.vera_A.clone(), proj.vera_B.clone()
    config = peft.VeraConfig(
        r=spec["rank"],
        d_initial=spec["d_initial"],
        vera_dropout=dropout,
        fan_in_fan_out=spec.get("fifo", False),
    )
    layer = Linear(copy.deepcopy(base), vera_A, vera_B, "default", config=config, r=spec["rank"])
    layer.base_layer.requires_grad_(False)
    return layer


def randomise(ours: VeRALinear, theirs: Any, seed: int) -> None:
    """Give both layers the same random, nonzero lambda vectors."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in ("vera_lambda_b", "vera_lambda_d"):
            mine = getattr(ours, name)
            value = (torch.rand(mine.shape, generator=gen, dtype=torch.float64) + 0.5).to(mine.dtype)
            mine.copy_(value)
            getattr(theirs, name)["default"].copy_(value)


# ----------------------------------------------------------------------------- the shared pair


@PROPERTY
@given(two_specs())
def test_shared_pair_equals_peft_for_the_same_seed_and_sizes(spec: dict) -> None:
    model = Two(spec)
    theirs = peft_two(model, spec).base_model
    ours = VeraProjections.covering([model.a, model.b], spec["rank"], seed=spec["prng"])
    in_max, out_max = max(spec["in_a"], spec["in_b"]), max(spec["out_a"], spec["out_b"])
    assert tuple(ours.vera_A.shape) == (spec["rank"], in_max)
    assert tuple(ours.vera_B.shape) == (out_max, spec["rank"])
    assert_close(ours.vera_A, theirs.vera_A["default"], what="vera_A vs PEFT", drawn=spec, **EXACT)
    assert_close(ours.vera_B, theirs.vera_B["default"], what="vera_B vs PEFT", drawn=spec, **EXACT)
    other = VeraProjections(spec["rank"], in_max, out_max, seed=spec["prng"] + 1)
    assert not torch.equal(other.vera_A, ours.vera_A), "a different seed must give a different pair"


def test_pair_is_kaiming_uniform_over_each_fan_in() -> None:
    vera_A, vera_B = vera_projection_pair(64, 300, 200, seed=7)
    assert vera_A.abs().max() <= math.sqrt(6 / 300) and vera_B.abs().max() <= math.sqrt(6 / 64)
    assert vera_A.abs().max() > 0.9 * math.sqrt(6 / 300) and vera_B.abs().max() > 0.9 * math.sqrt(6 / 64)
    again = vera_projection_pair(64, 300, 200, seed=7)
    assert torch.equal(again[0], vera_A) and torch.equal(again[1], vera_B)


# ----------------------------------------------------------------------------- one layer vs PEFT


def compare_layer(ours: VeRALinear, theirs: Any, x: torch.Tensor, drawn: dict, tol: dict[str, Any]) -> float:
    """Outputs, gradients (lambdas and input), delta weight; returns the max |diff| seen."""
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    a, b = ours(xa), theirs(xb)
    assert_close(a, b, what="output vs PEFT", drawn=drawn, **tol)
    g = torch.randn_like(a)
    (a * g).sum().backward()
    (b * g).sum().backward()
    worst = float((a - b).detach().abs().max()) if a.numel() else 0.0
    pairs = [(getattr(ours, n).grad, getattr(theirs, n)["default"].grad, n) for n in ours.adapter_param_names]
    pairs.append((xa.grad, xb.grad, "x"))
    for mine, ref, name in pairs:
        assert mine is not None and ref is not None, f"no gradient for {name}"
        assert_close(mine, ref, what=f"gradient of {name} vs PEFT", drawn=drawn, **tol)
        worst = max(worst, float((mine - ref).abs().max()) if mine.numel() else 0.0)
    delta, ref_delta = ours.delta_weight(), theirs.get_delta_weight("default")
    delta = delta.T if ours.fan_in_fan_out else delta
    assert_close(delta, ref_delta, what="delta weight vs PEFT", drawn=drawn, **tol)
    return max(worst, float((delta - ref_delta).detach().abs().max()))


@PROPERTY
@given(layer_specs(), st.sampled_from([torch.float32, torch.float64]))
def test_one_layer_matches_peft_outputs_gradients_delta_and_merge(spec: dict, dtype: torch.dtype) -> None:
    torch.manual_seed(spec["seed"])
    base = nn.Linear(spec["d_in"], spec["d_out"], bias=spec["bias"], dtype=dtype)
    proj = VeraProjections(
        spec["rank"], spec["d_in"] + spec["extra_in"], spec["d_out"] + spec["extra_out"], seed=spec["prng"]
    )
    ours = VeRALinear(copy.deepcopy(base), proj, d_initial=spec["d_initial"])
    theirs = peft_layer(base, proj, spec)
    assert_close(ours.vera_lambda_d, theirs.vera_lambda_d["default"], what="lambda_d at init", **EXACT)
    assert_close(ours.vera_lambda_b, theirs.vera_lambda_b["default"], what="lambda_b at init", **EXACT)
    randomise(ours, theirs, spec["seed"])
    x = torch.randn(*spec["lead"], spec["d_in"], dtype=dtype)
    compare_layer(ours, theirs, x, spec, EXACT)
    for layer in (ours, theirs):
        layer.eval().merge()
    assert_close(
        weight_of(ours.base), theirs.base_layer.weight, what="merged weight vs PEFT", drawn=spec, **EXACT
    )
    with torch.no_grad():
        assert_close(ours(x), theirs(x), what="merged output vs PEFT", drawn=spec, **EXACT)
    for layer in (ours, theirs):
        layer.unmerge()
    tol: dict[str, Any] = {"atol": 1e-6 if dtype == torch.float32 else 1e-14, "rtol": 0.0}
    assert_close(weight_of(ours.base), base.weight, what="weight after merge/unmerge", drawn=spec, **tol)


def test_bfloat16_matches_peft_and_merges_with_one_rounding() -> None:
    """Forward, gradients and delta are bit-identical in bfloat16; the merged weight differs by at
    most one bfloat16 step: PEFT adds a rounded delta in bfloat16, this layer sums in float32."""
    spec = {"rank": 16, "d_initial": 0.1}
    torch.manual_seed(1)
    base, proj = nn.Linear(40, 24, dtype=torch.bfloat16), VeraProjections(16, 48, 30, seed=5)
    ours = VeRALinear(copy.deepcopy(base), proj, d_initial=0.1)
    theirs = peft_layer(base, proj, spec)
    randomise(ours, theirs, 2)
    assert compare_layer(ours, theirs, torch.randn(3, 40, dtype=torch.bfloat16), spec, EXACT) == 0.0
    for layer in (ours, theirs):
        layer.eval().merge()
    sliced_A, sliced_B = (t.double() for t in ours.sliced_projections())
    lam_b, lam_d = ours.vera_lambda_b.detach().double(), ours.vera_lambda_d.detach().double()
    delta = (lam_b[:, None] * sliced_B) @ (lam_d[:, None] * sliced_A)  # float64, (out, in)
    exact = base.weight.double() + delta
    bound = 2.0**-7 * (base.weight.double().abs() + delta.abs())  # a bfloat16 step of the larger term
    ours_err = (weight_of(ours.base).double() - exact).abs()
    assert bool((ours_err <= 0.51 * 2.0**-7 * exact.abs() + 1e-9).all()), "merge must round once"
    assert bool(((weight_of(ours.base).double() - theirs.base_layer.weight.double()).abs() <= bound).all())


def test_dropout_in_training_matches_peft() -> None:
    spec = {"rank": 5, "d_initial": 0.7}
    torch.manual_seed(3)
    base, proj = nn.Linear(8, 6), VeraProjections(5, 8, 6, seed=11)
    ours = VeRALinear(copy.deepcopy(base), proj, d_initial=0.7, dropout=0.3).train()
    theirs = peft_layer(base, proj, spec, dropout=0.3).train()
    randomise(ours, theirs, 5)
    x = torch.randn(4, 8)
    torch.manual_seed(0)
    a = ours(x)
    torch.manual_seed(0)
    b = theirs(x)
    assert_close(a, b, what="training output with dropout vs PEFT", **EXACT)
    with torch.no_grad():
        assert not torch.allclose(ours.eval()(x), a), "dropout should change the training output"


def test_conv1d_base_matches_peft() -> None:
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D as conv1d

    spec = {"rank": 3, "d_initial": 0.2, "fifo": True}
    torch.manual_seed(4)
    base = conv1d(7, 5)  # (in=5, out=7), weight stored (5, 7)
    proj = VeraProjections(3, 6, 9, seed=2)
    ours = VeRALinear(copy.deepcopy(base), proj, d_initial=0.2)
    theirs = peft_layer(base, proj, spec)
    assert ours.fan_in_fan_out and ours.in_features == 5 and ours.out_features == 7
    randomise(ours, theirs, 9)
    compare_layer(ours, theirs, torch.randn(2, 3, 5), spec, EXACT)
    for layer in (ours, theirs):
        layer.eval().merge()
    assert_close(weight_of(ours.base), theirs.base_layer.weight, what="merged Conv1D weight vs PEFT", **EXACT)


# ----------------------------------------------------------------------------- a model of two layers


def swap_in_vera(model: Two, spec: dict) -> tuple[Two, VeraProjections]:
    proj = VeraProjections.covering([model.a, model.b], spec["rank"], seed=spec["prng"])
    model.a = VeRALinear(model.a, proj, d_initial=spec["d_initial"])  # type: ignore[assignment]  # wrap in place
    model.b = VeRALinear(model.b, proj, d_initial=spec["d_initial"])  # type: ignore[assignment]  # wrap in place
    return model, proj


@PROPERTY
@given(two_specs())
def test_two_layers_share_one_pair_slice_it_and_match_peft(spec: dict) -> None:
    torch.manual_seed(spec["seed"])
    model = Two(spec)
    theirs = peft_two(model, spec)
    ours, proj = swap_in_vera(copy.deepcopy(model), spec)
    layers = {"a": (ours.a, theirs.base_model.model.a), "b": (ours.b, theirs.base_model.model.b)}
    for name, (mine, ref) in layers.items():
        assert isinstance(mine, VeRALinear) and mine.projections is proj
        sliced_A, sliced_B = mine.sliced_projections()
        assert torch.equal(sliced_A, proj.vera_A[:, : spec[f"in_{name}"]]), f"layer {name} slices A wrongly"
        assert torch.equal(sliced_B, proj.vera_B[: spec[f"out_{name}"]]), f"layer {name} slices B wrongly"
        randomise(mine, ref, spec["seed"] + ord(name))
        expected = (mine.vera_lambda_b[:, None] * sliced_B) @ (mine.vera_lambda_d[:, None] * sliced_A)
        assert_close(mine.delta_weight(), expected, what=f"delta of layer {name}", drawn=spec)
    xa, xb = torch.randn(3, spec["in_a"]), torch.randn(3, spec["in_b"])
    a, b = ours(xa, xb), theirs(xa, xb)
    assert_close(a, b, what="two-layer output vs PEFT", drawn=spec, **EXACT)
    a.square().sum().backward()
    b.square().sum().backward()
    for name, (mine, ref) in layers.items():
        for p in ("vera_lambda_b", "vera_lambda_d"):
            ref_grad = getattr(ref, p)["default"].grad
            assert_close(
                getattr(mine, p).grad, ref_grad, what=f"{name}.{p} grad vs PEFT", drawn=spec, **EXACT
            )
    trainable = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    assert trainable == 2 * spec["rank"] + spec["out_a"] + spec["out_b"]
    assert trainable == theirs.get_nb_trainable_parameters()[0], "trainable count differs from PEFT's"


@PROPERTY
@given(layer_specs())
def test_init_equals_the_base_and_only_the_lambdas_train(spec: dict) -> None:
    torch.manual_seed(spec["seed"])
    base = nn.Linear(spec["d_in"], spec["d_out"], bias=spec["bias"])
    proj = VeraProjections(spec["rank"], spec["d_in"] + spec["extra_in"], spec["d_out"] + spec["extra_out"])
    layer = VeRALinear(copy.deepcopy(base), proj, d_initial=spec["d_initial"])
    x = torch.randn(*spec["lead"], spec["d_in"])
    with torch.no_grad():
        assert_close(layer(x), base(x), what="VeRA at init vs the base", drawn=spec, **EXACT)
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["vera_lambda_b", "vera_lambda_d"]
    assert [n for n, _ in layer.adapter_named_parameters("m")] == ["m.vera_lambda_b", "m.vera_lambda_d"]
    assert torch.equal(layer.vera_lambda_d, torch.full((spec["rank"],), float(spec["d_initial"])))
    assert torch.count_nonzero(layer.vera_lambda_b) == 0
    assert not any(b.requires_grad for b in proj.buffers())


def test_merge_unmerge_weight_property_and_training_while_merged() -> None:
    torch.manual_seed(0)
    layer = VeRALinear(nn.Linear(6, 4, dtype=torch.float64), VeraProjections(3, 6, 4), d_initial=0.5)
    with torch.no_grad():
        layer.vera_lambda_b.normal_()
    x = torch.randn(5, 6, dtype=torch.float64)
    expected = layer(x).detach()
    assert_close(F.linear(x, layer.weight, layer.bias), expected, what="weight property")
    w0 = weight_of(layer.base).detach().clone()
    layer.merge()
    layer.merge()  # no-op
    assert_close(weight_of(layer.base), w0 + layer.delta_weight(), what="merged weight")
    with pytest.raises(RuntimeError, match="unmerge"):
        layer.train()(x)
    with torch.no_grad():
        assert_close(layer(x), expected, what="merged output")
    layer.unmerge()
    layer.unmerge()  # no-op
    assert_close(weight_of(layer.base), w0, what="unmerged weight")
    assert layer.adapter_config()["projection_shape"] == [4, 6]


# ----------------------------------------------------------------------------- bad input


def test_a_layer_larger_than_the_shared_pair_is_refused_and_nothing_changes() -> None:
    proj = VeraProjections(4, 8, 8)
    for base in (nn.Linear(9, 8), nn.Linear(8, 9)):
        before = fingerprint(base)
        with pytest.raises(ValueError, match=r"only cover 8 -> 8.*VeraProjections.covering"):
            VeRALinear(base, proj)
        assert_model_unchanged(base, before, what="refused VeRALinear")
        assert base.weight.requires_grad


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"d_initial": 0.0}, ValueError, "d_initial.*nonzero"),
        ({"d_initial": float("nan")}, ValueError, "d_initial"),
        ({"d_initial": "0.1"}, TypeError, "d_initial"),
        ({"d_initial": True}, TypeError, "d_initial"),
        ({"dropout": 1.0}, ValueError, "dropout"),
        ({"dropout": "0"}, TypeError, "dropout"),
        ({"fan_in_fan_out": True}, ValueError, "fan_in_fan_out"),
        ({"projections": "seed=0"}, TypeError, "projections"),
        ({"projections": nn.Linear(2, 2)}, TypeError, "VeraProjections"),
        ({"base": nn.Conv2d(2, 2, 1)}, TypeError, "base"),
    ],
)
def test_bad_layer_arguments_are_refused_clearly(kwargs: dict, error: type, match: str) -> None:
    base = nn.Linear(4, 3)
    before = fingerprint(base)
    args = {"base": base, "projections": VeraProjections(2, 4, 3)} | kwargs
    with pytest.raises(error, match=match):
        VeRALinear(args.pop("base"), args.pop("projections"), **args)
    assert_model_unchanged(base, before, what="refused VeRALinear")


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((0, 4, 4), {}, ValueError, "rank"),
        ((2.0, 4, 4), {}, TypeError, "rank"),
        ((2, 0, 4), {}, ValueError, "in_features"),
        ((2, 4, True), {}, TypeError, "out_features"),
        ((2, 4, 4), {"seed": -1}, ValueError, "seed"),
        ((2, 4, 4), {"seed": 2**64}, ValueError, "seed"),
        ((2, 4, 4), {"seed": "0"}, TypeError, "seed"),
        ((2, 4, 4), {"seed": False}, TypeError, "seed"),
    ],
)
def test_bad_projection_arguments_are_refused_clearly(
    args: tuple, kwargs: dict, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        VeraProjections(*args, **kwargs)


def test_bad_covering_and_input_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="at least one layer"):
        VeraProjections.covering([], 4)
    with pytest.raises(TypeError, match="covering layer"):
        VeraProjections.covering([nn.ReLU()], 4)
    layer = VeRALinear(nn.Linear(4, 3), VeraProjections(2, 4, 3))
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        layer(torch.randn(2, 5))
