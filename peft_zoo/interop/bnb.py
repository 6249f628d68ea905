"""bitsandbytes' 4-bit format, both ways: ``bnb.nn.Linear4bit`` and the state-dict keys
``transformers`` writes for a 4-bit model's linear layer.

peft_zoo's NF4 stores the same bytes as bitsandbytes (:mod:`peft_zoo.nf4_codes`,
:mod:`peft_zoo.blockwise8`), so a conversion only renames and reshapes. The state dict of a
4-bit linear at ``prefix`` (what ``Linear4bit.state_dict()`` and ``save_pretrained`` write):

    prefix + "weight"                                  (ceil(n/2), 1) uint8 packed codes
    prefix + "bias"                                    (out,) when the layer has one
    prefix + "weight.absmax"                           (n_blocks,) float32, or uint8 with double quant
    prefix + "weight.quant_map"                        (16,) float32 the 4-bit table
    prefix + "weight.nested_absmax"                    (ceil(n_blocks/256),) float32   (double quant)
    prefix + "weight.nested_quant_map"                 (256,) float32 the dynamic 8-bit table (DQ)
    prefix + "weight.quant_state.bitsandbytes__nf4"    uint8 bytes of a JSON dict: quant_type,
        blocksize, dtype, shape, and with double quant nested_blocksize, nested_dtype, nested_offset

Reading needs no bitsandbytes (JSON and tensors only); building a ``Linear4bit`` imports it
inside the function. Only ``quant_type="nf4"`` exists in both libraries (peft_zoo's "int4" is
not bitsandbytes' "fp4").
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..blockwise8 import DYNAMIC_BLOCKSIZE, dynamic_map
from ..nf4 import NF4_CODE, NF4Linear, NF4Tensor
from ..qlora import QLoRALinear

__all__ = [
    "nf4_linear_from_bnb",
    "nf4_linear_from_bnb_state_dict",
    "nf4_linear_to_bnb",
    "nf4_linear_to_bnb_state_dict",
    "qlora_from_bnb",
]

_QS_KEY = "weight.quant_state.bitsandbytes__nf4"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _tensor(sd: Mapping[str, Any], key: str) -> torch.Tensor:
    value = sd.get(key)
    if not isinstance(value, torch.Tensor):
        raise KeyError(f"bitsandbytes state dict: missing tensor {key!r}")
    return value


def nf4_linear_from_bnb_state_dict(
    state_dict: Mapping[str, Any], prefix: str = "", *, compute_dtype: torch.dtype | None = None
) -> NF4Linear:
    """An :class:`NF4Linear` holding exactly the tensors of a bitsandbytes NF4 linear's state
    dict (keys as in the module docstring, under ``prefix``, e.g. ``"model.layers.0.q_proj."``).
    Everything is checked before the layer is built; the tensors are copied."""
    meta_bytes = _tensor(state_dict, prefix + _QS_KEY)
    meta = json.loads(bytes(meta_bytes.to(torch.uint8).cpu().tolist()).decode("utf-8"))
    if meta.get("quant_type") != "nf4":
        raise ValueError(f"only quant_type 'nf4' converts to peft_zoo, got {meta.get('quant_type')!r}")
    shape = tuple(int(s) for s in meta["shape"])
    if len(shape) != 2:
        raise ValueError(f"a linear weight is 2-d (out, in), got shape {shape}")
    dtype = _DTYPES.get(str(meta["dtype"]))
    if dtype is None:
        raise ValueError(f"unsupported weight dtype {meta['dtype']!r}")
    n, blocksize = shape[0] * shape[1], int(meta["blocksize"])
    packed = _tensor(state_dict, prefix + "weight").reshape(-1).view(torch.uint8)
    absmax = _tensor(state_dict, prefix + "weight.absmax").reshape(-1)
    if packed.numel() != (n + 1) // 2 or absmax.numel() != -(-n // blocksize):
        raise ValueError(f"bitsandbytes tensors do not fit shape {shape} and blocksize {blocksize}")
    if not torch.equal(_tensor(state_dict, prefix + "weight.quant_map").float().cpu(), NF4_CODE):
        raise ValueError("weight.quant_map is not the NF4 table")
    scale = mean = None
    if "nested_offset" in meta:
        if int(meta["nested_blocksize"]) != DYNAMIC_BLOCKSIZE:
            raise ValueError(f"nested_blocksize must be {DYNAMIC_BLOCKSIZE}, got {meta['nested_blocksize']}")
        nested_map = _tensor(state_dict, prefix + "weight.nested_quant_map").float().cpu()
        if not torch.equal(nested_map, dynamic_map()):
            raise ValueError("weight.nested_quant_map is not bitsandbytes' dynamic 8-bit table")
        scale = _tensor(state_dict, prefix + "weight.nested_absmax").float().clone()
        mean = torch.tensor(float(meta["nested_offset"]), device=scale.device)
    weight = NF4Tensor(
        packed.clone(), absmax.clone(), torch.Size(shape), dtype, blocksize, "nf4", scale, mean
    )
    bias = state_dict.get(prefix + "bias")
    return NF4Linear.from_nf4(weight, bias, compute_dtype=compute_dtype)


def nf4_linear_to_bnb_state_dict(layer: NF4Linear, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict bitsandbytes (and ``transformers`` for a 4-bit model) writes for this
    layer: keys as in the module docstring under ``prefix``; the tensors are copies."""
    given: object = layer  # checked at run time
    if not isinstance(given, NF4Linear) or given.quant_type != "nf4":
        raise TypeError("nf4_linear_to_bnb_state_dict expects an NF4Linear with quant_type 'nf4'")
    w = layer.weight_nf4
    meta: dict[str, Any] = {
        "quant_type": "nf4",
        "blocksize": w.blocksize,
        "dtype": str(w.dtype).removeprefix("torch."),
        "shape": list(w.shape),
    }
    sd = {prefix + "weight": w.packed.clone().view(-1, 1), prefix + "weight.absmax": w.absmax.clone()}
    if layer.bias is not None:
        sd[prefix + "bias"] = layer.bias.detach().clone()
    sd[prefix + "weight.quant_map"] = NF4_CODE.to(w.packed.device)
    if w.double_quant:
        assert w.absmax_scale is not None and w.absmax_mean is not None
        sd[prefix + "weight.nested_absmax"] = w.absmax_scale.clone()
        sd[prefix + "weight.nested_quant_map"] = dynamic_map(w.packed.device).clone()
        meta.update(
            nested_blocksize=DYNAMIC_BLOCKSIZE, nested_dtype="float32", nested_offset=w.absmax_mean.item()
        )
    sd[prefix + _QS_KEY] = torch.tensor(list(json.dumps(meta).encode("utf-8")), dtype=torch.uint8)
    return sd


