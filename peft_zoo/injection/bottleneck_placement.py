"""Where AdapterHub puts a bottleneck adapter in BERT, GPT-2 and LLaMA layers, and the module
swaps that put it there (no transformers class is patched; each swap is one module).

A *site* is one adapter location of one layer (``mh_adapter``: after attention,
``output_adapter``: after the feed-forward block). All tensors are ``(B, L, d)``.

- **BERT-style (post-LN)**: ``BertSelfOutput`` and ``BertOutput`` compute
  ``LayerNorm(dropout(dense(h_in)) + x)``. AdapterHub's ``BertSelfOutputWithAdapters`` calls
  its bottleneck layer with ``(h = dropout(dense(h_in)), x, LayerNorm)`` instead, so
  :class:`PostNormSite` replaces ``attention.output`` / ``output`` and does the same.
- **GPT-2 / LLaMA-style (pre-LN)**: the block computes ``x + attn(ln_1(x))`` and
  ``x' + mlp(ln_2(x'))``; AdapterHub's block calls ``attention_adapters(h, x, None)`` /
  ``output_adapters(h, x', None)`` in place of those additions. Here the norm before the
  sublayer becomes a :class:`ResidualTap` (it records ``x``, its input) and the sublayer a
  :class:`PreNormSite` returning ``g`` with ``x + g`` equal to AdapterHub's value; the
  block's own ``+`` does the rest (``ln_1``/``attn``, ``ln_2``/``mlp`` in GPT-2;
  ``input_layernorm``/``self_attn``, ``post_attention_layernorm``/``mlp`` in LLaMA).

Layers are found by structure (and counted from 0 in module order, AdapterHub's layer
index): a model with none of these layouts is refused with an ``InjectionError``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..bottleneck import BnAdapter
from .bottleneck_config import BottleneckConfig
from .surgery import InjectionError, mark_only_adapters_trainable, parent_of

__all__ = [
    "LOCATIONS",
    "NamedBottleneckSite",
    "PostNormSite",
    "PreNormSite",
    "ResidualSlot",
    "ResidualTap",
    "Site",
    "adapt_bottleneck",
    "bottleneck_sites",
    "build_sites",
    "install_sites",
    "remove_bottleneck",
]

LOCATIONS = ("mh_adapter", "output_adapter")
# layout -> {location: (norm attribute before the sublayer or None, the module that is replaced)}
_LAYOUTS: dict[str, dict[str, tuple[str | None, str]]] = {
    "bert": {"mh_adapter": (None, "attention.output"), "output_adapter": (None, "output")},
    "gpt2": {"mh_adapter": ("ln_1", "attn"), "output_adapter": ("ln_2", "mlp")},
    "llama": {
        "mh_adapter": ("input_layernorm", "self_attn"),
        "output_adapter": ("post_attention_layernorm", "mlp"),
    },
}


_NO_MERGE = (
    "a bottleneck adapter has a non-linearity between its projections, so no weight can absorb it; "
    "unload(model) takes it out"
)


class _Unloads:
    """How ``merge_and_unload`` / ``unload`` take a site apart (the ``SelfUnloading`` protocol
    of :mod:`.unload`): it cannot be merged; unloading puts the wrapped module back."""

    base: nn.Module

    def unload_refusal(self, merge: bool) -> str | None:
        return _NO_MERGE if merge else None

    def unload_replacement(self, merge: bool) -> nn.Module:
        return self.base


class ResidualSlot:
    """The residual input a :class:`ResidualTap` saw last, for the site after it (not a module,
    so it is in no state dict)."""

    def __init__(self) -> None:
        self.x: torch.Tensor | None = None


class ResidualTap(_Unloads, nn.Module):
    """The norm before a pre-LN sublayer, unchanged, which records its input ``x`` (B, L, d)."""

    def __init__(self, base: nn.Module, slot: ResidualSlot) -> None:
        super().__init__()
        self.base = base
        self.slot = slot

    def unload_refusal(self, merge: bool) -> str | None:
        return None  # the site after it says why a merge is refused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.slot.x = x
        return self.base(x)


class PostNormSite(_Unloads, nn.Module):
    """BERT's ``BertSelfOutput`` / ``BertOutput`` with AdapterHub's adapter: ``(B, L, d_in),
    (B, L, d) -> (B, L, d)``."""

    def __init__(self, base: nn.Module, adapter: BnAdapter, location: str, config: BottleneckConfig) -> None:
        super().__init__()
        self.base, self.adapter, self.location, self.bottleneck_config = base, adapter, location, config

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        base: Any = self.base  # a BertSelfOutput / BertOutput: dense, dropout, LayerNorm
        h = base.dropout(base.dense(hidden_states))  # (B, L, d)
        return self.adapter(h, input_tensor, base.LayerNorm)


class PreNormSite(_Unloads, nn.Module):
    """A pre-LN sublayer (attention or MLP) followed by AdapterHub's adapter: returns what the
    sublayer returns with its first output ``h`` (B, L, d) replaced by ``g``, ``x + g`` being
    AdapterHub's site output."""

    def __init__(
        self, base: nn.Module, adapter: BnAdapter, slot: ResidualSlot, location: str, config: BottleneckConfig
    ) -> None:
        super().__init__()
        self.base, self.adapter, self.location, self.bottleneck_config = base, adapter, location, config
        self.slot = slot

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.base(*args, **kwargs)
        h = out[0] if isinstance(out, tuple) else out
        x, self.slot.x = self.slot.x, None
        if x is None:
            raise RuntimeError(
                f"{type(self.base).__name__}: the residual input was not recorded; the layer must call "
                "its norm (the ResidualTap) right before this sublayer"
            )
        g = self.adapter.residual_delta(h, x)
        return (g, *out[1:]) if isinstance(out, tuple) else g


