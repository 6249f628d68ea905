"""The runner's fixed names and limits, and the one error it prints.

Kept apart from the commands so that the graders' summary (:mod:`..summary`, loaded by
every grader's conftest) can read them without importing the runner.
"""

from __future__ import annotations

STATE_NAME = ".progress.json"
BACKUP_DIR = ".backups"
DEFAULT_TIMEOUT = 900.0  # seconds for one pytest run; the graders bound each test themselves
ROOT_ENV = "PEFT_ZOO_ROOT"
LEVELS = {1: "warm-up", 2: "core", 3: "hard"}
RUNNER_ENV = "PEFT_ZOO_RUNNER"  # tells the graders' summary that this runner prints the next step
NOT_IMPLEMENTED = "not implemented yet"  # what a grader says about an unfinished stub


class RunnerError(Exception):
    """A problem the learner can fix (bad root, missing file): printed as one line, exit 2."""
