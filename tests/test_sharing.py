"""Shared big matrices with per-layer LoRA (peft_zoo.sharing) on the bidirectional transformer.

What must hold: block i's big matrices *are* block 0's (one Parameter, seen once by an
optimizer, its gradient the sum over layers); LayerNorms and LoRA stay per block; parameter
counts follow the analytic formula; a fresh LoRA model equals its base; a shared + LoRA model
learns. (The transformer's own padding and RoPE: test_bidirectional.py.)
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from sharing_helpers import build, config, randomise_lora, single_thread
from torch import nn

from peft_zoo.models import BidirectionalBlock, BidirectionalTransformer, BidirectionalTransformerConfig
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
    yield from single_thread()


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
