"""PEFT's on-disk format, both ways: peft_zoo.save_peft -> peft.PeftModel.from_pretrained, and
peft_model.save_pretrained -> peft_zoo.load_peft, on small BERT, GPT-2 and LLaMA models.

Each round trip compares the two libraries' outputs (logits), unmerged and after merging
(PEFT's ``merge_and_unload`` against peft_zoo's ``merge_adapters``). Max |diff| observed on
CPU, float32 (torch 2.13, transformers 5.23, peft 0.21.2; run with ``-s`` to print them):

    case          save_peft -> PEFT        PEFT -> load_peft
                  unmerged   merged        unmerged   merged
    bert-lora     0          0             0          0
    bert-rslora   0          0             0          0
    gpt2-lora     0          0             0          0
    llama-lora    0          0             0          0
    bert-dora     0          0             0          0
    gpt2-dora     0          0             0          0
    llama-dora    4.5e-08    0             4.5e-08    0
    bert-ia3      0          0             0          0
    gpt2-ia3      0          0             0          0
    llama-ia3     0          0             0          0

Exactly zero: with the same tensors both libraries do the same float32 operations in the same
order, unmerged (``base(x) + s * B(A x)``; ``base(x) * l``) and merged (``W0 + s * (B @ A)``,
transposed for GPT-2's Conv1D; ``W0 * l``). DoRA's one difference: the unmerged forward's row
norm ``||W0 + s B A||`` uses ``B @ A`` here and ``(B (A I))^T`` (an identity matrix, for FSDP)
in PEFT; the two products round differently for some shapes (LLaMA's 16 -> 8 k/v projections).
The tests allow ``1e-5``.

Every refused load checks the message and that the model is exactly as it was
(``peft_zoo.testing.fingerprint``): load_peft validates everything before the first change.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

import peft_zoo as pz  # noqa: E402
from peft_zoo.dora import DoRALinear  # noqa: E402
from peft_zoo.interop.peft_format import (  # noqa: E402
    PEFT_PREFIX,
    PeftFormatError,
    config_from_peft,
    load_peft,
    lora_config_from_peft,
    peft_dict_from_config,
    read_peft,
    save_peft,
)
from peft_zoo.testing import assert_model_unchanged, fingerprint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-5  # float32; the observed differences are far below (see the table above)
transformers.utils.logging.set_verbosity_error()


# ----------------------------------------------------------------------------- small models


@functools.cache
def _base(arch: str) -> nn.Module:
    torch.manual_seed({"bert": 0, "gpt2": 1, "llama": 2}[arch])
    if arch == "bert":
        config = transformers.BertConfig(
            vocab_size=64,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=32,
            num_labels=3,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        return transformers.BertForSequenceClassification(config).eval()
    if arch == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0
        )
        config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0
        return transformers.GPT2LMHeadModel(config).eval()
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,  # k/v projections 16 -> 8: not square
        max_position_embeddings=32,
    )
    return transformers.LlamaForCausalLM(config).eval()


def base(arch: str) -> nn.Module:
    """A fresh copy of the same base model every time."""
    return copy.deepcopy(_base(arch))


IDS = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def logits(model: nn.Module) -> torch.Tensor:
    return model(input_ids=IDS).logits


@torch.no_grad()
def perturb(model: nn.Module, seed: int) -> nn.Module:
    """Move every trainable tensor (adapter weights, modules_to_save copies, trained biases) off
    its initial value, so the adapter is no no-op; then eval mode."""
    g = torch.Generator().manual_seed(seed)
    for _, p in sorted(model.named_parameters()):
        if p.requires_grad:
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


def n_layers(model: nn.Module) -> int:
    return sum(isinstance(m, pz.LoRALinear | pz.IA3Linear) for m in model.modules())


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


OBSERVED: dict[tuple[str, str], tuple[float, float]] = {}


@pytest.fixture(scope="module", autouse=True)
def _print_observed():
    yield
    if OBSERVED:
        print("\nmax |diff| peft_zoo vs PEFT (unmerged, merged):")
        for (case, direction), (unmerged, merged) in sorted(OBSERVED.items()):
            print(f"  {case:12s} {direction:20s} {unmerged:.2e} {merged:.2e}")


# ----------------------------------------------------------------------------- the table

CASES: dict[str, tuple[str, Callable[[], pz.LoraConfig | pz.IA3Config]]] = {
    "bert-lora": (
        "bert",
        lambda: pz.LoraConfig(
            rank=4,
            alpha=8,
            target_modules=["query", "value", "intermediate.dense"],
            modules_to_save=["classifier"],
            rank_pattern={r"layer\.0\.attention\.self\.query": 2},
            alpha_pattern={"value": 3.0},
        ),
    ),
    "bert-rslora": (
        "bert",
        lambda: pz.LoraConfig(
            rank=4,
            alpha=6,
            rslora=True,
            target_modules=["key", "output.dense"],
            modules_to_save=["classifier"],
            rank_pattern={"output.dense": 8},
        ),
    ),
    "gpt2-lora": (
        "gpt2",
        lambda: pz.LoraConfig(
            rank=4,
            alpha=16,
            target_modules=["c_attn", "c_proj", "c_fc"],
            rank_pattern={"c_fc": 6},
            alpha_pattern={r"h\.1\.attn\.c_proj": 5.0},
        ),
    ),
    "llama-lora": (
        "llama",
        lambda: pz.LoraConfig(
            rank=4,
            alpha=8,
            rslora=True,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            rank_pattern={"down_proj": 2},
            alpha_pattern={r"layers\.1\..*": 12.0},
        ),
    ),
    "bert-dora": (
        "bert",
        lambda: pz.LoraConfig(
            rank=4,
            alpha=8,
            use_dora=True,
            target_modules=["query", "value", "intermediate.dense"],
            modules_to_save=["classifier"],
            rank_pattern={"value": 2},
        ),
    ),
    "gpt2-dora": (  # Conv1D: the magnitude is per output feature, a column of the (in, out) weight
        "gpt2",
        lambda: pz.LoraConfig(rank=3, alpha=6, use_dora=True, target_modules=["c_attn", "c_proj", "c_fc"]),
    ),
    "llama-dora": (
        "llama",
        lambda: pz.LoraConfig(
            rank=4,
            alpha=8,
            rslora=True,
            use_dora=True,
            target_modules=["q_proj", "k_proj", "v_proj", "down_proj"],
            alpha_pattern={"down_proj": 3.0},
        ),
    ),
    "bert-ia3": (
        "bert",
        lambda: pz.IA3Config(
            target_modules=r".*\.(key|value|layer\.\d+\.output\.dense)",
            feedforward_modules=r".*\.layer\.\d+\.output\.dense",
            modules_to_save=["classifier"],
        ),
    ),
    "gpt2-ia3": (
        "gpt2",
        lambda: pz.IA3Config(target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"]),
    ),
    "llama-ia3": (
        "llama",
        lambda: pz.IA3Config(
            target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]
        ),
    ),
}


def peft_config(config: pz.LoraConfig | pz.IA3Config, arch: str):
    data = peft_dict_from_config(config, model=_base(arch))
    return (peft.LoraConfig if isinstance(config, pz.LoraConfig) else peft.IA3Config)(**data)


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("case", sorted(CASES))
def test_save_peft_then_peft_from_pretrained(case: str, tmp_path: Path) -> None:
    arch, make = CASES[case]
    ours, _ = pz.adapt_model(base(arch), make())
    perturb(ours, seed=1)
    path = save_peft(ours, tmp_path / "adapter")
    assert path == tmp_path / "adapter"
    assert sorted(p.name for p in path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]

    theirs = peft.PeftModel.from_pretrained(base(arch), path).eval()
    # PEFT holds exactly the saved tensors (a key it missed would keep its init value).
    same_state(peft.get_peft_model_state_dict(theirs), read_peft(path)[1])
    unmerged = max_diff(logits(ours), logits(theirs))
    assert max_diff(logits(ours), logits(base(arch))) > 1e-3, "the adapter should change the outputs"
    assert pz.merge_adapters(ours) == n_layers(ours) > 0
    merged = max_diff(logits(ours), logits(theirs.merge_and_unload()))
    OBSERVED[(case, "save_peft -> PEFT")] = (unmerged, merged)
    assert unmerged <= ATOL and merged <= ATOL, (unmerged, merged)


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_save_pretrained_then_load_peft(case: str, tmp_path: Path) -> None:
    arch, make = CASES[case]
    theirs = peft.get_peft_model(base(arch), peft_config(make(), arch))
    perturb(theirs, seed=2)
    theirs.save_pretrained(tmp_path / "from_peft")

    fresh = base(arch)
    ours, params = load_peft(fresh, tmp_path / "from_peft")
    assert ours is fresh
    assert {id(p) for p in params} == {id(p) for p in ours.parameters() if p.requires_grad}
    assert not any(isinstance(m, peft.tuners.tuners_utils.BaseTunerLayer) for m in ours.modules())
    # Saving again gives PEFT's file back, key for key and bit for bit.
    same_state(read_peft(save_peft(ours, tmp_path / "again"))[1], read_peft(tmp_path / "from_peft")[1])

    ours.eval()
    unmerged = max_diff(logits(ours), logits(theirs))
    assert pz.merge_adapters(ours) == n_layers(ours) > 0
    merged = max_diff(logits(ours), logits(theirs.merge_and_unload()))
    OBSERVED[(case, "PEFT -> load_peft")] = (unmerged, merged)
    assert unmerged <= ATOL and merged <= ATOL, (unmerged, merged)


# ----------------------------------------------------------------------------- config details


def test_saved_config_is_exact_and_readable(tmp_path: Path) -> None:
    ours, _ = pz.adapt_model(base("bert"), CASES["bert-lora"][1]())
    data = json.loads((save_peft(ours, tmp_path, task_type="SEQ_CLS") / "adapter_config.json").read_text())
    assert data["peft_type"] == "LORA" and data["task_type"] == "SEQ_CLS"
    assert data["r"] == 4 and data["lora_alpha"] == 8 and data["use_rslora"] is False
    assert data["modules_to_save"] == ["classifier"]
    assert "bert.encoder.layer.1.intermediate.dense" in data["target_modules"]
    assert data["rank_pattern"] == {r"^bert\.encoder\.layer\.0\.attention\.self\.query": 2}
    assert set(data["alpha_pattern"].values()) == {3}
    assert config_from_peft(data).rank_alpha("bert.encoder.layer.0.attention.self.query") == (2, 8.0)


def test_mixed_rslora_and_plain_layers_keep_their_scales(tmp_path: Path) -> None:
    """PEFT has one use_rslora; the rsLoRA layers go into alpha_pattern as alpha * sqrt(r)."""
    ours = base("llama")
    q = [f"model.layers.{i}.self_attn.q_proj" for i in range(2)]
    v = [f"model.layers.{i}.self_attn.v_proj" for i in range(2)]
    pz.inject_lora(ours, q, rank=4, alpha=8, rslora=True)
    pz.inject_lora(ours, v, rank=2, alpha=3)
    ours.requires_grad_(False)
    for _, p in pz.adapter_named_parameters(ours):
        p.requires_grad_(True)
    perturb(ours, seed=3)
    theirs = peft.PeftModel.from_pretrained(base("llama"), save_peft(ours, tmp_path)).eval()
    for name in q + v:
        assert theirs.base_model.model.get_submodule(name).scaling["default"] == pytest.approx(
            ours.get_submodule(name).scale, rel=1e-12
        )
    assert max_diff(logits(ours), logits(theirs)) <= ATOL


@pytest.mark.parametrize("bias", ["lora_only", "all"])
def test_trained_biases_both_ways(bias: str, tmp_path: Path) -> None:
    config = pz.LoraConfig(
        rank=2, target_modules=["query", "value"], modules_to_save=["classifier"], bias=bias
    )
    ours, _ = pz.adapt_model(base("bert"), config)
    perturb(ours, seed=4)
    assert json.loads((save_peft(ours, tmp_path / "a") / "adapter_config.json").read_text())["bias"] == bias
    theirs = peft.PeftModel.from_pretrained(base("bert"), tmp_path / "a").eval()
    assert max_diff(logits(ours), logits(theirs)) <= ATOL

    theirs = perturb(peft.get_peft_model(base("bert"), peft_config(config, "bert")), seed=5)
    theirs.save_pretrained(tmp_path / "b")
    loaded, _ = load_peft(base("bert"), tmp_path / "b")
    assert max_diff(logits(loaded.eval()), logits(theirs)) <= ATOL


def test_task_type_classifier_is_saved_by_peft_and_loaded(tmp_path: Path) -> None:
    """PEFT's SEQ_CLS wrapper adds "classifier" and "score" to modules_to_save by itself."""
    data = peft_dict_from_config(pz.LoraConfig(rank=2, target_modules=["query"]), task_type="SEQ_CLS")
    theirs = perturb(peft.get_peft_model(base("bert"), peft.LoraConfig(**data)), seed=6)
    theirs.save_pretrained(tmp_path)
    ours, _ = load_peft(base("bert"), tmp_path)
    assert isinstance(ours.classifier, pz.ModulesToSave)
    assert max_diff(logits(ours.eval()), logits(theirs)) <= ATOL


