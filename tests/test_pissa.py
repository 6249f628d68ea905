"""PiSSA / OLoRA initialisation of a LoRALinear, against PEFT 0.21.2's ``lora.Linear``.

PEFT's layer is built around a copy of the same base with ``init_lora_weights`` "pissa",
"pissa_niter_4" (same torch seed before each, since ``svd_lowrank`` is random) or "olora";
ours is a LoRALinear over another copy, then :func:`pissa_init_` / :func:`olora_init_`.
Compared: ``lora_A``, ``lora_B``, the rewritten base weight (PEFT runs the same
``torch.linalg.svd`` / ``qr`` on the same float32 tensor, so they are expected bit-equal),
the output at init against the untouched base, then outputs and gradients after copying
identical random adapter weights into both. The conversion back to a rank-2r plain LoRA is
checked on the original ``W0`` and against the file PEFT's ``save_pretrained(
path_initial_model_for_weight_conversion=...)`` writes.
"""

from __future__ import annotations

import copy
from typing import Any
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from peft_zoo.core.base import SHARED_WEIGHT_FLAG
from peft_zoo.core.checks import weight_of
from peft_zoo.dora import DoRALinear
from peft_zoo.lora import LoRALinear
from peft_zoo.pissa import ConvertedLoRA, olora_init_, pissa_init_, pissa_to_lora, pissa_to_lora_delta
from peft_zoo.testing import assert_close, assert_model_unchanged, fingerprint, leading_shapes, seeds

PROPERTY = settings(max_examples=15, deadline=None)
MODES = ("pissa", "pissa_niter_4", "olora")
SVD_ATOL = 0.0  # same torch.linalg.svd / qr / svd_lowrank on the same float32 tensor: measured bit-equal


@st.composite
def specs(draw: st.DrawFn) -> dict:
    d_in, d_out = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    return {
        "d_in": d_in,
        "d_out": d_out,
        "rank": draw(st.integers(1, min(d_in, d_out))),
        "alpha": draw(st.sampled_from([1, 2, 4, 8, 16, 3.5])),
        "rslora": draw(st.booleans()),
        "bias": draw(st.booleans()),
        "mode": draw(st.sampled_from(MODES)),
        "lead": draw(leading_shapes(max_dims=2, max_size=3)),
        "seed": draw(seeds()),
    }


def init_ours(layer: LoRALinear, mode: str, seed: int) -> LoRALinear:
    torch.manual_seed(seed)  # svd_lowrank draws from the global generator
    if mode == "olora":
        return olora_init_(layer)
    return pissa_init_(layer, None if mode == "pissa" else int(mode.split("_niter_")[1]))


def pinned_svd_lowrank(seed: int) -> Any:
    """A context in which PEFT's ``svd_lowrank`` reseeds torch with ``seed`` first."""
    from peft.tuners.lora import layer as peft_layer

    def seeded(*args: Any, **kwargs: Any) -> Any:
        torch.manual_seed(seed)
        return torch.svd_lowrank(*args, **kwargs)

    return mock.patch.object(peft_layer, "svd_lowrank", seeded)


def peft_linear(base: nn.Module, spec: dict, *, fan_in_fan_out: bool = False) -> Any:
    """PEFT's ``lora.Linear`` around ``base`` (mutated: it takes the residual). Its constructor
    draws random numbers for its own A and B first, so the torch seed is pinned right before
    its ``svd_lowrank`` call, where :func:`init_ours` pins it before ours."""
    peft = pytest.importorskip("peft")
    from peft.tuners.lora import layer as peft_layer

    config = peft.LoraConfig(
        init_lora_weights=spec["mode"], use_rslora=spec["rslora"], fan_in_fan_out=fan_in_fan_out
    )
    with pinned_svd_lowrank(spec["seed"]):
        return peft_layer.Linear(
            base,
            "default",
            config,
            r=spec["rank"],
            lora_alpha=spec["alpha"],
            is_target_conv_1d_layer=fan_in_fan_out,
        )


def build(spec: dict, dtype: torch.dtype = torch.float32) -> tuple[LoRALinear, Any, nn.Linear]:
    """(ours after init, PEFT's after init, the untouched base)."""
    torch.manual_seed(spec["seed"])
    base = nn.Linear(spec["d_in"], spec["d_out"], bias=spec["bias"]).to(dtype)
    ours = LoRALinear(copy.deepcopy(base), spec["rank"], spec["alpha"], rslora=spec["rslora"])
    init_ours(ours, spec["mode"], spec["seed"])
    return ours, peft_linear(copy.deepcopy(base), spec), base


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max()) if a.numel() else 0.0


