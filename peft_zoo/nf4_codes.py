"""The 4-bit code tables of QLoRA (arXiv:2305.14314) and the blockwise 4-bit kernels.

    c_b   = max_i |w_i|                      over the elements i of block b   (absmax)
    q_i   = argmin_j |w_i / c_b - T_j|       nearest entry of the code table T
    w'_i  = T[q_i] * c_b                     dequantisation

A block is ``blocksize`` consecutive elements of the row-major flattening; the last block may
be shorter (``n`` need not be a multiple of ``blocksize``: nothing is padded). Two indices
share one byte, first element in the high nibble; an odd ``n`` fills the last low nibble with
the index of the table's zero. This is bitsandbytes' layout and arithmetic (its PyTorch
reference kernel, ``backends/default/ops.py``): full blocks are normalised as ``w * (1 / c)``,
the last partial block as ``w / c``, so the stored codes and constants are the same bytes.
:mod:`peft_zoo.nf4` builds the tensor container and the layer on these kernels.
"""

from __future__ import annotations

import itertools
import sys
import threading

import torch

from .core.checks import check_positive_int

__all__ = [
    "INT4_CODE",
    "NF4_CODE",
    "dequantize_4bit",
    "normal_float_code",
    "pack_4bit",
    "quantize_4bit",
    "release_workspace",
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
# is exact). Nearest entry == round(w / c * 7) / 7. Index 7 is the zero, as in NF4.
INT4_CODE = torch.arange(-7, 8, dtype=torch.float32) / 7  # (15,)

CODES = {"nf4": NF4_CODE, "int4": INT4_CODE}
_TABLES: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor, int]] = {}
_LITTLE = sys.byteorder == "little"
INDEX_CHUNK = 1 << 24  # 16-bit words looked up per index_select: the int32 index is at most 64 MiB
_UINT16: torch.dtype | None = getattr(torch, "uint16", None)  # a dtype since torch 2.3
_SPLIT_WORDS = 1 << 16  # CPU: at least this many 16-bit words per thread of a split lookup
_WORKSPACE = threading.local()  # per thread: the CPU int32 index buffer, reused between calls


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


def check_quant_type(quant_type: object) -> str:
    """``"nf4"`` or ``"int4"``, or a clear error."""
    if quant_type not in CODES:
        raise ValueError(f"quant_type must be one of {sorted(CODES)}, got {quant_type!r}")
    return str(quant_type)


