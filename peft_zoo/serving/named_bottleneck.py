"""Several named bottleneck adapters at one AdapterHub site, as ``adapters`` 1.3 keeps them
(``model.add_adapter(name, config)``, ``set_active_adapters(name)``, ``delete_adapter``).

AdapterHub's bottleneck layer holds one adapter per *name* in an ``nn.ModuleDict`` and runs
the active one; :class:`NamedBnSite` does the same at one site of
:mod:`peft_zoo.injection.bottleneck_placement` (all tensors ``(B, L, d)``):

- BERT-style (post-LN, it replaces ``attention.output`` / ``output``): with adapter ``a``
  active it returns ``a(dropout(dense(h_in)), x, LayerNorm)``, else ``LayerNorm(dropout(dense(h_in)) + x)``;
- GPT-2 / LLaMA-style (pre-LN, it replaces ``attn`` / ``mlp``, a ``ResidualTap`` on the norm
  before records ``x``): the sublayer's output ``h`` is replaced by ``a.residual_delta(h, x)``.

One adapter runs at a time (AdapterHub's ``Stack`` / ``Parallel`` compositions are not built).
A site that does not hold the active adapter (each adapter has its own config: locations,
``leave_out``) runs the base module unchanged. In a mixed batch
(:func:`~peft_zoo.serving.named_layer.mixed_batch`, which AdapterHub does not have) each
distinct adapter runs once on its own samples.

:func:`build_bottleneck_on_bases` adds an adapter: the named sites are taken out, the builder
(``adapt_model`` or ``load_adapterhub``) places plain sites on the bare model, and their very
adapters move into named sites under the new name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ..bottleneck import BnAdapter
from ..core.base import AdapterModule
from ..injection.bottleneck_config import BottleneckConfig
from ..injection.bottleneck_placement import (
    PostNormSite,
    PreNormSite,
    ResidualSlot,
    ResidualTap,
    bottleneck_sites,
    remove_bottleneck,
)
from ..injection.surgery import parent_of
from .named_layer import mixed_names

__all__ = ["NamedBnSite", "adopt_bottleneck", "build_bottleneck_on_bases", "named_bn_sites"]

_NO_MERGE = (
    "a bottleneck adapter has a non-linearity between its projections, so no weight can absorb it; "
    "unload(model) takes it out"
)


class NamedBnSite(AdapterModule):
    """One AdapterHub site holding any number of named :class:`~peft_zoo.bottleneck.BnAdapter` s.

    Args:
        base: the module the site replaces (``BertSelfOutput`` / ``BertOutput``, or a pre-LN
            block's attention / MLP).
        location: ``"mh_adapter"`` or ``"output_adapter"``.
        post_norm: BERT-style site (``forward(hidden_states, input_tensor)``).
        slot: the ``ResidualSlot`` the norm's ``ResidualTap`` fills (pre-LN sites only).

    Parameters: ``adapters[name]`` (state-dict keys ``adapters.<name>.down.weight`` ...);
    ``configs[name]`` is the adapter's ``BottleneckConfig``. ``forward`` maps what the base
    takes to what it returns, ``(B, L, d)`` hidden states.
    """

    def __init__(self, base: nn.Module, location: str, *, post_norm: bool, slot: ResidualSlot | None) -> None:
        if not post_norm and slot is None:
            raise ValueError("NamedBnSite: a pre-LN site needs the ResidualSlot of its norm's ResidualTap")
        super().__init__()
        self.base, self.location, self.post_norm, self.slot = base, location, post_norm, slot
        self.adapters = nn.ModuleDict()
        self.configs: dict[str, BottleneckConfig] = {}
        self.active: list[str] = []
        self.disabled = False

    @classmethod
    def of(cls, site: PostNormSite | PreNormSite) -> NamedBnSite:
        """An empty named site around a plain site's base (and its slot)."""
        if isinstance(site, PostNormSite):
            return cls(site.base, site.location, post_norm=True, slot=None)
        return cls(site.base, site.location, post_norm=False, slot=site.slot)

    # ------------------------------------------------------------------ adapters

    @property
    def adapter_names(self) -> list[str]:
        """The names this site holds, in the order they were added."""
        return list(self.adapters.keys())

    def add(self, name: str, site: PostNormSite | PreNormSite) -> None:
        """Hold ``site``'s adapter (the very module) and config under ``name``; not activated."""
        if site.base is not self.base or site.location != self.location:
            raise ValueError(f"adapter {name!r}: the plain site wraps another module or location")
        if name in self.adapters:
            raise ValueError(f"this site already holds an adapter named {name!r}")
        self.adapters[name] = site.adapter
        self.configs[name] = site.bottleneck_config

    def remove(self, name: str) -> None:
        """Drop adapter ``name`` (and from the active list); unknown names are ignored."""
        if name in self.adapters:
            del self.adapters[name]
            del self.configs[name]
        self.active = [n for n in self.active if n != name]

    def set_active(self, names: Sequence[str]) -> None:
        """Run adapter ``names[0]`` (one at a time); names this site does not hold are skipped."""
        if len(names) > 1:
            raise ValueError(
                f"bottleneck adapters run one at a time, got {list(names)} (AdapterHub's Stack / "
                "Parallel compositions are not supported)"
            )
        self.active = list(names)

    def parameters_of(self, name: str) -> list[nn.Parameter]:
        """Adapter ``name``'s parameters (empty when this site does not hold it)."""
        return list(self.adapters[name].parameters()) if name in self.adapters else []

    def site_adapter(self, name: str) -> tuple[BnAdapter, BottleneckConfig] | None:
        """``(adapter, config)`` of ``name`` at this site, ``None`` when it holds no such adapter."""
        if name not in self.adapters:
            return None
        adapter = self.adapters[name]
        assert isinstance(adapter, BnAdapter)  # add() holds BnAdapters only
        return adapter, self.configs[name]

    def adapter_named_parameters(self, prefix: str = "") -> Iterator[tuple[str, nn.Parameter]]:
        dot = f"{prefix}." if prefix else ""
        for name, p in self.adapters.named_parameters():
            yield f"{dot}adapters.{name}", p

    def _running(self) -> BnAdapter | None:
        held = [n for n in self.active if n in self.adapters] if not self.disabled else []
        adapter = self.adapters[held[0]] if held else None
        assert adapter is None or isinstance(adapter, BnAdapter)
        return adapter

    # ------------------------------------------------------------------ forward

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """What the base returns (``(B, L, d)`` hidden states), with the active adapter applied."""
        return self._post(*args, **kwargs) if self.post_norm else self._pre(*args, **kwargs)

    def _route(
        self,
        names: tuple[str, ...],
        out: torch.Tensor,
        run: Callable[[BnAdapter, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """``out`` (B, L, d) with the samples of each held adapter replaced by ``run(adapter, idx)``."""
        if out.dim() < 2 or out.shape[0] != len(names):
            raise ValueError(
                "Length of `adapter_names` should be the same as the number of inputs, but got "
                f"{len(names)} and {out.shape[0] if out.dim() else 0} respectively"
            )
        out = out.clone()
        for name in dict.fromkeys(names):
            adapter = dict(self.adapters.items()).get(name)
            if isinstance(adapter, BnAdapter):
                idx = torch.tensor([i for i, n in enumerate(names) if n == name], device=out.device)
                out[idx] = run(adapter, idx)
        return out

    def _post(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        base: Any = self.base  # a BertSelfOutput / BertOutput: dense, dropout, LayerNorm
        names = None if self.disabled else mixed_names(self)
        adapter = self._running()
        if names is None and adapter is None:
            return base(hidden_states, input_tensor)
        h = base.dropout(base.dense(hidden_states))  # (B, L, d)
        if names is None:
            assert adapter is not None
            return adapter(h, input_tensor, base.LayerNorm)
        x = input_tensor
        return self._route(names, base.LayerNorm(h + x), lambda a, i: a(h[i], x[i], base.LayerNorm))

    def _pre(self, *args: Any, **kwargs: Any) -> Any:
        assert self.slot is not None  # checked in __init__
        out = self.base(*args, **kwargs)
        h = out[0] if isinstance(out, tuple) else out
        x, self.slot.x = self.slot.x, None
        names = None if self.disabled else mixed_names(self)
        adapter = self._running()
        if names is None and adapter is None:
            return out
        if x is None:
            raise RuntimeError(
                f"{type(self.base).__name__}: the residual input was not recorded; the layer must call "
                "its norm (the ResidualTap) right before this sublayer"
            )
        if names is None:
            assert adapter is not None
            g = adapter.residual_delta(h, x)
        else:
            g = self._route(names, h, lambda a, i: a.residual_delta(h[i], x[i]))
        return (g, *out[1:]) if isinstance(out, tuple) else g

    # ------------------------------------------------------------------ unloading

    def unload_refusal(self, merge: bool) -> str | None:
        return _NO_MERGE if merge and self.adapter_names else None

    def unload_replacement(self, merge: bool) -> nn.Module:
        return self.base

    def adapter_config(self) -> dict[str, object]:
        return {"method": "named_bottleneck", "location": self.location, "adapters": self.adapter_names}

    def extra_repr(self) -> str:
        return f"location={self.location}, adapters={self.adapter_names}, active={self.active}" + (
            ", disabled=True" if self.disabled else ""
        )


# ----------------------------------------------------------------------------- model level


def named_bn_sites(model: nn.Module) -> dict[str, NamedBnSite]:
    """``path -> site`` for every named bottleneck site of ``model``, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, NamedBnSite)}


def _put(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, attr = parent_of(model, path)
    setattr(parent, attr, module)


def adopt_bottleneck(model: nn.Module, name: str) -> None:
    """Turn the plain sites ``adapt_model`` built into named sites holding ``name`` (active),
    keeping their very adapters (and the norms' ``ResidualTap`` s)."""
    for path, site in bottleneck_sites(model).items():
        named = NamedBnSite.of(site)
        named.add(name, site)
        named.set_active([name])
        _put(model, path, named)


def build_bottleneck_on_bases(
    model: nn.Module, name: str, build: Callable[[], object], *, default: str
) -> list[nn.Parameter]:
    """Run ``build`` (``adapt_model`` / ``load_adapterhub``) on the model with every named
    site and tap taken out, then move the plain sites it placed into named sites as ``name``;
    return the new parameters. Plain sites already in ``model`` first become adapter
    ``default``. All or nothing: a failure leaves the model (and every ``requires_grad``) as it
    was. The first adapter of a model is active and trainable and the rest of the model frozen
    (as ``adapt_model``), a later one neither active nor trainable (PEFT)."""
    plain = bottleneck_sites(model)
    adopt_bottleneck(model, default)
    saved = [(p, m) for p, m in model.named_modules() if isinstance(m, NamedBnSite | ResidualTap)]
    held = {p: m for p, m in saved if isinstance(m, NamedBnSite)}
    was_empty = not any(m.adapter_names for m in held.values())
    active = [] if was_empty else list(next(iter(held.values())).active)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for path, module in saved:
        _put(model, path, module.base)
    try:
        build()
        built = bottleneck_sites(model)
        if not built:
            raise ValueError(f"adapter {name!r}: nothing was built")
    except BaseException:
        remove_bottleneck(model)
        for path, module in saved:
            _put(model, path, module)
        for path, site in plain.items():
            _put(model, path, site)
        for p, flag in flags:
            p.requires_grad_(flag)
        raise
    for path, site in built.items():
        named = held.get(path) or NamedBnSite.of(site)
        named.add(name, site)
        held[path] = named
        _put(model, path, named)
    for path, module in saved:  # the sites and taps that were there (replacing new taps)
        _put(model, path, module)
    for holder in held.values():
        holder.set_active([name] if was_empty else active)
    for p, flag in flags if not was_empty else []:  # a first adapter keeps the build's freezing
        p.requires_grad_(flag)
    new = [p for holder in held.values() for p in holder.parameters_of(name)]
    for p in new:
        p.requires_grad_(was_empty)
    return new
