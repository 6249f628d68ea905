"""The documentation site builds with ``mkdocs build --strict``, and a broken link fails it.

Each method guide links its challenges (stub and solution) and its notebook; links to
repository files outside ``docs/`` are checked by ``docs/_hooks/repo_links.py``. The notebooks
are rendered into pages by ``docs/_hooks/notebooks.py`` and MathJax is copied into the site by
``docs/_hooks/offline_assets.py``, so the built HTML loads nothing from another host (the
browser check of the same is ``tests/test_site_browser.py``).
"""

from __future__ import annotations

import base64
import importlib.util
import os
import re
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
    check_offline_and_notebooks(site)


def check_offline_and_notebooks(site: Path) -> None:
    """No page loads a script, style or font from another host; notebooks are pages."""
    external = re.compile(r"<(?:script|link|img)\b[^>]*(?:src|href)=\"(?:https?:)?//", re.I)
    for page in site.rglob("*.html"):
        found = external.findall(page.read_text())
        assert not found, f"{page.relative_to(site)} loads from another host: {found}"
    mathjax = site / "javascripts" / "mathjax"
    assert (mathjax / "tex-chtml-full.js").is_file()
    assert len(list((mathjax / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))) > 10
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        html = (site / "notebooks" / notebook.stem / "index.html").read_text()
        images = re.findall(r'<img[^>]*src="([^"]+)"', html)
        assert images, f"{notebook.name}: its page shows no figure"
        for src in images:
            assert (site / "notebooks" / notebook.stem / src).resolve().is_file(), src
        assert f"../../repo/notebooks/{notebook.name}" in html  # the download link
        assert (site / "repo" / "notebooks" / notebook.name).is_file()
    # a guide's notebook link lands on the rendered page, not the raw file
    lora = (site / "lora" / "index.html").read_text()
    assert 'href="../notebooks/01_lora_from_scratch/"' in lora
    assert '.ipynb"' not in lora


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


def load_notebook_hook():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("nb_hook", ROOT / "docs/_hooks/notebooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebook_page_keeps_maths_code_outputs_and_figures(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    png = base64.b64encode(b"\x89PNG fake").decode()
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# T\n\n$W_0$ and [guide](../docs/lora.md#init)."),
        nbformat.v4.new_code_cell(
            's = "```"\nprint(s)',
            outputs=[
                nbformat.v4.new_output("stream", name="stdout", text="\x1b[31mred\x1b[0m\n"),
                nbformat.v4.new_output("display_data", data={"image/png": png}),
                nbformat.v4.new_output("error", ename="E", evalue="v", traceback=["Trace"]),
            ],
        ),
    ]
    (tmp_path / "notebooks").mkdir()
    path = tmp_path / "notebooks" / "01_t.ipynb"
    nbformat.write(nb, path)
    text, figures = load_notebook_hook().notebook_markdown(path, tmp_path, tmp_path / "docs")
    assert text.startswith("# T\n") and "$W_0$" in text  # title first, maths for arithmatex
    assert "](../lora.md#init)" in text  # relative to docs/notebooks/, anchor kept
    assert '````python\ns = "```"\nprint(s)\n````' in text  # fence longer than the code's
    assert '```text title="Output"\nred\n```' in text  # ANSI colours stripped
    assert '```text title="Error"\nTrace\n```' in text
    assert figures == {"cell1_1.png": b"\x89PNG fake"}
    assert "](01_t/cell1_1.png)" in text
    assert "](../repo/notebooks/01_t.ipynb)" in text
