"""mkdocs hook: the site renders its maths with a local copy of MathJax, so it works offline.

MathJax 3.2.2 comes from the ``django-static-mathjax`` package on PyPI (pinned in the ``docs``
extra; it is plain static files, Django is not needed). Only what a page loads is copied into the
site, under ``javascripts/mathjax/``:

- ``tex-chtml-full.js``: TeX input with every TeX extension built in (so nothing is fetched
  on demand), CommonHTML output, the menu and assistive MathML;
- ``output/chtml/fonts/woff-v2/*.woff``: the fonts CommonHTML draws with, found by MathJax
  relative to the script's own URL.

That is about 1.7 MB instead of the package's 35 MB. ``docs/javascripts/mathjax.js`` (loaded
first) configures MathJax for pymdownx.arithmatex's ``generic`` output. The build stops with an
error naming the package if it is missing.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

PACKAGE = "django-static-mathjax"
SCRIPT = "tex-chtml-full.js"
FONTS = "output/chtml/fonts/woff-v2"
SITE_DIR = "javascripts/mathjax"


def mathjax_root() -> Path:
    """The folder holding MathJax's ``es5`` build (``tex-chtml-full.js``, ``output/``)."""
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise PluginError(
            f"{PACKAGE} is not installed: MathJax is served from it. "
            'Install the docs extra: python -m pip install -c constraints.txt -e ".[docs]"'
        ) from None
    root = Path(str(dist.locate_file("mathjax/static/mathjax/es5")))
    if not (root / SCRIPT).is_file():
        raise PluginError(f"{PACKAGE} has no {SCRIPT} under {root}")
    return root


def on_files(files: Files, config: MkDocsConfig) -> Files:
    root = mathjax_root()
    sources = [root / SCRIPT, *sorted((root / FONTS).glob("*.woff"))]
    for source in sources:
        rel = source.relative_to(root).as_posix()
        files.append(File.generated(config, f"{SITE_DIR}/{rel}", abs_src_path=str(source)))
    return files
