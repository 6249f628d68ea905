"""NF4: the 4-bit NormalFloat storage format of QLoRA (Dettmers et al., 2023, arXiv:2305.14314).

The base weight ``W (out, in)`` is stored in blocks of ``blocksize`` (64) consecutive elements
of its row-major flattening. Each block keeps one float constant, its absolute maximum, and
one 4-bit index per element into a fixed table of 16 values in ``[-1, 1]``:

    c_b   = max_i |w_i|                      over the elements i of block b   (absmax)
    q_i   = argmin_j |w_i / c_b - T_j|       nearest entry of the code table T
    w'_i  = T[q_i] * c_b                     dequantisation

Two indices share one byte (first element in the high nibble, as bitsandbytes packs them),
so the weight costs 4 bits per parameter plus 32 / 64 = 0.5 bits for the fp32 constants.

**NF4** (paper section 3, "4-bit NormalFloat"): pretrained weights are roughly N(0, sigma),
so after dividing by the absmax they follow a normal distribution squeezed into [-1, 1].
NF4's 16 levels are quantiles of N(0, 1), normalised to [-1, 1], so that every level is used
about equally often; a plain integer grid (``k / 7``) wastes levels on the rarely-populated
tails. Both tables are here; :func:`normal_float_code` derives NF4 from normal quantiles.

**Double quantisation** (paper section 3): the constants ``c_b`` themselves are quantised to
8 bits in blocks of 256, after subtracting their mean, which cuts their cost from 32 / 64 =
0.5 to 8 / 64 + 32 / (64 * 256) ~= 0.127 bits per parameter (4.127 bits in all).

The QLoRA method that trains LoRA on top of this frozen 4-bit base is in
:mod:`peft_zoo.qlora`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .core.checks import (
    bias_of,
    check_blocksize,
    check_float_dtype,
    check_last_dim,
    check_positive_int,
    check_weight,
    linear_features,
    weight_of,
)

__all__ = [
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

# The NF4 data type as published: QLoRA paper, Appendix E, and bitsandbytes' NF4 table
# (identical values; index 7 is the exact zero, index 0 is -1 and index 15 is +1).
NF4_CODE = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
])  # (16,)  # fmt: skip

# The baseline: symmetric 4-bit integers k in [-7, 7] scaled to [-1, 1] (15 levels, so that 0
# is exact; bitsandbytes' "int4" table is the same). Nearest entry == round(w / c * 7) / 7.
INT4_CODE = torch.arange(-7, 8, dtype=torch.float32) / 7  # (15,)

_CODES = {"nf4": NF4_CODE, "int4": INT4_CODE}
DQ_BLOCKSIZE = 256  # block size of the second quantisation (paper section 3)
_DEVICE_CODES: dict[tuple[str, torch.device], torch.Tensor] = {}


def normal_float_code(bits: int = 4, offset: float = 1 - (1 / 32 + 1 / 30) / 2) -> torch.Tensor:
    """Derive the k-bit NormalFloat table from quantiles of N(0, 1), as QLoRA describes it.

    The paper's recipe (section 3): take ``2^(k-1)`` quantiles for the negative half and
    ``2^(k-1) + 1`` for the positive half, both including 0, merge them dropping one of the
    two zeros (so 0 is exact and there is one more positive level), and normalise into
    [-1, 1]. The outermost quantile cannot be Q(1) = inf, so the probabilities run from 0.5 to
    ``offset`` instead of 1: bitsandbytes' ``create_normal_map(offset=0.9677083)``, which is
    ``1 - (1/32 + 1/30) / 2``, the mean of the half-step offsets of the 32- and 30-level grids.
    With the defaults the result matches :data:`NF4_CODE` to about 1e-7.

    Returns a sorted float32 tensor of ``2^bits`` values from -1 to 1.
    """
    bits = check_positive_int(bits, "bits")
    if bits < 2:
        raise ValueError(f"bits must be >= 2 to have a negative and a positive half, got {bits}")
    if not 0.5 < offset < 1.0:
        raise ValueError(f"offset must be a probability in (0.5, 1), got {offset}")
    half = 2 ** (bits - 1)
    # Positive half: `half + 1` probabilities from offset down to 0.5; drop 0.5 (its quantile is 0).
    p_pos = torch.linspace(offset, 0.5, half + 1, dtype=torch.float64)[:-1]
    # Negative half: `half` probabilities, again without 0.5; mirrored by the sign.
    p_neg = torch.linspace(offset, 0.5, half, dtype=torch.float64)[:-1]
    q = torch.cat(
        [-torch.special.ndtri(p_neg), torch.zeros(1, dtype=torch.float64), torch.special.ndtri(p_pos)]
    )
    q = q.sort().values
    return (q / q.abs().max()).float()  # normalise into [-1, 1]


# ----------------------------------------------------------------------------- code tables by name


def _check_quant_type(quant_type: object) -> str:
    if quant_type not in _CODES:
        raise ValueError(f"quant_type must be one of {sorted(_CODES)}, got {quant_type!r}")
    return str(quant_type)


def _code_on(quant_type: str, device: torch.device) -> torch.Tensor:
    """The float32 code table on ``device``, copied there once."""
    key = (quant_type, device)
    if key not in _DEVICE_CODES:
        _DEVICE_CODES[key] = _CODES[quant_type].to(device)
    return _DEVICE_CODES[key]


# ----------------------------------------------------------------------------- packing


def pack_4bit(codes: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit code indices two per byte: ``(n,)`` integers in [0, 16), n even -> ``(n/2,)`` uint8.

    Byte ``k`` holds element ``2k`` in its high nibble and element ``2k+1`` in its low nibble
    (bitsandbytes' order), so ``byte = (c[2k] << 4) | c[2k+1]``.
    """
    if codes.dim() != 1 or codes.numel() % 2:
        raise ValueError(f"pack_4bit expects a 1-d tensor of even length, got shape {tuple(codes.shape)}")
    if codes.is_floating_point() or (codes.numel() and (int(codes.min()) < 0 or int(codes.max()) > 15)):
        raise ValueError("pack_4bit expects integer codes in [0, 15]")
    pairs = codes.to(torch.uint8).view(-1, 2)  # (n/2, 2): (first, second) element of each byte
    return (pairs[:, 0] << 4) | pairs[:, 1]  # first element in the high nibble


