"""Layer-level comparison of peft_zoo's LoHa / LoKr layers with PEFT's own ``Linear`` layers
(tests/test_loha.py, tests/test_lokr.py).

PEFT's layer is built directly around a copy of the same base, as its tuner builds it
(``Linear(base, "default", config, r=..., alpha=...)``, which calls ``update_layer``). Both get
the same random non-zero factors; then outputs, the gradient of every factor, the delta
weight and merged / unmerged outputs are compared and the largest |difference| returned.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
import torch
from tiny_hf import tiny_hf
from torch import nn

from peft_zoo.loha import LycorisLinear

PEFT_KEY = "default"


def peft_layer(kind: str, base: nn.Linear, rank: int, alpha: float, **config: Any) -> nn.Module:
    """PEFT's ``loha.layer.Linear`` / ``lokr.layer.Linear`` around a copy of ``base`` (frozen)."""
    peft = pytest.importorskip("peft")
    if kind == "loha":
        from peft.tuners.loha.layer import Linear

        cfg = peft.LoHaConfig(r=rank, alpha=alpha, **config)
    else:
        from peft.tuners.lokr.layer import Linear

        cfg = peft.LoKrConfig(r=rank, alpha=alpha, **config)
    layer = Linear(copy.deepcopy(base), PEFT_KEY, cfg, r=rank, alpha=alpha)
    layer.base_layer.requires_grad_(False)
    return layer


def peft_params(theirs: nn.Module) -> dict[str, nn.Parameter]:
    """PEFT's trainable adapter tensors by their attribute name (``hada_w1_a``, ``lokr_w2``, ...)."""
    return {n.removesuffix(f".{PEFT_KEY}"): p for n, p in theirs.named_parameters() if p.requires_grad}


def randomise_and_copy(ours: LycorisLinear, theirs: nn.Module, std: float = 0.5) -> None:
    """Give every factor of ``ours`` random non-zero values and copy them into ``theirs``;
    the two must hold exactly the same set of tensors with the same shapes."""
    mine = dict(ours.adapter_named_parameters())
    other = peft_params(theirs)
    assert sorted(mine) == sorted(other), f"parameter names differ: {sorted(mine)} vs {sorted(other)}"
    with torch.no_grad():
        for name, p in mine.items():
            assert p.shape == other[name].shape, f"{name}: {tuple(p.shape)} vs {tuple(other[name].shape)}"
            p.copy_(torch.randn_like(p) * std)
            other[name].copy_(p)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
    return float((a.detach().double() - b.detach().double()).abs().max()) if a.numel() else 0.0


def check(diffs: dict[str, float], scale: float, dtype: torch.dtype) -> None:
    """Every difference within float rounding of ``dtype`` for values of size ``scale``."""
    tol = (1e-5 if dtype == torch.float32 else 1e-10) * (1.0 + scale)
    bad = {k: v for k, v in diffs.items() if not v <= tol}
    assert not bad, f"differences above {tol:.3g}: {bad}"


