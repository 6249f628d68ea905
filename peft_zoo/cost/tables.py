"""Markdown tables of the cost models, with the rows that produce them: parameter accounting
(:func:`accounting_table`, from :mod:`.counts`) and merged-vs-dynamic serving
(:func:`serving_table`, from :mod:`.flops`), for the published geometries of :mod:`.geometry`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from .counts import full_parameters, lora_trainable_parameters
from .flops import ServingFlops, serving_flops
from .geometry import (
    GENEFORMER_GF_20L_95M_I4096,
    GENEFORMER_GF_20L_95M_I4096_AS_QUOTED,
    GPT2_SMALL,
    LLAMA_7B,
    ModelGeometry,
)

__all__ = [
    "SERVING_TARGETS",
    "AccountingRow",
    "ServingRow",
    "accounting_rows",
    "accounting_table",
    "serving_rows",
    "serving_table",
]

# ----------------------------------------------------------------------------- parameter accounting


@dataclass(frozen=True)
class AccountingRow:
    """One line of :func:`accounting_table`."""

    model: str  # geometry name
    targets: tuple[str, ...]  # LoRA target names
    rank: int  # LoRA rank r
    trainable: int  # LoRA parameters (analytic)
    total: int  # base model + LoRA parameters (PEFT's "all params")

    @property
    def percent(self) -> float:
        """``100 * trainable / total``, PEFT's ``trainable%``."""
        return 100 * self.trainable / self.total


# (geometry, targets, rank): the paper and seed numbers worth checking.
_TABLE: tuple[tuple[ModelGeometry, tuple[str, ...], int], ...] = (
    (GPT2_SMALL, ("c_attn",), 4),  # the LoRA paper's GPT-2 runs use r = 4 on attention
    (GPT2_SMALL, ("c_attn",), 8),
    (GPT2_SMALL, ("c_attn", "attn.c_proj"), 8),  # q, k, v, o
    (LLAMA_7B, ("q_proj", "k_proj", "v_proj", "o_proj"), 16),  # the study notes' 16.8M
    (GENEFORMER_GF_20L_95M_I4096, ("query", "key", "value", "output.dense", "intermediate.dense"), 8),
    (
        GENEFORMER_GF_20L_95M_I4096_AS_QUOTED,
        ("query", "key", "value", "output.dense", "intermediate.dense"),
        8,
    ),
    # q/k/v/o + FFN + both MLM-head linears: the seed's "all 122 layers".
    (GENEFORMER_GF_20L_95M_I4096, ("query", "key", "value", "dense", "decoder"), 8),
    (GENEFORMER_GF_20L_95M_I4096_AS_QUOTED, ("query", "key", "value", "dense", "decoder"), 8),
)


def accounting_rows() -> list[AccountingRow]:
    """The rows of :func:`accounting_table`, computed analytically."""
    rows = []
    for geometry, targets, rank in _TABLE:
        trainable = lora_trainable_parameters(geometry, targets, rank)
        rows.append(
            AccountingRow(geometry.name, targets, rank, trainable, full_parameters(geometry) + trainable)
        )
    return rows


def _accounting_lines(rows: Iterable[AccountingRow]) -> Iterator[str]:
    yield "| model | targets | rank | trainable | total | trainable % |"
    yield "|---|---|---:|---:|---:|---:|"
    for row in rows:
        yield (
            f"| {row.model} | {', '.join(row.targets)} | {row.rank} | {row.trainable:,d} "
            f"| {row.total:,d} | {row.percent:.4f} |"
        )


def accounting_table(rows: Iterable[AccountingRow] | None = None) -> str:
    """A markdown table: model, targets, rank, trainable, total, trainable %.

    By default GPT-2 small with LoRA on the attention projections (r = 4 and 8), LLaMA-7B
    r = 16 on q/k/v/o (16,777,216) and both Geneformer geometries with r = 8 on q/k/v/o +
    FFN (and with the MLM head too). ``total`` is base + LoRA, as PEFT prints it.
    """
    return "\n".join(_accounting_lines(accounting_rows() if rows is None else rows))


# ----------------------------------------------------------------------------- serving

