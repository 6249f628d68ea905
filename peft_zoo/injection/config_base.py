"""What every config that selects modules shares: the targeting fields (PEFT's names and
matching rules), rank / alpha patterns, and the checks behind them.

:class:`TargetingConfig` is the base of :class:`~peft_zoo.injection.config.LoraConfig`,
``IA3Config`` and the configs of the newer methods (LoHa, LoKr, VeRA, OFT, AdaLoRA).
A config subclass lists the module types it can adapt in ``target_types``; ``find`` selects
those modules with :func:`~peft_zoo.injection.targets.find_targets`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from torch import nn

from ..core.checks import check_names, check_optional_bool, short_repr
from ..core.regex import check_pattern, match
from .surgery import InjectionError
from .targets import TargetSpec, check_layers, check_layers_pattern, check_spec, find_targets

__all__ = [
    "BIAS_MODES",
    "MAX_RANK",
    "TargetingConfig",
    "check_pattern_map",
    "check_patterns_used",
    "pattern_key",
    "pattern_value",
]

BIAS_MODES = ("none", "all", "lora_only")
MAX_RANK = 1 << 20  # a rank (or rank_pattern value) above this is a mistake, not a model


def key_regex(key: str) -> str:
    return rf"(.*\.)?({key})$"


def pattern_key(patterns: Sequence[str], name: str, what: str = "rank_pattern") -> str | None:
    """The first key of a rank/alpha pattern that matches module ``name``: the key is a
    regex that must match a dotted suffix of the name (PEFT's ``get_pattern_key`` rule), so
    ``"query"`` and ``r"layer\\.3\\.attention\\.self\\.query"`` both work. Matched with a
    time bound; a slow key raises a ``ValueError`` naming ``what``."""
    for key in patterns:
        if match(key_regex(key), name, what):
            return key
    return None


def pattern_value(patterns: Mapping[str, Any], name: str, default: Any, what: str) -> Any:
    """The value of the first key of ``patterns`` (a rank / alpha pattern) matching module
    ``name`` (:func:`pattern_key`), else ``default``."""
    key = pattern_key(list(patterns), name, what)
    return default if key is None else patterns[key]


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
        check_pattern(key_regex(key), what)
        check_value(item, f"{what}[{key!r:.60}]")


@dataclass
class TargetingConfig:
    """The fields that select modules, as PEFT names them; a subclass adds its method's fields.

    ``extra_target_types``: module types the method adapts besides ``nn.Linear`` and GPT-2's
    ``Conv1D`` (LoRA: embeddings and convolutions). ``"all-linear"`` still selects linears only.
    """

    extra_target_types: ClassVar[tuple[type[nn.Module], ...]] = ()

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

    def check_targeting(self) -> None:
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
            extra_types=self.extra_target_types,
        )

    def bias_mode(self) -> str:
        """Which biases train (``"none"``, ``"all"``, ``"adapter_only"``); a config with a
        ``bias`` field overrides this."""
        return "none"

    def finish_layers(self, model: nn.Module, names: list[str]) -> None:
        """Run after every layer is installed (PiSSA rewrites the base weights here, so a
        failing build never leaves a half-changed model); nothing by default."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {unknown}; known: {sorted(known)}")
        return cls(**data)


def check_patterns_used(patterns: Mapping[str, Sequence[str]], names: list[str]) -> None:
    """Refuse pattern keys (``{"rank_pattern": keys, ...}``) that match none of the adapted
    ``names``: a typo or a layer that is not targeted would otherwise be silently ignored."""
    for what, keys in patterns.items():
        unused = [key for key in keys if not any(pattern_key([key], n, what) for n in names)]
        if unused:
            shown = f"{names[:6]}{'...' if len(names) > 6 else ''}"
            raise InjectionError(
                f"{what} keys {unused} match none of the adapted modules (a layer that does not "
                f"exist, or one that is not targeted); adapted: {shown}"
            )
