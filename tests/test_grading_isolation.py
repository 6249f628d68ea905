"""Plain `pytest practice/13_lora_adapters` on a copied tree: one broken learner file fails
only its own challenge (exit, segfault, abort), shortcuts are refused for every challenge,
and the output is short enough to read."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from peft_zoo.exercises import builder
from peft_zoo.exercises.grading import load_module
from peft_zoo.exercises.manifest import BY_NUMBER, CHALLENGES, TRACK
from peft_zoo.exercises.mutation import planted_bugs
from peft_zoo.exercises.originality import ShortcutError, check_own_work
from peft_zoo.exercises.summary import GradingSummary, failure_message

ROOT = Path(__file__).resolve().parents[1]
CH1, CH2 = BY_NUMBER[1], BY_NUMBER[2]
ANSWER1 = builder.answer_text(CH1)
FORWARD_RETURN = "return self.base(x) + self.scale * F.linear(h, self.lora_B)"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A project root with the committed conftest and graders, untouched stubs, and the answers."""
    practice, solutions = tmp_path / "practice" / TRACK, tmp_path / "solutions" / TRACK
    practice.mkdir(parents=True)
    solutions.mkdir(parents=True)
    shutil.copy(ROOT / "practice" / TRACK / "conftest.py", practice / "conftest.py")
    for ch in CHALLENGES:
        shutil.copy(ROOT / "practice" / TRACK / f"test_{ch.stem}.py", practice / f"test_{ch.stem}.py")
        (practice / f"{ch.stem}.py").write_text(builder.stub_text(ch))
        (solutions / f"{ch.stem}.py").write_text(builder.answer_text(ch))
    return tmp_path


def pytest_in(root: Path, *args: str, timeout: float = 600) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *args, "-p", "no:cacheprovider", "-p", "no:randomly"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "100"},
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


def write(root: Path, stem: str, text: str) -> Path:
    path = root / "practice" / TRACK / f"{stem}.py"
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- isolation

DEATHS = {
    "os._exit(0) at import": (ANSWER1 + "\nimport os\n\nos._exit(0)\n", "exited with status 0"),
    "os._exit(0) in forward": (
        ANSWER1.replace(FORWARD_RETURN, "import os\n\n        os._exit(0)\n        " + FORWARD_RETURN),
        "exited with status 0",
    ),
    "segfault at import": (ANSWER1 + "\nimport ctypes\n\nctypes.string_at(0)\n", "SIGSEGV"),
    "os.abort() in forward": (
        ANSWER1.replace(FORWARD_RETURN, "import os\n\n        os.abort()\n        " + FORWARD_RETURN),
        "SIGABRT",
    ),
}


@pytest.mark.parametrize("death", list(DEATHS))
def test_a_dying_learner_file_fails_only_its_challenge(tree: Path, death: str) -> None:
    text, words = DEATHS[death]
    assert text != ANSWER1
    write(tree, CH1.stem, text)
    write(tree, CH2.stem, builder.answer_text(CH2))  # a finished challenge after the broken one
    code, out = pytest_in(tree, f"practice/{TRACK}")
    assert code == 1, out
    assert "the grading process died" in out and words in out, out
    status = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and line.split()}
    assert "FAILED" in status["01"] and "passed" in status["02"], out
    for ch in CHALLENGES[2:]:  # every other challenge was graded too
        assert "not started" in status[f"{ch.number:02d}"], out


