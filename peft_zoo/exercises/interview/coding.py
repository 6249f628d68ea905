"""The timed coding question of a mock interview: a challenge, or a variant of one.

A task is a challenge number and a variant:

- ``plain``: the challenge as the track has it;
- ``no_loops``: the same, with no Python ``for`` / ``while`` loop and no comprehension in the
  code that runs per call (every function except ``__init__`` and ``reset_parameters``,
  which run once): the tensor maths must be vectorised;
- ``einsum``: the same, with every matrix product written as ``torch.einsum``: no ``@`` and
  no ``matmul`` / ``mm`` / ``bmm`` / ``linear`` / ... calls in the per-call code.

The candidate's file lives in a work folder next to the learner's progress
(``practice/<track>/.interview/exNN_<name>.py``), so the practice file is never touched. It
is graded by the challenge's own grader (``--impl=<work folder>``), after the variant's rule
is checked on the file's syntax tree.
"""

from __future__ import annotations

import ast
import random
from dataclasses import dataclass
from pathlib import Path

from .. import builder
from ..manifest import CHALLENGES, Challenge
from ..runner.grade import grade_one
from ..runner.paths import Paths
from ..runner.practice import estimate_minutes
from .questions import TOPIC_OF

WORK_DIR = ".interview"  # under practice/<track>: the interview's own copies of the stubs
VARIANTS = ("plain", "no_loops", "einsum")
SETUP_FUNCTIONS = frozenset({"__init__", "reset_parameters"})  # run once: loops allowed there
MATMUL_CALLS = frozenset(
    {"matmul", "mm", "bmm", "mv", "linear", "addmm", "baddbmm", "tensordot", "inner", "outer", "dot"}
)

# Variants offered beyond "plain": where the constraint is a real exercise (the tensor maths
# of a layer), not where loops are the point (walking a model's modules).
EXTRA_VARIANTS: dict[int, tuple[str, ...]] = {
    1: ("no_loops", "einsum"),
    8: ("no_loops",),
    16: ("no_loops", "einsum"),
    18: ("no_loops",),
    20: ("no_loops", "einsum"),
    24: ("einsum",),
    25: ("no_loops", "einsum"),
    30: ("no_loops",),
}


class CodingTaskError(ValueError):
    """A coding task that does not exist (unknown challenge or variant, malformed id)."""


@dataclass(frozen=True)
class CodingTask:
    number: int  # the challenge
    variant: str  # one of VARIANTS
    minutes: float  # the time budget: the challenge's estimate

    def __post_init__(self) -> None:
        if isinstance(self.number, bool) or not isinstance(self.number, int):
            raise CodingTaskError(f"challenge number must be an int, got {self.number!r}")
        if self.number not in TOPIC_OF:
            raise CodingTaskError(f"no challenge {self.number}: choose 1-{len(CHALLENGES)}")
        if self.variant not in ("plain", *EXTRA_VARIANTS.get(self.number, ())):
            offered = ", ".join(("plain", *EXTRA_VARIANTS.get(self.number, ())))
            raise CodingTaskError(
                f"challenge {self.number} has no {self.variant!r} variant (offered: {offered})"
            )

    @property
    def id(self) -> str:
        return f"coding:{self.number}:{self.variant}"

    @property
    def challenge(self) -> Challenge:
        return CHALLENGES[self.number - 1]

    @property
    def topic(self) -> str:
        return TOPIC_OF[self.number]

    def instructions(self) -> str:
        """What to implement, under which rule, and how it is graded (several lines)."""
        ch = self.challenge
        rule = {
            "plain": "Implement it as the docstrings ask.",
            "no_loops": "No Python loops: no for / while and no comprehension outside __init__ / "
            "reset_parameters. Vectorise the tensor maths.",
            "einsum": "Every matrix product as torch.einsum: no @, matmul, mm, bmm or F.linear "
            "outside __init__ / reset_parameters.",
        }[self.variant]
        return (
            f"Challenge {ch.number:02d} · {ch.title}\n"
            f"Implement: {', '.join(ch.objects)}.\n{rule}\n"
            f"Graded by the challenge's own property-based grader; budget {self.minutes:g} min."
        )


@dataclass(frozen=True)
class CodingResult:
    passed: bool
    report: str  # what the grader or the variant check said, for the candidate