def assert_same_init(ours: LoRALinear, theirs: Any, spec: dict, atol: float = SVD_ATOL) -> None:
    pairs = {
        "lora_A": (ours.lora_A, theirs.lora_A["default"].weight),
        "lora_B": (ours.lora_B, theirs.lora_B["default"].weight),
        "residual base weight": (weight_of(ours.base), theirs.base_layer.weight),
    }
    for what, (a, b) in pairs.items():
        assert a.dtype == b.dtype, f"{what}: dtype {a.dtype} vs PEFT's {b.dtype}"
        assert_close(a, b, what=f"{what} vs PEFT ({spec['mode']})", drawn=spec, rtol=0.0, atol=atol)


@PROPERTY
@given(specs())
def test_init_equals_peft_and_keeps_the_base_output(spec: dict) -> None:
    ours, theirs, base = build(spec)
    assert_same_init(ours, theirs, spec)
    x = torch.randn(*spec["lead"], spec["d_in"])
    with torch.no_grad():
        scale_w = float(base.weight.abs().max()) + 1.0
        assert_close(ours(x), base(x), what="our output at init vs the base", drawn=spec, atol=2e-5 * scale_w)
        assert_close(ours(x), theirs(x), what="output at init vs PEFT", drawn=spec, rtol=0.0, atol=1e-6)
    # the principal part really moved: A and B are not LoRA's (random A, zero B)
    assert torch.count_nonzero(ours.lora_B) > 0
    assert [n for n, p in ours.named_parameters() if p.requires_grad] == ["lora_A", "lora_B"]


