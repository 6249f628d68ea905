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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from torch import nn

from ..core.base import AdapterModule
from ..core.checks import (
    check_int_in,
    check_names,
    check_optional_bool,
    check_positive_float,
    check_positive_int,
    check_probability,
    short_repr,
)
from ..core.regex import check_pattern, fullmatch, match, time_budget
from ..dora import DoRALinear
from ..fused import FusedLoRALinear
from ..ia3 import IA3Linear
from ..lora import LoRALinear
from .bottleneck_config import BottleneckConfig
from .bottleneck_placement import adapt_bottleneck
from .modules_to_save import ModulesToSave, modules_to_save_names, wrap_modules_to_save
from .prefix_model import PrefixTuningConfig, adapt_prefix_tuning
from .prompt_model import PromptTuningConfig, adapt_prompt_tuning
from .ptuning_config import PromptEncoderConfig, adapt_p_tuning
from .surgery import InjectionError, mark_only_adapters_trainable, replace_linears
from .targets import (
    MATCH_BUDGET,
    TargetSpec,
    check_layers,
    check_layers_pattern,
    check_spec,
    find_targets,
)

__all__ = [
    "MAX_RANK",
    "IA3Config",
    "LoraConfig",
    "ModulesToSave",
    "adapt_model",
    "check_pattern_map",
    "pattern_key",
]

_BIAS_MODES = ("none", "all", "lora_only")
MAX_RANK = 1 << 20  # a rank (or rank_pattern value) above this is a mistake, not a model


def _key_regex(key: str) -> str:
    return rf"(.*\.)?({key})$"


def pattern_key(patterns: Sequence[str], name: str, what: str = "rank_pattern") -> str | None:
    """The first key of a rank/alpha pattern that matches module ``name``: the key is a
    regex that must match a dotted suffix of the name (PEFT's ``get_pattern_key`` rule), so
    ``"query"`` and ``r"layer\\.3\\.attention\\.self\\.query"`` both work. Matched with a
    time bound; a slow key raises a ``ValueError`` naming ``what``."""
    for key in patterns:
        if match(_key_regex(key), name, what):
            return key
    return None


def check_pattern_map(value: object, what: str, check_value: Callable[[object, str], object]) -> None:
    """Refuse, naming ``what``, a rank/alpha pattern that is not a dict of regex (a ``str``
    that compiles, alone and inside PEFT's suffix rule) -> a value ``check_value`` accepts."""
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{what} must be a dict of regex -> value, got {short_repr(value)} of type {type(value).__name__}"
        )
    for key, item in value.items():
        if not isinstance(key, str):
            raise TypeError(
                f"{what} keys must be regexes (str), got {short_repr(key)} of type {type(key).__name__}"
            )
        check_pattern(key, what)
        check_pattern(_key_regex(key), what)
        check_value(item, f"{what}[{key!r:.60}]")


