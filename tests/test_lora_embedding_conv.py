"""LoRAEmbedding and LoRAConv against Hugging Face PEFT 0.21.2's own layer classes.

PEFT's ``lora.Embedding`` / ``lora.Conv1d`` / ``lora.Conv2d`` / ``lora.Conv3d`` are built
as its tuner builds them (constructor -> ``update_layer``) around a copy of the same base;
both get the same random, non-zero A and B. Compared: outputs, gradients of every adapter
tensor and of the input, ``delta_weight`` against ``get_delta_weight`` and the outputs and
base weights after merging. Then what PEFT does not pin down: padding_idx, dilation, init,
and the refusals.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from peft_zoo.lora_conv import LoRAConv
from peft_zoo.lora_embedding import LoRAEmbedding
from peft_zoo.testing import alphas, assert_model_unchanged, fingerprint, seeds

PROPERTY = settings(max_examples=20, deadline=None)
EXACT = 1e-6  # same float32 operations in the same order: differences are 0 in practice


def peft_layer(base: nn.Module, rank: int, alpha: float, rslora: bool, dropout: float = 0.0) -> Any:
    """PEFT's LoRA layer for ``base``'s type, built as ``LoraModel._create_new_module`` does."""
    layer = pytest.importorskip("peft.tuners.lora.layer")
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, use_rslora=rslora, lora_dropout=dropout)
    kinds = [(nn.Embedding, layer.Embedding), (nn.Conv1d, layer.Conv1d), (nn.Conv2d, layer.Conv2d)]
    cls = next(peft_cls for kind, peft_cls in [*kinds, (nn.Conv3d, layer.Conv3d)] if isinstance(base, kind))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "groups > 1: merging is not supported"
        return cls(base, "default", config=config, r=rank, lora_alpha=alpha)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).detach().abs().max()) if a.numel() else 0.0


def pair_embedding(
    base: nn.Embedding, rank: int, alpha: float | None, rslora: bool
) -> tuple[LoRAEmbedding, Any]:
    mine = LoRAEmbedding(copy.deepcopy(base), rank, alpha, rslora=rslora)
    theirs = peft_layer(copy.deepcopy(base), rank, mine.alpha, rslora)
    with torch.no_grad():
        mine.lora_embedding_A.normal_()  # non-zero A (PEFT's init sets A = 0)
        mine.lora_embedding_B.normal_()
        theirs.lora_embedding_A["default"].copy_(mine.lora_embedding_A)
        theirs.lora_embedding_B["default"].copy_(mine.lora_embedding_B)
    return mine, theirs


def pair_conv(
    base: nn.Module, rank: int, alpha: float | None, rslora: bool, dropout: float = 0.0
) -> tuple[LoRAConv, Any]:
    mine = LoRAConv(copy.deepcopy(base), rank, alpha, rslora=rslora, dropout=dropout)  # type: ignore[arg-type]  # conv
    theirs = peft_layer(copy.deepcopy(base), rank, mine.alpha, rslora, dropout)
    with torch.no_grad():
        mine.lora_B.normal_()  # non-zero B (the init sets B = 0)
        theirs.lora_A["default"].weight.copy_(mine.lora_A)
        theirs.lora_B["default"].weight.copy_(mine.lora_B)
    return mine, theirs


def compare_forward_backward(
    mine: nn.Module, theirs: Any, x: torch.Tensor, pairs: dict[str, torch.Tensor]
) -> float:
    """Max |diff| over outputs and the gradients of ``pairs`` (mine name -> PEFT tensor)."""
    xs = [x.clone().requires_grad_(x.is_floating_point()) for _ in range(2)]
    out_m, out_t = mine(xs[0]), theirs(xs[1])
    g = torch.randn_like(out_m)
    (out_m * g).sum().backward()
    (out_t * g).sum().backward()
    diffs = [max_diff(out_m, out_t)]
    for name, tensor in pairs.items():
        grad_m, grad_t = getattr(mine, name).grad, tensor.grad
        assert grad_m is not None and grad_t is not None, name
        diffs.append(max_diff(grad_m, grad_t))
    if x.is_floating_point():
        diffs.append(max_diff(xs[0].grad, xs[1].grad))  # type: ignore[arg-type]  # set by backward
    return max(diffs)


def compare_merged(mine: Any, theirs: Any, x: torch.Tensor) -> float:
    """Merge both, compare base weights and outputs; unmerge ours and check it restores W0."""
    w0 = mine.base.weight.detach().clone()
    mine.merge()
    theirs.merge()
    with torch.no_grad():
        diffs = [max_diff(mine.base.weight, theirs.base_layer.weight), max_diff(mine(x), theirs(x))]
    mine.unmerge()  # W0 + D - D: float32 rounding relative to the larger of W0 and D
    size = max(1.0, w0.abs().max().item(), mine.delta_weight().abs().max().item())
    assert max_diff(mine.base.weight, w0) <= 1e-5 * size
    return max(diffs)


# --- embeddings ---------------------------------------------------------------------------


@st.composite
def embedding_specs(draw: st.DrawFn) -> dict[str, Any]:
    vocab = draw(st.integers(1, 20))
    return {
        "vocab": vocab,
        "dim": draw(st.integers(1, 12)),
        "padding_idx": draw(st.none() | st.integers(-vocab, vocab - 1)),
        "rank": draw(st.integers(1, 6)),
        "alpha": draw(alphas()),
        "rslora": draw(st.booleans()),
        "ids_shape": draw(st.lists(st.integers(1, 4), min_size=1, max_size=2)),
        "seed": draw(seeds()),
    }


@PROPERTY
@given(embedding_specs())
def test_embedding_equals_peft(spec: dict[str, Any]) -> None:
    torch.manual_seed(spec["seed"])
    base = nn.Embedding(spec["vocab"], spec["dim"], padding_idx=spec["padding_idx"])
    mine, theirs = pair_embedding(base, spec["rank"], spec["alpha"], spec["rslora"])
    assert mine.scale == theirs.scaling["default"]
    x = torch.randint(0, spec["vocab"], tuple(spec["ids_shape"]))
    pairs = {
        "lora_embedding_A": theirs.lora_embedding_A["default"],
        "lora_embedding_B": theirs.lora_embedding_B["default"],
    }
    assert compare_forward_backward(mine, theirs, x, pairs) <= EXACT
    with torch.no_grad():
        assert max_diff(mine.delta_weight().T, theirs.get_delta_weight("default")) <= EXACT
        assert max_diff(mine.weight, theirs.base_layer.weight + theirs.get_delta_weight("default")) <= EXACT
    assert compare_merged(mine, theirs, x) <= 1e-5


def test_embedding_padding_idx_gets_no_gradient_like_the_base() -> None:
    torch.manual_seed(0)
    mine, theirs = pair_embedding(nn.Embedding(7, 5, padding_idx=3), 2, 4.0, False)
    x = torch.tensor([[3, 1, 3, 6], [0, 3, 2, 3]])
    pairs = {
        "lora_embedding_A": theirs.lora_embedding_A["default"],
        "lora_embedding_B": theirs.lora_embedding_B["default"],
    }
    assert compare_forward_backward(mine, theirs, x, pairs) <= EXACT
    grad_A = mine.lora_embedding_A.grad
    assert grad_A is not None
    assert torch.all(grad_A[:, 3] == 0) and grad_A[:, 1].abs().sum() > 0  # column 3 = padding token
    # The padding token's output is W0[pad] + scale * B A[:, pad]: A[:, pad] is exactly what it adds.
    with torch.no_grad():
        expected = mine.base.weight[3] + mine.scale * mine.lora_embedding_B @ mine.lora_embedding_A[:, 3]
        assert max_diff(mine(torch.tensor([3]))[0], expected) <= EXACT


def test_embedding_max_norm_and_scale_grad_by_freq_follow_the_base_like_peft() -> None:
    torch.manual_seed(1)
    base = nn.Embedding(9, 4, max_norm=0.5, scale_grad_by_freq=True)
    mine, theirs = pair_embedding(base, 3, 6.0, True)
    x = torch.tensor([[1, 1, 1, 4], [8, 1, 0, 4]])
    pairs = {
        "lora_embedding_A": theirs.lora_embedding_A["default"],
        "lora_embedding_B": theirs.lora_embedding_B["default"],
    }
    assert compare_forward_backward(mine, theirs, x, pairs) <= EXACT
    # max_norm renormalises the looked-up columns of A in place, in both.
    assert max_diff(mine.lora_embedding_A, theirs.lora_embedding_A["default"]) == 0.0
    assert mine.lora_embedding_A[:, 1].norm() <= 0.5 + 1e-6


class ScaledEmbedding(nn.Embedding):
    """Gemma's scaled word embedding: the lookup times a scalar ``embed_scale``."""

    embed_scale: torch.Tensor

    def __init__(self, vocab: int, dim: int, embed_scale: float) -> None:
        super().__init__(vocab, dim)
        self.register_buffer("embed_scale", torch.tensor(embed_scale), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.embed_scale


def test_scaled_embedding_scales_the_update_like_peft() -> None:
    torch.manual_seed(4)
    mine, theirs = pair_embedding(ScaledEmbedding(10, 6, 6**0.5), 2, 3.0, False)
    x = torch.tensor([[0, 9, 4], [4, 4, 2]])
    pairs = {
        "lora_embedding_A": theirs.lora_embedding_A["default"],
        "lora_embedding_B": theirs.lora_embedding_B["default"],
    }
    assert compare_forward_backward(mine, theirs, x, pairs) <= EXACT
    assert compare_merged(mine, theirs, x) <= 1e-5
    bad = ScaledEmbedding(10, 6, 1.0)
    bad.embed_scale = torch.ones(6)
    with pytest.raises(ValueError, match="embed_scale"):
        LoRAEmbedding(bad, 2)


def test_embedding_init_is_zero_update_with_peft_distributions() -> None:
    base = nn.Embedding(50, 40)
    mine = LoRAEmbedding(base, 8, 16.0)
    assert torch.all(mine.lora_embedding_A == 0) and mine.lora_embedding_B.std() > 0.8  # A = 0, B ~ N(0, 1)
    x = torch.randint(0, 50, (3, 4))
    assert torch.equal(mine(x), base(x))
    assert not base.weight.requires_grad
    assert [n for n, _ in mine.adapter_named_parameters()] == ["lora_embedding_A", "lora_embedding_B"]


# --- convolutions -------------------------------------------------------------------------


@st.composite
def conv_specs(draw: st.DrawFn) -> dict[str, Any]:
    nd = draw(st.sampled_from([1, 1, 2, 2, 3]))
    groups = draw(st.sampled_from([1, 1, 1, 2]))
    rank = groups * draw(st.integers(1, 3))
    kernel = draw(st.integers(1, 3))
    padding = draw(st.integers(0, 2))
    return {
        "nd": nd,
        "in": groups * draw(st.integers(1, 3)),
        "out": groups * draw(st.integers(1, 3)),
        "groups": groups,
        "kernel": kernel,
        "stride": draw(st.integers(1, 2)),
        "padding": padding,
        "bias": draw(st.booleans()),
        "rank": rank,
        "alpha": draw(alphas()),
        "rslora": draw(st.booleans()),
        "size": draw(st.integers(max(1, kernel - 2 * padding), 6 if nd < 3 else 4)),
        "batch": draw(st.sampled_from([(), (1,), (2,)])),
        "seed": draw(seeds()),
    }


CONVS: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def conv_base(spec: dict[str, Any]) -> nn.Module:
    cls = CONVS[spec["nd"]]
    return cls(
        spec["in"],
        spec["out"],
        spec["kernel"],
        stride=spec["stride"],
        padding=spec["padding"],
        groups=spec["groups"],
        bias=spec["bias"],
    )


@PROPERTY
@given(conv_specs())
def test_conv_equals_peft(spec: dict[str, Any]) -> None:
    torch.manual_seed(spec["seed"])
    mine, theirs = pair_conv(conv_base(spec), spec["rank"], spec["alpha"], spec["rslora"])
    assert mine.scale == theirs.scaling["default"]
    x = torch.randn(*spec["batch"], spec["in"], *([spec["size"]] * spec["nd"]))
    pairs = {"lora_A": theirs.lora_A["default"].weight, "lora_B": theirs.lora_B["default"].weight}
    assert compare_forward_backward(mine, theirs, x, pairs) <= 1e-5
    if spec["groups"] > 1:  # PEFT trains these unmerged only, and so do we
        with pytest.raises(NotImplementedError, match="groups=2"):
            mine.merge()
        assert not mine.merged
        return
    with torch.no_grad():  # ΔW[o, i, t] = scale * sum_j B[o, j] A[j, i, t], written out
        by_hand = torch.einsum("oj,ji...->oi...", mine.lora_B.flatten(1), mine.lora_A) * mine.scale
        assert max_diff(mine.delta_weight(), by_hand) <= 1e-5
    if spec["nd"] == 3 and spec["kernel"] == 1:
        # PEFT 0.21.2 takes a 1x1x1 Conv3d for a 1x1 Conv2d (weight.size()[2:4] == (1, 1)) and
        # its get_delta_weight fails; check our merge against our own unmerged output.
        unmerged = mine(x).detach()
        mine.merge()
        with torch.no_grad():
            size = max(1.0, unmerged.abs().max().item())  # float32: relative
            assert max_diff(mine(x), unmerged) <= 1e-5 * size
        return
    with torch.no_grad():
        assert max_diff(mine.delta_weight(), theirs.get_delta_weight("default")) <= EXACT
        assert max_diff(mine.weight, theirs.base_layer.weight + theirs.get_delta_weight("default")) <= EXACT
    assert compare_merged(mine, theirs, x) <= 1e-5


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_string_padding_equals_peft(padding: str) -> None:
    torch.manual_seed(5)
    mine, theirs = pair_conv(nn.Conv1d(3, 4, 4, padding=padding), 2, 3.0, True)
    x = torch.randn(2, 3, 9)
    pairs = {"lora_A": theirs.lora_A["default"].weight, "lora_B": theirs.lora_B["default"].weight}
    assert compare_forward_backward(mine, theirs, x, pairs) <= EXACT
    assert compare_merged(mine, theirs, x) <= 1e-5


def test_conv_dropout_matches_peft_with_the_same_seed() -> None:
    torch.manual_seed(2)
    mine, theirs = pair_conv(nn.Conv2d(3, 4, 3, padding=1), 2, 8.0, False, dropout=0.5)
    x = torch.randn(2, 3, 5, 5)
    torch.manual_seed(7)
    out_m = mine.train()(x)
    torch.manual_seed(7)
    out_t = theirs.train()(x)
    assert max_diff(out_m, out_t) <= EXACT
    assert max_diff(out_m, mine.eval()(x)) > 1e-3  # dropout did act


def test_conv_init_is_zero_update_and_kaiming_over_the_receptive_field() -> None:
    base = nn.Conv2d(16, 8, 5)
    mine = LoRAConv(base, 4, 8.0)
    bound = 1 / (16 * 5 * 5) ** 0.5  # kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert mine.lora_A.abs().max() <= bound and mine.lora_A.abs().max() > bound / 2
    assert torch.all(mine.lora_B == 0)
    x = torch.randn(2, 16, 9, 9)
    assert torch.equal(mine(x), base(x)) and not base.weight.requires_grad
    assert sum(p.numel() for _, p in mine.adapter_named_parameters()) == 4 * 16 * 25 + 8 * 4


@pytest.mark.parametrize("cls, x_shape", [(nn.Conv1d, (2, 4, 13)), (nn.Conv2d, (1, 4, 9, 11))])
def test_dilated_conv_merges_exactly(cls: type[nn.Module], x_shape: tuple[int, ...]) -> None:
    # PEFT's lora_A ignores the base's dilation; ours uses it, so merged == unmerged.
    torch.manual_seed(3)
    mine = LoRAConv(cls(4, 5, 3, dilation=2, padding=2, stride=2), 3, 5.0)  # type: ignore[arg-type]  # a conv
    with torch.no_grad():
        mine.lora_B.normal_()
    x = torch.randn(*x_shape)
    unmerged = mine(x)
    mine.merge()
    with torch.no_grad():
        size = max(1.0, unmerged.abs().max().item())  # float32: relative
        assert max_diff(mine(x), unmerged) <= 1e-5 * size


def test_training_while_merged_is_refused() -> None:
    conv = LoRAConv(nn.Conv1d(2, 3, 3), 2)
    emb = LoRAEmbedding(nn.Embedding(5, 3), 2)
    for layer, x in ((conv, torch.randn(1, 2, 6)), (emb, torch.tensor([1, 2]))):
        layer.merge()
        with pytest.raises(RuntimeError, match="unmerge"):
            layer.train()(x)
        with torch.no_grad():
            layer(x)  # inference is fine


# --- bad input ----------------------------------------------------------------------------

BAD_CONSTRUCTORS = [
    (lambda: LoRAEmbedding(nn.Linear(3, 4), 2), TypeError, "nn.Embedding"),  # type: ignore[arg-type]  # bad on purpose
    (lambda: LoRAEmbedding(nn.Embedding(5, 3), 0), ValueError, "rank"),
    (lambda: LoRAEmbedding(nn.Embedding(5, 3), "2"), TypeError, "rank"),  # type: ignore[arg-type]  # bad on purpose
    (lambda: LoRAEmbedding(nn.Embedding(5, 3), 2, -1.0), ValueError, "alpha"),
    (lambda: LoRAEmbedding(nn.Embedding(5, 3), 2, rslora="yes"), TypeError, "rslora"),  # type: ignore[arg-type]  # bad
    (lambda: LoRAConv(nn.Linear(3, 4), 2), TypeError, "nn.Conv1d"),  # type: ignore[arg-type]  # bad on purpose
    (lambda: LoRAConv(nn.ConvTranspose2d(3, 4, 3), 2), TypeError, "ConvTranspose2d"),  # type: ignore[arg-type]  # bad
    (lambda: LoRAConv(nn.Conv2d(3, 4, 3), -1), ValueError, "rank"),
    (lambda: LoRAConv(nn.Conv2d(3, 4, 3), 2, dropout=1.0), ValueError, "dropout"),
    (lambda: LoRAConv(nn.Conv2d(3, 4, 3), 2, rslora=1), TypeError, "rslora"),  # type: ignore[arg-type]  # bad on purpose
    (lambda: LoRAConv(nn.Conv2d(4, 4, 3, groups=2), 3), ValueError, "divisible by the base's groups=2"),
    (lambda: LoRAConv(nn.Conv1d(3, 4, 3, padding=1, padding_mode="reflect"), 2), ValueError, "padding_mode"),
]


@pytest.mark.parametrize("build, error, match", BAD_CONSTRUCTORS)
def test_bad_constructor_arguments_raise_clear_errors(build: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        build()


def test_failed_constructor_leaves_the_base_unchanged() -> None:
    base = nn.Conv1d(4, 4, 3, groups=2)
    before = fingerprint(base)
    with pytest.raises(ValueError):
        LoRAConv(base, 3)
    assert_model_unchanged(base, before, what="a refused LoRAConv")
    assert base.weight.requires_grad


def test_bad_forward_inputs_raise_clear_errors() -> None:
    conv = LoRAConv(nn.Conv2d(3, 4, 3), 2)
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 3"):
        conv(torch.randn(2, 5, 6, 6))
    with pytest.raises(ValueError, match="expects input"):
        conv(torch.randn(6, 6))
    emb = LoRAEmbedding(nn.Embedding(5, 3), 2)
    with pytest.raises(TypeError, match="token ids"):
        emb(torch.randn(2, 3))


def test_grouped_conv_refuses_delta_weight_and_changes_nothing() -> None:
    layer = LoRAConv(nn.Conv2d(4, 6, 3, groups=2), 2)
    before = fingerprint(layer)
    for op in (layer.merge, layer.delta_weight):
        with pytest.raises(NotImplementedError, match="groups=2"):
            op()
    assert_model_unchanged(layer, before, what="a refused merge")
