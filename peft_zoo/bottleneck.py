"""Bottleneck adapters as AdapterHub places them (``adapters`` 1.3: Houlsby et al., 2019,
arXiv:1902.00751; Pfeiffer et al., 2020, arXiv:2005.00247; He et al., 2022, arXiv:2110.04366).

One :class:`BnAdapter` sits at one *site* of a transformer layer: after the attention
output (AdapterHub's ``mh_adapter``) or after the feed-forward output (``output_adapter``).
A site sees three things, all ``(B, L, d)``:

- ``h``: the sublayer's output (attention or FFN, after its output projection and dropout),
- ``x``: the sublayer's residual input (what the unadapted layer adds to ``h``),
- ``norm``: the layer's own LayerNorm after the residual (BERT's post-LN), or ``None`` in a
  pre-LN block (GPT-2, LLaMA), where the block adds ``x`` itself.

The bottleneck itself (``r = d // reduction_factor``)::

    f(z) = gate(z) * dropout(s * (W_up · act(W_down · LN_b(z) + b_down) + b_up))
           W_down: (r, d), W_up: (d, r), s: a float, a learned (1,) or a learned (d,) ("channel")

``LN_b`` is the adapter's own LayerNorm (``ln_before``), ``gate(z)`` the optional gating
``mean_L sigmoid(W_g z + b_g)``, shape ``(B, 1, 1)`` (``use_gating``).

**Serial** (``is_parallel=False``), exactly AdapterHub's ``pre_forward`` / ``forward`` /
``post_forward``::

    res = h                                   if residual_before_ln is True
    z   = norm(h + x)  (h + x without norm)   if original_ln_before, else z = h
    res = h + x                               if residual_before_ln == "post_add" (needs norm)
    res = z                                   if residual_before_ln is False
    a   = LN_a(f(z) + res)                    if ln_after (with adapter_residual_before_ln)
    a   = LN_a(f(z)) + res                    if ln_after (without); f(z) + res without ln_after
    out = norm(a + x)  (a + x without norm)   if original_ln_after, else out = a

**Parallel** (``is_parallel=True``): the adapter reads the sublayer's *input*::

    a   = LN_a(f(x)) + h                      (LN_a only with ln_after)
    out = norm(a + x)  (a + x without norm)   if original_ln_after, else out = a

Presets: Pfeiffer (``seq_bn``) is serial with ``original_ln_before=True``; Houlsby
(``double_seq_bn``) serial with ``original_ln_before=False`` at both sites; He et al.'s
parallel adapter (``par_bn``) scales by 4. Parameters per site: ``2 d r + r + d`` (plus
``2 d`` per own LayerNorm, ``d + 1`` for the gate, 1 or ``d`` for a learned scaling).

Initialisation (``init_weights``): ``"bert"``: both projections ``N(0, 0.02)``, biases 0
(the adapter starts *near* the identity); ``"mam_adapter"``: down Kaiming-uniform, up zero
(exactly the identity); ``"houlsby"``: both truncated ``N(0, 0.01)`` in ``[-0.02, 0.02]``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .core.base import AdapterModule
from .core.checks import (
    check_bool,
    check_float_dtype,
    check_int_in,
    check_positive_int,
    check_probability,
    short_repr,
)


def _gelu_new(x: torch.Tensor) -> torch.Tensor:  # transformers' NewGELUActivation, op for op
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def _gelu_fast(x: torch.Tensor) -> torch.Tensor:  # transformers' FastGELUActivation
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


# AdapterHub's non_linearity names (transformers' ACT2FN, plus its own "leakyrelu").
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "relu6": F.relu6,
    "relu2": lambda x: torch.square(F.relu(x)),
    "leakyrelu": F.leaky_relu,
    "leaky_relu": F.leaky_relu,
    "gelu": F.gelu,
    "gelu_new": _gelu_new,
    "gelu_fast": _gelu_fast,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "silu": F.silu,
    "swish": F.silu,
    "mish": F.mish,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "linear": lambda x: x,
}
INIT_WEIGHTS = ("bert", "mam_adapter", "houlsby")
SCALING_MODES = ("learned", "channel")


def check_non_linearity(value: object, name: str = "non_linearity") -> str:
    """``value`` if it names an activation of :data:`ACTIVATIONS` (any case, as AdapterHub
    lower-cases it), else raise naming ``name``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be an activation name (str), got {short_repr(value)}")
    if value.lower() not in ACTIVATIONS:
        raise ValueError(f"{name}={value!r} is not one of {sorted(ACTIVATIONS)}")
    return value


