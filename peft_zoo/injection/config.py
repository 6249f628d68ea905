"""Adapt a model from a config in one call, with Hugging Face PEFT's matching rules.

    config = LoraConfig(rank=8, alpha=16, target_modules=["query", "value"], modules_to_save=["classifier"])
    model, params = adapt_model(model, config)

The fields mirror ``peft.LoraConfig`` / ``peft.IA3Config`` under peft_zoo's names (``rank``
for ``r``, ``alpha`` for ``lora_alpha``...), and :mod:`peft_zoo.interop.peft_config` translates both
ways (``lora_config_from_peft``, ``peft_dict_from_config``), so one config selects the same
modules here and in PEFT (see :mod:`peft_zoo.injection.targets` for the rules). ``adapt_model`` validates everything
first (unknown targets, patterns that name no layer, a rank pattern for a layer that does
not exist) and changes nothing when it raises.

Every field is type-checked when a config is built and again by ``adapt_model`` (a field may
be set later): bools must be ``bool`` (``"no"`` is refused, not read as true), ints ``int``
within bounds, floats finite, names lists of ``str`` (a bare string for ``modules_to_save``
is refused: it would be read one character at a time), patterns ``dict[str regex, number]``.
Regexes must compile and are matched with a time bound (:mod:`peft_zoo.core.regex`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from ..core.base import AdapterModule
from ..core.checks import (
    check_int_in,
    check_positive_float,
    check_positive_int,
    check_probability,
    short_repr,
)
from ..core.regex import fullmatch, time_budget
from ..dora import DoRALinear
from ..fused import FusedLoRALinear
from ..ia3 import IA3Linear
from ..lora import LoRALinear
from ..lora_conv import LoRAConv
from ..lora_embedding import LoRAEmbedding
from .config_base import (
    BIAS_MODES,
    MAX_RANK,
    TargetingConfig,
    check_pattern_map,
    check_patterns_used,
    pattern_key,
    pattern_value,
)
from .layer_adapt import Builder
from .lora_init import apply_lora_init, check_init_lora_weights, check_layer_supports, rewrites_base
from .modules_to_save import ModulesToSave
from .surgery import InjectionError
from .targets import MATCH_BUDGET, TargetSpec, check_spec

__all__ = [
    "MAX_RANK",
    "IA3Config",
    "LoraConfig",
    "ModulesToSave",
    "check_pattern_map",
    "pattern_key",
]


@dataclass
class LoraConfig(TargetingConfig):
    """Which modules get LoRA, and with what hyperparameters.

    ``rank_pattern`` / ``alpha_pattern`` override ``rank`` / ``alpha`` for the modules whose
    name matches a key (see :func:`pattern_key`), e.g. ``{"layer\\.0\\..*query": 16}``.
    ``use_dora=True`` builds :class:`~peft_zoo.dora.DoRALinear` layers (DoRA) instead of LoRA.
    """

    rank: int = field(default=8, metadata={"help": "r: the inner dimension of B A (PEFT's r)."})
    alpha: float | None = field(
        default=None,
        metadata={"help": "The scale numerator (PEFT's lora_alpha); None means alpha = rank (scale 1)."},
    )
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA path's input."})
    rslora: bool = field(default=False, metadata={"help": "Scale by alpha / sqrt(r) instead of alpha / r."})
    bias: str = field(
        default="none",
        metadata={"help": 'Which biases train: "none", "all", "lora_only" (the biases of adapted layers).'},
    )
    rank_pattern: dict[str, int] = field(
        default_factory=dict, metadata={"help": "Name regex -> rank, for the modules it matches."}
    )
    alpha_pattern: dict[str, float] = field(
        default_factory=dict, metadata={"help": "Name regex -> alpha, for the modules it matches."}
    )
    target_parts: dict[str, list[bool]] = field(
        default_factory=dict,
        metadata={
            "help": 'Name regex -> enabled slices of a fused output, e.g. {"c_attn": [True, False, True]}: '
            "LoRA on q and v of GPT-2's fused projection only (FusedLoRALinear). Not a PEFT field."
        },
    )
    use_dora: bool = field(
        default=False,
        metadata={"help": "DoRA: a learned magnitude per output feature (DoRALinear), PEFT's use_dora."},
    )
    init_lora_weights: bool | str = field(
        default=True,
        metadata={
            "help": 'True (B = 0), False (random), "gaussian", "pissa", "pissa_niter_K" or "olora" '
            "(these two rewrite the base weights); PEFT's values."
        },
    )

    # Besides nn.Linear and Conv1D, LoRA adapts embeddings and convolutions (by name, never "all-linear").
    extra_target_types: ClassVar[tuple[type[nn.Module], ...]] = (
        nn.Embedding,
        nn.Conv1d,
        nn.Conv2d,
        nn.Conv3d,
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (types and values); raise naming the field. ``adapt_model`` calls
        it again, so a field set after construction is checked too."""
        self.check_targeting()
        check_positive_int(self.rank, "rank")
        check_int_in(self.rank, "rank", 1, MAX_RANK)
        for flag in ("use_dora", "rslora"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(
                    f"{flag} must be a bool (True or False), got {short_repr(getattr(self, flag))}"
                )
        init = check_init_lora_weights(self.init_lora_weights)
        if init is not True and self.target_parts:
            raise ValueError(f"init_lora_weights={init!r} with target_parts is not implemented")
        if self.use_dora and self.target_parts:
            raise ValueError(
                "use_dora=True with target_parts: DoRA on part of a fused projection is not implemented "
                "(DoRA normalises whole weight rows; adapt the whole layer or drop target_parts)"
            )
        if self.alpha is not None:
            check_positive_float(self.alpha, "alpha")
        check_probability(self.dropout, "dropout")
        bias: object = self.bias  # whatever was assigned: checked here at run time
        if not isinstance(bias, str):
            raise TypeError(f"bias must be one of {BIAS_MODES}, got {short_repr(bias)}")
        if bias not in BIAS_MODES:
            raise ValueError(f"bias must be one of {BIAS_MODES}, got {bias!r}")
        check_pattern_map(self.rank_pattern, "rank_pattern", lambda v, n: check_int_in(v, n, 1, MAX_RANK))
        check_pattern_map(self.alpha_pattern, "alpha_pattern", check_positive_float)
        check_pattern_map(self.target_parts, "target_parts", lambda v, n: None)
        parts: Mapping[str, object] = self.target_parts  # as assigned: checked here at run time
        for key, flags in parts.items():
            if not isinstance(flags, list) or not all(isinstance(f, bool) for f in flags) or not any(flags):
                raise ValueError(
                    f"target_parts[{key!r}] must be a list of booleans with one True, got {flags!r}"
                )

    def bias_mode(self) -> str:
        return "adapter_only" if self.bias == "lora_only" else self.bias

    def layer_builder(self, model: nn.Module, names: list[str]) -> Builder:
        """Check the patterns and resolve every layer's rank, alpha and fused parts (all regex
        matching, time-bounded) and the initialisation it can take, before anything changes."""
        init = check_init_lora_weights(self.init_lora_weights)
        with time_budget(MATCH_BUDGET):
            check_patterns_used(
                {"rank_pattern": list(self.rank_pattern), "alpha_pattern": list(self.alpha_pattern)}
                | {"target_parts": list(self.target_parts)},
                names,
            )
            layer_args = {
                n: (*self.rank_alpha(n), pattern_key(list(self.target_parts), n, "target_parts"))
                for n in names
            }
        for n in names:
            check_layer_supports(init, model.get_submodule(n), self.use_dora, n, layer_args[n][0])
        return lambda name, base: self._build(base, *layer_args[name], init)

    def _build(
        self, base: nn.Module, rank: int, alpha: float, parts_key: str | None, init: bool | str
    ) -> AdapterModule:
        options: dict[str, Any] = {"dropout": self.dropout, "rslora": self.rslora}
        layer: AdapterModule
        if isinstance(base, nn.Embedding):
            # No dropout on ids: PEFT builds one for embeddings but never applies it either.
            layer = LoRAEmbedding(base, rank, alpha, rslora=self.rslora)
        elif isinstance(base, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            layer = LoRAConv(base, rank, alpha, **options)
        elif parts_key is not None:
            layer = FusedLoRALinear(
                base,
                rank,
                alpha,
                parts=self.target_parts[parts_key],
                fan_in_fan_out=self.fan_in_fan_out,
                **options,
            )
        else:
            kind = DoRALinear if self.use_dora else LoRALinear
            layer = kind(base, rank, alpha, fan_in_fan_out=self.fan_in_fan_out, **options)
        if not rewrites_base(init):
            apply_lora_init(layer, init)  # only the new factors: safe before installing
        return layer

    def finish_layers(self, model: nn.Module, names: list[str]) -> None:
        """PiSSA / OLoRA: rewrite each installed layer's base weight (after every build succeeded)."""
        init = check_init_lora_weights(self.init_lora_weights)
        if rewrites_base(init):
            for n in names:
                apply_lora_init(model.get_submodule(n), init)

    def rank_alpha(self, name: str) -> tuple[int, float]:
        """The ``(rank, alpha)`` module ``name`` gets. Without ``alpha`` anywhere, alpha =
        that module's rank (scale 1), as :class:`~peft_zoo.LoRALinear` defaults."""
        rank: int = pattern_value(self.rank_pattern, name, self.rank, "rank_pattern")
        alpha = pattern_value(self.alpha_pattern, name, self.alpha, "alpha_pattern")
        return rank, float(rank if alpha is None else alpha)


@dataclass
class IA3Config(TargetingConfig):
    """Which modules get IA³ scaling vectors. ``feedforward_modules`` (a subset of the targets,
    same forms as ``target_modules``) scale their *input*, as the IA³ paper does for the
    feed-forward down projection; the others scale their output (keys, values)."""

    feedforward_modules: TargetSpec | None = field(
        default=None,
        metadata={
            "help": "Targets (same forms as target_modules) that scale their input, as IA³ does for the "
            "feed-forward down projection; the others scale their output."
        },
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (types and values); raise naming the field."""
        self.check_targeting()
        check_spec(self.feedforward_modules, "feedforward_modules", optional=True)

    def layer_builder(self, model: nn.Module, names: list[str]) -> Builder:
        """Decide which targets take the feed-forward form (refusing feedforward_modules that
        match none of them) before anything changes."""
        with time_budget(MATCH_BUDGET):
            feedforward = {n: self.is_feedforward(n) for n in names}
        ff = self.feedforward_modules
        if ff and not any(feedforward.values()):
            raise InjectionError(
                f"feedforward_modules={ff!r} matches none of the targeted modules {names[:6]}"
            )
        return lambda name, base: IA3Linear(
            base, feedforward=feedforward[name], fan_in_fan_out=self.fan_in_fan_out
        )

    def is_feedforward(self, name: str) -> bool:
        ff = self.feedforward_modules
        if not ff:
            return False
        if isinstance(ff, str):
            return fullmatch(ff, name, "feedforward_modules") is not None
        return name in ff or any(name.endswith(f".{f}") for f in ff)
