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
    # BEGIN SOLUTION: one generator seeded with seed; A then B, each tensor.uniform_(-bound, bound, generator=g), bound = sqrt(6 / its columns)
    generator = torch.Generator().manual_seed(seed)
    bound_a = math.sqrt(6.0 / in_features)  # fan_in of A (r, in) is in
    vera_A = torch.empty(rank, in_features).uniform_(-bound_a, bound_a, generator=generator)
    bound_b = math.sqrt(6.0 / rank)  # fan_in of B (out, r) is r
    vera_B = torch.empty(out_features, rank).uniform_(-bound_b, bound_b, generator=generator)
    return vera_A, vera_B
    # END SOLUTION


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
        # BEGIN SOLUTION: register vera_A, vera_B as buffers; vera_lambda_b = zeros (out,), vera_lambda_d = d_initial (r,), both Parameters
        self.register_buffer("vera_A", vera_A)  # (r, in_max), frozen, shared
        self.register_buffer("vera_B", vera_B)  # (out_max, r), frozen, shared
        self.vera_lambda_b = nn.Parameter(torch.zeros(base.out_features))  # (out,)  ΔW = 0 at init
        self.vera_lambda_d = nn.Parameter(torch.full((vera_A.shape[0],), float(d_initial)))  # (r,)
        # END SOLUTION

    def sliced(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's corner of the shared pair: ``A[:, :in] (r, in)`` and ``B[:out, :] (out, r)``.
        About 1 line."""
        # BEGIN SOLUTION: the first in_features columns of A and the first out_features rows of B
        return self.vera_A[:, : self.base.in_features], self.vera_B[: self.base.out_features, :]
        # END SOLUTION

    def delta_weight(self) -> torch.Tensor:
        """``ΔW = Λb B_s Λd A_s``, shape ``(out_features, in_features)``. About 2 lines."""
        # BEGIN SOLUTION: scale the rows of B_s by lambda_b and the rows of A_s by lambda_d, then multiply
        sliced_A, sliced_B = self.sliced()
        return (self.vera_lambda_b[:, None] * sliced_B) @ (self.vera_lambda_d[:, None] * sliced_A)
        # END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``: ``base(x) + lambda_b * ((lambda_d * (x A_s^T)) B_s^T)``,
        without forming ``ΔW``. About 3 lines."""
        # BEGIN SOLUTION: h = lambda_d * linear(x, A_s), (..., r); return base(x) + lambda_b * linear(h, B_s)
        sliced_A, sliced_B = self.sliced()
        h = self.vera_lambda_d * F.linear(x, sliced_A)  # (..., r)
        return self.base(x) + self.vera_lambda_b * F.linear(h, sliced_B)  # (..., out)
        # END SOLUTION


def vera_layers(
    layers: Sequence[nn.Linear], rank: int, *, seed: int = 0, d_initial: float = 0.1
) -> list[VeRALinear]:
    """Wrap every layer in ``layers`` with VeRA, all sharing ONE pair drawn for the largest input
    size and the largest output size among them. Returns the wrappers in order. About 4 lines."""
    # BEGIN SOLUTION: in_max, out_max over the layers; one vera_projections(rank, in_max, out_max, seed); wrap each layer with it
    in_max = max(layer.in_features for layer in layers)
    out_max = max(layer.out_features for layer in layers)
    vera_A, vera_B = vera_projections(rank, in_max, out_max, seed)
    return [VeRALinear(layer, vera_A, vera_B, d_initial) for layer in layers]
    # END SOLUTION
