"""OFTLinear: a block-diagonal orthogonal rotation of the input, equal to Hugging Face PEFT's OFT.

Layer-level equivalence builds PEFT 0.21.2's ``peft.tuners.oft.layer.Linear`` exactly as its
tuner does (``Linear(base, "default", config=OFTConfig(...), r=config.r, fan_in_fan_out=False)``)
around a copy of the same base, writes the same random non-zero ``oft_R`` into both and
compares outputs, gradients, the rotation (PEFT's ``get_delta_weight``), the COFT-projected
parameters, merged weights and outputs, and unmerge. The properties (orthogonality, the
Neumann series, the COFT ball) are checked against the maths written out here.
"""

from __future__ import annotations

import copy
import inspect
import math
import warnings
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from peft_zoo.oft import OFTLinear, cayley_neumann, oft_blocks, skew_symmetric
from peft_zoo.testing import assert_close, assert_model_unchanged, dtypes, fingerprint, leading_shapes, seeds

PROPERTY = settings(max_examples=20, deadline=None)


@st.composite
def specs(draw: st.DrawFn) -> dict:
    return {
        "block": draw(st.integers(2, 6)),
        "n": draw(st.integers(1, 4)),
        "d_out": draw(st.integers(1, 6)),
        "bias": draw(st.booleans()),
        "by_r": draw(st.booleans()),  # give r (number of blocks) rather than oft_block_size
        "block_share": draw(st.booleans()),
        "use_cayley_neumann": draw(st.booleans()),
        "num_cayley_neumann_terms": draw(st.integers(2, 7)),
        "coft": draw(st.booleans()),
        "eps": draw(st.sampled_from([6e-5, 0.05, 0.5])),
        "dtype": draw(dtypes()),
        "lead": draw(leading_shapes(max_dims=2, max_size=3)),
        "seed": draw(seeds()),
    }


def hyper(spec: dict) -> dict:
    """The keyword arguments both OFTLinear and PEFT's OFTConfig take."""
    sizes = (
        {"r": spec["n"], "oft_block_size": 0} if spec["by_r"] else {"r": 0, "oft_block_size": spec["block"]}
    )
    keys = ("coft", "eps", "block_share", "use_cayley_neumann", "num_cayley_neumann_terms")
    return {**sizes, **{k: spec[k] for k in keys}}


def peft_layer(base: nn.Linear, **kwargs: object) -> Any:
    """PEFT's OFT ``Linear`` built as ``OFTModel._create_and_replace`` builds it."""
    peft = pytest.importorskip("peft")
    from peft.tuners.oft.layer import Linear

    config = peft.OFTConfig(**kwargs)
    return Linear(base, "default", config=config, r=config.r, fan_in_fan_out=config.fan_in_fan_out)


def pair(spec: dict) -> tuple[OFTLinear, Any, nn.Linear]:
    """Ours and PEFT's layer over copies of one random base, sharing a random non-zero oft_R."""
    torch.manual_seed(spec["seed"])
    base = nn.Linear(spec["block"] * spec["n"], spec["d_out"], bias=spec["bias"], dtype=spec["dtype"])
    ours = OFTLinear(copy.deepcopy(base), **hyper(spec))
    theirs = peft_layer(copy.deepcopy(base), **hyper(spec))
    q = theirs.oft_R["default"].weight
    assert q.shape == ours.oft_R.shape and torch.count_nonzero(q) == 0
    with torch.no_grad():
        value = 0.3 * torch.randn_like(q)
        ours.oft_R.copy_(value)
        q.copy_(value)
    return ours, theirs, base


def close(spec: dict) -> dict:
    """Tolerances for two computations of one value in the spec's dtype (~1e-7 relative in float32)."""
    return {"rtol": 1e-5, "atol": 1e-6} if spec["dtype"] == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}


# ----------------------------------------------------------------------------- PEFT equivalence


