"""``OFTConfig``: orthogonal finetuning on a real model through ``adapt_model``, with Hugging
Face PEFT's fields.

    model, params = adapt_model(model, OFTConfig(oft_block_size=8, target_modules=["q_proj", "v_proj"]))

The fields and defaults are ``peft.OFTConfig``'s (PEFT 0.21.2). Every targeted ``nn.Linear``
becomes an :class:`~peft_zoo.oft.OFTLinear`: its input is rotated by a block-diagonal
orthogonal matrix of ``r`` blocks of size ``oft_block_size`` (``r * oft_block_size ==
in_features``; give exactly one, the other 0). Trainable: ``oft_R (r, b (b - 1) / 2)`` per
layer (``(1, ...)`` with ``block_share``).

Differences from PEFT, on purpose:

- a block size (or ``r``) that does not divide a layer's ``in_features`` is refused, naming
  the module and the sizes, before any layer changes; PEFT silently picks another block size
  for that layer (with a warning), so its adapter would not have the shape the config says;
- GPT-2's ``Conv1D`` is refused, as PEFT refuses it (``TypeError``: OFT wraps ``nn.Linear``);
  ``fan_in_fan_out=True`` is refused (PEFT resets it to False with a warning);
- ``bias`` takes PEFT's documented values only (``"none"``, ``"all"``, ``"oft_only"``).

``module_dropout`` is checked and kept, and, as in PEFT 0.21.2, not applied by linear layers
(PEFT builds its multiplicative dropout but its ``Linear`` never calls it), so outputs agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..core.checks import (
    check_bool,
    check_int_in,
    check_positive_float,
    check_positive_int,
    check_probability,
    short_repr,
)
from ..oft import OFTLinear, check_oft_blocks
from .config_base import TargetingConfig
from .layer_adapt import Builder
from .surgery import InjectionError

__all__ = ["OFT_BIAS_MODES", "OFTConfig"]

OFT_BIAS_MODES = ("none", "all", "oft_only")
MAX_BLOCKS = 2**62  # r / oft_block_size above this is a mistake, not a model


@dataclass
class OFTConfig(TargetingConfig):
    """Which modules get OFT, and with what hyperparameters (PEFT's ``OFTConfig`` fields)."""

    r: int = field(
        default=0,
        metadata={
            "help": "The number of orthogonal blocks per layer, or 0 to derive it from oft_block_size."
        },
    )
    oft_block_size: int = field(
        default=32,
        metadata={"help": "The block size b, or 0 to derive it from r; it must divide every in_features."},
    )
    module_dropout: float = field(
        default=0.0,
        metadata={
            "help": "PEFT's multiplicative block dropout; checked, and (as in PEFT) unused by linears."
        },
    )
    coft: bool = field(
        default=False, metadata={"help": "Constrained OFT: keep each block's Q within eps / sqrt(n)."}
    )
    eps: float = field(default=6e-5, metadata={"help": "COFT's radius (only used with coft=True)."})
    block_share: bool = field(default=False, metadata={"help": "One block shared by all r positions."})
    use_cayley_neumann: bool = field(
        default=True,
        metadata={
            "help": "The truncated Neumann series (fast, approximate) instead of the exact Cayley transform."
        },
    )
    num_cayley_neumann_terms: int = field(
        default=5, metadata={"help": "How many terms of the Neumann series (with use_cayley_neumann)."}
    )
    init_weights: bool = field(
        default=True,
        metadata={"help": "True: oft_R = 0 (R = I, the model starts unchanged); False: N(0, 0.1^2)."},
    )
    bias: str = field(
        default="none",
        metadata={"help": 'Which biases train: "none", "all", "oft_only" (the biases of adapted layers).'},
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (types and values); raise naming the field. ``adapt_model`` calls
        it again, so a field set after construction is checked too."""
        self.check_targeting()
        r = check_int_in(self.r, "r", 0, MAX_BLOCKS)
        block = check_int_in(self.oft_block_size, "oft_block_size", 0, MAX_BLOCKS)
        if (r == 0) == (block == 0):
            raise ValueError(
                "give exactly one of r (the number of blocks) and oft_block_size (their size), the "
                "other 0, since r * oft_block_size == in_features (oft_block_size defaults to 32: pass "
                f"oft_block_size=0 with r); got r={r}, oft_block_size={block}"
            )
        check_probability(self.module_dropout, "module_dropout")
        for flag in ("coft", "block_share", "use_cayley_neumann", "init_weights"):
            check_bool(getattr(self, flag), flag)
        check_positive_float(self.eps, "eps")
        check_positive_int(self.num_cayley_neumann_terms, "num_cayley_neumann_terms")
        if self.fan_in_fan_out:
            raise ValueError(
                "fan_in_fan_out=True: OFT adapts nn.Linear only, which stores its weight as (out, in)"
            )
        bias: object = self.bias  # whatever was assigned: checked here at run time
        if not isinstance(bias, str):
            raise TypeError(f"bias must be one of {OFT_BIAS_MODES}, got {short_repr(bias)}")
        if bias not in OFT_BIAS_MODES:
            raise ValueError(f"bias must be one of {OFT_BIAS_MODES}, got {bias!r}")

    def bias_mode(self) -> str:
        return "adapter_only" if self.bias == "oft_only" else self.bias

    def layer_builder(self, model: nn.Module, names: list[str]) -> Builder:
        """Check every target before anything changes: an ``nn.Linear`` (GPT-2's ``Conv1D`` is
        refused, as PEFT refuses it) whose ``in_features`` the block size (or ``r``) divides.
        Raises ``InjectionError`` naming the module and the sizes."""
        for name in names:
            module = model.get_submodule(name)
            if not isinstance(module, nn.Linear):
                raise InjectionError(
                    f"OFT adapts nn.Linear layers only; {name!r} is a {type(module).__name__} "
                    "(PEFT refuses it too); exclude it or target other modules"
                )
            try:
                check_oft_blocks(module.in_features, self.r, self.oft_block_size)
            except ValueError as err:
                raise InjectionError(
                    f"OFT on {name!r} ({module.in_features} -> {module.out_features}): {err} "
                    "(PEFT would silently use another block size for this layer; peft_zoo refuses)"
                ) from None
        return lambda name, base: OFTLinear(
            base,
            self.r,
            self.oft_block_size,
            coft=self.coft,
            eps=self.eps,
            block_share=self.block_share,
            use_cayley_neumann=self.use_cayley_neumann,
            num_cayley_neumann_terms=self.num_cayley_neumann_terms,
            init_weights=self.init_weights,
        )
