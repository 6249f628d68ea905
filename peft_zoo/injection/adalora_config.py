"""``AdaLoraConfig``: AdaLoRA on a real model through ``adapt_model``, and the two pieces its
training loop needs (Hugging Face PEFT 0.21.2's ``AdaLoraConfig`` / ``AdaLoraModel``).

    config = AdaLoraConfig(init_r=12, target_r=8, target_modules=["query", "value"],
                           tinit=200, tfinal=500, deltaT=10, total_step=3000)
    model, params = adapt_model(model, config)       # AdaLoRALinear layers, rank init_r
    allocator = config.allocator(model)              # a RankAllocator with the config's schedule
    for step, batch in enumerate(batches):
        loss = config.regularised_loss(model, model(**batch).loss)   # + orth_reg_weight · R(P, Q)
        loss.backward()
        optimizer.step()
        allocator.step(model, step)                  # PEFT's model.update_and_allocate(step)
        optimizer.zero_grad()

The fields carry PEFT's names and defaults (``init_r``, ``lora_alpha``, ``lora_dropout``...),
so a config moves between the two libraries unchanged. Each targeted ``nn.Linear`` (or GPT-2
``Conv1D``, whose ``(in, out)`` layout is inferred, as PEFT forces ``fan_in_fan_out=True``)
becomes an :class:`~peft_zoo.adalora.AdaLoRALinear` with rank ``init_r`` and
``s = lora_alpha / (init_r + 1e-5)``.

PEFT adds the orthogonality penalty inside ``AdaLoraModel.forward`` whenever the output
carries a loss; here the model is called exactly like the original, so the loop adds it with
:meth:`AdaLoraConfig.regularised_loss` (the same value:
:func:`~peft_zoo.adalora.orthogonal_regulariser` is PEFT's mean of unsquared Frobenius norms).
PEFT's ``update_and_allocate(global_step)`` is :meth:`~peft_zoo.adalora_allocator.RankAllocator.step`.

Differences from PEFT, on purpose: ``lora_alpha`` must be > 0 (PEFT reads 0 as ``init_r``);
``nn.Conv2d`` targets are refused (PEFT has ``SVDConv2d``); a wrong explicit
``fan_in_fan_out`` is refused rather than corrected with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..adalora import AdaLoRALinear, orthogonal_regulariser
from ..adalora_allocator import RankAllocator, check_schedule
from ..core.checks import (
    check_int_in,
    check_nonnegative_float,
    check_positive_float,
    check_probability,
    short_repr,
)
from .config_base import BIAS_MODES, MAX_RANK, TargetingConfig
from .layer_adapt import Builder

__all__ = ["AdaLoraConfig"]


def _check_beta(value: object, name: str) -> float:
    beta = check_probability(value, name)  # a real number in [0, 1)
    if beta == 0.0:
        raise ValueError(f"{name} must be in (0, 1) (an EMA coefficient), got {value}")
    return beta


# The fields that drive training (the allocator and the regulariser), recorded on each layer.
SCHEDULE_FIELDS = ("target_r", "total_step", "tinit", "tfinal", "deltaT", "beta1", "beta2", "orth_reg_weight")


@dataclass
class AdaLoraConfig(TargetingConfig):
    """Which modules get AdaLoRA, its rank budget schedule and its regulariser (PEFT's fields).

    The schedule (see :mod:`peft_zoo.adalora_allocator`): ``tinit`` warm-up steps at the full
    budget ``init_r × layers``, then a cubic decrease to ``target_r × layers`` until step
    ``total_step - tfinal`` (masking every ``deltaT`` steps), then ``tfinal`` steps with the
    pattern frozen. ``total_step`` has no usable default: it must be given, > 0.
    """

    init_r: int = field(default=12, metadata={"help": "Initial rank of every adapted layer (triplets)."})
    target_r: int = field(
        default=8, metadata={"help": "Average rank per layer at the end of the budgeting phase (<= init_r)."}
    )
    lora_alpha: float = field(
        default=8,
        metadata={
            "help": "Scale numerator: the update is scaled by lora_alpha / (init_r + 1e-5), as in PEFT."
        },
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter path's input."})
    tinit: int = field(default=0, metadata={"help": "Warm-up steps before any rank is pruned."})
    tfinal: int = field(default=0, metadata={"help": "Final steps that train with the rank pattern frozen."})
    deltaT: int = field(default=1, metadata={"help": "Steps between two budget allocations."})
    beta1: float = field(default=0.85, metadata={"help": "EMA coefficient of the sensitivity, in (0, 1)."})
    beta2: float = field(default=0.85, metadata={"help": "EMA coefficient of the uncertainty, in (0, 1)."})
    orth_reg_weight: float = field(
        default=0.5, metadata={"help": "Weight of the orthogonality penalty on P and Q added to the loss."}
    )
    total_step: int | None = field(
        default=None, metadata={"help": "Total training steps (required, > 0): the schedule's length."}
    )
    bias: str = field(
        default="none",
        metadata={"help": 'Which biases train: "none", "all", "lora_only" (the biases of adapted layers).'},
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (types and values); raise naming the field. ``adapt_model`` calls
        it again, so a field set after construction is checked too."""
        self.check_targeting()
        check_int_in(self.init_r, "init_r", 1, MAX_RANK)
        check_int_in(self.target_r, "target_r", 1, MAX_RANK)
        if self.target_r > self.init_r:
            raise ValueError(
                f"target_r={self.target_r} > init_r={self.init_r}: AdaLoRA only prunes ranks, so the "
                "target must not exceed the initial rank"
            )
        check_positive_float(self.lora_alpha, "lora_alpha")
        check_probability(self.lora_dropout, "lora_dropout")
        check_schedule(self.total_step, self.tinit, self.tfinal, self.deltaT)
        _check_beta(self.beta1, "beta1")
        _check_beta(self.beta2, "beta2")
        check_nonnegative_float(self.orth_reg_weight, "orth_reg_weight")
        bias: object = self.bias  # whatever was assigned: checked here at run time
        if not isinstance(bias, str):
            raise TypeError(f"bias must be one of {BIAS_MODES}, got {short_repr(bias)}")
        if bias not in BIAS_MODES:
            raise ValueError(f"bias must be one of {BIAS_MODES}, got {bias!r}")

    def bias_mode(self) -> str:
        return "adapter_only" if self.bias == "lora_only" else self.bias

    def layer_builder(self, model: nn.Module, names: list[str]) -> Builder:
        """Every target gets the same layer: ``AdaLoRALinear(base, init_r, lora_alpha)``."""
        rank, alpha, dropout = self.init_r, float(self.lora_alpha), float(self.lora_dropout)
        fan_in_fan_out = self.fan_in_fan_out
        return lambda name, base: AdaLoRALinear(
            base, rank, alpha, dropout=dropout, fan_in_fan_out=fan_in_fan_out
        )

    def finish_layers(self, model: nn.Module, names: list[str]) -> None:
        """Record this config's schedule on every new layer, so ``save_peft`` writes it."""
        schedule = tuple((name, getattr(self, name)) for name in SCHEDULE_FIELDS)
        for name in names:
            layer = model.get_submodule(name)
            if isinstance(layer, AdaLoRALinear):
                layer.schedule = schedule

    def allocator(self, model: nn.Module) -> RankAllocator:
        """A :class:`~peft_zoo.adalora_allocator.RankAllocator` over every ``AdaLoRALinear`` of
        ``model`` with this config's ``target_r``, schedule and betas (PEFT builds the same one
        inside ``AdaLoraModel``). Call its ``step(model, global_step)`` after
        ``optimizer.step()`` and before ``zero_grad()``, as PEFT's ``update_and_allocate``."""
        self.validate()
        total_step = check_schedule(self.total_step, self.tinit, self.tfinal, self.deltaT)[0]
        return RankAllocator(
            model,
            target_r=self.target_r,
            total_step=total_step,
            tinit=self.tinit,
            tfinal=self.tfinal,
            deltaT=self.deltaT,
            beta1=self.beta1,
            beta2=self.beta2,
        )

    def regularised_loss(self, model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
        """``loss + orth_reg_weight · R``, ``R`` = :func:`~peft_zoo.adalora.orthogonal_regulariser`
        over every ``AdaLoRALinear`` of ``model`` (the mean over layers of ``||QQᵀ - I||_F`` and
        ``||PᵀP - I||_F``), exactly what PEFT's ``AdaLoraModel.forward`` adds to
        ``outputs.loss``. ``loss`` is a 0-d tensor; so is the result (differentiable)."""
        given: object = loss  # whatever was passed: checked here at run time
        if not isinstance(given, torch.Tensor) or given.dim() != 0:
            shown = tuple(given.shape) if isinstance(given, torch.Tensor) else type(given).__name__
            raise TypeError(f"loss must be a 0-d tensor (a scalar loss), got {shown}")
        weight = check_nonnegative_float(self.orth_reg_weight, "orth_reg_weight")
        reg = orthogonal_regulariser(model)  # checks that model is an nn.Module
        return given + weight * reg.to(given.device)
