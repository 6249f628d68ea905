"""IA³: learned elementwise rescaling of a frozen layer (Liu et al., 2022, arXiv:2205.05638).

    y = (W0 x + b) ⊙ l          l: (out,)   (keys, values: scale the output)
    y = W0 (x ⊙ l) + b          l: (in,)    (feed-forward: scale the input of the down projection)

``l`` starts at ones, so at initialisation the layer equals its base. Only ``out`` (or
``in``) parameters train, the fewest of any method here. Because the rescaling is
diagonal it can be folded into the weight: ``W0 <- diag(l) W0`` (and ``b <- l ⊙ b``), or
``W0 <- W0 diag(l)`` in the feed-forward form.
"""

from __future__ import annotations

import torch
from torch import nn

from .core.base import AdapterModule, refuse_merge_into_shared, refuse_training_merged
from .core.checks import bias_of, check_bool, check_last_dim, linear_features, weight_of


class IA3Linear(AdapterModule):
    """An ``nn.Linear`` whose output (or, with ``feedforward=True``, input) is scaled by a
    trainable vector ``scale``; the base layer is frozen.

    Shapes: ``scale (out_features,)`` (``(in_features,)`` when ``feedforward``), initialised
    to ones in the base weight's dtype and device; ``forward`` maps
    ``(..., in_features) -> (..., out_features)``.
    """

    adapter_param_names = ("scale",)

    def __init__(
        self, base: nn.Module, *, feedforward: bool = False, fan_in_fan_out: bool | None = None
    ) -> None:
        check_bool(feedforward, "IA3Linear feedforward")
        if fan_in_fan_out is not None:
            check_bool(fan_in_fan_out, "IA3Linear fan_in_fan_out")
        d_in, d_out, fan_in_fan_out = linear_features(base, "IA3Linear base", fan_in_fan_out)
        super().__init__()
        self.base = base
        self.in_features = d_in
        self.out_features = d_out
        self.fan_in_fan_out = fan_in_fan_out  # base weight stored (in, out), as GPT-2's Conv1D
        self.feedforward = feedforward
        n = self.in_features if self.feedforward else self.out_features
        w = weight_of(base)
        self.scale = nn.Parameter(torch.ones(n, device=w.device, dtype=w.dtype))
        self.merged = False
        self.base.requires_grad_(False)  # last: a constructor that fails leaves the caller's flags

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``."""
        check_last_dim(x, self.in_features, "IA3Linear")
        if self.merged:
            refuse_training_merged(self, (self.scale,), "scale")
            return self.base(x)
        if self.feedforward:
            return self.base(x * self.scale)  # scale the input features
        return self.base(x) * self.scale  # scale the output features

    @property
    def weight(self) -> torch.Tensor:
        """The weight this layer applies, ``diag(l) W0`` (``W0 diag(l)`` in the feed-forward form),
        shape ``(out_features, in_features)``. Computed on access (see ``LoRALinear.weight``)."""
        w = weight_of(self.base)
        if self.merged:
            return w
        return w * self._along(self.scale, self.feedforward)

    @property
    def bias(self) -> torch.Tensor | None:
        """The bias this layer applies: ``l ⊙ b`` in the output form, ``b`` in the feed-forward form."""
        b = bias_of(self.base)
        if b is None or self.merged or self.feedforward:
            return b
        return b * self.scale

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the scale into ``base.weight`` (and ``base.bias``). Refuses a zero in the scale,
        because such a merge could never be undone. No-op when already merged."""
        if self.merged:
            return
        refuse_merge_into_shared(self)
        if bool((self.scale == 0).any()):
            raise ValueError("IA3Linear.merge: scale has zero entries; merging would lose the base weight")
        self._rescale(self.scale)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Divide the scale back out of the base weight. No-op when not merged."""
        if not self.merged:
            return
        self._rescale(self.scale.reciprocal())
        self.merged = False

    def _along(self, v: torch.Tensor, inputs: bool) -> torch.Tensor:
        """``v`` shaped to broadcast along the weight's input (or output) axis, whichever
        layout the base stores: ``(out, in)``, or ``(in, out)`` with ``fan_in_fan_out``."""
        input_axis = 0 if self.fan_in_fan_out else 1
        axis = input_axis if inputs else 1 - input_axis
        return v[:, None] if axis == 0 else v[None, :]

    def _rescale(self, factor: torch.Tensor) -> None:
        weight_of(self.base).mul_(self._along(factor, self.feedforward))
        bias = bias_of(self.base)
        if not self.feedforward and bias is not None:
            bias.mul_(factor)

    def adapter_config(self) -> dict[str, object]:
        return {"method": "ia3", "feedforward": self.feedforward}

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"feedforward={self.feedforward}, merged={self.merged}"
        )