# Targets a practitioner would pick per model: GPT-2's attention (the LoRA paper's choice,
# with the output projection), LLaMA's q/k/v/o (the study notes' 16.8M at r = 16), and
# every linear of Geneformer's layers (the seed's batched-LoRA setup; "output.dense" also
# selects attention.output.dense).
SERVING_TARGETS: dict[str, tuple[str, ...]] = {
    GPT2_SMALL.name: ("c_attn", "attn.c_proj"),
    LLAMA_7B.name: ("q_proj", "k_proj", "v_proj", "o_proj"),
    GENEFORMER_GF_20L_95M_I4096.name: ("query", "key", "value", "output.dense", "intermediate.dense"),
    GENEFORMER_GF_20L_95M_I4096_AS_QUOTED.name: (
        "query",
        "key",
        "value",
        "output.dense",
        "intermediate.dense",
    ),
}
_DEFAULT_GEOMETRIES = (
    GENEFORMER_GF_20L_95M_I4096,
    GENEFORMER_GF_20L_95M_I4096_AS_QUOTED,
    GPT2_SMALL,
    LLAMA_7B,
)


@dataclass(frozen=True)
class ServingRow:
    """One line of :func:`serving_table`."""

    model: str  # geometry name
    targets: tuple[str, ...]  # LoRA target names
    rank: int  # LoRA rank r
    seq_len: int  # keys per query in the "with attention" column
    tp: int  # tensor-parallel degree
    trainable: int  # LoRA parameters
    adapter_bytes_bf16: int  # the adapter stored in bfloat16
    linears: ServingFlops  # layers' linears only (no attention, no head)
    full: ServingFlops  # + attention at seq_len + the pre-training head

    @property
    def break_even(self) -> float:
        """Tokens per switch (merge + unmerge) where merging starts to pay off."""
        return self.linears.break_even_tokens(unmerge=True)


def serving_rows(
    geometries: Sequence[ModelGeometry] = _DEFAULT_GEOMETRIES,
    ranks: Sequence[int] = (8, 16, 64),
    *,
    targets: dict[str, Sequence[str]] | None = None,
    seq_len: int | None = None,
    tp: int = 1,
) -> list[ServingRow]:
    """One :class:`ServingRow` per geometry and rank. ``targets`` maps a geometry name to its
    targets (default :data:`SERVING_TARGETS`); ``seq_len`` defaults to each model's
    ``max_position_embeddings``. The ``full`` column counts the output head, so with ``tp > 1``
    each vocabulary must divide by ``tp`` (GPT-2's 50,257 does not: ``ValueError``)."""
    chosen = dict(SERVING_TARGETS if targets is None else targets)
    rows = []
    for g in geometries:
        if g.name not in chosen:
            raise ValueError(f"no targets for {g.name!r}: pass targets={{{g.name!r}: [...]}}")
        t = tuple(chosen[g.name])
        s = g.max_position_embeddings if seq_len is None else seq_len
        for r in ranks:
            linears = serving_flops(g, t, r, tp=tp, head=False)
            full = serving_flops(g, t, r, tp=tp, seq_len=s, head=True)
            trainable = lora_trainable_parameters(g, t, r)
            rows.append(ServingRow(g.name, t, r, s, tp, trainable, 2 * trainable, linears, full))
    return rows


def _serving_lines(rows: Iterable[ServingRow]) -> Iterator[str]:
    yield (
        "| model | targets | r | LoRA params | adapter (bf16) | merged GFLOP/token, linears | dynamic extra "
        "MFLOP/token | overhead, linears | overhead, + attention & head (seq) | merge + unmerge "
        "GFLOP | break-even tokens |"
    )
    yield "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for row in rows:
        lin, full = row.linears, row.full
        yield (
            f"| {row.model} | {', '.join(row.targets)} | {row.rank} | {row.trainable:,d} "
            f"| {row.adapter_bytes_bf16 / 2**20:.2f} MiB | {lin.merged_per_token / 1e9:.3f} "
            f"| {lin.dynamic_extra / 1e6:.2f} | {100 * (lin.overhead - 1):.2f}% "
            f"| {100 * (full.overhead - 1):.2f}% ({row.seq_len}) | {lin.switch_flops() / 1e9:.1f} "
            f"| {row.break_even:,.0f} |"
        )


def serving_table(rows: Iterable[ServingRow] | None = None) -> str:
    """A markdown table of dynamic-vs-merged serving, per model and rank (default: both
    Geneformer geometries, GPT-2 small and LLaMA-7B at ranks 8, 16, 64 with
    :data:`SERVING_TARGETS`, one device). "overhead" is dynamic / merged - 1 per token;
    break-even counts a merge and an unmerge per switch."""
    return "\n".join(_serving_lines(serving_rows() if rows is None else rows))