@PROPERTY
@given(specs())
def test_outputs_and_gradients_equal_peft_with_copied_weights(spec: dict) -> None:
    ours, theirs, _ = build(spec)
    torch.manual_seed(spec["seed"] + 1)
    a, b = torch.randn_like(ours.lora_A), torch.randn_like(ours.lora_B)
    with torch.no_grad():
        for layer_a, layer_b in (
            (ours.lora_A, ours.lora_B),
            (theirs.lora_A["default"].weight, theirs.lora_B["default"].weight),
        ):
            layer_a.copy_(a)
            layer_b.copy_(b)
    x = torch.randn(*spec["lead"], spec["d_in"])
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y1, y2 = ours(x1), theirs(x2)
    assert_close(y1, y2, what="output vs PEFT", drawn=spec, rtol=0.0, atol=1e-6)
    g = torch.randn_like(y1)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    assert ours.lora_A.grad is not None and ours.lora_B.grad is not None and x1.grad is not None
    assert_close(
        ours.lora_A.grad,
        theirs.lora_A["default"].weight.grad,
        what="grad lora_A",
        drawn=spec,
        rtol=0.0,
        atol=1e-6,
    )
    assert_close(
        ours.lora_B.grad,
        theirs.lora_B["default"].weight.grad,
        what="grad lora_B",
        drawn=spec,
        rtol=0.0,
        atol=1e-6,
    )
    assert x2.grad is not None
    assert_close(x1.grad, x2.grad, what="grad input", drawn=spec, rtol=0.0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
def test_half_precision_bases_match_peft(dtype: torch.dtype, mode: str) -> None:
    spec = {
        "d_in": 9,
        "d_out": 7,
        "rank": 3,
        "alpha": 6,
        "rslora": False,
        "bias": True,
        "mode": mode,
        "seed": 3,
    }
    ours, theirs, _ = build(spec, dtype)
    assert ours.lora_A.dtype == dtype and ours.base.weight.dtype == dtype
    assert_same_init(ours, theirs, spec, atol=0.0)


@pytest.mark.parametrize("mode", ["pissa", "pissa_niter_2"])
def test_conv1d_base_matches_peft(mode: str) -> None:
    conv1d = pytest.importorskip("transformers.pytorch_utils").Conv1D
    torch.manual_seed(0)
    base = conv1d(6, 5)  # 5 -> 6 features, weight (5, 6)
    spec = {"rank": 2, "alpha": 4, "rslora": True, "mode": mode, "seed": 0}
    ours = init_ours(LoRALinear(copy.deepcopy(base), 2, 4, rslora=True), mode, 0)
    theirs = peft_linear(copy.deepcopy(base), spec, fan_in_fan_out=True)
    assert_same_init(ours, theirs, spec)
    x = torch.randn(4, 5)
    with torch.no_grad():
        assert_close(ours(x), base(x), what="Conv1D output at init vs the base", atol=1e-5)
        assert_close(ours(x), theirs(x), what="Conv1D output vs PEFT", atol=1e-6)


def test_fast_svd_depends_on_the_seed_and_full_svd_is_exact() -> None:
    torch.manual_seed(0)
    base = nn.Linear(12, 10)
    one = init_ours(LoRALinear(copy.deepcopy(base), 3), "pissa_niter_0", 1)
    two = init_ours(LoRALinear(copy.deepcopy(base), 3), "pissa_niter_0", 2)
    assert not torch.equal(one.lora_A, two.lora_A), "svd_lowrank ignored the seed"
    full = pissa_init_(LoRALinear(copy.deepcopy(base), 3, 6))
    u, s, vh = torch.linalg.svd(base.weight.detach())
    assert_close(
        full.scale * full.lora_B @ full.lora_A, u[:, :3] @ torch.diag(s[:3]) @ vh[:3], what="s B A", atol=1e-5
    )
    residual = torch.cat([s[3:], torch.zeros(3)])  # the principal part is gone, the rest stays
    assert_close(
        torch.linalg.svdvals(weight_of(full.base).detach()), residual, what="residual spectrum", atol=1e-5
    )


# ----------------------------------------------------------------------------- conversion


def train_step(layer: LoRALinear, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        layer.lora_A.add_(0.3 * torch.randn_like(layer.lora_A))
        layer.lora_B.add_(0.3 * torch.randn_like(layer.lora_B))


@PROPERTY
@given(specs())
def test_conversion_on_the_original_base_reproduces_the_trained_layer(spec: dict) -> None:
    ours, _, base = build(spec)
    a0, b0 = ours.lora_A.detach().clone(), ours.lora_B.detach().clone()
    train_step(ours, spec["seed"] + 7)
    converted = pissa_to_lora(ours, a0, b0, copy.deepcopy(base))
    assert converted.rank == 2 * spec["rank"] and converted.scale == pytest.approx(ours.scale)
    assert torch.equal(weight_of(converted.base), base.weight), (
        "the converted LoRA must sit on the original W0"
    )
    x = torch.randn(*spec["lead"], spec["d_in"])
    with torch.no_grad():
        atol = 3e-5 * (float(base.weight.abs().max()) + float(ours.delta_weight().abs().max()) + 1.0)
        assert_close(
            converted(x), ours(x), what="converted LoRA on W0 vs trained PiSSA", drawn=spec, atol=atol
        )
        assert_close(
            converted.delta_weight(), ours.delta_weight() - ours.scale * b0 @ a0, what="ΔW", atol=atol
        )


@pytest.mark.parametrize("mode", MODES)
def test_conversion_equals_peft_save_pretrained(mode: str, tmp_path: Any) -> None:
    peft = pytest.importorskip("peft")
    from safetensors.torch import load_file

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 5))
    config = peft.LoraConfig(r=3, lora_alpha=6, target_modules=["0"], init_lora_weights=mode)
    with pinned_svd_lowrank(1):
        theirs = peft.get_peft_model(copy.deepcopy(model), config)
    ours = init_ours(LoRALinear(copy.deepcopy(model[0]), 3, 6), mode, 1)
    layer = theirs.base_model.model[0]
    assert_close(ours.lora_A, layer.lora_A["default"].weight, what="lora_A", atol=SVD_ATOL)
    theirs.peft_config["default"].init_lora_weights = True  # PEFT's documented recipe
    theirs.save_pretrained(str(tmp_path / "init"))
    theirs.peft_config["default"].init_lora_weights = mode
    a0, b0 = ours.lora_A.detach().clone(), ours.lora_B.detach().clone()
    train_step(ours, 5)
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(ours.lora_A)
        layer.lora_B["default"].weight.copy_(ours.lora_B)
    theirs.save_pretrained(
        str(tmp_path / "out"), path_initial_model_for_weight_conversion=str(tmp_path / "init")
    )
    saved = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    mine = pissa_to_lora_delta(ours, a0, b0)
    assert_close(
        mine.lora_A, saved["base_model.model.0.lora_A.weight"], what="A' vs PEFT's file", atol=SVD_ATOL
    )
    assert_close(
        mine.lora_B, saved["base_model.model.0.lora_B.weight"], what="B' vs PEFT's file", atol=SVD_ATOL
    )
    saved_config = peft.PeftConfig.from_pretrained(str(tmp_path / "out"))
    assert (mine.rank, mine.alpha) == (saved_config.r, saved_config.lora_alpha)


def test_conversion_alpha_keeps_the_rslora_scale() -> None:
    layer = pissa_init_(LoRALinear(nn.Linear(6, 6), 2, 3.0, rslora=True))
    out = pissa_to_lora_delta(layer, layer.lora_A.detach().clone(), layer.lora_B.detach().clone())
    assert isinstance(out, ConvertedLoRA)
    assert out.rank == 4 and out.rslora
    assert out.alpha / out.rank**0.5 == pytest.approx(layer.scale)
    assert torch.allclose(out.lora_B @ out.lora_A, torch.zeros(6, 6), atol=1e-6), "untrained: ΔW must be 0"


