"""Named adapters through PEFT's files, both ways: one adapter saved by name
(``save_peft(model, path, adapter_name=...)``) loads in PEFT with ``PeftModel.from_pretrained``
and ``PeftModel.load_adapter``; every adapter saved at once follows PEFT's ``save_pretrained``
layout (``default`` in the directory, the others in subdirectories); PEFT's files load here by
name with ``load_peft_adapter``. Outputs are compared with the model that was saved (observed: 0).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

peft = pytest.importorskip("peft")
pytest.importorskip("transformers")

from named_adapter_helpers import ARCHS, build_pair, diff, ids, logits  # noqa: E402
from peft_format_helpers import base  # noqa: E402

import peft_zoo as pz  # noqa: E402
from peft_zoo.serving.named import (  # noqa: E402
    active_adapters,
    list_adapters,
    load_peft_adapter,
    named_adapter_layers,
    set_adapter,
    use_adapter_names,
)


@pytest.mark.parametrize("arch", ARCHS)
def test_one_adapter_by_name_loads_in_peft(arch: str, tmp_path: Path) -> None:
    pair, x = build_pair(arch, seed=11), ids(3, 5)
    set_adapter(pair.ours, "b")
    expected = logits(pair.ours, x)
    pz.save_peft(pair.ours, tmp_path / "b", adapter_name="b")
    config = json.loads((tmp_path / "b" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and not (tmp_path / "b" / "b").exists()
    loaded = peft.PeftModel.from_pretrained(base(arch), tmp_path / "b").eval()
    assert diff(logits(loaded, x), expected) == 0.0
    # ... and as a second adapter of PEFT's model, by name
    pair.theirs.load_adapter(tmp_path / "b", adapter_name="b_again")
    pair.theirs.set_adapter("b_again")
    assert diff(logits(pair.theirs, x), expected) == 0.0


@pytest.mark.parametrize("arch", ARCHS)
def test_all_adapters_in_peft_layout(arch: str, tmp_path: Path) -> None:
    pair, x = build_pair(arch, seed=12), ids(2, 5)
    pz.save_peft(pair.ours, tmp_path / "all")
    assert (tmp_path / "all" / "adapter_config.json").is_file()  # "default" at the top
    assert (tmp_path / "all" / "b" / "adapter_config.json").is_file()
    loaded = peft.PeftModel.from_pretrained(base(arch), tmp_path / "all").eval()
    loaded.load_adapter(tmp_path / "all" / "b", adapter_name="b")
    for name in ("default", "b"):
        set_adapter(pair.ours, name)
        loaded.set_adapter(name)
        assert diff(logits(loaded, x), logits(pair.ours, x)) == 0.0, name


@pytest.mark.parametrize("arch", ARCHS)
def test_peft_files_load_here_by_name(arch: str, tmp_path: Path) -> None:
    pair, x = build_pair(arch, seed=13), ids(2, 5)
    pair.theirs.save_pretrained(tmp_path / "theirs")  # default here, b in theirs/b
    model = base(arch)
    first = load_peft_adapter(model, tmp_path / "theirs", "default")
    second = load_peft_adapter(model, tmp_path / "theirs" / "b", "b", is_trainable=True)
    assert sorted(list_adapters(model)) == ["b", "default"]
    assert active_adapters(model) == ["default"]  # the first loaded is active, as from_pretrained's
    assert not any(p.requires_grad for p in first) and all(p.requires_grad for p in second)
    model.eval()
    for name in ("default", "b"):
        set_adapter(model, name, inference_mode=True)
        pair.theirs.set_adapter(name)
        assert diff(logits(model, x), logits(pair.theirs, x)) == 0.0, name
    names = ["b", "__base__"]
    with torch.no_grad():
        theirs = pair.theirs(input_ids=ids(2, 5), adapter_names=names).logits
    with use_adapter_names(model, names):
        assert diff(logits(model, ids(2, 5)), theirs) <= 2e-6  # float32 rounding: see test_named_adapters.py


def test_round_trip_keeps_per_adapter_ranks_and_scales(tmp_path: Path) -> None:
    pair = build_pair("bert", seed=14)
    pz.save_peft(pair.ours, tmp_path / "b", adapter_name="b")
    model = base("bert")
    load_peft_adapter(model, tmp_path / "b", "b")
    for path, layer in named_adapter_layers(model).items():
        original = named_adapter_layers(pair.ours)[path]
        assert layer.hyper["b"] == original.hyper["b"], path
        assert torch.equal(layer.lora_A["b"], original.lora_A["b"])
        assert torch.equal(layer.lora_B["b"], original.lora_B["b"])
