"""The interview's timed coding question (peft_zoo/exercises/interview/coding.py): the variants'
rules on the syntax tree, task ids, the seeded choice, the work file, and grading for real on
a temporary copy of challenge 01 (its grader takes about a second)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from runner_helpers import CH1, ROOT, make_root

from peft_zoo.exercises import builder
from peft_zoo.exercises.interview import coding
from peft_zoo.exercises.interview.questions import TOPICS
from peft_zoo.exercises.manifest import BY_NUMBER, CHALLENGES, TRACK
from peft_zoo.exercises.runner.paths import Paths

LOOPY = """
class Layer:
    def __init__(self, n):
        self.w = [i for i in range(n)]  # set-up: allowed
    def forward(self, x):
        total = 0
        for v in self.w:
            total += v
        return [t for t in x]
"""

MATMULS = """
import torch
import torch.nn.functional as F
def f(x, a, b):
    return x @ a + torch.matmul(x, b) + F.linear(x, a) + x.mm(b)
"""


def einsum_answer() -> str:
    """Challenge 01's reference answer with both products written as einsum."""
    text = builder.answer_text(CH1)
    text = text.replace(
        "F.linear(self.lora_dropout(x), self.lora_A)",
        'torch.einsum("...i,ri->...r", self.lora_dropout(x), self.lora_A)',
    )
    text = text.replace("F.linear(h, self.lora_B)", 'torch.einsum("...r,or->...o", h, self.lora_B)')
    assert "F.linear" not in text.split("def forward")[1]
    return text


def test_no_loops_flags_loops_and_comprehensions_outside_setup() -> None:
    problems = coding.variant_problems(LOOPY, "no_loops")
    assert len(problems) == 2
    assert all("forward()" in p for p in problems)
    assert coding.variant_problems(LOOPY, "plain") == []


def test_einsum_flags_every_product_form_and_requires_einsum() -> None:
    problems = coding.variant_problems(MATMULS, "einsum")
    assert sorted(p.split(": ", 1)[-1] for p in problems) == [
        "linear() in f()",
        "matmul() in f()",
        "mm() in f()",
        "no torch.einsum call at all",
        "the @ operator in f()",
    ]
    assert coding.variant_problems(einsum_answer(), "einsum") == []


def test_unknown_variant_is_refused() -> None:
    with pytest.raises(coding.CodingTaskError, match="unknown variant"):
        coding.variant_problems("x = 1", "fast")


@pytest.mark.parametrize("number", sorted(n for n, v in coding.EXTRA_VARIANTS.items() if "no_loops" in v))
def test_reference_answers_offered_no_loops_keep_the_rule(number: int) -> None:
    assert coding.variant_problems(builder.answer_text(BY_NUMBER[number]), "no_loops") == []


def test_every_challenge_has_a_topic_and_offered_variants_exist() -> None:
    assert sorted(coding.TOPIC_OF) == [ch.number for ch in CHALLENGES]
    assert set(coding.TOPIC_OF.values()) == set(TOPICS)
    for number, variants in coding.EXTRA_VARIANTS.items():
        for variant in variants:
            assert coding.CodingTask(number, variant, 10.0).variant == variant


@given(number=st.sampled_from(sorted(coding.TOPIC_OF)), pick=st.integers(0, 5))
@settings(deadline=None, max_examples=40)
def test_task_ids_round_trip(number: int, pick: int) -> None:
    variants = ("plain", *coding.EXTRA_VARIANTS.get(number, ()))
    task = coding.task_from_id(f"coding:{number}:{variants[pick % len(variants)]}")
    assert coding.task_from_id(task.id) == task
    assert task.minutes > 0 and task.topic in TOPICS


@pytest.mark.parametrize(
    "bad", ["coding:1", "coding:x:plain", "coding:99:plain", "coding:2:einsum", "quiz:1:plain", ""]
)
def test_bad_task_ids_are_refused(bad: str) -> None:
    with pytest.raises(coding.CodingTaskError):
        coding.task_from_id(bad)


