"""PiSSA and OLoRA: start a LoRA layer from the base weight's principal part, not from zero.

Plain LoRA starts at ``B = 0``, so training begins from a random direction. PiSSA (Meng et
al., 2024, arXiv:2404.02948) instead moves the top ``r`` singular components of ``W0`` into
the adapter and leaves only the residual in the frozen base. With ``W0 = U S V^T``
(``W0 (out, in)``, ``U (out, k)``, ``S (k,)``, ``V^T (k, in)``, ``k = min(in, out)``) and
``s`` the layer's scale (``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA)::

    A = diag(sqrt(S_r / s)) V_r^T          (r, in)
    B = U_r diag(sqrt(S_r / s))            (out, r)
    W_res = W0 - s B A = W0 - U_r diag(S_r) V_r^T      (out, in)

The division by ``s`` makes ``s B A`` the principal part itself whatever ``alpha`` is, so
``W_res + s B A = W0`` and the layer's output at initialisation equals the base's up to
float rounding. The fast variant ("pissa_niter_K" in PEFT) replaces the full SVD by
``torch.svd_lowrank(W0, q=r, niter=K)`` (Halko et al., 2011): a randomized SVD, so it
depends on the torch seed.

OLoRA (Büyükakyüz, 2024, arXiv:2406.01775) uses a QR decomposition ``W0 = Q R``
(``Q (out, k)`` orthonormal columns, ``R (k, in)`` upper trapezoidal)::

    A = R[:r]          (r, in)         B = Q[:, :r]       (out, r)
    W_res = W0 - s B A

(no division by ``s`` here, as in PEFT 0.21.2's ``olora_init``, so the adapter starts at
``s`` times the leading QR part; the output still equals the base's).

Both follow PEFT 0.21.2's ``LoraLayer.pissa_init`` / ``olora_init`` (peft/tuners/lora/layer.py)
step for step: the weight must be float32, float16 or bfloat16 (anything else, float64
included, is refused with ``TypeError``); the decomposition and ``W_res`` are computed in
float32 and then rounded to the weight's dtype; ``A`` and ``B`` are rounded to the adapter's
dtype (the base's, in :class:`~peft_zoo.lora.LoRALinear`). PEFT's ``olora_init`` ignores
``fan_in_fan_out``, which breaks GPT-2's ``Conv1D``; :func:`olora_init_` refuses such a base.

Converting back. The trained adapter only makes sense on ``W_res``, not on the original
``W0``. Since ``W_res = W0 - s B0 A0`` (``A0``, ``B0`` the initial factors), the trained layer
computes ``W_res + s B A = W0 + s (B A - B0 A0) = W0 + s [B, -B0] [A; A0]``: a plain LoRA on
the original ``W0`` with rank ``2r``::

    A' = cat([A, A0], dim=0)   (2r, in)        B' = cat([B, -B0], dim=1)   (out, 2r)

with the same scale, so ``alpha' = 2 alpha`` (``sqrt(2) alpha`` with rsLoRA). That is what
PEFT's ``save_pretrained(path_initial_model_for_weight_conversion=...)`` writes
(``LoraModel.subtract_mutated_init``); :func:`pissa_to_lora_delta` computes it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .core.base import SHARED_WEIGHT_FLAG
from .core.checks import check_int_in, linear_features, weight_of
from .lora import LoRALinear

# The weight dtypes PEFT's pissa_init / olora_init accept (bitsandbytes aside).
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class ConvertedLoRA(NamedTuple):
    """A plain LoRA update on the original ``W0``: ``lora_A (rank, in)``, ``lora_B (out, rank)``,
    with ``rank = 2 r`` and ``alpha`` chosen so that the scale is the trained layer's."""

    lora_A: torch.Tensor
    lora_B: torch.Tensor
    rank: int
    alpha: float
    rslora: bool


