# Challenge 29 · pissa_init: PiSSA and OLoRA start the adapter from the weight's principal part; back to plain LoRA. Replace each TODO(ex29) with your code, then run:
#     peft-zoo check 29        (or: pytest practice/13_lora_adapters/test_ex29_pissa_init.py)
# Stuck? `peft-zoo hint 29`. Start over: `peft-zoo reset 29` (your file is backed up).
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
    # TODO(ex29): SVD; S_r / scale; A = diag(sqrt) @ first r rows of Vᵀ; B = first r columns of U @ diag(sqrt); W_res = W - scale B A
    raise NotImplementedError("ex29 (pissa_init): pissa_init is not implemented yet")


def olora_init(
    weight: torch.Tensor, rank: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OLoRA from ``weight`` ``(out, in)``: ``torch.linalg.qr(weight)``, ``A = R[:rank]``,
    ``B = Q[:, :rank]``; return ``(A, B, W_res = weight - scale · B A)``. About 4 lines."""
    # TODO(ex29): q, r = torch.linalg.qr(weight); A = first rank rows of R, B = first rank columns of Q; W_res = W - scale B A
    raise NotImplementedError("ex29 (pissa_init): olora_init is not implemented yet")


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
    # TODO(ex29): A' = cat([A, A0]) (rows), B' = cat([B, -B0], dim=1) (columns), alpha' = 2 alpha (sqrt(2) alpha with rsLoRA)
    raise NotImplementedError("ex29 (pissa_init): pissa_to_lora is not implemented yet")