def nf4_linear_from_bnb(layer: nn.Module, *, compute_dtype: torch.dtype | None = None) -> NF4Linear:
    """An :class:`NF4Linear` with the same stored tensors as a quantised ``bnb.nn.Linear4bit``
    (read through its ``state_dict()``, which undoes bitsandbytes' CPU repacking).
    ``compute_dtype`` defaults to the layer's own."""
    import bitsandbytes as bnb

    if not isinstance(layer, bnb.nn.Linear4bit) or getattr(layer.weight, "quant_state", None) is None:
        raise TypeError("nf4_linear_from_bnb expects a quantised bitsandbytes Linear4bit")
    compute = compute_dtype if compute_dtype is not None else layer.compute_dtype
    return nf4_linear_from_bnb_state_dict(layer.state_dict(), compute_dtype=compute)


def nf4_linear_to_bnb(layer: NF4Linear) -> nn.Module:
    """A ``bnb.nn.Linear4bit`` holding the same stored tensors as ``layer`` (on its device)."""
    import bitsandbytes as bnb

    sd = nf4_linear_to_bnb_state_dict(layer)
    device = layer.weight_packed.device
    out = bnb.nn.Linear4bit(
        layer.in_features,
        layer.out_features,
        bias=layer.bias is not None,
        compute_dtype=layer.compute_dtype,
        compress_statistics=layer.double_quant,
        quant_type="nf4",
        device=device,
    )
    stats = {k: v for k, v in sd.items() if k.startswith("weight.")}
    out.weight = bnb.nn.Params4bit.from_prequantized(
        data=sd["weight"], quantized_stats=stats, requires_grad=False, device=device, module=out
    )
    if layer.bias is not None:
        out.bias = nn.Parameter(sd["bias"].to(layer.weight_dtype), requires_grad=False)
    return out


def qlora_from_bnb(
    layer: nn.Module, rank: int, alpha: float | None = None, **lora_kwargs: Any
) -> QLoRALinear:
    """A :class:`QLoRALinear` whose frozen base holds the stored tensors of ``bnb.nn.Linear4bit``
    ``layer`` (what PEFT's QLoRA layer wraps); ``lora_kwargs`` as for ``QLoRALinear``."""
    return QLoRALinear(nf4_linear_from_bnb(layer), rank, alpha, **lora_kwargs)