def _check_layer(layer: object, what: str) -> LoRALinear:
    """``layer`` if it is a plain, unmerged :class:`LoRALinear` whose base may be rewritten."""
    if type(layer) is not LoRALinear:
        raise TypeError(
            f"{what} needs a plain LoRALinear (DoRA, fused and quantised layers are not supported), "
            f"got {type(layer).__name__}"
        )
    if layer.merged:
        raise RuntimeError(f"{what}: the layer is merged; call unmerge() first")
    if getattr(layer.base, SHARED_WEIGHT_FLAG, False):
        raise RuntimeError(
            f"{what}: the base weight is shared across blocks (peft_zoo.sharing); removing the "
            "principal part would change every block that reads it"
        )
    k = min(layer.in_features, layer.out_features)
    if layer.rank > k:
        raise ValueError(
            f"{what}: rank {layer.rank} > min(in_features, out_features) = {k}; the weight has only {k} "
            "components to move into the adapter"
        )
    w = weight_of(layer.base)
    if w.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{what}: the base weight is {w.dtype}; PEFT initialises from float32, float16 or bfloat16 "
            "weights only (cast the layer first)"
        )
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{what}: the base weight holds NaN or Inf; there is nothing to decompose")
    return layer


def _weight_out_in(layer: LoRALinear) -> torch.Tensor:
    """The base weight as float32 ``(out, in)`` (transposed for a ``fan_in_fan_out`` base)."""
    w = weight_of(layer.base).detach().to(torch.float32)
    return w.T if layer.fan_in_fan_out else w


@torch.no_grad()
def _install(layer: LoRALinear, lora_A: torch.Tensor, lora_B: torch.Tensor, w_res: torch.Tensor) -> None:
    """Write ``A (r, in)``, ``B (out, r)`` and the residual ``W_res (out, in)`` (float32) into ``layer``."""
    w = weight_of(layer.base)
    w_res = w_res.T if layer.fan_in_fan_out else w_res
    layer.lora_A.copy_(lora_A)
    layer.lora_B.copy_(lora_B)
    w.copy_(w_res.to(w.dtype))


def pissa_init_(layer: LoRALinear, niter: int | None = None) -> LoRALinear:
    """Initialise ``layer`` (a :class:`LoRALinear`) in place with PiSSA and return it.

    ``niter=None`` uses the full SVD (PEFT's ``init_lora_weights="pissa"``); an int ``K >= 0``
    uses ``torch.svd_lowrank(W0, q=rank, niter=K)`` ("pissa_niter_K"), which draws random
    numbers from torch's global generator. Afterwards ``lora_A (r, in)``, ``lora_B (out, r)``
    hold the principal part and ``base.weight`` the residual, so the layer's output is the
    base's. Refuses (changing nothing) a merged layer, a shared base, ``rank > min(in, out)``,
    a weight that is not float32/float16/bfloat16 or not finite.
    """
    what = "pissa_init_"
    if niter is not None:
        niter = check_int_in(niter, "niter", 0, 10_000)
    layer = _check_layer(layer, what)
    w = _weight_out_in(layer)  # (out, in)
    r, s = layer.rank, layer.scale
    if niter is None:
        u, sv, vh = torch.linalg.svd(w, full_matrices=False)  # (out, k), (k,), (k, in)
        ur, sr, vhr = u[:, :r], sv[:r], vh[:r]
        sr /= s
    else:
        ur, sr, v = torch.svd_lowrank(w, r, niter=niter)  # (out, r), (r,), (in, r)
        sr /= s
        vhr = v.t()
    lora_A = torch.diag(torch.sqrt(sr)) @ vhr  # (r, in)
    lora_B = ur @ torch.diag(torch.sqrt(sr))  # (out, r)
    _install(layer, lora_A, lora_B, w - s * lora_B @ lora_A)
    layer.init_lora_weights = "pissa" if niter is None else f"pissa_niter_{niter}"
    return layer


