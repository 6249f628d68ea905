"""What training costs in bytes, from a model's geometry alone.

:func:`training_memory` counts bytes of weights, gradients, optimizer states and master weights (no activations, no buffers): Adam / AdamW keeps two moments per
trainable parameter (``optimizer_dtype``, float32 by default); gradients exist for trainable
parameters only, in the parameter dtype; mixed precision keeps a float32 master copy of each
trainable parameter (ZeRO, Rajbhandari et al. 2020: ``2 + 2 + 12 = 16`` bytes per parameter
for fp16 Adam). For LoRA the frozen base contributes its weights only. PyTorch's ``AdamW``
also keeps a 4-byte ``step`` counter per parameter *tensor*, ignored here.

:func:`adapter_bytes` is what a trained adapter weighs on disk or in a serving bank.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .counts import RankPattern, Targets, full_parameters, lora_trainable_parameters
from .geometry import ModelGeometry

__all__ = ["TrainingMemory", "adapter_bytes", "training_memory"]


def _bytes_per(dtype: torch.dtype | str, what: str) -> int:
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"{what}: {dtype!r} is not a torch dtype name (e.g. 'float32', 'bfloat16')")
        dtype = resolved
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{what} must be a torch.dtype or its name, got {dtype!r}")
    if not (dtype.is_floating_point or dtype == torch.int8):
        raise ValueError(f"{what} must be a floating-point dtype, got {dtype}")
    return dtype.itemsize


def adapter_bytes(
    geometry: ModelGeometry,
    targets: Targets,
    rank: int,
    *,
    dtype: torch.dtype | str = torch.float32,
    rank_pattern: RankPattern | None = None,
    layers: int | Iterable[int] | None = None,
) -> int:
    """Bytes of the LoRA tensors stored in ``dtype``: ``sum r_m (in_m + out_m) * itemsize``.
    The Geneformer seed's rank-8 adapter on all 122 linears: 1.7M parameters, 6.8 MB float32."""
    size = _bytes_per(dtype, "dtype")
    return size * lora_trainable_parameters(geometry, targets, rank, rank_pattern=rank_pattern, layers=layers)


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes that training holds besides activations (see the module docstring)."""

    trainable: int  # trainable parameters
    frozen: int  # frozen parameters (the base model under LoRA; 0 for full fine-tuning)
    weights: int  # every parameter, trainable and frozen, in the parameter dtype
    grads: int  # one gradient per trainable parameter, in the parameter dtype
    optimizer_states: int  # Adam's two moments per trainable parameter, in the optimizer dtype
    master_weights: int  # float32 copy of the trainable parameters (mixed precision), else 0

    @property
    def total(self) -> int:
        """All four parts, in bytes."""
        return self.weights + self.grads + self.optimizer_states + self.master_weights


def training_memory(
    geometry: ModelGeometry,
    targets: Targets | None = None,
    rank: int | None = None,
    *,
    rank_pattern: RankPattern | None = None,
    layers: int | Iterable[int] | None = None,
    param_dtype: torch.dtype | str = torch.float32,
    optimizer_dtype: torch.dtype | str = torch.float32,
    master_weights: bool | None = None,
) -> TrainingMemory:
    """Weights, gradients, Adam states and master weights of full fine-tuning (``targets=None``)
    or of LoRA (``targets`` and ``rank`` given).

    Args:
        param_dtype: dtype the parameters (and so their gradients) are stored in.
        optimizer_dtype: dtype of Adam's ``exp_avg`` and ``exp_avg_sq`` (float32 in mixed
            precision; PyTorch's ``AdamW`` on bfloat16 parameters keeps bfloat16 moments).
        master_weights: keep a float32 copy of the trainable parameters; ``None`` = yes when
            ``param_dtype`` is narrower than float32.

    LLaMA-7B, bfloat16 with float32 master weights and moments: full fine-tuning
    ``16 * 6.74e9`` bytes (108 GB); LoRA r = 16 on q/k/v/o: ``2 * 6.74e9 + 16 * 16.8e6`` (13.7 GB).
    """
    p_size = _bytes_per(param_dtype, "param_dtype")
    o_size = _bytes_per(optimizer_dtype, "optimizer_dtype")
    if master_weights is None:
        master_weights = p_size < 4
    if (targets is None) != (rank is None):
        raise ValueError("give both targets and rank for LoRA, or neither for full fine-tuning")
    base = full_parameters(geometry)
    if targets is None or rank is None:  # both None (checked above): full fine-tuning
        if rank_pattern or layers is not None:
            raise ValueError("rank_pattern and layers only apply to LoRA (give targets and rank)")
        trainable, frozen = base, 0
    else:
        trainable = lora_trainable_parameters(
            geometry, targets, rank, rank_pattern=rank_pattern, layers=layers
        )
        frozen = base
    return TrainingMemory(
        trainable=trainable,
        frozen=frozen,
        weights=(trainable + frozen) * p_size,
        grads=trainable * p_size,
        optimizer_states=2 * trainable * o_size,  # exp_avg and exp_avg_sq
        master_weights=4 * trainable if master_weights else 0,
    )
