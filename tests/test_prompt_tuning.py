"""Prompt tuning (peft_zoo.prompt, PromptTuningConfig through adapt_model) equals Hugging Face
PEFT's PROMPT_TUNING with identical prompt embeddings: logits, loss with labels, gradients of
the prompt, greedy generate, on BERT sequence classification, GPT-2 and a LLaMA-style model
with grouped-query attention (2 heads, 1 key/value head).

Max |difference| observed (float32, torch 2.13, transformers 5.23, peft 0.21.2): 0 for logits,
loss and prompt gradients on all three; generated tokens identical.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from peft_format_helpers import base  # noqa: E402

import peft_zoo as pz  # noqa: E402
from peft_zoo.injection.prompt_model import input_embeddings  # noqa: E402
from peft_zoo.prompt import IGNORE_INDEX, PromptEmbedding, extend_labels, fit_token_ids  # noqa: E402

TASK = {"bert": "SEQ_CLS", "gpt2": "CAUSAL_LM", "llama": "CAUSAL_LM"}
ARCHS = tuple(TASK)


def prompted(model: nn.Module, config: pz.PromptTuningConfig) -> pz.PromptTuningModel:
    wrapped, _ = pz.adapt_model(model, config)
    assert isinstance(wrapped, pz.PromptTuningModel)
    return wrapped


def pair(arch: str, n: int, seed: int) -> tuple[pz.PromptTuningModel, Any]:
    """(ours, PEFT's) on identical copies of one base, with the same random prompt."""
    ours = prompted(base(arch), pz.PromptTuningConfig(num_virtual_tokens=n))
    theirs: Any = peft.get_peft_model(
        base(arch), peft.PromptTuningConfig(task_type=TASK[arch], num_virtual_tokens=n)
    )
    weight = torch.randn(n, 16, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ours.prompt.get_parameter("weight").copy_(weight)
        theirs.prompt_encoder["default"].embedding.weight.copy_(weight)
    return ours, theirs


def batch(arch: str, b: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 64, (b, length), generator=g)
    mask = torch.ones(b, length, dtype=torch.long)
    mask[0, : length // 2] = 0  # left padding in the first row
    labels = torch.randint(0, 3, (b,), generator=g) if arch == "bert" else ids.clone()
    if arch != "bert":
        labels[0, : length // 2] = IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def run(model: nn.Module, inputs: dict[str, torch.Tensor], prompt: nn.Parameter) -> tuple[Any, torch.Tensor]:
    prompt.grad = None
    out = model(**inputs)
    out.loss.backward()
    assert prompt.grad is not None
    return out, prompt.grad.clone()


def max_diffs(arch: str, n: int, b: int, length: int, seed: int) -> dict[str, float]:
    ours, theirs = pair(arch, n, seed)
    inputs = batch(arch, b, length, seed)
    out_o, grad_o = run(ours, inputs, ours.prompt.get_parameter("weight"))
    out_t, grad_t = run(theirs, inputs, theirs.prompt_encoder["default"].embedding.weight)
    assert out_o.logits.shape == out_t.logits.shape
    return {
        "logits": (out_o.logits - out_t.logits).abs().max().item(),
        "loss": (out_o.loss - out_t.loss).abs().item(),
        "grad": (grad_o - grad_t).abs().max().item(),
    }


@pytest.mark.parametrize("arch", ARCHS)
def test_outputs_loss_and_gradients_equal_peft(arch: str) -> None:
    diffs = max_diffs(arch, n=3, b=2, length=5, seed=0)
    assert max(diffs.values()) <= 1e-6, f"{arch}: max |difference| against PEFT {diffs}"


@settings(max_examples=6, deadline=None)
@given(
    arch=st.sampled_from(ARCHS),
    n=st.integers(1, 5),
    b=st.integers(1, 3),
    length=st.integers(2, 6),
    seed=st.integers(0, 1000),
)
def test_equal_peft_drawn(arch: str, n: int, b: int, length: int, seed: int) -> None:
    diffs = max_diffs(arch, n, b, length, seed)
    assert max(diffs.values()) <= 1e-6, f"drawn {arch=} {n=} {b=} {length=} {seed=}: {diffs}"


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_greedy_generate_equals_peft(arch: str) -> None:
    ours, theirs = pair(arch, 4, seed=3)
    ids = torch.randint(1, 64, (2, 5), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding
    kw: dict[str, Any] = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    got = ours.generate(input_ids=ids, attention_mask=mask, **kw)
    want = theirs.generate(input_ids=ids, attention_mask=mask, **kw)
    assert torch.equal(got, want), f"{arch}: ours {got.tolist()} PEFT {want.tolist()}"
    assert torch.equal(got[:, :5], ids)
    assert "prepare_inputs_for_generation" not in vars(ours.base_model), "generate left its hook behind"


def test_only_the_prompt_trains_and_the_base_is_untouched() -> None:
    model = base("gpt2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wrapped = prompted(model, pz.PromptTuningConfig(num_virtual_tokens=2))
    params = [p for p in wrapped.parameters() if p.requires_grad]
    assert (
        [p for p in wrapped.parameters() if p.requires_grad]
        == params
        == [wrapped.prompt.get_parameter("weight")]
    )
    opt = torch.optim.SGD(params, lr=0.5)
    inputs = batch("gpt2", 2, 4, 0)
    wrapped(**inputs).loss.backward()
    opt.step()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a frozen base weight changed"


def test_seq_cls_trains_the_classifier_copy_as_peft_does() -> None:
    wrapped, params = pz.adapt_model(base("bert"), pz.PromptTuningConfig(num_virtual_tokens=2))
    names = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert names == {
        "prompt.weight",
        "base_model.classifier.trained_module.weight",
        "base_model.classifier.trained_module.bias",
    }
    assert len(params) == 3


def test_token_type_ids_are_extended_for_seq_cls() -> None:
    ours, theirs = pair("bert", 3, seed=5)
    inputs = batch("bert", 2, 5, 1)
    inputs["token_type_ids"] = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])
    with torch.no_grad():
        diff = (ours(**inputs).logits - theirs(**inputs).logits).abs().max().item()
    assert diff <= 1e-6, diff


def test_text_init_copies_the_token_embeddings() -> None:
    model = base("gpt2")
    table = input_embeddings(model).weight.detach().clone()
    config = pz.PromptTuningConfig(num_virtual_tokens=5, prompt_tuning_init="TEXT", init_token_ids=[7, 3])
    wrapped = prompted(model, config)
    assert torch.equal(wrapped.prompt.get_parameter("weight").detach(), table[[7, 3, 7, 3, 7]])


def test_sample_vocab_init_takes_rows_of_the_vocabulary() -> None:
    model = base("llama")
    table = input_embeddings(model).weight.detach()
    wrapped = prompted(model, pz.PromptTuningConfig(num_virtual_tokens=4, prompt_tuning_init="SAMPLE_VOCAB"))
    for row in wrapped.prompt.get_parameter("weight").detach():
        assert any(torch.equal(row, t) for t in table), "a sampled row is not a vocabulary embedding"


@given(ids=st.lists(st.integers(0, 50), min_size=1, max_size=6), total=st.integers(1, 12))
@settings(max_examples=30, deadline=None)
def test_fit_token_ids_cuts_or_repeats(ids: list[int], total: int) -> None:
    got = fit_token_ids(ids, total)
    assert len(got) == total
    assert got == [ids[i % len(ids)] for i in range(total)]


def test_shapes_of_the_helpers() -> None:
    prompt = PromptEmbedding(3, 4)
    assert prompt(2).shape == (2, 3, 4)
    labels = extend_labels(torch.tensor([[1, 2]]), 3)
    assert labels.tolist() == [[IGNORE_INDEX] * 3 + [1, 2]]