def olora_init_(layer: LoRALinear) -> LoRALinear:
    """Initialise ``layer`` (a :class:`LoRALinear`) in place with OLoRA and return it.

    ``W0 = Q R``; ``lora_A = R[:r] (r, in)``, ``lora_B = Q[:, :r] (out, r)``, ``base.weight``
    becomes ``W0 - scale * B A``, so the layer's output is the base's. Refuses (changing
    nothing) what :func:`pissa_init_` refuses, and a ``fan_in_fan_out`` base (GPT-2's
    ``Conv1D``), which PEFT 0.21.2's ``olora_init`` decomposes untransposed into wrong shapes.
    """
    what = "olora_init_"
    layer = _check_layer(layer, what)
    if layer.fan_in_fan_out:
        raise ValueError(
            f"{what}: the base stores its weight as (in, out) (fan_in_fan_out, e.g. GPT-2's Conv1D); "
            "PEFT 0.21.2's OLoRA ignores that and builds A, B of the wrong shapes, so peft_zoo refuses it"
        )
    w = _weight_out_in(layer)  # (out, in)
    q, rr = torch.linalg.qr(w)  # (out, k), (k, in)
    lora_A = rr[: layer.rank].contiguous()  # (r, in)
    lora_B = q[:, : layer.rank].contiguous()  # (out, r)
    _install(layer, lora_A, lora_B, w - layer.scale * lora_B @ lora_A)
    layer.init_lora_weights = "olora"
    return layer


def _check_initial(t: object, name: str, shape: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape} (the layer's), got {tuple(t.shape)}")
    if t.dtype != like.dtype:
        raise TypeError(f"{name} is {t.dtype} but the layer's adapter is {like.dtype}; cast one of them")
    return t.detach().to(like.device)


def pissa_to_lora_delta(layer: LoRALinear, initial_A: torch.Tensor, initial_B: torch.Tensor) -> ConvertedLoRA:
    """The trained PiSSA / OLoRA ``layer`` as a rank-``2r`` plain LoRA on the ORIGINAL ``W0``.

    ``initial_A (r, in)`` and ``initial_B (out, r)`` are the factors right after
    :func:`pissa_init_` / :func:`olora_init_` (before training). Returns
    ``A' = cat([A, A0]) (2r, in)``, ``B' = cat([B, -B0], dim=1) (out, 2r)``, ``rank = 2r`` and
    ``alpha = 2 alpha`` (``sqrt(2) alpha`` with rsLoRA), as PEFT's
    ``save_pretrained(path_initial_model_for_weight_conversion=...)`` writes them; then
    ``W0 + scale' B' A' = W_res + scale B A``. The layer is not changed.
    """
    if type(layer) is not LoRALinear:
        raise TypeError(f"pissa_to_lora_delta needs a plain LoRALinear, got {type(layer).__name__}")
    a0 = _check_initial(initial_A, "initial_A", (layer.rank, layer.in_features), layer.lora_A)
    b0 = _check_initial(initial_B, "initial_B", (layer.out_features, layer.rank), layer.lora_B)
    lora_A = torch.cat([layer.lora_A.detach(), a0], dim=0)  # (2r, in)
    lora_B = torch.cat([layer.lora_B.detach(), -b0], dim=1)  # (out, 2r)
    alpha = layer.alpha * 2**0.5 if layer.rslora else layer.alpha * 2
    return ConvertedLoRA(lora_A, lora_B, 2 * layer.rank, alpha, layer.rslora)


def pissa_to_lora(
    layer: LoRALinear, initial_A: torch.Tensor, initial_B: torch.Tensor, original_base: nn.Module
) -> LoRALinear:
    """A new :class:`LoRALinear` over ``original_base`` (the layer as it was before the
    initialisation, holding ``W0``) carrying :func:`pissa_to_lora_delta`'s rank-``2r`` update:
    its output equals the trained ``layer``'s up to float rounding. ``original_base`` is
    frozen, as every LoRALinear freezes its base."""
    delta = pissa_to_lora_delta(layer, initial_A, initial_B)
    d_in, d_out, _ = linear_features(original_base, "original_base", layer.fan_in_fan_out)
    if (d_in, d_out) != (layer.in_features, layer.out_features):
        raise ValueError(
            f"original_base maps {d_in} -> {d_out} features, the layer {layer.in_features} -> {layer.out_features}"
        )
    lora = LoRALinear(
        original_base,
        delta.rank,
        delta.alpha,
        dropout=layer.dropout_p,
        rslora=delta.rslora,
        fan_in_fan_out=layer.fan_in_fan_out,
    )
    with torch.no_grad():
        lora.lora_A.copy_(delta.lora_A)
        lora.lora_B.copy_(delta.lora_B)
    return lora