def test_the_mutation_driver_style_run_reports_a_crash_as_a_failure(tree: Path) -> None:
    """The mutation driver runs `pytest.main([grader, --impl=DIR, -x, -q])` in its own process and
    reads exit code 1 as "killed": a crash must neither end that process nor read as a pass."""
    impl = tree / "impl"
    impl.mkdir()
    (impl / f"{CH1.stem}.py").write_text(DEATHS["segfault at import"][0])
    grader = tree / "practice" / TRACK / f"test_{CH1.stem}.py"
    script = textwrap.dedent(
        f"""
        import contextlib, io, pytest
        with contextlib.redirect_stdout(io.StringIO()):
            code = pytest.main([{str(grader)!r}, "--impl={impl}", "-x", "-q", "-p", "no:cacheprovider"])
        print("exit", int(code))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tree, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0 and "exit 1" in proc.stdout, proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- output


def test_untouched_stubs_print_one_line_per_challenge_and_where_to_start(tree: Path) -> None:
    code, out = pytest_in(tree, f"practice/{TRACK}")
    lines = out.rstrip("\n").splitlines()
    print(f"plain pytest on untouched stubs: {len(lines)} lines")
    assert code == 1
    assert len(lines) <= 40, out
    assert sum("not started" in line for line in lines) == len(CHALLENGES)
    assert "@seed" not in out and "Traceback" not in out and "FAILED practice" not in out
    closing = [line for line in lines if line.startswith("Start here")]
    assert closing and "challenge 01" in closing[0] and f"{CH1.stem}.py" in closing[0]
    assert "peft-zoo" in closing[0]


def test_a_wrong_answer_shows_the_teaching_block_without_tracebacks(tree: Path) -> None:
    write(tree, CH1.stem, ANSWER1.replace(FORWARD_RETURN, FORWARD_RETURN.replace("self.scale * ", "")))
    grader = f"practice/{TRACK}/test_{CH1.stem}.py"
    code, out = pytest_in(tree, grader)
    assert code == 1
    for word in ("drawn:", "expected:", "got:", "likely:"):
        assert word in out, out
    for noise in ("Traceback", "peft_zoo/testing.py", "assert False", "+  where", "@seed", "\nE   "):
        assert noise not in out, out
    code, verbose = pytest_in(tree, grader, "-v")
    assert code == 1 and "AssertionError" in verbose and "test_ex01_lora_linear.py:" in verbose
    code, full = pytest_in(tree, grader, "--full")
    assert code == 1 and "AssertionError" in full


def test_a_plain_assert_with_a_teaching_message_survives_isolation(tree: Path) -> None:
    # Graders also write `assert ok, explain(...)`; pytest's assertion rewriting asks the
    # terminal reporter for its writer, so the isolated child must keep one.
    ch = BY_NUMBER[12]
    answer = builder.answer_text(ch)
    bug = next(b for b in planted_bugs(ROOT) if b.stem == ch.stem and "merged flag" in b.description)
    write(tree, ch.stem, answer.replace(bug.old, bug.new))
    code, out = pytest_in(tree, f"practice/{TRACK}/test_{ch.stem}.py", "-k", "unmerge_restores")
    assert code == 1, out
    assert "layer.merged is wrong" in out and "likely:" in out, out
    assert "died" not in out and "an assertion failed" not in out, out


def _report(nodeid: str, text: str | None) -> pytest.TestReport:
    return pytest.TestReport(
        nodeid=nodeid,
        location=(nodeid.split("::")[0], 1, nodeid),
        keywords={},
        outcome="passed" if text is None else "failed",
        longrepr=text,
        when="call",
    )


def test_the_most_specific_failure_of_a_challenge_comes_first(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("PEFT_ZOO_RUNNER", raising=False)
    config = type("Config", (), {})()
    summary = GradingSummary(config, practice=tmp_path, impl=tmp_path, compact=True)  # type: ignore[arg-type]
    grader = f"practice/{TRACK}/test_{CH1.stem}.py"
    generic = "forward output differs\n  drawn:    in=1\n  expected: 1.0\n  got:      2.0"
    specific = generic + "\n  likely:   your result equals what this classic bug produces: scale missing"
    summary.pytest_runtest_logreport(_report(f"{grader}::test_shapes", None))
    summary.pytest_runtest_logreport(_report(f"{grader}::test_generic", generic))
    summary.pytest_runtest_logreport(_report(f"{grader}::test_specific", specific))
    lines = summary.lines()
    header = next(i for i, line in enumerate(lines) if line.startswith("---- challenge 01"))
    assert lines[header].endswith("test_specific") and "scale missing" in "\n".join(
        lines[header : header + 6]
    )
    assert any("1 more failing: test_generic" in line for line in lines)
    assert any("01 LoRALinear" in line and "FAILED (2 of 3 tests)" in line for line in lines)


def test_failure_messages_drop_the_assertion_rewrite_explanation() -> None:
    err = AssertionError("what\n  drawn:    x=1\n  likely:   bug\nassert 3 == 4\n +  where 3 = f()")
    assert failure_message(err) == "what\n  drawn:    x=1\n  likely:   bug"


# ----------------------------------------------------------------------------- shortcuts

STEM = {n: BY_NUMBER[n].stem for n in BY_NUMBER}
SHORTCUTS = [
    (1, "from peft_zoo import LoRALinear\n", "imports LoRALinear from peft_zoo"),
    (1, "from peft_zoo.lora import LoRALinear as Mine\nLoRALinear = Mine\n", "imports LoRALinear"),
    (1, "import peft_zoo\n\n\nclass LoRALinear(peft_zoo.LoRALinear):\n    pass\n", "peft_zoo.LoRALinear"),
    (1, "import peft_zoo as pz\n\nLoRALinear = pz.LoRALinear\n", "pz.LoRALinear"),
    (
        1,
        "import importlib\n\nLoRALinear = importlib.import_module('peft_zoo').LoRALinear\n",
        "comes from peft_zoo",
    ),
    (
        4,
        "import peft_zoo\n\n\ndef inject_lora(*a, **k):\n    return peft_zoo.inject_lora(*a, **k)\n",
        "peft_zoo.inject_lora",
    ),
    (
        4,
        "import peft_zoo.injection.inject\n\ninject_lora = peft_zoo.injection.inject.inject_lora\n",
        "peft_zoo.injection.inject.inject_lora",
    ),
    (
        12,
        "import importlib\n\n_ref = importlib.import_module('solutions.13_lora_adapters.ex12_merge_unmerge')\n"
        "merge_lora, unmerge_lora = _ref.merge_lora, _ref.unmerge_lora\n",
        "reference answers",
    ),
    (20, "from peft_zoo import *\n", "imports * from peft_zoo"),
    (20, "import solutions\n\nDoRALinear = None\n", "imports solutions"),
    (
        17,
        "import sys\n\nVersionedLRUCache = sys.modules['_peft_zoo_graded_ref_ex17_embedding_cache'].X\n",
        "reference answers",
    ),
]


@pytest.mark.parametrize(
    ("number", "source", "words"), SHORTCUTS, ids=[f"ex{n:02d}-{w}" for n, _, w in SHORTCUTS]
)
def test_shortcuts_are_refused_with_a_message_that_says_so(tmp_path: Path, number, source, words) -> None:
    ch = BY_NUMBER[number]
    path = tmp_path / f"{ch.stem}.py"
    path.write_text(source)
    try:
        module = load_module(path, "impl")
    except BaseException:  # a file that fails at import is reported by load_module; check statically
        module = type(sys)("_never_imported")
    with pytest.raises(ShortcutError) as err:
        check_own_work(module, path, ch.objects, solutions=ROOT / "solutions" / TRACK)
    assert "shortcut" in str(err.value) and words in str(err.value)


def test_a_subclass_of_the_reference_answer_is_refused(tmp_path: Path) -> None:
    ref = load_module(ROOT / "solutions" / TRACK / f"{CH2.stem}.py", "ref")
    path = tmp_path / f"{CH2.stem}.py"
    path.write_text("import torch\n")
    module = load_module(path, "impl")
    module.BottleneckAdapter = type(
        "BottleneckAdapter", (ref.BottleneckAdapter,), {"__module__": module.__name__}
    )
    with pytest.raises(ShortcutError, match="subclasses _peft_zoo_graded_ref"):
        check_own_work(module, path, CH2.objects)


@pytest.mark.parametrize("kind", ["stub", "answer"])
def test_reference_answers_and_stubs_are_not_shortcuts(tmp_path: Path, kind: str) -> None:
    for ch in CHALLENGES:
        path = tmp_path / f"{ch.stem}.py"
        path.write_text(builder.stub_text(ch) if kind == "stub" else builder.answer_text(ch))
        module = load_module(path, f"{kind}_check")
        check_own_work(module, path, ch.objects, solutions=ROOT / "solutions" / TRACK)


def test_the_grader_refuses_a_re_exported_answer(tree: Path) -> None:
    write(tree, CH1.stem, "from peft_zoo import LoRALinear  # noqa: F401\n")
    code, out = pytest_in(tree, f"practice/{TRACK}/test_{CH1.stem}.py")
    assert code == 1 and "shortcut refused" in out and "imports LoRALinear from peft_zoo" in out, out
    assert "passed" not in out.split("01 LoRALinear", 1)[1].splitlines()[0]
