"""Wall time of grading the reference answers: `pytest practice/13_lora_adapters --impl=solutions`.

Runs the command N times (default 3) in fresh interpreters and prints each time and the
median; the target is a median under 60 s on a 2-core machine. Usage::

    python benchmarks/grader_speed.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "practice/13_lora_adapters",
        "--impl=solutions",
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    times = []
    for i in range(args.runs):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - t0)
        summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-200:]
        print(f"run {i + 1}: {times[-1]:.1f} s  ({summary})")
        if proc.returncode != 0:
            sys.exit(f"grading the answers failed:\n{proc.stdout[-3000:]}")
    print(f"median of {args.runs}: {statistics.median(times):.1f} s (target < 60 s)")


if __name__ == "__main__":
    main()
