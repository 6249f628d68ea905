"""DoRALinear: magnitude times the normalised direction of W0 + s B A, with the norm detached.

The reference throughout is the paper's Eq. 5 written out by hand in float64,
``W' = m ⊙ V / c`` with ``V = W0 + s B A`` and ``c = ||V||`` (row norms) treated as a
constant, compared with the layer's forward (which never builds ``W'``), its gradients,
merge / unmerge, checkpoints, ``adapt_model(LoraConfig(use_dora=True))`` and, when the
``hf`` extra is installed, one layer of Hugging Face PEFT with dropout active.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import peft_zoo as pz
from peft_zoo.dora import DoRALinear
from peft_zoo.testing import alphas, assert_close, assert_model_unchanged, fingerprint, leading_shapes, seeds

PROPERTY = settings(max_examples=25, deadline=None)


@st.composite
def specs(draw: st.DrawFn) -> dict:
    return {
        "d_in": draw(st.integers(1, 12)),
        "d_out": draw(st.integers(1, 12)),
        "rank": draw(st.integers(1, 6)),
        "alpha": draw(alphas()),
        "rslora": draw(st.booleans()),
        "bias": draw(st.booleans()),
        "lead": draw(leading_shapes(max_dims=2, max_size=3)),
        "seed": draw(seeds()),
    }


def make(
    spec: dict, dtype: torch.dtype = torch.float64, perturb: bool = True
) -> tuple[DoRALinear, nn.Linear]:
    """A DoRA layer over a copy of a random base, with random nonzero B and magnitudes off ||W0||
    (``perturb``); and the untouched base."""
    torch.manual_seed(spec["seed"])
    base = nn.Linear(spec["d_in"], spec["d_out"], bias=spec["bias"], dtype=dtype)
    layer = DoRALinear(copy.deepcopy(base), spec["rank"], spec["alpha"], rslora=spec["rslora"])
    if perturb:
        with torch.no_grad():
            layer.lora_A.normal_()
            layer.lora_B.normal_(std=0.3)
            layer.magnitude.mul_(1 + 0.5 * torch.rand(spec["d_out"], dtype=dtype))
    return layer, base


def eq5(layer: DoRALinear, x: torch.Tensor, *, detach_norm: bool = True) -> torch.Tensor:
    """The paper's Eq. 5 written out: ``x W'^T + b`` with ``W' = m V / ||V||``, ``V = W0 + s B A``."""
    v = layer.base.weight + layer.scale * layer.lora_B @ layer.lora_A  # (out, in)
    norm = v.norm(dim=1)  # (out,)
    if detach_norm:
        norm = norm.detach()
    w = layer.magnitude[:, None] * v / norm[:, None]  # (out, in)
    return F.linear(x, w, layer.base.bias)


# ----------------------------------------------------------------------------- init and forward


@PROPERTY
@given(specs())
def test_init_equals_the_base_and_magnitude_is_the_row_norm(spec: dict) -> None:
    layer, base = make(spec, perturb=False)
    x = torch.randn(*spec["lead"], spec["d_in"], dtype=torch.float64)
    assert_close(layer.magnitude, base.weight.norm(dim=1), what="magnitude at init = ||W0|| per row")
    assert torch.count_nonzero(layer.lora_B) == 0 and torch.count_nonzero(layer.lora_A) > 0
    with torch.no_grad():
        assert_close(layer(x), base(x), what="DoRA at init vs the base", drawn=spec)
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["lora_A", "lora_B", "magnitude"]
    assert [n for n, _ in layer.adapter_named_parameters()] == ["lora_A", "lora_B", "magnitude"]


@PROPERTY
@given(specs())
def test_forward_is_eq5_and_the_weight_property_agrees(spec: dict) -> None:
    layer, _ = make(spec)
    x = torch.randn(*spec["lead"], spec["d_in"], dtype=torch.float64)
    out = layer(x)
    assert out.shape == (*spec["lead"], spec["d_out"])
    assert_close(out, eq5(layer, x), what="forward vs m (W0 + sBA) x / ||W0 + sBA|| + b", drawn=spec)
    assert_close(F.linear(x, layer.weight, layer.bias), out, what="x @ layer.weight.T + b vs forward")
    assert_close(layer.delta_weight(), layer.weight - layer.base.weight, what="delta_weight = W' - W0")
    assert_close(layer.weight.norm(dim=1), layer.magnitude, what="rows of W' have norm m", drawn=spec)


