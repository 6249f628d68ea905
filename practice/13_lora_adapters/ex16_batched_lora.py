# Challenge 16 · batched_lora: many LoRA adapters in one batch (gather + bmm). Replace each TODO(ex16) with your code, then run:
#     peft-zoo check 16        (or: pytest practice/13_lora_adapters/test_ex16_batched_lora.py)
# Stuck? `peft-zoo hint 16`. Start over: `peft-zoo reset 16` (your file is backed up).
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
    # TODO(ex16): check the shapes and the ids (ValueError naming the bad value and the valid range)
    raise NotImplementedError("ex16 (batched_lora): batched_lora_delta is not implemented yet")
    # TODO(ex16): gather A, B and scale by the clamped ids, two torch.bmm, zero the rows whose id is -1
    raise NotImplementedError("ex16 (batched_lora): batched_lora_delta is not implemented yet")


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
    # TODO(ex16): check out_features, then the shared base output plus every sample's LoRA delta
    raise NotImplementedError("ex16 (batched_lora): batched_lora_forward is not implemented yet")
