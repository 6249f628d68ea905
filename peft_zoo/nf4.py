"""NF4: the 4-bit NormalFloat storage format of QLoRA (Dettmers et al., 2023, arXiv:2305.14314).

The base weight ``W (out, in)`` is stored in blocks of ``blocksize`` (64) consecutive elements
of its row-major flattening (the last block may be shorter: nothing is padded). Each block
keeps one float constant, its absolute maximum, and one 4-bit index per element into a fixed
table of 16 values in ``[-1, 1]``:

    c_b   = max_i |w_i|                      over the elements i of block b   (absmax)
    q_i   = argmin_j |w_i / c_b - T_j|       nearest entry of the code table T
    w'_i  = T[q_i] * c_b                     dequantisation

Two indices share one byte (first element in the high nibble, as bitsandbytes packs them),
so the weight costs 4 bits per parameter plus 32 / 64 = 0.5 bits for the fp32 constants.
The tables and kernels are in :mod:`peft_zoo.nf4_codes`.

**NF4** (paper section 3, "4-bit NormalFloat"): pretrained weights are roughly N(0, sigma),
so after dividing by the absmax they follow a normal distribution squeezed into [-1, 1].
NF4's 16 levels are quantiles of N(0, 1), normalised to [-1, 1], so that every level is used
about equally often; a plain integer grid (``k / 7``) wastes levels on the rarely-populated
tails. Both tables are there; :func:`normal_float_code` derives NF4 from normal quantiles.

**Double quantisation** (paper section 3): the constants ``c_b`` themselves are stored in
8 bits: their mean is subtracted, then they are quantised blockwise (blocks of 256) with the
dynamic 8-bit type of :mod:`peft_zoo.blockwise8`, exactly as bitsandbytes'
``compress_statistics=True``. That cuts their cost from 32 / 64 = 0.5 to
8 / 64 + 32 / (64 * 256) ~= 0.127 bits per parameter (4.127 bits in all).

The QLoRA method that trains LoRA on top of this frozen 4-bit base is in
:mod:`peft_zoo.qlora`; :mod:`peft_zoo.interop.bnb` converts to and from bitsandbytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blockwise8 import DYNAMIC_BLOCKSIZE, dequantize_blockwise, dynamic_map, quantize_blockwise
from .core.checks import (
    bias_of,
    check_blocksize,
    check_float_dtype,
    check_last_dim,
    check_weight,
    linear_features,
    weight_of,
)
from .nf4_codes import (
    INT4_CODE,
    NF4_CODE,
    check_quant_type,
    dequantize_4bit,
    normal_float_code,
    pack_4bit,
    quantize_4bit,
    unpack_4bit,
)

__all__ = [
    "DQ_BLOCKSIZE",
    "INT4_CODE",
    "NF4_CODE",
    "NF4Linear",
    "NF4Tensor",
    "model_nbytes",
    "normal_float_code",
    "pack_4bit",
    "quantize_int4",
    "quantize_nf4",
    "unpack_4bit",
]

DQ_BLOCKSIZE = DYNAMIC_BLOCKSIZE  # block size of the second quantisation (paper section 3)


def double_quantize(absmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Second quantisation of the block constants, as bitsandbytes' ``compress_statistics``.

    ``absmax (n,) float32 -> (q (n,) uint8, nested_absmax (ceil(n / 256),) float32, offset () float32)``:
    ``offset = mean(absmax)``, then ``absmax - offset`` (centred on 0, so both signs of the
    8-bit range are used) is quantised blockwise with the dynamic 8-bit table.
    """
    offset = absmax.mean()  # ()
    q, nested = quantize_blockwise(absmax - offset, dynamic_map(absmax.device), DQ_BLOCKSIZE)
    return q, nested, offset


