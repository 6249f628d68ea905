"""The ``peft-zoo`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _build_parser() -> argparse.ArgumentParser:
    from ..core.version import __version__
    from ..exercises import runner

    parser = argparse.ArgumentParser(
        prog="peft-zoo",
        description="peft_zoo: learn and use parameter-efficient fine-tuning in PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"peft_zoo {__version__}")
    sub = parser.add_subparsers(dest="command")
    tour = sub.add_parser("tour", help="LoRA end to end on a small transformer (under a minute on a CPU)")
    tour.add_argument("--steps", type=int, default=150, help="fine-tuning steps (default 150)")
    tour.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    tour.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    runner.add_arguments(parser, sub)  # the exercise runner: check, hint, watch, solution, reset, ...
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``peft-zoo`` console script; returns the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "tour":
        if args.steps <= 0:
            parser.error("--steps must be > 0")
        from . import tour

        result = tour.run_tour(
            steps=args.steps, seed=args.seed, config=tour.TOUR_CONFIG, progress=not args.no_progress
        )
        return 0 if result.loss_end < result.loss_start else 1
    from ..exercises import runner

    def no_exercises() -> int:
        parser.print_help()
        print("\nStart with:  peft-zoo tour")
        return 0

    # No command: the exercise progress screen (or the help, outside a checkout with exercises).
    return runner.run(args, no_root=no_exercises)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
