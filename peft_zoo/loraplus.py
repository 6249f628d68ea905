"""LoRA+: a larger learning rate for B than for A (Hayou et al., 2024, arXiv:2402.12354).

With ``ΔW = B A`` and the usual initialisation (A random, B zero), the paper shows that one
learning rate for both factors is inefficient when the width is large: feature learning
needs ``η_B / η_A`` to grow with the width. LoRA+ fixes the ratio ``λ = η_B / η_A`` (the
paper's experiments use ``λ = 2^4 = 16``; PEFT's docs suggest 16 as a start) and reports up
to ~2x faster fine-tuning at the same cost.

This module builds the optimizer parameter groups exactly as Hugging Face PEFT's
``peft.optimizers.create_loraplus_optimizer`` does, so the same model trains identically
under both libraries. Every *trainable* parameter goes into one of four groups, in this
order::

    group          which parameters                                    lr            weight decay
    "A"            everything else (lora_A, 2-D weights, IA³ vectors)  lr            weight_decay
    "embedding"    the tensors of a LoRA-on-Embedding layer            lr_embedding  weight_decay
    "B"            "lora_B" in the name, or any 1-D tensor (DoRA's     lr * ratio    weight_decay
                   magnitude, a trained LayerNorm weight), decayed
    "B_no_decay"   the same, but a bias or inside an nn.LayerNorm      lr * ratio    0

Two consequences of PEFT's rule worth knowing: every 1-D trainable tensor (biases, norms,
DoRA's magnitude) gets the *B* learning rate, and the ``weight_decay`` applies to group A
whatever its tensors are. peft_zoo's IA³ vectors are 1-D, but PEFT stores the same vectors
as ``(out, 1)`` / ``(1, in)`` matrices, so they go to group A here too, as in PEFT.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .ia3 import IA3Linear

__all__ = ["LORAPLUS_GROUPS", "create_loraplus_optimizer", "loraplus_groups", "loraplus_param_groups"]

LORAPLUS_GROUPS = ("A", "embedding", "B", "B_no_decay")  # PEFT's order of the param groups


def _check_rate(value: object, name: str, *, positive: bool = False) -> float:
    """``value`` as a float if it is a finite real ``>= 0`` (``> 0`` when ``positive``), else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} of type {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value}")
    return float(value)


def _check_optimizer_cls(value: object) -> Callable[..., torch.optim.Optimizer]:
    """``value`` if it is a ``torch.optim.Optimizer`` subclass (built as ``cls(params, lr=...,
    **kwargs)``), else raise a TypeError."""
    if not (isinstance(value, type) and issubclass(value, torch.optim.Optimizer)):
        raise TypeError(f"optimizer_cls must be a torch.optim.Optimizer subclass, got {value!r}")
    return value


def _decayed_names(module: nn.Module, prefix: str = "") -> Iterator[str]:
    """Names of the parameters *not* inside an ``nn.LayerNorm`` (transformers'
    ``get_parameter_names(model, [nn.LayerNorm])``, the rule PEFT uses)."""
    for name, child in module.named_children():
        if not isinstance(child, nn.LayerNorm):
            yield from _decayed_names(child, f"{prefix}{name}.")
    for name, _ in module.named_parameters(recurse=False, remove_duplicate=False):
        yield prefix + name


def _owner(model: nn.Module, name: str, up: int) -> nn.Module | None:
    """The module ``up`` name components above parameter ``name`` (None if there is none)."""
    path = ".".join(name.split(".")[:-up])
    if not path:
        return None
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def loraplus_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Sort the trainable parameters of ``model`` into the four LoRA+ groups (see the module
    docstring): ``{"A": [(name, param), ...], "embedding": [...], "B": [...], "B_no_decay": [...]}``,
    each in ``named_parameters()`` order. Works on peft_zoo models and on PEFT models alike."""
    decayed = {n for n in _decayed_names(model) if "bias" not in n}
    ia3_scales = {id(m.scale) for m in model.modules() if isinstance(m, IA3Linear)}
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {g: [] for g in LORAPLUS_GROUPS}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # A PEFT LoRA Embedding layer (its tensors sit in dicts: <layer>.lora_embedding_A.<adapter>);
        # PEFT's other LoRA layers hold an empty lora_embedding_A.
        if len(getattr(_owner(model, name, 2), "lora_embedding_A", ())) > 0:
            groups["embedding"].append((name, param))
        elif id(param) in ia3_scales:  # PEFT's ia3_l is 2-D: the A group
            groups["A"].append((name, param))
        elif "lora_B" in name or param.ndim == 1:
            groups["B" if name in decayed else "B_no_decay"].append((name, param))
        else:
            groups["A"].append((name, param))
    return groups


def loraplus_param_groups(
    model: nn.Module,
    lr: float,
    ratio: float,
    *,
    weight_decay: float = 0.0,
    lr_embedding: float = 1e-6,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups for LoRA+: B (and every 1-D tensor) at ``lr * ratio``, A
    and the rest at ``lr``, LoRA-on-Embedding tensors at ``lr_embedding``; ``weight_decay``
    on every group but the biases / LayerNorm tensors. Four groups always, in PEFT's order
    (some may be empty), each ``{"params", "weight_decay", "lr"}``.

    Raises ``ValueError`` / ``TypeError`` for a negative or non-finite rate, a ``ratio`` that
    is not > 0, or a model with no trainable parameters.
    """
    lr = _check_rate(lr, "lr")
    ratio = _check_rate(ratio, "ratio (loraplus_lr_ratio)", positive=True)
    weight_decay = _check_rate(weight_decay, "weight_decay")
    lr_embedding = _check_rate(lr_embedding, "lr_embedding")
    groups = loraplus_groups(model)
    if not any(groups.values()):
        raise ValueError("loraplus_param_groups: the model has no trainable parameters (adapt it first)")
    settings = {  # group -> (lr, weight decay)
        "A": (lr, weight_decay),
        "embedding": (lr_embedding, weight_decay),
        "B": (lr * ratio, weight_decay),  # η_B = λ η_A
        "B_no_decay": (lr * ratio, 0.0),
    }
    return [
        {"params": [p for _, p in groups[g]], "weight_decay": settings[g][1], "lr": settings[g][0]}
        for g in LORAPLUS_GROUPS
    ]


def create_loraplus_optimizer(
    model: nn.Module,
    optimizer_cls: type[torch.optim.Optimizer],
    *,
    lr: float,
    loraplus_lr_ratio: float,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """``optimizer_cls`` over :func:`loraplus_param_groups`, with PEFT's signature:
    ``loraplus_weight_decay`` (default 0.0) and ``loraplus_lr_embedding`` (default 1e-6) are
    taken from ``kwargs``, everything else goes to ``optimizer_cls`` (betas, eps...).

        optimizer = create_loraplus_optimizer(model, torch.optim.AdamW, lr=2e-4, loraplus_lr_ratio=16)

    A ``weight_decay`` in ``kwargs`` only sets the optimizer's default: every group sets its
    own, as in PEFT. (PEFT also keeps embeddings in 32-bit for bitsandbytes' 8-bit
    optimizers; peft_zoo does not depend on bitsandbytes.)
    """
    build = _check_optimizer_cls(optimizer_cls)
    weight_decay = kwargs.pop("loraplus_weight_decay", 0.0)
    lr_embedding = kwargs.pop("loraplus_lr_embedding", 1e-6)
    groups = loraplus_param_groups(
        model, lr, loraplus_lr_ratio, weight_decay=weight_decay, lr_embedding=lr_embedding
    )
    return build(groups, lr=lr, **kwargs)
