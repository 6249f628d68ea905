"""The exercise runner behind ``peft-zoo``: progress, check, hint, watch, solution, reset, build, list.

The learner always knows what to do next (rustlings style):

- ``peft-zoo`` shows a progress bar, every challenge's status and the next step. It is fast:
  an untouched stub is "not started" without grading, a file whose hash was graded before
  reuses that result, and only the changed files are graded, all in one pytest run.
- ``peft-zoo check N`` grades one challenge and prints the grader's teaching output.
- ``peft-zoo hint N`` reveals one more hint per call; ``peft-zoo solution N`` unlocks after a pass.
- ``peft-zoo reset N`` restores the stub after backing the learner's file up (never loses work).

Progress lives in ``practice/<track>/.progress.json``; deleting it is always safe.

The modules, bottom up: :mod:`.constants` (names, limits, :class:`RunnerError`),
:mod:`.output` (terminal lines and marks), :mod:`.paths` (root discovery, file paths,
hashes, the pristine stub), :mod:`.progress` (the progress file), :mod:`.grade` (pytest in a
subprocess, JUnit evidence), :mod:`.status` (every challenge's status and the next step),
:mod:`.commands` and :mod:`.watch` (one function per command), :mod:`.cli` (argparse).
"""

from __future__ import annotations

from .cli import COMMANDS, add_arguments, challenge_arg, run
from .commands import (
    backup_file,
    cmd_build,
    cmd_check,
    cmd_hint,
    cmd_list,
    cmd_reset,
    cmd_solution,
    cmd_status,
)
from .constants import (
    BACKUP_DIR,
    DEFAULT_TIMEOUT,
    NOT_IMPLEMENTED,
    ROOT_ENV,
    RUNNER_ENV,
    STATE_NAME,
    RunnerError,
)
from .grade import Evidence, PytestRun, grade_many, grade_one, junit_evidence
from .output import emit, progress_bar
from .paths import Paths, find_root, grader_fingerprint, pristine_stub, sha256_bytes
from .progress import Progress
from .status import Status, next_line, next_status, statuses
from .watch import cmd_watch

__all__ = [
    "BACKUP_DIR",
    "COMMANDS",
    "DEFAULT_TIMEOUT",
    "NOT_IMPLEMENTED",
    "ROOT_ENV",
    "RUNNER_ENV",
    "STATE_NAME",
    "Evidence",
    "Paths",
    "Progress",
    "PytestRun",
    "RunnerError",
    "Status",
    "add_arguments",
    "backup_file",
    "challenge_arg",
    "cmd_build",
    "cmd_check",
    "cmd_hint",
    "cmd_list",
    "cmd_reset",
    "cmd_solution",
    "cmd_status",
    "cmd_watch",
    "emit",
    "find_root",
    "grade_many",
    "grade_one",
    "grader_fingerprint",
    "junit_evidence",
    "next_line",
    "next_status",
    "pristine_stub",
    "progress_bar",
    "run",
    "sha256_bytes",
    "statuses",
]