def test_saved_on_the_task_model_loads_into_the_bare_model_and_back(tmp_path: Path) -> None:
    """Names saved as "bert.encoder..." fit a BertModel after dropping its base_model_prefix."""
    theirs = peft.get_peft_model(base("bert"), peft.LoraConfig(r=2, target_modules=["query", "value"]))
    perturb(theirs, seed=7).save_pretrained(tmp_path / "task")
    bare, _ = load_peft(base("bert").bert, tmp_path / "task")
    with torch.no_grad():
        expected = theirs.base_model.model.bert(IDS).last_hidden_state
        assert max_diff(bare(IDS).last_hidden_state, expected) <= ATOL

    theirs = peft.get_peft_model(base("bert").bert, peft.LoraConfig(r=2, target_modules=["key"]))
    perturb(theirs, seed=8).save_pretrained(tmp_path / "bare")
    task, _ = load_peft(base("bert"), tmp_path / "bare")
    assert isinstance(task.bert.encoder.layer[0].attention.self.key, pz.LoRALinear)
    with torch.no_grad():
        assert max_diff(task.bert(IDS).last_hidden_state, theirs(IDS).last_hidden_state) <= ATOL


def test_peft_dict_round_trips_through_peft_config() -> None:
    config = pz.LoraConfig(
        rank=4, target_modules=["query", "value"], rank_pattern={"value": 2}, layers_to_transform=[1]
    )
    data = peft.LoraConfig(**peft_dict_from_config(config)).to_dict()
    back = lora_config_from_peft(data)
    model = base("bert")
    assert (
        back.find(model)
        == config.find(model)
        == ["bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.attention.self.value"]
    )
    # alpha=None means alpha = the module's own rank: PEFT needs it spelled out per pattern.
    for name in config.find(model):
        assert back.rank_alpha(name) == config.rank_alpha(name)


