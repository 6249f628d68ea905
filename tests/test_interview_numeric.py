"""Numeric interview questions (peft_zoo/exercises/interview/numeric.py): seeded, graded with a
stated tolerance, and their answers checked against instantiated models (on the meta device,
so a 13B model costs milliseconds), real NF4 tensors, a real AdamW step and counted FLOPs."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

import peft_zoo as pz
from peft_zoo.cost.geometry import build_model
from peft_zoo.exercises.interview import numeric
from peft_zoo.exercises.interview.numeric_parts import draw_lora_setup, layer0, spell
from peft_zoo.exercises.interview.questions import TOPICS

SEEDS = range(12)


def setup_of(kind: str, seed: int):
    return draw_lora_setup(random.Random(f"{kind}:{seed}"))


def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("kind", list(numeric.KINDS))
def test_questions_are_deterministic_varied_and_graded_right_and_wrong(kind: str) -> None:
    questions = [numeric.generate(kind, s) for s in SEEDS]
    assert questions == [numeric.generate(kind, s) for s in SEEDS]
    assert len({q.prompt for q in questions}) >= 3
    for q in questions:
        assert q.id == f"{kind}:{q.id.split(':')[1]}" and numeric.from_id(q.id) == q
        assert (
            q.topic in TOPICS and q.answer > 0 and q.worked and q.unit in q.prompt
        ) or q.unit == "parameters"
        assert numeric.grade(q, repr(q.answer)) and numeric.grade(q, f"{q.answer:,.6g}")
        assert numeric.grade(q, f"{q.answer:.6g} {q.unit}")
        assert not numeric.grade(q, repr(2 * q.answer)) and not numeric.grade(q, repr(q.answer / 2))
        assert not numeric.grade(q, "no idea") and not numeric.grade(q, "")


def test_the_worked_computation_ends_in_the_answer() -> None:
    for kind in ("lora_trainable", "ia3_trainable", "bottleneck_params", "adapter_mb"):
        for seed in SEEDS:
            q = numeric.generate(kind, seed)
            assert f"{q.answer:,.0f}" in q.worked or f"{q.answer:.3f}" in q.worked, q.id


def test_forgetting_the_layers_or_the_narrow_kv_width_is_wrong() -> None:
    for seed in SEEDS:
        q = numeric.generate("lora_trainable", seed)
        geometry, targets, rank = setup_of("lora_trainable", seed)
        assert not numeric.grade(q, str(q.answer / geometry.num_layers))
        if geometry.kv_dim != geometry.hidden_size and {"k_proj", "v_proj"} <= set(targets):
            square = (
                sum(rank * 2 * geometry.hidden_size for _ in layer0(geometry, targets)) * geometry.num_layers
            )
            assert not numeric.grade(q, str(square))


def test_prompts_spell_out_the_dimensions_the_count_needs() -> None:
    for kind in ("lora_trainable", "adapter_mb", "optimizer_memory", "dynamic_flops", "break_even"):
        for seed in SEEDS:
            q = numeric.generate(kind, seed)
            geometry = setup_of(kind, seed)[0]
            assert q.prompt.startswith(spell(geometry)), q.id
            for number in (geometry.hidden_size, geometry.num_layers, geometry.intermediate_size):
                assert str(number) in q.prompt, q.id
    mistral = next(g for g in numeric.GEOMETRIES if g.name == "Mistral-7B")
    assert "32 query heads and 8 key/value heads of 128, grouped-query attention" in spell(mistral)


def test_three_significant_figures_pass_for_counts() -> None:
    q = numeric.generate("lora_trainable", 0)
    assert numeric.grade(q, f"{q.answer / 1e6:.3g}M") and numeric.grade(
        q, f"about {q.answer / 1e6:.3g} million"
    )


@given(n=st.integers(0, 10**13), suffix=st.sampled_from(["", "k", "M", "B"]))
@settings(deadline=None, max_examples=60)
def test_parse_number_reads_separators_and_suffixes(n: int, suffix: str) -> None:
    scale = {"": 1, "k": 1e3, "M": 1e6, "B": 1e9}[suffix]
    assert numeric.parse_number(f"{n:,}{suffix}") == pytest.approx(n * scale)
    assert numeric.parse_number(f"~ {n:_}") == n
    assert numeric.parse_number(f"{n:e}") == pytest.approx(n, rel=1e-6)


@pytest.mark.parametrize(
    "text", ["", "abc", "1e", "3,14", "1..2", "12 34", "__import__('os')", "1 2 3", "1e400", "nan", "inf"]
)
def test_parse_number_refuses_what_is_not_a_number(text: str) -> None:
    assert numeric.parse_number(text) is None


def test_bad_kind_topic_and_seed_are_refused() -> None:
    with pytest.raises(KeyError, match="no numeric question kind 'lora'"):
        numeric.generate("lora", 0)
    with pytest.raises(ValueError, match="non-negative int"):
        numeric.generate("nf4_bits", "3")
    with pytest.raises(ValueError, match="non-negative int"):
        numeric.generate("nf4_bits", True)
    with pytest.raises(ValueError, match="unknown topic"):
        numeric.kinds("maths")
    with pytest.raises(ValueError, match="not a numeric question id"):
        numeric.from_id("nf4_bits:x")
    with pytest.raises(KeyError, match="no numeric question kind"):
        numeric.describe("lora")
    assert set(numeric.kinds("all")) == set(numeric.KINDS)
    for kind in numeric.KINDS:
        line = numeric.describe(kind)
        assert line.startswith(f"{kind} [{numeric.generate(kind, 0).topic}]: ") and "\n" not in line
    assert all(numeric.kinds(t) for t in TOPICS)


# --------------------------------------------------------------------- against real objects


def lora_model_trainable(geometry, targets: list[str], rank: int) -> int:
    with torch.device("meta"):
        model, _ = pz.adapt_model(build_model(geometry), pz.LoraConfig(rank=rank, target_modules=targets))
    return trainable(model)


@pytest.mark.parametrize("seed", range(6))
def test_lora_counts_and_adapter_sizes_equal_an_adapted_model(seed: int) -> None:
    assert numeric.generate("lora_trainable", seed).answer == lora_model_trainable(
        *setup_of("lora_trainable", seed)
    )
    q = numeric.generate("adapter_mb", seed)
    n = lora_model_trainable(*setup_of("adapter_mb", seed))
    assert q.answer * 1e6 == (4 if "float32" in q.prompt else 2) * n


@pytest.mark.parametrize("seed", range(8))
def test_ia3_counts_equal_an_adapted_model(seed: int) -> None:
    q = numeric.generate("ia3_trainable", seed)
    geometry = next(g for g in numeric.GEOMETRIES if q.prompt.startswith(spell(g) + ":"))
    targets, feedforward = numeric.IA3_DEFAULT_TARGETS[geometry.family]
    config = pz.IA3Config(target_modules=list(targets), feedforward_modules=list(feedforward))
    with torch.device("meta"):
        model, _ = pz.adapt_model(build_model(geometry), config)
    assert trainable(model) == q.answer


@pytest.mark.parametrize("seed", range(6))
def test_bottleneck_counts_equal_instantiated_adapters(seed: int) -> None:
    q = numeric.generate("bottleneck_params", seed)
    d = int(q.prompt.split("d = ")[1].split(",")[0])
    layers = int(q.prompt.split(", ")[1].split(" layers")[0])
    reduction = int(q.prompt.split("reduction factor ")[1].split(",")[0])
    per_layer = 2 if "Houlsby" in q.prompt else 1
    with torch.device("meta"):
        adapter = pz.BottleneckAdapter(d, d // reduction)
    assert sum(p.numel() for p in adapter.parameters()) * per_layer * layers == q.answer


@pytest.mark.parametrize("seed", range(8))
def test_nf4_bits_equal_a_quantised_tensor(seed: int) -> None:
    q = numeric.generate("nf4_bits", seed)
    blocksize = int(q.prompt.split("blocks of ")[1].split(" ")[0])
    double = "with double" in q.prompt
    n = blocksize * 256 * 8
    stored = pz.quantize_nf4(torch.randn(n), blocksize, double_quant=double)
    mean_bits = 32 / n if double else 0.0  # the one float32 mean double quantisation keeps
    assert stored.bits_per_parameter == pytest.approx(q.answer + mean_bits, abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_nf4_model_weights_count_the_block_linears(seed: int) -> None:
    q = numeric.generate("nf4_model_gb", seed)
    geometry = next(g for g in numeric.GEOMETRIES if q.prompt.startswith(spell(g) + ":"))
    with torch.device("meta"):
        model = build_model(geometry)
    n = sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and ".layers." in name
    )
    assert q.answer == pytest.approx(n * numeric.nf4_bits(64, True) / 8 / 1e9, rel=1e-12)


def test_adamw_keeps_eight_bytes_of_state_per_trainable_parameter() -> None:
    layer = pz.LoRALinear(torch.nn.Linear(24, 40), rank=4)
    params = [p for p in layer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params)
    layer(torch.randn(3, 24)).sum().backward()
    optimizer.step()
    moments = sum(
        t.numel() * t.element_size() for s in optimizer.state.values() for k, t in s.items() if k != "step"
    )
    assert moments == 8 * sum(p.numel() for p in params)
    master = sum(p.detach().float().element_size() * p.numel() for p in params)  # the float32 copy
    assert master == 4 * sum(p.numel() for p in params)
    kinds_seen = set()
    for seed in range(12):
        q = numeric.generate("optimizer_memory", seed)
        n = int(q.worked.split(" trainable")[0].replace(",", ""))
        mixed = "master weights" in q.prompt
        full = "full fine-tuning" in q.prompt
        kinds_seen.add((mixed, full))
        assert q.answer * (1e9 if full else 1e6) == pytest.approx((12 if mixed else 8) * n, rel=1e-12)
        geometry, targets, rank = setup_of("optimizer_memory", seed)
        if full:
            with torch.device("meta"):
                assert n == sum(p.numel() for p in build_model(geometry).parameters())
        else:
            assert n == lora_model_trainable(geometry, targets, rank)
        if mixed:  # forgetting the master copy is wrong
            assert not numeric.grade(q, repr(q.answer * 8 / 12))
    assert len(kinds_seen) == 4  # full / LoRA, with and without master weights


def counted_lora_flops(geometry, targets: list[str], rank: int) -> tuple[int, int]:
    """Per layer, counted by FlopCounterMode: the two LoRA GEMMs for one token, and B @ A."""
    lora_flops = merge_flops = 0
    for _, d_in, d_out in layer0(geometry, targets):
        with torch.device("meta"):
            layer = pz.LoRALinear(torch.nn.Linear(d_in, d_out, bias=False), rank=rank)
            x = torch.empty(1, d_in)
        with FlopCounterMode(display=False) as base:
            layer.base(x)
        with FlopCounterMode(display=False) as full:
            layer(x)
        with FlopCounterMode(display=False) as merge:
            layer.lora_B @ layer.lora_A
        lora_flops += full.get_total_flops() - base.get_total_flops()
        merge_flops += merge.get_total_flops()
    return lora_flops, merge_flops


@pytest.mark.parametrize("seed", range(4))
def test_dynamic_flops_and_break_even_equal_counted_flops(seed: int) -> None:
    geometry, targets, rank = setup_of("dynamic_flops", seed)
    lora_flops, _ = counted_lora_flops(geometry, targets, rank)
    assert numeric.generate("dynamic_flops", seed).answer * 1e6 == lora_flops * geometry.num_layers
    geometry, targets, rank = setup_of("break_even", seed)
    lora_flops, merge_flops = counted_lora_flops(geometry, targets, rank)
    # the elementwise parts the prompt asks for: scale + add of in·out per merge, of out per token
    inout = sum(i * o for _, i, o in layer0(geometry, targets))
    outs = sum(o for _, _, o in layer0(geometry, targets))
    expected = 2 * (merge_flops + 2 * inout) / (lora_flops + 2 * outs)
    q = numeric.generate("break_even", seed)
    assert q.answer == pytest.approx(expected, rel=1e-12)
    assert numeric.grade(q, f"{expected:.0f}")


def test_break_even_rejects_leaving_out_the_elementwise_work_at_low_rank() -> None:
    checked = 0
    for seed in range(40):
        geometry, targets, rank = setup_of("break_even", seed)
        if rank > 8:
            continue
        lora_flops, merge_flops = counted_lora_flops(geometry, targets, rank)
        assert not numeric.grade(numeric.generate("break_even", seed), str(2 * merge_flops / lora_flops))
        checked += 1
    assert checked >= 2


def test_nf4_double_quantisation_needs_the_second_level_constants() -> None:
    checked = 0
    for seed in range(40):
        q = numeric.generate("nf4_bits", seed)
        blocksize = int(q.prompt.split("blocks of ")[1].split(" ")[0])
        assert numeric.grade(q, f"{q.answer:.4f}") and numeric.grade(q, f"{q.answer:.4f} bits")
        if "with double" in q.prompt:
            assert not numeric.grade(q, str(4 + 8 / blocksize))  # second-level float32 constants left out
            assert not numeric.grade(q, str(4 + 32 / blocksize))  # no double quantisation
            checked += 1
    assert checked >= 5


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("16.8MB", 16.8),
        ("4.5GB", 4.5),
        ("4.5 GB", 4.5),
        ("4.127bits", 4.127),
        ("12.6 MFLOPs", 12.6),
        ("16.8 M params", 16.8e6),
        ("about 16.8 million", 16.8e6),
        ("≈ 6,533 tokens", 6533.0),
        ("16\u2009777\u2009216", 16777216.0),
    ],
)
def test_parse_number_reads_units_glued_or_spaced(text: str, value: float) -> None:
    assert numeric.parse_number(text) == pytest.approx(value)


@given(
    x=st.floats(1e-3, 1e12, allow_nan=False),
    unit=st.sampled_from(["MB", "GB", "bits", "tokens", "parameters", "MFLOPs"]),
    space=st.sampled_from(["", " "]),
)
@settings(deadline=None, max_examples=60)
def test_a_unit_word_never_scales_the_number(x: float, unit: str, space: str) -> None:
    assert numeric.parse_number(f"{x!r}{space}{unit}") == pytest.approx(x)


@pytest.mark.parametrize("seed", range(6))
def test_sizes_and_flops_in_another_unit_of_the_same_kind_are_converted(seed: int) -> None:
    gb = numeric.generate("nf4_model_gb", seed)
    assert numeric.grade(gb, f"{gb.answer * 1000:.2f} MB") and numeric.grade(
        gb, f"{gb.answer * 1e9:.5e} bytes"
    )
    assert not numeric.grade(gb, f"{gb.answer * 1000:.2f}")  # a bare number is read in the question's unit
    assert not numeric.grade(gb, f"{gb.answer:.3f} MFLOPs")  # another kind of unit is not converted
    flops = numeric.generate("dynamic_flops", seed)
    assert numeric.grade(flops, f"{flops.answer * 1e6:.0f} FLOPs")
    assert numeric.grade(flops, f"{flops.answer / 1e3:.7f} GFLOPs")
    assert not numeric.grade(flops, f"{flops.answer * 1e6:.0f} MB")
    count = numeric.generate("lora_trainable", seed)
    assert not numeric.grade(count, f"{count.answer / 1e6:.3f} MB")  # parameters are not bytes
