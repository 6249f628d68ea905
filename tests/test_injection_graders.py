"""The injection graders (challenges 04, 09, 10) accept every correct way of freezing the rest
of the model, and reject an answer that leaves it trainable (issue 12, section 1).

Each variant is the reference answer with its freezing step rewritten; the grader runs on it
in a subprocess, as a learner's ``pytest practice/13_lora_adapters --impl=DIR`` would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from peft_zoo.exercises.manifest import TRACK

ROOT = Path(__file__).resolve().parents[1]
STEMS = ("ex04_inject_lora", "ex09_inject_ia3", "ex10_inject_lora_recursive")

# The reference answers end with this freezing step.
FREEZE_LAST = "    model.requires_grad_(False)\n    for p in params:\n        p.requires_grad_(True)\n"

# Freeze each parameter that is not an adapter parameter (earlier adapters keep their flags).
PER_PARAMETER = (
    "    for name, p in model.named_parameters():\n"
    '        if name.rsplit(".", 1)[-1] not in ("lora_A", "lora_B", "scale"):\n'
    "            p.requires_grad_(False)\n"
)

# Where each answer has checked everything and not yet built a layer.
BEFORE_BUILDING = {
    "ex04_inject_lora": "    # 2. Replace each Linear through its parent",
    "ex09_inject_ia3": "    # 2. Replace each Linear through its parent",
    "ex10_inject_lora_recursive": "    # 2. Replace each through its parent",
}


def _variant(stem: str, how: str) -> str:
    text = (ROOT / "solutions" / TRACK / f"{stem}.py").read_text()
    assert text.count(FREEZE_LAST) == 1, f"{stem}: the reference answer's freezing step moved"
    if how == "per-parameter":
        return text.replace(FREEZE_LAST, PER_PARAMETER)
    if how == "freeze-before-building":  # new layers' parameters are created trainable
        marker = BEFORE_BUILDING[stem]
        assert text.count(marker) == 1
        text = text.replace(FREEZE_LAST, "")
        return text.replace(
            marker, "    model.requires_grad_(False)  # every name is checked by now\n" + marker
        )
    if how == "not-frozen":
        return text.replace(FREEZE_LAST, "")
    raise AssertionError(how)


def _grade(how: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, list[str]]]:
    """Grade the three variants in one pytest run; return it and ``stem -> failure texts``."""
    for stem in STEMS:
        (tmp_path / f"{stem}.py").write_text(_variant(stem, how))
    graders = [str(ROOT / "practice" / TRACK / f"test_{stem}.py") for stem in STEMS]
    junit = tmp_path / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", *graders, f"--impl={tmp_path}", "-q", "-p", "no:cacheprovider"]
    proc = subprocess.run(
        [*cmd, f"--junitxml={junit}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        check=False,
    )
    failures: dict[str, list[str]] = {stem: [] for stem in STEMS}
    for case in ET.parse(junit).getroot().iter("testcase"):
        stem = next((s for s in STEMS if s in case.get("classname", "") + case.get("file", "")), None)
        assert stem is not None, case.attrib
        for problem in (case.find("failure"), case.find("error")):
            if problem is not None:
                failures[stem].append(f"{problem.get('message', '')}\n{problem.text or ''}")
    return proc, failures


@pytest.mark.parametrize("how", ["per-parameter", "freeze-before-building"])
def test_graders_accept_every_correct_way_of_freezing(how: str, tmp_path: Path) -> None:
    proc, failures = _grade(how, tmp_path)
    rejected = {stem: texts[0][-1500:] for stem, texts in failures.items() if texts}
    assert not rejected and proc.returncode == 0, f"{how}: rejected {rejected}\n{proc.stdout[-1500:]}"


def test_graders_reject_a_model_left_trainable(tmp_path: Path) -> None:
    proc, failures = _grade("not-frozen", tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:]
    for stem, texts in failures.items():
        assert texts, f"{stem}: an answer that leaves the model trainable passed"
        assert any("base layer not frozen" in t for t in texts), f"{stem}: {texts[0][-1500:]}"