def test_config_translation_details() -> None:
    lora = lora_config_from_peft(
        peft.LoraConfig(r=3, lora_alpha=5, target_modules=["query"], use_rslora=True)
    )
    assert (lora.rank, lora.alpha, lora.rslora, lora.target_modules) == (3, 5.0, True, ["query"])
    ia3 = config_from_peft({"peft_type": "IA3", "target_modules": ["k_proj"], "feedforward_modules": []})
    assert isinstance(ia3, pz.IA3Config) and not ia3.feedforward_modules
    with pytest.raises(PeftFormatError, match="expected 'LORA'"):
        lora_config_from_peft({"peft_type": "IA3", "target_modules": ["k_proj"]})
    with pytest.raises(PeftFormatError, match=r"r must be an int in \[1, "):
        lora_config_from_peft({"peft_type": "LORA", "target_modules": ["q"], "r": 0})
    with pytest.raises(PeftFormatError, match="target_modules is missing"):
        lora_config_from_peft({"peft_type": "LORA"})
    # peft_zoo's feedforward_modules=None means none; PEFT's None means "defaults for this model type".
    assert peft_dict_from_config(pz.IA3Config(target_modules=["dense"]))["feedforward_modules"] == []
    with pytest.raises(PeftFormatError, match="subset of target_modules"):
        peft_dict_from_config(pz.IA3Config(target_modules=["key"], feedforward_modules=["dense"]))
    with pytest.raises(PeftFormatError, match="no layers_to_transform"):
        peft_dict_from_config(pz.IA3Config(target_modules=["key"], layers_to_transform=[0]))
    with pytest.raises(PeftFormatError, match="task_type="):
        peft_dict_from_config(lora, task_type="CLASSIFY")


