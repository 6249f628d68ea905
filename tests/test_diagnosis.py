"""Feedback that names the right bug.

``diagnose`` never names a bug that is not the cause: a candidate equal to the right answer is
ignored, coinciding candidates are told apart on a larger example (or all listed), and a match
that holds only on a degenerate example is not claimed. End to end (in
``tests/test_exercises.py::test_every_planted_bug_is_rejected_and_named``, one pass with the
kill rate): every planted bug that has a diagnosis is planted into a copy of the answers, its
grader runs, and the "likely:" lines must name that bug and no other.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from peft_zoo.exercises.grading import CLASSIC_BUG, SEVERAL_BUGS, assert_matches, diagnose
from peft_zoo.exercises.manifest import CHALLENGES, TRACK
from peft_zoo.exercises.mutation import PlantedBug, check_diagnosis, planted_bugs

ROOT = Path(__file__).resolve().parents[1]
TOL = {"rtol": 1e-9, "atol": 1e-10}


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ----------------------------------------------------------------------------- diagnose


def test_a_candidate_equal_to_the_right_answer_is_never_named() -> None:
    expected, actual = _t(1.0, 2.0), _t(1.0, 2.0)
    # The learner matches the reference here, so a bug that also gives (1, 2) cannot be the cause.
    assert diagnose(actual, {"harmless here": lambda: _t(1.0, 2.0)}, expected=expected, **TOL) is None
    wrong = _t(3.0, 4.0)
    bugs = {"coincides with the answer": lambda: _t(1.0, 2.0), "the real bug": lambda: _t(3.0, 4.0)}
    assert diagnose(wrong, bugs, expected=expected, **TOL) == CLASSIC_BUG + "the real bug"


def test_coinciding_candidates_are_all_listed_not_the_first() -> None:
    bugs = {"bug a": lambda: _t(5.0), "bug b": lambda: _t(5.0), "bug c": lambda: _t(6.0)}
    hint = diagnose(_t(5.0), bugs, expected=_t(1.0), **TOL)
    assert hint == SEVERAL_BUGS + "bug a; bug b"


def test_a_recheck_on_a_larger_example_tells_coinciding_bugs_apart() -> None:
    bugs = {"input scaled": lambda: _t(5.0), "bias not scaled": lambda: _t(5.0)}

    def recheck():  # on the larger example only "bias not scaled" reproduces the learner's output
        return (
            _t(7.0, 8.0),
            _t(1.0, 1.0),
            {"input scaled": lambda: _t(0.0, 8.0), "bias not scaled": lambda: _t(7.0, 8.0)},
        )

    hint = diagnose(_t(5.0), bugs, expected=_t(1.0), recheck=recheck, **TOL)
    assert hint == CLASSIC_BUG + "bias not scaled"


def test_a_match_only_on_the_degenerate_example_is_not_claimed() -> None:
    def recheck():  # the learner's larger output matches no candidate
        return _t(9.0, 9.0), _t(1.0, 1.0), {"bug": lambda: _t(7.0, 8.0)}

    assert diagnose(_t(5.0), {"bug": lambda: _t(5.0)}, expected=_t(1.0), recheck=recheck, **TOL) is None


def test_a_recheck_that_cannot_run_keeps_the_honest_list() -> None:
    def recheck():
        raise RuntimeError("the learner's code fails on the larger example")

    bugs = {"bug a": lambda: _t(5.0), "bug b": lambda: _t(5.0)}
    assert diagnose(_t(5.0), bugs, expected=_t(1.0), recheck=recheck, **TOL) == SEVERAL_BUGS + "bug a; bug b"


def test_assert_matches_names_bias_not_scaled_although_in_equals_out_equals_one() -> None:
    """The issue's example: IA³ with in = out = 1 and an answer (W0 x) l + b; the input-scale bug
    gives the same numbers there, so only the larger example can tell which one it is."""
    w, b, s = _t(2.0).view(1, 1), _t(0.5), _t(3.0)

    def outputs(w, b, s, x):
        right = (x @ w.T + b) * s
        bias_bug = (x @ w.T) * s + b
        bugs = {
            "the scale is applied to the input": lambda: (x * s) @ w.T + b,
            "the bias is not scaled": lambda: bias_bug,
        }
        return bias_bug, right, bugs

    actual, expected, bugs = outputs(w, b, s, _t(1.5).view(1, 1))
    torch.manual_seed(0)
    big = (
        torch.randn(4, 4, dtype=torch.float64),
        torch.randn(4, dtype=torch.float64),
        _t(1.0, 2.0, 3.0, 4.0),
    )
    x_big = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(AssertionError) as err:
        assert_matches(actual, expected, what="forward", bugs=bugs, recheck=lambda: outputs(*big, x_big))
    assert CLASSIC_BUG + "the bias is not scaled" in str(err.value)
    assert "applied to the input" not in str(err.value)


# ----------------------------------------------------------------------------- PLANTED_BUGS


def _fake_root(tmp_path: Path, entries: str) -> Path:
    grader = tmp_path / "practice" / TRACK / f"test_{CHALLENGES[0].stem}.py"
    grader.parent.mkdir(parents=True)
    grader.write_text(f"PLANTED_BUGS = {entries}\n")
    return tmp_path


def test_planted_bugs_accept_three_and_four_tuples(tmp_path: Path) -> None:
    root = _fake_root(
        tmp_path, "[('a', 'x', 'y'), ('b', 'x', 'z', 'named b'), ('c', 'x', 'w', ('c1', 'c2'))]"
    )
    bugs = planted_bugs(root)
    assert [(b.description, b.diagnosis) for b in bugs] == [
        ("a", None),
        ("b", "named b"),
        ("c", ("c1", "c2")),
    ]


def test_planted_bugs_refuse_other_lengths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3 or 4 items"):
        planted_bugs(_fake_root(tmp_path, "[('a', 'x')]"))


def test_check_diagnosis_refuses_another_bug_or_a_list() -> None:
    bug = PlantedBug("ex01_lora_linear", "d", "o", "n", "the scale is missing")
    right = f"  likely:   {CLASSIC_BUG}the scale is missing\n"
    assert check_diagnosis(bug, right) is None
    assert "another bug" in check_diagnosis(bug, right + f"  likely:   {CLASSIC_BUG}the scale is squared\n")
    assert "another bug" in check_diagnosis(
        bug, right + f"  likely:   {SEVERAL_BUGS}the scale is missing; the scale is squared\n"
    )
    assert "no 'likely:' line" in check_diagnosis(bug, "  likely:   something else\n")
