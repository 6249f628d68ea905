"""Prefix tuning for sequence classification and with modules_to_save equals Hugging Face PEFT
0.21's PREFIX_TUNING with identical weights: BERT (whose forward takes no past_key_values, so PEFT
runs the backbone, pooler output, dropout and classifier itself), GPT-2 and a LLaMA with
grouped-query attention (their forward takes the cache); logits, loss (single-label, multi-label)
and the gradients of the prefix and of the classifier copy; PEFT's file format both ways, the
classifier (or a causal LM's lm_head) saved in full under base_model.<module>.<tensor>.

Max |difference| observed (float32, weights 0.5 N(0, 1)): without prefix_projection logits, loss
and every gradient 0 (BERT, GPT-2, LLaMA); with it logits 6e-8 / 2.4e-7 / 4.8e-7, gradients
1.5e-8 / 1.5e-7 / 1.8e-7 (PEFT runs the MLP on (B, n, D), peft_zoo on (n, D)); files
save_peft -> PEFT 0, PEFT -> load_peft 0 (with projection up to 6e-7); causal LMs with lm_head in
modules_to_save: outputs, gradients and files 0.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from peft_format_helpers import IDS, base, both_ways, cached_base  # noqa: E402

import peft_zoo as pz  # noqa: E402
from peft_zoo.testing import assert_model_unchanged, fingerprint  # noqa: E402

LABELS = torch.tensor([0, 2])
ARCHS = ["bert", "gpt2", "llama"]


def classifier(arch: str) -> nn.Module:
    """A fresh sequence classifier, 3 labels: the shared BERT, or GPT-2 / LLaMA built from the
    shared causal LMs' configs (pad token 0)."""
    if arch == "bert":
        return base("bert")
    config = copy.deepcopy(cached_base(arch).config)
    config.num_labels, config.pad_token_id = 3, 0
    cls = {
        "gpt2": transformers.GPT2ForSequenceClassification,
        "llama": transformers.LlamaForSequenceClassification,
    }
    torch.manual_seed(5)
    return cls[arch](config).eval()


def _peft_name(name: str) -> str:
    return name.replace("prompt_encoder.default.", "prompt.").replace(
        "modules_to_save.default.", "trained_module."
    )


def pair(arch: str, projection: bool = False, seed: int = 0, **extra: Any) -> tuple[Any, Any]:
    """(peft_zoo, PEFT) prefix-tuned sequence classifiers with the same random trained weights."""
    hidden = 8 if projection else None
    kw: dict[str, Any] = {
        "num_virtual_tokens": 3,
        "prefix_projection": projection,
        "encoder_hidden_size": hidden,
    }
    ours, _ = pz.adapt_model(classifier(arch), pz.PrefixTuningConfig(**kw, **extra))
    theirs = peft.get_peft_model(
        classifier(arch), peft.PrefixTuningConfig(task_type="SEQ_CLS", **kw, **extra)
    )
    return ours, same_weights(ours, theirs, seed)


def same_weights(ours: nn.Module, theirs: Any, seed: int) -> Any:
    """Give PEFT's trainable tensors random values and copy them into ``ours`` (same set of names)."""
    mine = {n: p for n, p in ours.named_parameters() if p.requires_grad}
    g = torch.Generator().manual_seed(seed)
    theirs_trained = {_peft_name(n): p for n, p in theirs.named_parameters() if p.requires_grad}
    assert sorted(mine) == sorted(theirs_trained)
    with torch.no_grad():
        for name, p in theirs_trained.items():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
            mine[name].copy_(p)
    return theirs


def grad_diffs(ours: nn.Module, theirs: Any) -> dict[str, float]:
    mine = dict(ours.named_parameters())
    diffs = {}
    for name, p in theirs.named_parameters():
        if p.requires_grad:
            grad = mine[_peft_name(name)].grad
            assert p.grad is not None and grad is not None, name
            assert grad.abs().max() > 0, name  # it really reaches the loss
            diffs[name] = (grad - p.grad).abs().max().item()
    return diffs


