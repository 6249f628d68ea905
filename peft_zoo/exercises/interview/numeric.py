"""Numeric interview questions: a seeded generator draws a real model's geometry and a setup,
and the library's own cost model computes the exact answer.

Every question is reproducible from its id ``<kind>:<seed>``: :func:`generate` draws with
``random.Random("<kind>:<seed>")`` only. Prompts spell out the dimensions a count needs. Grading (:func:`grade`) accepts what a candidate would say out
loud: ``16777216``, ``16,777,216``, ``16.8M``, ``~16.8 M``, ``1.68e7``. The tolerance is per kind:

- counts (parameters): 0.5 %, so that three significant figures pass ("16.8M" for 16,777,216)
  while a forgotten factor (layers, the two matrices, the kv width under GQA) fails;
- sizes in MB / GB and FLOPs: 1 %;
- NF4 bits per parameter: 0.05 % without double quantisation (the answers are exact: 4.5,
  4.25, ...); with it, half the second-level term ``32 / (blocksize * 256)`` bits (0.001 bits at
  blocks of 64), so that 4.125 for 4.127 fails (the second-level constants left out) while an
  answer to four decimals passes;
- the break-even token count: 1 %; the prompt states what to count (GEMMs and the elementwise
  scale and add, for the merge and per token). Leaving the elementwise terms out moves the
  answer by under 1.5 % at rank 64 but by 10-20 % at rank 4.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable

from ...cost.counts import IA3_DEFAULT_TARGETS, ia3_trainable_parameters, lora_trainable_parameters
from ...cost.flops import serving_flops
from ...cost.geometry import ModelGeometry, model_linear_shapes
from ...cost.memory import adapter_bytes, training_memory
from .numeric_parts import (
    ABSMAX_BITS,
    DQ_BLOCK,
    GEOMETRIES,
    draw_lora_setup,
    fmt,
    layer0,
    lora_worked,
    named,
    nf4_bits,
    nf4_worked,
    spell,
)
from .questions import TOPICS, NumericQuestion

Kind = Callable[[random.Random, str], NumericQuestion]

_SUFFIX = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
# A multiplier letter counts only when no letter follows it ("16.8M", "16.8 M params"); glued to
# a word it is that word's prefix ("16.8MB", "4.127bits": a unit, ignored).
_NUMBER = re.compile(
    r"^(?P<num>[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?)\s*"
    r"((?P<suffix>[kKmMbBgGtT])(?![A-Za-z]))?\s*(?P<unit>[A-Za-z%/ ]*)$"
)


def parse_number(text: str) -> float | None:
    """The number ``text`` states, or None. Accepts thousands separators (``,``, ``_``, thin or
    plain spaces between digit groups), a k / M / B / G / T suffix, a leading ``~``, ``≈`` or
    ``about``, and a trailing unit word (``MB``, ``bits``, ``parameters``), which is ignored."""
    if not isinstance(text, str):
        return None
    s = text.strip().lower().removeprefix("about").strip().lstrip("~≈").strip()
    s = re.sub(r"(?<=\d)[,_\u2009\u202f ](?=\d{3}(?!\d))", "", s)
    for word, letter in (("thousand", "k"), ("million", "m"), ("billion", "b")):
        s = s.replace(f" {word}", letter).replace(word, letter)
    match = _NUMBER.match(s)
    if match is None:
        return None
    value = float(match["num"])
    suffix, unit = match["suffix"], match["unit"].strip()
    if not math.isfinite(value) or unit == "e":  # "1e400"; "1e" is a broken exponent, not a unit
        return None
    if suffix is not None:
        if unit and suffix in "mgt" and unit[0] == "b":  # "4.5 GB", "13 MB": a unit, not a multiplier
            return value
        value *= _SUFFIX[suffix.lower()]
    return value


# Decimal units a size or a FLOP count may be written in: name -> (family, scale).
_SCALES = {"b": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_UNIT_AT_END = re.compile(r"^(?P<number>.*?[0-9.])\s*(?P<prefix>[kmgt]?)(?P<base>b|bytes|flops?)\s*$")


def _unit_scale(unit: str) -> tuple[str, float] | None:
    """``"MB" -> ("bytes", 1e6)``, ``"GFLOPs" -> ("flops", 1e9)``; None for other units."""
    match = re.fullmatch(r"(?P<prefix>[kmgt]?)(?P<base>b|bytes|flops?)", unit.strip().lower())
    if match is None:
        return None
    family = "bytes" if match["base"] in ("b", "bytes") else "flops"
    return family, _SCALES[match["prefix"] or "b"]


def _converted(q: NumericQuestion, text: str) -> float | None:
    """The value of ``text`` in ``q.unit`` when it names a unit of the same family ("4500 MB"
    for a question in GB); NaN (never right) for a unit of the other family ("3.3 MFLOPs" for
    a size); None when ``text`` or the question names no such unit."""
    target = _unit_scale(q.unit)
    match = _UNIT_AT_END.match(text.strip().lower())
    if target is None or match is None:
        return None
    given = _unit_scale(match["prefix"] + match["base"])
    number = parse_number(match["number"])
    if given is None or number is None:
        return None
    return number * given[1] / target[1] if given[0] == target[0] else math.nan


def grade(q: NumericQuestion, text: str) -> bool:
    """Whether ``text`` states ``q.answer`` within ``q.rel_tol``. A unit may follow the number:
    the question's own ("12.6 MFLOPs"), or another decimal unit of the same kind, which is
    converted ("4500 MB" for a question in GB, "1.26e7 FLOPs" for one in MFLOPs)."""
    if not isinstance(text, str):
        return False
    stripped = text.strip()
    if stripped.lower().endswith(q.unit.lower()):
        stripped = stripped[: -len(q.unit)]
    converted = _converted(q, text)
    value = converted if converted is not None else parse_number(stripped)
    if value is None:
        return False
    return abs(value - q.answer) <= q.rel_tol * abs(q.answer)


def _geometry(rng: random.Random, families: tuple[str, ...] = ("bert", "gpt2", "llama")) -> ModelGeometry:
    return rng.choice([g for g in GEOMETRIES if g.family in families])


def lora_trainable(rng: random.Random, qid: str) -> NumericQuestion:
    geometry, targets, rank = draw_lora_setup(rng)
    n = lora_trainable_parameters(geometry, targets, rank)
    return NumericQuestion(
        id=qid,
        kind="lora_trainable",
        topic="lora",
        prompt=f"{spell(geometry)}: LoRA at rank {rank} on {named(geometry, targets)} in every layer. "
        "How many trainable parameters?",
        answer=float(n),
        unit="parameters",
        rel_tol=0.005,
        worked=lora_worked(geometry, targets, rank) + f" = {fmt(n)} parameters",
    )


def adapter_mb(rng: random.Random, qid: str) -> NumericQuestion:
    geometry, targets, rank = draw_lora_setup(rng)
    dtype = rng.choice(("float32", "bfloat16"))
    size = adapter_bytes(geometry, targets, rank, dtype=dtype)
    n, per = lora_trainable_parameters(geometry, targets, rank), 4 if dtype == "float32" else 2
    return NumericQuestion(
        id=qid,
        kind="adapter_mb",
        topic="serving",
        prompt=f"{spell(geometry)}: a rank-{rank} LoRA adapter on {named(geometry, targets)}, saved in {dtype}. "
        "How large is the file, in MB (10^6 bytes; ignore the header)?",
        answer=size / 1e6,
        unit="MB",
        rel_tol=0.01,
        worked=f"{lora_worked(geometry, targets, rank)} = {fmt(n)} parameters; × {per} bytes ({dtype}) "
        f"= {fmt(size)} bytes = {size / 1e6:.3f} MB",
    )


def ia3_trainable(rng: random.Random, qid: str) -> NumericQuestion:
    geometry = _geometry(rng)
    targets, ff = IA3_DEFAULT_TARGETS[geometry.family]
    n = ia3_trainable_parameters(geometry)
    per_layer = [(name, i if name.endswith(tuple(ff)) else o) for name, i, o in layer0(geometry, targets)]
    terms = " + ".join(f"{v} ({name}{', input side' if name in ff else ''})" for name, v in per_layer)
    return NumericQuestion(
        id=qid,
        kind="ia3_trainable",
        topic="adapters",
        prompt=f"{spell(geometry)}: IA³ with PEFT's default targets for this family ({named(geometry, targets)}; "
        f"feed-forward: {', '.join(ff)}). How many trainable parameters?",
        answer=float(n),
        unit="parameters",
        rel_tol=0.005,
        worked=f"one vector per target, as long as its output (its input for a feed-forward module): "
        f"({terms}) per layer × {geometry.num_layers} layers = {fmt(n)} parameters",
    )


def bottleneck_params(rng: random.Random, qid: str) -> NumericQuestion:
    geometry = _geometry(rng, ("bert", "gpt2"))
    reduction = rng.choice((8, 16, 32, 64))
    preset, per_layer = rng.choice((("Pfeiffer (one adapter per layer)", 1), ("Houlsby (two per layer)", 2)))
    d, m = geometry.hidden_size, geometry.hidden_size // reduction
    one = 2 * d * m + m + d
    n = one * per_layer * geometry.num_layers
    return NumericQuestion(
        id=qid,
        kind="bottleneck_params",
        topic="adapters",
        prompt=f"{geometry.name} (d = {d}, {geometry.num_layers} layers): bottleneck adapters, {preset}, "
        f"reduction factor {reduction}, with biases. How many trainable parameters?",
        answer=float(n),
        unit="parameters",
        rel_tol=0.005,
        worked=f"m = d / {reduction} = {m}; one adapter: down d·m + m, up m·d + d = 2·{d}·{m} + {m} + {d} "
        f"= {fmt(one)}; × {per_layer} per layer × {geometry.num_layers} layers = {fmt(n)} parameters",
    )


def nf4_bits_per_parameter(rng: random.Random, qid: str) -> NumericQuestion:
    blocksize = rng.choice((32, 64, 128, 256))
    double = rng.random() < 0.5
    bits = nf4_bits(blocksize, double)
    dq = (
        "with double quantisation (8-bit constants, second-level blocks of 256)"
        if double
        else "without double quantisation"
    )
    # Double quantisation: half the second-level term 32 / (blocksize * 256), so that leaving
    # it out (4.125 for 4.127 at blocks of 64) fails and four decimals pass.
    tol = (ABSMAX_BITS / (blocksize * DQ_BLOCK) / 2 / bits) if double else 0.0005
    return NumericQuestion(
        id=qid,
        kind="nf4_bits",
        topic="quantisation",
        prompt=f"NF4 with blocks of {blocksize} and a float32 absmax per block, {dq}. How many bits "
        "does a large weight matrix take per parameter, on average (four decimals)?",
        answer=bits,
        unit="bits",
        rel_tol=tol,
        worked=nf4_worked(blocksize, double),
    )


def nf4_model_gb(rng: random.Random, qid: str) -> NumericQuestion:
    geometry = _geometry(rng, ("llama",))
    shapes = model_linear_shapes(geometry)
    head = {p for p in shapes if p == "lm_head"}
    n = sum(i * o for p, (i, o) in shapes.items() if p not in head)
    bits = nf4_bits(64, True)
    gb = n * bits / 8 / 1e9
    return NumericQuestion(
        id=qid,
        kind="nf4_model_gb",
        topic="quantisation",
        prompt=f"{spell(geometry)}: QLoRA stores the linear layers inside the transformer blocks in NF4 "
        "(blocks of 64, double quantisation). How many GB (10^9 bytes) do those weights take?",
        answer=gb,
        unit="GB",
        rel_tol=0.01,
        worked=f"{geometry.num_layers} layers × (q, k, v, o, gate, up, down) = {fmt(n)} weights; "
        f"× {bits:.4f} bits ({nf4_worked(64, True)}) / 8 = {gb:.3f} GB "
        f"(in bfloat16: {2 * n / 1e9:.2f} GB)",
    )


def optimizer_memory(rng: random.Random, qid: str) -> NumericQuestion:
    geometry, targets, rank = draw_lora_setup(rng)
    full = rng.random() < 0.5
    mixed = rng.random() < 0.5  # bfloat16 weights: AdamW also keeps a float32 master copy
    mem = training_memory(
        geometry,
        None if full else targets,
        None if full else rank,
        param_dtype="bfloat16" if mixed else "float32",
    )
    total = mem.optimizer_states + mem.master_weights
    what = (
        f"full fine-tuning ({fmt(mem.trainable)} parameters)"
        if full
        else f"LoRA at rank {rank} on {named(geometry, targets)}"
    )
    setup = (
        "bfloat16 weights with float32 master weights and AdamW's float32 moments. How much memory do "
        "the moments and the master weights take together"
        if mixed
        else "float32 weights, AdamW with float32 moments. How much memory do the optimizer states take"
    )
    scale, unit = (1e9, "GB") if full else (1e6, "MB")
    per = "(2 moments + 1 master copy) × 4 bytes" if mixed else "2 moments × 4 bytes"
    return NumericQuestion(
        id=qid,
        kind="optimizer_memory",
        topic="lora",
        prompt=f"{spell(geometry)}, {what}, {setup}, in {unit} (10^{9 if full else 6} bytes)?",
        answer=total / scale,
        unit=unit,
        rel_tol=0.01,
        worked=f"{fmt(mem.trainable)} trainable parameters"
        + ("" if full else f" ({lora_worked(geometry, targets, rank)})")
        + f" × {per} = {fmt(total)} bytes = {total / scale:.3f} {unit}"
        + ("; the frozen bfloat16 weights need neither" if mixed and not full else ""),
    )


def dynamic_flops(rng: random.Random, qid: str) -> NumericQuestion:
    geometry, targets, rank = draw_lora_setup(rng)
    flops = serving_flops(geometry, targets, rank, head=False)
    extra = flops.lora_a_gemm + flops.lora_b_gemm
    return NumericQuestion(
        id=qid,
        kind="dynamic_flops",
        topic="serving",
        prompt=f"{spell(geometry)}: a rank-{rank} LoRA on {named(geometry, targets)}, served unmerged. How many "
        "extra FLOPs per token do the two LoRA matrix products add over the merged model, in MFLOPs "
        "(count a multiply-add as 2 FLOPs; ignore the scale and the add)?",
        answer=extra / 1e6,
        unit="MFLOPs",
        rel_tol=0.01,
        worked=f"2 FLOPs × r·(d_in + d_out) per adapted module: 2 × ({lora_worked(geometry, targets, rank)}) "
        f"= {fmt(extra)} FLOPs = {extra / 1e6:.3f} MFLOPs per token (merged: 0 extra)",
    )


def break_even(rng: random.Random, qid: str) -> NumericQuestion:
    geometry, targets, rank = draw_lora_setup(rng)
    flops = serving_flops(geometry, targets, rank, head=False)
    tokens = flops.break_even_tokens(unmerge=True)
    return NumericQuestion(
        id=qid,
        kind="break_even",
        topic="serving",
        prompt=f"{spell(geometry)}: a rank-{rank} LoRA on {named(geometry, targets)}. Switching adapters by merging "
        "costs an unmerge of the old one plus a merge of the new one (per module: B·A, then scale and "
        "add into W0); serving unmerged costs, per token and module, x·A, then ·B, then scale and add "
        "to the base output. Count a multiply-add as 2 FLOPs and each scale or add as 1 FLOP per "
        "element. After how many tokens per switch does merging cost fewer FLOPs than serving unmerged?",
        answer=tokens,
        unit="tokens",
        rel_tol=0.01,
        worked="merging one module costs B·A (2·r·in·out FLOPs) plus the scale and the add (2·in·out); "
        "unmerged, a token costs 2·r·(in + out) for the two products plus 2·out for the scale and the add; "
        f"switch M = 2 × (merge GEMMs {fmt(flops.merge_gemm)} + elementwise {fmt(flops.merge_elementwise)}) "
        f"= {fmt(flops.switch_flops())} FLOPs; unmerged extra per token d = {fmt(flops.dynamic_extra)} FLOPs "
        f"(two GEMMs + scale and add); M / d = {tokens:,.0f} tokens",
    )


KINDS: dict[str, Kind] = {
    "lora_trainable": lora_trainable,
    "adapter_mb": adapter_mb,
    "ia3_trainable": ia3_trainable,
    "bottleneck_params": bottleneck_params,
    "nf4_bits": nf4_bits_per_parameter,
    "nf4_model_gb": nf4_model_gb,
    "optimizer_memory": optimizer_memory,
    "dynamic_flops": dynamic_flops,
    "break_even": break_even,
}
_TOPIC = {
    "lora_trainable": "lora",
    "optimizer_memory": "lora",
    "ia3_trainable": "adapters",
    "bottleneck_params": "adapters",
    "nf4_bits": "quantisation",
    "nf4_model_gb": "quantisation",
    "adapter_mb": "serving",
    "dynamic_flops": "serving",
    "break_even": "serving",
}


_DESCRIPTION = {
    "lora_trainable": "trainable parameters of LoRA on given targets and rank",
    "optimizer_memory": "AdamW state memory (float32 moments, maybe float32 master weights), full or LoRA",
    "ia3_trainable": "trainable parameters of IA³ with PEFT's default targets",
    "bottleneck_params": "trainable parameters of Houlsby / Pfeiffer bottleneck adapters",
    "nf4_bits": "NF4 bits per parameter, with or without double quantisation",
    "nf4_model_gb": "GB of a LLaMA-family model's block weights in NF4 (QLoRA)",
    "adapter_mb": "size of a LoRA adapter file in MB for a dtype",
    "dynamic_flops": "extra MFLOPs per token of unmerged LoRA over the merged model",
    "break_even": "tokens per adapter switch beyond which merging costs fewer FLOPs",
}


def describe(kind: str) -> str:
    """One line saying what ``kind`` asks, e.g. for a listing: ``"nf4_bits [quantisation]: ..."``."""
    if kind not in KINDS:
        raise KeyError(f"no numeric question kind {kind!r}: choose one of {', '.join(KINDS)}")
    return f"{kind} [{_TOPIC[kind]}]: {_DESCRIPTION[kind]}"


def kinds(topic: str) -> tuple[str, ...]:
    """The kinds of numeric question for ``topic`` (one of ``TOPICS``, or ``"all"``)."""
    if topic != "all" and topic not in TOPICS:
        raise ValueError(f"unknown topic {topic!r}: choose one of {', '.join(TOPICS)} or all")
    return tuple(k for k in KINDS if topic in ("all", _TOPIC[k]))


def generate(kind: str, seed: object) -> NumericQuestion:
    """The question ``<kind>:<seed>``: the same kind and seed always give the same question."""
    if kind not in KINDS:
        raise KeyError(f"no numeric question kind {kind!r}: choose one of {', '.join(KINDS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return KINDS[kind](random.Random(f"{kind}:{seed}"), f"{kind}:{seed}")


def from_id(qid: str) -> NumericQuestion:
    """The question a stored id ``<kind>:<seed>`` names."""
    kind, _, seed = qid.partition(":")
    if not seed.isdigit():
        raise ValueError(f"not a numeric question id: {qid!r} (expected <kind>:<seed>)")
    return generate(kind, int(seed))
