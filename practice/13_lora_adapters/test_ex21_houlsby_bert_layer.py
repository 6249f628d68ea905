"""Grader for challenge 21 · houlsby_bert_layer. Run: peft-zoo check 21 (or pytest this file).

Each test draws a small BERT-like layer (width, heads, FFN width, reduction factor, batch,
length, seed), wraps two copies of it, yours and the reference's, gives both the same random
adapter weights and compares outputs and gradients; at initialisation both must equal the
base layer.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from peft_zoo.exercises.graders.ex21_houlsby_bert_layer import (
    EXAMPLE,
    NO_RESIDUAL,
    NOT_ZERO,
    SHARED,
    adapted_pair,
    adapter_bugs,
    base_layer,
    call_learner,
    check_adapter_attributes,
    check_frozen_base,
    houlsby_bugs,
    inputs,
    pfeiffer_bugs,
    specs,
)
from peft_zoo.exercises.grading import assert_matches, learner_code, require
from peft_zoo.testing import explain

CHALLENGE = "ex21_houlsby_bert_layer"
pytestmark = pytest.mark.timeout(120)

# Classic mistakes, each planted alone into a copy of the answer: this grader must reject every one
# (checked by tests/test_exercises.py). (description, snippet in the answer, mistaken snippet,
# and the bug's name as this grader's "likely:" line gives it: tests/test_diagnosis.py checks it)
PLANTED_BUGS: list[tuple[str, ...]] = [
    (
        "bottleneck rounded up instead of d_model // reduction_factor",
        "self.bottleneck = max(1, d_model // reduction_factor)",
        "self.bottleneck = max(1, -(-d_model // reduction_factor))",
        "wrong bottleneck size: AdapterHub uses d_model // reduction_factor (floor, at least 1)",
    ),
    (
        "up-projection not zero-initialised (the adapted layer differs from its base at init)",
        "        nn.init.zeros_(self.up.weight)  # up = 0: the adapter starts as its residual\n",
        "",
        "up-projection not zero-initialised: up must start at zero so the adapted layer equals its base",
    ),
    (
        "the adapter forgets its own residual",
        "return self.up(self.act(self.down(x))) + residual",
        "return self.up(self.act(self.down(x)))",
        "the adapter's own residual is missing: it returns up(act(down(x))) + residual",
    ),
    (
        "the non-linearity ignored (always ReLU)",
        'nn.SiLU() if non_linearity == "swish" else nn.ReLU()',
        "nn.ReLU()",
        "ReLU where swish was asked: Houlsby's preset (DoubleSeqBn) uses swish, nn.SiLU()",
    ),
    (
        "Houlsby: the FFN adapter placed after residual + LayerNorm",
        "return layer.ffn_norm(self.ffn_adapter(f, f) + a)",
        "z = layer.ffn_norm(f + a)\n        return self.ffn_adapter(z, z)",
        (
            "the adapter sits after residual + LayerNorm: Houlsby's adapter reads the sublayer "
            "output f, before them"
        ),
    ),
    (
        "Houlsby: the residual added twice after the attention adapter",
        "a = layer.attn_norm(self.attn_adapter(h, h) + x)",
        "a = layer.attn_norm(self.attn_adapter(h, h) + h + x)",
        (
            "the residual is added twice: the adapter already adds h, so it is LN(adapter(h, h) + "
            "x), not + h again"
        ),
    ),
    (
        "Houlsby: the attention adapter reads the layer input instead of the sublayer output",
        "self.attn_adapter(h, h) + x",
        "self.attn_adapter(x, h) + x",
        "the adapter reads the layer input x instead of the attention sublayer output h",
    ),
    (
        "Houlsby: no adapter after the attention",
        "a = layer.attn_norm(self.attn_adapter(h, h) + x)",
        "a = layer.attn_norm(h + x)",
        "no adapter after the attention: Houlsby places one after each sublayer",
    ),
    (
        "Houlsby: one adapter shared by both positions",
        'self.ffn_adapter = SeqBnAdapter(d_model, reduction_factor, "swish")',
        "self.ffn_adapter = self.attn_adapter",
        "one adapter shared by both positions: Houlsby trains two separate adapters",
    ),
    (
        "Houlsby: the base layer is not frozen",
        "        self.layer.requires_grad_(False)\n        self.attn_adapter",
        "        self.attn_adapter",
        "the base layer is not frozen: only the adapters may train",
    ),
    (
        "Pfeiffer: the adapter reads f instead of LN(f + a)",
        "self.ffn_adapter(z, f) + a",
        "self.ffn_adapter(f, f) + a",
        "the Pfeiffer adapter reads f: SeqBn (original_ln_before) reads the normalised sum LN(f + a)",
    ),
    (
        "Pfeiffer: the adapter's residual is LN(f + a) instead of f",
        "self.ffn_adapter(z, f) + a",
        "self.ffn_adapter(z, z) + a",
        "the Pfeiffer adapter's residual is LN(f + a): residual_before_ln=True keeps f",
    ),
    (
        "Pfeiffer: the layer's LayerNorm not applied after the adapter",
        "return layer.ffn_norm(self.ffn_adapter(z, f) + a)",
        "return self.ffn_adapter(z, z)",
        "the final LayerNorm is missing: SeqBn applies the layer's LN again, LN(adapter(z, f) + a)",
    ),
]


# ----------------------------------------------------------------------------- the adapter


@settings(max_examples=20, deadline=None)
@given(
    d=st.integers(1, 12), rf=st.integers(1, 8), nl=st.sampled_from(["relu", "swish"]), lead=st.integers(1, 3)
)
@example(d=10, rf=4, nl="swish", lead=2)
@learner_code()
def test_adapter_sizes_zero_init_and_forward(impl, ref, d, rf, nl, lead) -> None:
    (cls,) = require(impl, "SeqBnAdapter")
    spec = {"d_model": d, "reduction_factor": rf, "non_linearity": nl}
    mine = call_learner(lambda: cls(d, rf, nl).double(), "SeqBnAdapter(...)", spec)
    check_adapter_attributes(mine, spec, "adapter")
    assert bool((mine.up.weight == 0).all()) and bool((mine.up.bias == 0).all()), explain(
        "up's weight and bias must start at zero", drawn=spec, hint=NOT_ZERO
    )
    x, r = torch.randn(lead, d, dtype=torch.float64), torch.randn(lead, d, dtype=torch.float64)
    with torch.no_grad():
        at_init = call_learner(lambda: mine(x, r), "forward", spec)
        assert_matches(
            at_init,
            r,
            what="at initialisation the adapter returns its residual",
            drawn=spec,
            bugs={NO_RESIDUAL: lambda: torch.zeros_like(r)},
        )
        theirs = ref.SeqBnAdapter(d, rf, nl).double()
        for p in theirs.parameters():
            p.normal_(0.0, 0.5)
        mine.load_state_dict(theirs.state_dict())
        out = call_learner(lambda: mine(x, r), "forward", spec)
        assert_matches(
            out, theirs(x, r), what="up(act(down(x))) + residual", drawn=spec, bugs=adapter_bugs(theirs, x, r)
        )


# ----------------------------------------------------------------------------- Houlsby


def _at_init(impl, ref, spec, cls: str, adapters: tuple[str, ...], bugs):
    """Build the learner's ``cls`` around the base; check its parts and that it equals the base."""
    (mine_cls,) = require(impl, cls)
    base = base_layer(ref, spec)
    mine = call_learner(
        lambda: mine_cls(base_layer(ref, spec), spec["reduction_factor"]), f"{cls}(...)", spec
    )
    mine = mine.double().eval()
    theirs = getattr(ref, cls)(base_layer(ref, spec), spec["reduction_factor"]).double().eval()
    for name in adapters:
        check_adapter_attributes(getattr(mine, name, None), spec, name)
        up = getattr(mine, name).up
        assert bool((up.weight == 0).all()) and bool((up.bias == 0).all()), explain(
            f"{name}.up must start at zero", drawn=spec, hint=NOT_ZERO
        )
    check_frozen_base(mine, spec, adapters)
    x = inputs(spec)
    with torch.no_grad():
        out = call_learner(lambda: mine(x), "forward", spec)
        assert_matches(
            out,
            base(x),
            what=f"{cls} at initialisation must equal the base layer",
            drawn=spec,
            bugs=bugs(theirs, x),
            hint="at initialisation every adapter returns its residual, so the adapted layer is its base",
        )
    return mine