def run_both(ours: nn.Module, theirs: Any, **inputs: Any) -> dict[str, float]:
    out_o, out_t = ours(input_ids=IDS, **inputs), theirs(input_ids=IDS, **inputs)
    out_o.loss.backward()
    out_t.loss.backward()
    diffs = {"logits": (out_o.logits - out_t.logits).abs().max().item()}
    diffs["loss"] = (out_o.loss - out_t.loss).abs().item()
    return diffs | grad_diffs(ours, theirs)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("projection", [False, True])
def test_outputs_loss_and_gradients_equal_peft(arch: str, projection: bool) -> None:
    ours, theirs = pair(arch, projection)
    mask = torch.ones_like(IDS)
    mask[1, :2] = 0
    diffs = run_both(ours, theirs, attention_mask=mask, labels=LABELS)
    # projection: PEFT runs the MLP on (B, n, D), peft_zoo once on (n, D): float rounding only
    assert max(diffs.values()) <= (1e-5 if projection else 1e-6), f"{arch} {projection}: {diffs}"
    plain = classifier(arch)(input_ids=IDS, attention_mask=mask).logits
    assert (plain - ours(input_ids=IDS, attention_mask=mask).logits).abs().max() > 1e-4  # it acts


@settings(max_examples=6, deadline=None)
@given(
    n=st.integers(1, 4),
    pad=st.lists(st.integers(0, 4), min_size=2, max_size=2),
    shift=st.integers(0, 3),
    multi=st.booleans(),
)
def test_bert_inputs_drawn_equal_peft(n: int, pad: list[int], shift: int, multi: bool) -> None:
    """BERT with drawn n, padding, token types, shifted position_ids and the multi-label loss."""
    ours, _ = pz.adapt_model(base("bert"), pz.PrefixTuningConfig(num_virtual_tokens=n))
    theirs = same_weights(
        ours,
        peft.get_peft_model(base("bert"), peft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=n)),
        n,
    )
    mask = torch.ones_like(IDS)
    for row, k in enumerate(pad):
        mask[row, :k] = 0
    types = (torch.arange(IDS.shape[1]) >= 4).long().expand_as(IDS)
    positions = (torch.arange(IDS.shape[1]) + shift).expand_as(IDS)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]) if multi else LABELS
    inputs = {"attention_mask": mask, "token_type_ids": types, "position_ids": positions, "labels": labels}
    diffs = run_both(ours, theirs, **inputs)
    assert max(diffs.values()) <= 1e-6, diffs


def test_bert_tuples_when_return_dict_is_false() -> None:
    ours, theirs = pair("bert", seed=3)
    got = ours(input_ids=IDS, labels=LABELS, return_dict=False)
    want = theirs(input_ids=IDS, labels=LABELS, return_dict=False)
    assert isinstance(got, tuple) and len(got) == len(want)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


@torch.no_grad()
def logits(model: nn.Module) -> torch.Tensor:
    mask = torch.ones_like(IDS)
    mask[0, :1] = 0
    return model(input_ids=IDS, attention_mask=mask).logits


@pytest.mark.parametrize("projection", [False, True])
def test_bert_file_format_both_ways(projection: bool, tmp_path: Path) -> None:
    ours, theirs = pair("bert", projection, seed=4)
    d1, d2 = both_ways(ours, theirs, "bert", tmp_path, "PREFIX_TUNING", logits)
    assert max(d1, d2) <= 1e-6, f"save_peft -> PEFT {d1}, PEFT -> load_peft {d2}"
    data = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert data["task_type"] == "SEQ_CLS" and data["modules_to_save"] == ["classifier"]
    plain = base("bert")
    plain.classifier.load_state_dict(ours.base_model.classifier.trained_module.state_dict())
    assert (logits(plain) - logits(ours)).abs().max() > 1e-4  # the prefix matters, not only the head


