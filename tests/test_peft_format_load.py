"""load_peft refuses what does not fit, naming the problem, and leaves the model exactly as it
was (``peft_zoo.testing.fingerprint``): it validates everything before the first change, and
a failure halfway through is rolled back. Also: tensors take the dtype of their layer.

Each case edits a copy of one PEFT adapter (``bert_adapter``: query/value of a small BERT,
classifier saved) and checks the message; helpers in peft_format_helpers.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from peft_format_helpers import Q1, base, edited, peft_config, perturb, refused  # noqa: E402

import peft_zoo as pz  # noqa: E402
from peft_zoo.interop import PEFT_PREFIX, PeftFormatError, load_peft, peft_read, read_peft  # noqa: E402
from peft_zoo.testing import assert_model_unchanged, fingerprint  # noqa: E402


@pytest.fixture(scope="module")
def bert_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PEFT LoRA adapter for the BERT model: query/value of both layers, classifier saved."""
    path = tmp_path_factory.mktemp("peft") / "bert"
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"]
    )
    perturb(peft.get_peft_model(base("bert"), config), seed=10).save_pretrained(path)
    return path


def test_tensors_take_the_dtype_of_the_layer(bert_adapter: Path) -> None:
    """PEFT keeps adapters in float32 even on a bfloat16 model; they are cast on load."""
    model, _ = load_peft(base("bert").to(torch.bfloat16), bert_adapter)
    layer = model.bert.encoder.layer[1].attention.self.query
    assert layer.lora_A.dtype == torch.bfloat16
    saved = read_peft(bert_adapter)[1][f"{Q1}.lora_A.weight"]
    assert torch.equal(layer.lora_A, saved.to(torch.bfloat16))


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


@pytest.mark.parametrize("init", ["corda", "loftq", "lora_ga"])
def test_refuses_adapters_for_a_rewritten_base(bert_adapter: Path, tmp_path: Path, init: str) -> None:
    # PiSSA / OLoRA load (the decomposition is redone, as PEFT does): test_peft_format_zoo.py
    path = edited(bert_adapter, tmp_path / "a", config=lambda d: d.update(init_lora_weights=init))
    refused(path, "rewrites the base weights from data or a quantisation")


def test_refuses_other_peft_types(bert_adapter: Path, tmp_path: Path) -> None:
    path = edited(bert_adapter, tmp_path / "a", config=lambda d: d.update(peft_type="HRA"))
    refused(path, r"'LORA', 'IA3', 'LOHA', .* and 'PREFIX_TUNING' adapters only")


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
    real = peft_read.tensor_at

    def failing(model: nn.Module, path: str) -> torch.Tensor:
        if "trained_module" in path:  # after the LoRA tensors and the biases were copied
            raise RuntimeError("disk on fire")
        return real(model, path)

    monkeypatch.setattr(peft_read, "tensor_at", failing)
    model = base("bert")
    before = fingerprint(model)
    with pytest.raises(RuntimeError, match="disk on fire"):
        load_peft(model, tmp_path)
    assert_model_unchanged(model, before, what="a load that failed halfway")
