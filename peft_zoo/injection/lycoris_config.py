"""Configs for the LyCORIS methods, LoHa and LoKr, with Hugging Face PEFT's field names.

    config = LoHaConfig(r=8, alpha=16, target_modules=["query", "value"], rank_pattern={"layer\\.0\\..*": 4})
    model, params = adapt_model(model, config)

Each selected ``nn.Linear`` (out, in) becomes a :class:`~peft_zoo.loha.LoHaLinear` (update
``ΔW = alpha/r * (W1a W1b) ⊙ (W2a W2b)``, factors ``(out, r)`` and ``(r, in)``) or a
:class:`~peft_zoo.lokr.LoKrLinear` (``ΔW = alpha/r * W1 ⊗ W2``, ``W1 (a, c)``, ``W2 (b, d)``,
``out = a b``, ``in = c d``). Field names and defaults are PEFT 0.21's ``peft.LoHaConfig`` /
``peft.LoKrConfig`` (``r``, ``alpha``, ``rank_dropout``, ``module_dropout``, ``init_weights``,
``rank_pattern``, ``alpha_pattern``; LoKr adds ``decompose_both``, ``decompose_factor``,
``rank_dropout_scale``), so one config means the same layers and the same tensors in both.

A module the targets name that is no ``nn.Linear`` (GPT-2's ``Conv1D``, a ``LayerNorm``, an
embedding, a whole block) raises ``InjectionError`` naming it, as PEFT raises for it; it is
never silently skipped. Differences from PEFT, all refusals before anything changes: only
``nn.Linear`` layers are adapted (PEFT also adapts ``nn.Conv1d`` / ``nn.Conv2d``, so
``use_effective_conv2d`` is not a field here); a ``rank_pattern`` / ``alpha_pattern`` key that
matches no adapted layer is an error, where PEFT ignores it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..core.base import AdapterModule
from ..core.checks import check_bool, check_int_in, check_positive_float, check_probability
from ..core.regex import time_budget
from ..loha import LoHaLinear
from ..lokr import LoKrLinear, check_decompose_factor, check_init_weights
from .config_base import MAX_RANK, TargetingConfig, check_pattern_map, check_patterns_used, pattern_value
from .layer_adapt import Builder
from .surgery import InjectionError, adapter_owned
from .targets import ALL_LINEAR, MATCH_BUDGET, check_spec, target_matches

__all__ = ["LoHaConfig", "LoKrConfig", "LycorisConfig"]


@dataclass
class LycorisConfig(TargetingConfig):
    """What LoHa and LoKr share: rank, alpha, the two dropouts and the per-layer patterns.

    ``rank_pattern`` / ``alpha_pattern`` override ``r`` / ``alpha`` for the modules whose name
    matches a key (a regex matching a dotted suffix of the name, PEFT's rule; see
    :func:`~peft_zoo.injection.config_base.pattern_key`).
    """

    r: int = field(default=8, metadata={"help": "The rank of each low-rank factor (PEFT's r)."})
    alpha: float = field(default=8, metadata={"help": "The scale numerator: ΔW is scaled by alpha / r."})
    rank_dropout: float = field(
        default=0.0, metadata={"help": "In training, drop each output row of ΔW with this probability."}
    )
    module_dropout: float = field(
        default=0.0, metadata={"help": "In training, skip the whole update for a step with this probability."}
    )
    rank_pattern: dict[str, int] = field(
        default_factory=dict, metadata={"help": "Name regex -> r, for the modules it matches."}
    )
    alpha_pattern: dict[str, float] = field(
        default_factory=dict, metadata={"help": "Name regex -> alpha, for the modules it matches."}
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (types and values); raise naming the field. ``adapt_model`` calls
        it again, so a field set after construction is checked too."""
        self.check_targeting()
        if self.layers_pattern and self.layers_to_transform is None:  # as PEFT refuses it
            raise ValueError("layers_pattern is set without layers_to_transform: give the layer indices too")
        check_int_in(self.r, "r", 1, MAX_RANK)
        check_positive_float(self.alpha, "alpha")
        check_probability(self.rank_dropout, "rank_dropout")
        check_probability(self.module_dropout, "module_dropout")
        check_pattern_map(self.rank_pattern, "rank_pattern", lambda v, n: check_int_in(v, n, 1, MAX_RANK))
        check_pattern_map(self.alpha_pattern, "alpha_pattern", check_positive_float)
        self.check_method_fields()

    def check_method_fields(self) -> None:
        """The fields a subclass adds; raise naming the field."""

    def rank_alpha(self, name: str) -> tuple[int, float]:
        """The ``(r, alpha)`` module ``name`` gets: the first matching pattern key, else the
        config's ``r`` / ``alpha`` (each looked up on its own, as PEFT does)."""
        rank = pattern_value(self.rank_pattern, name, self.r, "rank_pattern")
        alpha = pattern_value(self.alpha_pattern, name, self.alpha, "alpha_pattern")
        return int(rank), float(alpha)

    def find(self, model: nn.Module) -> list[str]:
        """The ``nn.Linear`` names this config adapts in ``model``. A module the targets name that
        is no ``nn.Linear`` (GPT-2's ``Conv1D``, a ``LayerNorm``, a whole block) raises
        ``InjectionError`` naming it, as PEFT refuses it, instead of being skipped."""
        spec = check_spec(self.target_modules, "target_modules")
        if not (isinstance(spec, str) and spec.lower() == ALL_LINEAR):
            owned = adapter_owned(model)
            with time_budget(MATCH_BUDGET):
                named = [
                    n
                    for n, m in model.named_modules()
                    if n
                    and id(m) not in owned
                    and not isinstance(m, (nn.Linear, AdapterModule))
                    and target_matches(
                        n,
                        spec,
                        exclude_modules=self.exclude_modules,
                        layers_to_transform=self.layers_to_transform,
                        layers_pattern=self.layers_pattern,
                    )
                ]
            self.refuse_non_linear(model, named)
        return super().find(model)

    def refuse_non_linear(self, model: nn.Module, names: list[str]) -> None:
        """Raise ``InjectionError`` listing every module of ``names`` that is not an ``nn.Linear``."""
        refused = [
            f"{n!r} is a {type(model.get_submodule(n)).__name__}"
            for n in names
            if not isinstance(model.get_submodule(n), nn.Linear)
        ]
        if refused:
            raise InjectionError(
                f"{type(self).__name__} adapts nn.Linear layers only (PEFT refuses GPT-2's Conv1D for "
                f"LoHa / LoKr too; exclude these or target others): "
                + "; ".join(refused[:8])
                + (f" and {len(refused) - 8} more" if len(refused) > 8 else "")
                + ". The model was not changed."
            )

    def layer_builder(self, model: nn.Module, names: list[str]) -> Builder:
        """Check every target's type and the patterns and resolve each layer's ``(r, alpha)``
        (regex matching time-bounded) before anything changes. The returned builder re-raises a
        layer's own refusal with the module's name (``adapt_model`` builds every layer before
        installing any, so that too leaves the model unchanged)."""
        self.refuse_non_linear(model, names)
        if self.fan_in_fan_out:
            raise ValueError("fan_in_fan_out=True: LoHa / LoKr adapt nn.Linear layers, which store (out, in)")
        with time_budget(MATCH_BUDGET):
            check_patterns_used(
                {"rank_pattern": list(self.rank_pattern), "alpha_pattern": list(self.alpha_pattern)}, names
            )
            settings = {n: self.rank_alpha(n) for n in names}
        return lambda name, base: self._named_build(name, base, *settings[name])

    def _named_build(self, name: str, base: nn.Module, rank: int, alpha: float) -> AdapterModule:
        try:
            return self.build_layer(base, rank, alpha)
        except (TypeError, ValueError) as error:  # the layer's own refusal, with the module's name
            raise type(error)(f"{name!r} (r={rank}, alpha={alpha:g}): {error}") from error

    def build_layer(self, base: nn.Module, rank: int, alpha: float) -> AdapterModule:
        """The adapter layer around ``base`` (an ``nn.Linear``) with this rank and alpha."""
        raise NotImplementedError