def _tables(quant_type: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(code (16 or 15,), quads (65536, 4), zero index)`` on ``device``, built once (1 MiB).

    ``quads[v]`` holds the four values of the two bytes that read as the 16-bit integer ``v``
    (first byte: ``T[b0 >> 4], T[b0 & 15]``, then the second byte), so that dequantising is one
    row lookup per *pair of bytes*: half the lookups of a 256-entry byte table, which is what
    PyTorch's CPU gather spends its time on. A nibble past the table's end maps to 0
    (quantisation never writes one)."""
    key = (quant_type, device)
    if key not in _TABLES:
        code = CODES[quant_type].to(device)
        padded = torch.zeros(16, device=device)
        padded[: code.numel()] = code
        v = torch.arange(65536, device=device)
        first, second = (v & 0xFF, v >> 8) if _LITTLE else (v >> 8, v & 0xFF)  # memory order of the bytes
        nibbles = [first >> 4, first & 15, second >> 4, second & 15]
        quads = torch.stack([padded[x] for x in nibbles], dim=1).contiguous()  # (65536, 4)
        _TABLES[key] = (code, quads, int((code == 0).nonzero()[0]))
    return _TABLES[key]


# ----------------------------------------------------------------------------- packing


def pack_4bit(codes: torch.Tensor, pad_code: int = 0) -> torch.Tensor:
    """Pack 4-bit code indices two per byte: ``(n,)`` integers in [0, 16) -> ``(ceil(n/2),)`` uint8.

    Byte ``k`` holds element ``2k`` in its high nibble and element ``2k+1`` in its low nibble
    (bitsandbytes' order), so ``byte = (c[2k] << 4) | c[2k+1]``. For odd ``n`` the last low
    nibble is ``pad_code`` (bitsandbytes writes the index of the table's zero, 7 for NF4).
    """
    if codes.dim() != 1:
        raise ValueError(f"pack_4bit expects a 1-d tensor, got shape {tuple(codes.shape)}")
    if codes.is_floating_point() or (codes.numel() and (int(codes.min()) < 0 or int(codes.max()) > 15)):
        raise ValueError("pack_4bit expects integer codes in [0, 15]")
    pad: object = pad_code  # checked at run time: a bool or a float is refused, not coerced
    if not isinstance(pad, int) or isinstance(pad, bool) or not 0 <= pad <= 15:
        raise ValueError(f"pad_code must be an int in [0, 15], got {pad_code!r}")
    c = codes.to(torch.uint8)
    if c.numel() % 2:
        c = torch.cat([c, c.new_full((1,), pad_code)])
    return (c[0::2] << 4) | c[1::2]  # first element in the high nibble


def unpack_4bit(packed: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """Undo :func:`pack_4bit`: ``(m,)`` uint8 -> the first ``n`` (default ``2m``) code indices."""
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(f"unpack_4bit expects a 1-d uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    m2 = 2 * packed.numel()
    count: object = n  # checked at run time
    if count is not None and not (isinstance(count, int) and m2 - 1 <= count <= m2):
        raise ValueError(f"n must be {m2 - 1} or {m2} for {packed.numel()} bytes, got {n!r}")
    codes = torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1)  # (2m,)
    return codes if n is None else codes[:n]


# ----------------------------------------------------------------------------- the kernels


def quantize_4bit(
    w: torch.Tensor, quant_type: str = "nf4", blocksize: int = 64, what: str = "w"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` (any shape, floating, finite) -> ``(packed (ceil(n/2),) uint8, absmax (n_blocks,) float32)``.

    ``n_blocks = ceil(n / blocksize)``. An all-zero block is divided by 1e-38 (so its codes are
    the zero); its stored constant is 0 for a full block, 1e-38 for the last partial block,
    as bitsandbytes stores them. Raises ``ValueError`` when ``w`` holds NaN or inf.
    """
    code, _, zero = _tables(check_quant_type(quant_type), w.device)
    flat = w.detach().reshape(-1).float()  # (n,)
    rem = flat.numel() % blocksize
    full = flat.numel() - rem
    blocks = flat[:full].view(-1, blocksize)  # (n_full, blocksize)
    absmax = blocks.abs().amax(dim=1) if full else flat.new_zeros(0)  # (n_full,)
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38))[:, None], -1, 1).reshape(-1)
    if rem:
        last = flat[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, last[None]])
        scaled = torch.cat([scaled, torch.clamp(flat[full:] / last, -1, 1)])
    if not bool(torch.isfinite(absmax).all()):  # amax propagates NaN and inf: one cheap check
        raise ValueError(f"{what} contains NaN or inf: its absmax (the block scale) would be undefined")
    # Nearest table entry: the table is sorted, so its index is the number of midpoints below
    # the value (a binary search, no (n, 16) temporary). Ties go to the lower entry.
    codes = torch.bucketize(scaled, (code[1:] + code[:-1]) / 2, out_int32=True)  # (n,)
    return pack_4bit(codes, zero), absmax


def _index_buffer(size: int, device: torch.device) -> torch.Tensor:
    """An int32 buffer of ``size`` elements. On CPU one per thread, kept and reused (a fresh
    16 MiB buffer costs thousands of page faults per call, more than the lookup itself; at most
    ``4 * INDEX_CHUNK`` bytes, freed by :func:`release_workspace`); elsewhere a new one."""
    if device.type != "cpu":
        return torch.empty(size, dtype=torch.int32, device=device)
    kept: torch.Tensor | None = getattr(_WORKSPACE, "index", None)
    if kept is None or kept.numel() < size:
        kept = _WORKSPACE.index = torch.empty(size, dtype=torch.int32)
    return kept[:size]


def release_workspace() -> None:
    """Free this thread's reusable CPU index buffer (the next dequantisation builds it again)."""
    _WORKSPACE.index = None


