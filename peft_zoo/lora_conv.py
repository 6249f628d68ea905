"""LoRA on a convolution (Hu et al., 2021, arXiv:2106.09685, applied to ``nn.Conv1d`` /
``nn.Conv2d`` / ``nn.Conv3d`` as Hugging Face PEFT's ``lora.Conv1d`` / ``Conv2d`` /
``Conv3d`` do).

A convolution with weight ``W0`` (out, in / groups, *k) is a linear map on each receptive
field, whose fan-in is ``in * prod(k)``. LoRA factors its update through ``r`` channels::

    y = conv(x, W0) + b + scale * conv_1x1(conv_k(dropout(x), A), B)
        A: (r, in, *k)   the base's kernel size, stride, padding and dilation; no groups
        B: (out, r / groups, 1, ..., 1)   a pointwise convolution with the base's groups

``A`` sees the same receptive fields as the base, so the two outputs line up; ``B`` mixes the
``r`` channels pointwise. ``scale = alpha / r`` (``alpha / sqrt(r)`` with rsLoRA).
``A`` starts Kaiming-uniform over its fan-in ``in * prod(k)`` (as ``nn.Conv`` does), ``B = 0``,
so ``ΔW = 0`` and the layer equals its base. Trainable parameters:
``r * in * prod(k) + out * r / groups``.

Merge (``groups == 1``): composing the two convolutions gives one kernel of the base's
shape, ``ΔW[o, i, t] = scale * sum_j B[o, j] A[j, i, t]``; for a 1x1 kernel this is the
matrix product ``B A``, in general it is computed as PEFT does, by convolving ``A``
(transposed to (in, r, *k), read as a batch of ``in`` images with ``r`` channels) with ``B``.
With ``groups > 1``, ``A`` mixes all input channels, so ``ΔW`` has no grouped form: the layer
trains and runs unmerged but cannot merge (PEFT refuses too).

Differences from PEFT 0.21.2, both where PEFT's unmerged and merged outputs disagree: ``A``
uses the base's ``dilation`` (PEFT's does not, so a dilated kernel's LoRA path would not
match its merged weight, or its output shape), and a ``padding_mode`` other than
``"zeros"`` is refused (PEFT pads the LoRA path with zeros whatever the base does).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .core.checks import check_bool
from .lora import LowRankAdapter, check_lora_hyperparameters, init_lora_pair, set_lora_hyperparameters

_CONV_FN: dict[int, Callable[..., torch.Tensor]] = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _check_conv_base(base: object, rank: int) -> nn.Conv1d | nn.Conv2d | nn.Conv3d:
    """``base`` if LoRAConv can wrap it, else a TypeError / ValueError naming the problem."""
    if not isinstance(base, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        raise TypeError(
            f"LoRAConv base must be an nn.Conv1d, nn.Conv2d or nn.Conv3d, got {type(base).__name__}"
        )
    if base.padding_mode != "zeros":
        raise ValueError(
            f"LoRAConv supports padding_mode='zeros' only, got {base.padding_mode!r}: the LoRA path "
            "would pad differently from the base, so merging would change the output"
        )
    if rank % base.groups:
        raise ValueError(
            f"LoRAConv: rank {rank} must be divisible by the base's groups={base.groups} "
            "(B is a grouped pointwise convolution r -> out_channels)"
        )
    return base


class LoRAConv(LowRankAdapter):
    """An ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Conv3d`` with a trainable low-rank update; the
    base layer is frozen.

    Args:
        base: the convolution to adapt; kept as ``self.base`` with ``requires_grad=False``.
        rank: ``r`` > 0, the number of intermediate channels; divisible by ``base.groups``.
        alpha: scaling numerator; defaults to ``rank`` (so ``scale == 1``).
        dropout: probability in ``[0, 1)`` of dropping input elements *of the LoRA path only*.
        rslora: use ``alpha / sqrt(rank)`` instead of ``alpha / rank``.

    Shapes (PEFT's ``lora_A.weight`` / ``lora_B.weight``): ``lora_A (rank, in_channels, *k)``,
    ``lora_B (out_channels, rank / groups, 1, ..., 1)``; ``forward`` maps
    ``(N, in_channels, *spatial)`` (or unbatched ``(in_channels, *spatial)``) to the base's
    output shape. ``in_features == in_channels``, ``out_features == out_channels`` (as in PEFT).
    """

    adapter_param_names: tuple[str, ...] | None = ("lora_A", "lora_B")
    base: nn.Conv1d | nn.Conv2d | nn.Conv3d

    def __init__(
        self,
        base: nn.Conv1d | nn.Conv2d | nn.Conv3d,
        rank: int,
        alpha: float | None = None,
        *,
        dropout: float = 0.0,
        rslora: bool = False,
    ) -> None:
        # Validate everything before touching ``base``.
        rank, alpha, dropout = check_lora_hyperparameters(rank, alpha, dropout)
        base = _check_conv_base(base, rank)
        check_bool(rslora, "rslora")
        super().__init__()

        self.base = base
        self.in_features, self.out_features = base.in_channels, base.out_channels
        self.spatial_dims = base.weight.dim() - 2
        self.groups = base.groups
        self.fan_in_fan_out = False
        set_lora_hyperparameters(self, rank, alpha, dropout, rslora)

        w, ones = base.weight, (1,) * self.spatial_dims
        kernel = tuple(base.kernel_size)
        self.lora_A = nn.Parameter(
            torch.empty(rank, self.in_features, *kernel, device=w.device, dtype=w.dtype)
        )
        self.lora_B = nn.Parameter(
            torch.empty(self.out_features, rank // self.groups, *ones, device=w.device, dtype=w.dtype)
        )
        self.merged = False
        self.reset_lora_parameters()
        self.base.requires_grad_(False)  # last: a failed constructor leaves ``base`` as it was

    def reset_lora_parameters(self) -> None:
        """A ~ Kaiming-uniform over its fan-in ``in * prod(k)`` (as ``nn.Conv``), B = 0, so ΔW = 0."""
        init_lora_pair(self.lora_A, self.lora_B)

    def _refuse_grouped_merge(self) -> None:
        if self.groups > 1:
            raise NotImplementedError(
                f"LoRAConv cannot merge or form delta_weight for a convolution with groups={self.groups}: "
                "A mixes all input channels, so the update has no grouped kernel. Run it unmerged."
            )

    def _delta(self, dtype: torch.dtype) -> torch.Tensor:
        """``scale * (B ∘ A)`` as one kernel ``(out, in, *k)``, computed as PEFT does."""
        self._refuse_grouped_merge()
        a, b = self.lora_A.to(dtype), self.lora_B.to(dtype)
        if self.spatial_dims == 2 and tuple(self.base.kernel_size) == (1, 1):
            # 1x1 convolution: the composition is the matrix product B A.
            return (b.squeeze(3).squeeze(2) @ a.squeeze(3).squeeze(2)).unsqueeze(2).unsqueeze(3) * self.scale
        # (in, r, *k) read as `in` images with r channels, convolved with B (out, r, 1..):
        # out[i, o, t] = sum_j B[o, j] A[j, i, t].
        return _CONV_FN[self.spatial_dims](a.transpose(0, 1), b).transpose(0, 1) * self.scale

    def delta_weight(self) -> torch.Tensor:
        """The update ``scale * (B ∘ A)``, shape ``(out_channels, in_channels, *kernel_size)``
        (the base weight's shape), in the adapter dtype. Refused when ``groups > 1``."""
        return self._delta(self.lora_A.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ``ΔW`` into ``base.weight`` (refused when ``groups > 1``). Merging an
        already-merged layer is a no-op."""
        if not self.merged:
            self._refuse_grouped_merge()
        super().merge()

    def _check_input(self, x: torch.Tensor) -> None:
        nd = self.spatial_dims
        if x.dim() not in (nd + 1, nd + 2) or x.shape[-(nd + 1)] != self.in_features:
            raise ValueError(
                f"LoRAConv over a {type(self.base).__name__} expects input of shape (N, {self.in_features}, "
                f"{nd} spatial dims) or ({self.in_features}, {nd} spatial dims), got {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, *spatial) -> (N, out_channels, *spatial_out)`` (N optional)."""
        self._check_input(x)
        if self.merged:
            self._refuse_training_merged()
            return self.base(x)
        b, conv = self.base, _CONV_FN[self.spatial_dims]
        h = conv(
            self.lora_dropout(x), self.lora_A, None, b.stride, b.padding, b.dilation
        )  # (N, r, *spatial_out)
        return b(x) + conv(h, self.lora_B, None, 1, 0, 1, self.groups) * self.scale

    def extra_repr(self) -> str:
        return (
            f"{type(self.base).__name__}: in_channels={self.in_features}, out_channels={self.out_features}, "
            f"kernel_size={tuple(self.base.kernel_size)}, groups={self.groups}, rank={self.rank}, "
            f"alpha={self.alpha:g}, scale={self.scale:g}, rslora={self.rslora}, "
            f"dropout={self.dropout_p:g}, merged={self.merged}"
        )
