"""pissa_init: start LoRA from the weight's principal part (PiSSA, OLoRA), and convert back.

Plain LoRA starts at ``B = 0``: the adapter begins as nothing and training moves it from a
random direction. PiSSA (Meng et al., 2024) starts it from the top ``r`` singular components
of the frozen weight and leaves only the rest in the base. With the SVD ``W0 = U diag(S) Vᵀ``
(``W0 (out, in)``, ``U (out, k)``, ``S (k,)``, ``Vᵀ (k, in)``, ``k = min(out, in)``) and the
layer's scale ``s`` (``alpha / r``)::

    A = diag(sqrt(S_r / s)) Vᵀ_r        (r, in)      the first r ROWS of Vᵀ
    B = U_r diag(sqrt(S_r / s))          (out, r)     the first r columns of U
    W_res = W0 - s B A = W0 - U_r diag(S_r) Vᵀ_r

Dividing by ``s`` before the square root makes ``s B A`` the principal part whatever alpha
is, and splitting ``sqrt`` between the two factors keeps A and B equally scaled. The base
must keep only ``W_res``: then ``W_res + s B A = W0`` and the layer starts as its base.

OLoRA (Büyükakyüz, 2024) uses a QR decomposition ``W0 = Q R`` instead: ``A = R[:r]``,
``B = Q[:, :r]`` (no division by ``s``, as in PEFT 0.21.2) and again ``W_res = W0 - s B A``.

Converting back. A trained PiSSA adapter (``A``, ``B``) only makes sense on ``W_res``. Since
``W_res = W0 - s B0 A0`` (``A0``, ``B0``: the factors right after initialisation)::

    W_res + s B A = W0 + s (B A - B0 A0) = W0 + s [B, -B0] [A; A0]

a plain LoRA on the ORIGINAL ``W0`` of rank ``2r``: ``A' = cat([A, A0])``, ``B' = cat([B, -B0],
dim=1)``. Keeping the scale with twice the rank needs ``alpha' = 2 alpha`` (``sqrt(2) alpha``
with rsLoRA, whose scale is ``alpha / sqrt(r)``). PEFT's ``save_pretrained(...,
path_initial_model_for_weight_conversion=...)`` writes exactly that.
"""

from __future__ import annotations

import math

import torch


def pissa_init(
    weight: torch.Tensor, rank: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PiSSA from ``weight`` ``(out, in)`` (float32): return ``(A (rank, in), B (out, rank),
    W_res (out, in))`` with ``W_res + scale · B A = weight``. Use the full SVD,
    ``torch.linalg.svd(weight, full_matrices=False)``. About 6 lines."""
    # BEGIN SOLUTION: SVD; S_r / scale; A = diag(sqrt) @ first r rows of Vᵀ; B = first r columns of U @ diag(sqrt); W_res = W - scale B A
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)  # (out, k), (k,), (k, in)
    sr = s[:rank] / scale  # fold the scale in: scale * B A is then the principal part
    lora_A = torch.diag(torch.sqrt(sr)) @ vh[:rank]  # (r, in)
    lora_B = u[:, :rank] @ torch.diag(torch.sqrt(sr))  # (out, r)
    w_res = weight - scale * lora_B @ lora_A  # the base keeps only the rest
    return lora_A, lora_B, w_res
    # END SOLUTION


def olora_init(
    weight: torch.Tensor, rank: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OLoRA from ``weight`` ``(out, in)``: ``torch.linalg.qr(weight)``, ``A = R[:rank]``,
    ``B = Q[:, :rank]``; return ``(A, B, W_res = weight - scale · B A)``. About 4 lines."""
    # BEGIN SOLUTION: q, r = torch.linalg.qr(weight); A = first rank rows of R, B = first rank columns of Q; W_res = W - scale B A
    q, r = torch.linalg.qr(weight)  # (out, k) orthonormal columns, (k, in) upper trapezoidal
    a, b = r[:rank], q[:, :rank]  # (r, in), (out, r)
    return a, b, weight - scale * (b @ a)
    # END SOLUTION


def pissa_to_lora(
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    initial_A: torch.Tensor,
    initial_B: torch.Tensor,
    alpha: float,
    rslora: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The trained adapter ``(lora_A (r, in), lora_B (out, r))``, initialised as ``(initial_A,
    initial_B)``, as a plain LoRA on the original weight: ``(A' (2r, in), B' (out, 2r), alpha')``
    with ``alpha'`` keeping the scale at rank ``2r``. About 4 lines."""
    # BEGIN SOLUTION: A' = cat([A, A0]) (rows), B' = cat([B, -B0], dim=1) (columns), alpha' = 2 alpha (sqrt(2) alpha with rsLoRA)
    new_A = torch.cat([lora_A, initial_A], dim=0)  # (2r, in)
    new_B = torch.cat([lora_B, -initial_B], dim=1)  # (out, 2r): minus the initial principal part
    new_alpha = alpha * math.sqrt(2) if rslora else 2 * alpha  # the same scale at rank 2r
    return new_A, new_B, new_alpha
    # END SOLUTION