def task_from_id(text: object) -> CodingTask:
    """The task ``coding:<number>:<variant>`` names (as stored in a session or history file)."""
    parts = text.split(":") if isinstance(text, str) else []
    if len(parts) != 3 or parts[0] != "coding" or not parts[1].isdigit():
        raise CodingTaskError(f"not a coding task id: {text!r} (expected coding:<number>:<variant>)")
    number = int(parts[1])
    if number not in TOPIC_OF:
        raise CodingTaskError(f"no challenge {number}: choose 1-{len(CHALLENGES)}")
    return CodingTask(number, parts[2], float(estimate_minutes(CHALLENGES[number - 1])))


def choose_task(rng: random.Random, topic: str, minutes: float) -> CodingTask | None:
    """A task of ``topic`` ("all": any) whose estimate fits in ``minutes``; None when none fits.

    Drawn with ``rng`` only, so a seeded interview always gets the same task."""
    candidates = [
        CodingTask(n, variant, float(estimate_minutes(CHALLENGES[n - 1])))
        for n, t in sorted(TOPIC_OF.items())
        if topic in ("all", t)
        for variant in ("plain", *EXTRA_VARIANTS.get(n, ()))
    ]
    fitting = [task for task in candidates if task.minutes <= minutes]
    return rng.choice(fitting) if fitting else None


def work_file(task: CodingTask, paths: Paths) -> Path:
    """Where the candidate writes the task: ``practice/<track>/.interview/exNN_<name>.py``."""
    return paths.practice / WORK_DIR / f"{task.challenge.stem}.py"


def prepare(task: CodingTask, paths: Paths) -> Path:
    """Write the challenge's stub to the work file (never over an existing one); its path."""
    path = work_file(task, paths)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".py.tmp")
        tmp.write_text(builder.stub_text(task.challenge), encoding="utf-8")
        tmp.replace(path)
    return path


def _per_call_functions(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name not in SETUP_FUNCTIONS
    ]


def _called_name(node: ast.Call) -> str | None:
    func = node.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else None


def variant_problems(source: str, variant: str) -> list[str]:
    """Where ``source`` breaks ``variant``'s rule, one line each (empty: it keeps the rule)."""
    if variant not in VARIANTS:
        raise CodingTaskError(f"unknown variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    if variant == "plain":
        return []
    tree = ast.parse(source)
    problems: list[str] = []
    loops = (ast.For, ast.AsyncFor, ast.While, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
    for fn in _per_call_functions(tree):
        for node in ast.walk(fn):
            if variant == "no_loops" and isinstance(node, loops):
                problems.append(f"line {node.lineno}: a {type(node).__name__} in {fn.name}()")
            if variant == "einsum" and isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
                problems.append(f"line {node.lineno}: the @ operator in {fn.name}()")
            if variant == "einsum" and isinstance(node, ast.Call) and _called_name(node) in MATMUL_CALLS:
                problems.append(f"line {node.lineno}: {_called_name(node)}() in {fn.name}()")
    if variant == "einsum" and not any(
        isinstance(n, ast.Call) and _called_name(n) == "einsum" for n in ast.walk(tree)
    ):
        problems.append("no torch.einsum call at all")
    return problems


def grade_task(task: CodingTask, paths: Paths, timeout: float) -> CodingResult:
    """Check the variant's rule, then run the challenge's grader on the work file."""
    path = work_file(task, paths)
    try:
        source = path.read_text(encoding="utf-8")
        problems = variant_problems(source, task.variant)
    except OSError as err:
        return CodingResult(False, f"cannot read {path}: {err.strerror}")
    except SyntaxError as err:
        return CodingResult(False, f"{path.name} does not parse: line {err.lineno}: {err.msg}")
    if problems:
        return CodingResult(False, f"the {task.variant} rule is broken:\n  " + "\n  ".join(problems))
    messages: list[str] = []
    verdict = grade_one(
        paths,
        task.challenge,
        timeout=timeout,
        stream=False,
        messages=messages,
        extra_args=[f"--impl={path.parent}"],
    )
    if verdict is True:
        return CodingResult(True, f"challenge {task.number:02d} ({task.variant}): every property holds")
    if verdict is None:
        return CodingResult(False, "the grader could not decide (see its output above)")
    lines = messages[0].strip().splitlines() if messages else ["a property failed"]
    return CodingResult(False, "\n".join(dict.fromkeys(lines))[:2000])  # message and text often repeat
