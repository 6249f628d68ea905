"""BatchedLoRALinear, use_adapters and inject_batched_lora: every sample's output and gradients
equal running it alone through a LoRALinear holding its adapter, for every strategy."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from peft_zoo import (
    BatchedLoRALinear,
    InjectionError,
    LoRALinear,
    Routing,
    batched_lora_layers,
    find_targets,
    inject_batched_lora,
    inject_lora,
    load_adapter,
    save_adapter,
    use_adapters,
)
from peft_zoo.models import TinyTransformer, TinyTransformerConfig
from peft_zoo.serving.batched import STRATEGIES
from peft_zoo.testing import assert_close, assert_model_unchanged, fingerprint

SYNC_FREE = ("bmm", "bag", "dense")


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


# ---------------------------------------------------------------------- model level


def tiny_model() -> TinyTransformer:
    torch.manual_seed(0)
    return TinyTransformer(TinyTransformerConfig(vocab_size=20, d_model=16, n_heads=2, n_layers=3, d_ff=32))


def per_sample_reference(base_model: nn.Module, batched: nn.Module, names: list[str], x, ids) -> torch.Tensor:
    """Each sample alone through a copy of the base model with LoRALinear holding its slot."""
    rows = []
    layers = batched_lora_layers(batched)
    for b, slot in enumerate(ids.tolist()):
        model = copy.deepcopy(base_model)
        if slot >= 0:
            inject_lora(model, names, layers[names[0]].rank)
            with torch.no_grad():
                for name in names:
                    model.get_submodule(name).lora_A.copy_(layers[name].lora_A[slot])
                    model.get_submodule(name).lora_B.copy_(layers[name].lora_B[slot])
        rows.append(model(x[b : b + 1]))
    return torch.cat(rows)


def randomize_adapters(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in batched_lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.5)


def test_use_adapters_routes_one_index_tensor_through_unchanged_model_code() -> None:
    base = tiny_model().eval()
    names = find_targets(base, ["q", "v", "fc1"])
    model, params = inject_batched_lora(copy.deepcopy(base), names, num_adapters=4, rank=2)
    assert len(params) == 2 * len(names)
    randomize_adapters(model)
    x = torch.randint(0, 20, (5, 7))
    ids = torch.tensor([3, -1, 0, 3, 2])
    with torch.no_grad(), use_adapters(model, ids) as route:
        out = model(x)
        assert isinstance(route, Routing)
    with torch.no_grad():
        want = per_sample_reference(base, model, names, x, ids)
    assert_close(out, want, what="TinyTransformer under use_adapters vs per-sample LoRALinear")
    with pytest.raises(RuntimeError, match="use_adapters"):
        model(x)  # the routing ends with the block


def test_use_adapters_nests_and_is_local_to_each_thread() -> None:
    layer = BatchedLoRALinear(nn.Linear(4, 4), num_adapters=3, rank=2)
    with torch.no_grad():
        layer.lora_B.normal_()
    model = nn.Sequential(layer)
    x = torch.randn(2, 4)
    expected = {i: layer(x, torch.tensor([i, i])) for i in range(3)}
    with use_adapters(model, torch.tensor([0, 0])):
        assert torch.equal(model(x), expected[0])
        with use_adapters(model, torch.tensor([2, 2])):
            assert torch.equal(model(x), expected[2])
        assert torch.equal(model(x), expected[0])

    results: dict[int, torch.Tensor] = {}
    barrier = threading.Barrier(2)

    def worker(i: int) -> None:
        with use_adapters(model, torch.tensor([i, i])):
            barrier.wait()  # both blocks are open at the same time
            results[i] = model(x)

    threads = [threading.Thread(target=worker, args=(i,)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.equal(results[1], expected[1]) and torch.equal(results[2], expected[2])


def test_use_adapters_needs_batched_layers_and_valid_ids() -> None:
    with (
        pytest.raises(ValueError, match="no BatchedLoRALinear"),
        use_adapters(nn.Sequential(nn.Linear(2, 2)), torch.tensor([0])),
    ):
        pass
    model = nn.Sequential(BatchedLoRALinear(nn.Linear(2, 2), 2, 1))
    with pytest.raises(IndexError, match="out of range"), use_adapters(model, torch.tensor([0, 5])):
        pass


def test_inject_batched_lora_is_all_or_nothing() -> None:
    model = tiny_model()
    before = fingerprint(model)
    with pytest.raises(InjectionError, match="did you mean"):
        inject_batched_lora(model, ["blocks.0.attn.branch.q", "blocks.0.attn.branch.qq"], 4, 2)
    assert_model_unchanged(model, before, what="a failed inject_batched_lora")
    with pytest.raises(ValueError, match="num_adapters must be > 0"):
        inject_batched_lora(model, ["blocks.0.attn.branch.q"], 0, 2)
    assert_model_unchanged(model, before, what="a failed inject_batched_lora")


def test_targeted_injection_by_layer_range_and_pattern() -> None:
    model = tiny_model()
    only_layer_1_2 = find_targets(
        model, ["q", "k", "v", "o"], layers_to_transform=[1, 2], layers_pattern="blocks"
    )
    assert only_layer_1_2 == [f"blocks.{i}.attn.branch.{p}" for i in (1, 2) for p in "qkvo"]
    everything_but_head = find_targets(model, "all-linear")
    assert "head" not in everything_but_head and len(everything_but_head) == 3 * 6
    inject_batched_lora(model, only_layer_1_2, 2, 2)
    assert sorted(batched_lora_layers(model)) == sorted(only_layer_1_2)


def test_checkpoint_round_trip_keeps_every_slot() -> None:
    model = tiny_model()
    names = find_targets(model, ["q", "v"])
    inject_batched_lora(model, names, 3, 2)
    randomize_adapters(model)
    other = tiny_model()
    inject_batched_lora(other, names, 3, 2)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        save_adapter(model, tmp)
        load_adapter(other, tmp)
    for name in names:
        assert torch.equal(other.get_submodule(name).lora_B, model.get_submodule(name).lora_B)
        assert other.get_submodule(name).lora_B.transpose(1, 2).is_contiguous()


def test_float64_copy_keeps_layout_and_matches() -> None:
    torch.manual_seed(0)
    layer = BatchedLoRALinear(nn.Linear(5, 4), 3, 2)
    with torch.no_grad():
        layer.lora_B.normal_()
    x, ids = torch.randn(3, 5), torch.tensor([2, 0, -1])
    double = copy.deepcopy(layer).double()
    assert double.lora_B.dtype == torch.float64 and double.lora_B.transpose(1, 2).is_contiguous()
    assert_close(double(x.double(), ids).float(), layer(x, ids), what="float64 copy")


# ---------------------------------------------------------------------- export


class WithIds(nn.Module):
    """Takes the adapter ids as a forward input, so an exported program is reusable."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        with use_adapters(self.model, ids):
            return self.model(x)


