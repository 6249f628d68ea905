"""NF4 dequantisation speed on CPU: peft_zoo (plain PyTorch) against bitsandbytes, same run.

    python benchmarks/nf4_dequant.py            # 4096 x 4096 and 11008 x 4096, blocksize 64
    python benchmarks/nf4_dequant.py --quick    # one 4096 x 4096 weight, fewer repeats

Both sides dequantise the same stored tensors (bitsandbytes' ``quantize_4bit`` output, read
into peft_zoo with :func:`peft_zoo.nf4_linear_from_bnb_state_dict`) into float32 and bfloat16,
with and without double quantisation. Each timing is the median of ``--repeats`` calls after
two warm-up calls, bitsandbytes and peft_zoo interleaved so that load on the machine hits
both alike. The printed ratio is peft_zoo / bitsandbytes (target: <= 1.5). The load average
is printed before and after: other processes on the cores stall every parallel operation, and
peft_zoo runs four of them (index copy, lookup, multiplication, cast) where bitsandbytes runs one
kernel (and the cast), so a busy machine inflates the ratio. Needs bitsandbytes (``pip install
-e .[bnb]``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from peft_zoo.interop.bnb import nf4_linear_from_bnb_state_dict


def _median_pair(a: Callable[[], object], b: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds of ``a`` and of ``b``, called alternately ``repeats`` times each."""
    for _ in range(2):
        a(), b()
    ta: list[float] = []
    tb: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a()
        t1 = time.perf_counter()
        b()
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return statistics.median(ta), statistics.median(tb)


def _case(rows: int, cols: int, dq: bool, dtype: torch.dtype, repeats: int) -> float:
    import bitsandbytes as bnb
    import bitsandbytes.functional as bf

    torch.manual_seed(0)
    lin = torch.nn.Linear(cols, rows, bias=False)
    layer = bnb.nn.Linear4bit(cols, rows, bias=False, compress_statistics=dq, quant_type="nf4")
    layer.load_state_dict(lin.state_dict())
    layer = layer.to("cpu")
    ours = nf4_linear_from_bnb_state_dict(layer.state_dict())
    packed, state = layer.weight.data, layer.weight.quant_state
    # Same result first: the speed of a different answer would mean nothing.
    theirs_w = bf.dequantize_4bit(packed, state).to(dtype)
    assert torch.equal(ours.dequantize_weight(dtype), theirs_w), "outputs differ: timing is meaningless"
    t_bnb, t_ours = _median_pair(
        lambda: bf.dequantize_4bit(packed, state).to(dtype),
        lambda: ours.dequantize_weight(dtype),
        repeats,
    )
    ratio = t_ours / t_bnb
    print(
        f"{rows:>6} x {cols:<6} dq={dq!s:<5} {str(dtype).removeprefix('torch.'):<9}"
        f"  bnb {1e3 * t_bnb:7.2f} ms   peft_zoo {1e3 * t_ours:7.2f} ms   peft_zoo/bnb {ratio:5.2f}"
    )
    return ratio


def _load() -> str:
    """The 1-, 5- and 15-minute load averages, or "n/a" where the OS has none."""
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except (OSError, AttributeError):  # no load average on this platform (Windows)
        return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one 4096 x 4096 weight, 7 repeats")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed calls per side (default 15, quick 7)"
    )
    args = parser.parse_args()
    repeats = args.repeats or (7 if args.quick else 15)
    shapes = [(4096, 4096)] if args.quick else [(4096, 4096), (11008, 4096)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {repeats} calls")
    print(
        f"load average before: {_load()} (on {os.cpu_count()} CPUs; the ratio means most on a quiet machine)"
    )
    ratios = [
        _case(r, c, dq, dtype, repeats)
        for r, c in shapes
        for dq in (False, True)
        for dtype in (torch.float32, torch.bfloat16)
    ]
    print(f"median peft_zoo/bnb over the cases: {statistics.median(ratios):.2f} (target <= 1.5)")
    print(f"load average after: {_load()}")


if __name__ == "__main__":
    main()
