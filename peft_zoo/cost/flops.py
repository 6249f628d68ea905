"""What a LoRA adapter costs to train and to serve, from a model's geometry alone.

Serving a fine-tuned adapter has two strategies (Hu et al. 2021, §4.1: "we can explicitly
compute and store W = W0 + BA and perform inference as usual"):

**merge**: fold the update into the weight once per adapter switch, then run the base
model. For an adapted module ``in -> out`` of rank ``r``, peft_zoo's ``LoRALinear.merge``
computes ``W0 + (B @ A) * scale``:

    merge GEMM         B (out, r) @ A (r, in)            2 * out * r * in   FLOPs
    merge elementwise  * scale, then + W0                out * in + out * in

**dynamic**: keep ``A`` and ``B`` apart and pay for them on every token
(``LoRALinear.forward``: ``base(x) + F.linear(F.linear(x, A), B) * scale``):

    base GEMM          x @ W0^T                          2 * in * out  (same as merged)
    A GEMM             x @ A^T                           2 * in * r
    B GEMM             (x A^T) @ B^T                     2 * r * out
    elementwise        * scale, then + base output       out + out

A multiply-add counts as 2 FLOPs, the convention of ``torch.utils.flop_counter.FlopCounterMode``,
which counts matmul-like ops only (``2 m n k``). GEMM and elementwise FLOPs are therefore kept
apart: the GEMM part is what ``FlopCounterMode`` measures. Biases, norms, activations, softmax
and embedding look-ups are not counted: they cost the same in both strategies.

Two optional terms (they do not change with the adapter, but they set the base the overhead
is a fraction of):

- attention (``seq_len``): per token and layer, the scores ``q K^T`` and the weighted values
  ``P V`` cost ``2 * seq_len * heads * head_dim`` each, where ``seq_len`` is the number of
  keys a query attends to (the full sequence for an encoder or a prefill that forms the whole
  score matrix, the context length for one decoded token with a KV cache).
- the pre-training head (``head=True``): BERT's MLM transform ``h -> h`` and decoder
  ``h -> vocab``, GPT-2 / LLaMA's ``lm_head``, applied to every token.

**Break-even.** Serving ``N`` tokens per adapter switch costs ``M + N * base`` merged and
``N * (base + d)`` dynamic, with ``M`` the switch cost and ``d`` the dynamic extra per token;
merging pays off beyond ``N* = M / d`` tokens. A switch from one adapter to the next in place
is an unmerge of the old one (the same FLOPs as a merge, with ``-``) and a merge of the new
one, ``M = 2 * merge``; ``unmerge=False`` counts a merge onto clean weights only (a server
that keeps a pristine copy of ``W0`` and copies it back, memory traffic and no FLOPs). Per
module ``M / d ~ out * in * (r + 1) / (r (in + out) + out)``, about ``h / 2`` for a square
``h x h`` layer whatever the rank: a few thousand tokens for a 4096-wide model. Against the
base model, ``M`` is worth ``2 (r + 1)`` tokens through the adapted linears (merge alone:
``r + 1``), since ``2 out r in + 2 out in = (r + 1) * 2 out in``.
FLOPs are not time: at small batch a decode step is memory-bound, where ``d``'s share of the
bytes read (the adapter's weights) matters more than its share of FLOPs.

**Tensor parallelism** (Megatron-LM, Shoeybi et al. 2019, arXiv:1909.08053): column-parallel
layers (q, k, v, fused ``c_attn``, the FFN up / gate / ``c_fc`` / ``intermediate.dense``, the
vocabulary-parallel output head) split ``out`` over ``tp`` devices; row-parallel layers
(attention output ``o_proj`` / ``attn.c_proj`` / ``attention.output.dense``, FFN down
``down_proj`` / ``mlp.c_proj`` / ``output.dense``) split ``in`` and all-reduce the partial
outputs; attention splits the heads. BERT's MLM transform is replicated. LoRA follows vLLM's
``ColumnParallelLinearWithLoRA`` / ``RowParallelLinearWithLoRA``: column-parallel keeps ``A``
whole on every device and splits ``B`` by ``out``; row-parallel splits ``A`` by ``in`` and
keeps ``B`` whole, so the partial ``B (A_k x_k)`` join the base partial sums in the same
all-reduce (``B`` is linear) and LoRA adds no communication. The replicated halves are
recomputed on every device: per-device LoRA FLOPs times ``tp`` exceed the single-device
total by that much. A merge splits exactly: each device folds ``B_k A`` (or ``B A_k``)
into its own shard of ``W0``. All numbers here are *per device*.

**Training memory.** :func:`training_memory` counts bytes of weights, gradients, optimizer
states and master weights (no activations, no buffers): Adam / AdamW keeps two moments per
trainable parameter (``optimizer_dtype``, float32 by default); gradients exist for trainable
parameters only, in the parameter dtype; mixed precision keeps a float32 master copy of each
trainable parameter (ZeRO, Rajbhandari et al. 2020: ``2 + 2 + 12 = 16`` bytes per parameter
for fp16 Adam). For LoRA the frozen base contributes its weights only. PyTorch's ``AdamW``
also keeps a 4-byte ``step`` counter per parameter *tensor*, ignored here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from .core.checks import check_positive_int
from .cost import (
    GENEFORMER_GF_20L_95M_I4096,
    GENEFORMER_GF_20L_95M_I4096_AS_QUOTED,
    GPT2_SMALL,
    LLAMA_7B,
    ModelGeometry,
    RankPattern,
    Targets,
    _check_rank_pattern,
    _head_linear_shapes,
    _rank_for,
    _selected,
    full_parameters,
    lora_trainable_parameters,
    model_linear_shapes,
)

__all__ = [
    "SERVING_TARGETS",
    "ModuleFlops",
    "ServingFlops",
    "ServingRow",
    "TrainingMemory",
    "adapter_bytes",
    "break_even_tokens",
    "dynamic_overhead",
    "parallel_style",
    "serving_flops",
    "serving_rows",
    "serving_table",
    "training_memory",
]

ParallelStyle = Literal["column", "row", "replicated"]

# Megatron-style split of each linear, by the module's name inside a layer (or its head path).
_STYLE: dict[str, dict[str, ParallelStyle]] = {
    "bert": {
        "attention.self.query": "column",
        "attention.self.key": "column",
        "attention.self.value": "column",
        "attention.output.dense": "row",
        "intermediate.dense": "column",
        "output.dense": "row",
        "cls.predictions.transform.dense": "replicated",
        "cls.predictions.decoder": "column",  # vocabulary-parallel logits
    },
    "gpt2": {
        "attn.c_attn": "column",  # split by heads: each device holds q, k, v of its heads
        "attn.c_proj": "row",
        "mlp.c_fc": "column",
        "mlp.c_proj": "row",
        "lm_head": "column",
    },
    "llama": {
        "self_attn.q_proj": "column",
        "self_attn.k_proj": "column",
        "self_attn.v_proj": "column",
        "self_attn.o_proj": "row",
        "mlp.gate_proj": "column",
        "mlp.up_proj": "column",
        "mlp.down_proj": "row",
        "lm_head": "column",
    },
}


def parallel_style(geometry: ModelGeometry, path: str) -> ParallelStyle:
    """How tensor parallelism splits the linear at ``path`` (a full path from
    :func:`~peft_zoo.cost.model_linear_shapes`, or a name inside a layer): ``"column"``
    (``out`` split), ``"row"`` (``in`` split) or ``"replicated"``."""
    for name, style in _STYLE[geometry.family].items():
        if path == name or path.endswith("." + name):
            return style
    raise ValueError(f"{geometry.name}: {path!r} is not a linear module of a {geometry.family} model")


# ----------------------------------------------------------------------------- FLOPs


@dataclass(frozen=True)
class ModuleFlops:
    """FLOPs of one linear module on one device (``tp`` devices in all). Per-token fields are
    for one token; ``merge_*`` are paid once per merge. ``rank == 0``: not adapted."""

    path: str  # full dotted path, as named_modules() prints it
    d_in: int  # in_features of the whole (unsharded) module
    d_out: int  # out_features of the whole module
    rank: int  # LoRA rank r (0 = no adapter)
    style: ParallelStyle  # tensor-parallel split: "column" (out), "row" (in), "replicated"
    base_gemm: int  # 2 * in' * out': x @ W0^T on this device's shard
    lora_a_gemm: int  # 2 * in' * r: x @ A^T (A whole for column-parallel, split by in for row)
    lora_b_gemm: int  # 2 * r * out': h @ B^T (B split by out for column-parallel, whole for row)
    lora_elementwise: int  # out' multiplies (* scale) + out' adds (+ base output)
    merge_gemm: int  # 2 * out' * r * in': B @ A for this device's shard of W0
    merge_elementwise: int  # out' * in' multiplies (* scale) + out' * in' adds (+ W0)


def _module_flops(path: str, d_in: int, d_out: int, rank: int, style: ParallelStyle, tp: int) -> ModuleFlops:
    # The dimensions this device holds: Megatron splits out (column) or in (row) by tp.
    i = d_in // tp if style == "row" else d_in
    o = d_out // tp if style == "column" else d_out
    # LoRA: A is (r, in), split with in for a row-parallel layer, whole otherwise; B is
    # (out, r), split with out for a column-parallel layer, whole otherwise.
    return ModuleFlops(
        path=path,
        d_in=d_in,
        d_out=d_out,
        rank=rank,
        style=style,
        base_gemm=2 * i * o,
        lora_a_gemm=2 * i * rank,  # i == d_in except for a row-parallel layer
        lora_b_gemm=2 * rank * o,  # o == d_out except for a column-parallel layer
        lora_elementwise=2 * o if rank else 0,
        merge_gemm=2 * o * rank * i,
        merge_elementwise=2 * o * i if rank else 0,
    )


@dataclass(frozen=True)
class ServingFlops:
    """FLOPs per token on one device for a LoRA-adapted model, both serving strategies.

    GEMM fields are what ``FlopCounterMode`` would measure; ``*_elementwise`` fields are the
    LoRA scale-and-add ops it does not count. Use the properties for the totals.
    """

    geometry: str  # ModelGeometry.name
    tp: int  # tensor-parallel degree
    seq_len: int | None  # keys each query attends to; None = attention not counted
    head: bool  # the pre-training head's linears are counted
    layers_gemm: int  # base GEMMs of the linears inside the transformer layers
    head_gemm: int  # base GEMMs of the head's linears (0 when head=False)
    attention_gemm: int  # q K^T and P V: 4 * seq_len * heads * head_dim / tp per layer
    lora_a_gemm: int  # sum of x @ A^T
    lora_b_gemm: int  # sum of (x A^T) @ B^T
    lora_elementwise: int  # sum of the per-token scale and add
    merge_gemm: int  # one merge: sum of B @ A (this device's shards)
    merge_elementwise: int  # one merge: sum of the scale and the add into W0
    modules: tuple[ModuleFlops, ...] = field(repr=False)  # per-module detail, layers then head

    @property
    def merged_per_token(self) -> int:
        """FLOPs per token once merged: the base model's linears (+ attention, head)."""
        return self.layers_gemm + self.head_gemm + self.attention_gemm

    @property
    def dynamic_extra(self) -> int:
        """``d``: what the unmerged adapter adds per token, GEMMs and elementwise."""
        return self.lora_a_gemm + self.lora_b_gemm + self.lora_elementwise

    @property
    def dynamic_per_token(self) -> int:
        """FLOPs per token with the adapter unmerged."""
        return self.merged_per_token + self.dynamic_extra

    @property
    def dynamic_gemm_per_token(self) -> int:
        """The GEMM part of :attr:`dynamic_per_token` (what ``FlopCounterMode`` counts)."""
        return self.merged_per_token + self.lora_a_gemm + self.lora_b_gemm

    @property
    def overhead(self) -> float:
        """Dynamic / merged FLOPs per token (1.0 = no overhead)."""
        return self.dynamic_per_token / self.merged_per_token

    def switch_flops(self, unmerge: bool = True) -> int:
        """``M``: one adapter switch, merge GEMM + elementwise; twice that with ``unmerge``
        (take the previous adapter out, then put the next one in)."""
        return (2 if unmerge else 1) * (self.merge_gemm + self.merge_elementwise)

    def break_even_tokens(self, unmerge: bool = True) -> float:
        """Tokens per adapter switch beyond which merging costs fewer FLOPs: ``M / d``."""
        if self.dynamic_extra == 0:
            raise ValueError("no adapted module is counted: the break-even point is undefined")
        return self.switch_flops(unmerge) / self.dynamic_extra

    def total_flops(self, tokens: int, strategy: Literal["merge", "dynamic"], unmerge: bool = True) -> int:
        """FLOPs to serve ``tokens`` tokens after one adapter switch: ``M + N * merged`` or
        ``N * dynamic``."""
        if strategy == "merge":
            return self.switch_flops(unmerge) + tokens * self.merged_per_token
        if strategy == "dynamic":
            return tokens * self.dynamic_per_token
        raise ValueError(f"strategy must be 'merge' or 'dynamic', got {strategy!r}")


