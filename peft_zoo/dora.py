"""DoRA: weight-decomposed low-rank adaptation (Liu et al., 2024, arXiv:2402.09353).

DoRA splits a weight into a *magnitude* per output feature and a *direction*, adapts the
direction with LoRA and learns the magnitude directly (the paper's Eq. 5)::

    V  = W0 + s B A                         (out, in)   the LoRA-adapted weight
    W' = m ⊙ V / ||V||                      ||V||: the L2 norm of each row, shape (out,)
    y  = W' x + b                           m: (out,), trainable, initialised to ||W0||

Because ``B`` starts at zero, ``V = W0`` and ``m = ||W0||`` at initialisation, so the layer
equals its base. Section 4.3 of the paper treats ``||V||`` as a constant in backpropagation
(it is detached from the graph): the gradient then never needs the ``(out, in)`` matrix
``V`` kept for backward, which saves memory, and the paper reports no loss of accuracy.

The forward pass never builds ``W'``. It reuses the base output and adds a correction, as
Hugging Face PEFT's ``DoraLinearLayer`` does (so outputs and gradients match PEFT)::

    r = m / ||V||                                       (out,)  no gradient through ||V||
    y = base(x) + (r - 1) ⊙ (W0 x) + r ⊙ s B A x         W0 x = base(x) - b

With LoRA dropout active (training, ``dropout > 0``) PEFT feeds the dropped-out input to
both correction terms, ``W0 x`` included: ``y = base(x) + (r - 1) ⊙ W0 x_d + r ⊙ s B A x_d``
with ``x_d = dropout(x)``. This module does the same.

Merging writes ``W'`` into the base weight. ``||V||`` is stored at merge time, so unmerging
recovers ``W0 = W' ||V|| / m - s B A`` (up to float rounding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .core.base import refuse_merge_into_shared, refuse_training_merged
from .core.checks import bias_of, check_last_dim, linear_features, weight_of
from .lora import LoRALinear

__all__ = ["DoRALinear"]


class DoRALinear(LoRALinear):
    """A frozen ``nn.Linear`` (or GPT-2 ``Conv1D``) with DoRA: a learned magnitude per output
    feature times the normalised direction of ``W0 + s B A``.

    Args:
        base, rank, alpha, dropout, rslora, fan_in_fan_out: as :class:`~peft_zoo.LoRALinear`.

    Parameters: ``lora_A (rank, in_features)`` (Kaiming-uniform), ``lora_B (out_features,
    rank)`` (zeros), ``magnitude (out_features,)`` initialised to the row norms of the base
    weight, ``||W0||``. ``forward`` maps ``(..., in_features) -> (..., out_features)``.

    Raises ``ValueError`` when a row of the base weight is all zeros: its direction
    ``W0 / ||W0||`` is undefined (PEFT would produce NaN).
    """

    adapter_param_names = ("lora_A", "lora_B", "magnitude")
    magnitude: nn.Parameter  # (out,) m, initialised to ||W0||
    merged_norm: torch.Tensor | None  # (out,) ||V|| at merge time (a buffer), None while unmerged

    def __init__(
        self,
        base: nn.Module,
        rank: int,
        alpha: float | None = None,
        *,
        dropout: float = 0.0,
        rslora: bool = False,
        fan_in_fan_out: bool | None = None,
    ) -> None:
        # Validate under this class's name, and check the rows before touching ``base``.
        _, _, transposed = linear_features(base, "DoRALinear base", fan_in_fan_out)
        weight = weight_of(base)
        if weight.is_meta:
            raise ValueError(
                "DoRALinear: the base weight is on the meta device (shapes only, no values), so its "
                "row norms ||W0||, the initial magnitude, cannot be computed; load the real weights "
                "first (e.g. module.to_empty(device=...) and load_state_dict)"
            )
        with torch.no_grad():
            w0 = weight.T if transposed else weight  # (out, in)
            zero = (~(w0 != 0).any(dim=1)).nonzero().flatten().tolist()
        if zero:
            raise ValueError(
                f"DoRALinear: rows {zero[:8]}{'...' if len(zero) > 8 else ''} of the base weight are all "
                "zeros, so their direction W0 / ||W0|| is undefined; DoRA needs a nonzero weight row "
                "for every output feature"
            )
        flags = [(p, p.requires_grad) for p in base.parameters()]
        super().__init__(base, rank, alpha, dropout=dropout, rslora=rslora, fan_in_fan_out=fan_in_fan_out)
        try:
            # m = ||W0 + s B A|| = ||W0|| (B = 0): the layer starts equal to its base.
            self.magnitude = nn.Parameter(self.weight_norm())  # (out,)
        except BaseException:
            for p, flag in flags:  # a failed constructor leaves the caller's base as it was
                p.requires_grad_(flag)
            raise
        # ||V|| at merge time, so unmerge can divide it back out (None while unmerged).
        self.register_buffer("merged_norm", None, persistent=False)

    # ------------------------------------------------------------------ the decomposition

    def reset_lora_parameters(self) -> None:
        """A ~ Kaiming-uniform, B = 0, and m = ||W0 + s B A|| (= ||W0||): the layer equals its base."""
        super().reset_lora_parameters()
        if "magnitude" in self._parameters:  # not yet during __init__
            with torch.no_grad():
                self.magnitude.copy_(self.weight_norm())

    def _norm(self, dtype: torch.dtype) -> torch.Tensor:
        """``||W0 + s B A||`` per row, ``(out,)``, computed in ``dtype``, outside the graph."""
        if self.merged:
            raise RuntimeError("DoRALinear is merged: base.weight holds W', not W0; use merged_norm")
        with torch.no_grad():  # Sec. 4.3: ||V|| is a constant for backpropagation
            v = self._layout(weight_of(self.base)).to(dtype) + self._delta(dtype)  # V = W0 + s B A, (out, in)
            return torch.linalg.norm(v, dim=1)  # (out,) one norm per output feature

    def weight_norm(self) -> torch.Tensor:
        """``||W0 + s B A||``: the L2 norm of each row of the adapted weight, shape ``(out,)``,
        detached (no gradient flows through it). While merged: the norm stored at merge time."""
        dtype = weight_of(self.base).dtype
        if self.merged:
            return self._merged_norm().to(dtype, copy=True)
        return self._norm(torch.promote_types(dtype, torch.float32)).to(dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The weight this layer applies, ``W' = m ⊙ V / ||V||`` with ``V = W0 + s B A``, in the
        base weight's layout. Differentiable in ``m``, ``A`` and ``B`` (``||V||`` detached)."""
        if self.merged:
            return weight_of(self.base)
        w0 = self._layout(weight_of(self.base))  # (out, in)
        v = w0 + self._delta(w0.dtype)  # (out, in) V = W0 + s B A
        ratio = self.magnitude / self._norm(w0.dtype)  # (out,) m / ||V||
        return self._layout(ratio[:, None] * v)

    def delta_weight(self) -> torch.Tensor:
        """What DoRA changes in the weight, ``W' - W0``, shape ``(out_features, in_features)``.
        (Not only ``s B A``: the magnitude rescales the whole row.)"""
        if self.merged:
            raise RuntimeError("DoRALinear is merged: unmerge() first to separate W0 and the update")
        return self._layout(self.weight) - self._layout(weight_of(self.base))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``: ``m ⊙ (W0 + s B A) x / ||W0 + s B A|| + b``
        (with the dropped-out input in the correction terms while training with dropout)."""
        check_last_dim(x, self.in_features, "DoRALinear")
        if self.merged:
            self._refuse_training_merged()
            return self.base(x)
        result = self.base(x)  # (..., out)  W0 x + b
        w0 = self._layout(weight_of(self.base))  # (out, in)
        if isinstance(self.lora_dropout, nn.Identity) or not self.training:
            x_lora = x
            bias = bias_of(self.base)
            base_result = result if bias is None else result - bias  # (..., out)  W0 x
        else:  # PEFT: the dropped-out input feeds both correction terms
            x_lora = self.lora_dropout(x)
            base_result = F.linear(x_lora, w0.to(x.dtype))  # (..., out)  W0 x_d
        lora_result = F.linear(F.linear(x_lora, self.lora_A), self.lora_B)  # (..., out)  B A x
        ratio = self.magnitude / self._norm(x.dtype)  # (out,)  m / ||V||, norm detached
        # y = base(x) + (r - 1) W0 x + r s B A x  =  r (W0 + s B A) x + b      (Eq. 5)
        return result + ((ratio - 1) * base_result + ratio * lora_result * self.scale)

    # ------------------------------------------------------------------ merging

    @torch.no_grad()
    def merge(self) -> None:
        """Write ``W' = m ⊙ V / ||V||`` into ``base.weight`` (and keep ``||V||`` for unmerge).
        Merging an already-merged layer is a no-op. Raises ``ValueError`` (nothing changed)
        when a magnitude entry is zero: that row of ``W'`` would be zero and ``W0`` lost."""
        if self.merged:
            return
        refuse_merge_into_shared(self)
        w = weight_of(self.base)
        compute = torch.promote_types(w.dtype, torch.float32)  # form V and W' in float32 at least
        v = self._layout(w).to(compute) + self._delta(compute)  # (out, in)  V = W0 + s B A
        norm = torch.linalg.norm(v, dim=1)  # (out,)  ||V||
        m = self.magnitude.to(compute)
        bad = ((m == 0) | ~torch.isfinite(m) | (norm == 0)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(
                f"DoRALinear.merge: output features {bad[:8]} have a zero (or non-finite) magnitude or "
                "direction norm; the merged weight could not be unmerged. Nothing was changed."
            )
        w.copy_(self._layout((m / norm)[:, None] * v).to(w.dtype))  # W' = (m / ||V||) V
        self.merged_norm = norm
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Recover ``W0 = W' ||V|| / m - s B A`` from the merged weight. No-op when not merged."""
        if not self.merged:
            return
        w = weight_of(self.base)
        compute = torch.promote_types(w.dtype, torch.float32)
        ratio = self.magnitude.to(compute) / self._merged_norm().to(compute)
        v = self._layout(w).to(compute) / ratio[:, None]  # (out, in)  V = W' / (m / ||V||)
        w.copy_(self._layout(v - self._delta(compute)).to(w.dtype))  # W0 = V - s B A
        self.merged_norm = None
        self.merged = False

    def _merged_norm(self) -> torch.Tensor:
        if self.merged_norm is None:  # only if ``merged`` was set by hand
            raise RuntimeError("DoRALinear: merged is set, but no norm ||V|| was stored by merge()")
        return self.merged_norm

    def _refuse_training_merged(self) -> None:
        refuse_training_merged(self, (self.magnitude,), "magnitude and LoRA weights")
        super()._refuse_training_merged()

    # ------------------------------------------------------------------ description

    def adapter_config(self) -> dict[str, object]:
        return {**super().adapter_config(), "method": "dora"}

    def extra_repr(self) -> str:
        return super().extra_repr() + ", dora=True"
