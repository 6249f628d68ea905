"""IA³: "Infused Adapter by Inhibiting and Amplifying Inner Activations"
(Liu et al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than
In-Context Learning", arXiv:2205.05638).

Instead of adding a low-rank matrix, IA³ learns one number per output feature and
multiplies the frozen layer's output by it:

    y = (W0 x + b) ⊙ l          W0: (out, in), b: (out,), l: (out,)

- ``l`` starts at ones, so the adapted layer starts out equal to its base;
- only ``out`` numbers train per layer: fewer than LoRA at any rank (rank 1 already adds
  ``in + out``);
- the rescaling is diagonal, so it folds into the weight for inference:
  ``W0 <- diag(l) W0`` and ``b <- l ⊙ b``, no extra cost per token.

The paper applies it to the attention keys and values (scaling their outputs, as here) and
to the feed-forward block (there it scales the input of the second projection).
"""

from __future__ import annotations

import torch
from torch import nn


class IA3Linear(nn.Module):
    """Wrap ``base`` (an ``nn.Linear``) with a trainable elementwise output scale.

    Attributes to create (the graders look for these names):
        base   the wrapped layer itself (not a copy), frozen: ``requires_grad=False`` on its
               weight and bias
        scale  ``nn.Parameter`` of shape ``(out_features,)``, all ones, in the base weight's
               dtype and device

    ``forward``: ``(..., in_features) -> (..., out_features)``, ``base(x) * scale``. The scale
    multiplies the base output *after* the bias. About 4 lines in all.
    """

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        # BEGIN SOLUTION: keep and freeze base; create scale, a Parameter of ones (out_features,) like base.weight
        self.base = base
        self.base.requires_grad_(False)  # only the scale trains
        w = base.weight  # (out, in)
        self.scale = nn.Parameter(torch.ones(base.out_features, dtype=w.dtype, device=w.device))  # l = 1
        # END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``: ``(W0 x + b) ⊙ l``. 1 line."""
        # BEGIN SOLUTION: the base output, scaled elementwise (broadcasts over the leading dimensions)
        return self.base(x) * self.scale  # (..., out) * (out,)
        # END SOLUTION