def _check_tp(geometry: ModelGeometry, tp: int, shapes: dict[str, tuple[int, int]]) -> None:
    """tp must divide the heads and every dimension it splits; one error lists every problem."""
    if tp == 1:
        return
    problems = []
    if geometry.num_heads % tp or geometry.num_kv_heads % tp:  # type: ignore[operator]
        problems.append(f"heads ({geometry.num_heads} query, {geometry.num_kv_heads} key/value)")
    for path, (d_in, d_out) in shapes.items():
        style = parallel_style(geometry, path)
        dim = {"column": d_out, "row": d_in}.get(style)
        if dim is not None and dim % tp:
            which = "out" if style == "column" else "in"
            problems.append(f"{path} ({style}-parallel, {which}={dim})")
    if problems:
        hint = " (Megatron pads the vocabulary to a multiple of 128 * tp; or pass head=False)"
        vocab = any(p.startswith(("lm_head", "cls.predictions.decoder")) for p in problems)
        raise ValueError(
            f"tp={tp} does not divide: " + "; ".join(problems[:4]) + (" ..." if len(problems) > 4 else "")
            + (hint if vocab else "")
        )  # fmt: skip


def serving_flops(
    geometry: ModelGeometry,
    targets: Targets,
    rank: int,
    *,
    rank_pattern: RankPattern | None = None,
    layers: int | Iterable[int] | None = None,
    tp: int = 1,
    seq_len: int | None = None,
    head: bool = True,
) -> ServingFlops:
    """FLOPs per token on each of ``tp`` devices, merged and dynamic (see the module docstring).

    Args:
        targets, rank, rank_pattern, layers: the LoRA setup, as in
            :func:`~peft_zoo.cost.lora_trainable_parameters`.
        tp: tensor-parallel degree; must divide the heads and every split dimension.
        seq_len: keys per query for the attention term; ``None`` leaves attention out.
        head: count the pre-training head (its base linears and any LoRA on them); ``False``
            leaves the head out entirely, as an encoder serving hidden states would.

    GPT-2 small, ``c_attn`` at rank 8 (per token, one device, no attention, no head):
    ``layers_gemm = 12 * 2 * 768 * (2304 + 768 + 3072 + 3072)``, ``lora = 12 * 2 * 8 * (768 + 2304)``.
    """
    rank = check_positive_int(rank, "rank")
    tp = check_positive_int(tp, "tp")
    if seq_len is not None:
        seq_len = check_positive_int(seq_len, "seq_len")
    chosen = _selected(geometry, targets, layers)
    shapes = model_linear_shapes(geometry)
    pattern = _check_rank_pattern(shapes, geometry.num_layers, rank_pattern)
    heads = _head_linear_shapes(geometry)
    counted = {p: s for p, s in shapes.items() if head or p not in heads}
    _check_tp(geometry, tp, counted)

    modules = tuple(
        _module_flops(
            p, d_in, d_out, _rank_for(p, rank, pattern) if p in chosen else 0, parallel_style(geometry, p), tp
        )
        for p, (d_in, d_out) in counted.items()
    )
    # Attention per token and layer: q K^T (2 * seq * q_dim) and P V (2 * seq * q_dim), heads split by tp.
    attention = 0 if seq_len is None else geometry.num_layers * 4 * seq_len * geometry.attn_dim // tp
    return ServingFlops(
        geometry=geometry.name,
        tp=tp,
        seq_len=seq_len,
        head=head,
        layers_gemm=sum(m.base_gemm for m in modules if m.path not in heads),
        head_gemm=sum(m.base_gemm for m in modules if m.path in heads),
        attention_gemm=attention,
        lora_a_gemm=sum(m.lora_a_gemm for m in modules),
        lora_b_gemm=sum(m.lora_b_gemm for m in modules),
        lora_elementwise=sum(m.lora_elementwise for m in modules),
        merge_gemm=sum(m.merge_gemm for m in modules),
        merge_elementwise=sum(m.merge_elementwise for m in modules),
        modules=modules,
    )


