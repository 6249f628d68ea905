"""PEFT's on-disk format for the newer methods, both ways: LoRA on embeddings and convolutions,
LoHa, LoKr, VeRA, OFT, BOFT, AdaLoRA (peft_zoo.interop.peft_methods / peft_method_load), and PiSSA /
OLoRA (peft_zoo.interop.peft_pissa).

Each case adapts a small model with peft_zoo's config and the same one with PEFT's (the field
names are PEFT's, so one set of keyword arguments builds both), moves every trainable tensor
off its start, and goes through the files both ways onto a fresh base: ``save_peft`` ->
``PeftModel.from_pretrained`` and ``save_pretrained`` -> ``load_peft``; then it merges both
loaded models. The loaded tensors are checked against PEFT's file (written back by
``save_peft``: the same keys and values), and the gradients of PEFT's and our model loaded
from the same file (through the files they save). Max |logits diff| observed on CPU, float32
(torch 2.13, transformers 5.23, peft 0.21.2; ``-s`` prints them):

    case                   save_peft -> PEFT      PEFT -> load_peft      gradients
                           unmerged  merged       unmerged  merged
    llama-oft              0         4.5e-08      0         4.5e-08      2.2e-08
    llama-boft             4.5e-08   6.0e-08      4.5e-08   5.2e-08      7.6e-08
    bert-boft-bias         1.5e-08   0            0         0            7.5e-09
    every other case       0         0            0         0            0
    (llama/bert LoHa, LoKr (decompose_both), VeRA (bias, GPT-2 without saved projection),
     OFT (COFT, block_share, exact Cayley), AdaLoRA (LLaMA, GPT-2 Conv1D), LoRA on BERT /
     LLaMA embeddings and on Conv1d / Conv2d)

Zero: the same float32 operations in the same order. OFT merged: ``W0 R^T`` is formed with
another rounding for LLaMA's 16 -> 8 projections. BOFT: PEFT forms the exact Cayley transform
with another solve (boft_n_butterfly_factor 1, the one PEFT builds on a CPU). The tests allow ``1e-6`` / ``1e-5``.
PiSSA / OLoRA and AdaLoRA's rank pattern: test_peft_format_pissa.py. Bad files: test_peft_format_zoo_bad.py.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from peft_format_helpers import IDS, base, logits, max_diff, perturb  # noqa: E402

import peft_zoo as pz  # noqa: E402
from peft_zoo.injection.adalora_config import AdaLoraConfig  # noqa: E402
from peft_zoo.injection.boft_config import BOFTConfig  # noqa: E402
from peft_zoo.injection.lycoris_config import LoHaConfig, LoKrConfig  # noqa: E402
from peft_zoo.injection.oft_config import OFTConfig  # noqa: E402
from peft_zoo.injection.vera_config import VeraConfig  # noqa: E402
from peft_zoo.interop import load_peft, read_peft, save_peft  # noqa: E402

ATOL, MERGED_ATOL = 1e-6, 1e-5
OBSERVED: dict[tuple[str, str], tuple[float, float]] = {}


@pytest.fixture(scope="module", autouse=True)
def _print_observed():
    yield
    if OBSERVED:
        print("\nmax |diff| peft_zoo vs PEFT (unmerged, merged):")
        for (case, direction), (unmerged, merged) in sorted(OBSERVED.items()):
            print(f"  {case:22s} {direction:20s} {unmerged:.2e} {merged:.2e}")


class ConvNet(nn.Module):
    """Conv1d -> Conv2d -> Linear, for LoRA on convolutions (grouped ones cannot merge)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 8, (3, 3), padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(x)  # (N, 6, L)
        h = self.c2(h[:, :, None, :].expand(-1, -1, 4, -1))  # (N, 8, 4, L)
        return self.fc(h.mean((2, 3)))


X = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(0))


def fresh(arch: str) -> nn.Module:
    if arch == "conv":
        torch.manual_seed(3)
        return ConvNet().eval()
    return base(arch)