@dataclass
class LoHaConfig(LycorisConfig):
    """Which ``nn.Linear`` layers get LoHa (:class:`~peft_zoo.loha.LoHaLinear`), as
    ``peft.LoHaConfig``: factors ``hada_w1_a, hada_w2_a (out, r)``, ``hada_w1_b, hada_w2_b
    (r, in)``; the kept rows under rank dropout are always rescaled (PEFT's LoHa)."""

    init_weights: bool = field(
        default=True,
        metadata={"help": "True: hada_w2_b = 0, so the layer starts as its base; False: all random (tests)."},
    )

    def check_method_fields(self) -> None:
        check_bool(self.init_weights, "init_weights")

    def build_layer(self, base: nn.Module, rank: int, alpha: float) -> AdapterModule:
        return LoHaLinear(
            base,
            rank,
            alpha,
            rank_dropout=self.rank_dropout,
            module_dropout=self.module_dropout,
            init_weights=self.init_weights,
        )


@dataclass
class LoKrConfig(LycorisConfig):
    """Which ``nn.Linear`` layers get LoKr (:class:`~peft_zoo.lokr.LoKrLinear`), as
    ``peft.LoKrConfig``. ``out = a b`` and ``in = c d`` are split by
    :func:`~peft_zoo.lokr.factorization` with ``decompose_factor``; ``W2 (b, d)`` is stored as
    ``lokr_w2_a (b, r) @ lokr_w2_b (r, d)`` when ``r < max(b, d) / 2``, ``W1 (a, c)`` likewise
    only with ``decompose_both``."""

    decompose_both: bool = field(
        default=False, metadata={"help": "Also store W1 as a rank-r product when r is small next to it."}
    )
    decompose_factor: int = field(
        default=-1,
        metadata={
            "help": "How out / in are split into Kronecker factors: -1 (near the square root) or an int >= 1."
        },
    )
    rank_dropout_scale: bool = field(
        default=False, metadata={"help": "Under rank_dropout, rescale the kept rows by 1 / (fraction kept)."}
    )
    init_weights: bool | str = field(
        default=True,
        metadata={"help": 'True: W1 = 0 (starts as the base); "lycoris": W2 = 0; False: all random (tests).'},
    )

    def check_method_fields(self) -> None:
        check_bool(self.decompose_both, "decompose_both")
        check_decompose_factor(self.decompose_factor)
        check_bool(self.rank_dropout_scale, "rank_dropout_scale")
        check_init_weights(self.init_weights, "init_weights")

    def build_layer(self, base: nn.Module, rank: int, alpha: float) -> AdapterModule:
        return LoKrLinear(
            base,
            rank,
            alpha,
            decompose_both=self.decompose_both,
            decompose_factor=self.decompose_factor,
            rank_dropout=self.rank_dropout,
            module_dropout=self.module_dropout,
            rank_dropout_scale=self.rank_dropout_scale,
            init_weights=self.init_weights,
        )
