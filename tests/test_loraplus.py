"""LoRA+: B at ``ratio`` times A's learning rate, grouped exactly as PEFT's
``create_loraplus_optimizer`` groups them.

Without PEFT: the group rules on peft_zoo models (LoRA, DoRA, fused, batched, IA³, trained
biases and LayerNorms) and one SGD step, whose update is ``lr * ratio * grad`` for B and
``lr * grad`` for A. With the ``hf`` extra: the same small BERT adapted by peft_zoo and by
PEFT (LoRA and DoRA, a classifier in modules_to_save, trained biases), stepped three times by
AdamW with weight decay through each library's LoRA+ optimizer on the same gradients, ends with
bit-identical parameters and the same param groups (rates, weight decays, members in order);
and on a PEFT model (LoRA on an Embedding and LayerNorm copies included) our groups are PEFT's,
tensor for tensor.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import peft_zoo as pz
from peft_zoo.dora import DoRALinear
from peft_zoo.loraplus import (
    LORAPLUS_GROUPS,
    create_loraplus_optimizer,
    loraplus_groups,
    loraplus_param_groups,
)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(8, 8)
        self.v = nn.Linear(8, 8)
        self.fc = nn.Linear(8, 12)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(torch.tanh(self.q(x)) + self.v(x))
        return self.head(torch.relu(self.fc(h)))


def names(groups: dict) -> dict[str, list[str]]:
    return {g: [n for n, _ in members] for g, members in groups.items()}


def test_group_rules_on_peft_zoo_layers() -> None:
    torch.manual_seed(0)
    model = Block()
    pz.adapt_model(model, pz.LoraConfig(rank=2, target_modules=["q"], use_dora=True, bias="lora_only"))
    pz.inject_lora(model, ["v"], rank=2)
    pz.inject_ia3(model, ["fc"])  # injectors freeze every non-adapter parameter, q.base.bias included
    model.q.base.bias.requires_grad_(True)  # a trained bias (bias="lora_only" for q)
    model.norm.requires_grad_(True)  # a trained LayerNorm
    got = names(loraplus_groups(model))
    assert got == {
        "A": ["q.lora_A", "v.lora_A", "fc.scale"],  # IA³ vectors: A (PEFT stores them as matrices)
        "embedding": [],
        "B": ["q.lora_B", "q.magnitude", "v.lora_B"],  # DoRA's magnitude is 1-D: B
        "B_no_decay": ["q.base.bias", "norm.weight", "norm.bias"],  # biases and LayerNorm: no decay
    }, got
    assert isinstance(model.q, DoRALinear)


def test_fused_and_batched_lora_b_are_recognised() -> None:
    torch.manual_seed(0)
    fused = nn.Sequential(nn.Linear(4, 6))
    pz.adapt_model(
        fused, pz.LoraConfig(rank=2, target_modules=["0"], target_parts={"0": [True, False, True]})
    )
    batched, _ = pz.inject_batched_lora(nn.Sequential(nn.Linear(4, 6)), ["0"], num_adapters=3, rank=2)
    for model in (fused, batched):
        got = names(loraplus_groups(model))
        assert got["A"] == ["0.lora_A"] and got["B"] == ["0.lora_B"], got


def test_param_groups_carry_the_rates_in_peft_order() -> None:
    model, _ = pz.adapt_model(Block(), pz.LoraConfig(rank=2, target_modules=["q"], bias="lora_only"))
    groups = loraplus_param_groups(model, 1e-3, 16, weight_decay=0.1, lr_embedding=1e-5)
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in groups] == [
        (1e-3, 0.1, 1),
        (1e-5, 0.1, 0),
        (1e-3 * 16, 0.1, 1),
        (1e-3 * 16, 0.0, 1),
    ]
    assert groups[0]["params"][0] is model.q.lora_A and groups[2]["params"][0] is model.q.lora_B
    assert len(LORAPLUS_GROUPS) == 4


def test_one_sgd_step_moves_b_ratio_times_faster() -> None:
    torch.manual_seed(0)
    model, _ = pz.adapt_model(Block(), pz.LoraConfig(rank=2, target_modules=["q", "v"], use_dora=True))
    with torch.no_grad():
        for _, p in pz.adapter_named_parameters(model):
            p.add_(0.1 * torch.randn_like(p))
    lr, ratio = 0.01, 8.0
    opt = create_loraplus_optimizer(model, torch.optim.SGD, lr=lr, loraplus_lr_ratio=ratio)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randn(5, 8)
    model(x).square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    for n, p in model.named_parameters():
        if n not in grads:
            assert torch.equal(p, before[n]), f"{n} is frozen and must not move"
            continue
        rate = lr * ratio if n.endswith(("lora_B", "magnitude")) else lr
        torch.testing.assert_close(p.detach(), before[n] - rate * grads[n], msg=f"{n}: rate {rate}")


def test_bad_arguments_raise_clearly() -> None:
    model, _ = pz.adapt_model(Block(), pz.LoraConfig(rank=2, target_modules=["q"]))
    for kwargs, error, match in [
        ({"lr": -1.0, "ratio": 16}, ValueError, r"lr must be a finite number >= 0"),
        ({"lr": 1e-3, "ratio": 0}, ValueError, r"ratio \(loraplus_lr_ratio\) must be a finite number > 0"),
        ({"lr": 1e-3, "ratio": float("inf")}, ValueError, "ratio"),
        ({"lr": 1e-3, "ratio": 16, "weight_decay": float("nan")}, ValueError, "weight_decay"),
        ({"lr": "fast", "ratio": 16}, TypeError, "lr must be a number"),
        ({"lr": 1e-3, "ratio": True}, TypeError, "ratio"),
    ]:
        with pytest.raises(error, match=match):
            loraplus_param_groups(model, **kwargs)
    with pytest.raises(ValueError, match="no trainable parameters"):
        loraplus_param_groups(Block().requires_grad_(False), 1e-3, 16)
    with pytest.raises(TypeError, match=r"optimizer_cls must be a torch\.optim\.Optimizer subclass"):
        create_loraplus_optimizer(model, "adamw", lr=1e-3, loraplus_lr_ratio=16)


# ----------------------------------------------------------------------------- against PEFT


def bert() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=16,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.BertForSequenceClassification(config).eval()


def peft_name(ours: str) -> str:
    """A peft_zoo parameter name as PEFT names the same tensor."""
    for pattern, repl in [
        (r"\.lora_([AB])$", r".lora_\1.default.weight"),
        (r"\.magnitude$", ".lora_magnitude_vector.default.weight"),
        (r"\.base\.", ".base_layer."),
        (r"\.trained_module\.", ".modules_to_save.default."),
    ]:
        ours = re.sub(pattern, repl, ours)
    return "base_model.model." + ours


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_training_with_peft_s_optimizer_and_ours_ends_equal(use_dora: bool) -> None:
    peft = pytest.importorskip("peft")
    from peft.optimizers import create_loraplus_optimizer as peft_create

    from peft_zoo.interop.peft_config import peft_dict_from_config

    base = bert()
    config = pz.LoraConfig(
        rank=2,
        alpha=4,
        target_modules=["query", "value", "intermediate.dense"],
        modules_to_save=["classifier"],
        bias="lora_only",
        use_dora=use_dora,
    )
    ours, _ = pz.adapt_model(copy.deepcopy(base), config)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**peft_dict_from_config(config)))
    mine = dict(ours.named_parameters())
    other = dict(theirs.named_parameters())
    trainable = [n for n, p in mine.items() if p.requires_grad]
    assert sorted(peft_name(n) for n in trainable) == sorted(n for n, p in other.items() if p.requires_grad)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the same nonzero starting point in both
        for n in trainable:
            value = mine[n] + 0.05 * torch.randn(mine[n].shape, generator=g)
            mine[n].copy_(value)
            other[peft_name(n)].copy_(value)
    start = {n: mine[n].detach().clone() for n in trainable}

    kwargs = {"lr": 1e-2, "loraplus_lr_ratio": 16, "loraplus_weight_decay": 0.1, "betas": (0.8, 0.95)}
    opt_ours = create_loraplus_optimizer(ours, torch.optim.AdamW, **kwargs)
    opt_theirs = peft_create(theirs, torch.optim.AdamW, **kwargs)
    ids = {id(p): peft_name(n) for n, p in mine.items()}
    their_ids = {id(p): n for n, p in other.items()}
    for a, b in zip(opt_ours.param_groups, opt_theirs.param_groups, strict=True):
        assert (a["lr"], a["weight_decay"]) == (b["lr"], b["weight_decay"])
        assert [ids[id(p)] for p in a["params"]] == [their_ids[id(p)] for p in b["params"]]
    assert sum(len(gr["params"]) for gr in opt_ours.param_groups) == len(trainable)

    # The same gradients into both (taken from peft_zoo's model), so any difference in the
    # parameters comes from the optimizers: their groups, rates and weight decays.
    input_ids = torch.randint(0, 32, (4, 6), generator=g)
    labels = torch.tensor([0, 2, 1, 2])
    for _ in range(3):
        opt_ours.zero_grad()
        F.cross_entropy(ours(input_ids=input_ids).logits, labels).backward()
        for n in trainable:
            other[peft_name(n)].grad = mine[n].grad.clone()
        opt_ours.step()
        opt_theirs.step()
    for n in trainable:
        assert not torch.equal(mine[n], start[n]), f"{n} did not train"
        assert torch.equal(mine[n], other[peft_name(n)]), (n, (mine[n] - other[peft_name(n)]).abs().max())
    # And PEFT's model, holding those parameters, computes what ours computes.
    with torch.no_grad():
        diff = (ours(input_ids=input_ids).logits - theirs(input_ids=input_ids).logits).abs().max().item()
    assert diff <= 1e-6, diff


def test_on_a_peft_model_our_groups_are_peft_s() -> None:
    """The rules (embedding LoRA, LayerNorm copies, trained biases) reproduce PEFT's on its own model."""
    peft = pytest.importorskip("peft")
    from peft.optimizers import create_loraplus_optimizer as peft_create

    config = peft.LoraConfig(
        r=2,
        target_modules=["query", "value", "word_embeddings"],
        modules_to_save=["classifier", "LayerNorm"],
        bias="lora_only",
        use_dora=True,
    )
    model = peft.get_peft_model(bert(), config)
    kwargs = {
        "lr": 1e-3,
        "loraplus_lr_ratio": 4,
        "loraplus_weight_decay": 0.05,
        "loraplus_lr_embedding": 1e-4,
    }
    theirs = peft_create(model, torch.optim.AdamW, **kwargs)
    ours = create_loraplus_optimizer(model, torch.optim.AdamW, **kwargs)
    for a, b in zip(ours.param_groups, theirs.param_groups, strict=True):
        assert (a["lr"], a["weight_decay"]) == (b["lr"], b["weight_decay"])
        assert [id(p) for p in a["params"]] == [id(p) for p in b["params"]]
    assert len(ours.param_groups[1]["params"]) == 2  # lora_embedding_A / _B
