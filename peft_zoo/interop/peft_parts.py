"""The LoRA and IA³ parts of a PEFT adapter file: the method's config fields and tensors.

:func:`lora_part` writes LoRA on linear layers (``lora_A.weight (r, in)``, ``lora_B.weight
(out, r)``, DoRA's ``lora_magnitude_vector (out,)``), on embeddings (``lora_embedding_A
(r, vocab)``, ``lora_embedding_B (dim, r)``) and on convolutions (``lora_A.weight (r, in, *k)``,
``lora_B.weight (out, r / groups, 1, ...)``), with the most common rank and alpha as ``r`` /
``lora_alpha`` and every other module's in ``rank_pattern`` / ``alpha_pattern``;
:func:`ia3_part` writes ``ia3_l``. Used by :mod:`.peft_write` (:func:`~peft_zoo.save_peft`).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import torch

from ..dora import DoRALinear
from ..ia3 import IA3Linear
from ..lora import LoRALinear, lora_scale
from ..lora_conv import LoRAConv
from ..lora_embedding import LoRAEmbedding
from ..qlora import QLoRALinear
from .peft_config import PeftFormatError, json_number
from .peft_keys import exact_pattern

__all__ = ["LORA_TYPES", "LoraLayer", "ia3_part", "lora_part", "most_common"]

# A layer PEFT's format holds as LoRA (a DoRALinear is a LoRALinear). Exact types: a subclass may
# compute something else. A QLoRA layer's adapter is a plain LoRA: PEFT loads it onto a (4-bit or
# float) base.
LoraLayer = LoRALinear | QLoRALinear | LoRAEmbedding | LoRAConv
LORA_TYPES = (LoRALinear, DoRALinear, QLoRALinear, LoRAEmbedding, LoRAConv)
T = TypeVar("T")


def _lora_tensors(name: str, m: LoraLayer) -> dict[str, torch.Tensor]:
    """One layer's tensors under their PEFT keys (without the prefix)."""
    if isinstance(m, LoRAEmbedding):
        return {
            f"{name}.lora_embedding_A": m.lora_embedding_A,
            f"{name}.lora_embedding_B": m.lora_embedding_B,
        }
    tensors: dict[str, torch.Tensor] = {
        f"{name}.lora_A.weight": m.lora_A,
        f"{name}.lora_B.weight": m.lora_B,
    }  # (r, in[, *k]), (out, r[, 1..])
    if isinstance(m, DoRALinear):
        tensors[f"{name}.lora_magnitude_vector"] = m.magnitude  # (out,)
    return tensors


def _peft_alpha(layer: LoraLayer, rslora: bool) -> float:
    """The ``lora_alpha`` that gives ``layer`` its scale under PEFT's global ``use_rslora``."""
    r = layer.rank
    if lora_scale(r, layer.alpha, layer.rslora) == layer.scale:  # the usual case: clean numbers
        return layer.alpha * math.sqrt(r) if layer.rslora and not rslora else layer.alpha
    return layer.scale * (math.sqrt(r) if rslora else r)  # someone set .scale directly


def most_common(values: Iterable[T]) -> T:
    return Counter(values).most_common(1)[0][0]


def _init_of(lora: Mapping[str, LoraLayer]) -> bool | str:
    """PiSSA / OLoRA layers (``init_lora_weights`` recorded on the layer by ``LoraConfig``) fit
    the residual base; PEFT writes their initialisation into the config and its
    ``from_pretrained`` redoes it on the original base, and so does ``load_peft``."""
    inits = {getattr(m, "init_lora_weights", True) for m in lora.values()}
    redone = sorted(i for i in inits if isinstance(i, str) and i != "gaussian")
    if not redone:
        return True
    if len(inits) > 1:
        raise PeftFormatError(
            f"save_peft: the layers were initialised as {sorted(inits, key=str)}; PEFT's init_lora_weights "
            "holds for every layer of an adapter, and PiSSA / OLoRA layers only fit their residual base. "
            "Nothing was written."
        )
    return redone[0]


def lora_part(lora: Mapping[str, LoraLayer], bias: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The LoRA fields of the config and the LoRA tensors: the most common rank and alpha as
    ``r`` / ``lora_alpha``, every other module's under an anchored key in the patterns."""
    dilated = [n for n, m in lora.items() if isinstance(m, LoRAConv) and any(d != 1 for d in m.base.dilation)]
    if dilated:
        raise PeftFormatError(
            f"save_peft: {dilated[:4]} are dilated convolutions; PEFT 0.21.2's LoRA path ignores the dilation, so "
            "it would compute another function. Nothing was written."
        )
    rslora = all(m.rslora for m in lora.values())
    ranks = {n: m.rank for n, m in lora.items()}
    alphas = {n: _peft_alpha(m, rslora) for n, m in lora.items()}
    r, alpha = most_common(ranks.values()), most_common(alphas.values())
    # an embedding has no dropout on its LoRA path (in PEFT neither): it does not vote
    dropouts = sorted({m.dropout_p for m in lora.values() if not isinstance(m, LoRAEmbedding)}) or [0.0]
    if len(dropouts) > 1:
        warnings.warn(
            f"save_peft: the layers use different dropouts {dropouts}; PEFT keeps one, "
            f"lora_dropout={dropouts[-1]} (dropout only matters while training)",
            stacklevel=3,  # save_peft's caller
        )
    fields = {
        "r": r,
        "lora_alpha": json_number(alpha),
        "lora_dropout": dropouts[-1],
        "use_rslora": rslora,
        "bias": bias,
        "rank_pattern": {exact_pattern(n): v for n, v in ranks.items() if v != r},
        "alpha_pattern": {exact_pattern(n): json_number(v) for n, v in alphas.items() if v != alpha},
        "layers_to_transform": None,
        "layers_pattern": None,
        "init_lora_weights": _init_of(lora),
        "use_dora": any(isinstance(m, DoRALinear) for m in lora.values()),
        "lora_bias": False,
    }
    tensors = {k: v for n, m in lora.items() for k, v in _lora_tensors(n, m).items()}
    return fields, tensors


def ia3_part(ia3: Mapping[str, IA3Linear], bias: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The IA3 fields of the config and the ``ia3_l`` tensors."""
    if bias != "none":
        raise PeftFormatError(
            f"save_peft: bias={bias!r}, but PEFT's IA3 format saves no biases; freeze the adapted "
            "layers' biases or pass bias='none'. Nothing was written."
        )
    fields = {"feedforward_modules": [n for n, m in ia3.items() if m.feedforward], "init_ia3_weights": True}
    # (1, in) for feed-forward layers, else (out, 1)
    tensors = {f"{n}.ia3_l": m.scale[None, :] if m.feedforward else m.scale[:, None] for n, m in ia3.items()}
    return fields, tensors
