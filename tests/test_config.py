"""LoraConfig / IA3Config + adapt_model on transformers models; GPT-2 Conv1D and fused partial LoRA."""

from __future__ import annotations

import copy
import tempfile

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import peft_zoo as pz
from peft_zoo.testing import assert_close, assert_model_unchanged, fingerprint

transformers = pytest.importorskip("transformers")


def bert_classifier() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        vocab_size=40,
        num_labels=3,
    )
    return transformers.BertForSequenceClassification(config).eval()


def gpt2() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_embd=16, n_layer=2, n_head=2, vocab_size=40, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config).eval()


def llama() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=40,
    )
    return transformers.LlamaForCausalLM(config).eval()


def randomize(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in pz.adapter_named_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def test_lora_config_on_bert_selects_layers_patterns_and_trains_the_head() -> None:
    base = bert_classifier()
    config = pz.LoraConfig(
        rank=4,
        alpha=8,
        target_modules=["query", "value"],
        layers_to_transform=[0, 2],
        layers_pattern="layer",
        rank_pattern={r"layer\.2\..*value": 2},
        alpha_pattern={r"layer\.0\..*query": 2.0},
        modules_to_save=["classifier"],
    )
    model, params = pz.adapt_model(copy.deepcopy(base), config)
    lora = {n: m for n, m in model.named_modules() if isinstance(m, pz.LoRALinear)}
    assert sorted(lora) == [
        f"bert.encoder.layer.{i}.attention.self.{p}" for i in (0, 2) for p in ("query", "value")
    ]
    assert lora["bert.encoder.layer.2.attention.self.value"].rank == 2
    assert lora["bert.encoder.layer.0.attention.self.query"].scale == pytest.approx(2.0 / 4)
    assert lora["bert.encoder.layer.0.attention.self.value"].scale == pytest.approx(8.0 / 4)
    assert isinstance(model.classifier, pz.ModulesToSave)
    head = model.classifier.trained_module
    expected = sum(m.rank * (m.in_features + m.out_features) for m in lora.values()) + sum(
        p.numel() for p in head.parameters()
    )
    assert sum(p.numel() for p in params) == expected
    assert {id(p) for p in params} == {id(p) for p in model.parameters() if p.requires_grad}
    assert not any(p.requires_grad for p in model.classifier.original_module.parameters())
    # At init the model computes exactly what the base does (B = 0, head copied).
    x = torch.randint(0, 40, (2, 5))
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, base(input_ids=x).logits)


def test_lora_config_matches_peft_targets_and_counts() -> None:
    peft = pytest.importorskip("peft")
    base = bert_classifier()
    kwargs = dict(target_modules=["query", "value"], layers_to_transform=[1], layers_pattern="layer")
    ours, params = pz.adapt_model(
        copy.deepcopy(base), pz.LoraConfig(rank=4, modules_to_save=["classifier"], **kwargs)
    )
    theirs = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(r=4, modules_to_save=["classifier"], **kwargs)
    )
    assert sorted(n for n, m in ours.named_modules() if isinstance(m, pz.LoRALinear)) == sorted(
        theirs.targeted_module_names
    )
    assert sum(p.numel() for p in params) == theirs.get_nb_trainable_parameters()[0]


