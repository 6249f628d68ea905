"""PEFT files of PiSSA / OLoRA adapters and of a pruned AdaLoRA, both ways
(peft_zoo.interop.peft_pissa, peft_zoo.interop.peft_method_load).

PiSSA / OLoRA: PEFT 0.21.2's ``from_pretrained`` of a file saying ``init_lora_weights:
"pissa"`` decomposes the base it is given again (the ORIGINAL weights give the residual the
adapter was trained on) and loads the trained factors; ``load_peft`` does the same, so both
give the trained model back (max |logits diff| observed: 0). ``save_peft(...,
path_initial_model_for_weight_conversion=init)`` writes the rank-2r plain LoRA on the original
weights that PEFT's ``save_pretrained`` with that argument writes: the same tensors (max
|diff| 0) and config, and PEFT loads it onto the original base with the trained model's
outputs (max |diff| observed 1.2e-7: ``W0 + s' B' A'`` rounds differently from
``W_res + s B A``).

AdaLoRA: PEFT saves each layer cut to the triplets its ``rank_pattern`` keeps (a layer may
keep none) and cuts its fresh layers alike on load; ``load_peft`` keeps ``init_r`` with the
pruned triplets zero: the same outputs (observed 1.9e-8), and the kept tensors are PEFT's.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from peft_format_helpers import base, edited, logits, max_diff, perturb, refused  # noqa: E402

import peft_zoo as pz  # noqa: E402
from peft_zoo.interop import PeftFormatError, load_peft, peft_read, read_peft, save_peft  # noqa: E402
from peft_zoo.testing import assert_model_unchanged, fingerprint  # noqa: E402

ATOL = 1e-6
TARGETS = ["q_proj", "v_proj"]


def peft_pissa(arch: str, init: str, targets: list[str], tmp_path: Path) -> tuple[nn.Module, Path, Path]:
    """A PEFT model initialised with ``init``, its initial adapter saved, then trained; its file."""
    theirs = peft.get_peft_model(
        base(arch), peft.LoraConfig(r=2, lora_alpha=4, target_modules=targets, init_lora_weights=init)
    )
    theirs.save_pretrained(tmp_path / "initial")
    perturb(theirs, 3).save_pretrained(tmp_path / "trained")
    return theirs, tmp_path / "initial", tmp_path / "trained"


@pytest.mark.parametrize(
    ("arch", "init", "targets"),
    [("llama", "pissa", TARGETS), ("llama", "olora", TARGETS), ("gpt2", "pissa", ["c_attn"])],
)
def test_a_pissa_file_loads_as_peft_loads_it(
    tmp_path: Path, arch: str, init: str, targets: list[str]
) -> None:
    theirs, _, trained = peft_pissa(arch, init, targets, tmp_path)
    assert json.loads((trained / "adapter_config.json").read_text())["init_lora_weights"] == init
    here, _ = load_peft(base(arch), trained)
    in_peft = peft.PeftModel.from_pretrained(base(arch), trained).eval()
    assert max_diff(logits(here.eval()), logits(theirs)) <= ATOL
    assert max_diff(logits(here), logits(in_peft)) <= ATOL
    name = "model.layers.0.self_attn.q_proj" if arch == "llama" else "transformer.h.0.attn.c_attn"
    residual = theirs.get_base_model().get_submodule(name).base_layer.weight
    assert torch.equal(here.get_submodule(name).base.weight, residual)  # the same decomposition, redone
    assert not torch.equal(residual, base(arch).get_submodule(name).weight)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_save_converts_to_plain_lora_as_peft_does(tmp_path: Path, init: str) -> None:
    theirs, initial, trained = peft_pissa("llama", init, TARGETS, tmp_path)
    here, _ = load_peft(base("llama"), trained)  # the same initial factors, the same trained ones
    save_peft(here, tmp_path / "ours", path_initial_model_for_weight_conversion=initial)
    theirs.save_pretrained(tmp_path / "peft", path_initial_model_for_weight_conversion=str(initial))
    ours_config, ours_state = read_peft(tmp_path / "ours")
    peft_config, peft_state = read_peft(tmp_path / "peft")
    assert (ours_config["r"], ours_config["lora_alpha"], ours_config["init_lora_weights"]) == (4, 8, True)
    assert (peft_config["r"], peft_config["lora_alpha"]) == (4, 8)
    assert sorted(ours_state) == sorted(peft_state)
    assert max(max_diff(ours_state[k], peft_state[k]) for k in ours_state) == 0
    on_original = peft.PeftModel.from_pretrained(base("llama"), tmp_path / "ours").eval()
    assert max_diff(logits(on_original), logits(here.eval())) <= ATOL
    assert max_diff(logits(on_original), logits(base("llama"))) > 1e-2


def test_save_converts_a_model_adapted_here(tmp_path: Path) -> None:
    ours, _ = pz.adapt_model(
        base("llama"), pz.LoraConfig(rank=2, alpha=4, target_modules=TARGETS, init_lora_weights="pissa")
    )
    save_peft(ours, tmp_path / "initial")
    perturb(ours, 4)
    save_peft(ours, tmp_path / "plain")  # the trained factors, which fit the residual base
    config = read_peft(tmp_path / "plain")[0]
    assert config["r"] == 2
    if config["init_lora_weights"] == "pissa":  # the layers record it: PEFT redoes it on the original base
        onto = base("llama")
    else:  # written as plain LoRA: it fits the residual base only
        assert config["init_lora_weights"] is True
        onto = pz.unload(copy.deepcopy(ours))
    assert (
        max_diff(logits(peft.PeftModel.from_pretrained(onto, tmp_path / "plain").eval()), logits(ours))
        <= ATOL
    )
    save_peft(ours, tmp_path / "converted", path_initial_model_for_weight_conversion=tmp_path / "initial")
    on_original = peft.PeftModel.from_pretrained(base("llama"), tmp_path / "converted").eval()
    assert max_diff(logits(on_original), logits(ours)) <= ATOL


def test_conversion_refusals_write_nothing(tmp_path: Path) -> None:
    ours, _ = pz.adapt_model(
        base("llama"), pz.LoraConfig(rank=2, target_modules=TARGETS, init_lora_weights="pissa")
    )
    with pytest.raises(PeftFormatError, match="no adapter directory with the initial weights"):
        save_peft(ours, tmp_path / "a", path_initial_model_for_weight_conversion=tmp_path / "nowhere")
    other, _ = pz.adapt_model(base("llama"), pz.LoraConfig(rank=2, target_modules=["k_proj"]))
    save_peft(other, tmp_path / "other")
    with pytest.raises(PeftFormatError, match="the initial adapter lacks"):
        save_peft(ours, tmp_path / "a", path_initial_model_for_weight_conversion=tmp_path / "other")
    dora, _ = pz.adapt_model(base("llama"), pz.LoraConfig(rank=2, target_modules=TARGETS, use_dora=True))
    save_peft(dora, tmp_path / "dora")
    with pytest.raises(PeftFormatError, match="only plain LoRALinear layers convert"):
        save_peft(dora, tmp_path / "a", path_initial_model_for_weight_conversion=tmp_path / "dora")
    assert not (tmp_path / "a").exists()


def test_refuses_a_decomposition_the_base_cannot_take(tmp_path: Path) -> None:
    gpt2 = peft.get_peft_model(base("gpt2"), peft.LoraConfig(r=2, target_modules=["c_attn"]))
    perturb(gpt2, 5).save_pretrained(tmp_path / "gpt2")
    path = edited(tmp_path / "gpt2", tmp_path / "olora", config=lambda d: d.update(init_lora_weights="olora"))
    refused(path, r"OLoRA on a \(in, out\) weight", model=base("gpt2"))
    llama = peft.get_peft_model(base("llama"), peft.LoraConfig(r=2, target_modules=["embed_tokens"]))
    perturb(llama, 6).save_pretrained(tmp_path / "emb")
    path = edited(
        tmp_path / "emb", tmp_path / "emb_pissa", config=lambda d: d.update(init_lora_weights="pissa")
    )
    refused(path, "implemented for linear layers", model=base("llama"))


def test_a_pissa_load_failing_halfway_puts_the_base_weights_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, trained = peft_pissa("llama", "pissa", TARGETS, tmp_path)
    real = peft_read.tensor_at

    def failing(model: nn.Module, path: str) -> torch.Tensor:
        if path.endswith("layers.1.self_attn.v_proj.lora_B"):  # after the decomposition rewrote every base
            raise RuntimeError("disk on fire")
        return real(model, path)

    monkeypatch.setattr(peft_read, "tensor_at", failing)
    model = base("llama")
    before = fingerprint(model)
    with pytest.raises(RuntimeError, match="disk on fire"):
        load_peft(model, trained)
    assert_model_unchanged(model, before, what="a PiSSA load that failed halfway")


# ----------------------------------------------------------------------------- AdaLoRA's rank pattern

MASKS = {
    "model.layers.0.self_attn.q_proj.lora_E.default": [True, False, True, False],
    "model.layers.1.self_attn.v_proj.lora_E.default": [False, False, False, False],  # nothing kept
}


@pytest.fixture
def pruned_adalora(tmp_path: Path) -> Path:
    theirs = peft.get_peft_model(
        base("llama"),
        peft.AdaLoraConfig(init_r=4, target_r=2, total_step=10, lora_alpha=6, target_modules=TARGETS),
    )
    perturb(theirs, 5).peft_config["default"].rank_pattern = dict(MASKS)
    theirs.save_pretrained(tmp_path / "ada")
    return tmp_path / "ada"


def test_a_pruned_adalora_loads_with_its_triplets_in_place(pruned_adalora: Path, tmp_path: Path) -> None:
    state = read_peft(pruned_adalora)[1]
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    assert tuple(state[f"{q}.lora_A"].shape) == (2, 16)  # PEFT saved the kept triplets only
    here, _ = load_peft(base("llama"), pruned_adalora)
    in_peft = peft.PeftModel.from_pretrained(base("llama"), pruned_adalora).eval()
    assert max_diff(logits(here.eval()), logits(in_peft)) <= ATOL
    layer = here.get_submodule("model.layers.0.self_attn.q_proj")
    assert torch.equal(layer.lora_A[[0, 2]], state[f"{q}.lora_A"]) and torch.equal(
        layer.lora_B[:, [0, 2]], state[f"{q}.lora_B"]
    )
    assert (
        not layer.lora_E[[1, 3]].any()
        and not here.get_submodule("model.layers.1.self_attn.v_proj").lora_E.any()
    )
    save_peft(here, tmp_path / "back")  # every triplet, the pruned ones zero
    back = peft.PeftModel.from_pretrained(base("llama"), tmp_path / "back").eval()
    assert max_diff(logits(back), logits(here)) <= ATOL


@pytest.mark.parametrize(
    ("masks", "match"),
    [
        ({"model.layers.0.self_attn.q_proj.lora_E": [True, False]}, r"must be a list of 4 booleans"),
        ({"model.layers.0.self_attn.q_proj.lora_E": [1, 0, 1, 0]}, r"must be a list of 4 booleans"),
        ({"model.layers.0.self_attn.o_proj.lora_E": [True] * 4}, r"names no adapted module"),
    ],
)
def test_refuses_a_bad_rank_pattern(pruned_adalora: Path, tmp_path: Path, masks: dict, match: str) -> None:
    path = edited(pruned_adalora, tmp_path / "bad", config=lambda d: d.update(rank_pattern=masks))
    refused(path, match, model=base("llama"))