@settings(max_examples=15, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@learner_code()
def test_houlsby_two_adapters_frozen_base_equal_at_init(impl, ref, spec) -> None:
    mine = _at_init(impl, ref, spec, "HoulsbyLayer", ("attn_adapter", "ffn_adapter"), houlsby_bugs)
    assert mine.attn_adapter is not mine.ffn_adapter, explain(
        "attn_adapter and ffn_adapter are the same module", drawn=spec, hint=SHARED
    )


def _forward_and_gradients(impl, ref, spec, cls: str, bugs) -> None:
    """Same base, same random adapters: outputs and every adapter gradient equal the reference's."""
    mine, theirs = adapted_pair(impl, ref, spec, cls)
    x = inputs(spec)
    g = torch.randn_like(x)
    out = call_learner(lambda: mine(x), "forward", spec)
    expected = theirs(x)
    with torch.no_grad():
        assert_matches(out, expected, what=f"{cls} forward", drawn=spec, bugs=bugs(theirs, x))
    (out * g).sum().backward()
    (expected * g).sum().backward()
    own = dict(mine.named_parameters())
    for name, p in theirs.named_parameters():
        if not p.requires_grad:
            continue
        got = own[name].grad if name in own else None
        assert got is not None, explain(f"{name} received no gradient", drawn=spec)
        assert_matches(got, p.grad, what=f"gradient of {name}", drawn=spec)


@settings(max_examples=20, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@learner_code()
def test_houlsby_forward_and_gradients_match_reference(impl, ref, spec) -> None:
    _forward_and_gradients(impl, ref, spec, "HoulsbyLayer", houlsby_bugs)


# ----------------------------------------------------------------------------- Pfeiffer


@settings(max_examples=15, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@learner_code()
def test_pfeiffer_one_adapter_frozen_base_equal_at_init(impl, ref, spec) -> None:
    mine = _at_init(impl, ref, spec, "PfeifferLayer", ("ffn_adapter",), pfeiffer_bugs)
    assert getattr(mine, "attn_adapter", None) is None, explain(
        "PfeifferLayer has an attn_adapter",
        drawn=spec,
        hint="SeqBn (Pfeiffer) places one adapter, after the FFN",
    )


@settings(max_examples=20, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@learner_code()
def test_pfeiffer_forward_and_gradients_match_reference(impl, ref, spec) -> None:
    _forward_and_gradients(impl, ref, spec, "PfeifferLayer", pfeiffer_bugs)
