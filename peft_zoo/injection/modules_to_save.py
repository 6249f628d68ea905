"""``modules_to_save``: parts of a model trained and saved in full beside the adapters.

A PEFT recipe retrains some modules whole (a new classifier head). :class:`ModulesToSave` keeps
the original frozen beside a trainable copy, which is what runs; :func:`modules_to_save_names`
finds the modules a config's ``modules_to_save`` entries name, with PEFT's suffix rule.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Any

from torch import nn

from ..core.base import AdapterModule
from .surgery import InjectionError, adapter_owned, parent_of

__all__ = ["ModulesToSave", "modules_to_save_names", "wrap_modules_to_save"]


class ModulesToSave(AdapterModule):
    """A module trained (and saved) in full: the original stays frozen beside a trainable
    copy, which is what runs. Used for parts a PEFT recipe retrains whole, such as a new
    classifier head. ``forward`` passes everything through to the copy."""

    adapter_param_names = None
    original_module: nn.Module  # frozen, kept for unloading and saving
    trained_module: nn.Module  # the trainable copy that runs

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.original_module = module
        self.original_module.requires_grad_(False)
        self.trained_module = copy.deepcopy(module)
        self.trained_module.requires_grad_(True)

    def adapter_named_parameters(self, prefix: str = "") -> Iterator[tuple[str, nn.Parameter]]:
        dot = f"{prefix}." if prefix else ""
        for name, param in self.trained_module.named_parameters():
            yield f"{dot}trained_module.{name}", param

    def never_trained(self) -> Iterator[nn.Parameter]:
        """The frozen original: ``bias="all"`` trains the copy's bias, not this one (as PEFT)."""
        return self.original_module.parameters()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.trained_module(*args, **kwargs)

    def adapter_config(self) -> dict[str, object]:
        return {"method": "modules_to_save"}


def modules_to_save_names(model: nn.Module, wanted: Sequence[str]) -> list[str]:
    """PEFT's rule: a module whose full name *ends with* an entry (plain string suffix);
    never one inside an adapter layer, never one inside another match."""
    inside_adapter = adapter_owned(model)
    chosen: list[str] = []
    for name, module in model.named_modules():
        if not name or id(module) in inside_adapter or any(name.startswith(c + ".") for c in chosen):
            continue
        if any(name.endswith(w) for w in wanted):
            chosen.append(name)
    missing = [w for w in wanted if not any(n.endswith(w) for n in chosen)]
    if missing:
        raise InjectionError(f"modules_to_save: no module name ends with {missing}")
    return chosen


def wrap_modules_to_save(model: nn.Module, names: Sequence[str]) -> list[nn.Parameter]:
    """Put each named module behind a :class:`ModulesToSave` (names from
    :func:`modules_to_save_names`, already checked); return the trainable copies' parameters."""
    params: list[nn.Parameter] = []
    for name in names:
        parent, attr = parent_of(model, name)
        wrapper = ModulesToSave(getattr(parent, attr))
        setattr(parent, attr, wrapper)
        params += wrapper.trained_module.parameters()
    return params
