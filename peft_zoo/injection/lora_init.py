"""``LoraConfig.init_lora_weights``: how a new LoRA layer starts, with PEFT's values.

=====================  ===================================================================
value                  the layer after it is built
=====================  ===================================================================
``True`` (default)     ``A`` Kaiming-uniform, ``B = 0`` (an embedding: ``A = 0``, ``B ~ N(0, 1)``)
``False``              both factors random, so ``ΔW ≠ 0`` (tests, not training)
``"gaussian"``         ``A ~ N(0, 1/r²)`` (std ``1 / r``), ``B = 0``; linear layers only
``"pissa"``            PiSSA: the top-``r`` singular triplets of ``W0`` move into ``A``, ``B``
                       and out of ``W0`` (:func:`~peft_zoo.pissa.pissa_init_`)
``"pissa_niter_K"``    the same from ``torch.svd_lowrank`` with ``K`` subspace iterations
``"olora"``            OLoRA: a QR decomposition of ``W0`` (:func:`~peft_zoo.pissa.olora_init_`)
=====================  ===================================================================

PiSSA and OLoRA *rewrite the base weights*; :func:`apply_lora_init` runs once every layer is
installed, so a refused config never leaves a half-changed model. Other PEFT values
(``"loftq"``, ``"eva"``, ``"corda"``, ``"orthogonal"``) are refused by name.
"""

from __future__ import annotations

import math
import re

from torch import nn

from ..core.checks import linear_features, short_repr
from ..lora import LoRALinear
from ..lora_embedding import LoRAEmbedding
from ..pissa import olora_init_, pissa_init_

__all__ = ["apply_lora_init", "check_init_lora_weights", "rewrites_base"]

_NITER = re.compile(r"pissa_niter_(\d{1,6})")
_NAMED = ("gaussian", "pissa", "olora")


def check_init_lora_weights(value: object) -> bool | str:
    """``value`` if it is one of the supported initialisations; else a ``TypeError`` (not a bool
    or str) or ``ValueError`` naming what is supported."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise TypeError(
            f"init_lora_weights must be True, False or the name of an initialisation, got {short_repr(value)}"
        )
    if value in _NAMED or _NITER.fullmatch(value):
        return value
    raise ValueError(
        f"init_lora_weights={value!r} is not supported; use True, False, 'gaussian', 'pissa', "
        "'pissa_niter_K' (K an int >= 0) or 'olora'"
    )


def rewrites_base(init: bool | str) -> bool:
    """Whether this initialisation changes the base weights (PiSSA, OLoRA)."""
    return isinstance(init, str) and init != "gaussian"


def check_layer_supports(init: bool | str, base: nn.Module, use_dora: bool, name: str, rank: int) -> None:
    """Refuse (``ValueError`` naming the module) an initialisation this layer cannot take:
    PiSSA / OLoRA / gaussian on an embedding or a convolution, PiSSA / OLoRA with DoRA or
    with a rank above ``min(in, out)`` (the weight has no more singular triplets)."""
    if isinstance(init, bool):
        return
    if isinstance(base, (nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        raise ValueError(
            f"init_lora_weights={init!r} is implemented for linear layers; {name!r} is a "
            f"{type(base).__name__} (use True or False there, or exclude it)"
        )
    if use_dora and rewrites_base(init):
        raise ValueError(f"init_lora_weights={init!r} with use_dora=True is not implemented")
    if rewrites_base(init):
        d_in, d_out, _ = linear_features(base, name)
        if rank > min(d_in, d_out):
            raise ValueError(
                f"init_lora_weights={init!r}: {name!r} has rank {rank} > min(in_features, out_features) = "
                f"{min(d_in, d_out)}; its weight has no more singular directions to move into A and B"
            )


def apply_lora_init(layer: nn.Module, init: bool | str) -> None:
    """Initialise a freshly built LoRA layer's factors as ``init`` says (PiSSA / OLoRA also
    rewrite its base weight). ``True`` keeps the layer's own initialisation."""
    if init is True:
        return
    if init is False:
        for p in layer.parameters():
            if not p.requires_grad:
                continue  # the frozen base
            if isinstance(layer, LoRAEmbedding):
                nn.init.normal_(p)  # both factors N(0, 1), as PEFT draws them
            elif (p.detach() == 0).all():
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))  # B, as nn.Linear / nn.Conv init weights
        return
    if not isinstance(layer, LoRALinear):
        raise TypeError(f"init_lora_weights={init!r} needs a LoRALinear, got {type(layer).__name__}")
    if init == "gaussian":
        nn.init.normal_(layer.lora_A, std=1 / layer.rank)
        nn.init.zeros_(layer.lora_B)
    elif init == "olora":
        olora_init_(layer)
    else:
        niter = _NITER.fullmatch(str(init))
        pissa_init_(layer, None if niter is None else int(niter.group(1)))
