"""``VeraConfig``: VeRA on a real model through ``adapt_model``, with Hugging Face PEFT's fields.

    model, params = adapt_model(model, VeraConfig(r=256, target_modules=["query", "value"]))

The fields and defaults are ``peft.VeraConfig``'s (PEFT 0.21.2), so a config carries over
unchanged. Every targeted layer (``nn.Linear`` or GPT-2's ``Conv1D``) becomes a
:class:`~peft_zoo.vera.VeRALinear`, and all of them share ONE frozen random pair, a
:class:`~peft_zoo.vera.VeraProjections` sized for the largest input and output among the
targets (PEFT's ``_find_dim``) and drawn from ``projection_prng_key``: ``vera_A (r, in_max)``,
``vera_B (out_max, r)``, bit-identical to PEFT's. Each layer slices its own corner and trains
``vera_lambda_d (r,)`` and ``vera_lambda_b (out,)``: ``r + out`` numbers per layer; the pair
is a buffer, never a trainable parameter (PEFT counts it nowhere either).

Differences from PEFT, on purpose: ``d_initial=0`` is refused (with ``lambda_b = 0`` neither
vector would ever get a gradient); ``bias`` takes PEFT's documented values only (``"none"``,
``"all"``, ``"vera_only"``; PEFT accepts any string ending in ``"_only"``); a wrong explicit
``fan_in_fan_out`` is refused rather than corrected with a warning (``None``, the default
here, reads it from each layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.checks import check_bool, check_int_in, check_probability, short_repr, weight_of
from ..vera import VeRALinear, VeraProjections, check_d_initial, check_seed
from .config_base import MAX_RANK, TargetingConfig
from .layer_adapt import Builder

__all__ = ["VERA_BIAS_MODES", "VeraConfig"]

VERA_BIAS_MODES = ("none", "all", "vera_only")


@dataclass
class VeraConfig(TargetingConfig):
    """Which modules get VeRA, and with what hyperparameters (PEFT's ``VeraConfig`` fields)."""

    r: int = field(
        default=256,
        metadata={
            "help": "The rank of the shared random pair (A: (r, in_max), B: (out_max, r)); VeRA affords a large one."
        },
    )
    projection_prng_key: int = field(
        default=0,
        metadata={
            "help": "The seed of the CPU generator that draws the shared pair (A first, then B), as PEFT."
        },
    )
    save_projection: bool = field(
        default=True,
        metadata={
            "help": "Store vera_A / vera_B in saved adapters (False: they are regenerated from the seed)."
        },
    )
    vera_dropout: float = field(default=0.0, metadata={"help": "Dropout on the VeRA path's input."})
    d_initial: float = field(
        default=0.1, metadata={"help": "The initial value of every entry of lambda_d (finite, nonzero)."}
    )
    bias: str = field(
        default="none",
        metadata={"help": 'Which biases train: "none", "all", "vera_only" (the biases of adapted layers).'},
    )
    init_weights: bool = field(
        default=True,
        metadata={
            "help": "True: lambda_b = 0 (the model starts unchanged), lambda_d = d_initial; "
            "False: PEFT's raw values, lambda_b = 1 and lambda_d ~ N(0, 1)."
        },
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (types and values); raise naming the field. ``adapt_model`` calls
        it again, so a field set after construction is checked too."""
        self.check_targeting()
        check_int_in(self.r, "r", 1, MAX_RANK)
        check_seed(self.projection_prng_key, "projection_prng_key")
        check_bool(self.save_projection, "save_projection")
        check_bool(self.init_weights, "init_weights")
        check_probability(self.vera_dropout, "vera_dropout")
        check_d_initial(self.d_initial)
        bias: object = self.bias  # whatever was assigned: checked here at run time
        if not isinstance(bias, str):
            raise TypeError(f"bias must be one of {VERA_BIAS_MODES}, got {short_repr(bias)}")
        if bias not in VERA_BIAS_MODES:
            raise ValueError(f"bias must be one of {VERA_BIAS_MODES}, got {bias!r}")

    def bias_mode(self) -> str:
        return "adapter_only" if self.bias == "vera_only" else self.bias

    def layer_builder(self, model: nn.Module, names: list[str]) -> Builder:
        """Build the ONE shared pair, covering every target (largest in and out among them, as
        PEFT's ``_find_dim``), on the device of the first target's weight; every layer built
        by the returned function slices its corner of it. Raises before anything changes when
        a target is not an ``nn.Linear`` / ``Conv1D``."""
        layers = [model.get_submodule(n) for n in names]
        projections = VeraProjections.covering(layers, self.r, seed=self.projection_prng_key)
        projections.to(weight_of(layers[0]).device)
        return lambda name, base: self._build(base, projections)

    def _build(self, base: nn.Module, projections: VeraProjections) -> VeRALinear:
        layer = VeRALinear(
            base,
            projections,
            d_initial=self.d_initial,
            dropout=self.vera_dropout,
            fan_in_fan_out=self.fan_in_fan_out,
        )
        if not self.init_weights:  # PEFT's values before its reset: lambda_b = 1, lambda_d ~ N(0, 1)
            with torch.no_grad():
                layer.vera_lambda_b.fill_(1.0)
                layer.vera_lambda_d.normal_()
        return layer
