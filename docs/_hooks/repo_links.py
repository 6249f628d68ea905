"""mkdocs hook: links from a page to repository files outside ``docs/`` (a challenge stub, a
solution, a notebook) work both on GitHub and in the built site, and a broken one fails.

A page writes ``[solution](../solutions/13_lora_adapters/ex01_lora_linear.py)``: a path relative
to the page, as a repository browser resolves it. At build time this hook checks that the file
exists inside the repository (the build stops with an error naming the page and the link if
not), adds it to the site as a static file under ``repo/``, and points the link there, so
mkdocs's own link validation sees a file it knows. A linked Markdown file (``README.md``) is
published as ``README.md.txt``: raw text, not a second documentation page. A linked notebook
(``../notebooks/01_lora_from_scratch.ipynb``) lands on its rendered page
(``notebooks/01_lora_from_scratch.md``, made by ``notebooks.py``) instead of the raw file.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

# ](target) or ](target#anchor), where target climbs out of docs/ with ../
LINK = re.compile(r"\]\((?P<target>\.\./[^)\s#]+)(?P<anchor>#[^)\s]*)?\)")


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    # Normalise without resolving symlinks: a checkout may link parts of the tree in.
    docs = Path(os.path.normpath(os.path.abspath(config["docs_dir"])))
    repo = docs.parent
    # from src_uri, not abs_src_path: a generated page (a rendered notebook) has no source file
    page_dir = Path(os.path.normpath(docs / posixpath.dirname(page.file.src_uri)))

    def rewrite(match: re.Match[str]) -> str:
        target = Path(os.path.normpath(page_dir / match["target"]))
        if target.is_relative_to(docs):
            return match.group(0)  # a page inside docs/: mkdocs validates it
        if not target.is_relative_to(repo):
            raise PluginError(f"{page.file.src_uri}: link {match['target']!r} leaves the repository")
        rel = target.relative_to(repo).as_posix()
        if not target.is_file():
            raise PluginError(
                f"{page.file.src_uri}: link {match['target']!r} points to {rel}, which does not exist"
            )
        rendered = rel.removesuffix(".ipynb") + ".md"
        if target.suffix == ".ipynb" and files.get_file_from_path(rendered) is not None:
            src_uri = rendered  # the notebook's page, not a download
        else:
            src_uri = f"repo/{rel}" + (".txt" if target.suffix == ".md" else "")
        if files.get_file_from_path(src_uri) is None:
            files.append(File.generated(config, src_uri, abs_src_path=str(target)))
        link = posixpath.relpath(src_uri, posixpath.dirname(page.file.src_uri) or ".")
        return f"]({link}{match['anchor'] or ''})"

    return LINK.sub(rewrite, markdown)