def check_scaling(value: object, name: str = "scaling") -> float | str:
    """A finite float (an int is read as a float), ``"learned"`` or ``"channel"``."""
    if isinstance(value, str):
        if value not in SCALING_MODES:
            raise ValueError(f"{name} must be a number, 'learned' or 'channel', got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, 'learned' or 'channel', got {short_repr(value)}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def check_residual_before_ln(value: object, name: str = "residual_before_ln") -> bool | str:
    """``True``, ``False`` or ``"post_add"`` (a 1 or ``"yes"`` is refused)."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise TypeError(
            f"{name} must be True, False or 'post_add', got {short_repr(value)} of type {type(value).__name__}"
        )
    if value != "post_add":
        raise ValueError(f"{name} must be True, False or 'post_add', got {value!r}")
    return value


class _Activation(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.fn = ACTIVATIONS[name.lower()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


class BnAdapter(AdapterModule):
    """One AdapterHub bottleneck adapter at one site (the maths in the module docstring).

    ``forward(h, x, norm)``: ``(B, L, d), (B, L, d) -> (B, L, d)``, what the site returns in
    place of ``norm(h + x)``. ``residual_delta(h, x)``: for a pre-LN block that adds ``x``
    itself: ``g`` with ``x + g`` equal to ``forward(h, x, None)`` (bit for bit when
    ``original_ln_after``; else ``g = out - x``, one rounding apart).
    """

    def __init__(
        self,
        d_model: int,
        bottleneck_dim: int,
        *,
        non_linearity: str = "relu",
        original_ln_before: bool = True,
        original_ln_after: bool = True,
        residual_before_ln: bool | str = True,
        adapter_residual_before_ln: bool = False,
        ln_before: bool = False,
        ln_after: bool = False,
        init_weights: str = "bert",
        init_weights_seed: int | None = None,
        scaling: float | str = 1.0,
        is_parallel: bool = False,
        use_gating: bool = False,
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        d, r = check_positive_int(d_model, "d_model"), check_positive_int(bottleneck_dim, "bottleneck_dim")
        flags = {"original_ln_before": original_ln_before, "original_ln_after": original_ln_after}
        flags.update(adapter_residual_before_ln=adapter_residual_before_ln, ln_before=ln_before)
        flags.update(ln_after=ln_after, is_parallel=is_parallel, use_gating=use_gating)
        for flag, value in flags.items():
            check_bool(value, flag)
        self.residual_before_ln = check_residual_before_ln(residual_before_ln)
        if init_weights not in INIT_WEIGHTS:
            raise ValueError(f"init_weights must be one of {INIT_WEIGHTS}, got {short_repr(init_weights)}")
        scale = check_scaling(scaling)
        if init_weights_seed is not None:
            check_int_in(init_weights_seed, "init_weights_seed", 0, 2**63 - 1)
        check_float_dtype(dtype, "BnAdapter dtype")
        super().__init__()
        self.d_model, self.bottleneck_dim = d, r
        self.original_ln_before, self.original_ln_after = original_ln_before, original_ln_after
        self.adapter_residual_before_ln, self.is_parallel = adapter_residual_before_ln, is_parallel
        self.init_weights, self.scaling_mode = init_weights, scale
        kw = {"device": device, "dtype": dtype}
        # Built in AdapterHub's order, so a fixed init_weights_seed draws the same numbers.
        self.norm_before = nn.LayerNorm(d, **kw) if ln_before else None  # type: ignore[arg-type]  # device, dtype
        self.down = nn.Linear(d, r, **kw)  # type: ignore[arg-type]  # W_down: (r, d)
        self.act = _Activation(check_non_linearity(non_linearity))
        self.up = nn.Linear(r, d, **kw)  # type: ignore[arg-type]  # W_up: (d, r)
        self.scaling: nn.Parameter | float = (
            scale
            if isinstance(scale, float)
            else nn.Parameter(
                torch.ones(1 if scale == "learned" else d, **kw)  # type: ignore[arg-type]  # device, dtype
            )
        )
        self.norm_after = nn.LayerNorm(d, **kw) if ln_after else None  # type: ignore[arg-type]  # device, dtype
        self.gate = nn.Linear(d, 1, **kw) if use_gating else None  # type: ignore[arg-type]  # device, dtype
        self.dropout = nn.Dropout(check_probability(dropout, "dropout"))
        self.init_weights_seed = init_weights_seed
        self.reset_adapter_parameters()

    def reset_adapter_parameters(self) -> None:
        """AdapterHub's ``init_weights``, in its order of random draws; with a (non-zero, as in
        AdapterHub) ``init_weights_seed`` from that seed, the global generator left untouched."""
        if not self.init_weights_seed:
            self._init_weights()
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_weights_seed)
            self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        down, up, gate = self.down, self.up, self.gate
        if self.init_weights == "houlsby":
            nn.init.trunc_normal_(down.weight, mean=0, std=1e-2, a=-2e-2, b=2e-2)
            nn.init.trunc_normal_(up.weight, mean=0, std=1e-2, a=-2e-2, b=2e-2)
        elif self.init_weights == "mam_adapter":
            nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))
            nn.init.zeros_(up.weight)
        else:
            down.weight.normal_(mean=0.0, std=0.02)
            up.weight.normal_(mean=0.0, std=0.02)
        nn.init.zeros_(down.bias)
        nn.init.zeros_(up.bias)
        if gate is not None and self.init_weights != "houlsby":
            gate.weight.normal_(mean=0.0, std=0.02)
            nn.init.zeros_(gate.bias)

    def bottleneck(self, z: torch.Tensor) -> torch.Tensor:
        """``f(z)``: ``(B, L, d) -> (B, L, d)``, before any residual."""
        if z.shape[-1] != self.d_model:
            raise ValueError(f"BnAdapter expects (..., {self.d_model}), got {tuple(z.shape)}")
        inner = z if self.norm_before is None else self.norm_before(z)
        up = self.up(self.act(self.down(inner))) * self.scaling  # (..., r) -> (..., d)
        out = self.dropout(up)
        if self.gate is not None:
            if z.dim() != 3:
                raise ValueError(f"use_gating needs (B, L, d) inputs, got {tuple(z.shape)}")
            gate = torch.mean(torch.sigmoid(self.gate(z)), dim=1).unsqueeze(-1)  # (B, 1, 1)
            out = out * gate
        return out

    def _before_post(self, h: torch.Tensor, x: torch.Tensor, norm: nn.Module | None) -> torch.Tensor:
        """``a`` of the module docstring: the site's value before ``original_ln_after``."""
        if self.is_parallel:
            out = self.bottleneck(x)
            if self.norm_after is not None:
                out = self.norm_after(out)
            return out + h
        residual: torch.Tensor | None = h if self.residual_before_ln is True else None
        z = h
        if self.original_ln_before:
            z = h + x
            if norm is not None:
                if self.residual_before_ln == "post_add":
                    residual = z
                z = norm(z)
        if self.residual_before_ln is False:
            residual = z
        if residual is None:
            raise ValueError("residual_before_ln='post_add' needs original_ln_before and the layer's norm")
        out = self.bottleneck(z)
        if self.adapter_residual_before_ln:
            out = out + residual
        if self.norm_after is not None:
            out = self.norm_after(out)
        if not self.adapter_residual_before_ln:
            out = out + residual
        return out

    def forward(self, h: torch.Tensor, x: torch.Tensor, norm: nn.Module | None = None) -> torch.Tensor:
        """``(B, L, d), (B, L, d) -> (B, L, d)``: the site's output (module docstring)."""
        out = self._before_post(h, x, norm)
        if self.original_ln_after:
            out = out + x if norm is None else norm(out + x)
        return out

    def residual_delta(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, d) -> (B, L, d)``: ``g`` with ``x + g == forward(h, x, None)`` for a
        pre-LN block (GPT-2, LLaMA) whose own code adds ``x`` after the sublayer."""
        out = self._before_post(h, x, None)
        return out if self.original_ln_after else out - x

    def adapter_config(self) -> dict[str, object]:
        return {
            "method": "bottleneck",
            "d_model": self.d_model,
            "bottleneck_dim": self.bottleneck_dim,
            "non_linearity": self.act.name,
            "is_parallel": self.is_parallel,
            "scaling": self.scaling_mode,
        }

    def extra_repr(self) -> str:
        kind = "parallel" if self.is_parallel else "serial"
        return f"d_model={self.d_model}, bottleneck_dim={self.bottleneck_dim}, {kind}, scaling={self.scaling_mode}"