def test_tensors_take_the_dtype_of_the_layer(bert_adapter: Path) -> None:
    """PEFT keeps adapters in float32 even on a bfloat16 model; they are cast on load."""
    model, _ = load_peft(base("bert").to(torch.bfloat16), bert_adapter)
    layer = model.bert.encoder.layer[1].attention.self.query
    assert layer.lora_A.dtype == torch.bfloat16
    saved = read_peft(bert_adapter)[1][f"{Q1}.lora_A.weight"]
    assert torch.equal(layer.lora_A, saved.to(torch.bfloat16))


def test_legacy_bin_and_named_adapter_subfolder(tmp_path: Path) -> None:
    theirs = perturb(peft.get_peft_model(base("bert"), peft.LoraConfig(r=2, target_modules=["query"])), 9)
    theirs.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "adapter_model.bin").is_file()
    ours, _ = load_peft(base("bert"), tmp_path)
    assert max_diff(logits(ours.eval()), logits(theirs)) <= ATOL

    theirs.add_adapter("other", peft.LoraConfig(r=2, target_modules=["value"]))
    theirs.save_pretrained(tmp_path / "multi", selected_adapters=["other"])
    with pytest.raises(PeftFormatError, match=r"subfolders: \['other'\]"):
        read_peft(tmp_path / "multi")


# ----------------------------------------------------------------------------- refused loads


