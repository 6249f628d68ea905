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

Also here: the config details of a round trip (patterns, rsLoRA, biases, task heads, the
model's ``base_model_prefix``, the translation both ways) and legacy files. Elsewhere:
refused loads and dtypes (test_peft_format_load.py), refused saves and the example
(test_peft_format_save.py), fused LoRA, DoRA and QLoRA (test_peft_format_variants.py); shared
helpers in peft_format_helpers.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from peft_format_helpers import (  # noqa: E402
    ATOL,
    IDS,
    base,
    logits,
    max_diff,
    n_layers,
    peft_config,
    perturb,
    same_state,
)

import peft_zoo as pz  # noqa: E402
from peft_zoo.interop import (  # noqa: E402
    PeftFormatError,
    config_from_peft,
    load_peft,
    lora_config_from_peft,
    peft_dict_from_config,
    read_peft,
    save_peft,
)

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