def break_even_tokens(
    geometry: ModelGeometry, targets: Targets, rank: int, *, unmerge: bool = True, **kwargs: object
) -> float:
    """Tokens served per adapter switch beyond which merging costs fewer FLOPs than dynamic
    serving: ``M / d`` (``M`` = merge, + unmerge when ``unmerge``; ``d`` = dynamic extra per
    token). ``kwargs`` go to :func:`serving_flops`; attention and the head do not change it."""
    return serving_flops(geometry, targets, rank, **kwargs).break_even_tokens(unmerge)  # type: ignore[arg-type]


def dynamic_overhead(geometry: ModelGeometry, targets: Targets, rank: int, **kwargs: object) -> float:
    """Dynamic / merged FLOPs per token; ``kwargs`` go to :func:`serving_flops` (``seq_len``
    and ``head`` enlarge the base and so shrink the ratio)."""
    return serving_flops(geometry, targets, rank, **kwargs).overhead  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- memory


def _bytes_per(dtype: torch.dtype | str, what: str) -> int:
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"{what}: {dtype!r} is not a torch dtype name (e.g. 'float32', 'bfloat16')")
        dtype = resolved
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{what} must be a torch.dtype or its name, got {dtype!r}")
    if not (dtype.is_floating_point or dtype == torch.int8):
        raise ValueError(f"{what} must be a floating-point dtype, got {dtype}")
    return dtype.itemsize