@runtime_checkable
class NamedBottleneckSite(Protocol):
    """A site holding several named adapters (``peft_zoo.serving.named_bottleneck.NamedBnSite``),
    as the AdapterHub file format reads it without importing serving: its location, whether it
    is BERT-style (post-LN) and ``(adapter, config)`` of one name (``None``: not held here)."""

    base: nn.Module
    location: str
    post_norm: bool

    @property
    def adapter_names(self) -> list[str]: ...

    def site_adapter(self, name: str) -> tuple[BnAdapter, BottleneckConfig] | None: ...


@dataclass
class Site:
    """One planned adapter: the layer's path and index, the layout, the location and the adapter."""

    layer_path: str
    layer_index: int
    layout: str
    location: str
    adapter: BnAdapter
    config: BottleneckConfig

    @property
    def module_path(self) -> str:
        """The dotted path of the module the site replaces."""
        sub = _LAYOUTS[self.layout][self.location][1]
        return f"{self.layer_path}.{sub}" if self.layer_path else sub


def _is_post_norm_output(m: object) -> bool:
    return all(
        isinstance(getattr(m, a, None), t) for a, t in (("dense", nn.Linear), ("LayerNorm", nn.LayerNorm))
    )


def _layout(layer: nn.Module) -> str | None:
    if _is_post_norm_output(
        getattr(getattr(layer, "attention", None), "output", None)
    ) and _is_post_norm_output(getattr(layer, "output", None)):
        return "bert"
    for layout in ("gpt2", "llama"):
        if all(
            isinstance(getattr(layer, a, None), nn.Module)
            for pair in _LAYOUTS[layout].values()
            for a in pair
            if a is not None
        ):
            return layout
    return None


def _layers(model: nn.Module) -> list[tuple[str, str]]:
    """``(path, layout)`` of every transformer layer, in module order; refuses cross-attention."""
    found = [(name, layout) for name, m in model.named_modules() if (layout := _layout(m)) is not None]
    crossed = [n for n, _ in found if hasattr(model.get_submodule(n), "crossattention")]
    if crossed:
        raise InjectionError(
            f"bottleneck adapters: layers with cross-attention are not supported: {crossed[:3]}"
        )
    return found


