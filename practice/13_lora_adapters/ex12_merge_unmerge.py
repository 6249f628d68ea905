# Challenge 12 · merge / unmerge: fold scale·B·A into the weight and back. Replace each TODO(ex12) with your code, then run:
#     peft-zoo check 12        (or: pytest practice/13_lora_adapters/test_ex12_merge_unmerge.py)
# Stuck? `peft-zoo hint 12`. Start over: `peft-zoo reset 12` (your file is backed up).
"""Merging LoRA: serve an adapted layer at exactly the cost of the original one.

A LoRA layer computes two things per token, the frozen product and the low-rank path:

    y = W0 x + b + scale · B (A x)           A: (rank, in)   B: (out, rank)

Matrix multiplication distributes over addition, so the same output comes from one
matrix:

    y = (W0 + scale · B A) x + b             scale · B A: (out, in), the shape of W0

Merging writes ``W0 + scale · B A`` into the base weight once; afterwards the layer is a
plain Linear (no extra latency at inference). Unmerging subtracts the same product and
gives ``W0`` back (up to float rounding), ready to train again or to swap in another
adapter. The ``merged`` flag keeps the arithmetic honest: merging twice must not add the
update twice, and unmerging a layer that was never merged must not subtract it.

Here you write the two functions for the library's :class:`peft_zoo.LoRALinear`, whose
``forward`` already reads ``layer.merged`` (merged: it returns ``base(x)``).
"""

from __future__ import annotations

import torch

from peft_zoo import LoRALinear


def merge_lora(layer: LoRALinear) -> None:
    """Fold the LoRA update into the frozen weight, in place: ``W0 <- W0 + scale · B A``.

    ``layer.lora_B @ layer.lora_A`` is ``(out, rank) @ (rank, in) -> (out, in)``, the shape
    of ``layer.base.weight``. Change that weight tensor in place (do not replace the
    Parameter) under ``torch.no_grad()``, so autograd does not record the update, then set
    ``layer.merged = True``. A layer that is already merged is left as it is. About 5 lines.
    """
    # TODO(ex12): if not merged yet, add scale * B @ A to base.weight in place (no grad), then set merged
    raise NotImplementedError("ex12 (merge_unmerge): merge_lora is not implemented yet")


def unmerge_lora(layer: LoRALinear) -> None:
    """Undo :func:`merge_lora`: ``W <- W - scale · B A`` in place, then ``layer.merged = False``.

    A layer that is not merged is left as it is. About 5 lines.
    """
    # TODO(ex12): if merged, subtract scale * B @ A from base.weight in place (no grad), then clear merged
    raise NotImplementedError("ex12 (merge_unmerge): unmerge_lora is not implemented yet")