def outputs(model: nn.Module) -> torch.Tensor:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(inner, ConvNet):
        return logits(model)
    with torch.no_grad():
        return model(X)


T_LLAMA = ["q_proj", "v_proj", "down_proj"]
# case -> (arch, our config class, PEFT's config class, kwargs for both [, PEFT-only kwargs])
CASES: dict[str, tuple[str, type, Callable[..., Any], dict[str, Any]]] = {
    "llama-loha": (
        "llama",
        LoHaConfig,
        lambda: peft.LoHaConfig,
        dict(
            r=4,
            alpha=6,
            target_modules=T_LLAMA,
            rank_pattern={"v_proj": 2},
            alpha_pattern={r"layers\.1\.mlp\.down_proj": 3.0},
        ),
    ),
    "bert-loha": (
        "bert",
        LoHaConfig,
        lambda: peft.LoHaConfig,
        dict(r=2, alpha=4, target_modules=["query", "value"], modules_to_save=["classifier"]),
    ),
    "llama-lokr": (
        "llama",
        LoKrConfig,
        lambda: peft.LoKrConfig,
        dict(r=2, alpha=4, target_modules=T_LLAMA, rank_pattern={"down_proj": 1}),
    ),
    "bert-lokr-both": (
        "bert",
        LoKrConfig,
        lambda: peft.LoKrConfig,
        dict(
            r=1,
            alpha=2,
            decompose_both=True,
            decompose_factor=4,
            target_modules=["query", "intermediate.dense"],
        ),
    ),
    "llama-vera": (
        "llama",
        VeraConfig,
        lambda: peft.VeraConfig,
        dict(r=4, target_modules=["q_proj", "k_proj", "down_proj"], projection_prng_key=3),
    ),
    "gpt2-vera-noproj": (
        "gpt2",
        VeraConfig,
        lambda: peft.VeraConfig,
        dict(r=4, target_modules=["c_attn", "c_fc"], save_projection=False, projection_prng_key=7),
    ),
    "bert-vera-bias": (
        "bert",
        VeraConfig,
        lambda: peft.VeraConfig,
        dict(r=4, target_modules=["query", "value"], bias="vera_only", modules_to_save=["classifier"]),
    ),
    "llama-oft": (
        "llama",
        OFTConfig,
        lambda: peft.OFTConfig,
        dict(r=0, oft_block_size=4, target_modules=T_LLAMA),
    ),
    "bert-oft-coft": (
        "bert",
        OFTConfig,
        lambda: peft.OFTConfig,
        dict(
            r=0,
            oft_block_size=8,
            target_modules=["query", "value"],
            use_cayley_neumann=False,
            block_share=True,
            coft=True,
            eps=1e-3,
            bias="oft_only",
        ),
    ),
    "llama-boft": (  # boft_n_butterfly_factor 1: what PEFT builds on a CPU (test_peft_format_zoo_bad.py)
        "llama",
        BOFTConfig,
        lambda: peft.BOFTConfig,
        dict(boft_block_size=4, target_modules=T_LLAMA),
    ),
    "bert-boft-bias": (
        "bert",
        BOFTConfig,
        lambda: peft.BOFTConfig,
        dict(
            boft_block_size=0,
            boft_block_num=2,
            target_modules=["query", "value", "intermediate.dense"],
            bias="boft_only",
            modules_to_save=["classifier"],
        ),
    ),
    "llama-adalora": (
        "llama",
        AdaLoraConfig,
        lambda: peft.AdaLoraConfig,
        dict(init_r=4, target_r=2, total_step=10, lora_alpha=6, target_modules=["q_proj", "v_proj"]),
    ),
    "bert-adalora": (
        "bert",
        AdaLoraConfig,
        lambda: peft.AdaLoraConfig,
        dict(
            init_r=3,
            target_r=1,
            total_step=20,
            tinit=2,
            target_modules=["query", "value", "output.dense"],
            modules_to_save=["classifier"],
        ),
    ),
    "gpt2-adalora": (
        "gpt2",
        AdaLoraConfig,
        lambda: peft.AdaLoraConfig,
        dict(init_r=3, target_r=2, total_step=10, target_modules=["c_attn"]),
    ),
}
LORA_CASES: dict[str, tuple[str, dict[str, Any]]] = {  # peft_zoo's LoraConfig says rank / alpha
    "bert-lora-embedding": ("bert", dict(r=4, lora_alpha=8, target_modules=["word_embeddings", "query"])),
    "llama-lora-embedding": ("llama", dict(r=2, lora_alpha=2, target_modules=["embed_tokens", "v_proj"])),
    "conv-lora": ("conv", dict(r=4, lora_alpha=6, target_modules=["c1", "c2", "fc"])),
}