@dataclass
class _TargetingConfig:
    target_modules: TargetSpec | None = field(
        default=None,
        metadata={"help": 'The modules to adapt: names (exact or dotted suffix), a regex, or "all-linear".'},
    )
    exclude_modules: TargetSpec | None = field(
        default=None, metadata={"help": "Modules never adapted, in the same forms as target_modules."}
    )
    layers_to_transform: int | list[int] | None = field(
        default=None,
        metadata={"help": "Adapt only the layers with these indices (with a list of target_modules only)."},
    )
    layers_pattern: str | list[str] | None = field(
        default=None,
        metadata={
            "help": 'The path component before the layer index ("layer", "h"), for layers_to_transform.'
        },
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained and saved in full (a classifier head)."}
    )
    fan_in_fan_out: bool | None = field(
        default=None,
        metadata={
            "help": "Base weights are stored (in, out), as in GPT-2's Conv1D; None: infer it per layer."
        },
    )

    def _check_targeting(self) -> None:
        """Type and value of every targeting field; raises naming the field."""
        if self.target_modules is None:
            raise ValueError("target_modules is required: module names, a regex, or 'all-linear'")
        check_spec(self.target_modules, "target_modules")
        if isinstance(self.target_modules, (list, tuple, set, frozenset)) and not self.target_modules:
            raise ValueError("target_modules is empty")
        check_spec(self.exclude_modules, "exclude_modules", optional=True)
        check_layers(self.layers_to_transform)
        check_layers_pattern(self.layers_pattern)
        if self.modules_to_save is not None:
            check_names(self.modules_to_save, "modules_to_save")
        check_optional_bool(self.fan_in_fan_out, "fan_in_fan_out")
        if self.layers_to_transform is not None and isinstance(self.target_modules, str):
            raise ValueError(
                "layers_to_transform needs target_modules as a list of names; with a regex, put the "
                "layer numbers into the pattern"
            )

    def find(self, model: nn.Module) -> list[str]:
        """The module names this config adapts in ``model``."""
        return find_targets(
            model,
            check_spec(self.target_modules, "target_modules"),  # a field may have been set to None since
            exclude_modules=self.exclude_modules,
            layers_to_transform=self.layers_to_transform,
            layers_pattern=self.layers_pattern,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {unknown}; known: {sorted(known)}")
        return cls(**data)


@dataclass
class LoraConfig(_TargetingConfig):
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

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (types and values); raise naming the field. ``adapt_model`` calls
        it again, so a field set after construction is checked too."""
        self._check_targeting()
        check_positive_int(self.rank, "rank")
        check_int_in(self.rank, "rank", 1, MAX_RANK)
        for flag in ("use_dora", "rslora"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(
                    f"{flag} must be a bool (True or False), got {short_repr(getattr(self, flag))}"
                )
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
            raise TypeError(f"bias must be one of {_BIAS_MODES}, got {short_repr(bias)}")
        if bias not in _BIAS_MODES:
            raise ValueError(f"bias must be one of {_BIAS_MODES}, got {bias!r}")
        check_pattern_map(self.rank_pattern, "rank_pattern", lambda v, n: check_int_in(v, n, 1, MAX_RANK))
        check_pattern_map(self.alpha_pattern, "alpha_pattern", check_positive_float)
        check_pattern_map(self.target_parts, "target_parts", lambda v, n: None)
        parts: Mapping[str, object] = self.target_parts  # as assigned: checked here at run time
        for key, flags in parts.items():
            if not isinstance(flags, list) or not all(isinstance(f, bool) for f in flags) or not any(flags):
                raise ValueError(
                    f"target_parts[{key!r}] must be a list of booleans with one True, got {flags!r}"
                )

    def rank_alpha(self, name: str) -> tuple[int, float]:
        """The ``(rank, alpha)`` module ``name`` gets. Without ``alpha`` anywhere, alpha =
        that module's rank (scale 1), as :class:`~peft_zoo.LoRALinear` defaults."""
        r_key = pattern_key(list(self.rank_pattern), name, "rank_pattern")
        rank = self.rank_pattern[r_key] if r_key is not None else self.rank
        a_key = pattern_key(list(self.alpha_pattern), name, "alpha_pattern")
        alpha = self.alpha_pattern[a_key] if a_key is not None else self.alpha
        return rank, float(rank if alpha is None else alpha)


@dataclass
class IA3Config(_TargetingConfig):
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
        self._check_targeting()
        check_spec(self.feedforward_modules, "feedforward_modules", optional=True)

    def is_feedforward(self, name: str) -> bool:
        ff = self.feedforward_modules
        if not ff:
            return False
        if isinstance(ff, str):
            return fullmatch(ff, name, "feedforward_modules") is not None
        return name in ff or any(name.endswith(f".{f}") for f in ff)


def _check_patterns(config: LoraConfig, names: list[str]) -> None:
    for what, patterns in (
        ("rank_pattern", config.rank_pattern),
        ("alpha_pattern", config.alpha_pattern),
        ("target_parts", config.target_parts),
    ):
        unused = [key for key in patterns if not any(pattern_key([key], n, what) for n in names)]
        if unused:
            raise InjectionError(
                f"{what} keys {unused} match none of the adapted modules (a layer that does not "
                f"exist, or one that is not targeted); adapted: {names[:6]}{'...' if len(names) > 6 else ''}"
            )


Builder = Callable[[str, nn.Linear], AdapterModule]  # (module name, its Linear) -> the adapter layer


def _lora_builder(config: LoraConfig, names: list[str]) -> Builder:
    """Check the patterns and resolve every layer's rank, alpha and fused parts (all regex
    matching, time-bounded, before anything changes); return the layer builder."""
    with time_budget(MATCH_BUDGET):
        _check_patterns(config, names)
        layer_args = {
            n: (*config.rank_alpha(n), pattern_key(list(config.target_parts), n, "target_parts"))
            for n in names
        }

    def build(name: str, base: nn.Linear) -> AdapterModule:
        rank, alpha, parts_key = layer_args[name]
        if parts_key is not None:
            return FusedLoRALinear(
                base,
                rank,
                alpha,
                parts=config.target_parts[parts_key],
                dropout=config.dropout,
                rslora=config.rslora,
                fan_in_fan_out=config.fan_in_fan_out,
            )
        return (DoRALinear if config.use_dora else LoRALinear)(
            base,
            rank,
            alpha,
            dropout=config.dropout,
            rslora=config.rslora,
            fan_in_fan_out=config.fan_in_fan_out,
        )

    return build


def _ia3_builder(config: IA3Config, names: list[str]) -> Builder:
    """Decide which targets take the feed-forward form (refusing feedforward_modules that match
    none of them) before anything changes; return the layer builder."""
    with time_budget(MATCH_BUDGET):
        feedforward = {n: config.is_feedforward(n) for n in names}

    def build(name: str, base: nn.Linear) -> AdapterModule:
        return IA3Linear(base, feedforward=feedforward[name], fan_in_fan_out=config.fan_in_fan_out)

    ff = config.feedforward_modules
    if ff and not any(feedforward.values()):
        raise InjectionError(f"feedforward_modules={ff!r} matches none of the targeted modules {names[:6]}")
    return build


def adapt_model(
    model: nn.Module,
    config: LoraConfig
    | IA3Config
    | PrefixTuningConfig
    | PromptTuningConfig
    | PromptEncoderConfig
    | BottleneckConfig,
) -> tuple[nn.Module, list[nn.Parameter]]:
    """Adapt ``model`` in place as ``config`` says and freeze everything else; return ``(model, trainable
    parameters)``: the adapter tensors, the ``modules_to_save`` copies, the biases ``config.bias`` asks for.
    Raises ``InjectionError`` (nothing changed) when a target, ``rank_pattern`` / ``alpha_pattern`` key or
    ``modules_to_save`` entry names nothing. Prompt / P-tuning / prefix configs return a new wrapper
    (:class:`~peft_zoo.injection.prompt_model.PromptTuningModel`), not ``model``; a ``BottleneckConfig``
    places AdapterHub's bottleneck adapters (:mod:`peft_zoo.injection.bottleneck_placement`).
    """
    if isinstance(config, BottleneckConfig):  # SeqBnConfig, DoubleSeqBnConfig, ParBnConfig too
        return adapt_bottleneck(model, config)
    if isinstance(config, PromptTuningConfig):
        return adapt_prompt_tuning(model, config)
    if isinstance(config, PromptEncoderConfig):
        return adapt_p_tuning(model, config)
    if isinstance(config, PrefixTuningConfig):
        return adapt_prefix_tuning(model, config)
    if not isinstance(config, (LoraConfig, IA3Config)):
        raise TypeError(
            f"config must be a peft_zoo config (LoraConfig, IA3Config, ...), got {type(config).__name__}"
        )
    config.validate()  # again: a field may have been set after construction
    names = config.find(model)
    save_names = modules_to_save_names(model, config.modules_to_save) if config.modules_to_save else []
    clash = sorted({n for n in names for s in save_names if n == s or n.startswith(s + ".")})
    if clash:
        raise InjectionError(f"modules {clash} are both adapted and in modules_to_save; choose one")
    if isinstance(config, LoraConfig):
        build, method = _lora_builder(config, names), "adapt_model(LoraConfig)"
    else:
        build, method = _ia3_builder(config, names), "adapt_model(IA3Config)"
    replace_linears(model, names, build, method)
    wrap_modules_to_save(model, save_names)  # their copies train: mark_only_adapters_trainable
    bias = config.bias if isinstance(config, LoraConfig) else "none"
    params = mark_only_adapters_trainable(model, bias="adapter_only" if bias == "lora_only" else bias)
    return model, params
