"""Bottleneck adapters (Houlsby et al., 2019, arXiv:1902.00751) and their parallel form
(He et al., 2022, arXiv:2110.04366).

    delta(h) = W_up · act(W_down · h + b_down) + b_up      W_down: (r, d), W_up: (d, r)

``W_up`` and ``b_up`` start at zero, so every adapter starts as the identity map (serial)
or adds nothing (parallel), and the adapted model equals its base. ``2 d r + r + d``
parameters per adapter.

- serial (:class:`AdapterBlock`):   h = x + F(x);  out = h + delta(h)   (after the residual:
  Pfeiffer et al.'s position, arXiv:2005.00247, without its LayerNorms; Houlsby et al. apply
  the adapter to F(x) before the residual, out = x + F(x) + delta(F(x)))
- parallel (:class:`ParallelAdapterBlock`): out = F(x) + delta(x)
- several tasks (:class:`AdapterStack`): out = x + delta_k(x), ``k`` chosen per call.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable
from typing import cast

import torch
from torch import nn

from .core.base import AdapterModule
from .core.checks import check_bool, check_float_dtype, check_last_dim, check_module, check_positive_int

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}


def _make_activation(activation: object) -> nn.Module:
    if isinstance(activation, nn.Module):
        return activation
    if isinstance(activation, str) and activation.lower() in _ACTIVATIONS:
        return _ACTIVATIONS[activation.lower()]()
    raise ValueError(f"unknown activation {activation!r}; use one of {sorted(_ACTIVATIONS)} or an nn.Module")


class BottleneckAdapter(AdapterModule):
    """Down-project, non-linearity, up-project; the up projection starts at zero.

    ``forward_delta``: ``(..., d_model) -> (..., d_model)``, the adapter's contribution.
    ``forward``: ``x + forward_delta(x)`` (or just the delta with ``residual=False``).
    """

    def __init__(
        self,
        d_model: int,
        bottleneck_dim: int,
        *,
        activation: str | nn.Module = "gelu",
        residual: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.d_model = check_positive_int(d_model, "d_model")
        self.bottleneck_dim = check_positive_int(bottleneck_dim, "bottleneck_dim")
        check_bool(residual, "BottleneckAdapter residual")
        check_float_dtype(dtype, "BottleneckAdapter dtype")
        act = _make_activation(activation)
        super().__init__()
        self.down_proj = nn.Linear(d_model, bottleneck_dim, device=device, dtype=dtype)  # (r, d)
        self.act = act
        self.up_proj = nn.Linear(bottleneck_dim, d_model, device=device, dtype=dtype)  # (d, r)
        self.residual = residual
        nn.init.zeros_(self.up_proj.weight)
        nn.init.zeros_(self.up_proj.bias)

    def forward_delta(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d_model) -> (..., d_model)``: ``up(act(down(x)))``."""
        check_last_dim(x, self.d_model, "BottleneckAdapter")
        return self.up_proj(self.act(self.down_proj(x)))  # (..., r) -> (..., d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d_model) -> (..., d_model)``."""
        delta = self.forward_delta(x)
        return x + delta if self.residual else delta

    def adapter_config(self) -> dict[str, object]:
        return {
            "method": "bottleneck",
            "d_model": self.d_model,
            "bottleneck_dim": self.bottleneck_dim,
            "activation": type(self.act).__name__,
            "residual": self.residual,
        }

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, bottleneck_dim={self.bottleneck_dim}, residual={self.residual}"


def _check_adapter(sublayer: object, adapter: object, block: str) -> BottleneckAdapter:
    """Check a block's arguments: an ``nn.Module`` sublayer and a distinct BottleneckAdapter."""
    check_module(sublayer, f"{block} sublayer")
    if not isinstance(adapter, BottleneckAdapter):
        raise TypeError(f"{block} adapter must be a BottleneckAdapter, got {type(adapter).__name__}")
    if sublayer is adapter:
        raise ValueError(f"{block}: the sublayer and the adapter are the same module")
    return adapter


def _check_same_shape(x: torch.Tensor, fx: torch.Tensor, block: str) -> None:
    if fx.shape != x.shape:
        raise ValueError(
            f"{block}: the sublayer maps {tuple(x.shape)} to {tuple(fx.shape)}; the residual "
            "connection needs it to keep the shape"
        )


