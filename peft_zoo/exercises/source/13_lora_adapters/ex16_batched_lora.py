"""Batched multi-adapter LoRA: one frozen base, many fine-tunes, one forward pass.

A server that hosts N LoRA fine-tunes of one base model gets requests for different
adapters mixed in the same batch. Merging (challenge 12) picks one adapter for everyone;
looping over samples wastes the batch. Instead, preload every adapter as stacked tensors
and let each sample pick its own by an index (the idea behind Punica and S-LoRA):

    lora_A: (N, r, in)    lora_B: (N, out, r)    scale: (N,)  (alpha / r of each adapter)
    adapter_ids: (B,)     values in [-1, N); -1 means "base model only"

    y[b] = base(x[b]) + scale[i] · x[b] A[i]^T B[i]^T      with i = adapter_ids[b]
    y[b] = base(x[b])                                      when adapter_ids[b] == -1

Gather-and-bmm computes all B low-rank paths at once: ``lora_A[ids]`` gathers one
``(r, in)`` matrix per sample into a ``(B, r, in)`` batch, and ``torch.bmm`` multiplies
sample b by its own matrices. The trap is ``-1``: in Python and PyTorch a negative index
counts from the end, so ``lora_A[-1]`` silently gathers the LAST adapter. Gather with the
ids clamped to a valid row instead, and give the base-only samples a scale of exactly 0,
so their LoRA path (and its gradient into every adapter) is exactly zero.
"""

from __future__ import annotations

import torch
from torch import nn


def batched_lora_delta(
    x: torch.Tensor,
    adapter_ids: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    """The LoRA path of every sample through its own adapter, ``(B, T, in) -> (B, T, out)``.

    Args:
        x: ``(B, T, in)`` inputs.
        adapter_ids: ``(B,)`` integer tensor, one adapter per sample, ``-1`` for base only.
        lora_A: ``(N, r, in)``, the A matrices of the N adapters, stacked.
        lora_B: ``(N, out, r)``, the B matrices, stacked.
        scale: ``(N,)`` float tensor, each adapter's ``alpha / r``.

    Row b of the result is ``scale[i] * x[b] @ lora_A[i].T @ lora_B[i].T`` for
    ``i = adapter_ids[b]``, and exactly zero where the id is ``-1``.

    Raise ``ValueError`` before computing anything when an id is out of range (``< -1`` or
    ``>= N``; name the bad value and the valid range), when there is not exactly one id per
    sample, or when the feature sizes disagree (``x``'s last dim vs ``lora_A``'s, the ranks
    of A and B, the number of adapters in A, B and scale). About 20 lines.
    """
    # BEGIN SOLUTION: check the shapes and the ids (ValueError naming the bad value and the valid range)
    if x.dim() != 3:
        raise ValueError(f"x must be (B, T, in), got shape {tuple(x.shape)}")
    if lora_A.dim() != 3 or lora_B.dim() != 3:
        raise ValueError(
            f"lora_A must be (N, r, in) and lora_B (N, out, r), got {tuple(lora_A.shape)} and {tuple(lora_B.shape)}"
        )
    n, r, d_in = lora_A.shape
    if lora_B.shape[0] != n or lora_B.shape[2] != r or tuple(scale.shape) != (n,):
        raise ValueError(
            f"lora_A {tuple(lora_A.shape)}, lora_B {tuple(lora_B.shape)} and scale {tuple(scale.shape)} "
            "must agree on N adapters of rank r: (N, r, in), (N, out, r), (N,)"
        )
    if x.shape[-1] != d_in:
        raise ValueError(f"x has {x.shape[-1]} input features but the adapters expect {d_in}")
    if tuple(adapter_ids.shape) != (x.shape[0],):
        raise ValueError(
            f"adapter_ids must hold one id per sample, shape ({x.shape[0]},), got {tuple(adapter_ids.shape)}"
        )
    bad = adapter_ids[(adapter_ids < -1) | (adapter_ids >= n)]  # ids that name no adapter
    if bad.numel():
        raise ValueError(
            f"adapter id {int(bad[0])} out of range: valid ids are -1 (base only) and 0..{n - 1} ({n} adapters)"
        )
    # END SOLUTION
    # BEGIN SOLUTION: gather A, B and scale by the clamped ids, two torch.bmm, zero the rows whose id is -1
    idx = adapter_ids.clamp(min=0)  # (B,) -1 -> row 0, a valid row; its result is zeroed below
    s = scale[idx].to(x.dtype) * (adapter_ids >= 0).to(x.dtype)  # (B,) scale of each sample, 0 for base only
    A = lora_A[idx]  # (B, r, in): sample b's A
    B = lora_B[idx]  # (B, out, r): sample b's B
    h = torch.bmm(x, A.transpose(1, 2))  # (B, T, in) @ (B, in, r) -> (B, T, r)
    y = torch.bmm(h, B.transpose(1, 2))  # (B, T, r) @ (B, r, out) -> (B, T, out)
    return y * s.view(-1, 1, 1)  # per-sample scale, broadcast over T and out
    # END SOLUTION


def batched_lora_forward(
    base: nn.Linear,
    x: torch.Tensor,
    adapter_ids: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    """``base(x) + batched_lora_delta(...)``: ``(B, T, in) -> (B, T, out)``.

    The frozen base runs once for the whole batch; samples with id ``-1`` get exactly
    ``base(x[b])``. Raise ``ValueError`` when ``lora_B``'s output size differs from
    ``base.out_features``. About 6 lines.
    """
    # BEGIN SOLUTION: check out_features, then the shared base output plus every sample's LoRA delta
    if lora_B.dim() != 3 or lora_B.shape[1] != base.out_features:
        raise ValueError(
            f"lora_B must be (N, {base.out_features}, r) to match the base's out_features, "
            f"got {tuple(lora_B.shape)}"
        )
    delta = batched_lora_delta(x, adapter_ids, lora_A, lora_B, scale)  # (B, T, out); validates the rest
    return base(x) + delta  # one base pass for the whole batch
    # END SOLUTION
