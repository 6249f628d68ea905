# Challenge 24 · vera_linear: VeRA, one frozen seeded random pair shared by every layer, two trainable vectors. Replace each TODO(ex24) with your code, then run:
#     peft-zoo check 24        (or: pytest practice/13_lora_adapters/test_ex24_vera_linear.py)
# Stuck? `peft-zoo hint 24`. Start over: `peft-zoo reset 24` (your file is backed up).
"""VeRA (Kopiczko et al., 2023): one frozen random pair for every layer, two trainable vectors each.

LoRA trains a pair ``B A`` per layer. VeRA draws ONE random pair, freezes it, shares it
between all adapted layers, and trains only two scaling vectors per layer::

    y = W0 x + b + Λb B Λd A x       A: (r, in)  B: (out, r)        frozen, random, shared
                                     Λd = diag(lambda_d), (r,)      trainable, starts at d_initial
                                     Λb = diag(lambda_b), (out,)    trainable, starts at 0

A layer trains ``r + out`` numbers instead of LoRA's ``r (in + out)``, so ``r`` can be large.
``lambda_b = 0`` makes ``ΔW = 0`` at initialisation; ``lambda_d = d_initial != 0`` lets
``lambda_b`` receive a gradient from the first step.

Three details decide whether your layers are VeRA:

- **The pair is a pure function of the seed.** One ``torch.Generator`` seeded with ``seed``
  draws ``A`` first, then ``B``, each Kaiming-uniform over its own fan-in (its number of
  columns): ``U(-sqrt(6 / fan_in), +sqrt(6 / fan_in))``. Only the seed needs saving, and Hugging
  Face PEFT (``projection_prng_key``) regenerates the same matrices.
- **One pair for layers of different shapes.** Draw the pair for the LARGEST input and output
  sizes among the layers (``in_max``, ``out_max``) and let each layer use its own top-left
  corner, ``A[:, :in]`` and ``B[:out, :]``. A pair drawn per layer at that layer's own size is
  a different random matrix: that is not VeRA, and PEFT would not load it.
- **A and B are never trained.** Keep them as buffers, not parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def vera_projections(
    rank: int, in_features: int, out_features: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen pair ``(A (rank, in_features), B (out_features, rank))``, float32 on the CPU,
    drawn from one ``torch.Generator().manual_seed(seed)``: ``A`` first, then ``B``, each
    uniform in ``[-sqrt(6 / fan_in), sqrt(6 / fan_in)]`` with ``fan_in`` its number of columns.
    About 6 lines."""
    # TODO(ex24): one generator seeded with seed; A then B, each tensor.uniform_(-bound, bound, generator=g), bound = sqrt(6 / its columns)
    raise NotImplementedError("ex24 (vera_linear): vera_projections is not implemented yet")


class VeRALinear(nn.Module):
    """Wrap ``base`` (an ``nn.Linear``, float32) with VeRA over a shared pair that covers it.

    Attributes (the graders look for these names):
        base            the wrapped layer, frozen
        vera_A, vera_B  the shared pair ``(r, in_max)`` and ``(out_max, r)``, registered as
                        BUFFERS (the very tensors passed in: no copy), never trained
        vera_lambda_b   ``nn.Parameter (out_features,)``, zeros
        vera_lambda_d   ``nn.Parameter (r,)``, filled with ``d_initial``
    """

    def __init__(
        self, base: nn.Linear, vera_A: torch.Tensor, vera_B: torch.Tensor, d_initial: float = 0.1
    ) -> None:
        super().__init__()
        # Refuse a pair too small to cover this layer (given).
        if base.in_features > vera_A.shape[1] or base.out_features > vera_B.shape[0]:
            raise ValueError(
                f"the shared pair covers {vera_A.shape[1]} -> {vera_B.shape[0]} features, "
                f"the layer maps {base.in_features} -> {base.out_features}"
            )
        self.base = base
        self.base.requires_grad_(False)
        # TODO(ex24): register vera_A, vera_B as buffers; vera_lambda_b = zeros (out,), vera_lambda_d = d_initial (r,), both Parameters
        raise NotImplementedError("ex24 (vera_linear): VeRALinear.__init__ is not implemented yet")

    def sliced(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's corner of the shared pair: ``A[:, :in] (r, in)`` and ``B[:out, :] (out, r)``.
        About 1 line."""
        # TODO(ex24): the first in_features columns of A and the first out_features rows of B
        raise NotImplementedError("ex24 (vera_linear): VeRALinear.sliced is not implemented yet")

    def delta_weight(self) -> torch.Tensor:
        """``ΔW = Λb B_s Λd A_s``, shape ``(out_features, in_features)``. About 2 lines."""
        # TODO(ex24): scale the rows of B_s by lambda_b and the rows of A_s by lambda_d, then multiply
        raise NotImplementedError("ex24 (vera_linear): VeRALinear.delta_weight is not implemented yet")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``: ``base(x) + lambda_b * ((lambda_d * (x A_s^T)) B_s^T)``,
        without forming ``ΔW``. About 3 lines."""
        # TODO(ex24): h = lambda_d * linear(x, A_s), (..., r); return base(x) + lambda_b * linear(h, B_s)
        raise NotImplementedError("ex24 (vera_linear): VeRALinear.forward is not implemented yet")


def vera_layers(
    layers: Sequence[nn.Linear], rank: int, *, seed: int = 0, d_initial: float = 0.1
) -> list[VeRALinear]:
    """Wrap every layer in ``layers`` with VeRA, all sharing ONE pair drawn for the largest input
    size and the largest output size among them. Returns the wrappers in order. About 4 lines."""
    # TODO(ex24): in_max, out_max over the layers; one vera_projections(rank, in_max, out_max, seed); wrap each layer with it
    raise NotImplementedError("ex24 (vera_linear): vera_layers is not implemented yet")
