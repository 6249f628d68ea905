"""A table of small models × PEFT methods, crossed with the properties every method must keep.

Modelled on Hugging Face PEFT's test matrix: init equals base, only adapter weights get
gradients and change, the injector returns exactly the new parameters, merge equals
unmerged, save/load round-trips, a tiny batch can be overfit, and two adapters on one
base compute different functions.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import peft_zoo as pz
from peft_zoo.models import TinyMLP, TinyTransformerBlock
from peft_zoo.testing import assert_close, changed_tensors, leading_shapes, seeds, snapshot


@dataclass(frozen=True)
class ModelCase:
    name: str
    build: Callable[[], nn.Module]
    input_shape: Callable[[tuple[int, ...]], tuple[int, ...]]  # drawn leading dims -> input shape
    linears: tuple[str, ...]  # Linear layers to target by name
    residual_unit: str  # a Residual(x + branch(x)) unit of width d_model
    d_model: int


MODELS = [
    ModelCase(
        "mlp",
        lambda: TinyMLP(8, 16, 4),
        lambda lead: (*lead, 8),
        ("encoder.0", "encoder.2.branch.fc1", "head"),
        "encoder.2",
        16,
    ),
    ModelCase(
        "transformer_block",
        lambda: TinyTransformerBlock(16, 2, 32),
        lambda lead: (math.prod(lead), 5, 16),
        ("attn.branch.q", "attn.branch.v", "ffn.branch.fc1", "ffn.branch.fc2"),
        "ffn",
        16,
    ),
]


def _serial_adapter(model: nn.Module, case: ModelCase) -> tuple[nn.Module, list[nn.Parameter]]:
    unit = model.get_submodule(case.residual_unit)
    adapter = pz.BottleneckAdapter(case.d_model, 4)
    parent_name, _, attr = case.residual_unit.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, pz.AdapterBlock(unit.branch, adapter))
    pz.mark_only_adapters_trainable(model)
    return model, list(adapter.parameters())


def _parallel_adapter(model: nn.Module, case: ModelCase) -> tuple[nn.Module, list[nn.Parameter]]:
    unit = model.get_submodule(case.residual_unit)
    adapter = pz.BottleneckAdapter(case.d_model, 4)
    unit.branch = pz.ParallelAdapterBlock(unit.branch, adapter)
    pz.mark_only_adapters_trainable(model)
    return model, list(adapter.parameters())


def _with_freeze(inject: Callable[[nn.Module, ModelCase], tuple[nn.Module, list[nn.Parameter]]]):
    def apply(model: nn.Module, case: ModelCase) -> tuple[nn.Module, list[nn.Parameter]]:
        model, params = inject(model, case)
        pz.mark_only_adapters_trainable(model)
        return model, params

    return apply


METHODS: dict[str, Callable[[nn.Module, ModelCase], tuple[nn.Module, list[nn.Parameter]]]] = {
    "lora": _with_freeze(lambda m, c: pz.inject_lora(m, c.linears, rank=4, alpha=8)),
    "lora_rslora_dropout": _with_freeze(
        lambda m, c: pz.inject_lora(m, c.linears, rank=4, alpha=8, rslora=True, dropout=0.1)
    ),
    "lora_recursive": _with_freeze(lambda m, c: pz.inject_lora_recursive(m, rank=2)),
    "ia3": _with_freeze(lambda m, c: pz.inject_ia3(m, c.linears)),
    "serial_adapter": _serial_adapter,
    "parallel_adapter": _parallel_adapter,
    # The methods of issue 15, through adapt_model and their PEFT-named configs.
    "loha": lambda m, c: pz.adapt_model(m, pz.LoHaConfig(r=2, alpha=4, target_modules=list(c.linears))),
    "lokr": lambda m, c: pz.adapt_model(
        m, pz.LoKrConfig(r=2, alpha=4, decompose_both=True, target_modules=list(c.linears))
    ),
    "vera": lambda m, c: pz.adapt_model(m, pz.VeraConfig(r=4, target_modules=list(c.linears))),
    "oft": lambda m, c: pz.adapt_model(m, pz.OFTConfig(oft_block_size=4, target_modules=list(c.linears))),
    "boft": lambda m, c: pz.adapt_model(
        m, pz.BOFTConfig(boft_block_size=2, boft_n_butterfly_factor=2, target_modules=list(c.linears))
    ),
    "adalora": lambda m, c: pz.adapt_model(
        m, pz.AdaLoraConfig(init_r=4, target_r=2, total_step=10, target_modules=list(c.linears))
    ),
}
MERGEABLE = {
    "lora",
    "lora_rslora_dropout",
    "lora_recursive",
    "ia3",
    "loha",
    "lokr",
    "vera",
    "oft",
    "boft",
    "adalora",
}
CASES = [(m, k) for m in MODELS for k in METHODS]
IDS = [f"{m.name}-{k}" for m, k in CASES]


def _adapted(case: ModelCase, method: str, seed: int = 0):
    """Return ``(base, adapted, params)``: an untouched copy of the base and the adapted model."""
    torch.manual_seed(seed)
    base = case.build()
    model, params = METHODS[method](copy.deepcopy(base), case)
    return base, model, params


def _randomize_adapters(model: nn.Module, seed: int, std: float = 0.2) -> None:
    """Add noise to every adapter tensor, so none is trivial (LoRA B != 0, IA3 scale != 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in pz.adapter_named_parameters(model):
            p.add_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _x(case: ModelCase, lead: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(case.input_shape(lead), generator=g)


def _train(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, steps: int, lr: float = 1e-2
) -> list[float]:
    # All parameters go to the optimizer on purpose: frozen ones must stay put anyway.
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    losses = []
    model.train()
    for _ in range(steps):
        loss = F.mse_loss(model(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize(("case", "method"), CASES, ids=IDS)
@settings(max_examples=8, deadline=None)
@given(seed=seeds(), lead=leading_shapes(max_dims=2, max_size=3))
def test_init_equals_base(case: ModelCase, method: str, seed: int, lead: tuple[int, ...]) -> None:
    base, model, _ = _adapted(case, method, seed % 1000)
    base.eval()
    model.eval()
    x = _x(case, lead, seed)
    with torch.no_grad():
        expected, got = base(x), model(x)
    assert torch.equal(got, expected), (
        f"{method} on {case.name}: adapted output differs from the base at initialisation "
        f"(max |diff| {(got - expected).abs().max().item():.3g}); the zero-initialised part "
        "(LoRA B, adapter up_proj) or the IA3 ones-init is wrong"
    )


@pytest.mark.parametrize(("case", "method"), CASES, ids=IDS)
def test_returned_params_are_exactly_the_new_trainable_ones(case: ModelCase, method: str) -> None:
    base, model, params = _adapted(case, method)
    ids = [id(p) for p in params]
    assert len(ids) == len(set(ids)), "duplicate parameters in the returned list"
    base_ids = {id(p) for p in model.parameters()} - {id(p) for _, p in pz.adapter_named_parameters(model)}
    assert not base_ids & set(ids), "the returned list contains base (non-adapter) parameters"
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(ids) == trainable, "returned parameters != the model's trainable parameters"
    new = {id(p) for p in model.parameters()} - {id(p) for p in copy.deepcopy(base).parameters()}
    assert set(ids) <= new and len(params) > 0


@pytest.mark.parametrize(("case", "method"), CASES, ids=IDS)
def test_only_adapter_parameters_get_gradients_and_change(case: ModelCase, method: str) -> None:
    _, model, params = _adapted(case, method)
    _randomize_adapters(model, 1)  # so every adapter tensor receives a nonzero gradient
    x = _x(case, (4,), 2)
    target = torch.randn_like(model(x))
    before = snapshot(model)
    model(x).pow(2).sum().backward()
    adapter_ids = {id(p) for p in params}
    for name, p in model.named_parameters():
        if id(p) in adapter_ids:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"adapter tensor {name} got no gradient"
        else:
            assert p.grad is None, f"frozen tensor {name} received a gradient"
    model.zero_grad(set_to_none=True)
    _train(model, x, target, steps=3)
    adapter_names = {n for n, _ in pz.adapter_named_parameters(model)}
    changed = set(changed_tensors(model, before))
    assert changed, "training changed nothing"
    assert changed <= adapter_names, f"non-adapter tensors changed: {sorted(changed - adapter_names)}"


@pytest.mark.parametrize(
    ("case", "method"),
    [c for c in CASES if c[1] in MERGEABLE],
    ids=[i for i, c in zip(IDS, CASES, strict=True) if c[1] in MERGEABLE],
)
def test_merge_equals_unmerged_and_unmerge_restores(case: ModelCase, method: str) -> None:
    _, model, _ = _adapted(case, method)
    _randomize_adapters(model, 3)
    model.eval()
    x = _x(case, (3,), 4)
    weights = {
        n: t for n, t in snapshot(model).items() if n.endswith("base.weight") or n.endswith("base.bias")
    }
    with torch.no_grad():
        unmerged = model(x)
        assert pz.merge_adapters(model) > 0
        assert pz.merge_adapters(model) == 0, "a second merge must not merge again"
        merged = model(x)
        pz.unmerge_adapters(model)
        after = model(x)
    assert_close(merged, unmerged, what=f"{method}: merged vs unmerged output", rtol=1e-4, atol=1e-5)
    assert_close(after, unmerged, what=f"{method}: output after unmerge", rtol=1e-4, atol=1e-5)
    state = model.state_dict()
    for n, w in weights.items():
        assert_close(state[n], w, what=f"{method}: {n} after merge+unmerge", rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("case", "method"), CASES, ids=IDS)
def test_save_load_round_trip(case: ModelCase, method: str, tmp_path) -> None:
    _, model, _ = _adapted(case, method)
    _randomize_adapters(model, 5)
    model.eval()
    pz.save_adapter(model, tmp_path / "adapter")
    _, fresh, _ = _adapted(case, method)  # same seed: same base, adapters at init
    before = snapshot(fresh)
    pz.load_adapter(fresh, tmp_path / "adapter")
    fresh.eval()
    x = _x(case, (2,), 6)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x)), f"{method}: reloaded adapter computes something else"
    changed = set(changed_tensors(fresh, before))
    assert changed == {n for n, _ in pz.adapter_named_parameters(fresh)}, "load touched non-adapter tensors"


@pytest.mark.parametrize(("case", "method"), CASES, ids=IDS)
def test_overfits_a_tiny_batch(case: ModelCase, method: str) -> None:
    """The classic sanity check: a few steps on 4 samples must drive the loss well down.

    The target comes from a teacher of the same architecture with perturbed adapter
    weights, so every method can represent it exactly, however few parameters it has.
    """
    _, model, _ = _adapted(case, method)
    for m in model.modules():  # dropout noise would only slow this check down
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    teacher = copy.deepcopy(model)
    _randomize_adapters(teacher, 9, std=0.3)
    x = _x(case, (4,), 7)
    with torch.no_grad():
        target = teacher.eval()(x)
    losses = _train(model, x, target, steps=40, lr=2e-2)
    assert losses[-1] < 0.3 * losses[0], (
        f"{method}: loss {losses[0]:.4g} -> {losses[-1]:.4g} did not fall enough"
    )


@pytest.mark.parametrize(("case", "method"), CASES, ids=IDS)
@settings(max_examples=5, deadline=None)
@given(seed_a=st.integers(0, 10_000), delta=st.integers(1, 10_000))
def test_two_adapters_on_one_base_differ(case: ModelCase, method: str, seed_a: int, delta: int) -> None:
    base, a, _ = _adapted(case, method)
    _, b, _ = _adapted(case, method)
    _randomize_adapters(a, seed_a)
    _randomize_adapters(b, seed_a + delta)
    a.eval()
    b.eval()
    x = _x(case, (3,), 8)
    with torch.no_grad():
        ya, yb, y0 = a(x), b(x), base.eval()(x)
    assert not torch.allclose(ya, yb), "two different adapters gave the same output"
    assert not torch.allclose(ya, y0), "a non-trivial adapter gave the base output"
