"""Grader plumbing for `pytest practice/13_lora_adapters [--impl=practice|solutions|DIR]`.

Each grader module names its challenge in ``CHALLENGE`` and receives two fixtures:
``impl`` (the module under test, from ``--impl``) and ``ref`` (the reference answer from
``solutions/``). A file that cannot be imported fails only its own challenge.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import Phase, settings

from peft_zoo.exercises.grading import LearnerLoadError, LearnerTimeout, NotImplementedYet, load_module

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SOLUTIONS = ROOT / "solutions" / HERE.name
_CLEAN = (NotImplementedYet, LearnerTimeout, LearnerLoadError)

# Graders shrink a failure to its smallest example (the clearest lesson) but skip hypothesis's
# slow "explain" phase; no per-example deadline (shared machines are noisy).
# In CI the examples are derandomized, so a red build always reproduces.
settings.register_profile(
    "grading",
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    derandomize=bool(os.environ.get("CI")),
)
settings.load_profile("grading")
# Graders use tiny tensors: one thread avoids thread contention and keeps timings stable.
torch.set_num_threads(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--impl",
        default="practice",
        help="what to grade: 'practice' (your stubs, the default), 'solutions' (the reference "
        "answers) or a directory holding exNN_<name>.py files",
    )


def impl_dir(config: pytest.Config) -> Path:
    value = config.getoption("--impl")
    if value == "practice":
        return HERE
    if value == "solutions":
        return SOLUTIONS
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        raise pytest.UsageError(f"--impl={value}: no such directory")
    return path


def pytest_report_header(config: pytest.Config) -> str:
    return f"grading: {impl_dir(config)}"


@pytest.fixture(scope="module")
def impl(request: pytest.FixtureRequest):
    """The learner's (or --impl's) module for this grader's challenge."""
    return load_module(impl_dir(request.config) / f"{request.module.CHALLENGE}.py", "impl")


@pytest.fixture(scope="module")
def ref(request: pytest.FixtureRequest):
    """The reference answer for this grader's challenge."""
    return load_module(SOLUTIONS / f"{request.module.CHALLENGE}.py", "ref")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is not None and call.excinfo.errisinstance(_CLEAN):
        # One short line instead of a traceback through the grading machinery.
        challenge = getattr(item.module, "CHALLENGE", item.module.__name__)
        report.longrepr = f"{challenge}: {call.excinfo.value}"
