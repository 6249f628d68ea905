"""The freezing contract of every injector (as Hugging Face PEFT's ``inject_adapter_in_model``):
after a successful call every parameter that is not an adapter parameter is frozen, so on a
model without earlier adapters the returned list is exactly the trainable set. Adapter
parameters already in the model keep their flags."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
import torch
from torch import nn

import peft_zoo as pz
from peft_zoo.models import TinyMLP

Injector = Callable[[nn.Module], tuple[nn.Module, list[nn.Parameter]]]

# Each injector applied to a TinyMLP(8, 16, 4) (linears: encoder.0, encoder.2.branch.fc1,
# encoder.2.branch.fc2, head), leaving some Linears and the biases outside any adapter.
# (build_lora_adapter_model and adapt_model have always frozen the rest: tests/test_inject.py,
# tests/test_config.py.)
INJECTORS: dict[str, Injector] = {
    "inject_lora": lambda m: pz.inject_lora(m, ["head"], 2),
    "inject_lora_recursive": lambda m: pz.inject_lora_recursive(m, 2, exclude="encoder.0"),
    "inject_ia3": lambda m: pz.inject_ia3(m, ["encoder.0"], feedforward_names=["head"]),
    "inject_qlora": lambda m: pz.inject_qlora(m, ["encoder.2.branch.fc1"], rank=2),
    "inject_batched_lora": lambda m: pz.inject_batched_lora(m, ["head", "encoder.0"], 3, 2),
}


def _mlp(seed: int = 0) -> TinyMLP:
    torch.manual_seed(seed)
    return TinyMLP()


def _trainable_ids(model: nn.Module) -> set[int]:
    return {id(p) for p in model.parameters() if p.requires_grad}


@pytest.mark.parametrize("injector", list(INJECTORS))
def test_the_returned_list_is_exactly_the_trainable_set(injector: str) -> None:
    model, params = INJECTORS[injector](_mlp())
    assert params and len({id(p) for p in params}) == len(params)
    assert all(p.requires_grad for p in params)
    trainable_not_returned = sorted(
        n for n, p in model.named_parameters() if p.requires_grad and id(p) not in {id(q) for q in params}
    )
    assert trainable_not_returned == [], f"{injector} left non-adapter parameters trainable"
    assert {id(p) for p in params} == _trainable_ids(model)


@pytest.mark.parametrize("injector", list(INJECTORS))
def test_no_gradient_is_computed_for_the_base(injector: str) -> None:
    model, params = INJECTORS[injector](_mlp())
    returned = {id(p) for p in params}
    batched = injector == "inject_batched_lora"
    with pz.use_adapters(model, torch.tensor([0, 1, 2])) if batched else contextlib.nullcontext():
        model(torch.randn(3, 8)).square().sum().backward()
    got_grad = sorted(n for n, p in model.named_parameters() if id(p) not in returned and p.grad is not None)
    assert got_grad == [], f"{injector}: gradients computed for frozen parameters"
    assert any(p.grad is not None for p in params)


def test_peft_example_sequential_leaves_only_lora_trainable() -> None:
    # peft 0.21.2: inject_adapter_in_model on Sequential(Linear, ReLU, Linear) targeting "2"
    # gives 0.weight and 0.bias requires_grad=False.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    pz.inject_lora(model, ["2"], 2)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    assert flags == {
        "0.weight": False,
        "0.bias": False,
        "2.base.weight": False,
        "2.base.bias": False,
        "2.lora_A": True,
        "2.lora_B": True,
    }


def test_print_trainable_parameters_after_inject_lora(capsys: pytest.CaptureFixture[str]) -> None:
    model = _mlp()  # base: 8*16+16 + 16*32+32 + 32*16+16 + 16*4+4 = 1284
    pz.inject_lora(model, ["head"], 2)  # LoRA: 2 * (16 + 4) = 40
    assert pz.print_trainable_parameters(model) == (40, 1324)
    assert capsys.readouterr().out == "trainable params: 40 || all params: 1,324 || trainable%: 3.0211\n"


def test_earlier_adapters_keep_their_flags_and_other_parameters_are_frozen() -> None:
    model = _mlp()
    pz.inject_lora(model, ["head"], 2)
    model.head.lora_A.requires_grad_(False)  # the user froze half of the first adapter
    model.encoder[0].bias.requires_grad_(True)  # and chose to train one bias
    _, params = pz.inject_ia3(model, ["encoder.0"])
    assert not model.head.lora_A.requires_grad and model.head.lora_B.requires_grad
    assert not model.encoder[0].base.bias.requires_grad, "a non-adapter parameter stays trainable"
    assert _trainable_ids(model) == {id(model.head.lora_B)} | {id(p) for p in params}


def test_modules_to_save_copy_stays_trainable_through_a_later_injection() -> None:
    model = _mlp()
    model, _ = pz.adapt_model(model, pz.LoraConfig(rank=2, target_modules=["fc1"], modules_to_save=["head"]))
    copy_params = list(model.head.trained_module.parameters())
    assert all(p.requires_grad for p in copy_params)
    model.encoder[2].branch.fc2.bias.requires_grad_(True)  # trained by hand: not an adapter parameter
    pz.inject_lora(model, ["encoder.0"], 2)
    assert all(p.requires_grad for p in copy_params), "modules_to_save copies are adapter parameters"
    assert not any(p.requires_grad for p in model.head.original_module.parameters())
    assert not model.encoder[2].branch.fc2.bias.requires_grad
