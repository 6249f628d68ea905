"""Bad PEFT files of the newer methods (LoHa, LoKr, VeRA, OFT, BOFT, AdaLoRA, LoRA on embeddings) and
saves PEFT's format cannot express: a clear error naming the problem, and nothing changed (the
model's every tensor and flag, checked by fingerprint) or written.

The files are PEFT's own (``save_pretrained`` on a small LLaMA), then edited: a tensor
removed or reshaped, a config field unknown, mistyped or from an older PEFT release.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from peft_format_helpers import base, edited, logits, max_diff, perturb, refused  # noqa: E402

import peft_zoo as pz  # noqa: E402
from peft_zoo.injection.boft_config import BOFTConfig  # noqa: E402
from peft_zoo.injection.lycoris_config import LoHaConfig  # noqa: E402
from peft_zoo.injection.oft_config import OFTConfig  # noqa: E402
from peft_zoo.interop import PeftFormatError, load_peft, save_peft  # noqa: E402
from peft_zoo.testing import assert_model_unchanged, fingerprint  # noqa: E402

P = "base_model.model.model.layers.0.self_attn.q_proj"
T = ["q_proj", "v_proj"]
CONFIGS = {
    "loha": lambda: peft.LoHaConfig(r=2, alpha=4, target_modules=T),
    "lokr": lambda: peft.LoKrConfig(r=2, alpha=4, target_modules=T),
    "vera": lambda: peft.VeraConfig(r=4, target_modules=T),
    "oft": lambda: peft.OFTConfig(r=0, oft_block_size=4, target_modules=T),
    "boft": lambda: peft.BOFTConfig(boft_block_size=4, target_modules=T),
    "adalora": lambda: peft.AdaLoraConfig(init_r=3, target_r=2, total_step=10, target_modules=T),
    "lora-embedding": lambda: peft.LoraConfig(r=2, target_modules=["embed_tokens", "q_proj"]),
}
ONE_KEY = {  # a tensor of each file
    "loha": f"{P}.hada_w1_a",
    "lokr": f"{P}.lokr_w1",
    "vera": f"{P}.vera_lambda_d",
    "oft": f"{P}.oft_R.weight",
    "boft": f"{P}.boft_R",
    "adalora": f"{P}.lora_E",
    "lora-embedding": "base_model.model.model.embed_tokens.lora_embedding_A",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zoo")
    for name, config in CONFIGS.items():
        perturb(peft.get_peft_model(base("llama"), config()), 1).save_pretrained(root / name)
    return {name: root / name for name in CONFIGS}


def llama_refuses(path: Path, match: str) -> str:
    return refused(path, match, model=base("llama"))


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_refuses_a_missing_tensor(files: dict[str, Path], tmp_path: Path, method: str) -> None:
    key = ONE_KEY[method]
    path = edited(files[method], tmp_path / "a", tensors=lambda s: s.pop(key))
    assert key.removeprefix("base_model.model.") in llama_refuses(path, r"missing tensors \[")


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_refuses_a_wrong_shape(files: dict[str, Path], tmp_path: Path, method: str) -> None:
    key = ONE_KEY[method]
    path = edited(files[method], tmp_path / "a", tensors=lambda s: s.update({key: torch.ones(3, 5)}))
    llama_refuses(path, rf"{key}: shape \(3, 5\) in file, \(.*\) expected")


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_refuses_an_unknown_field_and_a_mistyped_one(
    files: dict[str, Path], tmp_path: Path, method: str
) -> None:
    path = edited(files[method], tmp_path / "a", config=lambda d: d.update(brand_new_option=1))
    llama_refuses(path, r"unknown config fields \['brand_new_option'\]")
    path = edited(files[method], tmp_path / "b", config=lambda d: d.update(target_modules=7))
    llama_refuses(path, "target_modules")


@pytest.mark.parametrize(
    ("method", "field", "value", "match"),
    [
        ("loha", "alpha", "4", r"alpha must be"),
        ("loha", "rank_dropout", 1.5, r"rank_dropout"),
        ("lokr", "decompose_factor", 0, r"decompose_factor must be -1"),
        ("lokr", "decompose_both", "yes", r"decompose_both must be True or False"),
        ("vera", "save_projection", "no", r"save_projection must be True or False"),
        ("vera", "bias", "lora_only", r"bias must be one of \('none', 'all', 'vera_only'\)"),
        ("oft", "oft_block_size", 5, r"does not divide|divid"),
        ("oft", "coft", 1, r"coft must be True or False"),
        ("oft", "peft_version", "0.17.1", r"PEFT changed this parameterisation in 0.18"),
        ("boft", "boft_block_size", 5, r"boft_block_size=5 does not divide"),
        ("boft", "bias", "lora_only", r"bias must be one of \('none', 'all', 'boft_only'\)"),
        ("boft", "boft_n_butterfly_factor", 0, r"boft_n_butterfly_factor"),
        ("adalora", "init_r", 0, r"init_r"),
        ("adalora", "use_dora", True, r"use_dora=True: AdaLoRA has no DoRA"),
        ("lora-embedding", "use_dora", True, r"missing tensors|DoRA"),
    ],
)
def test_refuses_field_values(
    files: dict[str, Path], tmp_path: Path, method: str, field: str, value: object, match: str
) -> None:
    path = edited(files[method], tmp_path / "a", config=lambda d: d.update({field: value}))
    llama_refuses(path, match)


def test_refuses_an_oft_file_from_before_block_sizes(files: dict[str, Path], tmp_path: Path) -> None:
    path = edited(files["oft"], tmp_path / "a", config=lambda d: d.pop("oft_block_size"))
    llama_refuses(path, r"without oft_block_size is from PEFT < 0.14")


def test_boft_scale_must_be_there(files: dict[str, Path], tmp_path: Path) -> None:
    path = edited(files["boft"], tmp_path / "a", tensors=lambda s: s.pop(f"{P}.boft_s"))
    assert f"{P.removeprefix('base_model.model.')}.boft_s" in llama_refuses(path, r"missing tensors \[")
    path = edited(files["boft"], tmp_path / "b", tensors=lambda s: s.update({f"{P}.boft_s": torch.ones(16)}))
    llama_refuses(path, rf"{P}.boft_s: shape \(16,\) in file, \(16, 1\) expected")


def test_boft_butterfly_factor_is_what_peft_builds_on_a_cpu(files: dict[str, Path], tmp_path: Path) -> None:
    """PEFT without its CUDA extension builds one butterfly factor whatever the config says:
    such a file (factor 2 said, boft_R (1, D, b, b)) loads as PEFT computes it, with a warning;
    a file with two factors' tensors (PEFT's kernel path) is refused, nothing changed."""
    theirs = peft.get_peft_model(
        base("llama"), peft.BOFTConfig(boft_block_size=4, boft_n_butterfly_factor=2, target_modules=T)
    )
    if not torch.cuda.is_available():  # the evidence: PEFT on a CPU stores one factor
        assert tuple(theirs.base_model.model.model.layers[0].self_attn.q_proj.boft_R["default"].shape) == (
            1,
            4,
            4,
            4,
        )
    said_two = edited(files["boft"], tmp_path / "a", config=lambda d: d.update(boft_n_butterfly_factor=2))
    with pytest.warns(UserWarning, match=r"boft_n_butterfly_factor=2 with boft_R of shape \(1, D, b, b\)"):
        here, _ = load_peft(base("llama"), said_two)
    assert max_diff(logits(here), logits(peft.PeftModel.from_pretrained(base("llama"), said_two))) <= 1e-6
    two = edited(
        said_two, tmp_path / "b", tensors=lambda s: s.update({f"{P}.boft_R": torch.zeros(2, 4, 4, 4)})
    )
    llama_refuses(
        two, rf"boft_n_butterfly_factor=2 with {P}.boft_R of shape \(2, 4, 4, 4\): written by PEFT's CUDA"
    )


def test_vera_pair_must_be_there_when_the_config_says_it_was_saved(
    files: dict[str, Path], tmp_path: Path
) -> None:
    path = edited(files["vera"], tmp_path / "a", tensors=lambda s: s.pop("base_model.vera_B"))
    llama_refuses(path, r"missing tensors \['base_model.vera_B'\]")
    path = edited(
        files["vera"], tmp_path / "b", tensors=lambda s: s.update({"base_model.vera_A": torch.ones(4, 3)})
    )
    llama_refuses(path, r"base_model.vera_A: shape \(4, 3\) in file, \(4, 16\) expected")


def test_refuses_layers_the_method_cannot_build(tmp_path: Path) -> None:
    """PEFT refuses LoHa on GPT-2's Conv1D when it builds the model; a file asking for it is
    refused here before any tensor is compared."""
    with pytest.raises((TypeError, ValueError)):
        peft.get_peft_model(base("gpt2"), peft.LoHaConfig(r=2, target_modules=["c_attn"]))
    path = tmp_path / "loha"
    path.mkdir()
    config = {"peft_type": "LOHA", "r": 2, "alpha": 2, "target_modules": ["c_attn"]}
    (path / "adapter_config.json").write_text(json.dumps(config))
    key = "base_model.model.transformer.h.0.attn.c_attn"
    shapes = {"hada_w1_a": (48, 2), "hada_w1_b": (2, 16), "hada_w2_a": (48, 2), "hada_w2_b": (2, 16)}
    safetensors.torch.save_file(
        {f"{key}.{k}": torch.ones(s) for k, s in shapes.items()}, path / "adapter_model.safetensors"
    )
    refused(path, r"cannot be built on this model: .*Conv1D", model=base("gpt2"))


# ----------------------------------------------------------------------------- saves


def test_save_refuses_what_one_peft_adapter_cannot_hold(tmp_path: Path) -> None:
    mixed, _ = pz.adapt_model(base("llama"), LoHaConfig(r=2, target_modules=["q_proj"]))
    pz.adapt_model(mixed, pz.LoraConfig(rank=2, target_modules=["v_proj"]))
    with pytest.raises(PeftFormatError, match=r"mixes LoRA .* and LOHA .* layers"):
        save_peft(mixed, tmp_path / "out")
    two_sizes, _ = pz.adapt_model(base("llama"), OFTConfig(oft_block_size=4, target_modules=["q_proj"]))
    pz.adapt_model(two_sizes, OFTConfig(oft_block_size=8, target_modules=["v_proj"]))
    with pytest.raises(PeftFormatError, match=r"differ in oft_block_size"):
        save_peft(two_sizes, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_save_refuses_boft_with_several_butterfly_factors(tmp_path: Path) -> None:
    """PEFT on a CPU would build one factor from the file, so the save is refused; the model is
    left as it was and nothing is written."""
    model, _ = pz.adapt_model(
        base("llama"), BOFTConfig(boft_block_size=4, boft_n_butterfly_factor=2, target_modules=T)
    )
    model = perturb(model, 1)
    before = fingerprint(model)
    with pytest.raises(PeftFormatError, match=r"boft_n_butterfly_factor=2: PEFT without its CUDA extension"):
        save_peft(model, tmp_path / "out")
    assert_model_unchanged(model, before, what="a refused save_peft")
    assert not (tmp_path / "out").exists()


def test_dilated_convolutions_and_dora_off_linears_are_refused_both_ways(
    files: dict[str, Path], tmp_path: Path
) -> None:
    """PEFT's LoRA path ignores a convolution's dilation (peft_zoo's follows it): refused both
    ways rather than silently computing another function; DoRA exists on linear layers only."""
    dilated = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3, dilation=2), torch.nn.Conv1d(4, 4, 1))
    ours, _ = pz.adapt_model(dilated, pz.LoraConfig(rank=2, target_modules=["0"]))
    with pytest.raises(PeftFormatError, match="dilated convolutions"):
        save_peft(ours, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    plain = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3), torch.nn.Conv1d(4, 4, 1))
    save_peft(pz.adapt_model(plain, pz.LoraConfig(rank=2, target_modules=["0"]))[0], tmp_path / "plain")
    refused(
        tmp_path / "plain",
        "dilated convolution",
        model=torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3, dilation=2), torch.nn.Conv1d(4, 4, 1)),
    )
    only_embedding = edited(
        files["lora-embedding"],
        tmp_path / "dora",
        config=lambda d: d.update(use_dora=True, target_modules=["embed_tokens"]),
        tensors=lambda s: [s.pop(k) for k in list(s) if "q_proj" in k],
    )
    llama_refuses(
        only_embedding,
        r"use_dora on 'model.embed_tokens', a Embedding: DoRA is implemented for linear layers only",
    )