@pytest.mark.parametrize("strategy", SYNC_FREE)
def test_torch_export_with_ids_as_input_matches_eager(strategy: str) -> None:
    model = tiny_model().eval()
    names = find_targets(model, ["q", "k", "v", "o", "fc1", "fc2"])
    inject_batched_lora(model, names, 4, 2, strategy=strategy)
    randomize_adapters(model)
    wrapped = WithIds(model).eval()
    x = torch.randint(0, 20, (4, 6))
    example_ids = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        exported = torch.export.export(wrapped, (x, example_ids))
    # A different assignment, with -1 and repeats, through the same exported program.
    for ids in (torch.tensor([3, -1, 3, 0]), torch.tensor([-1, -1, 1, 2])):
        with torch.no_grad():
            assert_close(
                exported.module()(x, ids), wrapped(x, ids), what=f"exported {strategy}, ids={ids.tolist()}"
            )
    ops = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    # No host synchronisation or data-dependent shapes in the graph.
    assert not any(bad in op for op in ops for bad in ("nonzero", "unique", "_local_scalar_dense")), ops


def test_huggingface_bert_forward_runs_unchanged_inside_use_adapters() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=50
    )
    torch.manual_seed(0)
    base = transformers.BertModel(config, add_pooling_layer=False).eval()
    names = find_targets(
        base, ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
    )
    assert len(names) == 12
    model, _ = inject_batched_lora(copy.deepcopy(base), names, 3, 4)
    randomize_adapters(model)
    x = torch.randint(0, 50, (4, 5))
    ids = torch.tensor([2, 0, -1, 2])

    class Hidden(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, t):
            return self.m(input_ids=t).last_hidden_state

    with torch.no_grad(), use_adapters(model, ids):
        out = model(input_ids=x).last_hidden_state
    with torch.no_grad():
        want = per_sample_reference(Hidden(base), Hidden(model), [f"m.{n}" for n in names], x, ids)
    assert_close(out, want, what="BERT under use_adapters vs per-sample LoRALinear")


def test_only_layers_10_to_19_of_a_20_layer_bert_get_batched_attention() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        hidden_size=8, num_hidden_layers=20, num_attention_heads=2, intermediate_size=16, vocab_size=30
    )
    model = transformers.BertForMaskedLM(config)
    attention = find_targets(model, ["query", "key", "value"], layers_to_transform=range(10, 20))
    assert len(attention) == 30 and all(10 <= int(n.split(".")[3]) <= 19 for n in attention)
    everything = find_targets(model, "all-linear")
    assert "cls.predictions.decoder" not in everything and len(everything) == 20 * 6 + 1  # + transform.dense
    inject_batched_lora(model, attention, num_adapters=2, rank=2)
    with torch.no_grad(), use_adapters(model, torch.tensor([1, -1])):
        assert model(input_ids=torch.randint(0, 30, (2, 4))).logits.shape == (2, 4, 30)
