"""Grader machinery of challenge 21 · houlsby_bert_layer: drawn layer specs, the learner's
adapted layer beside the reference's with the same base and adapter weights, and the classic
misplacements written out (to name the learner's bug)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from hypothesis import strategies as st
from torch import nn

from peft_zoo.exercises.grading import require, run_learner
from peft_zoo.testing import explain, seeds

# The bugs' names, as the "likely:" lines give them.
AFTER_LN = (
    "the adapter sits after residual + LayerNorm: Houlsby's adapter reads the sublayer output f, before them"
)
TWICE = (
    "the residual is added twice: the adapter already adds h, so it is LN(adapter(h, h) + x), not + h again"
)
SEES_INPUT = "the adapter reads the layer input x instead of the attention sublayer output h"
NO_ATTN = "no adapter after the attention: Houlsby places one after each sublayer"
SHARED = "one adapter shared by both positions: Houlsby trains two separate adapters"
RELU = "ReLU where swish was asked: Houlsby's preset (DoubleSeqBn) uses swish, nn.SiLU()"
NOT_ZERO = "up-projection not zero-initialised: up must start at zero so the adapted layer equals its base"
BOTTLENECK = "wrong bottleneck size: AdapterHub uses d_model // reduction_factor (floor, at least 1)"
NO_RESIDUAL = "the adapter's own residual is missing: it returns up(act(down(x))) + residual"
NOT_FROZEN = "the base layer is not frozen: only the adapters may train"
P_READS_F = "the Pfeiffer adapter reads f: SeqBn (original_ln_before) reads the normalised sum LN(f + a)"
P_RESIDUAL_Z = "the Pfeiffer adapter's residual is LN(f + a): residual_before_ln=True keeps f"
P_NO_LN = "the final LayerNorm is missing: SeqBn applies the layer's LN again, LN(adapter(z, f) + a)"
P_AFTER_ATTN = "the Pfeiffer adapter sits after the attention: SeqBn places it after the FFN only"


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    """Width, heads, FFN width, reduction factor, batch, length and a seed."""
    d = draw(st.sampled_from([4, 6, 8, 10, 12]))
    return {
        "d_model": d,
        "n_heads": draw(st.sampled_from([h for h in (1, 2) if d % h == 0])),
        "d_ff": draw(st.sampled_from([8, 12])),
        "reduction_factor": draw(st.sampled_from([1, 2, 3, 4, 16])),
        "batch": draw(st.integers(1, 3)),
        "length": draw(st.integers(1, 4)),
        "seed": draw(seeds()),
    }


EXAMPLE = {"d_model": 10, "n_heads": 2, "d_ff": 12, "reduction_factor": 4, "batch": 2, "length": 3, "seed": 0}


def base_layer(ref: ModuleType, spec: dict[str, Any]) -> nn.Module:
    """The reference's ``BertLikeLayer`` in float64, eval mode, LayerNorms not at (1, 0)."""
    torch.manual_seed(spec["seed"])
    layer = ref.BertLikeLayer(spec["d_model"], spec["n_heads"], spec["d_ff"]).double().eval()
    with torch.no_grad():
        for norm in (layer.attn_norm, layer.ffn_norm):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0.0, 0.1)
    return layer


def inputs(spec: dict[str, Any]) -> torch.Tensor:
    return torch.randn(spec["batch"], spec["length"], spec["d_model"], dtype=torch.float64)


def call_learner(fn: Callable[[], Any], what: str, spec: dict[str, Any], hint: str | None = None) -> Any:
    """Run learner code; a shape error becomes a failure that says where to look."""
    return run_learner(fn, what, spec, hint, (RuntimeError, IndexError, AttributeError, TypeError))


def randomise(adapted: nn.Module, seed: int) -> None:
    """Give every adapter of the reference random down AND up weights (so each placement shows)."""
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if not name.startswith("layer."):
                p.normal_(0.0, 0.5)


def adapted_pair(impl: ModuleType, ref: ModuleType, spec: dict[str, Any], cls: str) -> tuple[Any, Any]:
    """The learner's and the reference's ``cls`` around copies of one base layer, with the same
    random adapter weights (copied from the reference into the learner's layer by name)."""
    (mine_cls,) = require(impl, cls)
    base = base_layer(ref, spec)
    theirs = getattr(ref, cls)(copy.deepcopy(base), spec["reduction_factor"]).double().eval()
    mine = call_learner(
        lambda: mine_cls(copy.deepcopy(base), spec["reduction_factor"]).double().eval(), f"{cls}(...)", spec
    )
    randomise(theirs, spec["seed"])
    state = theirs.state_dict()
    call_learner(
        lambda: mine.load_state_dict(state),
        f"loading the reference's weights into your {cls}",
        spec,
        BOTTLENECK,
    )
    return mine, theirs


