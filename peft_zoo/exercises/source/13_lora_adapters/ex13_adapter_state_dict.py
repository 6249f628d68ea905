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
    # BEGIN SOLUTION: keep the state_dict entries whose key ends in lora_A or lora_B
    return {k: v for k, v in model.state_dict().items() if k.endswith(ADAPTER_SUFFIXES)}
    # END SOLUTION


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
    # BEGIN SOLUTION: check keys (missing/unexpected) and shapes of every entry, then copy each tensor in place
    params = {k: p for k, p in model.named_parameters() if k.endswith(ADAPTER_SUFFIXES)}  # live Parameters
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    if missing or unexpected:
        raise KeyError(f"adapter keys do not match the model: missing {missing}, unexpected {unexpected}")
    wrong = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(p.shape)}"
        for k, p in params.items()
        if state[k].shape != p.shape
    ]
    if wrong:
        raise ValueError(f"adapter shapes do not match the model (saved vs model): {wrong}")
    # Every check passed: only now touch the model.
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(state[k])  # in place, casting to p's dtype; no aliasing of state[k]
    # END SOLUTION
