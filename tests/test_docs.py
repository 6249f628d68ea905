"""The documentation site builds with ``mkdocs build --strict``, and a broken link fails it.

Each method guide links its challenges (stub and solution) and its notebook; links to
repository files outside ``docs/`` are checked by ``docs/_hooks/repo_links.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("material")

from peft_zoo.exercises.manifest import BY_NUMBER, TRACK
from peft_zoo.exercises.readme import GUIDES

ROOT = Path(__file__).resolve().parents[1]


def build(root: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=root,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_site_builds_strictly_and_copies_linked_repository_files(tmp_path: Path) -> None:
    done = build(ROOT, tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr
    site = tmp_path / "site"
    for page in ("index.html", "challenges/index.html", "lora/index.html", "comparison/index.html"):
        assert (site / page).is_file(), page
    # the challenge index links every stub, grader and solution; the hook copied them into the site
    for ch in BY_NUMBER.values():
        assert (site / "repo" / "solutions" / TRACK / f"{ch.stem}.py").is_file()
    assert "../repo/solutions/" in (site / "challenges" / "index.html").read_text()


def test_every_guide_links_its_challenges_solutions_and_notebooks() -> None:
    for number, (guide, notebook) in GUIDES.items():
        text = (ROOT / "docs" / guide).read_text()
        stem = BY_NUMBER[number].stem
        for link in (
            f"../practice/{TRACK}/{stem}.py",
            f"../solutions/{TRACK}/{stem}.py",
            f"../notebooks/{notebook}.ipynb",
        ):
            assert link in text, f"docs/{guide} must link {link} (challenge {number:02d})"


@pytest.mark.parametrize(
    "link, message",
    [
        ("[gone](../solutions/13_lora_adapters/ex99_missing.py)", "does not exist"),
        ("[gone](no_such_page.md)", "no_such_page.md"),
    ],
    ids=["repository-file", "page"],
)
def test_a_broken_link_fails_the_build(tmp_path: Path, link: str, message: str) -> None:
    """The strict build is a real check: plant one broken link in a copy and it must fail."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    for entry in ROOT.iterdir():  # everything else the pages link to, as it is
        if entry.name not in ("docs", "mkdocs.yml", ".git"):
            (copy / entry.name).symlink_to(entry)
    page = copy / "docs" / "lora.md"
    page.write_text(page.read_text() + f"\n\nSee {link}.\n")
    done = build(copy, tmp_path / "site")
    assert done.returncode != 0 and message in done.stdout + done.stderr
