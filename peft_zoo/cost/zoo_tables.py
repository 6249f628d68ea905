"""The zoo side by side: every method's trainable parameters on BERT-base, from
:mod:`.zoo_counts` and :mod:`.counts`, as the markdown table ``docs/cost_model.md`` prints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from .counts import full_parameters, ia3_trainable_parameters, lora_trainable_parameters
from .geometry import ModelGeometry
from .zoo_counts import (
    adalora_final_parameters,
    adalora_trainable_parameters,
    loha_trainable_parameters,
    lokr_trainable_parameters,
    lora_embedding_trainable_parameters,
    oft_trainable_parameters,
    vera_trainable_parameters,
)

__all__ = ["BERT_BASE", "ZooRow", "zoo_rows", "zoo_table"]

# Devlin et al. 2019, BERT-base; Hugging Face config `google-bert/bert-base-uncased`: hidden 768,
# 12 layers, 12 heads, intermediate 3072, vocab 30522, 512 positions, 2 token types.
BERT_BASE = ModelGeometry(
    name="BERT-base",
    family="bert",
    hidden_size=768,
    num_layers=12,
    num_heads=12,
    intermediate_size=3072,
    vocab_size=30522,
    max_position_embeddings=512,
    hidden_act="gelu",
    source="google-bert/bert-base-uncased config.json; Devlin et al. 2019",
)


@dataclass(frozen=True)
class ZooRow:
    """One line of :func:`zoo_table`."""

    method: str  # the method and the config that sets it up (PEFT's field names)
    formula: str  # parameters per adapted module
    trainable: int  # adapter parameters (analytic)
    total: int  # base model + adapter (PEFT's "all params")

    @property
    def percent(self) -> float:
        """``100 * trainable / total``, PEFT's ``trainable%``."""
        return 100 * self.trainable / self.total


QV = ("query", "value")  # PEFT's default targets for BERT (LoRA, VeRA, LoHa, LoKr, OFT, AdaLoRA)

# (label, formula per module, count on a geometry): PEFT's defaults unless the label says otherwise.
_METHODS: tuple[tuple[str, str, Callable[[ModelGeometry], int]], ...] = (
    ("LoRA `r=8`", "r (in + out)", lambda g: lora_trainable_parameters(g, QV, 8)),
    ("PiSSA `r=8` (LoRA shapes)", "r (in + out)", lambda g: lora_trainable_parameters(g, QV, 8)),
    (
        "LoRA `r=8` + `word_embeddings`",
        "+ r (vocab + h)",
        lambda g: (
            lora_trainable_parameters(g, QV, 8)
            + lora_embedding_trainable_parameters(g, ["word_embeddings"], 8)
        ),
    ),
    ("IA³ (key, value, output.dense)", "out, or in (feed-forward)", ia3_trainable_parameters),
    ("VeRA `r=256`", "r + out", lambda g: vera_trainable_parameters(g, QV, 256)),
    ("LoHa `r=8`", "2 r (in + out)", lambda g: loha_trainable_parameters(g, QV, 8)),
    ("LoKr `r=8`", "a c + r (b + d)", lambda g: lokr_trainable_parameters(g, QV, 8)),
    (
        "LoKr `r=8, decompose_both=True`",
        "r (a + c) + r (b + d)",
        lambda g: lokr_trainable_parameters(g, QV, 8, decompose_both=True),
    ),
    ("OFT `oft_block_size=32`", "in (b - 1) / 2", lambda g: oft_trainable_parameters(g, QV)),
    (
        "OFT `oft_block_size=32, block_share=True`",
        "b (b - 1) / 2",
        lambda g: oft_trainable_parameters(g, QV, block_share=True),
    ),
    ("AdaLoRA `init_r=12` (trained)", "r (in + out + 1)", lambda g: adalora_trainable_parameters(g, QV, 12)),
    (
        "AdaLoRA `target_r=8` (kept at the end)",
        "r (in + out + 1)",
        lambda g: adalora_final_parameters(g, QV, 8),
    ),
)


def zoo_rows(geometry: ModelGeometry = BERT_BASE) -> list[ZooRow]:
    """One :class:`ZooRow` per method of :func:`zoo_table`, on ``geometry`` (a BERT layout:
    the targets are BERT's ``query`` and ``value``)."""
    base = full_parameters(geometry)
    return [
        ZooRow(label, formula, n, base + n) for label, formula, count in _METHODS for n in [count(geometry)]
    ]


def _lines(rows: Iterable[ZooRow]) -> Iterator[str]:
    yield "| method (targets `query`, `value`) | per module | trainable | trainable % |"
    yield "|---|---|---:|---:|"
    for row in rows:
        yield f"| {row.method} | {row.formula} | {row.trainable:,d} | {row.percent:.3f} |"


def zoo_table(rows: Iterable[ZooRow] | None = None) -> str:
    """A markdown table of every method's trainable parameters (default: :func:`zoo_rows` on
    :data:`BERT_BASE`); ``trainable %`` divides by base + adapter, as PEFT prints it."""
    return "\n".join(_lines(zoo_rows() if rows is None else rows))
