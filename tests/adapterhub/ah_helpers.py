"""Shared pieces of the AdapterHub equivalence tests (run in the side environment that
tests/adapterhub_env.py builds: transformers 4.57.6 + adapters 1.3.0).

Tiny random BERT, GPT-2 and LLaMA (grouped-query attention) models; the same base weights
go to AdapterHub's model and to peft_zoo's; AdapterHub's adapter weights are randomised (so
that no part of the adapter is an identity by accident) and reach peft_zoo through AdapterHub's
own file format, then outputs and every adapter gradient are compared.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import adapters
import torch
from adapters import BnConfig
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2Model,
    LlamaConfig,
    LlamaModel,
)

import peft_zoo.bottleneck as bn
from peft_zoo.injection.bottleneck_config import BottleneckConfig
from peft_zoo.interop.adapterhub import adapterhub_config_dict, adapterhub_parameters, load_adapterhub

ARCHS = ("bert", "gpt2", "llama")
NAME = "task"
HIDDEN = 32


def base_model(arch: str, seed: int = 0, head: bool = False) -> nn.Module:
    """A tiny random model of ``arch`` in eval mode (no dropout anywhere)."""
    torch.manual_seed(seed)
    if arch == "bert":
        cfg = BertConfig(
            hidden_size=HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            vocab_size=64,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            num_labels=3,
        )
        model: nn.Module = BertForSequenceClassification(cfg) if head else BertModel(cfg)
    elif arch == "gpt2":
        cfg2 = GPT2Config(
            n_embd=HIDDEN,
            n_layer=2,
            n_head=4,
            vocab_size=64,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
        )
        model = GPT2Model(GPT2Config(**{**cfg2.to_dict(), "attn_pdrop": 0.0}))
    else:
        cfg3 = LlamaConfig(
            hidden_size=HIDDEN,
            intermediate_size=40,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=64,
        )
        model = LlamaModel(cfg3)
    return model.eval()


def inputs(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (2, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0  # a padded row
    return {"input_ids": ids, "attention_mask": mask}


def output(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(**batch)
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


def adapterhub_model(base: nn.Module, config: BottleneckConfig, seed: int = 3) -> nn.Module:
    """AdapterHub's model with ``config`` as adapter ``NAME``, its adapter weights randomised."""
    model = copy.deepcopy(base)
    adapters.init(model)
    model.add_adapter(NAME, config=BnConfig(**adapterhub_config_dict(config)))
    model.train_adapter(NAME)
    model.set_active_adapters(NAME)
    model.eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if f".adapters.{NAME}." in key:
                p.copy_(p + 0.3 * torch.randn(p.shape, generator=g))
    return model


def peft_zoo_from_file(base: nn.Module, directory: Path) -> nn.Module:
    model = copy.deepcopy(base)
    load_adapterhub(model, directory)
    return model.eval()


def compare(ah: nn.Module, ours: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max |difference| of the outputs and of every adapter parameter's gradient (one loss)."""
    for m in (ah, ours):
        m.zero_grad(set_to_none=True)
    out_ah, out_ours = output(ah, batch), output(ours, batch)
    weight = torch.randn(out_ah.shape, generator=torch.Generator().manual_seed(5))
    (out_ah * weight).sum().backward()
    (out_ours * weight).sum().backward()
    ah_params = {k: p for k, p in ah.state_dict(keep_vars=True).items() if f".adapters.{NAME}." in k}
    our_params = adapterhub_parameters(ours, NAME)
    assert set(ah_params) == set(our_params), sorted(set(ah_params) ^ set(our_params))[:6]
    grad = grad_scale = 0.0
    for key, p in ah_params.items():
        assert p.grad is not None and our_params[key].grad is not None, key
        grad = max(grad, (p.grad - our_params[key].grad).abs().max().item())
        grad_scale = max(grad_scale, p.grad.abs().max().item())
    out = (out_ah - out_ours).abs().max().item()
    return {"out": out, "grad": grad, "scale": out_ah.abs().max().item(), "grad_scale": grad_scale}


def config_kwargs(draw: Any, arch: str) -> dict[str, Any]:
    """Draw a BottleneckConfig's options (bounded; valid for ``arch``) with hypothesis' ``draw``."""
    from hypothesis import strategies as st

    preset = draw(st.sampled_from(["seq_bn", "double_seq_bn", "par_bn"]))
    kw: dict[str, Any] = {
        "reduction_factor": draw(st.sampled_from([2, 4, 8, 16, 3.5])),
        "non_linearity": draw(st.sampled_from(sorted(bn.ACTIVATIONS))),
        "ln_before": draw(st.booleans()),
        "ln_after": draw(st.booleans()),
        "scaling": draw(st.sampled_from([1.0, 0.5, 4.0, "learned", "channel"])),
        # Pre-LN blocks (GPT-2, LLaMA) without original_ln_after compute x + (a - x): one rounding
        # per site, which a drawn, strongly perturbed random model can amplify far beyond any fixed
        # tolerance (seen: 7.5e-4 on LLaMA, Houlsby, reduction factor 2). Drawn for BERT only; the
        # pre-LN case has its own fixed test (test_ah_equivalence.py).
        "original_ln_after": draw(st.booleans()) if arch == "bert" else True,
        "adapter_residual_before_ln": draw(st.booleans()),
        "use_gating": draw(st.booleans()),
    }
    if preset != "par_bn":
        kw["original_ln_before"] = draw(st.booleans())
        choices: list[Any] = [True, False]
        if arch == "bert" and kw["original_ln_before"]:
            choices.append("post_add")
        kw["residual_before_ln"] = draw(st.sampled_from(choices))
    return {"preset": preset, **kw}
