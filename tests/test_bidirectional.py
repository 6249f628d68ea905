"""The bidirectional transformer the sharing tests run on (peft_zoo.models.bidirectional): padding
masks and rotary position embeddings (RoPE) behave as documented."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sharing_helpers import build, randomise_lora, single_thread

from peft_zoo.models import apply_rope, rope_tables
from peft_zoo.testing import assert_close


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is faster, and far faster on a busy machine."""
    yield from single_thread()


# ----------------------------------------------------------------------------- padding and RoPE


@settings(max_examples=15, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 10), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
    share=st.booleans(),
)
def test_kept_positions_ignore_what_the_masked_positions_hold(
    lengths: list[int], seed: int, share: bool
) -> None:
    model = build(share_main_matrices=share, use_lora_attn=True, n_classes=2).eval()
    randomise_lora(model)
    T = 10
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 20, (len(lengths), T), generator=g)
    mask = (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).long()  # 1 keep, 0 masked
    other = torch.where(mask.bool(), idx, torch.randint(0, 20, idx.shape, generator=g))
    keep = mask.bool()
    a, b = model(idx, mask), model(other, mask)
    assert_close(a[keep], b[keep], what="logits at kept positions after changing masked tokens")
    assert_close(model.classify(idx, mask), model.classify(other, mask), what="pooled class logits")
    for row, n in enumerate(lengths):  # padding = the sequence alone, truncated
        alone = model(idx[row : row + 1, :n])
        assert_close(a[row, :n], alone[0], what=f"row {row} padded to {T} vs alone with length {n}")
    if any(n < T for n in lengths) and not torch.equal(idx, other):
        assert not torch.allclose(model(idx)[keep], model(other)[keep]), "without a mask, padding must matter"


def test_mask_semantics_one_keeps_zero_masks_and_a_fully_masked_row_is_finite() -> None:
    model = build(n_classes=3).eval()
    torch.manual_seed(0)
    idx = torch.randint(0, 20, (2, 6))
    ones = torch.ones(2, 6, dtype=torch.long)
    assert_close(model(idx, ones), model(idx), what="an all-ones mask equals no mask")
    mask = ones.clone()
    mask[1] = 0  # row 1 has no real token
    out, cls = model(idx, mask), model.classify(idx, mask)
    assert torch.isfinite(out).all() and torch.isfinite(cls).all()
    assert_close(out[0], model(idx[:1])[0], what="row 0 is unaffected by row 1 being fully masked")
    assert_close(cls[1], model.cls_head.bias, what="fully masked row: pooled vector 0, logits = head bias")
    # Masked positions can still read the kept ones (keys are masked, not queries), and bool works too.
    assert_close(model(idx, mask.bool()), out, what="bool mask vs 0/1 mask")
    for bad, problem in ((torch.full((2, 6), 2), "only 1"), (torch.ones(2, 5), "shape")):
        with pytest.raises(ValueError, match=problem):
            model(idx, bad)


def test_attention_is_bidirectional() -> None:
    model = build().eval()
    torch.manual_seed(1)
    idx = torch.randint(0, 20, (1, 8))
    changed = idx.clone()
    changed[0, -1] = (idx[0, -1] + 1) % 20
    assert not torch.allclose(model(idx)[0, 0], model(changed)[0, 0]), "position 0 must see the last token"


@settings(max_examples=20, deadline=None)
@given(half=st.integers(1, 6), T=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_rope_is_a_complex_rotation_by_position(half: int, T: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, T, 2 * half, generator=g, dtype=torch.float64)
    cos, sin = rope_tables(T, 2 * half)
    got = apply_rope(x, cos.double(), sin.double())
    theta = 10000.0 ** (-2 * torch.arange(half, dtype=torch.float64) / (2 * half))
    angle = torch.arange(T, dtype=torch.float64)[:, None] * theta  # m * theta_i
    z = torch.complex(x[..., :half], x[..., half:]) * torch.polar(torch.ones_like(angle), angle)
    assert_close(
        got, torch.cat((z.real, z.imag), dim=-1), what="RoPE vs z * exp(i m theta)", rtol=1e-5, atol=1e-6
    )
    assert_close(got.norm(dim=-1), x.norm(dim=-1), what="RoPE preserves norms", rtol=1e-6, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(m=st.integers(0, 20), n=st.integers(0, 20), shift=st.integers(0, 10), seed=st.integers(0, 2**16))
def test_rope_scores_depend_only_on_the_position_difference(m: int, n: int, shift: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 8, generator=g, dtype=torch.float64)
    cos, sin = (t.double() for t in rope_tables(32, 8))

    def rotated(v: torch.Tensor, pos: int) -> torch.Tensor:
        return apply_rope(v.view(1, 1, 1, 8), cos[pos : pos + 1], sin[pos : pos + 1]).flatten()

    score = rotated(q, m) @ rotated(k, n)
    shifted = rotated(q, m + shift) @ rotated(k, n + shift)
    assert math.isclose(score.item(), shifted.item(), rel_tol=1e-6, abs_tol=1e-6)
    if m != n:  # and the score does depend on the difference
        other = rotated(q, m) @ rotated(k, m)
        assert not math.isclose(score.item(), other.item(), rel_tol=1e-9, abs_tol=1e-9)
