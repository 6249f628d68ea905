"""Prove the graders: plant each classic bug into a copy of the answers and require a failure.

Every grader lists its bugs in a module-level ``PLANTED_BUGS`` (a plain literal: it is read
with ``ast.literal_eval``, never imported) of ``(description, old, new)`` or
``(description, old, new, diagnosis)`` tuples: ``old`` is a snippet that occurs exactly
once in the reference answer, ``new`` the mistaken version, and ``diagnosis`` (optional)
the text the grader's "likely:" line must show for that bug (or a tuple of every
name its tests use for it). A bug is *killed* when the
challenge's grader, run against the answers with that one snippet replaced, fails. The
kill rate must be 100%, whatever the hypothesis seed.

    python -m peft_zoo.exercises.mutation [--root DIR] [--shard I/N] [--seeds 0,1,2] [--only TEXT] [--json]
    python -m peft_zoo.exercises.mutation --diagnose [--shard I/N] [--json]

``--seeds`` runs every bug once per hypothesis seed (derandomisation off) and reports the
kill rate per seed. ``--diagnose`` runs each bug that has a diagnosis through its whole
grader and checks that the "likely:" lines name that bug and no other.

Graders run in this process through ``pytest.main`` (one interpreter start for all bugs).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .manifest import CHALLENGES, TRACK

# What grading.diagnose writes before the name of a bug (one bug / several candidates).
_NAMED = ("classic bug produces:", "classic bug gives:", "classic bugs produce")
_LIKELY = re.compile(r"likely:\s+(.*\S)")


@dataclass(frozen=True)
class PlantedBug:
    stem: str  # challenge file stem, e.g. "ex01_lora_linear"
    description: str
    old: str
    new: str
    # The bug's name as the grader's "likely:" lines give it (one text, or every name its tests use).
    diagnosis: str | tuple[str, ...] | None = None


@dataclass
class Outcome:
    stem: str
    description: str
    killed: bool
    detail: str  # why not killed, or the grader's exit status
    seconds: float
    seed: int | None = None


def planted_bugs(root: Path) -> list[PlantedBug]:
    """Read ``PLANTED_BUGS`` from every grader without importing it (3- or 4-tuples)."""
    bugs: list[PlantedBug] = []
    for ch in CHALLENGES:
        grader = root / "practice" / TRACK / f"test_{ch.stem}.py"
        if not grader.is_file():
            continue
        for node in ast.parse(grader.read_text()).body:
            value = assigned_value(node, "PLANTED_BUGS")
            if value is None:
                continue
            for entry in ast.literal_eval(value):
                if len(entry) not in (3, 4):
                    raise ValueError(f"{grader.name}: a PLANTED_BUGS entry must have 3 or 4 items: {entry}")
                bugs.append(PlantedBug(ch.stem, *entry))
    return bugs


def assigned_value(node: ast.stmt, name: str) -> ast.expr | None:
    """The value a module-level ``name = ...`` or ``name: T = ...`` assigns, else None."""
    target: ast.expr
    value: ast.expr | None
    if isinstance(node, ast.AnnAssign):
        target, value = node.target, node.value
    elif isinstance(node, ast.Assign) and len(node.targets) == 1:
        target, value = node.targets[0], node.value
    else:
        return None
    return value if isinstance(target, ast.Name) and target.id == name else None


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


def _grade(root: Path, stem: str, impl: Path, extra: Sequence[str]) -> tuple[int, str]:
    """Run one challenge's grader in this process; return (pytest exit code, its output)."""
    import pytest
    from hypothesis import core

    grader = root / "practice" / TRACK / f"test_{stem}.py"
    args = [str(grader), f"--impl={impl}", "-q", "-p", "no:cacheprovider", f"--rootdir={root}", *extra]
    # pytest's unraisable-exception plugin runs gc.collect() five times as each session ends: with
    # torch loaded that is about a third of a planted bug's time, and nothing here needs it.
    args += ["-p", "no:unraisableexception"]
    if importlib.util.find_spec("peft_zoo.exercises.isolation") is not None:
        args.append("--no-isolate")  # one planted bug at a time: no need to fork per grader
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = int(pytest.main(args))
    finally:
        core.global_force_seed = None  # --hypothesis-seed sets a process-wide global
        for name in [m for m in sys.modules if m.startswith("_peft_zoo_graded_")]:
            del sys.modules[name]  # the next bug re-imports its own copy
        _forget_examples()
    return code, out.getvalue()


def _freeze_imports() -> None:
    """Import what every grader run uses, then move those long-lived objects out of the
    garbage collector's sight (``gc.freeze``): each later collection scans only what a bug's
    run allocates, not torch's and pytest's module state again."""
    import gc

    import hypothesis  # noqa: F401  (imported for its side effect: loaded before the freeze)
    import pytest  # noqa: F401
    import torch  # noqa: F401

    import peft_zoo  # noqa: F401

    gc.freeze()


def _forget_examples() -> None:
    """Empty hypothesis's example database, so no bug is caught by replaying another bug's failure."""
    home = os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY")
    if home and Path(home).name.startswith("peft_zoo_mutation_"):
        shutil.rmtree(Path(home) / "examples", ignore_errors=True)


