"""Forward-pass cost of a LoRA layer, unmerged and merged, against the plain ``nn.Linear``.

Prints median times and ratios measured in the same run (absolute times on shared machines
are noise; ratios are the result). Usage::

    python benchmarks/lora_overhead.py [--repeats 30] [--threads 2]

Expected: merged == base (ratio ~1.00, it *is* one GEMM); unmerged costs the two thin
GEMMs ``x A^T`` and ``(x A^T) B^T`` plus an add, a small fraction for ``r << d``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from peft_zoo import LoRALinear


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure(tokens: int, d: int, rank: int, repeats: int) -> tuple[float, float, float]:
    """Median ms of ``nn.Linear(d, d)``, an unmerged and a merged rank-``rank`` LoRA layer,
    on an input of shape ``(tokens, d)``."""
    x = torch.randn(tokens, d)
    base = nn.Linear(d, d)
    lora = LoRALinear(nn.Linear(d, d), rank)
    with torch.no_grad():
        lora.lora_B.normal_()  # a trained-looking adapter
    lora.eval()
    with torch.inference_mode():
        t_base = median_ms(lambda: base(x), repeats)
        t_unmerged = median_ms(lambda: lora(x), repeats)
        lora.merge()
        t_merged = median_ms(lambda: lora(x), repeats)
    return t_base, t_unmerged, t_merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, CPU")
    print(f"{'tokens x d':>14} {'rank':>5} {'base ms':>9} {'unmerged/base':>14} {'merged/base':>12}")
    for tokens, d in ((2048, 1024), (512, 1024), (64, 1024)):
        for rank in (8, 64):
            t_base, t_unmerged, t_merged = measure(tokens, d, rank, args.repeats)
            print(
                f"{tokens:>7} x {d:<5} {rank:>5} {t_base:>9.3f} {t_unmerged / t_base:>14.2f} "
                f"{t_merged / t_base:>12.2f}"
            )


if __name__ == "__main__":
    main()
