"""Batched LoRA at model level: use_adapters routes one index tensor through unchanged model
code (TinyTransformer, Hugging Face BERT, torch.export), inject_batched_lora targets and
checkpoints, each sample checked against its own single-adapter LoRA model."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from torch import nn

from peft_zoo import (
    BatchedLoRALinear,
    InjectionError,
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
from peft_zoo.testing import assert_close, assert_model_unchanged, fingerprint

SYNC_FREE = ("bmm", "bag", "dense")


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