# ----------------------------------------------------------------------------- bad input


def fresh(d_in: int = 6, d_out: int = 5, rank: int = 2, dtype: torch.dtype = torch.float32) -> LoRALinear:
    torch.manual_seed(0)
    return LoRALinear(nn.Linear(d_in, d_out).to(dtype), rank)


def merged() -> LoRALinear:
    layer = fresh()
    layer.merge()
    return layer


def shared() -> LoRALinear:
    layer = fresh()
    setattr(layer.base, SHARED_WEIGHT_FLAG, True)
    return layer


def inf_weight() -> LoRALinear:
    layer = fresh()
    with torch.no_grad():
        weight_of(layer.base)[0, 0] = float("inf")  # inf == inf, so the snapshot compares
    return layer


def conv1d_layer() -> LoRALinear:
    conv1d = pytest.importorskip("transformers.pytorch_utils").Conv1D
    return LoRALinear(conv1d(5, 6), 2)


INIT_CASES = [
    ("pissa merged", merged, lambda m: pissa_init_(m), RuntimeError, "merged"),
    ("olora merged", merged, lambda m: olora_init_(m), RuntimeError, "merged"),
    ("rank too large", lambda: fresh(6, 3, 4), lambda m: pissa_init_(m), ValueError, "rank 4"),
    ("olora rank too large", lambda: fresh(2, 7, 3), lambda m: olora_init_(m), ValueError, "min(in_features"),
    ("float64", lambda: fresh(dtype=torch.float64), lambda m: pissa_init_(m), TypeError, "float64"),
    ("olora float64", lambda: fresh(dtype=torch.float64), lambda m: olora_init_(m), TypeError, "float64"),
    ("niter negative", fresh, lambda m: pissa_init_(m, -1), ValueError, "niter"),
    ("niter bool", fresh, lambda m: pissa_init_(m, True), TypeError, "niter"),
    ("niter str", fresh, lambda m: pissa_init_(m, "4"), TypeError, "niter"),  # type: ignore[arg-type]  # bad input
    ("not a LoRALinear", lambda: nn.Linear(4, 4), lambda m: pissa_init_(m), TypeError, "LoRALinear"),
    ("DoRA", lambda: DoRALinear(nn.Linear(4, 4), 2), lambda m: olora_init_(m), TypeError, "DoRALinear"),
    ("shared base", shared, lambda m: pissa_init_(m), RuntimeError, "shared"),
    ("Inf weight", inf_weight, lambda m: pissa_init_(m), ValueError, "NaN"),
    ("olora Conv1D", conv1d_layer, lambda m: olora_init_(m), ValueError, "fan_in_fan_out"),
]


@pytest.mark.parametrize(
    ("setup", "call", "error", "word"), [c[1:] for c in INIT_CASES], ids=[c[0] for c in INIT_CASES]
)
def test_bad_initialisations_are_refused_and_change_nothing(
    setup: Any, call: Any, error: type, word: str
) -> None:
    module = setup()
    before = fingerprint(module)
    with pytest.raises(error, match=None) as info:
        call(module)
    assert word.lower() in str(info.value).lower(), f"message does not name {word!r}: {info.value}"
    assert_model_unchanged(module, before, what="a refused initialisation")


def test_bad_conversions_are_refused() -> None:
    layer = pissa_init_(fresh())
    a0, b0 = layer.lora_A.detach().clone(), layer.lora_B.detach().clone()
    cases = [
        (lambda: pissa_to_lora_delta(layer, a0.T, b0), ValueError, "initial_A"),
        (lambda: pissa_to_lora_delta(layer, a0, b0[:, :1]), ValueError, "initial_B"),
        (lambda: pissa_to_lora_delta(layer, a0.double(), b0), TypeError, "float64"),
        (lambda: pissa_to_lora_delta(layer, a0.tolist(), b0), TypeError, "initial_A"),  # type: ignore[arg-type]  # bad input
        (lambda: pissa_to_lora_delta(nn.Linear(6, 5), a0, b0), TypeError, "LoRALinear"),  # type: ignore[arg-type]  # bad input
        (lambda: pissa_to_lora(layer, a0, b0, nn.Linear(5, 6)), ValueError, "original_base"),
        (lambda: pissa_to_lora(layer, a0, b0, nn.ReLU()), TypeError, "original_base"),
    ]
    before = fingerprint(layer)
    for call, error, word in cases:
        with pytest.raises(error) as info:
            call()
        assert word.lower() in str(info.value).lower(), f"message does not name {word!r}: {info.value}"
    assert_model_unchanged(layer, before, what="a refused conversion")