@PROPERTY
@given(specs())
def test_gradients_treat_the_norm_as_a_constant(spec: dict) -> None:
    layer, _ = make(spec)
    x = torch.randn(*spec["lead"], spec["d_in"], dtype=torch.float64)
    g = torch.randn(*spec["lead"], spec["d_out"], dtype=torch.float64)
    names = ("lora_A", "lora_B", "magnitude")
    got = torch.autograd.grad((layer(x) * g).sum(), [getattr(layer, n) for n in names])
    manual = torch.autograd.grad((eq5(layer, x) * g).sum(), [getattr(layer, n) for n in names])
    for name, a, b in zip(names, got, manual, strict=True):
        assert_close(a, b, what=f"gradient of {name} vs Eq. 5 with ||V|| detached", drawn=spec)


def test_the_detached_gradient_differs_from_the_full_one() -> None:
    """The detach matters: with the norm in the graph, A, B and m get other gradients."""
    spec = {"d_in": 6, "d_out": 5, "rank": 2, "alpha": 4.0, "rslora": False, "bias": True, "seed": 3}
    layer, _ = make(spec)
    x, g = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    params = [layer.lora_A, layer.lora_B, layer.magnitude]
    detached = torch.autograd.grad((layer(x) * g).sum(), params)
    full = torch.autograd.grad((eq5(layer, x, detach_norm=False) * g).sum(), params)
    for name, a, b in zip(("lora_A", "lora_B"), detached, full, strict=False):
        assert (a - b).abs().max() > 1e-3, f"{name}: the detached and full gradients should differ"
    # m does not enter the norm, so its gradient is the same either way.
    assert_close(detached[2], full[2], what="gradient of m, detached vs full norm")


def test_the_norm_is_computed_without_a_graph() -> None:
    layer, _ = make(
        {"d_in": 4, "d_out": 3, "rank": 2, "alpha": None, "rslora": True, "bias": False, "seed": 0}
    )
    norm = layer.weight_norm()
    assert not norm.requires_grad and norm.shape == (3,)
    v = layer.base.weight + layer.scale * layer.lora_B @ layer.lora_A
    assert_close(norm, v.norm(dim=1), what="weight_norm() = ||W0 + sBA||")


def test_dropout_in_training_feeds_both_correction_terms_like_peft() -> None:
    """PEFT's DoRA forward with active dropout: base(x) + (r - 1) W0 x_d + r s B A x_d."""
    spec = {"d_in": 7, "d_out": 5, "rank": 3, "alpha": 6.0, "rslora": False, "bias": True, "seed": 4}
    torch.manual_seed(4)
    base = nn.Linear(7, 5, dtype=torch.float64)
    layer = DoRALinear(copy.deepcopy(base), 3, 6.0, dropout=0.4).train()
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(6, 7, dtype=torch.float64)
    torch.manual_seed(11)
    out = layer(x)
    torch.manual_seed(11)
    xd = F.dropout(x, 0.4, training=True)  # the same mask: the base path draws no random numbers
    ratio = layer.magnitude / layer.weight_norm()
    expected = (
        base(x)
        + (ratio - 1) * F.linear(xd, base.weight)
        + ratio * layer.scale * F.linear(xd, layer.lora_B @ layer.lora_A)
    )
    assert_close(out, expected, what="DoRA with dropout in training", drawn=spec)
    layer.eval()
    assert_close(layer(x), eq5(layer, x), what="DoRA with dropout in eval mode is Eq. 5")


# ----------------------------------------------------------------------------- merge


@PROPERTY
@given(specs(), st.sampled_from([torch.float32, torch.float64]))
def test_merge_equals_unmerged_and_unmerge_restores_w0(spec: dict, dtype: torch.dtype) -> None:
    layer, base = make(spec, dtype=dtype)
    x = torch.randn(*spec["lead"], spec["d_in"], dtype=dtype)
    with torch.no_grad():
        unmerged, weight = layer(x), layer.weight.clone()
        layer.merge()
        assert layer.merged and layer.merged_norm is not None
        assert_close(layer(x), unmerged, what="merged vs unmerged forward", drawn=spec)
        assert_close(layer.base.weight, weight, what="merged base.weight = m V / ||V||", drawn=spec)
        layer.merge()  # a no-op
        assert_close(layer.base.weight, weight, what="merging twice changes nothing")
        layer.unmerge()
    # W0 = W' ||V|| / m - s B A cancels: the rounding error scales with the largest entry of V.
    eps = 1e-6 if dtype == torch.float32 else 1e-14
    v = base.weight + layer.scale * layer.lora_B.detach() @ layer.lora_A.detach()  # (out, in)
    rtol, atol = 0.0, eps * (1 + v.abs().max().item())
    assert_close(layer.base.weight, base.weight, what="unmerge restores W0", drawn=spec, rtol=rtol, atol=atol)
    assert not layer.merged and layer.merged_norm is None
    layer.unmerge()  # a no-op
    assert_close(layer(x), unmerged, what="forward after unmerge", drawn=spec)