@pytest.mark.parametrize("bias", ["none", "all", "lora_only"])
def test_bias_modes(bias: str) -> None:
    model, params = pz.adapt_model(bert_classifier(), pz.LoraConfig(target_modules=["query"], bias=bias))
    trained_biases = {n for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias")}
    assert {id(p) for p in params} == {id(p) for p in model.parameters() if p.requires_grad}
    if bias == "none":
        assert not trained_biases
    elif bias == "lora_only":
        assert trained_biases == {f"bert.encoder.layer.{i}.attention.self.query.base.bias" for i in range(3)}
    else:
        assert len(trained_biases) > 3 and all(
            p.requires_grad for n, p in model.named_parameters() if n.endswith(".bias")
        )


def test_ia3_config_scales_keys_values_and_the_feedforward_input() -> None:
    base = llama()
    config = pz.IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"])
    model, params = pz.adapt_model(copy.deepcopy(base), config)
    ia3 = {n: m for n, m in model.named_modules() if isinstance(m, pz.IA3Linear)}
    assert len(ia3) == 6
    assert all(m.feedforward == n.endswith("down_proj") for n, m in ia3.items())
    # k/v scale outputs (8 = 2 kv heads x 4), down_proj scales its 32 inputs.
    assert sum(p.numel() for p in params) == 2 * (8 + 8 + 32)


def test_adapt_model_errors_change_nothing() -> None:
    model = bert_classifier()
    before = fingerprint(model)
    cases = [
        (pz.LoraConfig(target_modules=["qeury"]), "did you mean"),
        (pz.LoraConfig(target_modules=["query"], rank_pattern={r"layer\.7\..*query": 2}), "match none"),
        (pz.LoraConfig(target_modules=["query"], alpha_pattern={"nothing_here": 2.0}), "match none"),
        (pz.LoraConfig(target_modules=["query"], modules_to_save=["clasifier"]), "modules_to_save"),
        (pz.LoraConfig(target_modules=["classifier"], modules_to_save=["classifier"]), "both adapted"),
        (
            pz.IA3Config(target_modules=["key"], feedforward_modules=["intermediate.dense"]),
            "feedforward_modules",
        ),
    ]
    for config, message in cases:
        with pytest.raises(pz.InjectionError, match=message):
            pz.adapt_model(model, config)
        assert_model_unchanged(model, before, what=f"a refused {config}")


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="target_modules is required"):
        pz.LoraConfig()
    with pytest.raises(ValueError, match="rank must be > 0"):
        pz.LoraConfig(rank=0, target_modules=["q"])
    with pytest.raises(ValueError, match="bias must be one of"):
        pz.LoraConfig(target_modules=["q"], bias="some")
    with pytest.raises(ValueError, match="layers_to_transform needs"):
        pz.LoraConfig(target_modules=".*q", layers_to_transform=[1])
    with pytest.raises(ValueError, match="unknown fields"):
        pz.LoraConfig.from_dict({"target_modules": ["q"], "use_lora_magic": True})
    with pytest.raises(TypeError, match="use_dora must be a bool"):
        pz.LoraConfig(target_modules=["q"], use_dora="yes")
    with pytest.raises(ValueError, match="use_dora=True with target_parts"):
        pz.LoraConfig(target_modules=["c_attn"], use_dora=True, target_parts={"c_attn": [True, False, True]})
    dora = pz.LoraConfig.from_dict({"target_modules": ["q"], "use_dora": True})
    assert dora.use_dora and pz.LoraConfig.from_dict(dora.to_dict()) == dora
    config = pz.LoraConfig(rank=4, target_modules=["q"], rank_pattern={"q": 2})
    assert pz.LoraConfig.from_dict(config.to_dict()) == config


def test_fields_are_type_checked_not_coerced() -> None:
    """Issue 12: ``rslora="yes"``, ``layers_to_transform="x"`` / ``[10**30]`` were accepted and
    ``modules_to_save="head"`` was read one character at a time."""
    with pytest.raises(TypeError, match="rslora must be a bool"):
        pz.LoraConfig(target_modules=["query"], rslora="yes")
    with pytest.raises(TypeError, match="layers_to_transform must be a layer index"):
        pz.LoraConfig(target_modules=["query"], layers_to_transform="x")
    with pytest.raises(ValueError, match=r"layers_to_transform entry must be an int in \[0, "):
        pz.LoraConfig(target_modules=["query"], layers_to_transform=[10**30])
    with pytest.raises(TypeError, match=r"modules_to_save must be a list .* write \['classifier'\]"):
        pz.LoraConfig(target_modules=["query"], modules_to_save="classifier")
    with pytest.raises(TypeError, match="alpha_pattern"):
        pz.LoraConfig(target_modules=["query"], alpha_pattern={"query": "8"})
    with pytest.raises(ValueError, match="rank_pattern: invalid regular expression"):
        pz.LoraConfig(target_modules=["query"], rank_pattern={"(query": 4})
    with pytest.raises(TypeError, match="feedforward_modules"):
        pz.IA3Config(target_modules=["query"], feedforward_modules=3)


def test_adapt_model_checks_a_config_changed_after_construction() -> None:
    model = bert_classifier()
    before = fingerprint(model)
    config = pz.LoraConfig(target_modules=["query"], rank=2)
    config.rslora = "yes"  # dataclass fields can be set at any time
    with pytest.raises(TypeError, match="rslora"):
        pz.adapt_model(model, config)
    assert_model_unchanged(model, before, what="a refused adapt_model")
    config = pz.LoraConfig(target_modules=["query"], rank_pattern={"(a|aa)+": 4})
    model.bert.add_module("a" * 40 + "b", nn.Linear(2, 2))
    before = fingerprint(model)
    config.target_modules = ["query", "a" * 40 + "b"]
    with pytest.raises(ValueError, match="rank_pattern: the regular expression"):
        pz.adapt_model(model, config)
    assert_model_unchanged(model, before, what="a refused adapt_model")


# ---------------------------------------------------------------------- GPT-2: Conv1D, fused c_attn