def _relu_adapter(adapter: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda x, r: adapter.up(torch.relu(adapter.down(x))) + r


def houlsby_bugs(theirs: Any, x: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    """What each classic Houlsby misplacement outputs on ``x`` with the reference's weights."""
    layer, att, ffn = theirs.layer, theirs.attn_adapter, theirs.ffn_adapter

    def run(attn: Callable[..., torch.Tensor], out: Callable[..., torch.Tensor]) -> torch.Tensor:
        h = layer.attention_sublayer(x)
        a = attn(h)
        return out(layer.ffn_sublayer(a), a)

    def good_attn(h: torch.Tensor) -> torch.Tensor:
        return layer.attn_norm(att(h, h) + x)

    def good_ffn(f: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return layer.ffn_norm(ffn(f, f) + a)

    def after_ln(f: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        z = layer.ffn_norm(f + a)
        return ffn(z, z)

    ra, rf = _relu_adapter(att), _relu_adapter(ffn)
    return {
        AFTER_LN: lambda: run(good_attn, after_ln),
        TWICE: lambda: run(lambda h: layer.attn_norm(att(h, h) + h + x), good_ffn),
        SEES_INPUT: lambda: run(lambda h: layer.attn_norm(att(x, h) + x), good_ffn),
        NO_ATTN: lambda: run(lambda h: layer.attn_norm(h + x), good_ffn),
        SHARED: lambda: run(lambda h: layer.attn_norm(ffn(h, h) + x), good_ffn),
        RELU: lambda: run(lambda h: layer.attn_norm(ra(h, h) + x), lambda f, a: layer.ffn_norm(rf(f, f) + a)),
    }


def pfeiffer_bugs(theirs: Any, x: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    """What each classic Pfeiffer misplacement outputs on ``x`` with the reference's weights."""
    layer, ffn = theirs.layer, theirs.ffn_adapter

    def run(out: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        a = layer.attn_norm(layer.attention_sublayer(x) + x)
        f = layer.ffn_sublayer(a)
        return out(f, a, layer.ffn_norm(f + a))

    def after_attn() -> torch.Tensor:
        h = layer.attention_sublayer(x)
        a = layer.attn_norm(ffn(layer.attn_norm(h + x), h) + x)
        return layer.ffn_norm(layer.ffn_sublayer(a) + a)

    return {
        P_READS_F: lambda: run(lambda f, a, z: layer.ffn_norm(ffn(f, f) + a)),
        P_RESIDUAL_Z: lambda: run(lambda f, a, z: layer.ffn_norm(ffn(z, z) + a)),
        P_NO_LN: lambda: run(lambda f, a, z: ffn(z, z)),
        P_AFTER_ATTN: after_attn,
    }


def adapter_bugs(theirs: Any, x: torch.Tensor, r: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    return {
        NO_RESIDUAL: lambda: theirs.up(theirs.act(theirs.down(x))),
        RELU: lambda: _relu_adapter(theirs)(x, r),
        "the residual is added to the bottleneck input instead of the output": lambda: theirs.up(
            theirs.act(theirs.down(x + r))
        ),
    }


def check_adapter_attributes(adapter: nn.Module, spec: dict[str, Any], what: str) -> None:
    """``down`` and ``up`` are ``nn.Linear`` of the sizes ``d // reduction_factor`` gives."""
    d, b = spec["d_model"], max(1, spec["d_model"] // spec["reduction_factor"])
    for name, shape in (("down", (b, d)), ("up", (d, b))):
        lin = getattr(adapter, name, None)
        if not isinstance(lin, nn.Linear):
            raise AssertionError(explain(f"{what}.{name} must be an nn.Linear", drawn=spec, got=repr(lin)))
        if tuple(lin.weight.shape) != shape:
            raise AssertionError(
                explain(
                    f"{what}.{name}.weight has the wrong shape (bottleneck = {b})",
                    drawn=spec,
                    expected=str(shape),
                    got=str(tuple(lin.weight.shape)),
                    hint=BOTTLENECK,
                )
            )


def check_frozen_base(adapted: nn.Module, spec: dict[str, Any], adapters: tuple[str, ...]) -> None:
    """Only the named adapters train; the base layer is frozen."""
    trainable = [n for n, p in adapted.named_parameters() if p.requires_grad]
    base = [n for n in trainable if not n.startswith(adapters)]
    assert not base, explain("base parameters are trainable", drawn=spec, got=str(base[:4]), hint=NOT_FROZEN)
    for name in adapters:
        module = getattr(adapted, name, None)
        assert isinstance(module, nn.Module), explain(f"{name} is missing", drawn=spec, got=repr(module))
        assert all(p.requires_grad for p in module.parameters()), explain(f"{name} must train", drawn=spec)
