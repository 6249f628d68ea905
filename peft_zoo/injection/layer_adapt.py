"""The one injection path for every method that swaps layers: LoRA, IA³, and the newer
configs (LoHa, LoKr, VeRA, OFT, AdaLoRA).

A config that swaps layers is a :class:`~peft_zoo.injection.config_base.TargetingConfig`
subclass with two methods, :meth:`LayerMethodConfig.layer_builder` (resolve every per-layer
choice, refusing bad ones, before anything changes) and :meth:`LayerMethodConfig.bias_mode`.
:func:`adapt_layers` does the rest, the same for every method: validate the config, find the
targets, check ``modules_to_save``, build every layer before installing any, and freeze
everything that is not an adapter parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Protocol

from torch import nn

from ..core.base import AdapterModule
from .modules_to_save import modules_to_save_names, wrap_modules_to_save
from .surgery import InjectionError, mark_only_adapters_trainable, replace_linears

__all__ = ["Builder", "LayerMethodConfig", "adapt_layers"]

Builder = Callable[[str, nn.Module], AdapterModule]  # (module name, the module it wraps) -> adapter layer


class LayerMethodConfig(Protocol):
    """What :func:`adapt_layers` needs from a config (every ``TargetingConfig`` subclass that
    swaps layers provides it)."""

    extra_target_types: ClassVar[tuple[type[nn.Module], ...]]
    modules_to_save: list[str] | None

    def validate(self) -> None:
        """Check every field; raise naming the field."""

    def find(self, model: nn.Module) -> list[str]:
        """The names of the modules to adapt; raises ``InjectionError`` when none match."""

    def layer_builder(self, model: nn.Module, names: list[str]) -> Builder:
        """Resolve every per-layer setting for ``names`` (raising before anything changes) and
        return the function that builds one adapter layer."""

    def bias_mode(self) -> str:
        """Which biases train: ``"none"``, ``"all"`` or ``"adapter_only"``."""

    def finish_layers(self, model: nn.Module, names: list[str]) -> None:
        """Run once every layer is installed (PiSSA / OLoRA rewrite the base weights here)."""


def adapt_layers(model: nn.Module, config: LayerMethodConfig) -> tuple[nn.Module, list[nn.Parameter]]:
    """Swap the layers ``config`` selects for its adapter layers, in place, all or nothing;
    freeze the rest; return ``(model, trainable parameters)``."""
    config.validate()  # again: a field may have been set after construction
    names = config.find(model)
    if not names:  # "all-linear" on a model whose only linear is its output head
        raise InjectionError(f"adapt_model({type(config).__name__}): the targets select no module to adapt")
    save_names = modules_to_save_names(model, config.modules_to_save) if config.modules_to_save else []
    clash = sorted({n for n in names for s in save_names if n == s or n.startswith(s + ".")})
    if clash:
        raise InjectionError(f"modules {clash} are both adapted and in modules_to_save; choose one")
    build = config.layer_builder(model, names)
    method = f"adapt_model({type(config).__name__})"
    replace_linears(model, names, build, method, extra_types=config.extra_target_types)
    config.finish_layers(model, names)
    wrap_modules_to_save(model, save_names)  # their copies train: mark_only_adapters_trainable
    params = mark_only_adapters_trainable(model, bias=config.bias_mode())
    return model, params
