"""Shared big matrices with per-layer LoRA (peft_zoo.sharing) on the bidirectional transformer.

What must hold: block i's big matrices *are* block 0's (one Parameter, seen once by an
optimizer, its gradient the sum over layers); LayerNorms and LoRA stay per block; parameter
counts follow the analytic formula; a fresh LoRA model equals its base; padding and RoPE
behave as documented; a shared + LoRA model learns.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from peft_zoo.lora import LoRALinear
from peft_zoo.models import (
    BidirectionalBlock,
    BidirectionalTransformer,
    BidirectionalTransformerConfig,
    apply_rope,
    rope_tables,
)
from peft_zoo.sharing import (
    MAIN_MATRICES,
    main_linear,
    share_main_matrices,
    shared_parameters,
    unique_parameter_count,
)
from peft_zoo.testing import assert_close, assert_model_unchanged, fingerprint

LAYER_NORMS = ("ln_1", "ln_2")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is faster, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(**kw) -> BidirectionalTransformerConfig:
    base = dict(vocab_size=20, max_len=16, n_embd=16, n_head=2, n_layer=3, lora_rank=2, lora_alpha=4.0)
    return BidirectionalTransformerConfig(**{**base, **kw})


def build(seed: int = 0, dtype: torch.dtype = torch.float32, **kw) -> BidirectionalTransformer:
    torch.manual_seed(seed)
    return BidirectionalTransformer(config(**kw)).to(dtype)


def randomise_lora(model: nn.Module, seed: int = 1) -> None:
    """Give every LoRA B a nonzero value, so the per-layer adapters actually differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g, dtype=m.lora_B.dtype) * 0.1)


def lin(block: nn.Module, name: str) -> nn.Module:
    return main_linear(block.get_submodule(name))


# ----------------------------------------------------------------------------- aliasing


@pytest.mark.parametrize("lora", [False, True], ids=["plain", "lora"])
def test_blocks_alias_block_0s_big_matrices_and_keep_their_own_norms_and_lora(lora: bool) -> None:
    model = build(share_main_matrices=True, use_lora_attn=lora, use_lora_mlp=lora, n_layer=4)
    first = model.blocks[0]
    for i, block in enumerate(model.blocks[1:], start=1):
        for name in MAIN_MATRICES:
            for attr in ("weight", "bias"):
                mine, theirs = getattr(lin(block, name), attr), getattr(lin(first, name), attr)
                assert mine is theirs, f"block {i} {name}.{attr} is not block 0's tensor"
                assert mine.data_ptr() == theirs.data_ptr()
            if lora:
                wrapper, wrapper0 = block.get_submodule(name), first.get_submodule(name)
                assert wrapper is not wrapper0
                for p in ("lora_A", "lora_B"):
                    assert getattr(wrapper, p).data_ptr() != getattr(wrapper0, p).data_ptr()
        for norm in LAYER_NORMS:
            assert getattr(block, norm).weight.data_ptr() != getattr(first, norm).weight.data_ptr()
            assert getattr(block, norm).bias is not getattr(first, norm).bias

    params = list(model.parameters())
    assert len({id(p) for p in params}) == len(params)
    for name in MAIN_MATRICES:
        shared = lin(first, name).weight
        assert sum(p is shared for p in params) == 1
    opt = torch.optim.AdamW(model.parameters())
    in_opt = [p for group in opt.param_groups for p in group["params"]]
    assert len({id(p) for p in in_opt}) == len(in_opt) == len(params)
    assert sum(p.numel() for p in in_opt) == unique_parameter_count(model)

    report = shared_parameters(model)
    base = ".base" if lora else ""  # a LoRA layer holds the big matrix as its frozen `base`
    for name in MAIN_MATRICES:
        for attr in ("weight", "bias"):
            uses = tuple(f"blocks.{i}.{name}{base}.{attr}" for i in range(4))
            assert report[uses[0]] == uses
    # 8 big tensors shared by the 4 blocks, plus the tied embedding / token head.
    assert len(report) == 9 and ("wte.weight", "lm_head.weight") in report.values()
    assert shared_parameters(build(n_layer=4, tie_weights=False)) == {}


