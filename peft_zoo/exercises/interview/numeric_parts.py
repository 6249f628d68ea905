"""The pieces numeric interview questions draw from: published model geometries, realistic
target lists, and the worked computations shown after a wrong answer."""

from __future__ import annotations

import random

from ...cost.counts import selected_modules
from ...cost.geometry import GPT2_SMALL, LLAMA_7B, ModelGeometry

NF4_BITS = 4  # one code per weight
ABSMAX_BITS = 32  # a float32 constant per block
DQ_CODE_BITS = 8  # double quantisation: each block constant as an 8-bit code ...
DQ_BLOCK = 256  # ... with one float32 constant per 256 of them (QLoRA, Dettmers et al. 2023)

GEOMETRIES: tuple[ModelGeometry, ...] = (
    ModelGeometry(
        "BERT-base", "bert", 768, 12, 12, 3072, 30522, source="google-bert/bert-base-uncased config"
    ),
    ModelGeometry(
        "BERT-large", "bert", 1024, 24, 16, 4096, 30522, source="google-bert/bert-large-uncased config"
    ),
    GPT2_SMALL,
    ModelGeometry(
        "GPT-2 medium",
        "gpt2",
        1024,
        24,
        16,
        4096,
        50257,
        max_position_embeddings=1024,
        source="gpt2-medium config",
    ),
    LLAMA_7B,
    ModelGeometry(
        "LLaMA-2-13B",
        "llama",
        5120,
        40,
        40,
        13824,
        32000,
        max_position_embeddings=4096,
        source="Llama-2-13b config",
    ),
    ModelGeometry(
        "Mistral-7B",
        "llama",
        4096,
        32,
        32,
        14336,
        32000,
        num_kv_heads=8,
        max_position_embeddings=32768,
        source="mistralai/Mistral-7B-v0.1 config",
    ),
    ModelGeometry(
        "Llama-3-8B",
        "llama",
        4096,
        32,
        32,
        14336,
        128256,
        num_kv_heads=8,
        max_position_embeddings=8192,
        source="meta-llama/Meta-Llama-3-8B config",
    ),
)

# PEFT target_modules lists people actually use, per family.
TARGET_CHOICES: dict[str, tuple[tuple[str, ...], ...]] = {
    "bert": (("query", "value"), ("query", "key", "value"), ("query", "key", "value", "intermediate.dense")),
    "gpt2": (("c_attn",), ("c_attn", "c_proj"), ("c_attn", "c_proj", "c_fc")),
    "llama": (
        ("q_proj", "v_proj"),
        ("q_proj", "k_proj", "v_proj", "o_proj"),
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    ),
}


def draw_lora_setup(rng: random.Random) -> tuple[ModelGeometry, list[str], int]:
    """A geometry, a target list for its family and a rank: the first draws of the LoRA kinds."""
    geometry = rng.choice(GEOMETRIES)
    targets = list(rng.choice(TARGET_CHOICES[geometry.family]))
    return geometry, targets, rng.choice((4, 8, 16, 32, 64))


def spell(geometry: ModelGeometry) -> str:
    """The name with the dimensions a count needs, for a prompt: ``"LLaMA-7B (hidden 4096,
    32 layers, feed-forward 11008, 32 query heads and 32 key/value heads of 128)"``."""
    dims = f"hidden {geometry.hidden_size}, {geometry.num_layers} layers, feed-forward {geometry.intermediate_size}"
    if geometry.family == "llama":
        gqa = ", grouped-query attention" if geometry.num_kv_heads != geometry.num_heads else ""
        dims += (
            f", {geometry.num_heads} query heads and {geometry.num_kv_heads} key/value heads "
            f"of {geometry.head_dim}{gqa}"
        )
    return f"{geometry.name} ({dims})"


def named(geometry: ModelGeometry, targets: list[str] | tuple[str, ...]) -> str:
    """``targets`` for a prompt, saying which modules a suffix shared by several selects (as in
    PEFT, a target matches every module whose path ends in it)."""
    text = ", ".join(targets)
    for target in targets:
        paths = [name for name, _, _ in layer0(geometry, [target])]
        if len(paths) > 1:
            text += f" ({target} matches {' and '.join(paths)})"
    return text


def fmt(n: int | float) -> str:
    """``16777216 -> '16,777,216'``."""
    return f"{n:,.0f}"


def layer0(geometry: ModelGeometry, targets: list[str] | tuple[str, ...]) -> list[tuple[str, int, int]]:
    """``(name inside the layer, in, out)`` of the modules ``targets`` selects in layer 0."""
    chosen = selected_modules(geometry, list(targets), None)
    return [(p.split(".0.", 1)[1], i, o) for p, (i, o) in chosen.items() if ".0." in p]


def lora_worked(geometry: ModelGeometry, targets: list[str], rank: int) -> str:
    """``L layers × [name: r·(in + out) + ...]``, from the modules of layer 0."""
    terms = " + ".join(f"{name}: {rank}·({i} + {o})" for name, i, o in layer0(geometry, targets))
    return f"{geometry.num_layers} layers × [{terms}]"


def nf4_bits(blocksize: int, double_quant: bool) -> float:
    """Average bits per weight of NF4 storage of a large tensor (the single float32 mean that
    double quantisation also stores is negligible and left out)."""
    if not double_quant:
        return NF4_BITS + ABSMAX_BITS / blocksize
    return NF4_BITS + DQ_CODE_BITS / blocksize + ABSMAX_BITS / (blocksize * DQ_BLOCK)


def nf4_worked(blocksize: int, double_quant: bool) -> str:
    """The sum behind :func:`nf4_bits`, with the numbers substituted."""
    if not double_quant:
        return (
            f"4 bits per code + 32 / {blocksize} bits of absmax per weight = {nf4_bits(blocksize, False):.4f}"
        )
    return (
        f"4 bits per code + 8 / {blocksize} (an 8-bit absmax code per block) + 32 / ({blocksize}·256) "
        f"(a float32 constant per 256 blocks) = {nf4_bits(blocksize, True):.4f}"
    )
