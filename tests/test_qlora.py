"""QLoRA (peft_zoo.qlora): QLoRALinear over a frozen NF4 base, its checkpoints, and whole-model
injection and export (inject_qlora, merge_qlora), each checked against an independent computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from nf4_helpers import FAST, expected_nbytes
from safetensors.torch import load_file
from torch import nn

from peft_zoo.injection.inject import inject_qlora
from peft_zoo.injection.surgery import InjectionError, mark_only_adapters_trainable
from peft_zoo.interop.checkpoint import adapter_state_dict, load_adapter, save_adapter
from peft_zoo.models import TinyMLP, TinyTransformer, TinyTransformerConfig
from peft_zoo.nf4 import NF4Linear, model_nbytes, quantize_nf4
from peft_zoo.qlora import QLoRALinear, merge_qlora
from peft_zoo.testing import assert_model_unchanged, fingerprint, seeds

# ----------------------------------------------------------------------------- QLoRALinear


def make_layer(d_in: int = 96, d_out: int = 40, bias: bool = True, seed: int = 0, **kw) -> QLoRALinear:
    torch.manual_seed(seed)
    return QLoRALinear(nn.Linear(d_in, d_out, bias=bias), kw.pop("rank", 4), **kw)


@FAST
@given(
    d_in=st.integers(1, 40),
    d_out=st.integers(1, 40),
    rank=st.integers(1, 5),
    bias=st.booleans(),
    dq=st.booleans(),
    seed=seeds(),
)
def test_qlora_at_init_equals_the_dequantised_base(d_in, d_out, rank, bias, dq, seed) -> None:
    torch.manual_seed(seed)
    base = nn.Linear(d_in, d_out, bias=bias)
    w0 = base.weight.detach().clone()
    layer = QLoRALinear(base, rank, double_quant=dq)
    x = torch.randn(3, 2, d_in)
    expected_w = quantize_nf4(w0, double_quant=dq).dequantize()
    assert torch.equal(layer.base.dequantize_weight(), expected_w)
    expected = F.linear(x, expected_w, base.bias)
    assert torch.allclose(layer(x), expected, atol=1e-6)
    assert not isinstance(layer.base, nn.Linear) and not any(
        isinstance(b, nn.Parameter) for b in layer.buffers()
    )


def test_gradients_reach_only_the_adapter() -> None:
    layer = make_layer()
    with torch.no_grad():
        layer.lora_B.normal_()  # B = 0 would leave A without gradient
    x = torch.randn(5, 96, requires_grad=True)
    g = torch.randn(5, 40)
    (layer(x) * g).sum().backward()
    assert layer.lora_A.grad is not None and layer.lora_B.grad is not None
    assert layer.lora_A.grad.abs().sum() > 0 and layer.lora_B.grad.abs().sum() > 0
    assert layer.base.bias.grad is None and not layer.base.bias.requires_grad
    assert all(not b.requires_grad and b.grad is None for b in layer.buffers())
    trainable = [n for n, p in layer.named_parameters() if p.requires_grad]
    assert trainable == ["lora_A", "lora_B"]
    assert len(torch.optim.AdamW(mark_only_adapters_trainable(layer)).param_groups[0]["params"]) == 2
    # The gradient flows *through* the frozen base to the input: d(x W'^T)/dx = g W'.
    w = layer.weight.detach()
    assert torch.allclose(x.grad, g @ w, atol=1e-5)
    # bias="lora_only" (PEFT's name) trains the quantised layer's own bias too, and only it.
    trainable = mark_only_adapters_trainable(layer, bias="lora_only")
    assert {id(p) for p in trainable} == {id(layer.lora_A), id(layer.lora_B), id(layer.base.bias)}


def test_lora_shapes_dtypes_and_scale() -> None:
    layer = make_layer(rank=8, alpha=16, adapter_dtype=torch.float64)
    assert layer.lora_A.shape == (8, 96) and layer.lora_B.shape == (40, 8)
    assert layer.lora_A.dtype == torch.float64 and layer.scale == 2.0
    assert make_layer(rank=4, alpha=8, rslora=True).scale == pytest.approx(8 / 2)
    assert torch.count_nonzero(make_layer().lora_B) == 0
    out = layer(torch.randn(2, 96))
    assert out.dtype == torch.float32  # the adapter dtype never leaks into the output


def test_compute_dtype_and_half_precision_inputs() -> None:
    layer = make_layer(compute_dtype=torch.bfloat16)
    x = torch.randn(4, 96)
    out = layer(x)
    assert out.dtype == torch.float32
    ref = F.linear(x.bfloat16(), layer.base.dequantize_weight(torch.bfloat16), layer.bias.bfloat16()).float()
    assert torch.equal(out, ref)  # B = 0: exactly the bf16 base
    bf_layer = QLoRALinear(nn.Linear(96, 40, dtype=torch.bfloat16), 4)
    assert bf_layer.lora_A.dtype == torch.float32 and bf_layer.base.weight_dtype == torch.bfloat16
    assert bf_layer(x.bfloat16()).dtype == torch.bfloat16


def test_to_linear_equals_the_trained_layer_and_merge_refuses() -> None:
    layer = make_layer()
    with torch.no_grad():
        layer.lora_A.normal_()
        layer.lora_B.normal_()
    x = torch.randn(6, 96)
    linear = layer.to_linear()
    assert type(linear) is nn.Linear and linear.weight.dtype == torch.float32
    assert torch.allclose(linear(x), layer(x), atol=1e-4)
    expected_w = layer.base.dequantize_weight() + layer.scale * layer.lora_B @ layer.lora_A
    assert torch.allclose(linear.weight, expected_w, atol=1e-5)
    assert not layer.merged
    with pytest.raises(RuntimeError, match="to_linear"):
        layer.merge()
    assert not layer.merged


def test_short_qlora_fine_tune_reduces_the_loss() -> None:
    torch.manual_seed(0)
    base = nn.Linear(32, 16)
    # The target: the base plus a rank-2 change, which a rank-4 adapter can represent.
    target = nn.Linear(32, 16)
    with torch.no_grad():
        target.weight.copy_(base.weight + 0.3 * torch.randn(16, 2) @ torch.randn(2, 32) / 4)
        target.bias.copy_(base.bias)
    layer = QLoRALinear(base, 4, alpha=8)
    x = torch.randn(256, 32)
    y = target(x).detach()
    opt = torch.optim.Adam([layer.lora_A, layer.lora_B], lr=1e-2)
    losses = []
    for _ in range(60):
        loss = F.mse_loss(layer(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], f"loss went {losses[0]:.4g} -> {losses[-1]:.4g}"


def test_state_dict_round_trip_and_adapter_only_checkpoint() -> None:
    layer = make_layer(seed=1)
    with torch.no_grad():
        layer.lora_B.normal_()
    fresh = make_layer(seed=2)  # another base: every buffer differs
    x = torch.randn(3, 96)
    assert not torch.allclose(fresh(x), layer(x))
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh(x), layer(x))
    assert set(adapter_state_dict(layer)) == {"lora_A", "lora_B"}
    assert {"base.weight_packed", "base.weight_absmax", "base.weight_absmax_scale"} <= set(layer.state_dict())


def test_save_and_load_adapter_moves_only_the_lora_weights(tmp_path) -> None:
    torch.manual_seed(0)
    trained, fresh = TinyMLP(), TinyMLP()
    fresh.load_state_dict(trained.state_dict())
    inject_qlora(trained, rank=2)
    inject_qlora(fresh, rank=2)
    for layer in trained.modules():
        if isinstance(layer, QLoRALinear):
            with torch.no_grad():
                layer.lora_B.normal_()
    x = torch.randn(3, 8)
    assert not torch.allclose(fresh(x), trained(x))
    path = save_adapter(trained, tmp_path / "qlora")
    assert all(k.endswith(("lora_A", "lora_B")) for k in load_file(path))
    config = load_adapter(fresh, tmp_path / "qlora")
    assert config["method"] == "qlora" and torch.allclose(fresh(x), trained(x))


def test_conv1d_base_is_quantised_in_out_layout() -> None:
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils")
    torch.manual_seed(0)
    conv = pytorch_utils.Conv1D(24, 64)  # nf=24 outputs, nx=64 inputs; weight (64, 24)
    w = conv.weight.detach().T.clone()  # (out, in)
    layer = QLoRALinear(conv, 2)
    x = torch.randn(5, 64)
    assert torch.allclose(layer(x), F.linear(x, quantize_nf4(w, double_quant=True).dequantize(), conv.bias))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"rank": 0}, ValueError),
        ({"rank": -1}, ValueError),
        ({"rank": 2.0}, TypeError),
        ({"blocksize": 0}, ValueError),
        ({"blocksize": 7}, ValueError),
        ({"dropout": 1.0}, ValueError),
        ({"compute_dtype": torch.int8}, TypeError),
        ({"adapter_dtype": None}, TypeError),
    ],
)
def test_bad_layer_arguments_leave_the_base_untouched(kwargs: dict, error: type) -> None:
    base = nn.Linear(8, 4)
    before = fingerprint(base)
    with pytest.raises(error):
        QLoRALinear(base, **{"rank": 2, **kwargs})
    assert_model_unchanged(base, before, what="a failed QLoRALinear(...)")


def test_non_linear_and_non_finite_bases_are_refused() -> None:
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        QLoRALinear(nn.Conv2d(2, 2, 1), 2)
    base = nn.Linear(8, 4)
    with torch.no_grad():
        base.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        QLoRALinear(base, 2)
    assert base.bias.requires_grad
    with pytest.raises(ValueError, match=r"\(\.\.\., 8\)"):
        QLoRALinear(nn.Linear(8, 4), 2)(torch.randn(3, 9))


# ----------------------------------------------------------------------------- whole models


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def test_quantised_weights_cost_4_127_bits_of_32() -> None:
    model = nn.Sequential(nn.Linear(256, 256, bias=False), nn.ReLU(), nn.Linear(256, 128, bias=False))
    fp32 = model_nbytes(model)
    bf16 = model_nbytes(nn.Sequential(*(m for m in model)).to(torch.bfloat16))
    model = model.float()
    inject_qlora(model, ["0", "2"], rank=4)
    lora = tensor_bytes(p for n, p in model.named_parameters() if "lora_" in n)
    weights = model_nbytes(model) - lora
    expected = expected_nbytes(256 * 256, 64, True) + expected_nbytes(256 * 128, 64, True)
    assert weights == expected
    assert fp32 == 4 * (256 * 256 + 256 * 128) and bf16 == fp32 // 2
    assert weights / fp32 == pytest.approx(4.127 / 32, rel=2e-3)
    assert weights / bf16 == pytest.approx(4.127 / 16, rel=2e-3)


def test_inject_qlora_on_a_tiny_transformer_quantises_every_linear_but_the_head() -> None:
    torch.manual_seed(0)
    model = TinyTransformer(TinyTransformerConfig(d_model=64, d_ff=128, n_layers=2))
    fp32 = model_nbytes(model)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    _, params = inject_qlora(model, rank=4, blocksize=64)
    qlora = {n: m for n, m in model.named_modules() if isinstance(m, QLoRALinear)}
    assert sorted(qlora) == sorted(n for n in linears if n != "head")
    assert isinstance(model.head, nn.Linear) and len(params) == 2 * len(qlora)
    # Memory from the actual tensors: quantised weights by the formula, everything else as it was.
    quantised = sum(expected_nbytes(linears[n].weight.numel(), 64, True) for n in qlora)
    removed = sum(4 * linears[n].weight.numel() for n in qlora)
    lora = tensor_bytes(params)
    assert model_nbytes(model) == fp32 - removed + quantised + lora
    assert model_nbytes(model) < 0.45 * fp32
    # It still runs and trains only the adapters.
    trainable = mark_only_adapters_trainable(model)
    assert {id(p) for p in trainable} == {id(p) for p in params}
    ids = torch.randint(0, 32, (3, 10))
    model(ids).sum().backward()
    assert all(p.grad is not None for p in params[1::2])  # every B gets a gradient


@pytest.mark.parametrize(
    ("names", "kwargs"),
    [
        (["encoder.0", "encoder.2.branch.fc9"], {}),  # unknown name
        (["encoder.0", "encoder.1"], {}),  # a GELU
        (["encoder.0", "encoder.0"], {}),  # twice
        (["encoder.0"], {"rank": 0}),
        (["encoder.0"], {"blocksize": 3}),
    ],
)
def test_inject_qlora_is_all_or_nothing(names: list[str], kwargs: dict) -> None:
    model = TinyMLP()
    before = fingerprint(model)
    with pytest.raises((InjectionError, ValueError, TypeError)):
        inject_qlora(model, names, **{"rank": 2, **kwargs})
    assert_model_unchanged(model, before, what="a failed inject_qlora")


def test_inject_qlora_is_all_or_nothing_when_a_later_layer_has_inf() -> None:
    model = TinyMLP()
    with torch.no_grad():
        model.encoder[2].branch.fc2.weight[0, 0] = float("inf")  # (inf == inf, so the fingerprint compares)
    before = fingerprint(model)
    with pytest.raises(ValueError, match="inf"):
        inject_qlora(model, ["encoder.0", "encoder.2.branch.fc2"], rank=2)
    assert_model_unchanged(model, before, what="inject_qlora with an inf weight")


def test_merge_qlora_replaces_layers_by_equivalent_float_linears() -> None:
    torch.manual_seed(0)
    model = TinyMLP()
    inject_qlora(model, rank=2)
    for layer in model.modules():
        if isinstance(layer, QLoRALinear):
            with torch.no_grad():
                layer.lora_B.normal_()
    x = torch.randn(4, 8)
    before = model(x)
    assert merge_qlora(model) == 3
    assert not any(isinstance(m, (QLoRALinear, NF4Linear)) for m in model.modules())
    assert torch.allclose(model(x), before, atol=1e-5)