def _lookup(table: torch.Tensor, words: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> None:
    """``rows[i] = table[words[i]]``: the words copied to the int32 ``index`` (same length), then
    one ``index_select`` into ``rows``."""
    idx = index.copy_(words)  # uint16 -> int32: zero-extended, [0, 65536)
    if _UINT16 is None:  # torch < 2.3: int16 sign-extends, so mask back to [0, 65536)
        idx.bitwise_and_(0xFFFF)
    torch.index_select(table, 0, idx, out=rows)


def _split_lookup(
    table: torch.Tensor, words: torch.Tensor, index: torch.Tensor, rows: torch.Tensor, parts: int
) -> None:
    """:func:`_lookup` on ``parts`` equal slices at once, ``parts - 1`` of them in short-lived
    threads. ``index_select`` of a 1-d tensor runs on one core and releases the GIL, and most of
    its time is the page faults of the fresh output: split, they are taken on every core, as a
    parallel kernel takes them. A new thread per call, not a pool: safe after ``fork``."""
    bounds = [words.numel() * k // parts for k in range(parts + 1)]
    slices = [slice(a, b) for a, b in itertools.pairwise(bounds)]
    errors: list[BaseException] = []

    def run(part: slice) -> None:
        try:
            _lookup(table, words[part], index[part], rows[part])
        except BaseException as err:  # re-raised in the caller's thread below
            errors.append(err)

    workers = [threading.Thread(target=run, args=(part,), daemon=True) for part in slices[1:]]
    for worker in workers:
        worker.start()
    run(slices[0])
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]


def _pair_values(packed: torch.Tensor, quads: torch.Tensor) -> torch.Tensor:
    """``T[q]`` of every nibble: ``(4 ceil(m / 2),)`` float32 for ``(m,)`` uint8 codes, in a fresh
    tensor (the caller's output).

    Each pair of bytes, read as one unsigned 16-bit index (``view(uint16)``, copied to int32 in
    slices of ``INDEX_CHUNK``), selects its row of four values. On CPU and CUDA the rows are
    moved as single 16-byte ``complex128`` elements: one element copy per index instead of a
    row copy of four floats (the bits are only moved, never read as numbers). On CPU a large
    lookup is split over up to ``torch.get_num_threads()`` (at most 8) threads."""
    src = packed
    if src.numel() % 2 or src.storage_offset() % 2:  # whole, aligned 16-bit words
        src = torch.cat([src, src.new_zeros(src.numel() % 2)])
    words = src.view(_UINT16 or torch.int16)  # (ceil(m / 2),)
    out = torch.empty(4 * words.numel(), dtype=torch.float32, device=src.device)
    whole = quads.device.type in ("cpu", "cuda")  # complex128 index_select: not on every backend
    table = quads.view(torch.complex128).view(-1) if whole else quads  # (65536,) or (65536, 4)
    rows = out.view(torch.complex128) if whole else out.view(-1, 4)
    index = _index_buffer(min(words.numel(), INDEX_CHUNK), src.device)
    for start in range(0, words.numel(), INDEX_CHUNK):
        part = words[start : start + INDEX_CHUNK]
        size = part.numel()
        parts = min(torch.get_num_threads(), 8, size // _SPLIT_WORDS) if src.device.type == "cpu" else 1
        if parts > 1:
            _split_lookup(table, part, index[:size], rows[start : start + size], parts)
        else:
            _lookup(table, part, index[:size], rows[start : start + size])
    return out


def dequantize_4bit(
    packed: torch.Tensor,
    absmax: torch.Tensor,
    n: int,
    quant_type: str = "nf4",
    blocksize: int = 64,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(ceil(n/2),)`` uint8 codes and ``(n_blocks,)`` float32 constants -> ``(n,)`` in ``dtype``.

    One table lookup per pair of bytes (:func:`_pair_values`, the 65,536-row table of four
    values) straight into the float32 output, then ``T[q] * c_b`` per block, in place in float32
    as bitsandbytes computes it, then the cast to ``dtype`` (a separate vectorised pass:
    ``torch.mul`` into a bfloat16 ``out=`` is 2-3x slower on CPU, measured)."""
    _, quads, _ = _tables(check_quant_type(quant_type), packed.device)
    values = _pair_values(packed, quads)  # (4 ceil(m / 2),) float32 T[q]
    out = values if values.numel() == n else values[:n]
    rem = n % blocksize
    full = n - rem
    if full:
        out[:full].view(-1, blocksize).mul_(absmax[: full // blocksize].view(-1, 1))
    if rem:
        out[full:].mul_(absmax[-1])
    return out if dtype == torch.float32 else out.to(dtype)
