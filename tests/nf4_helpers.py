"""What the NF4 and QLoRA tests (test_nf4.py, test_qlora.py) share: the storage formula in bytes."""

from __future__ import annotations

import math

from hypothesis import settings

FAST = settings(max_examples=25, deadline=None)


def expected_nbytes(n: int, blocksize: int, double_quant: bool) -> int:
    """Bytes of a blockwise 4-bit tensor of n elements, from the storage formula."""
    n_blocks = math.ceil(n / blocksize)
    codes = (n + 1) // 2  # two 4-bit codes per byte, nothing padded (as bitsandbytes stores them)
    if not double_quant:
        return codes + 4 * n_blocks  # one fp32 absmax per block
    # uint8 constants, fp32 nested absmax per 256 constants, one fp32 mean
    return codes + n_blocks + 4 * math.ceil(n_blocks / 256) + 4