def test_returns_the_shared_tensors_and_is_idempotent() -> None:
    blocks = build(n_layer=3, use_lora_mlp=True).blocks
    shared = share_main_matrices(blocks)
    assert set(shared) == {f"{n}.{a}" for n in MAIN_MATRICES for a in ("weight", "bias")}
    assert shared["mlp.c_fc.weight"] is blocks[0].mlp.c_fc.base.weight
    before = fingerprint(blocks)
    ids = [id(p) for p in blocks.parameters()]
    share_main_matrices(blocks)
    assert_model_unchanged(blocks, before, what="sharing a second time")
    assert [id(p) for p in blocks.parameters()] == ids


def test_only_the_named_layers_are_shared() -> None:
    blocks = build(n_layer=3, use_lora_attn=True).blocks
    share_main_matrices(blocks, ["attn.c_proj", "mlp.c_fc"])
    for name in MAIN_MATRICES:
        aliased = lin(blocks[2], name).weight is lin(blocks[0], name).weight
        assert aliased == (name in ("attn.c_proj", "mlp.c_fc")), name
    share_main_matrices(blocks, "attn.c_attn")  # a lone name is one name, not its characters
    assert blocks[1].attn.c_attn.base.weight is blocks[0].attn.c_attn.base.weight


def test_gradient_of_a_shared_matrix_is_the_sum_over_layers() -> None:
    kw = dict(use_lora_attn=True, use_lora_mlp=True, n_layer=3, dtype=torch.float64)
    shared = build(share_main_matrices=True, **kw)
    randomise_lora(shared)
    unshared = build(seed=5, **kw)
    unshared.load_state_dict(shared.state_dict())  # every block gets block 0's big matrices
    assert shared_parameters(unshared) == {"wte.weight": ("wte.weight", "lm_head.weight")}

    torch.manual_seed(3)
    idx = torch.randint(0, 20, (3, 7))
    mask = torch.ones(3, 7)
    mask[1, 5:] = 0
    target = torch.randint(0, 20, (3, 7))
    outs = []
    for model in (shared, unshared):
        logits = model(idx, mask)
        F.cross_entropy(logits.flatten(0, 1), target.flatten()).backward()
        outs.append(logits.detach())
    assert_close(outs[0], outs[1], what="shared vs unshared-with-copied-weights logits")

    for name in MAIN_MATRICES:
        for attr in ("weight", "bias"):
            got = getattr(lin(shared.blocks[0], name), attr).grad
            per_layer = [getattr(lin(b, name), attr).grad for b in unshared.blocks]
            assert all(g is not None and g.abs().sum() > 0 for g in per_layer)
            assert_close(got, sum(per_layer), what=f"{name}.{attr}: shared grad vs sum of per-layer grads")
            assert not torch.allclose(got, per_layer[0]), "the sum must differ from block 0's own gradient"
    # Everything per block gets exactly its own gradient.
    own = dict(unshared.named_parameters())
    big = {id(p) for p in shared.main_parameters()}
    for n, p in shared.named_parameters():
        if id(p) not in big:
            assert_close(p.grad, own[n].grad, what=f"gradient of per-block tensor {n}")


# ----------------------------------------------------------------------------- counting


def expected_count(c: BidirectionalTransformerConfig) -> int:
    """Analytic parameter count: big matrices once when shared, n_layer times otherwise."""
    C, L, r, b = c.n_embd, c.n_layer, c.lora_rank, int(c.bias)
    # c_attn C x 3C, attn c_proj C x C, c_fc C x 4C, mlp c_proj 4C x C (+ biases 3C + C + 4C + C)
    big = 12 * C * C + b * 9 * C
    norms = 2 * (C + b * C)  # ln_1 and ln_2 of one block
    # LoRA r (in + out) per adapted layer: attention (C + 3C) + (C + C), MLP (C + 4C) + (4C + C)
    lora = c.use_lora_attn * r * 6 * C + c.use_lora_mlp * r * 10 * C
    blocks = (1 if c.share_main_matrices else L) * big + L * (norms + lora)
    head = 0 if c.tie_weights else c.vocab_size * C
    cls = c.n_classes * (C + 1)
    return c.vocab_size * C + blocks + (C + b * C) + head + cls


