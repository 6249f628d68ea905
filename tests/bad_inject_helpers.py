"""Setups shared by the injection bad-input tables (test_bad_input_inject*.py,
test_bad_input_layers.py): each returns the state dict a :class:`badinput.Refusal` call uses."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

import peft_zoo as pz
from peft_zoo.models import TinyMLP

HUGE = 10**13  # a rank / size no allocator grants: fails inside the constructor, after the checks


def mlp_state() -> dict[str, Any]:
    """TinyMLP(8, 16, 4) with mixed flags: encoder.0 frozen, the rest trainable."""
    torch.manual_seed(0)
    model = TinyMLP()
    model.encoder[0].requires_grad_(False)
    return {"model": model}


def mlp_with_lora_state() -> dict[str, Any]:
    """TinyMLP with LoRA already on ``head``, one LoRA tensor frozen and one bias trained by hand."""
    torch.manual_seed(0)
    model = TinyMLP()
    pz.inject_lora(model, ["head"], 2)
    model.head.lora_A.requires_grad_(False)
    model.encoder[0].bias.requires_grad_(True)
    return {"model": model}


def all_lora_state() -> dict[str, Any]:
    state = mlp_state()
    pz.inject_lora_recursive(state["model"], 2)
    return state


def base_state() -> dict[str, Any]:
    """A lone Linear whose bias is frozen and weight trainable (a constructor must keep both)."""
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    base.bias.requires_grad_(False)
    return {"base": base}


M = ("model",)  # watch the "model" entry of the state
B = ("base",)  # watch the "base" entry of the state
NAN, INF = math.nan, math.inf
