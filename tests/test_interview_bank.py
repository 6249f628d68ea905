"""The interview question bank (peft_zoo/exercises/interview/bank/) is sound and is the single
source of the guides' "Interview questions" sections."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from peft_zoo.exercises.interview import bank, guides
from peft_zoo.exercises.interview.questions import TOPICS, ConceptQuestion, split_sentences
from peft_zoo.exercises.manifest import CHALLENGES

ROOT = Path(__file__).resolve().parents[1]


def test_the_bank_validates_and_every_topic_has_questions() -> None:
    assert bank.validate() == []
    counts = {t: len(bank.questions(t)) for t in TOPICS}
    assert all(n >= 10 for n in counts.values()), counts
    assert sum(counts.values()) == len(bank.all_questions()) == len(bank.questions("all"))


def test_every_guide_section_is_what_the_bank_writes() -> None:
    stale = [p.name for p, text in guides.guide_pages(ROOT).items() if p.read_text(encoding="utf-8") != text]
    assert not stale, f"run `peft-zoo build`: {stale} differ from the question bank"


def test_each_bank_question_appears_once_in_its_guide() -> None:
    for q in bank.all_questions():
        text = (ROOT / "docs" / q.guide).read_text(encoding="utf-8")
        assert text.count(f"**{q.prompt}**\n{q.answer.rstrip()}\n") == 1, q.id


def test_a_hand_edited_guide_is_detected_and_rebuilt(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    q = bank.by_id(bank.all_questions()[0].id)
    path = docs / q.guide
    path.write_text(path.read_text().replace(q.answer.splitlines()[0], "an edit made in the guide"))
    assert guides.sync_guides(docs, write=False) == [q.guide]
    assert guides.sync_guides(docs, write=True) == [q.guide]
    assert guides.sync_guides(docs, write=False) == []
    assert path.read_text() == (ROOT / "docs" / q.guide).read_text()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("begin lora ", "begin nosuch "), "names no bank module"),
        (lambda t: t.replace("<!-- interview-questions:end -->", "", 1), "marked sections"),
        (lambda t: t.replace("begin lora ", "begin vera "), "belongs to vera.md"),
    ],
)
def test_broken_markers_are_refused_and_nothing_is_written(tmp_path: Path, edit, message: str) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    broken = edit((docs / "lora.md").read_text())
    (docs / "lora.md").write_text(broken)
    before = {p.name: p.read_text() for p in docs.glob("*.md")}
    with pytest.raises(guides.GuideSyncError, match=message):
        guides.sync_guides(docs, write=True)
    assert {p.name: p.read_text() for p in docs.glob("*.md")} == before


def test_lookups_refuse_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown topic 'maths'"):
        bank.questions("maths")
    with pytest.raises(KeyError, match=r"no question 'lora\.nope'"):
        bank.by_id("lora.nope")
    with pytest.raises(KeyError, match="no challenge 99"):
        bank.for_challenge(99)


def test_every_challenge_has_related_questions() -> None:
    for ch in CHALLENGES:
        related = bank.for_challenge(ch.number)
        assert related and all(isinstance(q, ConceptQuestion) for q in related), ch.name
    assert any(1 in q.challenges for q in bank.for_challenge(1))


def test_checklists_are_the_answers_sentences_unless_given() -> None:
    q = ConceptQuestion(
        "x.y", "lora", "lora.md", "Q?", "First point, e.g. this. Second: $r$ = 8.\nThird one."
    )
    assert q.checklist() == ("First point, e.g. this.", "Second: $r$ = 8.", "Third one.")
    assert ConceptQuestion("x.y", "lora", "lora.md", "Q?", "A. B.", points=("only",)).checklist() == ("only",)
    for question in bank.all_questions():
        joined = " ".join(split_sentences(question.answer))
        assert joined == " ".join(question.answer.split()), question.id


def test_every_question_has_two_to_five_short_distinct_key_points() -> None:
    for q in bank.all_questions():
        assert 2 <= len(q.points) <= 5, q.id
        assert q.checklist() == q.points, q.id
        assert len(set(q.points)) == len(q.points), q.id
        for point in q.points:
            assert point.strip() == point and point and len(point) <= 120, (q.id, point)
            assert not point.endswith("."), (q.id, point)


def test_validate_names_bad_key_points(monkeypatch: pytest.MonkeyPatch) -> None:
    good = bank.all_questions()[0]
    bad = (
        ConceptQuestion("lora.one", "lora", "lora.md", "Q?", "A.", points=("only one",)),
        ConceptQuestion("lora.rep", "lora", "lora.md", "Q?", "A.", points=("same", "same")),
        ConceptQuestion("lora.long", "lora", "lora.md", "Q?", "A.", points=("x" * 121, "ok")),
        ConceptQuestion("lora.empty", "lora", "lora.md", "Q?", "A.", points=(" ", "ok")),
    )
    monkeypatch.setattr(bank, "SECTIONS", {"lora": ("lora.md", (good, *bad))})
    problems = bank.validate()
    assert [p.split(":")[1].strip() for p in problems] == ["lora.one", "lora.rep", "lora.long", "lora.empty"]
    assert "1 key points (want 2-5)" in problems[0] and "repeated key point" in problems[1]


def test_a_root_without_the_guides_has_nothing_to_write(tmp_path: Path) -> None:
    assert guides.guide_pages(tmp_path) == {}
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "vera.md", tmp_path / "docs" / "vera.md")
    assert list(guides.guide_pages(tmp_path)) == [tmp_path / "docs" / "vera.md"]