@pytest.mark.parametrize("share", [False, True], ids=["unshared", "shared"])
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"use_lora_attn": True},
        {"use_lora_mlp": True, "bias": False},
        {"use_lora_attn": True, "use_lora_mlp": True, "tie_weights": False, "n_classes": 3, "n_layer": 5},
        {"use_lora_attn": True, "use_lora_mlp": True, "lora_rank": 5, "n_embd": 24, "n_head": 3},
    ],
)
def test_parameter_count_matches_the_formula(share: bool, kw: dict) -> None:
    model = build(share_main_matrices=share, **kw)
    assert unique_parameter_count(model) == expected_count(model.config)


def test_sharing_saves_n_layer_minus_one_copies_and_lora_trains_alone_when_frozen() -> None:
    kw = dict(use_lora_attn=True, use_lora_mlp=True, n_layer=4)
    full, shared = build(**kw), build(share_main_matrices=True, **kw)
    C = 16
    assert unique_parameter_count(full) - unique_parameter_count(shared) == 3 * (12 * C * C + 9 * C)
    # Trained from scratch by default: the (shared) big matrices require grad despite LoRALinear.
    assert all(p.requires_grad for p in shared.main_parameters())
    assert len(shared.main_parameters()) == 8 and len(full.main_parameters()) == 32
    shared.freeze_main_matrices()
    frozen = build(share_main_matrices=True, train_main_matrices=False, **kw)
    for model in (shared, frozen):
        trainable = unique_parameter_count(model, trainable_only=True)
        assert trainable == unique_parameter_count(model) - (12 * C * C + 9 * C)


# ----------------------------------------------------------------------------- init equals base


@pytest.mark.parametrize("share", [False, True], ids=["unshared", "shared"])
def test_a_fresh_lora_model_equals_the_model_without_lora(share: bool) -> None:
    plain = build(seed=7, share_main_matrices=share)
    lora = build(seed=7, share_main_matrices=share, use_lora_attn=True, use_lora_mlp=True)
    for b0, b1 in zip(plain.blocks, lora.blocks, strict=True):
        for name in MAIN_MATRICES:
            assert torch.equal(lin(b0, name).weight, lin(b1, name).weight), (
                "base weights must not depend on LoRA"
            )
    torch.manual_seed(0)
    idx = torch.randint(0, 20, (2, 9))
    assert_close(lora(idx), plain(idx), what="fresh LoRA model (B = 0) vs the same model without LoRA")
    randomise_lora(lora)
    assert not torch.allclose(lora(idx), plain(idx)), "a nonzero B must change the output"


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


# ----------------------------------------------------------------------------- errors change nothing


def test_bad_calls_raise_and_change_nothing() -> None:
    blocks = build(use_lora_attn=True).blocks
    before = fingerprint(blocks)
    with pytest.raises(ValueError, match="at least 2 blocks"):
        share_main_matrices(blocks[:1])
    with pytest.raises(ValueError, match=r"'attn\.c_atn'.*did you mean \['attn\.c_attn'"):
        share_main_matrices(blocks, ["mlp.c_fc", "attn.c_atn"])
    with pytest.raises(TypeError, match=r"ln_1.*LayerNorm"):
        share_main_matrices(blocks, ["mlp.c_fc", "ln_1"])
    with pytest.raises(ValueError, match="more than once"):
        share_main_matrices(blocks, ["mlp.c_fc", "mlp.c_fc"])
    with pytest.raises(ValueError, match="empty"):
        share_main_matrices(blocks, [])
    with pytest.raises(TypeError, match="ModuleList"):
        share_main_matrices(blocks[0])
    assert_model_unchanged(blocks, before, what="a failed share_main_matrices")

    wide = nn.ModuleList([*blocks, BidirectionalBlock(config(n_embd=20))])  # last block mismatches
    wider = fingerprint(wide)
    with pytest.raises(
        ValueError, match=r"attn\.c_attn\.weight differs between block 0 .*\(48, 16\).*block 3"
    ):
        share_main_matrices(wide)
    no_bias = nn.ModuleList([*blocks, BidirectionalBlock(config(bias=False))])
    with pytest.raises(ValueError, match="bias differs"):
        share_main_matrices(no_bias)
    assert_model_unchanged(wide, wider, what="sharing blocks whose last one has other shapes")
    assert blocks[1].mlp.c_fc.weight is not blocks[0].mlp.c_fc.weight

    blocks[2].attn.c_attn.merge()  # its base now holds W0 + B A, not the matrix to share
    merged = fingerprint(blocks)
    with pytest.raises(ValueError, match="merged"):
        share_main_matrices(blocks)
    assert_model_unchanged(blocks, merged, what="refusing a merged adapter")