def run(root: Path, bugs: list[PlantedBug], seed: int | None = None) -> list[Outcome]:
    """Plant each bug in turn and run its grader; return one :class:`Outcome` per bug."""
    answers = root / "solutions" / TRACK
    extra = ["-x"] + ([] if seed is None else [f"--hypothesis-seed={seed}"])
    outcomes = []
    for bug in bugs:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                plant(bug, answers, Path(tmp))
            except ValueError as err:
                outcomes.append(Outcome(bug.stem, bug.description, False, str(err), 0.0, seed))
                continue
            code, _ = _grade(root, bug.stem, Path(tmp), extra)
        # 1 = tests failed (killed); 0 = survived; anything else = the grader could not run.
        detail = {0: "grader passed: the bug survived", 1: "grader failed"}.get(code, f"pytest exit {code}")
        outcomes.append(Outcome(bug.stem, bug.description, code == 1, detail, time.perf_counter() - t0, seed))
    return outcomes


def likely_lines(output: str) -> list[str]:
    """The text of every "likely:" line in a grader's output."""
    return [m.group(1) for m in _LIKELY.finditer(output)]


def check_diagnosis(bug: PlantedBug, output: str) -> str | None:
    """Why the grader's output does not name exactly ``bug.diagnosis`` (``None`` when it does):
    some "likely:" line must contain it, and every line that names a classic bug must name it
    alone (never another bug, never "one of: ...")."""
    names = (bug.diagnosis,) if isinstance(bug.diagnosis, str) else tuple(bug.diagnosis or ())
    lines = likely_lines(output)
    if not any(name in line for line in lines for name in names):
        return f"no 'likely:' line names {names[0]!r}; got {lines[:4]}"
    wrong = [
        line
        for line in lines
        if any(k in line for k in _NAMED) and ("one of:" in line or not line.endswith(names))
    ]
    if wrong:
        return f"a 'likely:' line names another bug (or several): {wrong[:3]}"
    return None


def diagnose_all(root: Path, bugs: list[PlantedBug]) -> list[Outcome]:
    """Kill rate and diagnosis in one pass: a bug without a diagnosis must fail its grader (as
    in :func:`run`); a bug with one runs through the whole grader and must fail it *and* be
    named exactly. ``killed`` means both held."""
    answers = root / "solutions" / TRACK
    outcomes = []
    for bug in bugs:
        if not bug.diagnosis:
            outcomes += run(root, [bug])
            continue
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            plant(bug, answers, Path(tmp))
            code, output = _grade(root, bug.stem, Path(tmp), ["-vv"])  # -q -vv: every failing test's message
        problem = check_diagnosis(bug, output) if code == 1 else f"pytest exit {code}"
        outcomes.append(
            Outcome(bug.stem, bug.description, problem is None, problem or "named", time.perf_counter() - t0)
        )
    return outcomes


def _report(outcomes: list[Outcome], label: str) -> None:
    for o in outcomes:
        mark = (
            ("killed  " if o.killed else "SURVIVED")
            if label.startswith("kill rate")
            else ("ok" if o.killed else "WRONG")
        )
        print(f"{mark} {o.stem:<30} {o.description} ({o.detail}, {o.seconds:.1f} s)")
    good = sum(o.killed for o in outcomes)
    print(f"{label}: {good}/{len(outcomes)} = {100 * good / max(1, len(outcomes)):.1f}%")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plant each grader's PLANTED_BUGS and report the kill rate.")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2])
    parser.add_argument("--shard", default="1/1", help="I/N: run every N-th bug starting at the I-th")
    parser.add_argument("--seeds", default=None, help="comma-separated hypothesis seeds, e.g. 0,1,2")
    parser.add_argument(
        "--diagnose", action="store_true", help="also check that each bug's diagnosis names it exactly"
    )
    parser.add_argument("--only", default=None, help="only the bugs whose stem or description contains this")
    parser.add_argument("--json", action="store_true", help="print one JSON list of outcomes")
    args = parser.parse_args(argv)
    i, n = (int(v) for v in args.shard.split("/"))
    seeds = None if args.seeds is None else [int(s) for s in args.seeds.split(",") if s.strip()]
    if seeds is not None:
        os.environ.pop("CI", None)  # the graders' conftest derandomizes under CI, which ignores the seed
    storage = tempfile.mkdtemp(prefix="peft_zoo_mutation_")
    os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = storage
    try:
        from hypothesis.configuration import set_hypothesis_home_dir

        set_hypothesis_home_dir(storage)
        bugs = [
            b
            for b in planted_bugs(args.root)
            if args.only is None or args.only in f"{b.stem} {b.description}"
        ]
        bugs = bugs[i - 1 :: n]
        _freeze_imports()
        if args.diagnose:
            runs = {"killed and named": diagnose_all(args.root, bugs)}
        elif seeds is None:
            runs = {"kill rate": run(args.root, bugs)}
        else:
            runs = {f"kill rate, seed {s}": run(args.root, bugs, seed=s) for s in seeds}
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    outcomes = [o for group in runs.values() for o in group]
    if args.json:
        print(json.dumps([asdict(o) for o in outcomes]))
    else:
        for label, group in runs.items():
            _report(group, label)
    return 0 if all(o.killed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