def test_gpt2_conv1d_lora_merges_and_checkpoints_in_its_own_layout() -> None:
    base = gpt2()
    model, _ = pz.adapt_model(
        copy.deepcopy(base), pz.LoraConfig(rank=4, target_modules=["c_attn", "c_proj", "c_fc"])
    )
    layer = model.transformer.h[0].attn.c_attn
    assert layer.fan_in_fan_out and (layer.in_features, layer.out_features) == (16, 48)
    randomize(model)
    x = torch.randint(0, 40, (2, 6))
    with torch.no_grad():
        unmerged = model(x).logits
        # The effective weight keeps Conv1D's (in, out) layout.
        assert layer.weight.shape == (16, 48)
        h = torch.randn(3, 16)
        assert_close(h @ layer.weight + layer.bias, layer(h), what="Conv1D effective weight")
    with tempfile.TemporaryDirectory() as tmp:
        pz.save_adapter(model, tmp)
        fresh, _ = pz.adapt_model(
            copy.deepcopy(base), pz.LoraConfig(rank=4, target_modules=["c_attn", "c_proj", "c_fc"])
        )
        pz.load_adapter(fresh, tmp)
    with torch.no_grad():
        assert_close(fresh(x).logits, unmerged, what="reloaded GPT-2 adapter")
        pz.merge_adapters(model)
        assert_close(model(x).logits, unmerged, what="merged GPT-2 LoRA")
    with pytest.raises(ValueError, match="fan_in_fan_out=False"):
        pz.LoRALinear(copy.deepcopy(base.transformer.h[0].attn.c_attn), 2, fan_in_fan_out=False)
    with pytest.raises(ValueError, match="fan_in_fan_out=True"):
        pz.LoRALinear(nn.Linear(4, 4), 2, fan_in_fan_out=True)


@settings(max_examples=15, deadline=None)
@given(
    parts=st.lists(st.booleans(), min_size=1, max_size=4).filter(any),
    rank=st.integers(1, 4),
    alpha=st.floats(0.5, 8.0),
    rslora=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_fused_lora_touches_only_enabled_slices_and_equals_its_plain_lora(
    parts, rank, alpha, rslora, seed
) -> None:
    g = torch.Generator().manual_seed(seed)
    p = len(parts)
    layer = pz.FusedLoRALinear(nn.Linear(6, 3 * p), rank, alpha, parts=parts, rslora=rslora)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g))
    x = torch.randn(2, 5, 6, generator=g, requires_grad=True)
    y, base = layer(x), layer.base(x)
    for j, on in enumerate(parts):
        piece, base_piece = y[..., 3 * j : 3 * j + 3], base[..., 3 * j : 3 * j + 3]
        if on:
            assert not torch.allclose(piece, base_piece), f"slice {j} of {parts} should change"
        else:
            assert torch.equal(piece, base_piece), f"disabled slice {j} of {parts} changed"
    plain = layer.as_lora()
    assert plain.rank == rank * sum(parts)
    assert_close(plain(x), y, what=f"as_lora, parts={parts}, rslora={rslora}")
    with torch.no_grad():
        want = layer(x)
        layer.merge()
        assert_close(layer(x), want, what="merged fused LoRA")
        layer.unmerge()
        assert_close(layer(x), want, what="unmerged fused LoRA")


def test_gpt2_fused_c_attn_lora_on_q_and_v_only() -> None:
    config = pz.LoraConfig(rank=2, target_modules=["c_attn"], target_parts={"c_attn": [True, False, True]})
    model, params = pz.adapt_model(gpt2(), config)
    assert sum(p.numel() for p in params) == 2 * 2 * 2 * (16 + 16)  # layers x {q, v} x r(in + d)
    layer = model.transformer.h[1].attn.c_attn
    assert isinstance(layer, pz.FusedLoRALinear) and layer.fan_in_fan_out
    randomize(model)
    model(torch.randint(0, 40, (2, 5))).logits.sum().backward()
    assert layer.lora_A.grad is not None and layer.lora_A.grad.abs().sum() > 0
    with pytest.raises(pz.InjectionError, match="target_parts"):
        pz.adapt_model(gpt2(), pz.LoraConfig(target_modules=["c_attn"], target_parts={"c_fc": [True]}))


def test_geneformer_geometry_bert_mlm_matches_peft_unmerged_and_merged() -> None:
    """BertForMaskedLM with the published gf-20L-95M-i4096 geometry (2 of its 20 layers)."""
    peft = pytest.importorskip("peft")
    from peft_zoo.cost import GENEFORMER_GF_20L_95M_I4096

    config = GENEFORMER_GF_20L_95M_I4096.hf_config()
    config.num_hidden_layers = 2
    torch.manual_seed(0)
    base = transformers.BertForMaskedLM(config).eval()
    targets = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
    ours, _ = pz.adapt_model(copy.deepcopy(base), pz.LoraConfig(rank=8, alpha=16, target_modules=targets))
    theirs = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(r=8, lora_alpha=16, target_modules=targets)
    )
    randomize(ours)
    with torch.no_grad():
        for name, module in ours.named_modules():
            if isinstance(module, pz.LoRALinear):
                peft_layer = theirs.base_model.model.get_submodule(name)
                peft_layer.lora_A["default"].weight.copy_(module.lora_A)
                peft_layer.lora_B["default"].weight.copy_(module.lora_B)
        x = torch.randint(0, config.vocab_size, (2, 12))
        want = theirs(input_ids=x).logits
        assert_close(ours(input_ids=x).logits, want, what="Geneformer-geometry MLM vs PEFT, unmerged")
        pz.merge_adapters(ours)
        merged = theirs.merge_and_unload()
        assert_close(
            ours(input_ids=x).logits, merged(input_ids=x).logits, what="merged vs PEFT merge_and_unload"
        )
