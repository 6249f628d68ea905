"""Execute the notebooks top to bottom and save them with their outputs.

    python notebooks/run.py                      # every notebook, in order
    python notebooks/run.py 01 05_qlora_nf4      # some of them (number or name)
    python notebooks/run.py --check              # execute copies, save nothing, fail on any error

Each notebook runs in a fresh kernel whose working directory is ``notebooks/``; the time it
took is printed. The test suite (``tests/test_notebooks.py``) uses :func:`execute` the same way
and also checks that every committed notebook carries its outputs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CELL_TIMEOUT = 600  # seconds for one cell


def notebooks(selection: list[str] | None = None) -> list[Path]:
    """The notebooks in ``notebooks/`` (``NN_name.ipynb``), optionally those whose name starts
    with one of ``selection``. Raises ``SystemExit`` naming a selection that matches nothing."""
    found = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    if not selection:
        return found
    chosen = []
    for key in selection:
        hits = [p for p in found if p.stem.startswith(key)]
        if not hits:
            raise SystemExit(f"no notebook matches {key!r}; have {[p.stem for p in found]}")
        chosen += [p for p in hits if p not in chosen]
    return chosen


def execute(path: Path, *, timeout: int = CELL_TIMEOUT):  # -> nbformat.NotebookNode
    """Run ``path`` in a fresh kernel (cwd ``notebooks/``) and return the executed notebook.
    Raises ``nbclient.exceptions.CellExecutionError`` at the first failing cell."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}
    )
    client.execute()
    return nb


def main(argv: list[str] | None = None) -> int:
    import nbformat

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help="notebook numbers or names (default: all)")
    parser.add_argument("--check", action="store_true", help="execute without saving")
    args = parser.parse_args(argv)
    for path in notebooks(args.names):
        start = time.perf_counter()
        nb = execute(path)
        seconds = time.perf_counter() - start
        if not args.check:
            nbformat.write(nb, path)
        print(f"{path.name}: {seconds:.1f} s{'' if args.check else ', saved'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
