"""P-tuning (peft_zoo.ptuning, PromptEncoderConfig through adapt_model) equals Hugging Face
PEFT's P_TUNING with identical encoder weights (MLP and LSTM): logits, loss, gradients of every
encoder parameter; greedy generate; PEFT's file format both ways (PEFT stores P = f(E) only).

Max |difference| observed (float32): 0 for logits, loss and every gradient, MLP and LSTM;
files both ways: at most 6e-8 (the encoder run in the model against its stored output P).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from peft_format_helpers import IDS, base, both_ways  # noqa: E402

import peft_zoo as pz  # noqa: E402

TASK = {"bert": "SEQ_CLS", "gpt2": "CAUSAL_LM", "llama": "CAUSAL_LM"}
MASK = torch.ones_like(IDS)


def pair(arch: str, kind: str, seed: int = 0) -> tuple[pz.PromptTuningModel, Any]:
    config = pz.PromptEncoderConfig(
        num_virtual_tokens=3, encoder_reparameterization_type=kind, encoder_hidden_size=8
    )
    ours, _ = pz.adapt_model(base(arch), config)
    assert isinstance(ours, pz.PromptTuningModel)
    theirs = peft.get_peft_model(
        base(arch),
        peft.PromptEncoderConfig(
            task_type=TASK[arch],
            num_virtual_tokens=3,
            encoder_reparameterization_type=kind,
            encoder_hidden_size=8,
        ),
    )
    torch.manual_seed(seed)
    fresh = pz.PromptEncoder(3, 16, encoder_type=kind, hidden_size=8).state_dict()
    ours.prompt.load_state_dict(fresh)
    theirs.prompt_encoder["default"].load_state_dict(fresh)
    return ours, theirs


def labels_for(arch: str) -> torch.Tensor:
    return torch.tensor([0, 2]) if arch == "bert" else IDS.clone()


@pytest.mark.parametrize("arch", list(TASK))
@pytest.mark.parametrize("kind", ["MLP", "LSTM"])
def test_outputs_and_gradients_equal_peft(arch: str, kind: str) -> None:
    ours, theirs = pair(arch, kind)
    out_o = ours(input_ids=IDS, attention_mask=MASK, labels=labels_for(arch))
    out_t = theirs(input_ids=IDS, attention_mask=MASK, labels=labels_for(arch))
    out_o.loss.backward()
    out_t.loss.backward()
    diffs = {
        "logits": (out_o.logits - out_t.logits).abs().max().item(),
        "loss": (out_o.loss - out_t.loss).abs().item(),
    }
    mine = dict(ours.prompt.named_parameters())
    for name, p in theirs.prompt_encoder["default"].named_parameters():
        assert p.grad is not None and mine[name].grad is not None, name
        diffs[name] = (mine[name].grad - p.grad).abs().max().item()
    assert max(diffs.values()) <= 1e-6, f"{arch} {kind}: {diffs}"


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_greedy_generate_equals_peft(arch: str) -> None:
    ours, theirs = pair(arch, "MLP", seed=2)
    kw: dict[str, Any] = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    mask = MASK.clone()
    mask[1, :3] = 0  # left padding
    got = ours.generate(input_ids=IDS, attention_mask=mask, **kw)
    want = theirs.generate(input_ids=IDS, attention_mask=mask, **kw)
    assert torch.equal(got, want), (got.tolist(), want.tolist())


@torch.no_grad()
def logits(model: nn.Module) -> torch.Tensor:
    return model(input_ids=IDS, attention_mask=MASK).logits


@pytest.mark.parametrize("arch", list(TASK))
def test_file_format_both_ways(arch: str, tmp_path: Path) -> None:
    ours, theirs = pair(arch, "MLP", seed=4)
    d1, d2 = both_ways(ours, theirs, arch, tmp_path, "P_TUNING", logits)
    assert max(d1, d2) <= 1e-6, f"{arch}: save_peft -> PEFT {d1}, PEFT -> load_peft {d2}"


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"num_virtual_tokens": 0}, ValueError, "num_virtual_tokens"),
        ({"encoder_reparameterization_type": "GRU"}, ValueError, "encoder_reparameterization_type"),
        ({"encoder_hidden_size": 0}, ValueError, "encoder_hidden_size"),
        ({"encoder_dropout": 1.5}, ValueError, "encoder_dropout"),
        ({"encoder_num_layers": "2"}, TypeError, "encoder_num_layers"),
    ],
)
def test_bad_configs_are_refused(kwargs: dict[str, object], error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        pz.PromptEncoderConfig(**kwargs)  # type: ignore[arg-type]  # deliberately wrong values


def test_only_the_encoder_trains() -> None:
    model, params = pz.adapt_model(base("gpt2"), pz.PromptEncoderConfig(num_virtual_tokens=2))
    assert isinstance(model, pz.PromptTuningModel)
    assert {id(p) for p in params} == {id(p) for p in model.prompt.parameters()}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"prompt.{n}" for n, _ in model.prompt.named_parameters()
    }
