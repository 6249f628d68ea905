"""Lint and format checks run inside the suite, so the README's one test command covers style too."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "args", [["check", "--no-cache"], ["format", "--check", "--no-cache"]], ids=["check", "format"]
)
def test_ruff_is_clean(args: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", *args, str(ROOT)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_is_clean() -> None:
    """``mypy`` with the settings in pyproject.toml ([tool.mypy]: the whole package,
    check_untyped_defs, every ``type: ignore`` naming its error code)."""
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", "/dev/null"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def test_every_type_ignore_says_why() -> None:
    """A silenced error names its code (mypy checks that) and the reason, in a comment after it."""
    bare = []
    for path in sorted((ROOT / "peft_zoo").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "type: ignore" in line:
                after = line.split("type: ignore", 1)[1]
                reason = after.split("]", 1)[1] if "]" in after else ""
                if "#" not in reason:
                    bare.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not bare, "type: ignore without a reason:\n" + "\n".join(bare)