@pytest.fixture(scope="module")
def bert_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PEFT LoRA adapter for the BERT model: query/value of both layers, classifier saved."""
    path = tmp_path_factory.mktemp("peft") / "bert"
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"]
    )
    perturb(peft.get_peft_model(base("bert"), config), seed=10).save_pretrained(path)
    return path


def edited(src: Path, dst: Path, *, config=None, tensors=None) -> Path:
    """A copy of the adapter at ``src`` with its config and/or tensor dict edited in place."""
    shutil.copytree(src, dst)
    if config is not None:
        data = json.loads((dst / "adapter_config.json").read_text())
        config(data)
        (dst / "adapter_config.json").write_text(json.dumps(data))
    if tensors is not None:
        state = safetensors.torch.load_file(dst / "adapter_model.safetensors")
        tensors(state)
        safetensors.torch.save_file(state, dst / "adapter_model.safetensors")
    return dst


def refused(path: Path, match: str, model: nn.Module | None = None) -> str:
    model = base("bert") if model is None else model
    before = fingerprint(model)
    with pytest.raises(PeftFormatError, match=match) as info:
        load_peft(model, path)
    assert_model_unchanged(model, before, what="a refused load_peft")
    return str(info.value)


Q1 = PEFT_PREFIX + "bert.encoder.layer.1.attention.self.query"


def test_refuses_a_missing_tensor(bert_adapter: Path, tmp_path: Path) -> None:
    path = edited(bert_adapter, tmp_path / "a", tensors=lambda s: s.pop(f"{Q1}.lora_B.weight"))
    refused(path, r"missing tensors \['bert\.encoder\.layer\.1\.attention\.self\.query\.lora_B\.weight'\]")

    def drop_layer(state: dict) -> None:  # both tensors of a targeted layer
        del state[f"{Q1}.lora_A.weight"], state[f"{Q1}.lora_B.weight"]

    refused(edited(bert_adapter, tmp_path / "b", tensors=drop_layer), "missing tensors")
    drop_head = edited(bert_adapter, tmp_path / "c", tensors=lambda s: s.pop(PEFT_PREFIX + "classifier.bias"))
    refused(drop_head, r"missing tensors \['classifier\.bias'\]")


def test_refuses_a_shape_mismatch(bert_adapter: Path, tmp_path: Path) -> None:
    def wrong_rank(state: dict) -> None:
        state[f"{Q1}.lora_A.weight"] = torch.zeros(3, 16)

    message = refused(edited(bert_adapter, tmp_path / "a", tensors=wrong_rank), r"shape \(3, 16\) in file")
    assert "(4, 16) expected" in message
    # The config's rank disagrees with every tensor.
    refused(edited(bert_adapter, tmp_path / "b", config=lambda d: d.update(r=8)), "shape")


def test_refuses_unexpected_tensors(bert_adapter: Path, tmp_path: Path) -> None:
    def extra(state: dict) -> None:
        state[PEFT_PREFIX + "bert.pooler.dense.lora_A.weight"] = torch.zeros(4, 16)

    refused(edited(bert_adapter, tmp_path / "a", tensors=extra), "unexpected tensors .*pooler")

    def dora(state: dict) -> None:
        state[f"{Q1}.lora_magnitude_vector"] = torch.ones(16)

    refused(edited(bert_adapter, tmp_path / "b", tensors=dora), r"unexpected tensors .*\(DoRA")


def test_refuses_unknown_config_fields(bert_adapter: Path, tmp_path: Path) -> None:
    path = edited(bert_adapter, tmp_path / "a", config=lambda d: d.update(shiny_new_option=1, other=None))
    refused(path, r"unknown config fields \['other', 'shiny_new_option'\]")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lora_bias", True),
        ("target_parameters", ["mlp.experts.gate_up_proj"]),
        ("layer_replication", [[0, 2]]),
        ("trainable_token_indices", [1, 2]),
        ("megatron_config", {"tensor_model_parallel_size": 2}),
        ("alora_invocation_tokens", [5]),
        ("use_qalora", True),
    ],
)
def test_refuses_features_it_does_not_implement(
    bert_adapter: Path, tmp_path: Path, field: str, value
) -> None:
    path = edited(bert_adapter, tmp_path / "a", config=lambda d: d.update({field: value}))
    refused(path, rf"{field}=")


@pytest.mark.parametrize("init", [True, False, "gaussian", "eva", "orthogonal"])
def test_initialisation_only_fields_are_ignored(bert_adapter: Path, tmp_path: Path, init) -> None:
    path = edited(
        bert_adapter,
        tmp_path / "a",
        config=lambda d: d.update(init_lora_weights=init, runtime_config={"ephemeral_gpu_offload": False}),
    )
    load_peft(base("bert"), path)


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_4", "olora", "corda", "loftq"])
def test_refuses_adapters_for_a_rewritten_base(bert_adapter: Path, tmp_path: Path, init: str) -> None:
    path = edited(bert_adapter, tmp_path / "a", config=lambda d: d.update(init_lora_weights=init))
    refused(path, "rewrites the base weights")


def test_refuses_other_peft_types(bert_adapter: Path, tmp_path: Path) -> None:
    path = edited(bert_adapter, tmp_path / "a", config=lambda d: d.update(peft_type="PREFIX_TUNING"))
    refused(path, r"'LORA' and 'IA3' adapters only")


def test_refuses_another_architectures_checkpoint(tmp_path: Path) -> None:
    theirs = peft.get_peft_model(base("gpt2"), peft.LoraConfig(r=2, target_modules=["c_attn"]))
    theirs.save_pretrained(tmp_path / "gpt2")
    refused(tmp_path / "gpt2", r"does not have, e\.g\. \['transformer\.h\.0\.attn\.c_attn'")
    theirs = peft.get_peft_model(base("llama"), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    theirs.save_pretrained(tmp_path / "llama")
    refused(tmp_path / "llama", "another architecture", model=base("gpt2"))


def test_refuses_corrupt_or_missing_files(bert_adapter: Path, tmp_path: Path) -> None:
    path = edited(bert_adapter, tmp_path / "a")
    data = (path / "adapter_model.safetensors").read_bytes()
    (path / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    refused(path, "truncated or corrupt")
    (path / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    refused(path, "truncated or corrupt")
    (path / "adapter_model.safetensors").unlink()
    refused(path, "no adapter_model.safetensors")
    (path / "adapter_config.json").write_text("{not json")
    refused(path, "invalid JSON")
    (path / "adapter_config.json").unlink()
    refused(path, "no adapter_config.json")
    refused(tmp_path / "nowhere", "no such adapter directory")


def test_refuses_non_finite_and_non_float_values(bert_adapter: Path, tmp_path: Path) -> None:
    def nan(state: dict) -> None:
        state[f"{Q1}.lora_A.weight"][0, 0] = float("nan")

    refused(edited(bert_adapter, tmp_path / "a", tensors=nan), "contains NaN or inf")

    def ints(state: dict) -> None:
        state[f"{Q1}.lora_A.weight"] = torch.zeros(4, 16, dtype=torch.int64)

    refused(edited(bert_adapter, tmp_path / "b", tensors=ints), "floating-point")


def test_a_string_where_a_bool_or_number_belongs_is_refused_not_coerced(
    bert_adapter: Path, tmp_path: Path
) -> None:
    """Issue 12: ``"use_rslora": "no"`` loaded with rsLoRA on (scale 4.0 instead of 2.0) and
    ``"lora_alpha": "8"`` was read as 8.0."""
    message = refused(
        edited(bert_adapter, tmp_path / "a", config=lambda d: d.update(use_rslora="no")), "use_rslora"
    )
    assert "adapter_config.json" in message and "'no'" in message
    refused(edited(bert_adapter, tmp_path / "b", config=lambda d: d.update(lora_alpha="8")), "lora_alpha")
    refused(
        edited(bert_adapter, tmp_path / "c", config=lambda d: d.update(layers_to_transform=[10**30])),
        "layers_to_transform",
    )
    with pytest.raises(PeftFormatError, match="use_rslora"):
        read_peft(tmp_path / "a")
    model, _ = load_peft(
        base("bert"), edited(bert_adapter, tmp_path / "d", config=lambda d: d.update(use_rslora=False))
    )
    assert model.bert.encoder.layer[0].attention.self.query.scale == 2.0  # lora_alpha 8 / r 4


def test_refuses_config_json_that_is_nested_huge_or_ambiguous(bert_adapter: Path, tmp_path: Path) -> None:
    path = edited(bert_adapter, tmp_path / "a")
    for text, match in [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),  # was a bare RecursionError
        ('{"peft_type": "LORA", "target_modules": ["query"], "r": 2, "r": 4}', "the key 'r' appears twice"),
        (" " * (17 << 20) + "{}", "too large"),
    ]:
        (path / "adapter_config.json").write_text(text)
        assert "adapter_config.json" in refused(path, match)


def test_catastrophic_regex_in_a_config_is_stopped_naming_the_field(
    bert_adapter: Path, tmp_path: Path
) -> None:
    model = base("bert")
    model.add_module("a" * 40 + "b", nn.Linear(2, 2))
    path = edited(bert_adapter, tmp_path / "a", config=lambda d: d.update(target_modules="(a|aa)+$"))
    message = refused(path, "target_modules: the regular expression", model=model)
    assert "adapter_config.json" in message


def test_refuses_an_ia3_adapter_whose_feedforward_modules_differ(tmp_path: Path) -> None:
    theirs = peft.get_peft_model(
        base("llama"),
        peft.IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]),
    )
    theirs.save_pretrained(tmp_path / "a")
    path = edited(tmp_path / "a", tmp_path / "b", config=lambda d: d.update(feedforward_modules=[]))
    refused(path, r"does feedforward_modules match", model=base("llama"))


def test_refuses_an_already_adapted_model(bert_adapter: Path) -> None:
    model, _ = pz.inject_lora(base("bert"), ["bert.encoder.layer.0.attention.self.key"], rank=2)
    refused(bert_adapter, "already has adapter layers", model=model)


def test_a_failure_halfway_through_is_rolled_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation makes this unreachable in practice; the rollback is the second line of defence."""
    config = pz.LoraConfig(rank=2, target_modules=["query"], modules_to_save=["classifier"], bias="lora_only")
    theirs = perturb(peft.get_peft_model(base("bert"), peft_config(config, "bert")), seed=11)
    theirs.save_pretrained(tmp_path)
    from peft_zoo.interop import peft_format

    real = peft_format._tensor_at

    def failing(model: nn.Module, path: str) -> torch.Tensor:
        if "trained_module" in path:  # after the LoRA tensors and the biases were copied
            raise RuntimeError("disk on fire")
        return real(model, path)

    monkeypatch.setattr(peft_format, "_tensor_at", failing)
    model = base("bert")
    before = fingerprint(model)
    with pytest.raises(RuntimeError, match="disk on fire"):
        load_peft(model, tmp_path)
    assert_model_unchanged(model, before, what="a load that failed halfway")


