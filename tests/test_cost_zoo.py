"""peft_zoo.cost.zoo_counts: the parameter formulas of VeRA, LoHa, LoKr, OFT, AdaLoRA and LoRA
on embeddings / convolutions agree with the layers peft_zoo instantiates, with
``peft_zoo.adapt_model`` on small transformers models, and with Hugging Face PEFT's
``get_nb_trainable_parameters()`` for the same config on the same models.
"""

from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st
from torch import nn

from peft_zoo.adalora import AdaLoRALinear
from peft_zoo.cost import (
    BERT_BASE,
    GPT2_SMALL,
    ModelGeometry,
    adalora_final_parameters,
    adalora_layer_parameters,
    adalora_trainable_parameters,
    build_model,
    full_parameters,
    loha_layer_parameters,
    loha_trainable_parameters,
    lokr_layer_parameters,
    lokr_trainable_parameters,
    lora_conv_parameters,
    lora_embedding_parameters,
    lora_embedding_trainable_parameters,
    lora_trainable_parameters,
    oft_layer_parameters,
    oft_trainable_parameters,
    vera_layer_parameters,
    vera_trainable_parameters,
    zoo_rows,
    zoo_table,
)
from peft_zoo.loha import LoHaLinear
from peft_zoo.lokr import LoKrLinear
from peft_zoo.lora_conv import LoRAConv
from peft_zoo.lora_embedding import LoRAEmbedding
from peft_zoo.oft import OFTLinear
from peft_zoo.vera import VeRALinear, VeraProjections

ROOT = Path(__file__).resolve().parents[1]
LAYER_PROPERTY = settings(deadline=None, max_examples=30)
MODEL_PROPERTY = settings(deadline=None, max_examples=20)


def trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# ----------------------------------------------------------------------------- one layer


