"""BatchedLoRALinear: every sample's output and gradients equal running it alone through a
LoRALinear holding its adapter, for every strategy; bad input is refused before anything
changes. use_adapters and inject_batched_lora on whole models: test_batched_model.py."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from peft_zoo import (
    BatchedLoRALinear,
    LoRALinear,
)
from peft_zoo.serving.batched import STRATEGIES
from peft_zoo.testing import assert_close, assert_model_unchanged, fingerprint


@st.composite
def batched_cases(draw: st.DrawFn) -> dict:
    """A batched layer whose slots hold adapters of random rank <= r and random scale,
    plus an input and ids with -1 and repeats."""
    n = draw(st.integers(1, 5))
    r = draw(st.integers(1, 4))
    d_in, d_out = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    batch = draw(st.integers(1, 6))
    middle = draw(st.lists(st.integers(1, 3), min_size=0, max_size=2))  # x (B, *middle, in)
    ids = draw(st.lists(st.integers(-1, n - 1), min_size=batch, max_size=batch))
    slot_ranks = draw(st.lists(st.integers(1, r), min_size=n, max_size=n))
    alphas = draw(st.lists(st.floats(0.25, 8.0), min_size=n, max_size=n))
    seed = draw(st.integers(0, 2**16))
    return dict(
        n=n, r=r, d_in=d_in, d_out=d_out, middle=middle, ids=ids, ranks=slot_ranks, alphas=alphas, seed=seed
    )


def make_case(case: dict) -> tuple[BatchedLoRALinear, list[LoRALinear | None], torch.Tensor, torch.Tensor]:
    """The batched layer, one independent LoRALinear per slot (rank r_i, unpadded), x, ids."""
    g = torch.Generator().manual_seed(case["seed"])
    base = nn.Linear(case["d_in"], case["d_out"])
    with torch.no_grad():
        base.weight.copy_(torch.randn(base.weight.shape, generator=g))
        base.bias.copy_(torch.randn(base.bias.shape, generator=g))
    layer = BatchedLoRALinear(copy.deepcopy(base), case["n"], case["r"])
    singles = []
    for slot, (rank, alpha) in enumerate(zip(case["ranks"], case["alphas"], strict=True)):
        single = LoRALinear(copy.deepcopy(base), rank, alpha)
        with torch.no_grad():
            single.lora_A.copy_(torch.randn(single.lora_A.shape, generator=g))
            single.lora_B.copy_(torch.randn(single.lora_B.shape, generator=g))
        layer.set_slot(slot, single.lora_A.detach(), single.lora_B.detach(), single.scale)
        singles.append(single)
    x = torch.randn(len(case["ids"]), *case["middle"], case["d_in"], generator=g)
    return layer, singles, x, torch.tensor(case["ids"])


@settings(max_examples=40, deadline=None)
@given(case=batched_cases())
def test_each_sample_equals_its_own_lora_linear_forward_and_gradients(case: dict) -> None:
    layer, singles, x, ids = make_case(case)
    base = singles[0].base
    # Reference: each sample alone through the LoRALinear of its adapter (or the base).
    x_ref = x.clone().requires_grad_(True)
    rows = []
    for b, slot in enumerate(ids.tolist()):
        module = base if slot < 0 else singles[slot]
        rows.append(module(x_ref[b : b + 1]))
    want = torch.cat(rows)
    weights = torch.randn(want.shape, generator=torch.Generator().manual_seed(1))
    (want * weights).sum().backward()

    for strategy in STRATEGIES:
        layer.strategy = strategy
        layer.zero_grad()
        x_got = x.clone().requires_grad_(True)
        got = layer(x_got, ids)
        drawn = f"strategy={strategy}, ids={ids.tolist()}, x{tuple(x.shape)}, ranks={case['ranks']}, r={case['r']}"
        assert_close(got, want, what=f"forward ({drawn})")
        (got * weights).sum().backward()
        assert_close(x_got.grad, x_ref.grad, what=f"grad x ({drawn})")
        # ("loop" builds no graph to an adapter nobody uses: no gradient means zero.)
        grad_a = torch.zeros_like(layer.lora_A) if layer.lora_A.grad is None else layer.lora_A.grad
        grad_b = torch.zeros_like(layer.lora_B) if layer.lora_B.grad is None else layer.lora_B.grad
        for slot, single in enumerate(singles):
            rank = single.rank
            if slot in ids.tolist():
                assert_close(grad_a[slot, :rank], single.lora_A.grad, what=f"grad A[{slot}] ({drawn})")
                assert_close(grad_b[slot, :, :rank], single.lora_B.grad, what=f"grad B[{slot}] ({drawn})")
            else:  # an unused slot gets no gradient at all
                assert not grad_a[slot].any() and not grad_b[slot].any(), drawn
            # The zero padding beyond the adapter's rank stays out of the function and the gradient.
            assert not grad_a[slot, rank:].any() and not grad_b[slot, :, rank:].any()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_minus_one_rows_are_exactly_the_base_output(strategy: str) -> None:
    torch.manual_seed(0)
    layer = BatchedLoRALinear(nn.Linear(8, 6), num_adapters=3, rank=2, strategy=strategy)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(4, 5, 8)
    ids = torch.tensor([-1, 2, -1, 0])
    out = layer(x, ids)
    base = layer.base(x)
    assert torch.equal(out[[0, 2]], base[[0, 2]])
    assert not torch.allclose(out[[1, 3]], base[[1, 3]])


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("shape", [(0, 8), (0, 5, 8), (3, 0, 8), (0, 0, 8)], ids=str)
def test_an_empty_batch_gives_an_empty_output_like_lora_linear(strategy: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    layer = BatchedLoRALinear(nn.Linear(8, 6), num_adapters=3, rank=2, strategy=strategy)
    x = torch.randn(shape, requires_grad=True)
    out = layer(x, torch.zeros(shape[0], dtype=torch.long))
    expected = LoRALinear(nn.Linear(8, 6), 2)(x)
    assert out.shape == expected.shape == (*shape[:-1], 6)
    out.sum().backward()  # differentiable like any other output
    assert x.grad is not None and x.grad.shape == x.shape


def test_fresh_layer_equals_its_base_and_only_adapters_train() -> None:
    torch.manual_seed(0)
    base = nn.Linear(8, 5)
    layer = BatchedLoRALinear(base, num_adapters=4, rank=3)
    x = torch.randn(3, 8)
    assert torch.equal(layer(x, torch.tensor([0, 3, 1])), base(x))  # B = 0 in every slot
    assert not base.weight.requires_grad and not base.bias.requires_grad
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["lora_A", "lora_B"]
    assert layer.lora_A.shape == (4, 3, 8) and layer.lora_B.shape == (4, 5, 3)
    assert layer.lora_scale.shape == (4,) and torch.all(layer.lora_scale == 1.0)
    # A and B are stored as (N, in, r) and (N, r, out) rows, read in place by "bag".
    assert layer.lora_A.transpose(1, 2).is_contiguous() and layer.lora_B.transpose(1, 2).is_contiguous()


def test_training_a_mixed_batch_updates_only_the_slots_it_uses() -> None:
    torch.manual_seed(0)
    layer = BatchedLoRALinear(nn.Linear(6, 6), num_adapters=4, rank=2)
    opt = torch.optim.SGD([layer.lora_A, layer.lora_B], lr=0.1)
    a0, b0 = layer.lora_A.detach().clone(), layer.lora_B.detach().clone()
    w0 = layer.base.weight.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(5, 6), torch.tensor([1, 1, -1, 3, 1])).pow(2).mean().backward()
        opt.step()
    changed = [s for s in range(4) if not torch.equal(layer.lora_B[s], b0[s])]
    assert changed == [1, 3]
    assert torch.equal(layer.lora_A[[0, 2]], a0[[0, 2]])
    assert torch.equal(layer.base.weight, w0)
    assert layer.lora_B.transpose(1, 2).is_contiguous(), "the optimizer kept the row layout"


def test_strategy_auto_is_chosen_by_shape_only() -> None:
    small = BatchedLoRALinear(nn.Linear(4, 4), num_adapters=2, rank=8)
    big = BatchedLoRALinear(nn.Linear(4, 4), num_adapters=64, rank=8)
    assert small.resolve_strategy(1) == "dense"
    assert big.resolve_strategy(1) == "bag"
    assert big.resolve_strategy(1024) == "bmm"
    big.strategy = "loop"
    assert big.resolve_strategy(1) == "loop"


# ---------------------------------------------------------------------- bad input


def test_constructor_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rank must be > 0"):
        BatchedLoRALinear(nn.Linear(4, 4), 2, 0)
    with pytest.raises(ValueError, match="num_adapters must be > 0"):
        BatchedLoRALinear(nn.Linear(4, 4), 0, 2)
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        BatchedLoRALinear(nn.Conv1d(4, 4, 1), 2, 2)
    with pytest.raises(ValueError, match="strategy must be one of"):
        BatchedLoRALinear(nn.Linear(4, 4), 2, 2, strategy="fast")


def test_forward_rejects_bad_ids_and_shapes_clearly() -> None:
    layer = BatchedLoRALinear(nn.Linear(4, 3), num_adapters=2, rank=2)
    x = torch.randn(3, 4)
    with pytest.raises(IndexError, match=r"adapter id 2 out of range.*\[-1, 2\)"):
        layer(x, torch.tensor([0, 2, 1]))
    with pytest.raises(IndexError, match="adapter id -2"):
        layer(x, torch.tensor([0, -2, 1]))
    with pytest.raises(ValueError, match=r"shape \(batch,\)"):
        layer(x, torch.tensor([[0, 1, 1]]))
    with pytest.raises(TypeError, match="integer tensor"):
        layer(x, torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"batch=2.*got \(3, 4\)"):
        layer(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\(batch=3, \.\.\., 4\)"):
        layer(torch.randn(3, 5), torch.tensor([0, 1, 1]))
    with pytest.raises(RuntimeError, match="use_adapters"):
        layer(x)


def test_set_slot_checks_before_writing() -> None:
    layer = BatchedLoRALinear(nn.Linear(4, 3), num_adapters=2, rank=2)
    before = fingerprint(layer)
    with pytest.raises(ValueError, match="rank 3 exceeds"):
        layer.set_slot(0, torch.randn(3, 4), torch.randn(3, 3), 1.0)
    with pytest.raises(ValueError, match="shape mismatch"):
        layer.set_slot(0, torch.randn(2, 5), torch.randn(3, 2), 1.0)
    with pytest.raises(IndexError, match="slot 2 out of range"):
        layer.set_slot(2, torch.randn(2, 4), torch.randn(3, 2), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        layer.set_slot(1, torch.full((2, 4), float("nan")), torch.randn(3, 2), 1.0)
    assert_model_unchanged(layer, before, what="a refused set_slot")
