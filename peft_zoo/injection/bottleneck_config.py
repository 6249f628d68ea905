"""Bottleneck adapters on transformers models, configured with AdapterHub's field names.

    config = SeqBnConfig(reduction_factor=16)             # or BottleneckConfig.preset("pfeiffer")
    model, params = adapt_bottleneck(model, config)        # bottleneck_placement; adapt_model does the same

The fields are those of AdapterHub's ``BnConfig`` (``adapters`` 1.3), so a config written by
either library means the same adapter in both (:mod:`peft_zoo.interop.adapterhub` reads and
writes AdapterHub's files). The presets are subclasses with AdapterHub's defaults and names:
:class:`SeqBnConfig` (``"seq_bn"`` / ``"pfeiffer"``), :class:`DoubleSeqBnConfig`
(``"double_seq_bn"`` / ``"houlsby"``), :class:`ParBnConfig` (``"par_bn"`` / ``"parallel"``;
``"scaled_par_bn"`` learns its scaling). Where each site sits in BERT, GPT-2 and LLaMA is in
:mod:`peft_zoo.injection.bottleneck_placement`; the maths in :mod:`peft_zoo.bottleneck`.

AdapterHub features that this library does not build are not fields (PHM / Compacter
layers, invertible adapters, cross-attention adapters, stochastic depth); a file that turns
one of them on is refused when read.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ..bottleneck import INIT_WEIGHTS, check_non_linearity, check_residual_before_ln, check_scaling
from ..core.checks import check_bool, check_int_in, check_positive_float, check_probability, short_repr

__all__ = [
    "PRESETS",
    "BottleneckConfig",
    "DoubleSeqBnConfig",
    "ParBnConfig",
    "SeqBnConfig",
]

_HELP = {
    "mh_adapter": "Put an adapter after the multi-head attention output of every layer.",
    "output_adapter": "Put an adapter after the feed-forward output of every layer.",
    "reduction_factor": 'Bottleneck size r = hidden // reduction_factor; or {"<layer>": f, "default": f}.',
    "non_linearity": 'The activation between the projections: "relu", "gelu", "swish", "tanh"...',
    "original_ln_before": "Add the residual (and apply the layer's LayerNorm) before the adapter (Pfeiffer).",
    "original_ln_after": "Add the residual (and apply the layer's LayerNorm) after the adapter.",
    "ln_before": "A new LayerNorm of the adapter's own on its input.",
    "ln_after": "A new LayerNorm of the adapter's own on its output.",
    "init_weights": '"bert" (N(0, 0.02)), "mam_adapter" (up projection zero), "houlsby" (truncated N(0, 0.01)).',
    "init_weights_seed": "Seed every adapter's initialisation with this (the same weights at every site).",
    "is_parallel": "The adapter reads the sublayer's input and is added to its output (He et al.).",
    "scaling": 'A factor on the adapter output: a float, "learned" (one scalar) or "channel" (one per feature).',
    "use_gating": "A learned sigmoid gate on the adapter output, averaged over the sequence (UniPELT).",
    "residual_before_ln": 'The adapter\'s residual: True (sublayer output), False (after add and norm), "post_add".',
    "adapter_residual_before_ln": "Add the adapter's residual before its own ln_after (else after it).",
    "leave_out": "Layer indices (from 0) that get no adapter.",
    "dropout": "Dropout on the adapter output, after the scaling.",
}


def _h(name: str) -> dict[str, str]:
    """The metadata of field ``name``: its one-line help."""
    return {"help": _HELP[name]}


def _check_reduction_factor(value: object) -> None:
    if isinstance(value, Mapping):
        if not value:
            raise ValueError("reduction_factor is an empty mapping: give {'default': f} at least")
        for key, item in value.items():
            if not isinstance(key, str) or not (key == "default" or key.isdigit()):
                raise ValueError(
                    f"reduction_factor keys must be layer numbers as str or 'default', got {key!r}"
                )
            check_positive_float(item, f"reduction_factor[{key!r}]")
        return
    check_positive_float(value, "reduction_factor")


@dataclass
class BottleneckConfig:
    """AdapterHub's ``BnConfig``: where bottleneck adapters go and how they compute.

    The defaults are AdapterHub's default adapter (``seq_bn``, Pfeiffer et al.): one adapter
    after each feed-forward output, the layer's own residual and LayerNorm applied before it.
    """

    mh_adapter: bool = field(default=False, metadata=_h("mh_adapter"))
    output_adapter: bool = field(default=True, metadata=_h("output_adapter"))
    reduction_factor: float | dict[str, float] = field(default=16, metadata=_h("reduction_factor"))
    non_linearity: str = field(default="relu", metadata=_h("non_linearity"))
    original_ln_before: bool = field(default=True, metadata=_h("original_ln_before"))
    original_ln_after: bool = field(default=True, metadata=_h("original_ln_after"))
    ln_before: bool = field(default=False, metadata=_h("ln_before"))
    ln_after: bool = field(default=False, metadata=_h("ln_after"))
    init_weights: str = field(default="bert", metadata=_h("init_weights"))
    init_weights_seed: int | None = field(default=None, metadata=_h("init_weights_seed"))
    is_parallel: bool = field(default=False, metadata=_h("is_parallel"))
    scaling: float | str = field(default=1.0, metadata=_h("scaling"))
    use_gating: bool = field(default=False, metadata=_h("use_gating"))
    residual_before_ln: bool | str = field(default=True, metadata=_h("residual_before_ln"))
    adapter_residual_before_ln: bool = field(default=False, metadata=_h("adapter_residual_before_ln"))
    leave_out: list[int] = field(default_factory=list, metadata=_h("leave_out"))
    dropout: float = field(default=0.0, metadata=_h("dropout"))

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (types and values); raise naming the field. ``adapt_model`` calls
        it again, so a field set after construction is checked too."""
        for name in ("mh_adapter", "output_adapter", "original_ln_before", "original_ln_after", "ln_before"):
            check_bool(getattr(self, name), name)
        for name in ("ln_after", "is_parallel", "use_gating", "adapter_residual_before_ln"):
            check_bool(getattr(self, name), name)
        if not (self.mh_adapter or self.output_adapter):
            raise ValueError("mh_adapter and output_adapter are both False: the config places no adapter")
        _check_reduction_factor(self.reduction_factor)
        check_non_linearity(self.non_linearity)
        init: object = self.init_weights
        if init not in INIT_WEIGHTS:
            hint = " (AdapterHub calls it 'mam_adapter')" if init == "mam" else ""
            raise ValueError(f"init_weights must be one of {INIT_WEIGHTS}, got {short_repr(init)}{hint}")
        if self.init_weights_seed is not None:
            check_int_in(self.init_weights_seed, "init_weights_seed", 0, 2**63 - 1)
        self.scaling = check_scaling(self.scaling)  # an int becomes a float, as AdapterHub needs
        check_residual_before_ln(self.residual_before_ln)
        if self.residual_before_ln == "post_add" and not self.original_ln_before and not self.is_parallel:
            raise ValueError(
                "residual_before_ln='post_add' needs original_ln_before=True (AdapterHub's rule)"
            )
        leave: object = self.leave_out
        if not isinstance(leave, (list, tuple)):
            raise TypeError(f"leave_out must be a list of layer indices, got {short_repr(leave)}")
        for index in leave:
            check_int_in(index, "leave_out entry", 0, 1 << 20)
        check_probability(self.dropout, "dropout")

    def bottleneck_dim(self, hidden: int, layer: int) -> int:
        """``r`` at ``layer``: ``int(hidden // reduction_factor)``, at least 1 (AdapterHub's rule)."""
        factor: object = self.reduction_factor
        if isinstance(factor, Mapping):
            key = str(layer) if str(layer) in factor else "default"
            if key not in factor:
                raise ValueError(f"reduction_factor has no entry for layer {layer} and no 'default'")
            factor = factor[key]
        if not isinstance(factor, numbers.Real):
            raise TypeError(f"reduction_factor must be a number, got {short_repr(factor)}")
        return max(1, int(hidden // float(factor)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BottleneckConfig:
        """A config from ``{field: value}``; unknown fields are refused, naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {unknown}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> BottleneckConfig:
        """AdapterHub's preset ``name`` (``"seq_bn"``, ``"pfeiffer"``, ``"double_seq_bn"``,
        ``"houlsby"``, ``"par_bn"``, ``"parallel"``, ``"scaled_par_bn"``, ``"scaled_parallel"``)
        with ``overrides`` applied."""
        if name not in PRESETS:
            raise ValueError(f"unknown bottleneck preset {short_repr(name)}; known: {sorted(PRESETS)}")
        preset_cls, extra = PRESETS[name]
        return preset_cls(**{**extra, **overrides})

    def adapter_kwargs(self) -> dict[str, Any]:
        """The per-site arguments of :class:`~peft_zoo.bottleneck.BnAdapter`."""
        names = ["non_linearity", "original_ln_before", "original_ln_after", "residual_before_ln"]
        names += ["adapter_residual_before_ln", "ln_before", "ln_after", "init_weights", "init_weights_seed"]
        names += ["scaling", "is_parallel", "use_gating", "dropout"]
        return {n: getattr(self, n) for n in names}


@dataclass
class SeqBnConfig(BottleneckConfig):
    """Pfeiffer et al. (2020): one adapter after the feed-forward output, the layer's residual
    and LayerNorm applied before it (AdapterHub's ``seq_bn`` / ``pfeiffer``)."""


@dataclass
class DoubleSeqBnConfig(BottleneckConfig):
    """Houlsby et al. (2019): adapters after the attention output and after the feed-forward
    output, on the sublayer output before its residual (``double_seq_bn`` / ``houlsby``)."""

    mh_adapter: bool = field(default=True, metadata=_h("mh_adapter"))
    non_linearity: str = field(default="swish", metadata=_h("non_linearity"))
    original_ln_before: bool = field(default=False, metadata=_h("original_ln_before"))


@dataclass
class ParBnConfig(BottleneckConfig):
    """He et al. (2022): a parallel adapter beside the feed-forward block, reading its input,
    scaled by 4 (``par_bn`` / ``parallel``; ``scaling="learned"`` is ``scaled_par_bn``)."""

    reduction_factor: float | dict[str, float] = field(default=2, metadata=_h("reduction_factor"))
    original_ln_before: bool = field(default=False, metadata=_h("original_ln_before"))
    init_weights: str = field(default="mam_adapter", metadata=_h("init_weights"))
    is_parallel: bool = field(default=True, metadata=_h("is_parallel"))
    scaling: float | str = field(default=4.0, metadata=_h("scaling"))


PRESETS: dict[str, tuple[type[BottleneckConfig], dict[str, Any]]] = {
    "seq_bn": (SeqBnConfig, {}),
    "pfeiffer": (SeqBnConfig, {}),
    "double_seq_bn": (DoubleSeqBnConfig, {}),
    "houlsby": (DoubleSeqBnConfig, {}),
    "par_bn": (ParBnConfig, {}),
    "parallel": (ParBnConfig, {}),
    "scaled_par_bn": (ParBnConfig, {"scaling": "learned"}),
    "scaled_parallel": (ParBnConfig, {"scaling": "learned"}),
}