def _ours_lora(kw: dict[str, Any]) -> pz.LoraConfig:
    return pz.LoraConfig(rank=kw["r"], alpha=kw["lora_alpha"], target_modules=kw["target_modules"])


def _merged(model: nn.Module, peft_model: Any) -> float:
    pz.merge_adapters(model)
    return max_diff(outputs(model), outputs(peft_model.merge_and_unload()))


def _same_tensors(theirs: Path, ours: Path) -> None:
    """Our file, written from what load_peft loaded, holds PEFT's tensors (PEFT also writes a
    targeted embedding's own table, which needs no saving)."""
    a, b = read_peft(theirs)[1], read_peft(ours)[1]
    if "base_model.vera_A" not in a:  # PEFT's save_projection=False; save_peft always writes the pair
        b = {k: v for k, v in b.items() if k not in ("base_model.vera_A", "base_model.vera_B")}
    assert sorted(
        k
        for k in a
        if not k.endswith((".word_embeddings.base_layer.weight", ".embed_tokens.base_layer.weight"))
    ) == sorted(b)
    for k in b:
        assert torch.equal(a[k], b[k]), k


@torch.no_grad()
def _grads_into_weights(model: nn.Module) -> None:
    """Each trainable tensor replaced by its gradient, so that a saved file holds the gradients
    under the format's own names."""
    for p in model.parameters():
        if p.requires_grad:
            p.copy_(p.grad if p.grad is not None else torch.zeros_like(p))


def _gradients_agree(arch: str, path: Path, tmp_path: Path) -> float:
    """Max |difference| of the trainable tensors' gradients, PEFT's model and ours both loaded
    from the file at ``path`` (the same weights), compared through the files they save."""
    here, _ = load_peft(fresh(arch), path)
    theirs = peft.PeftModel.from_pretrained(fresh(arch), path, is_trainable=True)
    for model in (here.eval(), theirs.eval()):
        out = model(X) if arch == "conv" else model(input_ids=IDS).logits
        out.square().sum().backward()
        _grads_into_weights(model)
    save_peft(here, tmp_path / "grads_ours")
    theirs.save_pretrained(tmp_path / "grads_theirs")
    a, b = read_peft(tmp_path / "grads_theirs")[1], read_peft(tmp_path / "grads_ours")[1]
    common = [k for k in b if k in a and not k.startswith("base_model.vera_")]
    assert len(common) >= len(b) - 2 and all(
        b[k].abs().max() > 0 for k in common if ".lora_" in k or ".hada_" in k
    )
    return max(max_diff(a[k], b[k]) for k in common)