@PROPERTY
@given(specs())
def test_outputs_gradients_rotation_and_merge_equal_peft(spec: dict) -> None:
    ours, theirs, _ = pair(spec)
    q = theirs.oft_R["default"].weight
    x = torch.randn(*spec["lead"], spec["block"] * spec["n"], dtype=spec["dtype"])
    a, b = ours(x), theirs(x)
    tol, drawn = close(spec), {k: v for k, v in spec.items() if k != "dtype"} | {"dtype": str(spec["dtype"])}
    assert_close(a, b, what="output, peft_zoo vs PEFT", drawn=drawn, **tol)
    assert_close(ours.oft_R, q, what="oft_R after forward (COFT projects it), vs PEFT", drawn=drawn, **tol)
    g = torch.randn_like(a)
    (a * g).sum().backward()
    (b * g).sum().backward()
    assert ours.oft_R.grad is not None and torch.count_nonzero(ours.oft_R.grad) > 0
    assert_close(ours.oft_R.grad, q.grad, what="gradient of oft_R, peft_zoo vs PEFT", drawn=drawn, **tol)
    with torch.no_grad():
        rot = theirs.get_delta_weight("default")
        assert_close(ours.rotation(), rot, what="R vs PEFT's get_delta_weight", drawn=drawn, **tol)
        assert_close(ours.weight, theirs.base_layer.weight @ rot.T, what="W0 R^T", drawn=drawn, **tol)
        ours.merge()
        theirs.merge()
        w = theirs.base_layer.weight
        assert_close(ours.base.weight, w, what="merged weight vs PEFT", drawn=drawn, **tol)
        assert_close(ours(x), theirs(x), what="merged output vs PEFT", drawn=drawn, **tol)
        assert_close(ours(x), a, what="merged vs unmerged output", drawn=drawn, rtol=1e-4, atol=1e-5)
        ours.unmerge()
        theirs.unmerge()
        w = theirs.base_layer.weight
        assert_close(ours.base.weight, w, what="unmerged weight vs PEFT", drawn=drawn, rtol=1e-4, atol=1e-5)


def test_defaults_are_peft_defaults() -> None:
    peft = pytest.importorskip("peft")
    config = peft.OFTConfig()
    params = inspect.signature(OFTLinear).parameters
    for name in ("r", "oft_block_size", "coft", "eps", "block_share", "use_cayley_neumann"):
        assert params[name].default == getattr(config, name), name
    assert params["num_cayley_neumann_terms"].default == config.num_cayley_neumann_terms
    assert params["init_weights"].default == config.init_weights


@pytest.mark.parametrize("block_share", [False, True])
def test_parameter_count_equals_peft(block_share: bool) -> None:
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    targets = ["0", "2", "4"]
    kwargs: dict[str, Any] = {"oft_block_size": 2, "block_share": block_share}
    ours = [OFTLinear(copy.deepcopy(model[int(t)]), **kwargs) for t in targets]
    theirs = peft.get_peft_model(copy.deepcopy(model), peft.OFTConfig(target_modules=targets, **kwargs))
    trainable, _ = theirs.get_nb_trainable_parameters()
    count = sum(layer.num_adapter_parameters() for layer in ours)
    assert count == sum(p.numel() for layer in ours for p in layer.parameters() if p.requires_grad)
    assert count == trainable == (3 if block_share else 6 + 4 + 3), (count, trainable)


# ----------------------------------------------------------------------------- properties


@PROPERTY
@given(st.integers(1, 7), st.integers(1, 4), st.floats(1e-3, 4.0), seeds())
def test_exact_cayley_rotation_is_orthogonal_and_block_diagonal(
    block: int, n: int, scale: float, seed: int
) -> None:
    torch.manual_seed(seed)
    layer = OFTLinear(nn.Linear(block * n, 3), oft_block_size=block, use_cayley_neumann=False)
    with torch.no_grad():
        layer.oft_R.normal_(std=scale)
        rot = layer.rotation()  # (in, in)
    eye = torch.eye(block * n)
    drawn = {"block": block, "n": n, "scale": scale, "seed": seed}
    assert_close(rot.T @ rot, eye, what="R^T R = I", drawn=drawn, rtol=0, atol=1e-5)
    assert_close(rot @ rot.T, eye, what="R R^T = I", drawn=drawn, rtol=0, atol=1e-5)
    mask = torch.block_diag(*[torch.ones(block, block)] * n)
    assert torch.count_nonzero(rot * (1 - mask)) == 0, "R must be zero outside its diagonal blocks"
    assert torch.allclose(torch.linalg.det(rot), torch.tensor(1.0), atol=1e-4), "Cayley gives det = +1"
    q = skew_symmetric(layer.oft_R.detach(), block)
    expected = (torch.eye(block) - q) @ torch.linalg.inv(torch.eye(block) + q)  # (I - Q)(I + Q)^-1
    assert_close(
        rot[:block, :block], expected[0], what="first block = (I - Q)(I + Q)^-1", rtol=1e-4, atol=1e-5
    )