def test_a_merged_layer_refuses_to_train_but_serves() -> None:
    layer, _ = make(
        {"d_in": 4, "d_out": 3, "rank": 2, "alpha": None, "rslora": False, "bias": True, "seed": 1}
    )
    norm = layer.weight_norm()
    layer.merge()
    assert_close(layer.weight_norm(), norm, what="weight_norm() of a merged layer: the norm kept at merge")
    x = torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"merged.*magnitude"):
        layer(x)
    with pytest.raises(RuntimeError, match="unmerge"):
        layer.delta_weight()
    layer.eval()
    assert layer(x).shape == (2, 3)
    with torch.no_grad():
        layer.train()(x)
    assert pz.unmerge_adapters(layer) == 1 and not layer.merged


def test_merge_with_a_zero_magnitude_is_refused_and_changes_nothing() -> None:
    layer, _ = make(
        {"d_in": 4, "d_out": 3, "rank": 2, "alpha": None, "rslora": False, "bias": True, "seed": 2}
    )
    with torch.no_grad():
        layer.magnitude[1] = 0.0
    before = fingerprint(layer)
    with pytest.raises(ValueError, match=r"output features \[1\] have a zero"):
        layer.merge()
    assert_model_unchanged(layer, before, what="a refused merge")
    assert not layer.merged


# ----------------------------------------------------------------------------- bad input


def test_bad_arguments_raise_clearly_and_change_nothing() -> None:
    base = nn.Linear(4, 3)
    before = fingerprint(base)
    for kwargs, error, match in [
        ({"rank": 0}, ValueError, "rank must be > 0"),
        ({"rank": 2.5}, TypeError, "rank must be an int"),
        ({"rank": 2, "alpha": -1.0}, ValueError, "alpha"),
        ({"rank": 2, "dropout": 1.0}, ValueError, "dropout"),
        ({"rank": 2, "fan_in_fan_out": True}, ValueError, "fan_in_fan_out=True"),
    ]:
        rank = kwargs.pop("rank")
        with pytest.raises(error, match=match):
            DoRALinear(base, rank, **kwargs)
        assert_model_unchanged(base, before, what=f"a refused DoRALinear({kwargs})")
    with pytest.raises(TypeError, match=r"DoRALinear base must be an nn\.Linear"):
        DoRALinear(nn.Conv2d(2, 2, 1), 2)
    zero_row = nn.Linear(4, 3)
    with torch.no_grad():
        zero_row.weight[2] = 0
    before = fingerprint(zero_row)
    with pytest.raises(ValueError, match=r"rows \[2\] of the base weight are all zeros"):
        DoRALinear(zero_row, 2)
    assert_model_unchanged(zero_row, before, what="a refused zero-row base")
    with pytest.raises(ValueError, match=r"expects input of shape \(\.\.\., 4\)"):
        DoRALinear(nn.Linear(4, 3), 2)(torch.randn(2, 5))


# ----------------------------------------------------------------------------- in models


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(6, 6)
        self.v = nn.Linear(6, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.v(torch.tanh(self.q(x)))))


def test_adapt_model_with_use_dora_builds_dora_layers_that_train() -> None:
    torch.manual_seed(0)
    model, params = pz.adapt_model(
        Tiny(), pz.LoraConfig(rank=2, alpha=4, target_modules=["q", "v"], use_dora=True)
    )
    assert isinstance(model.q, DoRALinear) and isinstance(model.v, DoRALinear)
    assert model.q.scale == 2.0 and model.q.adapter_config()["method"] == "dora"
    assert {id(p) for p in params} == {
        id(p) for m in (model.q, model.v) for _, p in m.adapter_named_parameters()
    }
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    x, y = torch.randn(32, 6), torch.randn(32, 2)
    opt = torch.optim.Adam(params, lr=0.05)
    losses = []
    for _ in range(30):
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert not torch.allclose(model.q.magnitude, model.q.base.weight.norm(dim=1)), "m should train"


