# Challenge 28 · adalora_svd: AdaLoRA's SVD-form update, orthogonality penalty, smoothed importance and cubic budget. Replace each TODO(ex28) with your code, then run:
#     peft-zoo check 28        (or: pytest practice/13_lora_adapters/test_ex28_adalora_svd.py)
# Stuck? `peft-zoo hint 28`. Start over: `peft-zoo reset 28` (your file is backed up).
"""adalora_svd: AdaLoRA (Zhang et al., 2023), a LoRA whose rank is moved to where it matters.

AdaLoRA writes the update like a singular value decomposition and prunes singular values
during training, so a fixed total rank (the *budget*) ends up in the layers that need it::

    ΔW = s · P diag(λ) Q        P = lora_B (out, r), λ = lora_E (r, 1), Q = lora_A (r, in)
    y  = W0 x + b + s · P (λ ⊙ (Q x))              s = alpha / (ranknum + 1e-5)

(PEFT's names: ``lora_A`` is Q, ``lora_E`` holds λ, ``lora_B`` is P; ``ranknum`` is the initial
rank as a float.) λ starts at zero, so the layer starts as its base. Four pieces make it work:

- **Orthogonality.** P and Q are meant to be singular vectors, so the loss gets a penalty
  (the paper's Eq. 4). PEFT adds, times ``orth_reg_weight``, the *unsquared* Frobenius norms
  ``||Q Qᵀ - I||`` and ``||Pᵀ P - I||`` (both ``(r, r)``), averaged over all those matrices.
- **Importance.** After each backward pass, every entry w of P, λ and Q gets a sensitivity
  ``I = |w · ∂L/∂w|``, smoothed by an exponential moving average, together with its
  uncertainty (Eqs. 8-10)::

      Ī ← β1 Ī + (1 - β1) I          U ← β2 U + (1 - β2) |I - Ī|  (with the NEW Ī)
      score(w) = Ī · U

  A triplet ``(P[:, i], λ_i, Q[i, :])`` scores ``score(λ_i) + mean_j score(Q[i, j]) +
  mean_k score(P[k, i])`` (Eq. 11).
- **The budget.** The total rank falls from ``init_bgt`` to ``target_bgt`` along a cubic: no
  pruning for ``t <= tinit``, then ``b(t) = int((init - target) (1 - (t - tinit) / (T - tfinal -
  tinit))³ + target)`` (prune when ``t % deltaT == 0``), and ``target_bgt`` (prune every step)
  once ``t > T - tfinal``.
- **Masking.** To reach budget ``b``, the ``init_bgt - b`` lowest-scoring triplets over ALL
  layers lose their singular value: ``λ_i = 0`` (P and Q are kept: the triplet may come back).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

RANKNUM_EPS = 1e-5  # PEFT divides by ranknum + 1e-5
PARAMS = ("lora_A", "lora_E", "lora_B")


class SVDLinear(nn.Module):
    """An ``nn.Linear`` with AdaLoRA's update ``s · P diag(λ) Q`` (constructor given).

    Attributes: ``base`` (frozen), ``lora_A`` = Q ``(rank, in)`` and ``lora_B`` = P ``(out, rank)``
    drawn from ``N(0, 0.02²)``, ``lora_E`` = λ ``(rank, 1)`` zeros, ``rank``, ``alpha`` (defaults
    to ``rank``), ``ranknum = float(rank)``; ``scale = alpha / (ranknum + 1e-5)``.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        factory: dict[str, Any] = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.lora_A = nn.Parameter(0.02 * torch.randn(rank, base.in_features, **factory))  # Q (r, in)
        self.lora_E = nn.Parameter(torch.zeros(rank, 1, **factory))  # λ (r, 1)
        self.lora_B = nn.Parameter(0.02 * torch.randn(base.out_features, rank, **factory))  # P (out, r)
        self.rank = rank
        self.alpha = float(rank if alpha is None else alpha)
        self.ranknum = float(rank)

    @property
    def scale(self) -> float:
        return self.alpha / (self.ranknum + RANKNUM_EPS)

    def delta_weight(self) -> torch.Tensor:
        """``s · P diag(λ) Q``, shape ``(out, in)``. 1 line."""
        # TODO(ex28): scale * P @ (Q with row i multiplied by λ_i); lora_E is (r, 1), so lora_A * lora_E does it
        raise NotImplementedError("ex28 (adalora_svd): SVDLinear.delta_weight is not implemented yet")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in) -> (..., out)``: ``base(x) + s · P (λ ⊙ (Q x))``, without building the
        ``(out, in)`` matrix. 2 lines."""
        # TODO(ex28): h = x @ (Q * λ)ᵀ of shape (..., r), then base(x) + (h @ Pᵀ) * scale
        raise NotImplementedError("ex28 (adalora_svd): SVDLinear.forward is not implemented yet")


def orthogonal_regulariser(layers: Sequence[SVDLinear]) -> torch.Tensor:
    """PEFT's penalty: the mean over every layer of ``||Q Qᵀ - I_r||_F`` and ``||Pᵀ P - I_r||_F``
    (unsquared; ``2 × len(layers)`` terms), a differentiable 0-d tensor. About 7 lines."""
    # TODO(ex28): for each layer the Frobenius norms of Q Qᵀ - I and Pᵀ P - I (both (r, r)); return their mean
    raise NotImplementedError("ex28 (adalora_svd): orthogonal_regulariser is not implemented yet")


class ImportanceTracker:
    """Smoothed sensitivity ``exp_avg_ipt`` (Ī) and uncertainty ``exp_avg_unc`` (U) per
    parameter name, each shaped like its parameter; both start at zero."""

    def __init__(self, beta1: float = 0.85, beta2: float = 0.85) -> None:
        self.beta1, self.beta2 = beta1, beta2
        self.exp_avg_ipt: dict[str, torch.Tensor] = {}
        self.exp_avg_unc: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update(self, name: str, param: torch.Tensor) -> None:
        """After ``backward()``: ``I = |param · param.grad|``, then ``Ī ← β1 Ī + (1 - β1) I`` and
        ``U ← β2 U + (1 - β2) |I - Ī|`` with the updated Ī. About 6 lines."""
        # TODO(ex28): I = |w * grad|; update Ī first (EMA with beta1), then U with |I - Ī| (EMA with beta2)
        raise NotImplementedError("ex28 (adalora_svd): ImportanceTracker.update is not implemented yet")

    def update_layer(self, prefix: str, layer: SVDLinear) -> None:
        """:meth:`update` for ``"<prefix>.lora_A"``, ``"<prefix>.lora_E"``, ``"<prefix>.lora_B"`` (given)."""
        for p in PARAMS:
            self.update(f"{prefix}.{p}", getattr(layer, p))

    def score(self, name: str) -> torch.Tensor:
        """``Ī · U`` of ``name``, shaped like its parameter (Eq. 10). 1 line."""
        # TODO(ex28): the smoothed sensitivity times its uncertainty
        raise NotImplementedError("ex28 (adalora_svd): ImportanceTracker.score is not implemented yet")

    def triplet_scores(self, prefix: str) -> torch.Tensor:
        """Shape ``(rank,)``: ``score(λ_i) + mean_j score(Q[i, j]) + mean_k score(P[k, i])``
        for the layer registered as ``prefix`` (Eq. 11). About 2 lines."""
        # TODO(ex28): scores of "<prefix>.lora_A" / ".lora_E" / ".lora_B"; λ's flattened + Q's row means + P's column means
        raise NotImplementedError("ex28 (adalora_svd): ImportanceTracker.triplet_scores is not implemented yet")


def budget_schedule(
    step: int, *, init_bgt: int, target_bgt: int, tinit: int, tfinal: int, total_step: int, deltaT: int
) -> tuple[int, bool]:
    """``(budget, mask_now)`` at ``step``: ``init_bgt`` and no masking while ``step <= tinit``;
    the cubic decrease, masking when ``step % deltaT == 0``, up to ``total_step - tfinal``;
    then ``target_bgt`` and masking at every step. About 7 lines."""
    # TODO(ex28): warm-up, then int((init - target) * (1 - progress) ** 3 + target) with progress over tinit..T - tfinal, then the final phase
    raise NotImplementedError("ex28 (adalora_svd): budget_schedule is not implemented yet")


@torch.no_grad()
def mask_to_budget(
    layers: dict[str, SVDLinear], scores: dict[str, torch.Tensor], init_bgt: int, budget: int
) -> dict[str, list[bool]]:
    """Prune to ``budget``: with ``k = init_bgt - budget > 0``, the threshold is the k-th smallest
    triplet score over ALL layers (``scores[name]``: ``(rank,)``) and every triplet scoring ``<=``
    it gets ``λ_i = 0`` in place. Return ``name -> [kept?] * rank`` (all True when ``k <= 0``).
    About 9 lines."""
    # TODO(ex28): k = init_bgt - budget; torch.kthvalue over the concatenated scores; zero lora_E where score <= threshold
    raise NotImplementedError("ex28 (adalora_svd): mask_to_budget is not implemented yet")