@LAYER_PROPERTY
@given(d_in=st.integers(1, 40), d_out=st.integers(1, 40), rank=st.integers(1, 12), data=st.data())
def test_layer_formulas_equal_the_instantiated_layers(d_in, d_out, rank, data):
    base = nn.Linear(d_in, d_out)
    vera = VeRALinear(copy.deepcopy(base), VeraProjections.covering([base], rank))
    assert trainable(vera) == vera_layer_parameters(rank, d_out) == rank + d_out
    assert trainable(vera.projections) == 0  # the shared pair is a buffer
    assert trainable(LoHaLinear(copy.deepcopy(base), rank)) == loha_layer_parameters(rank, d_in, d_out)
    assert trainable(AdaLoRALinear(copy.deepcopy(base), rank)) == adalora_layer_parameters(rank, d_in, d_out)

    both, factor = data.draw(st.booleans()), data.draw(st.sampled_from([-1, 1, 2, 3, 4, 8]))
    lokr = LoKrLinear(copy.deepcopy(base), rank, decompose_both=both, decompose_factor=factor)
    assert trainable(lokr) == lokr_layer_parameters(
        rank, d_in, d_out, decompose_both=both, decompose_factor=factor
    )

    block, share = data.draw(st.sampled_from(divisors(d_in))), data.draw(st.booleans())
    by_size = OFTLinear(copy.deepcopy(base), 0, block, block_share=share)
    by_count = OFTLinear(copy.deepcopy(base), d_in // block, 0, block_share=share)
    expected = (1 if share else d_in // block) * block * (block - 1) // 2
    assert trainable(by_size) == trainable(by_count) == expected
    assert oft_layer_parameters(d_in, 0, block, block_share=share) == expected
    assert oft_layer_parameters(d_in, d_in // block, 0, block_share=share) == expected
    assert lokr_layer_parameters(rank, d_in, d_out) <= d_in * d_out + rank * (d_in + d_out)


@LAYER_PROPERTY
@given(
    dims=st.integers(1, 3),
    groups=st.sampled_from([1, 2, 3]),
    channels=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    rank_mult=st.integers(1, 4),
    data=st.data(),
)
def test_embedding_and_conv_formulas_equal_the_instantiated_layers(dims, groups, channels, rank_mult, data):
    num, dim = data.draw(st.integers(1, 50)), data.draw(st.integers(1, 20))
    emb_rank = data.draw(st.integers(1, 8))
    layer = LoRAEmbedding(nn.Embedding(num, dim), emb_rank)
    assert trainable(layer) == lora_embedding_parameters(emb_rank, num, dim) == emb_rank * (num + dim)

    c_in, c_out = channels[0] * groups, channels[1] * groups
    kernel = tuple(data.draw(st.integers(1, 3)) for _ in range(dims))
    conv_class: Any = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    conv = conv_class(c_in, c_out, kernel, groups=groups)
    rank = rank_mult * groups
    expected = lora_conv_parameters(rank, c_in, c_out, kernel[0] if dims == 1 else kernel, groups)
    assert expected == lora_conv_parameters(rank, c_in, c_out, conv.kernel_size, groups)
    assert trainable(LoRAConv(conv, rank)) == expected


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: oft_layer_parameters(768, 0, 100), ValueError, "does not divide"),
        (lambda: oft_layer_parameters(768, 0, 0), ValueError, "exactly one"),
        (lambda: oft_layer_parameters(768, 4, 32), ValueError, "exactly one"),
        (lambda: oft_layer_parameters(768, 0, 32, block_share="yes"), TypeError, "block_share"),  # type: ignore[arg-type]
        (lambda: lokr_layer_parameters(8, 64, 64, decompose_factor=0), ValueError, "decompose_factor"),
        (lambda: lokr_layer_parameters(8, 64, 64, decompose_both=1), TypeError, "decompose_both"),  # type: ignore[arg-type]
        (lambda: loha_layer_parameters(0, 4, 4), ValueError, "rank"),
        (lambda: vera_layer_parameters(True, 4), TypeError, "rank"),
        (lambda: lora_conv_parameters(3, 4, 4, 3, groups=2), ValueError, "multiple of groups"),
        (lambda: lora_conv_parameters(2, 4, 4, ()), ValueError, "kernel_size"),
        (lambda: loha_trainable_parameters(BERT_BASE, ["nothing"]), ValueError, "select no module"),
        (lambda: lora_embedding_trainable_parameters(BERT_BASE, ["query"], 4), ValueError, "no embedding"),
        (lambda: lora_embedding_trainable_parameters(BERT_BASE, "word_embeddings", 4), ValueError, "list"),
    ],
)
def test_bad_arguments_are_refused_by_name(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_loha_lokr_and_oft_refuse_gpt2_conv1d_like_peft():
    for count in (loha_trainable_parameters, lokr_trainable_parameters, oft_trainable_parameters):
        with pytest.raises(ValueError, match="Conv1D"):
            count(GPT2_SMALL, ["c_attn"])
    assert vera_trainable_parameters(GPT2_SMALL, ["c_attn"], 256) == 12 * (256 + 3 * 768)


# ----------------------------------------------------------------------------- BERT-base numbers


def test_bert_base_numbers_worked_by_hand():
    h, i, n = 768, 3072, 12
    qv = ["query", "value"]
    assert lora_trainable_parameters(BERT_BASE, qv, 8) == 2 * n * 8 * 2 * h == 294_912
    assert vera_trainable_parameters(BERT_BASE, qv, 256) == 2 * n * (256 + h) == 24_576
    assert loha_trainable_parameters(BERT_BASE, qv, 8) == 2 * 294_912
    assert lokr_trainable_parameters(BERT_BASE, qv, 8) == 2 * n * (24 * 24 + 8 * (32 + 32)) == 26_112
    assert oft_trainable_parameters(BERT_BASE, qv) == 2 * n * h * 31 // 2 == 285_696
    assert oft_trainable_parameters(BERT_BASE, qv, block_share=True) == 2 * n * 32 * 31 // 2
    assert adalora_trainable_parameters(BERT_BASE, qv, 12) == 2 * n * 12 * (2 * h + 1) == 442_656
    assert adalora_final_parameters(BERT_BASE, qv, 8) == 2 * n * 8 * (2 * h + 1) == 295_104
    assert lora_embedding_trainable_parameters(BERT_BASE, ["word_embeddings"], 8) == 8 * (30522 + h)
    ffn = ["intermediate.dense", "output.dense"]  # "output.dense" also selects attention.output.dense
    assert loha_trainable_parameters(BERT_BASE, ffn, 4) == n * 2 * 4 * ((h + i) * 2 + 2 * h)
    assert full_parameters(BERT_BASE) == 109_514_298  # BertForMaskedLM, bert-base-uncased's config


def test_bert_base_table_equals_peft_on_a_meta_model():
    peft = _libs()
    qv = ["query", "value"]
    configs = [  # the rows of zoo_rows(), in order, as PEFT configs
        peft.LoraConfig(r=8, target_modules=qv),
        peft.LoraConfig(r=8, target_modules=qv),  # PiSSA: LoRA's shapes (its SVD cannot run on meta)
        peft.LoraConfig(r=8, target_modules=[*qv, "word_embeddings"]),
        peft.IA3Config(target_modules=["key", "value", "output.dense"], feedforward_modules=["output.dense"]),
        peft.VeraConfig(r=256, target_modules=qv),
        peft.LoHaConfig(r=8, target_modules=qv),
        peft.LoKrConfig(r=8, target_modules=qv),
        peft.LoKrConfig(r=8, target_modules=qv, decompose_both=True),
        peft.OFTConfig(oft_block_size=32, target_modules=qv),
        peft.OFTConfig(oft_block_size=32, block_share=True, target_modules=qv),
        peft.AdaLoraConfig(init_r=12, target_modules=qv, total_step=10),
    ]
    rows = zoo_rows()
    assert [r.method.split()[0] for r in rows[: len(configs)]] == [
        "LoRA", "PiSSA", "LoRA", "IA³", "VeRA", "LoHa", "LoKr", "LoKr", "OFT", "OFT", "AdaLoRA",
    ]  # fmt: skip
    for row, config in zip(rows, configs, strict=False):
        with torch.device("meta"):
            model = build_model(BERT_BASE)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adapted = peft.get_peft_model(model, config)
        # PEFT's AdaLoRA ``ranknum`` (1,) is requires_grad=False on real tensors but comes out
        # True on the meta device: leave it out, as a real model's count does.
        got = sum(p.numel() for n, p in adapted.named_parameters() if p.requires_grad and "ranknum" not in n)
        assert (row.method, got) == (row.method, row.trainable)
        ranknum = 24 if "AdaLoRA" in row.method else 0  # one (1,) per adapted module
        assert sum(p.numel() for p in adapted.parameters()) == row.total + ranknum


def test_docs_carry_the_zoo_table():
    text = (ROOT / "docs" / "cost_model.md").read_text()
    assert zoo_table() in text, "docs/cost_model.md: paste peft_zoo.cost.zoo_table() into the zoo section"


# ----------------------------------------------------------------------------- whole models vs PEFT

BERT_NAMES = [
    "query",
    "key",
    "value",
    "dense",
    "output.dense",
    "attention.output.dense",
    "intermediate.dense",
]
NAMES = {
    "bert": BERT_NAMES,
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"],
}
EMBEDDINGS = {
    "bert": ["word_embeddings", "position_embeddings", "token_type_embeddings"],
    "llama": ["embed_tokens"],
    "gpt2": ["wte", "wpe"],
}
LINEAR_ONLY = ("loha", "lokr", "oft")


def _libs():
    transformers = pytest.importorskip("transformers")
    transformers.utils.logging.set_verbosity_error()
    return pytest.importorskip("peft")


@st.composite
def small_geometries(draw: st.DrawFn, families: tuple[str, ...]) -> ModelGeometry:
    family: Any = draw(st.sampled_from(families))
    heads = draw(st.integers(1, 4))
    return ModelGeometry(
        name=f"random {family}",
        family=family,
        hidden_size=heads * draw(st.sampled_from([2, 4, 6, 8])),
        num_layers=draw(st.integers(1, 2)),
        num_heads=heads,
        intermediate_size=draw(st.sampled_from([6, 12, 16, 24, 36])),
        vocab_size=draw(st.integers(4, 40)),
        max_position_embeddings=draw(st.integers(2, 16)),
    )


@st.composite
def zoo_setups(draw: st.DrawFn, method: str) -> dict:
    families = ("bert", "llama") if method in LINEAR_ONLY else ("bert", "llama", "gpt2")
    g = draw(small_geometries(families))
    targets = draw(st.lists(st.sampled_from(NAMES[g.family]), min_size=1, max_size=3, unique=True))
    layers = draw(st.none() | st.lists(st.integers(0, g.num_layers - 1), min_size=1, unique=True))
    rank = draw(st.integers(1, 6))
    pattern = draw(st.none() | st.dictionaries(st.sampled_from(targets), st.integers(1, 6), max_size=2))
    kwargs: dict = {}
    if method in ("loha", "lokr"):
        kwargs = {"r": rank, "rank_pattern": pattern or {}}
    if method == "lokr":
        kwargs |= {
            "decompose_both": draw(st.booleans()),
            "decompose_factor": draw(st.sampled_from([-1, 2, 4])),
        }
    if method == "vera":
        kwargs = {"r": rank}
    if method == "oft":
        block = draw(st.sampled_from([1, 2, 3, 4, 6]))
        kwargs = {"r": 0, "oft_block_size": block, "block_share": draw(st.booleans())}
    if method == "adalora":
        kwargs = {"init_r": rank, "target_r": draw(st.integers(1, rank)), "total_step": 10}
    return {"method": method, "geometry": g, "targets": targets, "layers": layers, "kwargs": kwargs}


def analytic(method: str, g: ModelGeometry, targets: list[str], layers, kw: dict) -> int:
    if method == "vera":
        return vera_trainable_parameters(g, targets, kw["r"], layers=layers)
    if method == "loha":
        return loha_trainable_parameters(g, targets, kw["r"], rank_pattern=kw["rank_pattern"], layers=layers)
    if method == "lokr":
        extra = {k: kw[k] for k in ("decompose_both", "decompose_factor", "rank_pattern")}
        return lokr_trainable_parameters(g, targets, kw["r"], layers=layers, **extra)
    if method == "oft":
        return oft_trainable_parameters(
            g, targets, 0, kw["oft_block_size"], block_share=kw["block_share"], layers=layers
        )
    return adalora_trainable_parameters(g, targets, kw["init_r"], layers=layers)


def zoo_config(method: str, **kwargs):
    from peft_zoo.injection.adalora_config import AdaLoraConfig
    from peft_zoo.injection.lycoris_config import LoHaConfig, LoKrConfig
    from peft_zoo.injection.oft_config import OFTConfig
    from peft_zoo.injection.vera_config import VeraConfig

    classes = {
        "vera": VeraConfig,
        "loha": LoHaConfig,
        "lokr": LoKrConfig,
        "oft": OFTConfig,
        "adalora": AdaLoraConfig,
    }
    return classes[method](**kwargs)


def peft_trainable(model: nn.Module, config) -> int:
    import peft

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fan_in_fan_out flips, AdaLoRA's schedule notes
        return int(peft.get_peft_model(model, config).get_nb_trainable_parameters()[0])


@pytest.mark.parametrize("method", ["vera", "loha", "lokr", "oft", "adalora"])
@settings(deadline=None, max_examples=8)
@given(data=st.data())
def test_model_counts_equal_adapt_model_and_peft(method, data):
    peft = _libs()
    import peft_zoo as pz

    setup = data.draw(zoo_setups(method))

    g, targets, layers, kw = (setup[k] for k in ("geometry", "targets", "layers", "kwargs"))
    torch.manual_seed(0)
    model = build_model(g)
    shared = {"target_modules": targets, "layers_to_transform": layers}
    if method in ("vera", "adalora") and g.family == "gpt2":
        shared["fan_in_fan_out"] = True
    try:
        expected = analytic(method, g, targets, layers, kw)
    except ValueError:  # nothing selected, or an OFT block size that does not divide
        with pytest.raises(ValueError):
            pz.adapt_model(copy.deepcopy(model), zoo_config(method, **kw, **shared))
        event(f"{method}: refused")
        return
    event(f"{method}: counted")
    ours = copy.deepcopy(model)
    pz.adapt_model(ours, zoo_config(method, **kw, **shared))
    assert trainable(ours) == expected, setup
    assert sum(p.numel() for p in ours.parameters()) == full_parameters(g) + expected, setup

    peft_kw = dict(kw)
    if "rank_pattern" in peft_kw:  # PEFT reads keys as regexes: match the plain names literally
        peft_kw["rank_pattern"] = {re.escape(k): v for k, v in kw["rank_pattern"].items()}
    peft_cls = {"vera": "VeraConfig", "loha": "LoHaConfig", "lokr": "LoKrConfig", "oft": "OFTConfig"}
    config = getattr(peft, peft_cls.get(method, "AdaLoraConfig"))(**peft_kw, **shared)
    assert peft_trainable(model, config) == expected, setup


@MODEL_PROPERTY
@given(g=small_geometries(("bert", "llama", "gpt2")), rank=st.integers(1, 6), data=st.data())
def test_lora_on_embeddings_and_pissa_equal_peft(g, rank, data):
    peft = _libs()
    import peft_zoo as pz

    names = data.draw(st.lists(st.sampled_from(EMBEDDINGS[g.family]), min_size=1, unique=True))
    linears = data.draw(st.lists(st.sampled_from(NAMES[g.family]), max_size=2, unique=True))
    expected = lora_embedding_trainable_parameters(g, names, rank)
    if linears:
        expected += lora_trainable_parameters(g, linears, rank)
    torch.manual_seed(0)
    model = build_model(g)
    ours = copy.deepcopy(model)
    pz.adapt_model(ours, pz.LoraConfig(rank=rank, target_modules=names + linears))
    assert trainable(ours) == expected
    if linears:  # PiSSA (linears only) changes the initial values, not the shapes
        r = min(rank, g.hidden_size, g.intermediate_size, g.kv_dim)  # PiSSA needs r <= min(in, out)
        pissa = copy.deepcopy(model)
        pz.adapt_model(pissa, pz.LoraConfig(rank=r, target_modules=linears, init_lora_weights="pissa"))
        assert trainable(pissa) == lora_trainable_parameters(g, linears, r)
    config = peft.LoraConfig(r=rank, target_modules=names + linears, fan_in_fan_out=g.family == "gpt2")
    assert peft_trainable(model, config) == expected  # PEFT adapts `model` itself: last


@pytest.mark.parametrize(
    ("conv", "kernel", "groups"),
    [(nn.Conv1d, 3, 1), (nn.Conv2d, (3, 2), 1), (nn.Conv2d, 3, 2), (nn.Conv3d, 2, 1)],
)
def test_lora_on_convolutions_equals_peft(conv, kernel, groups):
    peft = _libs()
    import peft_zoo as pz

    torch.manual_seed(0)
    convs = [conv(4, 6, kernel, groups=groups), conv(6, 8, 1, groups=groups)]
    model = nn.Sequential(convs[0], nn.ReLU(), convs[1])
    rank = 2 * groups
    expected = sum(
        lora_conv_parameters(rank, m.in_channels, m.out_channels, m.kernel_size, groups) for m in convs
    )
    ours = copy.deepcopy(model)
    pz.adapt_model(ours, pz.LoraConfig(rank=rank, target_modules=["0", "2"]))
    assert trainable(ours) == expected
    assert peft_trainable(model, peft.LoraConfig(r=rank, target_modules=["0", "2"])) == expected