@PROPERTY
@given(st.integers(2, 6), st.integers(1, 8), seeds())
def test_neumann_series_terms_and_its_sign(block: int, terms: int, seed: int) -> None:
    torch.manual_seed(seed)
    q = skew_symmetric(0.1 * torch.randn(2, block * (block - 1) // 2, dtype=torch.float64), block)
    powers = [torch.linalg.matrix_power(q, k) for k in range(9)]
    if terms == 1:
        coeffs = [1]
    elif terms == 2:
        coeffs = [1, 2]
    else:  # I + 2 Q + ... + 2 Q^{k-2} + Q^{k-1}; k = 3 behaves as k = 4 in PEFT 0.21.2
        top = max(terms, 4) - 1
        coeffs = [1] + [2] * (top - 1) + [1]
    expected = sum(c * p for c, p in zip(coeffs, powers, strict=False))
    assert_close(cayley_neumann(q, terms), expected, what=f"Neumann series with {terms} terms")
    # Many terms converge to (I + Q)(I - Q)^{-1}: the transpose of the exact branch's matrix.
    exact = oft_blocks(q, use_cayley_neumann=False, terms=terms)
    assert_close(cayley_neumann(q, 40), exact.transpose(-2, -1), what="Neumann limit = exact^T", atol=1e-9)


@PROPERTY
@given(st.integers(2, 5), st.integers(1, 4), st.floats(1e-4, 0.5), st.booleans(), seeds())
def test_coft_keeps_each_block_in_its_ball(block: int, n: int, eps: float, share: bool, seed: int) -> None:
    torch.manual_seed(seed)
    layer = OFTLinear(nn.Linear(block * n, 4), oft_block_size=block, coft=True, eps=eps, block_share=share)
    with torch.no_grad():
        layer.oft_R.normal_(std=0.3)
        layer.oft_R[0].mul_(1e-6)  # one block well inside the ball: left as it is
        inside = layer.oft_R[0].clone()
        before = layer.oft_R.clone()
    out = layer(torch.randn(5, block * n))
    radius = eps / math.sqrt(layer.oft_R.shape[0])
    norms = torch.linalg.matrix_norm(skew_symmetric(layer.oft_R.detach(), block))
    assert (norms <= radius * (1 + 1e-5)).all(), (norms, radius)
    assert torch.equal(layer.oft_R[0], inside), "a block inside the ball must not move"
    old = torch.linalg.matrix_norm(skew_symmetric(before, block))  # (n,)
    scaled = (before * radius / old[:, None])[old > radius]
    assert_close(layer.oft_R.detach()[old > radius], scaled, what="a block outside is scaled onto the sphere")
    out.sum().backward()
    assert layer.oft_R.grad is not None and torch.isfinite(layer.oft_R.grad).all()


def test_init_equals_base_and_only_oft_R_trains() -> None:
    torch.manual_seed(0)
    base = nn.Linear(8, 5)
    layer = OFTLinear(copy.deepcopy(base), oft_block_size=4)
    x = torch.randn(3, 8)
    assert torch.count_nonzero(layer.oft_R) == 0 and layer.oft_R.shape == (2, 6)
    assert torch.equal(layer(x), base(x)), "R = I at init: the layer equals its base"
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["oft_R"]
    assert [n for n, _ in layer.adapter_named_parameters()] == ["oft_R"]
    torch.manual_seed(1)
    noisy = OFTLinear(nn.Linear(64, 2), oft_block_size=32, init_weights=False)
    assert abs(noisy.oft_R.std().item() - 0.1) < 0.01, "init_weights=False draws N(0, 0.1^2) as PEFT"


def test_merge_unmerge_delta_weight_and_refusals() -> None:
    torch.manual_seed(0)
    base = nn.Linear(6, 4, dtype=torch.float64)
    layer = OFTLinear(copy.deepcopy(base), r=2, oft_block_size=0, use_cayley_neumann=False)
    with torch.no_grad():
        layer.oft_R.normal_(std=0.5)
    x = torch.randn(2, 6, dtype=torch.float64)
    expected = layer(x)
    delta = layer.delta_weight()  # (out, in)
    assert_close(delta, base.weight @ layer.rotation().T - base.weight, what="delta = W0 R^T - W0")
    layer.merge()
    layer.merge()  # no-op
    assert layer.merged
    assert_close(layer.base.weight, base.weight + delta, what="merged weight = W0 + delta")
    assert_close(layer.delta_weight(), delta, what="delta_weight while merged")
    with pytest.raises(RuntimeError, match="merged"):
        layer(x)  # training mode with gradients: oft_R would get none
    with torch.no_grad():
        assert_close(layer(x), expected, what="merged output")
    layer.unmerge()
    layer.unmerge()  # no-op
    assert_close(layer.base.weight, base.weight, what="unmerge restores W0")
    assert_close(layer(x), expected, what="output after unmerge")


# ----------------------------------------------------------------------------- bad input


BAD = [
    ({"oft_block_size": 5}, ValueError, r"oft_block_size=5 does not divide in_features=12"),
    ({"r": 5, "oft_block_size": 0}, ValueError, r"r=5 does not divide in_features=12"),
    ({"r": 3, "oft_block_size": 4}, ValueError, r"exactly one of r .* and oft_block_size"),
    ({"r": 0, "oft_block_size": 0}, ValueError, r"exactly one of r"),
    ({"r": 3}, ValueError, r"pass oft_block_size=0 with r"),
    ({"oft_block_size": 24}, ValueError, r"oft_block_size=24 is larger than .* in_features=12"),
    ({"oft_block_size": -4}, ValueError, r"oft_block_size"),
    ({"oft_block_size": 4.0}, TypeError, r"oft_block_size must be an int"),
    ({"oft_block_size": True}, TypeError, r"oft_block_size must be an int"),
    ({"oft_block_size": 4, "coft": "yes"}, TypeError, r"coft must be True or False"),
    ({"oft_block_size": 4, "block_share": 1}, TypeError, r"block_share must be True or False"),
    ({"oft_block_size": 4, "use_cayley_neumann": "no"}, TypeError, r"use_cayley_neumann"),
    ({"oft_block_size": 4, "init_weights": "gaussian"}, TypeError, r"init_weights must be True or False"),
    ({"oft_block_size": 4, "eps": 0.0}, ValueError, r"eps must be a finite number > 0"),
    ({"oft_block_size": 4, "eps": float("nan")}, ValueError, r"eps"),
    (
        {"oft_block_size": 4, "num_cayley_neumann_terms": 0},
        ValueError,
        r"num_cayley_neumann_terms must be > 0",
    ),
    ({"oft_block_size": 4, "num_cayley_neumann_terms": 2.5}, TypeError, r"num_cayley_neumann_terms"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD)
def test_bad_arguments_raise_and_change_nothing(kwargs: dict, error: type, match: str) -> None:
    base = nn.Linear(12, 3)
    before = fingerprint(base)
    with pytest.raises(error, match=match):
        OFTLinear(base, **kwargs)
    assert_model_unchanged(base, before, what=f"base after OFTLinear(**{kwargs})")


def test_bad_base_and_bad_input() -> None:
    with pytest.raises(TypeError, match=r"must be an nn\.Linear, got Conv2d"):
        OFTLinear(nn.Conv2d(4, 4, 1), oft_block_size=2)
    layer = OFTLinear(nn.Linear(8, 3), oft_block_size=4)
    with pytest.raises(ValueError, match=r"expects input of shape \(\.\.\., 8\), got \(2, 6\)"):
        layer(torch.randn(2, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is adjusted silently, unlike PEFT
        assert OFTLinear(nn.Linear(8, 3), r=2, oft_block_size=0).oft_block_size == 4
