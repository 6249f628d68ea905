"""Grader plumbing for `pytest practice/13_lora_adapters [--impl=practice|solutions|DIR]`.

Each grader module names its challenge in ``CHALLENGE`` and receives two fixtures:
``impl`` (the module under test, from ``--impl``) and ``ref`` (the reference answer from
``solutions/``). A file that cannot be imported fails only its own challenge; each grader
module runs in a forked child, so a file that exits, segfaults or aborts fails only its own
challenge too (``--no-isolate`` runs them in this process). ``impl`` refuses an answer that
re-exports, wraps or subclasses peft_zoo's own implementation or the reference answer.
The output is a short per-challenge summary; ``-v`` or ``--full`` keeps pytest's details.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import Phase, settings

from peft_zoo.exercises import isolation, summary
from peft_zoo.exercises.grading import LearnerLoadError, LearnerTimeout, NotImplementedYet, load_module
from peft_zoo.exercises.originality import check_own_work

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
    parser.addoption(
        "--full",
        action="store_true",
        default=False,
        help="pytest's detailed output (tracebacks, every failure) instead of the short summary",
    )
    isolation.add_option(parser)


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


def _is_grader(item: pytest.Item) -> bool:
    module = getattr(item, "module", None)
    return hasattr(module, "CHALLENGE") and Path(str(item.path)).resolve().parent == HERE


def _describe(item: pytest.Item) -> tuple[str, str | None]:
    challenge = item.module.CHALLENGE  # type: ignore[attr-defined]
    return challenge, str(impl_dir(item.config) / f"{challenge}.py")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    compact = summary.compact_wanted(config, HERE)
    if compact:
        summary.make_compact(config)
    plugin = summary.GradingSummary(config, practice=HERE, impl=impl_dir(config), compact=compact)
    config.pluginmanager.register(plugin, "peft_zoo_grading_summary")
    if isolation.forking_available(config):
        config.pluginmanager.register(isolation.Isolator(config, _is_grader, _describe), "peft_zoo_isolator")


@pytest.fixture(scope="module")
def impl(request: pytest.FixtureRequest):
    """The learner's (or --impl's) module for this grader's challenge; refused when the
    challenge's own objects come from peft_zoo or the reference answers."""
    stem = request.module.CHALLENGE
    path = impl_dir(request.config) / f"{stem}.py"
    module = load_module(path, "impl")
    challenge = summary.challenge_of(stem)
    if challenge is not None:
        check_own_work(module, path, challenge.objects, solutions=SOLUTIONS)
    return module


@pytest.fixture(scope="module")
def ref(request: pytest.FixtureRequest):
    """The reference answer for this grader's challenge."""
    return load_module(SOLUTIONS / f"{request.module.CHALLENGE}.py", "ref")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is None or not report.failed:
        return
    challenge = getattr(item.module, "CHALLENGE", item.module.__name__)
    if call.excinfo.errisinstance(_CLEAN):
        # One short line instead of a traceback through the grading machinery.
        report.longrepr = f"{challenge}: {call.excinfo.value}"
        summary.attach_message(report, report.longrepr)
    else:
        learner = str(impl_dir(item.config) / f"{challenge}.py")
        summary.attach_message(report, summary.failure_message(call.excinfo.value, learner))
