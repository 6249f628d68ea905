# Challenge 13 · adapter_state_dict: save and restore only the adapter tensors. Replace each TODO(ex13) with your code, then run:
#     peft-zoo check 13        (or: pytest practice/13_lora_adapters/test_ex13_adapter_state_dict.py)
# Stuck? `peft-zoo hint 13`. Start over: `peft-zoo reset 13` (your file is backed up).
"""Adapter-only checkpoints: save the few LoRA tensors, not the whole model.

A LoRA fine-tune changes only ``lora_A`` and ``lora_B``; every other tensor is the frozen
base model, which the person loading the adapter already has. So the checkpoint keeps just
those entries of ``model.state_dict()``, keyed exactly as the state dict keys them
(``"blocks.0.attn.branch.q.lora_A"``): for a 7B model at rank 16 that is megabytes instead
of gigabytes, and one base can serve many task adapters.

Loading goes the other way: inject LoRA into a fresh copy of the same base (same target
layers, same rank), then copy the saved tensors into its ``lora_A`` / ``lora_B``. A
checkpoint that does not fit, with a missing key, an unexpected key or a wrong shape, must
be refused *before* anything is copied: a loader that fails half-way leaves a model that is
neither the old one nor the new one, and nothing tells you so.
"""

from __future__ import annotations

import torch
from torch import nn

ADAPTER_SUFFIXES = ("lora_A", "lora_B")


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The entries of ``model.state_dict()`` whose key ends in ``"lora_A"`` or ``"lora_B"``.

    Same keys, same tensors: nothing from the frozen base (weights, biases, norms,
    embeddings). About 2 lines.
    """
    # TODO(ex13): keep the state_dict entries whose key ends in lora_A or lora_B
    raise NotImplementedError("ex13 (adapter_state_dict): adapter_state_dict is not implemented yet")


def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy the tensors of ``state`` (from :func:`adapter_state_dict`) into ``model``'s adapters.

    Validate first, change nothing until everything checks out:

    - the keys of ``state`` must be exactly the model's adapter keys: raise ``KeyError``
      naming the missing and the unexpected ones;
    - every tensor must have its parameter's shape: raise ``ValueError`` naming the key and
      both shapes.

    Then copy each tensor into the existing parameter in place (``param.copy_(tensor)``
    under ``torch.no_grad()``): the parameters stay the same objects, still trainable, and
    share no memory with ``state``. About 12 lines.
    """
    # TODO(ex13): check keys (missing/unexpected) and shapes of every entry, then copy each tensor in place
    raise NotImplementedError("ex13 (adapter_state_dict): load_adapter_state_dict is not implemented yet")
