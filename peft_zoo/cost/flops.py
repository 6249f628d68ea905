"""What a LoRA adapter costs to serve, merged or dynamic, in FLOPs from a model's geometry alone.

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

See :mod:`.memory` for what training costs in bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypedDict, cast

from ..core.checks import check_positive_int
from .counts import RankPattern, Targets, check_rank_pattern, rank_for, selected_modules
from .geometry import ModelGeometry, head_linear_shapes, model_linear_shapes

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "ModuleFlops",
    "ParallelStyle",
    "ServingFlops",
    "ServingOptions",
    "break_even_tokens",
    "dynamic_overhead",
    "parallel_style",
    "serving_flops",
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
    if geometry.num_heads % tp or cast(int, geometry.num_kv_heads) % tp:  # an int after __post_init__
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
    chosen = selected_modules(geometry, targets, layers)
    shapes = model_linear_shapes(geometry)
    pattern = check_rank_pattern(shapes, geometry.num_layers, rank_pattern)
    heads = head_linear_shapes(geometry)
    counted = {p: s for p, s in shapes.items() if head or p not in heads}
    _check_tp(geometry, tp, counted)

    modules = tuple(
        _module_flops(
            p, d_in, d_out, rank_for(p, rank, pattern) if p in chosen else 0, parallel_style(geometry, p), tp
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


class ServingOptions(TypedDict, total=False):
    """The keyword arguments of :func:`serving_flops` that :func:`break_even_tokens` and
    :func:`dynamic_overhead` pass on."""

    rank_pattern: RankPattern | None
    layers: int | Iterable[int] | None
    tp: int
    seq_len: int | None
    head: bool


def break_even_tokens(
    geometry: ModelGeometry,
    targets: Targets,
    rank: int,
    *,
    unmerge: bool = True,
    **kwargs: Unpack[ServingOptions],
) -> float:
    """Tokens served per adapter switch beyond which merging costs fewer FLOPs than dynamic
    serving: ``M / d`` (``M`` = merge, + unmerge when ``unmerge``; ``d`` = dynamic extra per
    token). ``kwargs`` go to :func:`serving_flops`; attention and the head do not change it."""
    return serving_flops(geometry, targets, rank, **kwargs).break_even_tokens(unmerge)


def dynamic_overhead(
    geometry: ModelGeometry, targets: Targets, rank: int, **kwargs: Unpack[ServingOptions]
) -> float:
    """Dynamic / merged FLOPs per token; ``kwargs`` go to :func:`serving_flops` (``seq_len``
    and ``head`` enlarge the base and so shrink the ratio)."""
    return serving_flops(geometry, targets, rank, **kwargs).overhead
