"""Methods beyond plain LoRA and IA³ through PEFT's format: LoRA on parts of a fused
projection (saved as the plain LoRA it equals), DoRA (``use_dora``, a magnitude vector per
layer) and QLoRA (a plain LoRA that PEFT applies to the dequantised base). Helpers in
peft_format_helpers.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from peft_format_helpers import ATOL, Q1, base, edited, logits, max_diff, perturb, refused  # noqa: E402

import peft_zoo as pz  # noqa: E402
from peft_zoo.dora import DoRALinear  # noqa: E402
from peft_zoo.interop import PeftFormatError, load_peft, read_peft, save_peft  # noqa: E402


def test_fused_q_and_v_lora_is_saved_as_the_plain_lora_it_equals(tmp_path: Path) -> None:
    config = pz.LoraConfig(
        rank=2, alpha=4, target_modules=["c_attn"], target_parts={"c_attn": [True, False, True]}
    )
    ours, _ = pz.adapt_model(base("gpt2"), config)
    perturb(ours, seed=3)
    path = save_peft(ours, tmp_path / "fused")
    saved = json.loads((path / "adapter_config.json").read_text())
    assert saved["r"] == 4 and saved["lora_alpha"] == 8  # 2 slices: rank 2 * 2, alpha 2 * 4, same scale
    theirs = peft.PeftModel.from_pretrained(base("gpt2"), path).eval()
    assert max_diff(logits(ours), logits(base("gpt2"))) > 1e-3
    assert max_diff(logits(ours), logits(theirs)) <= ATOL
    back, _ = load_peft(base("gpt2"), path)
    assert max_diff(logits(back), logits(ours)) <= ATOL


# ----------------------------------------------------------------------------- DoRA


@pytest.fixture(scope="module")
def bert_dora_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PEFT DoRA adapter for the BERT model: query/value of both layers."""
    path = tmp_path_factory.mktemp("peft") / "bert-dora"
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], use_dora=True)
    perturb(peft.get_peft_model(base("bert"), config), seed=14).save_pretrained(path)
    return path


def test_dora_is_read_with_peft_key_names_into_dora_layers(bert_dora_adapter: Path) -> None:
    config, state = read_peft(bert_dora_adapter)
    assert config["use_dora"] is True
    magnitudes = sorted(k for k in state if k.endswith(".lora_magnitude_vector"))
    assert len(magnitudes) == 4 and all(tuple(state[k].shape) == (16,) for k in magnitudes)
    model, params = load_peft(base("bert"), bert_dora_adapter)
    layer = model.get_submodule("bert.encoder.layer.1.attention.self.query")
    assert isinstance(layer, DoRALinear)
    assert torch.equal(layer.magnitude, state[f"{Q1}.lora_magnitude_vector"])
    assert torch.equal(layer.lora_A, state[f"{Q1}.lora_A.weight"])
    assert any(p is layer.magnitude for p in params) and layer.magnitude.requires_grad


def test_refuses_dora_adapters_with_a_bad_magnitude(bert_dora_adapter: Path, tmp_path: Path) -> None:
    key = f"{Q1}.lora_magnitude_vector"
    missing = edited(bert_dora_adapter, tmp_path / "a", tensors=lambda s: s.pop(key))
    refused(missing, r"missing tensors .*query\.lora_magnitude_vector.*use_dora is on")

    def short(state: dict) -> None:
        state[key] = torch.ones(8)

    refused(
        edited(bert_dora_adapter, tmp_path / "b", tensors=short), r"shape \(8,\) in file, \(16,\) expected"
    )

    def nan(state: dict) -> None:
        state[key][3] = float("nan")

    refused(edited(bert_dora_adapter, tmp_path / "c", tensors=nan), "lora_magnitude_vector: contains NaN")
    off = edited(bert_dora_adapter, tmp_path / "d", config=lambda d: d.update(use_dora=False))
    refused(off, r"unexpected tensors .*\(DoRA magnitudes, but the config has use_dora off")


def test_save_refuses_dora_mixed_with_plain_lora_or_merged(tmp_path: Path) -> None:
    v = "bert.encoder.layer.0.attention.self.value"
    mixed, _ = pz.adapt_model(base("bert"), pz.LoraConfig(rank=2, target_modules=["query"], use_dora=True))
    pz.inject_lora(mixed, [v], rank=2)
    merged, _ = pz.adapt_model(base("bert"), pz.LoraConfig(rank=2, target_modules=["query"], use_dora=True))
    pz.merge_adapters(merged)
    for model, match in [(mixed, r"mixes DoRA .* and plain LoRA \['" + v), (merged, "are merged")]:
        with pytest.raises(PeftFormatError, match=match):
            save_peft(model, tmp_path / "out")
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_qlora_adapter_saves_as_plain_lora_that_peft_applies_to_the_dequantised_base(
    arch: str, tmp_path: Path
) -> None:
    """A QLoRA adapter is a plain LoRA: PEFT on a base holding the dequantised NF4 weights must
    compute exactly what the QLoRA model computes (GPT-2: from Conv1D, fan_in_fan_out)."""
    from peft_zoo.injection.inject import inject_qlora
    from peft_zoo.qlora import QLoRALinear

    targets = {"bert": ["query", "value"], "gpt2": ["c_attn"]}[arch]
    model = base(arch)
    names = [n for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in targets]
    inject_qlora(model, names, rank=4, alpha=8)
    torch.manual_seed(5)
    with torch.no_grad():
        for n in names:
            model.get_submodule(n).lora_B.normal_(std=1.0)
    save_peft(model, tmp_path / "qlora")
    config = json.loads((tmp_path / "qlora" / "adapter_config.json").read_text())
    assert config["use_dora"] is False and config["fan_in_fan_out"] == (arch == "gpt2")

    reference = base(arch)  # the float base, its adapted weights replaced by the NF4 ones
    with torch.no_grad():
        for n in names:
            layer = model.get_submodule(n)
            assert isinstance(layer, QLoRALinear)
            w = layer.base.dequantize_weight(torch.float32)  # (out, in)
            reference.get_submodule(n).weight.copy_(w.T if arch == "gpt2" else w)
    peft_model = peft.PeftModel.from_pretrained(reference, tmp_path / "qlora").eval()
    model.eval()
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        ours, theirs = model(ids).logits, peft_model(ids).logits
    assert (ours - theirs).abs().max() <= ATOL
    with torch.no_grad():  # the adapter matters: without it the outputs differ
        plain = peft_model.get_base_model()
        with peft_model.disable_adapter():
            assert (plain(ids).logits - ours).abs().max() > 10 * ATOL
