"""save_peft refuses what PEFT's format cannot express and writes nothing then; a save
overwrites atomically; the example script (examples/peft_roundtrip.py) runs and its printed
claims hold. Helpers in peft_format_helpers.py.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from peft_format_helpers import ATOL, ROOT, base, perturb  # noqa: E402

import peft_zoo as pz  # noqa: E402
from peft_zoo.interop import PeftFormatError, read_peft, save_peft  # noqa: E402


def test_save_refuses_what_peft_cannot_express(tmp_path: Path) -> None:
    q = "bert.encoder.layer.0.attention.self.query"
    v = "bert.encoder.layer.0.attention.self.value"
    mixed, _ = pz.inject_lora(base("bert"), [q], rank=2)
    pz.inject_ia3(mixed, [v])
    batched, _ = pz.inject_batched_lora(base("bert"), [q], num_adapters=2, rank=2)
    merged, _ = pz.inject_lora(base("bert"), [q], rank=2)
    pz.merge_adapters(merged)
    other = nn.Sequential(pz.LoRALinear(nn.Linear(4, 4), 2), pz.BottleneckAdapter(4, 2))
    for model, match in [
        (mixed, "mixes LoRA"),
        (batched, r"BatchedLoRALinear.*slot_as_lora"),
        (merged, "are merged; unmerge_adapters"),
        (other, r"cannot hold these adapter layers: \{'1': 'BottleneckAdapter'\}"),
        (base("bert"), "no LoRALinear, DoRALinear or IA3Linear"),
    ]:
        with pytest.raises(PeftFormatError, match=match):
            save_peft(model, tmp_path / "out")
        assert not (tmp_path / "out").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(PeftFormatError, match="is a file"):
        save_peft(pz.inject_lora(base("bert"), [q], rank=2)[0], tmp_path / "file")


def test_save_is_atomic_and_overwrites(tmp_path: Path) -> None:
    ours, _ = pz.adapt_model(base("bert"), pz.LoraConfig(rank=2, target_modules=["query"]))
    save_peft(perturb(ours, 12), tmp_path)
    first = read_peft(tmp_path)[1]
    save_peft(perturb(ours, 13), tmp_path)
    second = read_peft(tmp_path)[1]
    assert sorted(first) == sorted(second) and not all(torch.equal(first[k], second[k]) for k in first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


# ----------------------------------------------------------------------------- the example


def test_example_peft_roundtrip_runs_and_its_claims_hold(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("peft_roundtrip", ROOT / "examples" / "peft_roundtrip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = module.main(steps=20)
    out = capsys.readouterr().out
    assert result["loss_last"] < result["loss_first"] - 0.01, result["losses"]
    assert f"loss fell: {result['loss_first']:.4f} -> {result['loss_last']:.4f}" in out
    assert result["peft_diff"] <= ATOL and result["load_peft_diff"] <= ATOL
    assert f"max |diff| peft_zoo vs PEFT: {result['peft_diff']:.2e}" in out
    assert f"max |diff| after load_peft: {result['load_peft_diff']:.2e}" in out
