"""Prove the graders: plant each classic bug into a copy of the answers and require a failure.

Every grader lists its bugs in a module-level ``PLANTED_BUGS = [(description, old, new), ...]``
(a plain literal: it is read with ``ast.literal_eval``, never imported):
``old`` is a snippet that occurs exactly once in the reference answer and ``new`` the
mistaken version. A bug is *killed* when the challenge's grader, run against the answers
with that one snippet replaced, fails. The kill rate must be 100%.

    python -m peft_zoo.exercises.mutation [--root DIR] [--shard I/N] [--json]

Graders run in this process through ``pytest.main`` (one interpreter start for all bugs).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .manifest import CHALLENGES, TRACK


@dataclass(frozen=True)
class PlantedBug:
    stem: str  # challenge file stem, e.g. "ex01_lora_linear"
    description: str
    old: str
    new: str


@dataclass
class Outcome:
    stem: str
    description: str
    killed: bool
    detail: str  # why not killed, or the grader's exit status
    seconds: float


def planted_bugs(root: Path) -> list[PlantedBug]:
    """Read ``PLANTED_BUGS`` from every grader without importing it."""
    bugs: list[PlantedBug] = []
    for ch in CHALLENGES:
        grader = root / "practice" / TRACK / f"test_{ch.stem}.py"
        if not grader.is_file():
            continue
        for node in ast.parse(grader.read_text()).body:
            target = node.target if isinstance(node, ast.AnnAssign) else None
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
            if isinstance(target, ast.Name) and target.id == "PLANTED_BUGS" and node.value is not None:
                for description, old, new in ast.literal_eval(node.value):
                    bugs.append(PlantedBug(ch.stem, description, old, new))
    return bugs


def plant(bug: PlantedBug, answers: Path, out_dir: Path) -> Path:
    """Write the answer of ``bug.stem`` with the bug planted into ``out_dir``; return its path."""
    text = (answers / f"{bug.stem}.py").read_text()
    count = text.count(bug.old)
    if count != 1:
        raise ValueError(
            f"{bug.stem}: {bug.description!r}: the snippet occurs {count} times in the answer, not once"
        )
    out = out_dir / f"{bug.stem}.py"
    out.write_text(text.replace(bug.old, bug.new))
    return out


def run(root: Path, bugs: list[PlantedBug]) -> list[Outcome]:
    """Plant each bug in turn and run its grader; return one :class:`Outcome` per bug."""
    import pytest

    answers = root / "solutions" / TRACK
    outcomes = []
    for bug in bugs:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                plant(bug, answers, Path(tmp))
            except ValueError as err:
                outcomes.append(Outcome(bug.stem, bug.description, False, str(err), 0.0))
                continue
            grader = root / "practice" / TRACK / f"test_{bug.stem}.py"
            args = [str(grader), f"--impl={tmp}", "-x", "-q", "-p", "no:cacheprovider", f"--rootdir={root}"]
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                code = pytest.main(args)
            # 1 = tests failed (killed); 0 = survived; anything else = the grader could not run.
            killed = int(code) == 1
            detail = {0: "grader passed: the bug survived", 1: "grader failed"}.get(
                int(code), f"pytest exit {int(code)}"
            )
            outcomes.append(Outcome(bug.stem, bug.description, killed, detail, time.perf_counter() - t0))
            for name in [m for m in sys.modules if m.startswith("_peft_zoo_graded_")]:
                del sys.modules[name]  # the next bug re-imports its own copy
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plant each grader's PLANTED_BUGS and report the kill rate.")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2])
    parser.add_argument("--shard", default="1/1", help="I/N: run every N-th bug starting at the I-th")
    parser.add_argument("--json", action="store_true", help="print one JSON list of outcomes")
    args = parser.parse_args(argv)
    i, n = (int(v) for v in args.shard.split("/"))
    bugs = planted_bugs(args.root)[i - 1 :: n]
    outcomes = run(args.root, bugs)
    if args.json:
        print(json.dumps([asdict(o) for o in outcomes]))
    else:
        for o in outcomes:
            mark = "killed  " if o.killed else "SURVIVED"
            print(f"{mark} {o.stem:<30} {o.description} ({o.detail}, {o.seconds:.1f} s)")
        killed = sum(o.killed for o in outcomes)
        print(f"kill rate: {killed}/{len(outcomes)} = {100 * killed / max(1, len(outcomes)):.1f}%")
    return 0 if all(o.killed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
