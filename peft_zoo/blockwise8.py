"""Block-wise dynamic 8-bit quantisation (Dettmers et al., 2021, arXiv:2110.02861).

"8-bit optimizers via block-wise quantization" stores a float tensor as one byte per element
plus one float32 constant per block of ``blocksize`` consecutive elements (row-major):

    c_b  = max_i |x_i|                         over the elements i of block b  (absmax)
    q_i  = argmin_j |x_i / c_b - D_j|          nearest entry of the 256-entry table D
    x'_i = D[q_i] * c_b                        dequantisation

The table ``D`` is the *dynamic* data type (paper section 2.2, after Dettmers 2015,
arXiv:1511.04561): one sign bit, then a run of zero bits whose length is a decimal exponent
(``10^-6`` to ``10^0``), then an indicator bit, then the remaining bits as a linear fraction
in [0.1, 1]. Small magnitudes get many exponents with few fraction bits, large ones few
exponents with many: relative error stays roughly constant over six orders of magnitude.

QLoRA's double quantisation (arXiv:2305.14314, section 3) uses exactly this to store the
NF4 block constants: blocks of 256, after subtracting their mean. :func:`dynamic_map`,
:func:`quantize_blockwise` and :func:`dequantize_blockwise` reproduce bitsandbytes' table and
its PyTorch reference arithmetic (``backends/default/ops.py``): the scale is applied as a
multiplication by ``1 / absmax`` for full blocks and as a division for the last partial one.
"""

from __future__ import annotations

import torch

from .core.checks import check_positive_int

__all__ = ["DYNAMIC_BLOCKSIZE", "dequantize_blockwise", "dynamic_map", "quantize_blockwise"]

DYNAMIC_BLOCKSIZE = 256  # QLoRA's block size for the second quantisation (paper section 3)
_MAPS: dict[torch.device, torch.Tensor] = {}


def _decade(exponent: int, levels: int) -> list[float]:
    """``levels`` positive values ``10^exponent * m``, the midpoints ``m`` of ``levels`` equal
    steps of [0.1, 1] (float32 arithmetic, as bitsandbytes computes them)."""
    edges = torch.linspace(0.1, 1, levels + 1, dtype=torch.float32)  # (levels + 1,)
    mids = (edges[:-1] + edges[1:]) / 2.0  # (levels,)
    return ((10 ** (exponent - 6)) * mids).tolist()


def dynamic_map(device: torch.device | str = "cpu") -> torch.Tensor:
    """The signed dynamic 8-bit table, ``(256,)`` float32 sorted from about -0.993 to 1.

    Signed, 7 exponent bits, 8 bits in all (bitsandbytes' ``create_dynamic_map()``): exponent
    ``i = 0..6`` owns ``2^i`` fraction levels per sign at scale ``10^(i-6)``, plus the exact 0
    and +1: ``2 * (1 + 2 + ... + 64) + 2 = 256`` entries (-1 itself is not in the table).
    Cached per device.
    """
    device = torch.device(device)
    if device not in _MAPS:
        values: list[float] = []
        for i in range(7):
            pos = _decade(i, 2**i)
            values += pos + [-v for v in pos]
        values += [0.0, 1.0]
        _MAPS[device] = torch.tensor(sorted(values), dtype=torch.float32, device=device)
    return _MAPS[device]


def _split(n: int, blocksize: int) -> tuple[int, int]:
    """``(full, rem)``: elements in whole blocks, and in the last partial block."""
    rem = n % blocksize
    return n - rem, rem


def quantize_blockwise(
    x: torch.Tensor, code: torch.Tensor, blocksize: int = DYNAMIC_BLOCKSIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (any shape, floating) -> ``(q, absmax)``: ``q`` uint8 indices into ``code`` (shape of
    ``x``), ``absmax (ceil(n / blocksize),)`` float32. ``code`` must be sorted ascending.

    Arithmetic as bitsandbytes' reference kernel: full blocks are scaled by ``x * (1 / c)``,
    the last partial block by ``x / c``, both clamped to [-1, 1]; an all-zero block's divisor
    is 1e-38 and its stored absmax 0 (as bitsandbytes' CPU kernel stores it). The nearest
    entry is found by counting the midpoints below the value; ties go to the lower entry.
    """
    blocksize = check_positive_int(blocksize, "blocksize")
    flat = x.detach().reshape(-1).float()  # (n,)
    full, rem = _split(flat.numel(), blocksize)
    blocks = flat[:full].view(-1, blocksize)  # (n_full, blocksize)
    absmax = blocks.abs().amax(dim=1) if full else flat.new_zeros(0)  # (n_full,)
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38))[:, None], -1, 1).reshape(-1)
    if rem:
        last = flat[full:].abs().max()  # ()
        absmax = torch.cat([absmax, last[None]])
        scaled = torch.cat([scaled, torch.clamp(flat[full:] / last.clamp(min=1e-38), -1, 1)])
    bounds = (code[:-1] + code[1:]) / 2  # (len(code) - 1,) midpoints between neighbours
    q = torch.bucketize(scaled, bounds.to(scaled.device), out_int32=True).to(torch.uint8)
    return q.view(x.shape), absmax


def dequantize_blockwise(
    q: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int = DYNAMIC_BLOCKSIZE
) -> torch.Tensor:
    """Undo :func:`quantize_blockwise`: ``code[q] * absmax`` per block, float32, shape of ``q``.

    One lookup into a fresh tensor, then the block constants multiplied in place (the same
    float32 products as ``code[q] * absmax``, without a second full-size tensor)."""
    blocksize = check_positive_int(blocksize, "blocksize")
    values = torch.index_select(code.to(q.device), 0, q.reshape(-1).int())  # (n,) table lookup
    full, rem = _split(values.numel(), blocksize)
    n_full = full // blocksize
    if full:
        values[:full].view(-1, blocksize).mul_(absmax[:n_full, None])
    if rem:
        values[full:].mul_(absmax[n_full])
    return values.view(q.shape)