def test_a_task_refuses_a_bool_or_string_number() -> None:
    with pytest.raises(coding.CodingTaskError, match="int"):
        coding.CodingTask(True, "plain", 10.0)  # type: ignore[arg-type]
    with pytest.raises(coding.CodingTaskError, match="int"):
        coding.CodingTask("1", "plain", 10.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("topic", [*TOPICS, "all"])
def test_choice_is_seeded_fits_the_budget_and_the_topic(topic: str) -> None:
    tasks = [coding.choose_task(random.Random(seed), topic, 20.0) for seed in range(30)]
    assert tasks == [coding.choose_task(random.Random(seed), topic, 20.0) for seed in range(30)]
    assert all(t is not None and t.minutes <= 20.0 and topic in ("all", t.topic) for t in tasks)
    assert coding.choose_task(random.Random(0), topic, 5.0) is None


def test_prepare_writes_the_stub_once_and_never_overwrites(tmp_path: Path, monkeypatch) -> None:
    paths = Paths(make_root(tmp_path, monkeypatch))
    task = coding.CodingTask(1, "plain", 10.0)
    path = coding.prepare(task, paths)
    assert path == paths.practice / coding.WORK_DIR / f"{CH1.stem}.py"
    assert path.read_text() == builder.stub_text(CH1)
    path.write_text("# my work in progress\n")
    assert coding.prepare(task, paths).read_text() == "# my work in progress\n"
    assert (paths.practice / f"{CH1.stem}.py").read_text() == builder.stub_text(CH1)  # practice untouched


def test_grading_for_real_right_wrong_and_rule_broken(tmp_path: Path, monkeypatch) -> None:
    paths = Paths(make_root(tmp_path, monkeypatch))
    plain, einsum = coding.CodingTask(1, "plain", 10.0), coding.CodingTask(1, "einsum", 10.0)
    path = coding.prepare(plain, paths)
    untouched = coding.grade_task(plain, paths, timeout=300)
    assert not untouched.passed and "not implemented" in untouched.report
    path.write_text(builder.answer_text(CH1))
    assert coding.grade_task(plain, paths, timeout=300).passed
    broken = coding.grade_task(einsum, paths, timeout=300)
    assert not broken.passed and "einsum rule is broken" in broken.report and "linear()" in broken.report
    path.write_text(einsum_answer())
    assert coding.grade_task(einsum, paths, timeout=300).passed
    path.write_text(einsum_answer().replace("self.scale * ", ""))
    wrong = coding.grade_task(einsum, paths, timeout=300)
    assert not wrong.passed and wrong.report


def test_an_unparsable_work_file_fails_with_its_line(tmp_path: Path, monkeypatch) -> None:
    paths = Paths(make_root(tmp_path, monkeypatch))
    task = coding.CodingTask(1, "no_loops", 10.0)
    coding.prepare(task, paths).write_text("def forward(:\n")
    result = coding.grade_task(task, paths, timeout=60)
    assert not result.passed and "does not parse: line 1" in result.report


def test_the_work_folder_is_ignored_by_git() -> None:
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert f"practice/*/{coding.WORK_DIR}/" in ignored, TRACK


def test_every_interview_module_imports_on_its_own() -> None:
    """No import cycle through the runner: each module loads first in a fresh interpreter."""
    import subprocess
    import sys

    names = [
        f"peft_zoo.exercises.interview.{p.stem}" for p in (ROOT / "peft_zoo/exercises/interview").glob("*.py")
    ]
    names += ["peft_zoo.exercises.runner.commands", "peft_zoo.exercises.runner.interview_cmd"]
    for name in names:
        run = subprocess.run(
            [sys.executable, "-c", f"import {name}"], capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0, f"{name}: {run.stderr[-800:]}"
