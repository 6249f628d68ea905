"""Prompt tuning in PEFT's file format, both directions, and the refusals.

save_peft -> peft.PeftModel.from_pretrained, and PEFT's save_pretrained -> load_peft, on BERT
sequence classification (with the classifier saved in full, as PEFT does), GPT-2 and a
LLaMA-style model with grouped-query attention: equal outputs (max |difference| 0 observed,
both directions, all three).
Bad configs and bad files raise a clear error and leave the model exactly as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from peft_format_helpers import IDS, base  # noqa: E402

import peft_zoo as pz  # noqa: E402
from peft_zoo.interop import PeftFormatError  # noqa: E402
from peft_zoo.testing import assert_model_unchanged, fingerprint  # noqa: E402

TASK = {"bert": "SEQ_CLS", "gpt2": "CAUSAL_LM", "llama": "CAUSAL_LM"}
MASK = torch.ones_like(IDS)


@torch.no_grad()
def outputs(model: nn.Module) -> torch.Tensor:
    return model(input_ids=IDS, attention_mask=MASK).logits


def trained(arch: str) -> nn.Module:
    """A peft_zoo prompt-tuned model with a non-trivial prompt and classifier copy."""
    model, params = pz.adapt_model(base(arch), pz.PromptTuningConfig(num_virtual_tokens=3))
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("arch", list(TASK))
def test_save_peft_loads_in_peft(arch: str, tmp_path: Path) -> None:
    ours = trained(arch).eval()
    pz.save_peft(ours, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["task_type"] == TASK[arch]
    theirs = peft.PeftModel.from_pretrained(base(arch), tmp_path).eval()
    diff = (outputs(ours) - outputs(theirs)).abs().max().item()
    assert diff <= 1e-6, f"{arch}: save_peft -> PEFT, max |difference| {diff}"


@pytest.mark.parametrize("arch", list(TASK))
def test_peft_save_pretrained_loads_in_peft_zoo(arch: str, tmp_path: Path) -> None:
    theirs = peft.get_peft_model(
        base(arch), peft.PromptTuningConfig(task_type=TASK[arch], num_virtual_tokens=4)
    )
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in theirs.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g))
    theirs.save_pretrained(tmp_path)
    theirs.eval()
    ours, params = pz.load_peft(base(arch), tmp_path)
    assert isinstance(ours, pz.PromptTuningModel)
    assert ours.prompt.get_parameter("weight") in params
    diff = (outputs(ours.eval()) - outputs(theirs)).abs().max().item()
    assert diff <= 1e-6, f"{arch}: PEFT -> load_peft, max |difference| {diff}"


def test_round_trip_through_our_own_files(tmp_path: Path) -> None:
    ours = trained("llama").eval()
    pz.save_peft(ours, tmp_path)
    again, _ = pz.load_peft(base("llama"), tmp_path)
    assert torch.equal(outputs(ours), outputs(again.eval()))


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"num_virtual_tokens": 0}, ValueError, "num_virtual_tokens"),
        ({"num_virtual_tokens": -2}, ValueError, "num_virtual_tokens"),
        ({"num_virtual_tokens": 2.0}, TypeError, "num_virtual_tokens"),
        ({"num_virtual_tokens": True}, TypeError, "num_virtual_tokens"),
        ({"prompt_tuning_init": "TEXT"}, ValueError, "init_token_ids"),
        ({"prompt_tuning_init": "random"}, ValueError, "prompt_tuning_init"),
        ({"init_token_ids": [1, 2]}, ValueError, "init_token_ids"),
        ({"prompt_tuning_init": "TEXT", "init_token_ids": ["a"]}, TypeError, "init_token_ids"),
        ({"num_transformer_submodules": 2}, ValueError, "num_transformer_submodules"),
        ({"task_type": "TOKEN_CLS"}, ValueError, "task_type"),
        ({"modules_to_save": "classifier"}, TypeError, "modules_to_save"),
    ],
)
def test_bad_configs_are_refused(kwargs: dict[str, object], error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        pz.PromptTuningConfig(**kwargs)  # type: ignore[arg-type]  # deliberately wrong types


def test_a_field_set_later_is_checked_and_nothing_changes() -> None:
    model = base("gpt2")
    before = fingerprint(model)
    config = pz.PromptTuningConfig(num_virtual_tokens=2)
    config.num_virtual_tokens = 0
    with pytest.raises(ValueError, match="num_virtual_tokens"):
        pz.adapt_model(model, config)
    assert_model_unchanged(model, before, what="adapt_model with num_virtual_tokens=0")


@pytest.mark.parametrize(
    ("config", "words"),
    [
        (pz.PromptTuningConfig(num_virtual_tokens=2, token_dim=8), "token_dim"),
        (pz.PromptTuningConfig(prompt_tuning_init="TEXT", init_token_ids=[1, 999]), "vocabulary"),
        (pz.PromptTuningConfig(modules_to_save=["nonexistent"]), "modules_to_save"),
    ],
)
def test_configs_that_do_not_fit_the_model_change_nothing(config: pz.PromptTuningConfig, words: str) -> None:
    model = base("bert")
    before = fingerprint(model)
    with pytest.raises((ValueError, pz.InjectionError), match=words):
        pz.adapt_model(model, config)
    assert_model_unchanged(model, before, what=f"adapt_model refused ({words})")


def test_a_model_without_input_embeddings_is_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    before = fingerprint(model)
    with pytest.raises(pz.InjectionError, match="input embeddings"):
        pz.adapt_model(model, pz.PromptTuningConfig(num_virtual_tokens=2, task_type="CAUSAL_LM"))
    assert_model_unchanged(model, before, what="adapt_model on a model without embeddings")


def test_unknown_task_and_double_prompt_are_refused() -> None:
    with pytest.raises(pz.InjectionError, match="task_type"):
        pz.adapt_model(base("bert").get_submodule("bert"), pz.PromptTuningConfig(num_virtual_tokens=2))
    wrapped, _ = pz.adapt_model(base("gpt2"), pz.PromptTuningConfig(num_virtual_tokens=2))
    with pytest.raises(pz.InjectionError, match="already has a prompt"):
        pz.adapt_model(wrapped, pz.PromptTuningConfig(num_virtual_tokens=2))


def _edit(
    path: Path, config: dict[str, object] | None = None, tensors: dict[str, torch.Tensor] | None = None
) -> None:
    if config is not None:
        data = json.loads((path / "adapter_config.json").read_text())
        data.update(config)
        (path / "adapter_config.json").write_text(json.dumps(data))
    if tensors is not None:
        import safetensors.torch

        safetensors.torch.save_file(tensors, str(path / "adapter_model.safetensors"))


@pytest.mark.parametrize(
    ("config", "tensors", "words"),
    [
        ({"num_virtual_tokens": 5}, None, "shape"),
        ({"num_virtual_tokens": "3"}, None, "num_virtual_tokens"),
        ({"token_dim": 32}, None, "token_dim"),
        ({"num_transformer_submodules": 2}, None, "num_transformer_submodules"),
        ({"future_option": True}, None, "unknown fields"),
        (None, {"prompt_embeddings": torch.full((3, 16), float("nan"))}, "NaN"),
        (None, {"other": torch.zeros(3, 16)}, "missing tensor"),
        (
            None,
            {"prompt_embeddings": torch.zeros(3, 16), "base_model.lm_head.weight": torch.zeros(64, 16)},
            "unexpected",
        ),
    ],
)
def test_bad_files_are_refused_and_change_nothing(
    config: dict[str, object] | None, tensors: dict[str, torch.Tensor] | None, words: str, tmp_path: Path
) -> None:
    pz.save_peft(trained("gpt2"), tmp_path)
    _edit(tmp_path, config, tensors)
    model = base("gpt2")
    before = fingerprint(model)
    with pytest.raises(PeftFormatError, match=words):
        pz.load_peft(model, tmp_path)
    assert_model_unchanged(model, before, what=f"load_peft refused ({words})")


def test_save_refuses_another_task_type(tmp_path: Path) -> None:
    with pytest.raises(PeftFormatError, match="task_type"):
        pz.save_peft(trained("gpt2"), tmp_path, task_type="SEQ_CLS")
    assert not (tmp_path / "adapter_config.json").exists()