class AdapterBlock(nn.Module):
    """Serial adapter after a sublayer's residual: ``h = x + sublayer(x)``, ``out = h + delta(h)``.

    The adapter reads the post-residual ``h``: the position Pfeiffer et al. (2021,
    arXiv:2005.00247; AdapterHub's ``SeqBnConfig``) use, here without the LayerNorms that
    AdapterHub puts around it. It is *not* Houlsby et al.'s placement, which applies the adapter
    to the sublayer's output before the residual, ``x + F(x) + delta(F(x))`` (and then the
    block's LayerNorm); the two differ as soon as ``delta`` is nonzero.

    One residual each: the adapter contributes only its delta (``forward_delta``), never a
    second copy of ``h``. ``sublayer`` must map ``(..., d) -> (..., d)``. Its parameters keep
    their ``requires_grad``; freeze them with :func:`peft_zoo.mark_only_adapters_trainable`.
    """

    def __init__(self, sublayer: nn.Module, adapter: BottleneckAdapter) -> None:
        _check_adapter(sublayer, adapter, "AdapterBlock")
        super().__init__()
        self.sublayer = sublayer
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d) -> (..., d)``."""
        fx = self.sublayer(x)
        _check_same_shape(x, fx, "AdapterBlock")
        h = x + fx  # the sublayer's own residual
        return h + self.adapter.forward_delta(h)  # the adapter's residual


class ParallelAdapterBlock(nn.Module):
    """Parallel adapter: ``out = sublayer(x) + delta(x)``; the adapter sees the block's *input*.

    No residual is added here (add it around the block if the sublayer had one), so the
    block equals ``sublayer`` at initialisation.
    """

    def __init__(self, sublayer: nn.Module, adapter: BottleneckAdapter) -> None:
        _check_adapter(sublayer, adapter, "ParallelAdapterBlock")
        super().__init__()
        self.sublayer = sublayer
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d) -> (..., d)``."""
        fx = self.sublayer(x)
        _check_same_shape(x, fx, "ParallelAdapterBlock")
        return fx + self.adapter.forward_delta(x)


class AdapterStack(AdapterModule):
    """``num_adapters`` bottleneck adapters, one per task; ``forward(x, k)`` uses adapter ``k``.

    ``forward``: ``(..., d_model) -> (..., d_model)``, ``x + adapters[k].forward_delta(x)``.
    ``k`` must be an int in ``[0, num_adapters)``: negative ids are refused rather than
    silently counting from the end.
    """

    def __init__(
        self,
        d_model: int,
        bottleneck_dim: int,
        num_adapters: int,
        *,
        activation: str | nn.Module = "gelu",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.num_adapters = check_positive_int(num_adapters, "num_adapters")
        check_positive_int(d_model, "d_model")
        check_positive_int(bottleneck_dim, "bottleneck_dim")
        check_float_dtype(dtype, "AdapterStack dtype")
        _make_activation(activation)
        super().__init__()
        self.d_model = d_model
        self.adapters = nn.ModuleList(
            BottleneckAdapter(
                d_model,
                bottleneck_dim,
                # an nn.Module activation is stateless in practice; give each adapter its own
                activation=activation if isinstance(activation, str) else copy.deepcopy(activation),
                device=device,
                dtype=dtype,
            )
            for _ in range(num_adapters)
        )

    def forward(self, x: torch.Tensor, adapter_id: int) -> torch.Tensor:
        """``(..., d_model) -> (..., d_model)`` through adapter ``adapter_id``."""
        if (
            isinstance(adapter_id, torch.Tensor)
            and adapter_id.numel() == 1
            and not adapter_id.is_floating_point()
            and adapter_id.dtype != torch.bool  # a bool tensor is refused, like a bool
        ):
            adapter_id = int(adapter_id.item())
        if isinstance(adapter_id, bool) or not isinstance(adapter_id, numbers.Integral):
            raise TypeError(f"adapter_id must be an int, got {adapter_id!r}")
        if not 0 <= adapter_id < self.num_adapters:
            raise IndexError(
                f"adapter_id {adapter_id} out of range: this AdapterStack holds "
                f"{self.num_adapters} adapters (ids 0..{self.num_adapters - 1})"
            )
        check_last_dim(x, self.d_model, "AdapterStack")
        return x + self._adapter(adapter_id).forward_delta(x)

    def _adapter(self, k: int) -> BottleneckAdapter:
        return cast(BottleneckAdapter, self.adapters[k])  # __init__ builds every entry as one

    def adapter_config(self) -> dict[str, object]:
        first = self._adapter(0).adapter_config()
        return {**first, "method": "adapter_stack", "num_adapters": self.num_adapters}

    def extra_repr(self) -> str:
        return f"num_adapters={self.num_adapters}"
