"""Grader for challenge 22 · prefix_past_key_values. Run: peft-zoo check 22 (or pytest this file).

Each test draws grouped-query shapes (virtual tokens, layers, query and key/value heads, head
width, with or without a projection MLP, batch, seed), gives your PrefixKV and the reference's
the same random parameters, and compares the parameter shapes, the prompt P, every layer's
keys and values and the gradients; the mask test draws left-padded masks of several dtypes.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from peft_zoo.exercises.graders.ex22_prefix_past_key_values import (
    EXAMPLE,
    NO_PROJECTION,
    NO_TANH,
    PROJECTED,
    args,
    call_learner,
    check_parameters,
    kv_bugs,
    mask_bugs,
    prefix_pair,
    specs,
)
from peft_zoo.exercises.grading import assert_matches, learner_code, require
from peft_zoo.testing import explain

CHALLENGE = "ex22_prefix_past_key_values"
pytestmark = pytest.mark.timeout(120)

# Classic mistakes, each planted alone into a copy of the answer: this grader must reject every one
# (checked by tests/test_exercises.py). (description, snippet in the answer, mistaken snippet,
# and the bug's name as this grader's "likely:" line gives it: tests/test_diagnosis.py checks it)
PLANTED_BUGS: list[tuple[str, ...]] = [
    (
        "keys and values swapped",
        "(p[2 * i], p[2 * i + 1]) for i in range(layers)",
        "(p[2 * i + 1], p[2 * i]) for i in range(layers)",
        "keys and values swapped: index 2l holds layer l's keys, 2l + 1 its values",
    ),
    (
        "prefix sized by the query heads instead of the key/value heads (GQA)",
        "width = num_kv_heads * head_dim",
        "width = num_heads * head_dim",
        "the prefix is sized by num_heads: the cache holds num_kv_heads key/value heads, D = num_kv_heads * head_dim",
    ),
    (
        "the mask's ones appended at the end instead of the front",
        "torch.cat([ones, attention_mask], dim=1)",
        "torch.cat([attention_mask, ones], dim=1)",
        "the mask's ones are appended: the prefix is in front, so its n ones go in front",
    ),
    (
        "the prefix positions masked out (zeros instead of ones)",
        "attention_mask.new_ones(",
        "attention_mask.new_zeros(",
        "the prefix positions are masked out: they must be ones (every token may attend to the prefix)",
    ),
    (
        "the prefix not expanded over the batch",
        "p = p.unsqueeze(1).expand(-1, batch_size, -1, -1, -1)",
        "p = p.unsqueeze(1)",
        "the prefix is not expanded over the batch: each key/value is (batch_size, H_kv, n, d_head)",
    ),
    (
        "tokens and heads transposed (a reshape instead of view + permute)",
        "self.prompt().view(n, 2 * layers, heads, dh).permute(1, 2, 0, 3)",
        "self.prompt().view(2 * layers, heads, n, dh)",
        "tokens and heads mixed up: view P as (n, 2L, H_kv, d_head), then move n after the heads (permute)",
    ),
    (
        "all layers' keys first, then all values (not interleaved per layer)",
        "(p[2 * i], p[2 * i + 1]) for i in range(layers)",
        "(p[i], p[layers + i]) for i in range(layers)",
        "all keys first, then all values: PEFT interleaves them per layer (2l keys, 2l + 1 values)",
    ),
    (
        "the projection applied per layer (outputs one layer's 2 D)",
        "nn.Linear(encoder_hidden_size, num_layers * 2 * width)",
        "nn.Linear(encoder_hidden_size, 2 * width)",
        "the projection outputs one layer's keys and values: one MLP runs once and outputs all layers, 2 L D",
    ),
    (
        "the tanh of the projection left out",
        "                nn.Tanh(),\n",
        "",
        "the tanh between the projection's two Linear layers is missing",
    ),
    (
        "the projection never applied (P = E)",
        "return e if self.encoder_hidden_size is None else self.transform(e)",
        "return e",
        "the projection is never applied: with encoder_hidden_size, P = transform(E), not E",
    ),
]


@settings(max_examples=20, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@example(spec=PROJECTED)
@learner_code()
def test_parameters_have_peft_shapes_sized_by_kv_heads(impl, spec) -> None:
    (cls,) = require(impl, "PrefixKV")
    module = call_learner(lambda: cls(*args(spec)), "PrefixKV(...)", spec)
    check_parameters(module, spec)
    assert all(p.requires_grad for p in module.parameters()), explain(
        "every parameter must train", drawn=spec
    )
    if spec["hidden"] is not None:
        acts = [m for m in module.modules() if isinstance(m, nn.Tanh)]
        assert acts, explain("transform has no nn.Tanh", drawn=spec, hint=NO_TANH)


@settings(max_examples=20, deadline=None)
@given(spec=specs().map(lambda s: s | {"hidden": s["hidden"] or 3}))
@example(spec=PROJECTED)
@learner_code()
def test_prompt_runs_the_projection_once_on_all_tokens(impl, ref, spec) -> None:
    mine, theirs = prefix_pair(impl, ref, spec)
    with torch.no_grad():
        got = call_learner(mine.prompt, "prompt()", spec)
        t = theirs.transform
        bugs = {
            NO_TANH: lambda: t[2](t[0](theirs.embedding.weight)),
            NO_PROJECTION: lambda: theirs.embedding.weight,
        }
        assert_matches(
            got, theirs.prompt(), what="prompt() = transform(E), (n, 2 L D)", drawn=spec, bugs=bugs
        )


@settings(max_examples=25, deadline=None)
@given(spec=specs())
@example(spec=EXAMPLE)
@example(spec=PROJECTED)
@learner_code()
def test_past_key_values_layout_and_gradients(impl, ref, spec) -> None:
    mine, theirs = prefix_pair(impl, ref, spec)
    b = spec["batch"]
    got = call_learner(lambda: mine.past_key_values(b), "past_key_values(batch_size)", spec)
    expected = theirs.past_key_values(b)
    assert isinstance(got, list | tuple) and len(got) == spec["layers"], explain(
        "past_key_values must return one (key, value) pair per layer",
        drawn=spec,
        expected=f"{spec['layers']} pairs",
        got=f"{type(got).__name__} of length {len(got) if isinstance(got, list | tuple) else '?'}",
    )
    with torch.no_grad():
        for layer, (pair, ref_pair) in enumerate(zip(got, expected, strict=True)):
            for which, name in enumerate(("key", "value")):
                assert_matches(
                    pair[which],
                    ref_pair[which],
                    what=f"layer {layer}'s {name}, (B, H_kv, n, d_head)",
                    drawn=spec,
                    bugs=kv_bugs(theirs, b, layer, which),
                )
    torch.manual_seed(spec["seed"] + 1)
    grads = [(torch.randn_like(k), torch.randn_like(v)) for k, v in expected]

    def loss(pairs):
        return sum((k * gk).sum() + (v * gv).sum() for (k, v), (gk, gv) in zip(pairs, grads, strict=True))

    loss(got).backward()
    loss(expected).backward()
    own = dict(mine.named_parameters())
    for name, p in theirs.named_parameters():
        assert own[name].grad is not None, explain(f"{name} received no gradient", drawn=spec)
        assert_matches(own[name].grad, p.grad, what=f"gradient of {name} (summed over the batch)", drawn=spec)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    length=st.integers(1, 5),
    n=st.integers(1, 4),
    dtype=st.sampled_from([torch.long, torch.float32, torch.bool]),
    data=st.data(),
)
@example(batch=2, length=3, n=2, dtype=torch.long, data=None)
@learner_code()
def test_extend_attention_mask_puts_ones_in_front(impl, batch, length, n, dtype, data) -> None:
    (extend,) = require(impl, "extend_attention_mask")
    pads = [data.draw(st.integers(0, length - 1)) for _ in range(batch)] if data else [1, 0]
    mask = torch.stack([torch.arange(length) >= p for p in pads]).to(dtype)  # left padding
    drawn = {"B": batch, "T": length, "n": n, "dtype": dtype, "padding": pads}
    got = call_learner(lambda: extend(mask, n), "extend_attention_mask", drawn)
    expected = torch.cat([torch.ones(batch, n, dtype=dtype), mask], dim=1)
    assert_matches(
        got, expected, what="the mask, (B, n + T), n ones in front", drawn=drawn, bugs=mask_bugs(mask, n)
    )
    assert got.dtype == dtype, explain(
        "the mask's dtype changed", drawn=drawn, expected=str(dtype), got=str(got.dtype)
    )
