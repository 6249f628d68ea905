"""The notebooks run top to bottom and are committed with their outputs.

Every notebook is re-executed in a fresh kernel (``notebooks/run.py``, nbclient) and must not
raise; the committed copy must carry the outputs of every code cell, at least one figure, no
error output, and end with interview questions and answers.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = (
    "01_lora_from_scratch",
    "02_adapter_zoo",
    "03_real_models_and_peft",
    "04_batched_multi_adapter",
    "05_qlora_nf4",
    "06_shared_weights_lora",
    "07_cost_model",
    "08_leaderboard",
    "09_bottleneck_adapters",
)


def _runner():
    spec = importlib.util.spec_from_file_location("notebook_runner", ROOT / "notebooks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _problems(nb) -> list[str]:
    """What makes an executed notebook incomplete: unrun cells, errors, no figure, no Q&A."""
    problems = []
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    unrun = [i for i, c in enumerate(code) if c.get("execution_count") is None]
    if not code or unrun:
        problems.append(f"code cells without outputs (never run): {unrun[:5] or 'no code cells'}")
    errors = [o.get("ename") for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    if errors:
        problems.append(f"error outputs: {errors}")
    figures = sum("image/png" in o.get("data", {}) for c in code for o in c.get("outputs", []))
    if figures == 0:
        problems.append("no figure (image/png output)")
    markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
    qa = [i for i, text in enumerate(markdown) if text.lstrip().startswith("## Interview questions")]
    if not qa:
        problems.append("no '## Interview questions' section")
    elif sum(text.count("?") for text in markdown[qa[-1] :]) < 3:
        problems.append("the interview section has fewer than 3 questions")
    return problems


def test_the_notebooks_are_the_nine_the_course_names() -> None:
    found = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert found == list(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_carries_its_outputs(name: str) -> None:
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    assert not _problems(nb), f"{name}: {_problems(nb)}; run `python notebooks/run.py {name[:2]}`"


def test_the_output_check_rejects_a_notebook_without_outputs() -> None:
    nb = nbformat.read(ROOT / "notebooks" / f"{NOTEBOOKS[0]}.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    problems = _problems(nb)
    assert any("never run" in p for p in problems) and any("no figure" in p for p in problems)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes_top_to_bottom(name: str) -> None:
    start = time.perf_counter()
    nb = _runner().execute(ROOT / "notebooks" / f"{name}.ipynb")  # raises at the first failing cell
    seconds = time.perf_counter() - start
    assert not _problems(nb), f"{name} ran but: {_problems(nb)}"
    print(f"{name}: executed in {seconds:.1f} s")