# ----------------------------------------------------------------------------- refused saves


def test_save_refuses_what_peft_cannot_express(tmp_path: Path) -> None:
    q = "bert.encoder.layer.0.attention.self.query"
    v = "bert.encoder.layer.0.attention.self.value"
    mixed, _ = pz.inject_lora(base("bert"), [q], rank=2)
    pz.inject_ia3(mixed, [v])
    batched, _ = pz.inject_batched_lora(base("bert"), [q], num_adapters=2, rank=2)
    merged, _ = pz.inject_lora(base("bert"), [q], rank=2)
    pz.merge_adapters(merged)
    other = nn.Sequential(pz.LoRALinear(nn.Linear(4, 4), 2), pz.BottleneckAdapter(4, 2))
    for model, match in [
        (mixed, "mixes LoRA"),
        (batched, r"BatchedLoRALinear.*slot_as_lora"),
        (merged, "are merged; unmerge_adapters"),
        (other, r"cannot hold these adapter layers: \{'1': 'BottleneckAdapter'\}"),
        (base("bert"), "no LoRALinear, DoRALinear or IA3Linear"),
    ]:
        with pytest.raises(PeftFormatError, match=match):
            save_peft(model, tmp_path / "out")
        assert not (tmp_path / "out").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(PeftFormatError, match="is a file"):
        save_peft(pz.inject_lora(base("bert"), [q], rank=2)[0], tmp_path / "file")


