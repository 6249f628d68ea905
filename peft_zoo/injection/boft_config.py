"""``BOFTConfig``: butterfly orthogonal finetuning on a real model through ``adapt_model``, with
Hugging Face PEFT's fields.

    model, params = adapt_model(model, BOFTConfig(boft_block_size=4, target_modules=["q_proj", "v_proj"]))

The fields and defaults are ``peft.BOFTConfig``'s (PEFT 0.21.2). Every targeted ``nn.Linear``
becomes a :class:`~peft_zoo.boft.BOFTLinear`: its input is rotated by ``boft_n_butterfly_factor``
butterfly factors of ``boft_block_num`` orthogonal blocks of size ``boft_block_size`` (``size *
num == in_features``; give exactly one, the other 0) and its output rows scaled. Trainable per
layer: ``boft_R (m, D, b, b)`` and ``boft_s (out_features, 1)``.

Differences from PEFT, on purpose:

- ``boft_n_butterfly_factor`` is always honoured (what PEFT computes with its CUDA kernel);
  PEFT without the kernel (on CPU) silently uses 1 instead, so only ``1`` (the default)
  agrees with PEFT on CPU;
- GPT-2's ``Conv1D`` is refused, as PEFT refuses it (``TypeError``: BOFT wraps ``nn.Linear``);
  ``fan_in_fan_out=True`` is refused (PEFT resets it to False with a warning);
- negative sizes and non-int values are refused; ``bias`` takes PEFT's documented values only
  (``"none"``, ``"all"``, ``"boft_only"``).

A block size or number that does not divide a layer's ``in_features`` (or a butterfly factor
it cannot carry) is refused, naming the module and the sizes, before any layer changes, as
PEFT refuses it (PEFT raises in the middle of the injection).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..boft import MAX_SIZE, BOFTLinear, check_boft_blocks
from ..core.checks import check_bool, check_int_in, check_probability, short_repr
from .config_base import TargetingConfig
from .layer_adapt import Builder
from .surgery import InjectionError

__all__ = ["BOFT_BIAS_MODES", "BOFTConfig"]

BOFT_BIAS_MODES = ("none", "all", "boft_only")


@dataclass
class BOFTConfig(TargetingConfig):
    """Which modules get BOFT, and with what hyperparameters (PEFT's ``BOFTConfig`` fields)."""

    boft_block_size: int = field(
        default=4,
        metadata={
            "help": "The block size b, or 0 to derive it from boft_block_num; it must divide in_features."
        },
    )
    boft_block_num: int = field(
        default=0,
        metadata={
            "help": "The number of blocks per layer, or 0 (default) to derive it from boft_block_size."
        },
    )
    boft_n_butterfly_factor: int = field(
        default=1,
        metadata={"help": "The number of butterfly factors (1: OFT with a scale; m: blocks span b 2^(m-1))."},
    )
    boft_dropout: float = field(
        default=0.0,
        metadata={"help": "PEFT's multiplicative dropout: blocks set to the identity in training."},
    )
    init_weights: bool = field(
        default=True,
        metadata={"help": "True: boft_R = 0, boft_s = 1 (the model starts unchanged); False: random."},
    )
    bias: str = field(
        default="none",
        metadata={"help": 'Which biases train: "none", "all", "boft_only" (the biases of adapted layers).'},
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (types and values); raise naming the field. ``adapt_model`` calls
        it again, so a field set after construction is checked too."""
        self.check_targeting()
        if self.layers_pattern and self.layers_to_transform is None:  # as PEFT's BOFTConfig refuses it
            raise ValueError("layers_pattern is set without layers_to_transform: give the layer indices too")
        size = check_int_in(self.boft_block_size, "boft_block_size", 0, MAX_SIZE)
        num = check_int_in(self.boft_block_num, "boft_block_num", 0, MAX_SIZE)
        if (size == 0) == (num == 0):
            raise ValueError(
                "give exactly one of boft_block_size and boft_block_num, the other 0, since "
                "boft_block_size * boft_block_num == in_features (boft_block_size defaults to 4: pass "
                f"boft_block_size=0 with boft_block_num); got boft_block_size={size}, boft_block_num={num}"
            )
        check_int_in(self.boft_n_butterfly_factor, "boft_n_butterfly_factor", 1, 64)
        check_probability(self.boft_dropout, "boft_dropout")
        check_bool(self.init_weights, "init_weights")
        if self.fan_in_fan_out:
            raise ValueError(
                "fan_in_fan_out=True: BOFT adapts nn.Linear only, which stores its weight as (out, in)"
            )
        bias: object = self.bias  # whatever was assigned: checked here at run time
        if not isinstance(bias, str):
            raise TypeError(f"bias must be one of {BOFT_BIAS_MODES}, got {short_repr(bias)}")
        if bias not in BOFT_BIAS_MODES:
            raise ValueError(f"bias must be one of {BOFT_BIAS_MODES}, got {bias!r}")

    def bias_mode(self) -> str:
        return "adapter_only" if self.bias == "boft_only" else self.bias

    def layer_builder(self, model: nn.Module, names: list[str]) -> Builder:
        """Check every target before anything changes: an ``nn.Linear`` (GPT-2's ``Conv1D`` is
        refused, as PEFT refuses it) whose ``in_features`` the blocks and butterfly factors fit.
        Raises ``InjectionError`` naming the module and the sizes."""
        for name in names:
            module = model.get_submodule(name)
            if not isinstance(module, nn.Linear):
                raise InjectionError(
                    f"BOFT adapts nn.Linear layers only; {name!r} is a {type(module).__name__} "
                    "(PEFT refuses it too); exclude it or target other modules"
                )
            try:
                check_boft_blocks(
                    module.in_features,
                    self.boft_block_size,
                    self.boft_block_num,
                    self.boft_n_butterfly_factor,
                )
            except ValueError as err:
                raise InjectionError(
                    f"BOFT on {name!r} ({module.in_features} -> {module.out_features}): {err}"
                ) from None
        return lambda name, base: BOFTLinear(
            base,
            self.boft_block_size,
            self.boft_block_num,
            self.boft_n_butterfly_factor,
            boft_dropout=self.boft_dropout,
            init_weights=self.init_weights,
        )
