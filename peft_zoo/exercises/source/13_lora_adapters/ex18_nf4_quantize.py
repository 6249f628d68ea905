"""Blockwise 4-bit NormalFloat (NF4) quantisation, the storage format of QLoRA's frozen base.

QLoRA (Dettmers et al., 2023) keeps the pretrained weights in 4 bits and trains a LoRA
adapter on top. The weights are stored blockwise: flatten the tensor row-major, cut it into
blocks of ``blocksize`` consecutive elements (64 in QLoRA), and for each block keep

    c_b = max_i |w_i|                       one float32 constant, the block's absmax
    q_i = argmin_j |w_i / c_b - NF4[j]|     one 4-bit index per element into the table below

and restore ``w_i ~= NF4[q_i] * c_b``. Dividing by the *absolute* maximum maps every block
into [-1, 1] whatever its signs; a block of zeros has ``c_b = 0`` and must not be divided by.
A tensor whose size is not a multiple of ``blocksize`` is padded with zeros first, and the
padding is dropped again after dequantising.

Two 4-bit indices share one byte, the first element in the high nibble (bitsandbytes'
layout): ``byte = (q[2k] << 4) | q[2k + 1]``. Shift in ``uint8``: in ``int8``, ``12 << 4``
overflows into the sign bit.

The table NF4 is given: 16 quantiles of N(0, 1) scaled to [-1, 1], so that normally
distributed weights use every level about equally often (QLoRA paper, Appendix E). It is
*not* evenly spaced: the nearest level is not ``round(7 * x)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# QLoRA paper, Appendix E (identical to bitsandbytes' NF4 table). NF4[7] == 0 exactly.
NF4 = torch.tensor(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ]
)  # (16,) float32


def _check_blocksize(blocksize: int) -> None:
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize <= 0 or blocksize % 2:
        raise ValueError(f"blocksize must be a positive even int (two codes per byte), got {blocksize!r}")


def nf4_quantize(w: torch.Tensor, blocksize: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise ``w`` (any shape, floating point) blockwise to NF4.

    Returns ``(packed, absmax)``:
        packed: ``(n_pad // 2,)`` uint8, two code indices per byte, first element in the high
            nibble, where ``n_pad`` is ``w.numel()`` rounded up to a multiple of ``blocksize``;
        absmax: ``(n_pad // blocksize,)`` float32, the absmax of each block (0 for a zero block).

    Blocks are ``blocksize`` consecutive elements of ``w.reshape(-1)``; the zero padding maps
    to code 7 (the exact 0.0). Each element gets the index of the *nearest* NF4 value after
    dividing by its block's absmax (ties, which random data never hits, may go either way).
    ``w`` is not modified. About 12 lines.
    """
    _check_blocksize(blocksize)
    if not w.is_floating_point():
        raise TypeError(f"w must be a floating-point tensor, got {w.dtype}")
    # BEGIN SOLUTION: flatten row-major in float32, zero-pad to a multiple of blocksize, view as (n_blocks, blocksize)
    flat = w.detach().reshape(-1).float()  # (n,)
    n = flat.numel()
    n_pad = -(-n // blocksize) * blocksize  # n rounded up to a multiple of blocksize
    flat = F.pad(flat, (0, n_pad - n))  # zeros never raise a block's absmax
    blocks = flat.view(n_pad // blocksize, blocksize)  # (n_blocks, blocksize), consecutive elements
    # END SOLUTION
    # BEGIN SOLUTION: absmax of each block, then divide each block by it (an all-zero block must not give NaN)
    absmax = blocks.abs().amax(dim=1)  # (n_blocks,) c_b = max |w| of the block
    divisor = torch.where(absmax > 0, absmax, torch.ones_like(absmax))  # 0 / 1 = 0, never 0 / 0
    normed = blocks / divisor[:, None]  # (n_blocks, blocksize) in [-1, 1]
    # END SOLUTION
    # BEGIN SOLUTION: index of the nearest NF4 value for every element: argmin of |normed - NF4| over the table
    dist = (normed[..., None] - NF4).abs()  # (n_blocks, blocksize, 16) distance to every entry
    codes = dist.argmin(dim=-1)  # (n_blocks, blocksize) index of the nearest entry
    # END SOLUTION
    # BEGIN SOLUTION: pack two codes per uint8 byte, the first of each pair in the high nibble
    pairs = codes.reshape(-1, 2).to(torch.uint8)  # (n_pad / 2, 2)
    packed = (pairs[:, 0] << 4) | pairs[:, 1]  # (n_pad / 2,)
    return packed, absmax
    # END SOLUTION


def nf4_dequantize(
    packed: torch.Tensor,
    absmax: torch.Tensor,
    shape: tuple[int, ...],
    blocksize: int = 64,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Undo :func:`nf4_quantize`: a tensor of ``shape`` and ``dtype`` with ``w = NF4[q] * absmax``.

    ``packed`` and ``absmax`` are exactly what :func:`nf4_quantize` returned for a tensor of
    ``shape`` and this ``blocksize``. Unpack (high nibble first), look the codes up in NF4,
    multiply each block by its absmax (in float32), drop the padding, reshape, cast to
    ``dtype``. About 7 lines.
    """
    _check_blocksize(blocksize)
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed must be uint8, got {packed.dtype}")
    # BEGIN SOLUTION: unpack each byte into (high nibble, low nibble), in that order
    high = packed >> 4  # element 2k
    low = packed & 0x0F  # element 2k + 1
    codes = torch.stack([high, low], dim=1).reshape(-1).long()  # (n_pad,)
    # END SOLUTION
    # BEGIN SOLUTION: look up NF4, scale each block by its absmax, drop the padding, reshape to shape, cast to dtype
    values = NF4[codes].view(-1, blocksize) * absmax.float()[:, None]  # (n_blocks, blocksize) NF4[q] * c_b
    n = math.prod(shape)
    return values.reshape(-1)[:n].reshape(shape).to(dtype)
    # END SOLUTION
