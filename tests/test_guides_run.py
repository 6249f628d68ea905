"""The guides' Python examples run: every ```python block of a runnable page is executed in
order, in one namespace per page (a page's later blocks use what its earlier ones defined).

Pages whose blocks are fragments of a larger program (they use a ``model`` or a dataset the
reader brings) are listed in FRAGMENTS with the reason; every other page must run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
FRAGMENTS = {
    "batched.md": "serving snippets over the reader's ids and model",
    "bottleneck_adapters.md": "snippets on the reader's transformers model",
    "comparison.md": "side-by-side snippets with PEFT on the reader's base model",
    "distributed.md": "a training script that needs torchrun",
    "dora_loraplus.md": "optimizer snippets on the reader's model",
    "lora.md": "save_pretrained on the reader's transformers model",
    "named_adapters.md": "snippets on the reader's transformers model",
    "prefix_tuning.md": "snippets on the reader's transformers model",
}


def _blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.DOTALL)


RUNNABLE = sorted(p.name for p in DOCS.glob("*.md") if _blocks(p) and p.name not in FRAGMENTS)


def test_every_listed_fragment_page_still_exists_and_the_runnable_set_holds_the_method_guides() -> None:
    assert all((DOCS / name).exists() for name in FRAGMENTS)
    for guide in (
        "vera.md",
        "loha_lokr.md",
        "oft.md",
        "adalora.md",
        "pissa_olora.md",
        "lora_embedding_conv.md",
    ):
        assert guide in RUNNABLE


@pytest.mark.parametrize("name", RUNNABLE)
def test_guide_examples_run(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, object] = {"__name__": f"docs.{name}"}
    for i, block in enumerate(_blocks(DOCS / name)):
        try:
            exec(compile(block, f"docs/{name}[python block {i}]", "exec"), namespace)
        except Exception as error:  # the page and block in the failure, not just a traceback
            raise AssertionError(f"docs/{name} python block {i} failed: {error!r}\n{block}") from error