@pytest.mark.parametrize(
    "kw, problem",
    [
        ({"n_embd": 18, "n_head": 4}, "heads of even size"),
        ({"n_embd": 6, "n_head": 2}, "heads of even size"),
        ({"use_lora_mlp": True, "lora_rank": 0}, "lora_rank"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_configs_are_rejected(kw: dict, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        BidirectionalTransformer(config(**kw))


# ----------------------------------------------------------------------------- it learns


def periodic_batch(g: torch.Generator, batch: int, T: int = 12, vocab: int = 8):
    """Sequences that repeat a random pattern of period 2 or 3, 25% of tokens hidden behind the
    mask id ``vocab``: recovering one needs the token a period away (context)."""
    period = torch.randint(2, 4, (batch, 1), generator=g)
    pattern = torch.randint(0, vocab, (batch, 3), generator=g)
    seq = torch.gather(pattern, 1, torch.arange(T)[None] % period)  # (B, T)
    hide = torch.rand(batch, T, generator=g) < 0.25
    return seq.masked_fill(hide, vocab), seq, hide


def test_a_shared_lora_model_learns_a_task_that_needs_context() -> None:
    model = build(
        vocab_size=9, n_embd=32, n_layer=2, share_main_matrices=True, use_lora_attn=True, use_lora_mlp=True
    )
    lora_B = model.blocks[1].mlp.c_fc.lora_B
    shared = copy.deepcopy(model.blocks[0].attn.c_attn.base.weight)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(120):
        inp, seq, hide = periodic_batch(g, 32)
        loss = F.cross_entropy(model(inp)[hide], seq[hide])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, f"loss fell only from {first:.3f} to {last:.3f}"
    inp, seq, hide = periodic_batch(g, 256)
    with torch.no_grad():
        accuracy = (model(inp)[hide].argmax(-1) == seq[hide]).float().mean().item()
    assert accuracy > 3 / 8, f"masked-token accuracy {accuracy:.2f} is near chance (1/8)"
    assert lora_B.abs().sum() > 0 and not torch.equal(shared, model.blocks[0].attn.c_attn.base.weight)
    assert model.blocks[1].attn.c_attn.base.weight is model.blocks[0].attn.c_attn.base.weight


def test_gpt2_blocks_from_transformers_share_the_same_way() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=3, n_embd=16, n_head=2, vocab_size=30, n_positions=16)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    idx = torch.randint(0, 30, (1, 5))
    before = unique_parameter_count(model)
    share_main_matrices(model.transformer.h)  # GPT-2 uses the same names (Conv1D layers)
    C = 16
    assert before - unique_parameter_count(model) == 2 * (12 * C * C + 9 * C)
    assert model.transformer.h[2].mlp.c_fc.weight is model.transformer.h[0].mlp.c_fc.weight
    assert torch.isfinite(model(idx).logits).all()


def test_merging_into_a_shared_weight_is_refused_and_changes_nothing() -> None:
    """merge() on block l would write B_l A_l into the tensor every block reads."""
    from peft_zoo import DoRALinear, IA3Linear, merge_adapters

    model = build(share_main_matrices=True, use_lora_attn=True, use_lora_mlp=True)
    randomise_lora(model)
    model.eval()
    before = fingerprint(model)
    with pytest.raises(RuntimeError, match="shared across blocks"):
        merge_adapters(model)
    assert_model_unchanged(model, before, what="a refused merge of a shared-weight model")
    assert not any(getattr(m, "merged", False) for m in model.modules())

    # The flag sits on the shared linear itself, so adapters added after sharing refuse too.
    plain = build(share_main_matrices=True)
    for wrap in (lambda lin: DoRALinear(lin, 2), IA3Linear):
        layer = wrap(plain.blocks[1].mlp.c_fc)
        with pytest.raises(RuntimeError, match="shared across blocks"):
            layer.merge()
        assert not layer.merged
    # An unshared model merges as usual (the guard is not a blanket refusal).
    unshared = build(use_lora_attn=True)
    assert merge_adapters(unshared) > 0