def file_round_trips(ours: nn.Module, theirs: Any, build: Any, tmp_path: Path) -> tuple[float, float]:
    """``both_ways`` for models ``base(arch)`` does not build (fresh bases from ``build()``)."""
    ours.eval()
    theirs.eval()
    pz.save_peft(ours, tmp_path / "ours")
    loaded_in_peft = peft.PeftModel.from_pretrained(build(), tmp_path / "ours").eval()
    theirs.save_pretrained(tmp_path / "theirs")
    loaded_here, _ = pz.load_peft(build(), tmp_path / "theirs")
    to_peft = (logits(ours) - logits(loaded_in_peft)).abs().max().item()
    return to_peft, (logits(loaded_here.eval()) - logits(theirs)).abs().max().item()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_decoder_classifier_files_both_ways(arch: str, tmp_path: Path) -> None:
    ours, theirs = pair(arch, seed=6)
    d1, d2 = file_round_trips(ours, theirs, lambda: classifier(arch), tmp_path)
    assert max(d1, d2) <= 1e-6, f"{arch}: save_peft -> PEFT {d1}, PEFT -> load_peft {d2}"


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_causal_lm_with_lm_head_saved_equals_peft_both_ways(arch: str, tmp_path: Path) -> None:
    kw: dict[str, Any] = {"num_virtual_tokens": 2, "modules_to_save": ["lm_head"]}
    ours, _ = pz.adapt_model(base(arch), pz.PrefixTuningConfig(**kw))
    theirs = same_weights(
        ours, peft.get_peft_model(base(arch), peft.PrefixTuningConfig(task_type="CAUSAL_LM", **kw)), 7
    )
    diffs = run_both(ours, theirs, labels=IDS)
    assert max(diffs.values()) <= 1e-6, diffs
    d1, d2 = both_ways(ours, theirs, arch, tmp_path, "PREFIX_TUNING", logits)
    assert max(d1, d2) <= 1e-6, f"{arch}: save_peft -> PEFT {d1}, PEFT -> load_peft {d2}"


class NoHead(nn.Module):
    """A BERT backbone with a differently named head: no classifier / score child."""

    def __init__(self) -> None:
        super().__init__()
        self.bert = base("bert").bert
        self.out = nn.Linear(16, 3)

    def get_input_embeddings(self) -> nn.Module:
        return self.bert.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.out(self.bert(input_ids, **kwargs).pooler_output)


def test_a_classifier_without_a_head_is_refused_unchanged() -> None:
    model = NoHead()
    model.config = model.bert.config
    before = fingerprint(model)
    with pytest.raises(pz.InjectionError, match="no classifier head"):
        pz.adapt_model(model, pz.PrefixTuningConfig(num_virtual_tokens=2, task_type="SEQ_CLS"))
    assert_model_unchanged(model, before, what="a refused prefix")


def test_a_backbone_that_takes_no_cache_is_refused_unchanged() -> None:
    model = base("bert")
    setattr(model.bert, "forward", lambda *a, **k: None)  # noqa: B010  # a forward without past_key_values
    before = fingerprint(model)
    with pytest.raises(pz.InjectionError, match="past_key_values"):
        pz.adapt_model(model, pz.PrefixTuningConfig(num_virtual_tokens=2))
    assert_model_unchanged(model, before, what="a refused prefix")


def test_generate_is_refused_for_a_classifier() -> None:
    ours, _ = pair("bert")
    with pytest.raises(ValueError, match="causal LM"):
        ours.generate(input_ids=IDS, max_new_tokens=2)


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (
            lambda s: s.update({"base_model.classifier.weight": torch.zeros(2, 16)}),
            "classifier.weight: shape",
        ),
        (
            lambda s: s.update({"base_model.bert.pooler.dense.weight": torch.zeros(16, 16)}),
            "unexpected tensor",
        ),
        (lambda s: s.update({"base_model.classifier.bias": torch.full((3,), float("nan"))}), "finite"),
        (lambda s: s.update({"base_model.classifier.nothing": torch.zeros(3)}), "no tensor 'nothing'"),
    ],
)
def test_bad_classifier_tensors_are_refused_unchanged(edit: Any, words: str, tmp_path: Path) -> None:
    from peft_format_helpers import edited, refused

    ours, _ = pair("bert")
    pz.save_peft(ours, tmp_path / "a")
    refused(edited(tmp_path / "a", tmp_path / "b", tensors=edit), words)


def test_bad_task_type_in_a_file_is_refused(tmp_path: Path) -> None:
    from peft_format_helpers import edited, refused

    ours, _ = pair("bert")
    pz.save_peft(ours, tmp_path / "a")
    path = edited(tmp_path / "a", tmp_path / "b", config=lambda d: d.update(task_type="TOKEN_CLS"))
    refused(path, "task_type")
