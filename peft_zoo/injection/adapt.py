"""``adapt_model``: one call from a config to an adapted model, for every method.

    model, params = adapt_model(model, LoraConfig(rank=8, target_modules=["query", "value"]))

:data:`ADAPTERS` maps each config class to the function that applies it. Methods that swap
layers (LoRA, IA³, LoHa, LoKr, VeRA, OFT, AdaLoRA) share
:func:`~peft_zoo.injection.layer_adapt.adapt_layers`; bottleneck adapters, prompt, P- and
prefix tuning have their own placement. A subclass of a listed config (``SeqBnConfig`` of
``BottleneckConfig``) uses its parent's row. Adding a method is one config module and one row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .adalora_config import AdaLoraConfig
from .boft_config import BOFTConfig
from .bottleneck_config import BottleneckConfig
from .bottleneck_placement import adapt_bottleneck
from .config import IA3Config, LoraConfig
from .layer_adapt import adapt_layers
from .lycoris_config import LoHaConfig, LoKrConfig
from .oft_config import OFTConfig
from .prefix_model import PrefixTuningConfig, adapt_prefix_tuning
from .prompt_model import PromptTuningConfig, adapt_prompt_tuning
from .ptuning_config import PromptEncoderConfig, adapt_p_tuning
from .vera_config import VeraConfig

__all__ = ["ADAPTERS", "adapt_model"]

Adapted = tuple[nn.Module, list[nn.Parameter]]

# config class -> what applies it; one row per method (a subclass uses its parent's row)
ADAPTERS: dict[type, Callable[[nn.Module, Any], Adapted]] = {
    AdaLoraConfig: adapt_layers,
    BOFTConfig: adapt_layers,
    BottleneckConfig: adapt_bottleneck,
    IA3Config: adapt_layers,
    LoHaConfig: adapt_layers,
    LoKrConfig: adapt_layers,
    LoraConfig: adapt_layers,
    OFTConfig: adapt_layers,
    PrefixTuningConfig: adapt_prefix_tuning,
    PromptEncoderConfig: adapt_p_tuning,
    PromptTuningConfig: adapt_prompt_tuning,
    VeraConfig: adapt_layers,
}


def adapt_model(model: nn.Module, config: object) -> Adapted:
    """Adapt ``model`` as ``config`` says and freeze everything else; return ``(model, trainable
    parameters)``: the adapter tensors, the ``modules_to_save`` copies, the biases the config's
    ``bias`` asks for. Layer methods adapt ``model`` in place; prompt / P-tuning / prefix configs
    return a new wrapper (:class:`~peft_zoo.injection.prompt_model.PromptTuningModel`).

    Raises ``TypeError`` for an object that is not a peft_zoo config and ``InjectionError``
    (nothing changed) when a target, pattern key or ``modules_to_save`` entry names nothing.
    """
    for cls in type(config).__mro__:
        if cls in ADAPTERS:
            return ADAPTERS[cls](model, config)
    known = ", ".join(sorted(c.__name__ for c in ADAPTERS))
    raise TypeError(f"config must be a peft_zoo config ({known}), got {type(config).__name__}")