def double_dequantize(q: torch.Tensor, nested_absmax: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Undo :func:`double_quantize`: ``c = D[q] * s_block + offset``, ``(n,)`` float32.

    As in bitsandbytes there is no clamp: the error is at most half a step of the dynamic
    table times ``s_block``, far below typical constants, so they stay positive in practice.
    """
    return dequantize_blockwise(q, nested_absmax, dynamic_map(q.device), DQ_BLOCKSIZE).add_(offset)


@dataclass
class NF4Tensor:
    """A tensor stored blockwise in 4 bits (plus its block constants), and how to restore it.

    ``quant_type="int4"`` holds the plain-integer baseline in the same layout (bitsandbytes
    also keeps its 4-bit types in one container told apart by ``quant_type``). Sizes, with
    ``n = shape.numel()``, ``n_blocks = ceil(n / blocksize)``; the fields hold the same bytes as
    bitsandbytes' packed weight and ``QuantState`` (see :mod:`peft_zoo.interop.bnb`).
    (DQ) marks the fields double quantisation adds.
    """

    packed: torch.Tensor  # (ceil(n / 2),) uint8: two code indices per byte, first element in the high nibble
    absmax: torch.Tensor  # (n_blocks,) float32 block constants; with double quant uint8 codes of them
    shape: torch.Size  # shape of the original tensor
    dtype: torch.dtype  # dtype of the original tensor, the default of dequantize()
    blocksize: int = 64  # consecutive elements sharing one absmax (bitsandbytes' default for QLoRA)
    quant_type: str = "nf4"  # "nf4" (the QLoRA table) or "int4" (levels k / 7, the baseline)
    absmax_scale: torch.Tensor | None = None  # (ceil(n_blocks / 256),) float32 second-level absmax (DQ)
    absmax_mean: torch.Tensor | None = None  # () float32 mean subtracted before double quant (DQ)

    @property
    def double_quant(self) -> bool:
        """Are the block constants themselves quantised to 8 bits?"""
        return self.absmax_scale is not None

    def numel(self) -> int:
        return math.prod(self.shape)

    def tensors(self) -> list[torch.Tensor]:
        """The tensors actually stored."""
        extra = (self.absmax_scale, self.absmax_mean) if self.double_quant else ()
        return [self.packed, self.absmax, *(t for t in extra if t is not None)]

    @property
    def nbytes(self) -> int:
        """Bytes of every stored tensor (codes, constants, second-level scales and mean)."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    @property
    def bits_per_parameter(self) -> float:
        """``8 * nbytes / numel``: 4 + 32/64 = 4.5 without double quant, ~4.127 with it."""
        return 8 * self.nbytes / self.numel()

    def block_absmax(self) -> torch.Tensor:
        """The float32 constant of every block, ``(n_blocks,)`` (dequantised first with double quant)."""
        if not self.double_quant:
            return self.absmax
        assert self.absmax_mean is not None and self.absmax_scale is not None
        return double_dequantize(self.absmax, self.absmax_scale, self.absmax_mean)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Restore the tensor: ``T[code] * absmax`` per block, reshaped, in ``dtype``
        (default: the original dtype). The arithmetic runs in float32."""
        n = self.numel()
        w = dequantize_4bit(
            self.packed, self.block_absmax(), n, self.quant_type, self.blocksize, dtype or self.dtype
        )
        return w.view(self.shape)  # (n,) T[q] c_b per block, reshaped


def _quantize(
    w: torch.Tensor, blocksize: int, double_quant: bool, quant_type: str, what: str = "w"
) -> NF4Tensor:
    blocksize = check_blocksize(blocksize)
    check_weight(w, what)
    packed, absmax = quantize_4bit(w, quant_type, blocksize, what)
    out = NF4Tensor(packed, absmax, w.shape, w.dtype, blocksize, quant_type)
    if double_quant:
        out.absmax, out.absmax_scale, out.absmax_mean = double_quantize(absmax)
    return out


def quantize_nf4(w: torch.Tensor, blocksize: int = 64, *, double_quant: bool = False) -> NF4Tensor:
    """Quantise ``w`` (any shape, floating, finite) to blockwise NF4; ``w`` is not changed.

    ``blocksize`` must be even; a size that is not a multiple of it ends in a shorter block
    (nothing is padded). ``double_quant`` also quantises the block constants (dynamic 8-bit,
    blocks of 256, mean subtracted). Codes and constants equal bitsandbytes'
    ``quantize_4bit(w, blocksize, quant_type="nf4", compress_statistics=double_quant)``.
    """
    return _quantize(w, blocksize, bool(double_quant), "nf4")


def quantize_int4(w: torch.Tensor, blocksize: int = 64, *, double_quant: bool = False) -> NF4Tensor:
    """The baseline: blockwise absmax quantisation to symmetric 4-bit integers ``round(7 w / c)``.

    Same layout, same cost in bits as :func:`quantize_nf4`; only the code table differs.
    """
    return _quantize(w, blocksize, bool(double_quant), "int4")


# ----------------------------------------------------------------------------- layers


class NF4Linear(nn.Module):
    """A frozen linear layer whose weight lives in NF4: ``y = x W'^T + b`` with ``W' = dequant(W_NF4)``.

    Built from an ``nn.Linear`` (weight ``(out, in)``) or a GPT-2 ``Conv1D`` (weight ``(in, out)``,
    stored transposed here). The codes and constants are **buffers**, not parameters: no
    optimizer can see them, and ``state_dict()`` saves them (keys ``weight_packed``,
    ``weight_absmax``, and with double quant ``weight_absmax_scale``, ``weight_absmax_mean``).
    The bias is kept as it was, frozen. ``forward`` dequantises the weight into
    ``compute_dtype`` (default: the input's dtype) on every call, as bitsandbytes'
    ``Linear4bit`` does; the output comes back in the input's dtype.
    """

    weight_packed: torch.Tensor  # buffers: see the class docstring
    weight_absmax: torch.Tensor
    weight_absmax_scale: torch.Tensor | None  # None without double quant
    weight_absmax_mean: torch.Tensor | None
    weight_dtype: torch.dtype  # dtype the weight had before quantisation
    compute_dtype: torch.dtype | None
    bias: torch.Tensor | None  # the base layer's own bias, frozen

    def __init__(
        self,
        base: nn.Module,
        *,
        blocksize: int = 64,
        double_quant: bool = True,
        compute_dtype: torch.dtype | None = None,
        quant_type: str = "nf4",
    ) -> None:
        d_in, d_out, fan_in_fan_out = linear_features(base, "NF4Linear base")
        compute = check_float_dtype(compute_dtype, "compute_dtype")
        weight = weight_of(base).T if fan_in_fan_out else weight_of(base)  # (out, in)
        q = _quantize(weight, blocksize, bool(double_quant), check_quant_type(quant_type), "the base weight")
        super().__init__()
        self.in_features, self.out_features = d_in, d_out
        self.blocksize, self.quant_type, self.double_quant = q.blocksize, q.quant_type, q.double_quant
        self.weight_dtype = weight.dtype
        self.fan_in_fan_out = fan_in_fan_out  # the source was a Conv1D (in, out); stored here as (out, in)
        self.compute_dtype = compute
        self.register_buffer("weight_packed", q.packed)
        self.register_buffer("weight_absmax", q.absmax)
        self.register_buffer("weight_absmax_scale", q.absmax_scale)  # None without double quant
        self.register_buffer("weight_absmax_mean", q.absmax_mean)
        bias = bias_of(base)
        if bias is not None:
            bias.requires_grad_(False)
        self.bias = bias

    @classmethod
    def from_nf4(
        cls,
        weight: NF4Tensor,
        bias: torch.Tensor | None = None,
        *,
        compute_dtype: torch.dtype | None = None,
        fan_in_fan_out: bool = False,
    ) -> NF4Linear:
        """A layer around an already quantised ``weight`` (shape ``(out, in)``), without
        re-quantising: the tensors are used as they are (the conversion from bitsandbytes'
        ``Linear4bit`` goes through here). ``bias (out,)`` is kept, frozen."""
        given: object = weight  # checked at run time
        if not isinstance(given, NF4Tensor) or len(given.shape) != 2:
            raise TypeError("NF4Linear.from_nf4 expects a 2-d NF4Tensor (out, in)")
        d_out, d_in = weight.shape
        given_bias: object = bias
        if given_bias is not None and (
            not isinstance(given_bias, torch.Tensor) or tuple(given_bias.shape) != (d_out,)
        ):
            raise ValueError(f"bias must be a tensor of shape ({d_out},)")
        compute = check_float_dtype(compute_dtype, "compute_dtype")
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features = d_in, d_out
        layer.blocksize, layer.quant_type = (
            check_blocksize(weight.blocksize),
            check_quant_type(weight.quant_type),
        )
        layer.double_quant = weight.double_quant
        layer.weight_dtype, layer.fan_in_fan_out, layer.compute_dtype = (
            weight.dtype,
            bool(fan_in_fan_out),
            compute,
        )
        layer.register_buffer("weight_packed", weight.packed)
        layer.register_buffer("weight_absmax", weight.absmax)
        layer.register_buffer("weight_absmax_scale", weight.absmax_scale)
        layer.register_buffer("weight_absmax_mean", weight.absmax_mean)
        layer.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        return layer

    @property
    def weight_nf4(self) -> NF4Tensor:
        """The quantised weight, ``(out, in)``, viewing this module's buffers (wherever they live)."""
        return NF4Tensor(
            self.weight_packed,
            self.weight_absmax,
            torch.Size((self.out_features, self.in_features)),
            self.weight_dtype,
            self.blocksize,
            self.quant_type,
            self.weight_absmax_scale,
            self.weight_absmax_mean,
        )

    def dequantize_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``W' (out, in)`` in ``dtype`` (default: the weight's original dtype)."""
        return self.weight_nf4.dequantize(dtype)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored weight (codes and constants); the bias is not included."""
        return self.weight_nf4.nbytes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``, computed in ``compute_dtype`` or ``x.dtype``."""
        check_last_dim(x, self.in_features, "NF4Linear")
        dtype = self.compute_dtype or x.dtype
        w = self.dequantize_weight(dtype)  # (out, in), rebuilt on every call, never stored
        b = None if self.bias is None else self.bias.to(dtype)
        return F.linear(x.to(dtype), w, b).to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"quant_type={self.quant_type}, blocksize={self.blocksize}, double_quant={self.double_quant}, "
            f"bits_per_parameter={self.weight_nf4.bits_per_parameter:.3f}"
        )


def model_nbytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``model``, each tensor counted once (tied weights
    share storage): what the model occupies in memory, quantised or not."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total