def test_save_is_atomic_and_overwrites(tmp_path: Path) -> None:
    ours, _ = pz.adapt_model(base("bert"), pz.LoraConfig(rank=2, target_modules=["query"]))
    save_peft(perturb(ours, 12), tmp_path)
    first = read_peft(tmp_path)[1]
    save_peft(perturb(ours, 13), tmp_path)
    second = read_peft(tmp_path)[1]
    assert sorted(first) == sorted(second) and not all(torch.equal(first[k], second[k]) for k in first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


# ----------------------------------------------------------------------------- the example


def test_example_peft_roundtrip_runs_and_its_claims_hold(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("peft_roundtrip", ROOT / "examples" / "peft_roundtrip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = module.main(steps=20)
    out = capsys.readouterr().out
    assert result["loss_last"] < result["loss_first"] - 0.01, result["losses"]
    assert f"loss fell: {result['loss_first']:.4f} -> {result['loss_last']:.4f}" in out
    assert result["peft_diff"] <= ATOL and result["load_peft_diff"] <= ATOL
    assert f"max |diff| peft_zoo vs PEFT: {result['peft_diff']:.2e}" in out
    assert f"max |diff| after load_peft: {result['load_peft_diff']:.2e}" in out


def test_fused_q_and_v_lora_is_saved_as_the_plain_lora_it_equals(tmp_path: Path) -> None:
    config = pz.LoraConfig(
        rank=2, alpha=4, target_modules=["c_attn"], target_parts={"c_attn": [True, False, True]}
    )
    ours, _ = pz.adapt_model(base("gpt2"), config)
    perturb(ours, seed=3)
    path = save_peft(ours, tmp_path / "fused")
    saved = json.loads((path / "adapter_config.json").read_text())
    assert saved["r"] == 4 and saved["lora_alpha"] == 8  # 2 slices: rank 2 * 2, alpha 2 * 4, same scale
    theirs = peft.PeftModel.from_pretrained(base("gpt2"), path).eval()
    assert max_diff(logits(ours), logits(base("gpt2"))) > 1e-3
    assert max_diff(logits(ours), logits(theirs)) <= ATOL
    back, _ = load_peft(base("gpt2"), path)
    assert max_diff(logits(back), logits(ours)) <= ATOL


# ----------------------------------------------------------------------------- DoRA


@pytest.fixture(scope="module")
def bert_dora_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PEFT DoRA adapter for the BERT model: query/value of both layers."""
    path = tmp_path_factory.mktemp("peft") / "bert-dora"
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], use_dora=True)
    perturb(peft.get_peft_model(base("bert"), config), seed=14).save_pretrained(path)
    return path


def test_dora_is_read_with_peft_key_names_into_dora_layers(bert_dora_adapter: Path) -> None:
    config, state = read_peft(bert_dora_adapter)
    assert config["use_dora"] is True
    magnitudes = sorted(k for k in state if k.endswith(".lora_magnitude_vector"))
    assert len(magnitudes) == 4 and all(tuple(state[k].shape) == (16,) for k in magnitudes)
    model, params = load_peft(base("bert"), bert_dora_adapter)
    layer = model.get_submodule("bert.encoder.layer.1.attention.self.query")
    assert isinstance(layer, DoRALinear)
    assert torch.equal(layer.magnitude, state[f"{Q1}.lora_magnitude_vector"])
    assert torch.equal(layer.lora_A, state[f"{Q1}.lora_A.weight"])
    assert any(p is layer.magnitude for p in params) and layer.magnitude.requires_grad


def test_refuses_dora_adapters_with_a_bad_magnitude(bert_dora_adapter: Path, tmp_path: Path) -> None:
    key = f"{Q1}.lora_magnitude_vector"
    missing = edited(bert_dora_adapter, tmp_path / "a", tensors=lambda s: s.pop(key))
    refused(missing, r"missing tensors .*query\.lora_magnitude_vector.*use_dora is on")

    def short(state: dict) -> None:
        state[key] = torch.ones(8)

    refused(
        edited(bert_dora_adapter, tmp_path / "b", tensors=short), r"shape \(8,\) in file, \(16,\) expected"
    )

    def nan(state: dict) -> None:
        state[key][3] = float("nan")

    refused(edited(bert_dora_adapter, tmp_path / "c", tensors=nan), "lora_magnitude_vector: contains NaN")
    off = edited(bert_dora_adapter, tmp_path / "d", config=lambda d: d.update(use_dora=False))
    refused(off, r"unexpected tensors .*\(DoRA magnitudes, but the config has use_dora off")


def test_save_refuses_dora_mixed_with_plain_lora_or_merged(tmp_path: Path) -> None:
    v = "bert.encoder.layer.0.attention.self.value"
    mixed, _ = pz.adapt_model(base("bert"), pz.LoraConfig(rank=2, target_modules=["query"], use_dora=True))
    pz.inject_lora(mixed, [v], rank=2)
    merged, _ = pz.adapt_model(base("bert"), pz.LoraConfig(rank=2, target_modules=["query"], use_dora=True))
    pz.merge_adapters(merged)
    for model, match in [(mixed, r"mixes DoRA .* and plain LoRA \['" + v), (merged, "are merged")]:
        with pytest.raises(PeftFormatError, match=match):
            save_peft(model, tmp_path / "out")
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_qlora_adapter_saves_as_plain_lora_that_peft_applies_to_the_dequantised_base(
    arch: str, tmp_path: Path
) -> None:
    """A QLoRA adapter is a plain LoRA: PEFT on a base holding the dequantised NF4 weights must
    compute exactly what the QLoRA model computes (GPT-2: from Conv1D, fan_in_fan_out)."""
    from peft_zoo.injection.inject import inject_qlora
    from peft_zoo.qlora import QLoRALinear

    targets = {"bert": ["query", "value"], "gpt2": ["c_attn"]}[arch]
    model = base(arch)
    names = [n for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in targets]
    inject_qlora(model, names, rank=4, alpha=8)
    torch.manual_seed(5)
    with torch.no_grad():
        for n in names:
            model.get_submodule(n).lora_B.normal_(std=1.0)
    save_peft(model, tmp_path / "qlora")
    config = json.loads((tmp_path / "qlora" / "adapter_config.json").read_text())
    assert config["use_dora"] is False and config["fan_in_fan_out"] == (arch == "gpt2")

    reference = base(arch)  # the float base, its adapted weights replaced by the NF4 ones
    with torch.no_grad():
        for n in names:
            layer = model.get_submodule(n)
            assert isinstance(layer, QLoRALinear)
            w = layer.base.dequantize_weight(torch.float32)  # (out, in)
            reference.get_submodule(n).weight.copy_(w.T if arch == "gpt2" else w)
    peft_model = peft.PeftModel.from_pretrained(reference, tmp_path / "qlora").eval()
    model.eval()
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        ours, theirs = model(ids).logits, peft_model(ids).logits
    assert (ours - theirs).abs().max() <= ATOL
    with torch.no_grad():  # the adapter matters: without it the outputs differ
        plain = peft_model.get_base_model()
        with peft_model.disable_adapter():
            assert (plain(ids).logits - ours).abs().max() > 10 * ATOL
