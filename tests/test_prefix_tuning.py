"""Prefix tuning on transformers decoders (PrefixTuningConfig through adapt_model) equals Hugging
Face PEFT's PREFIX_TUNING with identical weights, with and without prefix_projection, on GPT-2 and
a LLaMA with grouped-query attention: logits, loss, gradients of every prefix parameter; greedy
generate; PEFT's file format both ways (PEFT stores P, the keys/values, only). Sequence
classification and modules_to_save: tests/test_prefix_tuning_seqcls.py.

Max |difference| observed (float32): logits 0 (no projection) / 4.5e-8 (projection), loss 0,
gradients 0 / 1.9e-9; files: save_peft -> PEFT 0, PEFT -> load_peft 0 / 6e-8 (PEFT's MLP run
against its stored output P); greedy tokens identical.
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
from peft_zoo.injection.prefix_model import adapt_prefix_tuning  # noqa: E402
from peft_zoo.interop import PeftFormatError  # noqa: E402
from peft_zoo.testing import assert_model_unchanged, fingerprint  # noqa: E402

MASK = torch.ones_like(IDS)
ARCHS = ["gpt2", "llama"]


def pair(arch: str, projection: bool, seed: int = 0) -> tuple[pz.PrefixTuningModel, Any]:
    hidden = 8 if projection else None
    config = pz.PrefixTuningConfig(
        num_virtual_tokens=3, prefix_projection=projection, encoder_hidden_size=hidden
    )
    ours, _ = pz.adapt_model(base(arch), config)
    assert isinstance(ours, pz.PrefixTuningModel)
    theirs = peft.get_peft_model(
        base(arch),
        peft.PrefixTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=3,
            prefix_projection=projection,
            encoder_hidden_size=hidden,
        ),
    )
    torch.manual_seed(seed)
    fresh = {k: torch.randn_like(v) for k, v in ours.prompt.state_dict().items()}
    ours.prompt.load_state_dict(fresh)
    theirs.prompt_encoder["default"].load_state_dict(fresh)  # same names and shapes as PEFT's
    return ours, theirs


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("projection", [False, True])
def test_outputs_and_gradients_equal_peft(arch: str, projection: bool) -> None:
    ours, theirs = pair(arch, projection)
    mask = MASK.clone()
    mask[1, :2] = 0
    out_o = ours(input_ids=IDS, attention_mask=mask, labels=IDS)
    out_t = theirs(input_ids=IDS, attention_mask=mask, labels=IDS)
    out_o.loss.backward()
    out_t.loss.backward()
    diffs = {
        "logits": (out_o.logits - out_t.logits).abs().max().item(),
        "loss": (out_o.loss - out_t.loss).abs().item(),
    }
    mine = dict(ours.prompt.named_parameters())
    for name, p in theirs.prompt_encoder["default"].named_parameters():
        grad = mine[name].grad
        assert p.grad is not None and grad is not None, name
        assert grad.abs().max() > 0, name  # the prefix really reaches the loss
        diffs[name] = (grad - p.grad).abs().max().item()
    assert max(diffs.values()) <= 1e-6, f"{arch} {projection}: {diffs}"


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generate_equals_peft(arch: str) -> None:
    ours, theirs = pair(arch, False, seed=2)
    kw: dict[str, Any] = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    mask = MASK.clone()
    mask[1, :3] = 0  # left padding
    got = ours.generate(input_ids=IDS, attention_mask=mask, **kw)
    want = theirs.generate(input_ids=IDS, attention_mask=mask, **kw)
    plain_model: Any = base(arch)
    plain = plain_model.generate(input_ids=IDS, attention_mask=mask, **kw)
    assert torch.equal(got, want), (got.tolist(), want.tolist())
    assert not torch.equal(got, plain)  # the prefix changed what was generated


@torch.no_grad()
def logits(model: nn.Module) -> torch.Tensor:
    return model(input_ids=IDS, attention_mask=MASK).logits


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("projection", [False, True])
def test_file_format_both_ways(arch: str, projection: bool, tmp_path: Path) -> None:
    ours, theirs = pair(arch, projection, seed=4)
    d1, d2 = both_ways(ours, theirs, arch, tmp_path, "PREFIX_TUNING", logits)
    assert max(d1, d2) <= 1e-6, f"{arch}: save_peft -> PEFT {d1}, PEFT -> load_peft {d2}"


def test_load_refuses_a_prefix_of_another_shape(tmp_path: Path) -> None:
    ours, _ = pair("gpt2", False)
    pz.save_peft(ours, tmp_path / "a")
    model = base("llama")  # 1 key/value head of 8: another width
    before = fingerprint(model)
    with pytest.raises(PeftFormatError, match=r"token_dim|prompt_embeddings"):
        pz.load_peft(model, tmp_path / "a")
    assert_model_unchanged(model, before, what="a refused prefix")


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"num_virtual_tokens": 0}, ValueError, "num_virtual_tokens"),
        ({"encoder_hidden_size": 0}, ValueError, "encoder_hidden_size"),
        ({"prefix_projection": 1}, TypeError, "prefix_projection"),
        ({"task_type": "TOKEN_CLS"}, ValueError, "task_type"),
        ({"modules_to_save": "lm_head"}, TypeError, "modules_to_save"),
    ],
)
def test_bad_configs_are_refused(kwargs: dict[str, object], error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        pz.PrefixTuningConfig(**kwargs)  # type: ignore[arg-type]  # deliberately wrong values


@pytest.mark.parametrize("kwargs", [{"num_layers": 5}, {"token_dim": 8}, {"num_attention_heads": 4}])
def test_shape_fields_that_disagree_with_the_model_are_refused(kwargs: dict[str, int]) -> None:
    model = base("gpt2")
    before = fingerprint(model)
    with pytest.raises(pz.InjectionError, match=next(iter(kwargs))):
        pz.adapt_model(model, pz.PrefixTuningConfig(num_virtual_tokens=2, **kwargs))  # type: ignore[arg-type]  # ints
    assert_model_unchanged(model, before, what="a refused prefix config")


def test_a_model_without_layer_counts_is_refused_unchanged() -> None:
    model = base("gpt2")
    model.config.n_head = 3  # 16 wide: no whole head width
    before = fingerprint(model)
    with pytest.raises(pz.InjectionError, match="cannot read layers"):
        pz.adapt_model(model, pz.PrefixTuningConfig(num_virtual_tokens=2))
    assert_model_unchanged(model, before, what="a refused prefix")


def test_only_the_prefix_trains() -> None:
    model, params = pz.adapt_model(base("llama"), pz.PrefixTuningConfig(num_virtual_tokens=2))
    assert isinstance(model, pz.PrefixTuningModel)
    assert {id(p) for p in params} == {id(p) for p in model.prompt.parameters()}
    assert model.prompt.embedding.weight.shape == (2, 2 * 2 * 8)  # L=2, H_kv=1, d_head=8
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"prompt.embedding.weight"}


def test_a_wrapped_model_is_refused() -> None:
    model, _ = pz.adapt_model(base("gpt2"), pz.PrefixTuningConfig(num_virtual_tokens=2))
    with pytest.raises(pz.InjectionError, match="already has a prefix"):
        pz.adapt_model(model, pz.PrefixTuningConfig(num_virtual_tokens=2))
    with pytest.raises(TypeError, match="PrefixTuningConfig"):
        adapt_prefix_tuning(model.base_model, pz.PromptTuningConfig(num_virtual_tokens=2))  # type: ignore[arg-type]  # wrong config
