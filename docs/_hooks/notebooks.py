"""mkdocs hook: the executed notebooks in ``notebooks/`` (outside ``docs/``) become site pages.

Each ``notebooks/NN_name.ipynb`` is turned into a Markdown page ``notebooks/NN_name.md`` at build
time, without executing anything: markdown cells as they are (their ``$...$`` maths goes through
the same arithmatex + MathJax path as the guides), code cells as ``python`` blocks, text outputs
as ``text`` blocks titled "Output", and PNG/JPEG/SVG figures as image files next to the page
(``notebooks/NN_name/cell<i>_<j>.png``). The raw notebook is published as
``repo/notebooks/NN_name.ipynb`` and linked from the top of its page for download.

Links inside a notebook's markdown are written relative to ``notebooks/`` (as GitHub resolves
them); they are rewritten relative to the generated page, so ``../docs/lora.md`` becomes a page
link and ``../practice/...`` goes through ``repo_links.py`` like any guide's link.
``repo_links.py`` sends links to ``../notebooks/NN_name.ipynb`` to the rendered page.
"""

from __future__ import annotations

import base64
import os
import posixpath
import re
from pathlib import Path
from typing import Any

import nbformat
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# ](target) for a relative target: not a URL, not an anchor, not an absolute path
MD_LINK = re.compile(r"\]\((?P<target>(?![a-z][a-z0-9+.-]*:|#|/)[^)\s#]+)(?P<anchor>#[^)\s]*)?\)")
IMAGES = {"image/png": ".png", "image/jpeg": ".jpg", "image/svg+xml": ".svg"}


def _fence(text: str, lang: str, title: str = "") -> str:
    """A fenced block longer than any backtick run in ``text``."""
    ticks = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", text)), default=0))
    head = f'{ticks}{lang} title="{title}"' if title else f"{ticks}{lang}"
    return f"{head}\n{text.rstrip()}\n{ticks}"


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _relink(source: str, repo: Path, docs: Path) -> str:
    """Rewrite links relative to ``notebooks/`` into links relative to ``docs/notebooks/``."""

    def fix(match: re.Match[str]) -> str:
        target = Path(os.path.normpath(repo / "notebooks" / match["target"]))
        rel = os.path.relpath(target, docs / "notebooks")
        return f"]({Path(rel).as_posix()}{match['anchor'] or ''})"

    return MD_LINK.sub(fix, source)


def _outputs(cell: Any, index: int, stem: str, figures: dict[str, bytes | str]) -> list[str]:
    """Markdown for one code cell's outputs; figures are added to ``figures`` (name -> data)."""
    parts: list[str] = []
    stream: list[str] = []
    for j, out in enumerate(cell.get("outputs", [])):
        kind = out.get("output_type")
        if kind == "stream":
            stream.append(ANSI.sub("", _text(out.get("text", ""))))
            continue
        if stream:
            parts.append(_fence("".join(stream), "text", "Output"))
            stream = []
        if kind == "error":
            trace = ANSI.sub("", "\n".join(out.get("traceback", [])))
            parts.append(_fence(trace, "text", "Error"))
            continue
        data = out.get("data", {})
        image = next((mime for mime in IMAGES if mime in data), None)
        if image is not None:
            name = f"cell{index}_{j}{IMAGES[image]}"
            raw = _text(data[image])
            figures[name] = raw if image == "image/svg+xml" else base64.b64decode(raw)
            parts.append(f"![Figure: output of code cell {index}]({stem}/{name})")
        elif "text/html" in data:
            parts.append(f'<div class="nb-html">\n{_text(data["text/html"])}\n</div>')
        elif "text/plain" in data:
            parts.append(_fence(_text(data["text/plain"]), "text", "Output"))
    if stream:
        parts.append(_fence("".join(stream), "text", "Output"))
    return parts


def notebook_markdown(path: Path, repo: Path, docs: Path) -> tuple[str, dict[str, bytes | str]]:
    """The page for one notebook file: (markdown text, {figure file name: bytes or SVG text})."""
    nb = nbformat.read(path, as_version=4)
    stem = path.stem
    figures: dict[str, bytes | str] = {}
    blocks: list[str] = []
    for index, cell in enumerate(nb.cells):
        source = _text(cell.source)
        if cell.cell_type == "markdown":
            blocks.append(_relink(source, repo, docs))
        elif cell.cell_type == "code":
            if source.strip():
                blocks.append(_fence(source, "python"))
            blocks.extend(_outputs(cell, index, stem, figures))
    note = (
        f'!!! note "Executed notebook"\n    Rendered from [`notebooks/{path.name}`]'
        f"(../repo/notebooks/{path.name}) (download) with the outputs it was saved with. "
        'Run it yourself: `python -m pip install -c constraints.txt -e ".[notebooks]"`, '
        "then `jupyter lab notebooks/`."
    )
    # after the first heading, so the notebook's title stays the page title
    if blocks and blocks[0].lstrip().startswith("# "):
        head, _, rest = blocks[0].lstrip().partition("\n")
        blocks[0] = f"{head}\n\n{note}\n\n{rest}"
    else:
        blocks.insert(0, note)
    return "\n\n".join(blocks) + "\n", figures


def on_files(files: Files, config: MkDocsConfig) -> Files:
    docs = Path(os.path.normpath(os.path.abspath(config["docs_dir"])))
    repo = docs.parent
    for path in sorted((repo / "notebooks").glob("*.ipynb")):
        markdown, figures = notebook_markdown(path, repo, docs)
        files.append(File.generated(config, f"notebooks/{path.stem}.md", content=markdown))
        for name, data in figures.items():
            src_uri = posixpath.join("notebooks", path.stem, name)
            files.append(File.generated(config, src_uri, content=data))
        raw = f"repo/notebooks/{path.name}"
        if files.get_file_from_path(raw) is None:
            files.append(File.generated(config, raw, abs_src_path=str(path)))
    return files