def bottleneck_sites(model: nn.Module) -> dict[str, PostNormSite | PreNormSite]:
    """``path -> site module`` for every bottleneck site already in ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (PostNormSite, PreNormSite))}


def _hidden_size(module: nn.Module) -> tuple[int, torch.Tensor]:
    """``(d, a weight of the module)``: the model width at a site and its device and dtype."""
    norm = module.get_submodule("LayerNorm") if hasattr(module, "LayerNorm") else module
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
        raise InjectionError(f"cannot read the hidden size from {type(norm).__name__}")
    return int(weight.shape[0]), weight


def build_sites(model: nn.Module, config: BottleneckConfig) -> list[Site]:
    """Plan and build every site ``config`` asks for (the model is not changed)."""
    if bottleneck_sites(model) or any(isinstance(m, NamedBottleneckSite) for m in model.modules()):
        raise InjectionError("the model already holds bottleneck adapters: remove_bottleneck(model) first")
    layers = _layers(model)
    if not layers:
        raise InjectionError(
            f"{type(model).__name__}: no BERT-, GPT-2- or LLaMA-style layer found (attention.output/output "
            "with dense and LayerNorm; ln_1/attn/ln_2/mlp; input_layernorm/self_attn/post_attention_layernorm/mlp)"
        )
    sites = []
    for index, (path, layout) in enumerate(layers):
        if index in config.leave_out:
            continue
        for location in LOCATIONS:
            if not getattr(config, location):
                continue
            norm_name, sub_name = _LAYOUTS[layout][location]
            layer = model.get_submodule(path)
            if layout != "bert" and config.residual_before_ln == "post_add" and not config.is_parallel:
                raise InjectionError(
                    "residual_before_ln='post_add' needs the layer's own LayerNorm after the residual "
                    f"(BERT); {type(layer).__name__} is pre-LN (AdapterHub 1.3 fails there as well)"
                )
            d, weight = _hidden_size(layer.get_submodule(norm_name or sub_name))
            try:
                r = config.bottleneck_dim(d, index)
            except ValueError as err:
                raise InjectionError(str(err)) from err
            adapter = BnAdapter(d, r, **config.adapter_kwargs(), device=weight.device, dtype=weight.dtype)
            sites.append(Site(path, index, layout, location, adapter, config))
    return sites


def install_sites(model: nn.Module, sites: list[Site]) -> tuple[nn.Module, list[nn.Parameter]]:
    """Swap the built sites into ``model``, freeze everything else; return ``(model, params)``."""
    if not sites:
        raise InjectionError("no adapter sites to install (leave_out names every layer)")
    for site in sites:
        config = replace(site.config)  # each site keeps its own copy
        layer = model.get_submodule(site.layer_path)
        norm_name, sub_name = _LAYOUTS[site.layout][site.location]
        parent, attr = parent_of(layer, sub_name)
        base = getattr(parent, attr)
        if norm_name is None:
            setattr(parent, attr, PostNormSite(base, site.adapter, site.location, config))
            continue
        slot = ResidualSlot()
        setattr(layer, norm_name, ResidualTap(getattr(layer, norm_name), slot))
        setattr(parent, attr, PreNormSite(base, site.adapter, slot, site.location, config))
    return model, mark_only_adapters_trainable(model)


def adapt_bottleneck(model: nn.Module, config: BottleneckConfig) -> tuple[nn.Module, list[nn.Parameter]]:
    """Put bottleneck adapters into ``model`` where AdapterHub puts them (BERT, GPT-2 and
    LLaMA-style layers) and freeze everything else; return ``(model, adapter parameters)``.
    Raises ``InjectionError`` (nothing changed) for a model without such layers."""
    if not isinstance(config, BottleneckConfig):
        raise TypeError(f"config must be a BottleneckConfig, got {type(config).__name__}")
    config.validate()
    return install_sites(model, build_sites(model, config))


def remove_bottleneck(model: nn.Module) -> nn.Module:
    """Undo :func:`adapt_bottleneck`: every site (named ones too) and tap back to the module it wrapped."""
    for name, module in list(model.named_modules()):
        if isinstance(module, (PostNormSite, PreNormSite, ResidualTap, NamedBottleneckSite)):
            parent, attr = parent_of(model, name)
            setattr(parent, attr, module.base)
    return model