def forward_backward(layer: nn.Module, x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
    """Output of ``layer(x)``; backpropagates ``sum(out * weights)`` into the factors."""
    if seed is not None:
        torch.manual_seed(seed)
    out = layer(x)
    g = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    if out.requires_grad:  # not when module dropout skipped the update (the base is frozen)
        (out * g).sum().backward()
    return out.detach()


def compare_training(
    ours: LycorisLinear, theirs: nn.Module, x: torch.Tensor, seed: int | None = None
) -> dict[str, float]:
    """Outputs and factor gradients of one forward/backward each (same RNG seed when given)."""
    ours.zero_grad(set_to_none=True)
    theirs.zero_grad(set_to_none=True)
    out_a = forward_backward(ours, x, seed)
    out_b = forward_backward(theirs, x, seed)
    if torch.isnan(out_b).any() and seed is not None:
        # PEFT's rank dropout divides by the fraction kept: 0 / 0 when every row is dropped.
        # peft_zoo leaves the update at zero there instead (documented in peft_zoo.loha).
        assert torch.equal(out_a, ours.base(x)), "every row dropped: the update must vanish, not be NaN"
        return {}
    diffs = {"output": max_diff(out_a, out_b)}
    other = peft_params(theirs)
    for name, p in ours.adapter_named_parameters():
        mine, theirs_grad = p.grad, other[name].grad
        if mine is None or theirs_grad is None:  # both skipped by module dropout, or neither
            assert mine is None and theirs_grad is None, f"{name}: gradient on one side only"
            continue
        diffs[f"grad {name}"] = max_diff(mine, theirs_grad)
    return diffs


def compare_merge(ours: LycorisLinear, theirs: Any, x: torch.Tensor) -> dict[str, float]:
    """Delta weight, merged weights and outputs, and the base weight after unmerge."""
    ours.eval()
    theirs.eval()
    w0 = ours.base.weight.detach().clone()
    diffs = {"delta_weight": max_diff(ours.delta_weight(), theirs.get_delta_weight(PEFT_KEY))}
    with torch.no_grad():
        unmerged = ours(x)
        diffs["eval output"] = max_diff(unmerged, theirs(x))
        ours.merge()
        theirs.merge()
        assert ours.merged and theirs.merged
        diffs["merged weight"] = max_diff(ours.base.weight, theirs.base_layer.weight)
        diffs["merged output"] = max_diff(ours(x), theirs(x))
        diffs["merged vs unmerged"] = max_diff(ours(x), unmerged)
        ours.unmerge()
        theirs.unmerge()
        diffs["unmerged weight vs W0"] = max_diff(ours.base.weight, w0)
    return diffs


def trainable_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def full_comparison(ours: LycorisLinear, theirs: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Randomise, then compare training outputs / gradients and merge; the parameter counts must match."""
    assert trainable_count(ours) == trainable_count(theirs), (trainable_count(ours), trainable_count(theirs))
    randomise_and_copy(ours, theirs)
    ours.train()
    theirs.train()
    diffs = compare_training(ours, theirs, x)
    diffs.update(compare_merge(ours, theirs, x))
    return diffs


# ----------------------------------------------------------------------------- whole models
# tests/test_lycoris_models.py: pz.adapt_model(LoHaConfig / LoKrConfig) vs peft.get_peft_model.

HIDDEN = 24  # 24 = 4 * 6 and the MLP's 36 = 6 * 6: LoKr gets non-trivial Kronecker factors


def tiny_model(arch: str) -> nn.Module:
    """A fresh copy of a tiny random ``arch`` model ("bert": sequence classification with a
    ``classifier`` head; "llama": causal LM; "gpt2": sequence classification, whose ``score``
    head is its only ``nn.Linear``, every projection being a ``Conv1D``), float32, eval()."""
    return tiny_hf(arch, hidden=HIDDEN, intermediate=36, gpt2_head="seqcls")


def peft_config_of(config: Any) -> Any:
    """PEFT's ``LoHaConfig`` / ``LoKrConfig`` with the same field values (the names are PEFT's;
    ``fan_in_fan_out`` is peft_zoo's targeting field only)."""
    peft = pytest.importorskip("peft")
    from peft_zoo.injection.lycoris_config import LoHaConfig

    values = dataclasses.asdict(config)
    values.pop("fan_in_fan_out")
    return (peft.LoHaConfig if isinstance(config, LoHaConfig) else peft.LoKrConfig)(**values)


def snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str], list[bool]]:
    """Everything a refused ``adapt_model`` must leave as it was: weights, module types, flags."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    kinds = [f"{n}:{type(m).__name__}" for n, m in model.named_modules()]
    return state, kinds, [p.requires_grad for p in model.parameters()]


def assert_unchanged(model: nn.Module, before: tuple[dict[str, torch.Tensor], list[str], list[bool]]) -> None:
    state, kinds, flags = snapshot(model)
    assert kinds == before[1], "module types changed"
    assert flags == before[2], "requires_grad flags changed"
    assert state.keys() == before[0].keys(), "state_dict keys changed"
    for k, v in state.items():
        assert torch.equal(v, before[0][k]), f"{k} changed"


def adapted_names(ours: nn.Module, theirs: nn.Module) -> tuple[list[str], list[str]]:
    """The adapted module names in both models (PEFT's without its ``base_model.model.`` prefix)."""
    from peft.tuners.lycoris_utils import LycorisLayer

    mine = [n for n, m in ours.named_modules() if isinstance(m, LycorisLinear)]
    other = [
        n.removeprefix("base_model.model.") for n, m in theirs.named_modules() if isinstance(m, LycorisLayer)
    ]
    return mine, other


def tensor_pairs(ours: nn.Module, theirs: Any) -> list[tuple[str, nn.Parameter, nn.Parameter]]:
    """``(name, ours, theirs)`` for every trainable tensor: each LoHa / LoKr factor and each
    ``modules_to_save`` copy's parameters, matched by module name."""
    from peft_zoo.injection.modules_to_save import ModulesToSave

    inner = theirs.base_model.model
    pairs = []
    for name, module in ours.named_modules():
        if isinstance(module, LycorisLinear):
            other = peft_params(inner.get_submodule(name))
            pairs += [(f"{name}.{k}", p, other[k]) for k, p in module.adapter_named_parameters()]
        elif isinstance(module, ModulesToSave):
            saved = inner.get_submodule(name).modules_to_save[PEFT_KEY]
            for (k, p), (k2, q) in zip(
                module.trained_module.named_parameters(), saved.named_parameters(), strict=True
            ):
                assert k == k2, (k, k2)
                pairs.append((f"{name}.{k}", p, q))
    return pairs


@torch.no_grad()
def randomise_models(ours: nn.Module, theirs: nn.Module, g: torch.Generator, size: float = 0.02) -> None:
    """Random non-zero values in every trainable tensor of ``ours``, copied into ``theirs``. A
    layer's factors are scaled together so that its ΔW has entries of about ``size`` (the base
    weights' std): ΔW is a product of all ``n`` factors, so each is scaled by ``c ** (1 / n)``.
    A ``modules_to_save`` copy gets N(0, size²) values."""
    for _, p, _ in tensor_pairs(ours, theirs):
        p.copy_(torch.randn(p.shape, generator=g) * size)
    for module in ours.modules():
        if isinstance(module, LycorisLinear):
            params = [p for _, p in module.adapter_named_parameters()]
            c = (size / float(module.delta_weight().std())) ** (1 / len(params))
            for p in params:
                p.mul_(c)
    for name, p, q in tensor_pairs(ours, theirs):
        assert p.shape == q.shape, f"{name}: {tuple(p.shape)} vs {tuple(q.shape)}"
        q.copy_(p)


def _outputs(model: nn.Module, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, last hidden state)`` of a transformers model called on ``inputs_embeds``."""
    out = model(inputs_embeds=emb, output_hidden_states=True)
    return out.logits, out.hidden_states[-1]


def _record(diffs: dict[str, float], what: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Store ``max |actual - expected|`` under ``what`` (the largest seen) after checking it is
    within float32 rounding of ``expected``'s size: ``1e-7 + 1e-5 * max |expected|``."""
    diff = max_diff(actual, expected)
    tol = 1e-7 + 1e-5 * float(expected.detach().abs().max())
    assert diff <= tol, f"{what}: max |diff| {diff:.3g} above {tol:.3g}"
    diffs[what] = max(diffs.get(what, 0.0), diff)


def compare_models(arch: str, config: Any, seed: int = 0) -> dict[str, float]:
    """Adapt two copies of the tiny ``arch`` model, ours with ``pz.adapt_model(config)`` and
    PEFT's with ``get_peft_model`` and the same fields; check the same modules are adapted and
    the trainable counts agree; give both the same random factors; compare (and return the
    largest |difference| of) the logits, the gradients of every trainable tensor and of the
    input embeddings (eval mode), and the merged models (``merge_and_unload`` on both sides:
    outputs and every weight). Each gradient is checked on its own, relative to its size."""
    peft = pytest.importorskip("peft")
    import peft_zoo as pz

    ours, _ = pz.adapt_model(tiny_model(arch), config)
    theirs = peft.get_peft_model(tiny_model(arch), peft_config_of(config))
    ours.eval(), theirs.eval()
    mine, other = adapted_names(ours, theirs)
    assert mine and mine == other, f"adapted modules differ: {mine} vs {other}"
    trainable = pz.count_parameters(ours)[0]
    assert trainable == theirs.get_nb_trainable_parameters()[0], (
        trainable,
        theirs.get_nb_trainable_parameters(),
    )

    g = torch.Generator().manual_seed(seed)
    randomise_models(ours, theirs, g)
    emb = torch.randn(2, 5, HIDDEN, generator=g)  # (B, T, d)
    emb_a, emb_b = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    (logits_a, hidden_a), (logits_b, hidden_b) = _outputs(ours, emb_a), _outputs(theirs, emb_b)
    w_logits, w_hidden = torch.randn(logits_a.shape, generator=g), torch.randn(hidden_a.shape, generator=g)
    ((logits_a * w_logits).sum() + (hidden_a * w_hidden).sum()).backward()
    ((logits_b * w_logits).sum() + (hidden_b * w_hidden).sum()).backward()
    diffs: dict[str, float] = {}
    _record(diffs, "logits", logits_a, logits_b)
    _record(diffs, "last hidden state", hidden_a, hidden_b)
    assert emb_a.grad is not None and emb_b.grad is not None
    _record(diffs, "grad inputs_embeds", emb_a.grad, emb_b.grad)
    for name, p, q in tensor_pairs(ours, theirs):
        assert p.grad is not None and q.grad is not None and q.grad.abs().max() > 0, f"{name}: no gradient"
        _record(diffs, "grad adapter tensors", p.grad, q.grad)

    merged_a, merged_b = pz.merge_and_unload(ours), theirs.merge_and_unload()
    assert not any(isinstance(m, LycorisLinear) for m in merged_a.modules()), "an adapter layer is left"
    state_a, state_b = merged_a.state_dict(), merged_b.state_dict()
    assert state_a.keys() == state_b.keys(), sorted(set(state_a) ^ set(state_b))
    for k in state_a:
        _record(diffs, "merged weights", state_a[k], state_b[k])
    with torch.no_grad():
        merged_logits = _outputs(merged_a, emb)[0]
        _record(diffs, "merged logits", merged_logits, _outputs(merged_b, emb)[0])
        _record(diffs, "merged vs unmerged logits", merged_logits, logits_a.detach())
    return diffs