def round_trip(case: str, arch: str, ours: nn.Module, theirs: Any, tmp_path: Path, peft_type: str) -> None:
    task = theirs.peft_config["default"].task_type
    ours, theirs = perturb(ours, 1), perturb(theirs, 2)
    plain = outputs(fresh(arch))
    assert max_diff(outputs(ours), plain) > 0.01 * plain.abs().max()  # the adapter does something
    save_peft(ours, tmp_path / "ours", task_type=getattr(task, "value", task))
    assert json.loads((tmp_path / "ours" / "adapter_config.json").read_text())["peft_type"] == peft_type
    in_peft = peft.PeftModel.from_pretrained(fresh(arch), tmp_path / "ours").eval()
    to_peft = max_diff(outputs(ours), outputs(in_peft))
    OBSERVED[case, "save_peft -> PEFT"] = (to_peft, _merged(ours, in_peft))
    theirs.save_pretrained(tmp_path / "theirs")
    here, params = load_peft(fresh(arch), tmp_path / "theirs")
    assert params and all(p.requires_grad for p in params)
    save_peft(here, tmp_path / "back")  # before a forward: COFT projects oft_R in place when it runs
    _same_tensors(tmp_path / "theirs", tmp_path / "back")
    from_peft = max_diff(outputs(here.eval()), outputs(theirs))
    OBSERVED[case, "PEFT -> load_peft"] = (from_peft, _merged(here, theirs))
    OBSERVED[case, "gradients"] = (_gradients_agree(arch, tmp_path / "theirs", tmp_path), 0.0)
    assert to_peft <= ATOL and from_peft <= ATOL and OBSERVED[case, "gradients"][0] <= ATOL
    assert max(OBSERVED[case, d][1] for d in ("save_peft -> PEFT", "PEFT -> load_peft")) <= MERGED_ATOL


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_methods_both_ways(case: str, tmp_path: Path) -> None:
    arch, ours_cls, theirs_cls, kwargs = CASES[case]
    task = {"task_type": "SEQ_CLS"} if "modules_to_save" in kwargs else {}  # PEFT adds the classifier
    ours, _ = pz.adapt_model(fresh(arch), ours_cls(**copy.deepcopy(kwargs)))
    theirs = peft.get_peft_model(fresh(arch), theirs_cls()(**copy.deepcopy(kwargs), **task))
    round_trip(case, arch, ours, theirs, tmp_path, theirs.peft_config["default"].peft_type.value)


@pytest.mark.parametrize("case", sorted(LORA_CASES))
def test_lora_on_embeddings_and_convolutions_both_ways(case: str, tmp_path: Path) -> None:
    arch, kwargs = LORA_CASES[case]
    ours, _ = pz.adapt_model(fresh(arch), _ours_lora(kwargs))
    assert any(isinstance(m, (pz.LoRAEmbedding, pz.LoRAConv)) for m in ours.modules())
    theirs = peft.get_peft_model(fresh(arch), peft.LoraConfig(**kwargs))
    round_trip(case, arch, ours, theirs, tmp_path, "LORA")
    keys = read_peft(tmp_path / "ours")[1]
    assert any(k.endswith((".lora_embedding_A", ".c2.lora_A.weight")) for k in keys)


def test_adalora_schedule_travels_with_the_file(tmp_path: Path) -> None:
    """The budget schedule of the config is written as PEFT writes it, PEFT reads it back, and
    a load gives layers that carry it again (so saving once more writes the same config)."""
    schedule = {"target_r": 3, "total_step": 50, "tinit": 5, "tfinal": 7, "deltaT": 2, "beta1": 0.8}
    schedule |= {"beta2": 0.9, "orth_reg_weight": 0.3}
    config = AdaLoraConfig(init_r=6, lora_alpha=4, target_modules=["q_proj", "v_proj"], **schedule)
    ours, _ = pz.adapt_model(fresh("llama"), config)
    save_peft(ours, tmp_path / "a")
    written = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert {k: written[k] for k in schedule} == schedule
    theirs = peft.PeftModel.from_pretrained(fresh("llama"), tmp_path / "a")
    assert {k: getattr(theirs.peft_config["default"], k) for k in schedule} == schedule
    loaded, _ = load_peft(fresh("llama"), tmp_path / "a")
    save_peft(loaded, tmp_path / "b")
    again = json.loads((tmp_path / "b" / "adapter_config.json").read_text())
    assert {k: again[k] for k in schedule} == schedule
    by_hand = pz.AdaLoRALinear(nn.Linear(4, 4), 2)
    assert by_hand.schedule is None  # built without a config: save_peft falls back to PEFT's defaults