def adapter_bytes(
    geometry: ModelGeometry,
    targets: Targets,
    rank: int,
    *,
    dtype: torch.dtype | str = torch.float32,
    rank_pattern: RankPattern | None = None,
    layers: int | Iterable[int] | None = None,
) -> int:
    """Bytes of the LoRA tensors stored in ``dtype``: ``sum r_m (in_m + out_m) * itemsize``.
    The Geneformer seed's rank-8 adapter on all 122 linears: 1.7M parameters, 6.8 MB float32."""
    size = _bytes_per(dtype, "dtype")
    return size * lora_trainable_parameters(geometry, targets, rank, rank_pattern=rank_pattern, layers=layers)


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes that training holds besides activations (see the module docstring)."""

    trainable: int  # trainable parameters
    frozen: int  # frozen parameters (the base model under LoRA; 0 for full fine-tuning)
    weights: int  # every parameter, trainable and frozen, in the parameter dtype
    grads: int  # one gradient per trainable parameter, in the parameter dtype
    optimizer_states: int  # Adam's two moments per trainable parameter, in the optimizer dtype
    master_weights: int  # float32 copy of the trainable parameters (mixed precision), else 0

    @property
    def total(self) -> int:
        """All four parts, in bytes."""
        return self.weights + self.grads + self.optimizer_states + self.master_weights


def training_memory(
    geometry: ModelGeometry,
    targets: Targets | None = None,
    rank: int | None = None,
    *,
    rank_pattern: RankPattern | None = None,
    layers: int | Iterable[int] | None = None,
    param_dtype: torch.dtype | str = torch.float32,
    optimizer_dtype: torch.dtype | str = torch.float32,
    master_weights: bool | None = None,
) -> TrainingMemory:
    """Weights, gradients, Adam states and master weights of full fine-tuning (``targets=None``)
    or of LoRA (``targets`` and ``rank`` given).

    Args:
        param_dtype: dtype the parameters (and so their gradients) are stored in.
        optimizer_dtype: dtype of Adam's ``exp_avg`` and ``exp_avg_sq`` (float32 in mixed
            precision; PyTorch's ``AdamW`` on bfloat16 parameters keeps bfloat16 moments).
        master_weights: keep a float32 copy of the trainable parameters; ``None`` = yes when
            ``param_dtype`` is narrower than float32.

    LLaMA-7B, bfloat16 with float32 master weights and moments: full fine-tuning
    ``16 * 6.74e9`` bytes (108 GB); LoRA r = 16 on q/k/v/o: ``2 * 6.74e9 + 16 * 16.8e6`` (13.7 GB).
    """
    p_size = _bytes_per(param_dtype, "param_dtype")
    o_size = _bytes_per(optimizer_dtype, "optimizer_dtype")
    if master_weights is None:
        master_weights = p_size < 4
    if (targets is None) != (rank is None):
        raise ValueError("give both targets and rank for LoRA, or neither for full fine-tuning")
    base = full_parameters(geometry)
    if targets is None:
        if rank_pattern or layers is not None:
            raise ValueError("rank_pattern and layers only apply to LoRA (give targets and rank)")
        trainable, frozen = base, 0
    else:
        trainable = lora_trainable_parameters(
            geometry, targets, rank, rank_pattern=rank_pattern, layers=layers
        )  # type: ignore[arg-type]
        frozen = base
    return TrainingMemory(
        trainable=trainable,
        frozen=frozen,
        weights=(trainable + frozen) * p_size,
        grads=trainable * p_size,
        optimizer_states=2 * trainable * o_size,  # exp_avg and exp_avg_sq
        master_weights=4 * trainable if master_weights else 0,
    )


# ----------------------------------------------------------------------------- the table

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


def _markdown_lines(rows: Iterable[ServingRow]) -> Iterator[str]:
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
    return "\n".join(_markdown_lines(serving_rows() if rows is None else rows))
