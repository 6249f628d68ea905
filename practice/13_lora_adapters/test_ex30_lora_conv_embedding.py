"""Grader for challenge 30 · lora_conv_embedding. Run: peft-zoo check 30 (or pytest this file).

Each test draws an nn.Embedding (vocabulary, width, rank, alpha, ids) or an nn.Conv2d (channels,
kernel, stride, padding, dilation, rank, alpha), builds your layer beside peft_zoo's own
LoRAEmbedding / LoRAConv (equal to Hugging Face PEFT 0.21.2's lora.Embedding / lora.Conv2d)
with the same random factors, and compares the init, outputs, gradients and merged weights.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import example, given, settings

from peft_zoo.exercises.graders.ex30_lora_conv_embedding import (
    CONV,
    CONV_ARGS,
    CONV_HINTS,
    EMB,
    EMB_SQUARE,
    INIT_SWAPPED,
    LOOKUP_ROWS,
    MERGE_T,
    NONZERO_DELTA,
    call_learner,
    check_shapes,
    conv_base,
    conv_delta_bugs,
    conv_forward_bugs,
    conv_input,
    conv_pair,
    conv_shapes,
    conv_specs,
    emb_base,
    emb_forward_bugs,
    emb_merge_bugs,
    emb_pair,
    emb_shapes,
    emb_specs,
    ids_for,
)
from peft_zoo.exercises.grading import assert_matches, learner_code, require
from peft_zoo.testing import explain

CHALLENGE = "ex30_lora_conv_embedding"
pytestmark = pytest.mark.timeout(120)

# Classic mistakes, each planted alone into a copy of the answer: this grader must reject every one
# (checked by tests/test_exercises.py). (description, snippet in the answer, mistaken snippet,
# and the bug's name as this grader's "likely:" line gives it: tests/test_diagnosis.py checks it)
PLANTED_BUGS: list[tuple[str, ...]] = [
    (
        "conv A built as a 1x1 kernel",
        "torch.empty(rank, base.in_channels, kh, kw, **factory)",
        "torch.empty(rank, base.in_channels, 1, 1, **factory)",
        "lora_A is a 1x1 kernel: A is a convolution with the base's kernel, (r, in, kh, kw); B is the 1x1",
    ),
    (
        "conv B built with the base's kernel",
        "torch.zeros(base.out_channels, rank, 1, 1, **factory)",
        "torch.zeros(base.out_channels, rank, kh, kw, **factory)",
        "lora_B has the base's kernel: B is a pointwise (1x1) convolution, (out, r, 1, 1)",
    ),
    (
        "the scale missing on the conv LoRA path",
        "return b(x) + F.conv2d(h, self.lora_B) * self.scale",
        "return b(x) + F.conv2d(h, self.lora_B)",
        "the scale is missing on the LoRA path: base(x) + s · B(A(x))",
    ),
    (
        "conv A without the base's stride, padding and dilation",
        "F.conv2d(x, self.lora_A, None, b.stride, b.padding, b.dilation)",
        "F.conv2d(x, self.lora_A)",
        "conv A must use the base's stride, padding and dilation, so its output lines up with the base's",
    ),
    (
        "the conv merge reshapes the transposed product",
        "return delta.view(self.lora_B.shape[0], *self.lora_A.shape[1:]) * self.scale",
        "return delta.T.reshape(self.lora_B.shape[0], *self.lora_A.shape[1:]) * self.scale",
        "the merged kernel is scrambled: (B.flatten(1) @ A.flatten(1)).view(out, in, kh, kw), no transpose",
    ),
    (
        "embedding init swapped (A random, B zeros)",
        "    self.lora_embedding_A = nn.Parameter(torch.zeros(rank, base.num_embeddings, **factory))  # (r, vocab)\n"
        "        self.lora_embedding_B = nn.Parameter(torch.randn(base.embedding_dim, rank, **factory))",
        "    self.lora_embedding_A = nn.Parameter(torch.randn(rank, base.num_embeddings, **factory))\n"
        "        self.lora_embedding_B = nn.Parameter(torch.zeros(base.embedding_dim, rank, **factory))",
        "the init is swapped: for an embedding PEFT sets A = 0 and B ~ N(0, 1) (the reverse of nn.Linear's)",
    ),
    (
        "embedding A random too (ΔW != 0 at init)",
        "torch.zeros(rank, base.num_embeddings, **factory)",
        "torch.randn(rank, base.num_embeddings, **factory)",
        "A is random too: A must start at zero so that ΔW = s B A = 0 and the layer starts as its base",
    ),
    (
        "embedding lookup of A's rows instead of its columns",
        "F.embedding(ids, self.lora_embedding_A.T)",
        "F.embedding(ids, self.lora_embedding_A)",
        "the ids pick COLUMNS of A (r, vocab): look them up in A.T (vocab, r), F.embedding(ids, lora_embedding_A.T)",
    ),
    (
        "the scale missing on the embedding LoRA path",
        "return self.base(ids) + (after_a @ self.lora_embedding_B.T) * self.scale",
        "return self.base(ids) + after_a @ self.lora_embedding_B.T",
        "the scale is missing: base(ids) + s · Aᵀ[ids] Bᵀ",
    ),
    (
        "the embedding merge adds ΔW untransposed",
        "self.base.weight += (self.scale * self.lora_embedding_B @ self.lora_embedding_A).T",
        "self.base.weight += self.scale * self.lora_embedding_B @ self.lora_embedding_A",
        "the table is (vocab, dim) and ΔW = s B A is (dim, vocab): merge adds its transpose",
    ),
]


# ----------------------------------------------------------------------------- embedding


@settings(max_examples=20, deadline=None)
@given(spec=emb_specs())
@example(spec=EMB)
@learner_code()
def test_embedding_init_a_zero_b_random_output_is_base(impl, spec) -> None:
    (cls,) = require(impl, "LoRAEmbedding")
    base = emb_base(spec)
    layer = call_learner(
        lambda: cls(copy.deepcopy(base), spec["rank"], spec["alpha"]), "LoRAEmbedding(...)", spec
    )
    check_shapes(layer, emb_shapes(spec), {}, spec)
    a, b = layer.lora_embedding_A, layer.lora_embedding_B
    if torch.count_nonzero(a):
        hint = INIT_SWAPPED if not torch.count_nonzero(b) else NONZERO_DELTA
        raise AssertionError(explain("lora_embedding_A must start at zero", drawn=spec, hint=hint))
    assert torch.count_nonzero(b) == b.numel(), explain(
        "lora_embedding_B must start random, N(0, 1)", drawn=spec, hint=INIT_SWAPPED
    )
    assert a.requires_grad and b.requires_grad and not layer.base.weight.requires_grad, explain(
        "A and B train, the base stays frozen", drawn=spec
    )
    ids = ids_for(spec)
    with torch.no_grad():
        out = call_learner(lambda: layer(ids), "forward", spec, LOOKUP_ROWS)
        assert_matches(out, base(ids), what="the output at init equals the base's", drawn=spec)


@settings(max_examples=25, deadline=None)
@given(spec=emb_specs())
@example(spec=EMB)
@example(spec=EMB_SQUARE)
@learner_code()
def test_embedding_forward_and_gradients_match_peft_zoo(impl, spec) -> None:
    mine, lib = emb_pair(impl, spec)
    ids = ids_for(spec)
    out = call_learner(lambda: mine(ids), "forward", spec, LOOKUP_ROWS)
    expected = lib(ids)
    with torch.no_grad():
        bugs = emb_forward_bugs(lib, ids)
    assert_matches(out, expected, what="forward vs peft_zoo's LoRAEmbedding", drawn=spec, bugs=bugs)
    g = torch.randn(expected.shape, dtype=torch.float64)
    names = ("lora_embedding_A", "lora_embedding_B")
    got = torch.autograd.grad((out * g).sum(), [getattr(mine, n) for n in names], allow_unused=True)
    want = torch.autograd.grad((expected * g).sum(), [getattr(lib, n) for n in names])
    for name, a, b in zip(names, got, want, strict=True):
        assert a is not None, explain(f"{name} received no gradient", drawn=spec)
        assert_matches(a, b, what=f"gradient of {name}", drawn=spec)


@settings(max_examples=20, deadline=None)
@given(spec=emb_specs())
@example(spec=EMB)
@example(spec=EMB_SQUARE)
@learner_code()
def test_embedding_merge_adds_the_transposed_update(impl, spec) -> None:
    mine, lib = emb_pair(impl, spec)
    ids = ids_for(spec)
    with torch.no_grad():
        before = lib(ids)
        w0 = lib.base.weight.detach().clone()
        call_learner(mine.merge, "merge()", spec, MERGE_T)
        bugs = emb_merge_bugs(w0, lib)
        lib.merge()
        assert_matches(
            mine.base.weight, lib.base.weight, what="base.weight after merge()", drawn=spec, bugs=bugs
        )
        assert mine.merged is True, explain("merge() must set merged = True", drawn=spec)
        out = call_learner(lambda: mine(ids), "forward after merge()", spec, LOOKUP_ROWS)
        assert_matches(out, before, what="the merged layer's output equals the unmerged one", drawn=spec)
        mine.merge()
        assert_matches(
            mine.base.weight, lib.base.weight, what="base.weight after a second merge()", drawn=spec
        )


# ----------------------------------------------------------------------------- Conv2d


@settings(max_examples=20, deadline=None)
@given(spec=conv_specs())
@example(spec=CONV)
@learner_code()
def test_conv_init_a_kernel_b_pointwise_zero(impl, spec) -> None:
    (cls,) = require(impl, "LoRAConv2d")
    base = conv_base(spec)
    layer = call_learner(
        lambda: cls(copy.deepcopy(base), spec["rank"], spec["alpha"]), "LoRAConv2d(...)", spec
    )
    check_shapes(layer, conv_shapes(spec), CONV_HINTS, spec)
    assert torch.count_nonzero(layer.lora_B) == 0, explain("lora_B must start at zero", drawn=spec)
    assert torch.count_nonzero(layer.lora_A) == layer.lora_A.numel(), explain(
        "lora_A must start random (Kaiming-uniform)", drawn=spec
    )
    x = conv_input(spec)
    with torch.no_grad():
        out = call_learner(lambda: layer(x), "forward", spec, CONV_ARGS)
        assert_matches(out, base(x), what="the output at init equals the base's", drawn=spec)


@settings(max_examples=25, deadline=None)
@given(spec=conv_specs())
@example(spec=CONV)
@learner_code()
def test_conv_forward_and_gradients_match_peft_zoo(impl, spec) -> None:
    mine, lib = conv_pair(impl, spec)
    x = conv_input(spec)
    out = call_learner(lambda: mine(x), "forward", spec, CONV_ARGS)
    expected = lib(x)
    with torch.no_grad():
        bugs = conv_forward_bugs(lib, x)
    hint = CONV_ARGS if getattr(out, "shape", None) != expected.shape else None
    assert_matches(out, expected, what="forward vs peft_zoo's LoRAConv", drawn=spec, bugs=bugs, hint=hint)
    g = torch.randn(expected.shape, dtype=torch.float64)
    got = torch.autograd.grad((out * g).sum(), [mine.lora_A, mine.lora_B], allow_unused=True)
    want = torch.autograd.grad((expected * g).sum(), [lib.lora_A, lib.lora_B])
    for name, a, b in zip(("lora_A", "lora_B"), got, want, strict=True):
        assert a is not None, explain(f"{name} received no gradient", drawn=spec)
        assert_matches(a, b, what=f"gradient of {name}", drawn=spec)


@settings(max_examples=25, deadline=None)
@given(spec=conv_specs())
@example(spec=CONV)
@learner_code()
def test_conv_delta_weight_and_merge(impl, spec) -> None:
    mine, lib = conv_pair(impl, spec)
    x = conv_input(spec)
    with torch.no_grad():
        delta = call_learner(mine.delta_weight, "delta_weight()", spec)
        assert_matches(
            delta,
            lib.delta_weight(),
            what="delta_weight() (out, in, kh, kw)",
            drawn=spec,
            bugs=conv_delta_bugs(lib),
        )
        before = lib(x)
        call_learner(mine.merge, "merge()", spec)
        out = call_learner(lambda: mine(x), "forward after merge()", spec, CONV_ARGS)
        assert_matches(out, before, what="the merged layer's output equals the unmerged one", drawn=spec)