def test_save_adapter_and_load_adapter_restore_the_magnitude(tmp_path) -> None:
    torch.manual_seed(0)
    config = pz.LoraConfig(rank=2, target_modules=["q", "v"], use_dora=True)
    model, _ = pz.adapt_model(Tiny(), config)
    with torch.no_grad():
        for _, p in pz.adapter_named_parameters(model):
            p.add_(0.1 * torch.randn_like(p))
    path = pz.save_adapter(model, tmp_path / "dora")
    state, saved = pz.read_adapter(path)
    assert "q.magnitude" in state and saved["layers"]["q"]["method"] == "dora"
    fresh = copy.deepcopy(model)
    with torch.no_grad():
        for _, p in pz.adapter_named_parameters(fresh):
            p.zero_()
    pz.load_adapter(fresh, path)
    x = torch.randn(3, 6)
    assert_close(fresh(x), model(x), what="a DoRA model after load_adapter")
    assert torch.equal(fresh.q.magnitude, model.q.magnitude)
    # A plain LoRA model refuses the DoRA checkpoint (method and the extra magnitude tensors).
    lora, _ = pz.adapt_model(Tiny(), pz.LoraConfig(rank=2, target_modules=["q", "v"]))
    with pytest.raises(pz.CheckpointError, match=r"unexpected tensors \['q.magnitude', 'v.magnitude'\]"):
        pz.load_adapter(lora, path)


def test_conv1d_base_uses_rows_of_the_transposed_weight() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    conv = transformers.pytorch_utils.Conv1D(5, 4)  # weight (in=4, out=5)
    layer = DoRALinear(copy.deepcopy(conv), 2, 3.0)
    assert layer.fan_in_fan_out and layer.magnitude.shape == (5,)
    assert_close(layer.magnitude, conv.weight.norm(dim=0), what="m = column norms of a Conv1D weight")
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 4)
    w = layer.weight  # (in, out), the base's layout
    assert w.shape == (4, 5)
    assert_close(layer(x), x @ w + conv.bias, what="Conv1D DoRA forward vs x @ W' + b")
    with torch.no_grad():
        expected = layer(x)
        layer.merge()
        assert_close(layer(x), expected, what="merged Conv1D DoRA")
        layer.unmerge()
    assert_close(layer.base.weight, conv.weight, what="unmerge restores the Conv1D weight")


# ----------------------------------------------------------------------------- one layer vs PEFT


@settings(max_examples=10, deadline=None)
@given(specs(), st.floats(0.0, 0.6))
def test_one_layer_matches_peft_in_training_with_dropout(spec: dict, dropout: float) -> None:
    peft = pytest.importorskip("peft")

    class Holder(nn.Module):
        def __init__(self, lin: nn.Linear) -> None:
            super().__init__()
            self.lin = lin

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x)

    torch.manual_seed(spec["seed"])
    base = nn.Linear(spec["d_in"], spec["d_out"], bias=spec["bias"])
    rank, alpha = spec["rank"], spec["alpha"] if spec["alpha"] is not None else float(spec["rank"])
    ours = DoRALinear(copy.deepcopy(base), rank, alpha, dropout=dropout, rslora=spec["rslora"]).train()
    config = peft.LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        use_rslora=spec["rslora"],
        use_dora=True,
        target_modules=["lin"],
    )
    theirs = peft.get_peft_model(Holder(copy.deepcopy(base)), config).train()
    layer = theirs.base_model.model.lin
    pairs = [
        (ours.lora_A, layer.lora_A["default"].weight),
        (ours.lora_B, layer.lora_B["default"].weight),
        (ours.magnitude, layer.lora_magnitude_vector["default"].weight),
    ]
    assert_close(ours.magnitude, pairs[2][1], what="magnitude at init, peft_zoo vs PEFT")
    with torch.no_grad():
        for p, q in pairs:
            value = p + 0.3 * torch.randn_like(p)
            p.copy_(value)
            q.copy_(value)
    x = torch.randn(*spec["lead"], spec["d_in"])
    torch.manual_seed(1)
    a = ours(x)
    torch.manual_seed(1)
    b = theirs(x)
    drawn = {**spec, "dropout": dropout}
    assert_close(a, b.reshape(a.shape), what="output, peft_zoo vs PEFT", drawn=drawn, atol=1e-5, rtol=0)
    g = torch.randn(a.shape)
    (a * g).sum().backward()
    (b.reshape(a.shape) * g).sum().backward()
    for (p, q), name in zip(pairs, ("lora_A", "lora_B", "magnitude"), strict=True):
        assert_close(
            p.grad, q.grad, what=f"gradient of {name}, peft_zoo vs PEFT", drawn=drawn, atol=1e-5, rtol=0
        )
    with torch.no_grad():
        ours.eval()
        theirs.eval()
        unmerged = ours(x)
        ours.merge()
        merged = theirs.merge_and_unload()
        scale = 1 + unmerged.abs().max().item()
        assert_close(
            ours(x), merged(x).reshape(a.shape), what="merged, peft_zoo vs PEFT", atol=1e-5 * scale, rtol=0
        )