def unpack_4bit(packed: torch.Tensor) -> torch.Tensor:
    """Undo :func:`pack_4bit`: ``(m,)`` uint8 -> ``(2m,)`` uint8 code indices in [0, 16)."""
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(f"unpack_4bit expects a 1-d uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    high = packed >> 4  # element 2k
    low = packed & 0x0F  # element 2k + 1
    return torch.stack([high, low], dim=1).reshape(-1)  # (2m,)


# ----------------------------------------------------------------------------- blockwise quantisation


def _blockwise(
    w: torch.Tensor, code: torch.Tensor, blocksize: int, what: str = "w"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` (any shape) -> ``(codes (n_pad,) uint8 indices into code, absmax (n_blocks,) float32)``."""
    flat = w.detach().reshape(-1).float()  # (n,) row-major: a block is `blocksize` consecutive elements
    n_pad = -(-flat.numel() // blocksize) * blocksize  # round n up to a multiple of the block size
    flat = F.pad(flat, (0, n_pad - flat.numel()))  # zeros: they never raise a block's absmax
    blocks = flat.view(-1, blocksize)  # (n_blocks, blocksize)
    absmax = blocks.abs().amax(dim=1)  # (n_blocks,) c_b = max |w| of the block
    if not bool(torch.isfinite(absmax).all()):  # amax propagates NaN and inf: one cheap check
        raise ValueError(f"{what} contains NaN or inf: its absmax (the block scale) would be undefined")
    # Normalise into [-1, 1]; an all-zero block keeps divisor 1 (0 / 1 = 0, never 0 / 0 = NaN).
    normed = blocks / torch.where(absmax > 0, absmax, torch.ones_like(absmax))[:, None]
    # Nearest table entry. The table is sorted, so the nearest entry's index is the number of
    # midpoints between neighbours that lie below the value (a binary search), which avoids the
    # (n, 16) temporary of a brute-force argmin over |w - T|. Ties go to the lower entry, as
    # with torch.argmin.
    code = code.to(w.device)
    midpoints = (code[1:] + code[:-1]) / 2  # (len(code) - 1,)
    codes = torch.bucketize(normed.reshape(-1), midpoints)  # (n_pad,) indices into code
    return codes.to(torch.uint8), absmax


def _double_quantize(absmax: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Second quantisation of the block constants (paper section 3).

    ``absmax (n,) float32 -> (q (n,) int8, scale (ceil(n / blocksize),) float32, mean () float32)``.

    The constants are positive, so their mean is subtracted first to centre them on 0 and use
    both signs of the 8-bit range. The paper stores 8-bit *floats*, bitsandbytes its 8-bit
    "dynamic" code; here, for readability, each block of 256 is quantised as symmetric 8-bit
    integers with its own fp32 absmax: ``q = round(127 · (c - mean) / s)``.
    """
    mean = absmax.mean()  # ()
    centred = absmax - mean  # (n,)
    n_pad = -(-centred.numel() // blocksize) * blocksize
    blocks = F.pad(centred, (0, n_pad - centred.numel())).view(-1, blocksize)  # (m, blocksize)
    scale = blocks.abs().amax(dim=1)  # (m,) second-level absmax, kept in fp32
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))[:, None]
    q = torch.round(blocks / safe * 127).clamp(-127, 127).to(torch.int8)  # (m, blocksize)
    return q.reshape(-1)[: absmax.numel()], scale, mean


def _double_dequantize(
    q: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor, blocksize: int
) -> torch.Tensor:
    """Undo :func:`_double_quantize`: ``c = q / 127 · s + mean``, ``(n,)`` float32.

    The error is at most ``s / 254`` per constant: small next to typical constants, but a block
    far smaller than the mean of its neighbours could come back negative, which would flip the
    signs of its weights; such constants are clamped to 0 instead.
    """
    per_element = scale.repeat_interleave(blocksize)[: q.numel()]  # (n,) the scale of each constant's block
    return (q.float() / 127 * per_element + mean).clamp_min(0)


@dataclass
class NF4Tensor:
    """A tensor stored blockwise in 4 bits (plus its block constants), and how to restore it.

    ``quant_type="int4"`` holds the plain-integer baseline in the same layout (bitsandbytes
    also keeps its 4-bit types in one container told apart by ``quant_type``). Sizes, with
    ``n = shape.numel()``, ``n_pad`` = n rounded up to a multiple of ``blocksize``,
    ``n_blocks = n_pad / blocksize``. (DQ) marks the fields double quantisation adds.
    """

    packed: torch.Tensor  # (n_pad / 2,) uint8: two code indices per byte, first element in the high nibble
    absmax: torch.Tensor  # (n_blocks,) float32 block constants; with double quant int8 codes of them
    shape: torch.Size  # shape of the original tensor
    dtype: torch.dtype  # dtype of the original tensor, the default of dequantize()
    blocksize: int = 64  # consecutive elements sharing one absmax (bitsandbytes' default for QLoRA)
    quant_type: str = "nf4"  # "nf4" (the QLoRA table) or "int4" (levels k / 7, the baseline)
    absmax_scale: torch.Tensor | None = None  # (ceil(n_blocks / 256),) float32 second-level scales (DQ)
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
        return _double_dequantize(self.absmax, self.absmax_scale, self.absmax_mean, DQ_BLOCKSIZE)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Restore the tensor: ``T[code] * absmax`` per block, unpadded and reshaped, in ``dtype``
        (default: the original dtype). The arithmetic runs in float32."""
        codes = unpack_4bit(self.packed).long()  # (n_pad,) indices
        values = _code_on(self.quant_type, self.packed.device)[codes]  # (n_pad,) table lookup
        w = values.view(-1, self.blocksize) * self.block_absmax()[:, None]  # (n_blocks, blocksize) T[q] c_b
        return w.reshape(-1)[: self.numel()].view(self.shape).to(dtype or self.dtype)


def _quantize(
    w: torch.Tensor, blocksize: int, double_quant: bool, quant_type: str, what: str = "w"
) -> NF4Tensor:
    blocksize = check_blocksize(blocksize)
    check_weight(w, what)
    codes, absmax = _blockwise(w, _CODES[quant_type], blocksize, what)
    out = NF4Tensor(pack_4bit(codes), absmax, w.shape, w.dtype, blocksize, quant_type)
    if double_quant:
        out.absmax, out.absmax_scale, out.absmax_mean = _double_quantize(absmax, DQ_BLOCKSIZE)
    return out


def quantize_nf4(w: torch.Tensor, blocksize: int = 64, *, double_quant: bool = False) -> NF4Tensor:
    """Quantise ``w`` (any shape, floating, finite) to blockwise NF4; ``w`` is not changed.

    ``blocksize`` must be even; sizes that are not a multiple of it are zero-padded (the
    padding is dropped again on dequantisation). ``double_quant`` also quantises the block
    constants (8-bit, blocks of 256, mean subtracted).
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
        q = _quantize(weight, blocksize, bool(double_quant), _check_quant_type(quant_type), "the base weight")
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
