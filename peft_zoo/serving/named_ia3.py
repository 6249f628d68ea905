"""Several named IA³ scaling vectors on one frozen layer, as Hugging Face PEFT's ``IA3Layer``.

IA³ (Liu et al., 2022, arXiv:2205.05638) scales a layer's output features (or, for the
feed-forward down projection, its input features) by a learned vector ``l``. With several
named adapters active PEFT multiplies their vectors; so does :class:`NamedIA3Linear`::

    y = (W0 x + b) ⊙ prod_{a active} l_a            l_a: (out,)
    y = W0 (x ⊙ prod_{a active} l_a) + b            l_a: (in,)    feed-forward form

The feed-forward form is fixed per layer by its first adapter, as in PEFT. In a mixed batch
(:func:`~peft_zoo.serving.named_layer.mixed_batch`) sample ``b`` takes its own adapter's
vector: one gather from the stacked ``(N + 1, d)`` table whose last row is ones (the base).
PEFT has no mixed batch for IA³; it equals running each sample with its adapter active.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ..core.base import AdapterModule
from ..core.checks import bias_of, check_last_dim, linear_features, weight_of
from ..ia3 import IA3Linear
from .named_layer import mixed_names

__all__ = ["NamedIA3Linear"]


class NamedIA3Linear(AdapterModule):
    """A frozen ``nn.Linear`` (or GPT-2 ``Conv1D``) with any number of named IA³ vectors.

    Args:
        base: the layer to adapt; frozen.
        feedforward: scale the input features (``l_a (in,)``) instead of the output (``(out,)``).
        fan_in_fan_out: the base stores its weight ``(in, out)``; ``None`` infers it.

    Parameters: ``ia3_l[name]`` in a ``ParameterDict`` (state-dict keys ``ia3_l.<name>``).
    ``forward``: ``(B, ..., in) -> (B, ..., out)``.
    """

    def __init__(self, base: nn.Module, *, feedforward: bool, fan_in_fan_out: bool | None = None) -> None:
        d_in, d_out, fan_in_fan_out = linear_features(base, "NamedIA3Linear base", fan_in_fan_out)
        super().__init__()
        self.base = base
        self.in_features, self.out_features, self.fan_in_fan_out = d_in, d_out, fan_in_fan_out
        self.feedforward = bool(feedforward)
        self.ia3_l = nn.ParameterDict()
        self.active: list[str] = []
        self.disabled = False
        self.base.requires_grad_(False)

    @property
    def adapter_names(self) -> list[str]:
        """The names this layer holds, in the order they were added."""
        return list(self.ia3_l.keys())

    def add_ia3(self, name: str, layer: IA3Linear) -> None:
        """Hold ``layer``'s vector (the very parameter) under ``name``; not activated."""
        if layer.base is not self.base:
            raise ValueError(f"adapter {name!r}: the IA3Linear wraps another base layer")
        if layer.feedforward != self.feedforward:
            raise ValueError(
                f"adapter {name!r}: this layer scales its {'inputs' if self.feedforward else 'outputs'} "
                "(fixed by its first adapter, as in PEFT); feedforward_modules must agree"
            )
        if name in self.ia3_l:
            raise ValueError(f"this layer already holds an adapter named {name!r}")
        self.ia3_l[name] = layer.scale

    def remove(self, name: str) -> None:
        """Drop adapter ``name`` (and from the active list); unknown names are ignored."""
        if name in self.ia3_l:
            del self.ia3_l[name]
        self.active = [n for n in self.active if n != name]

    def set_active(self, names: Sequence[str]) -> None:
        """Run ``names`` (their vectors multiply); names this layer does not hold are skipped."""
        self.active = list(names)

    def parameters_of(self, name: str) -> list[nn.Parameter]:
        """Adapter ``name``'s parameters (empty when this layer does not hold it)."""
        return [self.ia3_l[name]] if name in self.ia3_l else []

    def adapter_named_parameters(self, prefix: str = "") -> Iterator[tuple[str, nn.Parameter]]:
        dot = f"{prefix}." if prefix else ""
        for name, p in self.ia3_l.items():
            yield f"{dot}ia3_l.{name}", p

    def adapter_layer(self, name: str) -> IA3Linear:
        """An :class:`IA3Linear` sharing the base and adapter ``name``'s very vector."""
        layer = IA3Linear(self.base, feedforward=self.feedforward, fan_in_fan_out=self.fan_in_fan_out)
        layer.scale = self.ia3_l[name]
        return layer

    # ------------------------------------------------------------------ forward

    def _scaling(self) -> torch.Tensor | None:
        """The product of the active vectors in PEFT's order, ``(d,)``; ``None`` when none is held."""
        scaling: torch.Tensor | None = None
        for name in self.active:
            if name in self.ia3_l:
                scaling = (
                    self.ia3_l[name].flatten() if scaling is None else scaling * self.ia3_l[name].flatten()
                )
        return scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, ..., in) -> (B, ..., out)``."""
        check_last_dim(x, self.in_features, "NamedIA3Linear")
        if self.disabled:
            return self.base(x)
        names = mixed_names(self)
        scaling = self._per_sample(x, names) if names is not None else self._scaling()  # (B, 1.., d) or (d,)
        if scaling is None:
            return self.base(x)
        return self.base(x * scaling) if self.feedforward else self.base(x) * scaling

    def _per_sample(self, x: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
        if x.dim() < 2 or x.shape[0] != len(names):
            raise ValueError(
                "Length of `adapter_names` should be the same as the number of inputs, but got "
                f"{len(names)} and {x.shape[0] if x.dim() else 0} respectively"
            )
        held = {n: i for i, n in enumerate(self.ia3_l)}
        ids = torch.tensor([held.get(n, len(held)) for n in names], device=x.device)  # base: the ones row
        vectors = list(self.ia3_l.values())
        d = self.in_features if self.feedforward else self.out_features
        ones = torch.ones(1, d, dtype=weight_of(self.base).dtype, device=x.device)
        table = torch.cat([*(v.reshape(1, d) for v in vectors), ones])  # (N + 1, d)
        return table.index_select(0, ids).reshape(len(names), *([1] * (x.dim() - 2)), d)

    # ------------------------------------------------------------------ export

    def _combined(self) -> IA3Linear:
        layer = IA3Linear(self.base, feedforward=self.feedforward, fan_in_fan_out=self.fan_in_fan_out)
        scaling = self._scaling()
        if scaling is not None:
            layer.scale = nn.Parameter(scaling.detach().clone(), requires_grad=False)
        return layer

    @torch.no_grad()
    def unload_refusal(self, merge: bool) -> str | None:
        """Only a merge that would make the weight non-finite is refused."""
        if not merge:
            return None
        w = weight_of(self.base)
        merged = self._combined().weight
        return (
            "its merged weight has NaN or inf entries"
            if bool((~torch.isfinite(merged) & torch.isfinite(w)).any())
            else None
        )

    @torch.no_grad()
    def unload_replacement(self, merge: bool) -> nn.Module:
        """The base, holding the active vectors' product folded in when ``merge``."""
        if merge and self._scaling() is not None:
            combined = self._combined()
            weight, bias = combined.weight, combined.bias
            weight_of(self.base).copy_(weight)
            base_bias = bias_of(self.base)
            if bias is not None and base_bias is not None:
                base_bias.copy_(bias)
        return self.base

    def adapter_config(self) -> dict[str, object]:
        return {"method": "named_ia3", "feedforward": self.feedforward, "adapters": self.adapter_names}

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, feedforward={self.feedforward}, "
            f"adapters={self.adapter_names}, active={self.active}"
            + (", disabled=True" if self.disabled else "")
        )
