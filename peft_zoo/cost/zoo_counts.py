"""Trainable parameters of the wider zoo (VeRA, LoHa, LoKr, OFT, AdaLoRA, LoRA on embeddings
and convolutions) from a model's geometry, as :mod:`.counts` does for LoRA and IA³.

Per adapted module ``in -> out`` (the shapes the method files store, PEFT's names)::

    LoRA       A (r, in), B (out, r)                                   r (in + out)
    VeRA       lambda_d (r,), lambda_b (out,); A, B frozen, shared      r + out
    LoHa       hada_w1_a, hada_w2_a (out, r); hada_w1_b, hada_w2_b (r, in)   2 r (in + out)
    LoKr       W1 (a, c) ⊗ W2 (b, d), out = a b, in = c d               a c + b d, or a
               factor stored as (x, r) @ (r, y) costs r (x + y) (see peft_zoo.lokr)
    OFT        oft_R (n, b (b - 1) / 2): n = in / b blocks, 1 with block_share
    AdaLoRA    lora_A (r, in), lora_E (r, 1), lora_B (out, r)           r (in + out + 1)
    LoRA, nn.Embedding (num, dim)        A (r, num), B (dim, r)       r (num + dim)
    LoRA, nn.ConvNd in -> out, kernel k  A (r, in, *k), B (out, r / groups, 1...)
                                                                       r in prod(k) + out r / groups

VeRA's shared random pair ``A (r, in_max)``, ``B (out_max, r)`` is a buffer: saved (with
``save_projection``) but never trained. AdaLoRA keeps all ``init_r`` triplets as parameters for
the whole run and prunes by zeroing ``λ``; :func:`adalora_final_parameters` counts the triplets
the final budget (``target_r`` per module on average) leaves alive.

Targets, ``layers`` and ``rank_pattern`` follow :mod:`.counts` (PEFT's suffix rule). PEFT and
peft_zoo both refuse GPT-2's ``Conv1D`` for LoHa, LoKr and OFT, so a GPT-2 geometry is refused
for them too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from ..core.checks import check_bool, check_positive_int
from ..injection.targets import target_matches
from ..lokr import check_decompose_factor, lokr_shapes, use_full_matrices
from ..oft import check_oft_blocks
from .counts import RankPattern, Targets, check_rank_pattern, rank_for, selected_modules
from .geometry import ModelGeometry, model_linear_shapes

__all__ = [
    "adalora_final_parameters",
    "adalora_layer_parameters",
    "adalora_trainable_parameters",
    "embedding_shapes",
    "loha_layer_parameters",
    "loha_trainable_parameters",
    "lokr_layer_parameters",
    "lokr_trainable_parameters",
    "lora_conv_parameters",
    "lora_embedding_parameters",
    "lora_embedding_trainable_parameters",
    "oft_layer_parameters",
    "oft_trainable_parameters",
    "vera_layer_parameters",
    "vera_trainable_parameters",
]

Layers = int | Iterable[int] | None

# ----------------------------------------------------------------------------- one module


def vera_layer_parameters(rank: int, d_out: int) -> int:
    """VeRA on one ``in -> out`` module: ``lambda_d (r,)`` + ``lambda_b (out,)`` = ``r + out``."""
    return check_positive_int(rank, "rank") + check_positive_int(d_out, "d_out")


def loha_layer_parameters(rank: int, d_in: int, d_out: int) -> int:
    """LoHa on one ``in -> out`` module: two ``(out, r) @ (r, in)`` pairs, ``2 r (in + out)``."""
    r = check_positive_int(rank, "rank")
    return 2 * r * (check_positive_int(d_in, "d_in") + check_positive_int(d_out, "d_out"))


def lokr_layer_parameters(
    rank: int, d_in: int, d_out: int, *, decompose_both: bool = False, decompose_factor: int = -1
) -> int:
    """LoKr on one ``in -> out`` module, with :func:`peft_zoo.lokr.lokr_shapes` and
    :func:`~peft_zoo.lokr.use_full_matrices` deciding the shapes: ``W1 (a, c)`` whole (``a c``)
    or as ``(a, r) @ (r, c)`` (``r (a + c)``), the same for ``W2 (b, d)``.

    ``lokr_layer_parameters(8, 768, 768) == 24 * 24 + 8 * (32 + 32) == 1088`` (``768 = 24 * 32``:
    ``W1 (24, 24)`` whole, ``W2 (32, 32)`` as a rank-8 product, since ``8 < 32 / 2``)."""
    r = check_positive_int(rank, "rank")
    d_in, d_out = check_positive_int(d_in, "d_in"), check_positive_int(d_out, "d_out")
    check_bool(decompose_both, "decompose_both")
    factor = check_decompose_factor(decompose_factor)
    shapes = lokr_shapes(d_in, d_out, factor)
    a, b, c, d = shapes
    use_w1, use_w2 = use_full_matrices(r, shapes, decompose_both)
    w1 = a * c if use_w1 else r * (a + c)
    w2 = b * d if use_w2 else r * (b + d)
    return w1 + w2


def oft_layer_parameters(
    d_in: int, r: int = 0, oft_block_size: int = 32, *, block_share: bool = False
) -> int:
    """OFT on one module with ``in`` inputs: ``n`` blocks of size ``b`` (``n b = in``; give one of
    ``r`` = n and ``oft_block_size`` = b, the other 0, as in PEFT's ``OFTConfig``), each the strict
    upper triangle of a skew ``(b, b)``: ``n b (b - 1) / 2``, or ``b (b - 1) / 2`` with
    ``block_share``. A size that does not divide ``in`` raises ``ValueError`` (PEFT adjusts it
    with a warning; peft_zoo refuses). The output size does not enter."""
    n, b = check_oft_blocks(check_positive_int(d_in, "d_in"), r, oft_block_size)
    stored = 1 if check_bool(block_share, "block_share") else n
    return stored * (b * (b - 1) // 2)


def adalora_layer_parameters(rank: int, d_in: int, d_out: int) -> int:
    """AdaLoRA on one ``in -> out`` module: ``P (out, r)``, ``λ (r, 1)``, ``Q (r, in)``:
    ``r (in + out + 1)``."""
    r = check_positive_int(rank, "rank")
    return r * (check_positive_int(d_in, "d_in") + check_positive_int(d_out, "d_out") + 1)


def lora_embedding_parameters(rank: int, num_embeddings: int, embedding_dim: int) -> int:
    """LoRA on an ``nn.Embedding (num, dim)``: ``A (r, num)``, ``B (dim, r)``: ``r (num + dim)``."""
    r = check_positive_int(rank, "rank")
    return r * (
        check_positive_int(num_embeddings, "num_embeddings")
        + check_positive_int(embedding_dim, "embedding_dim")
    )


def lora_conv_parameters(
    rank: int, in_channels: int, out_channels: int, kernel_size: int | Sequence[int], groups: int = 1
) -> int:
    """LoRA on an ``nn.Conv1d/2d/3d``: ``A (r, in, *k)`` (the base's kernel, no groups) and the
    pointwise ``B (out, r / groups, 1, ...)``: ``r in prod(k) + out r / groups``. ``r`` must be a
    multiple of ``groups`` (PEFT's rule). ``kernel_size`` is an int (Conv1d) or one per dimension."""
    r = check_positive_int(rank, "rank")
    c_in, c_out = (
        check_positive_int(in_channels, "in_channels"),
        check_positive_int(out_channels, "out_channels"),
    )
    g = check_positive_int(groups, "groups")
    kernel = [kernel_size] if isinstance(kernel_size, int) else list(kernel_size)
    if not kernel:
        raise ValueError("kernel_size must be an int or a non-empty sequence of ints")
    k = math.prod(check_positive_int(s, "kernel_size") for s in kernel)
    if r % g:
        raise ValueError(f"rank={r} must be a multiple of groups={g} (LoRA's B is a grouped 1x1 convolution)")
    return r * c_in * k + c_out * r // g


# ----------------------------------------------------------------------------- a whole model


def _linear_only(geometry: ModelGeometry, method: str) -> None:
    if geometry.family == "gpt2":
        raise ValueError(
            f"{method} cannot adapt {geometry.name}: its layers are GPT-2 Conv1D modules, which PEFT "
            "and peft_zoo both refuse for this method (nn.Linear layers only)"
        )


def _ranked(
    geometry: ModelGeometry, targets: Targets, rank: int, rank_pattern: RankPattern | None, layers: Layers
) -> list[tuple[int, int, int]]:
    """``(r, in, out)`` per selected module, with ``rank_pattern`` applied as in LoRA's count."""
    rank = check_positive_int(rank, "rank")
    chosen = selected_modules(geometry, targets, layers)
    pattern = check_rank_pattern(model_linear_shapes(geometry), geometry.num_layers, rank_pattern)
    return [(rank_for(p, rank, pattern), d_in, d_out) for p, (d_in, d_out) in chosen.items()]


def vera_trainable_parameters(
    geometry: ModelGeometry, targets: Targets, rank: int = 256, *, layers: Layers = None
) -> int:
    """VeRA (``VeraConfig(r=rank)``): ``sum (r + out_m)``; the shared projections are buffers.

    BERT-base, ``["query", "value"]``, ``r = 256``: ``24 * (256 + 768) = 24,576``."""
    rank = check_positive_int(rank, "rank")
    return sum(rank + d_out for _, d_out in selected_modules(geometry, targets, layers).values())


def loha_trainable_parameters(
    geometry: ModelGeometry,
    targets: Targets,
    rank: int = 8,
    *,
    rank_pattern: RankPattern | None = None,
    layers: Layers = None,
) -> int:
    """LoHa (``LoHaConfig(r=rank)``): ``sum 2 r_m (in_m + out_m)``, twice LoRA at the same rank.
    ``rank_pattern`` and ``layers`` as in :func:`~peft_zoo.cost.lora_trainable_parameters`."""
    _linear_only(geometry, "LoHa")
    return sum(loha_layer_parameters(*m) for m in _ranked(geometry, targets, rank, rank_pattern, layers))


def lokr_trainable_parameters(
    geometry: ModelGeometry,
    targets: Targets,
    rank: int = 8,
    *,
    decompose_both: bool = False,
    decompose_factor: int = -1,
    rank_pattern: RankPattern | None = None,
    layers: Layers = None,
) -> int:
    """LoKr (``LoKrConfig(r=rank, decompose_both=..., decompose_factor=...)``): the sum of
    :func:`lokr_layer_parameters` over the selected modules."""
    _linear_only(geometry, "LoKr")
    return sum(
        lokr_layer_parameters(
            r, d_in, d_out, decompose_both=decompose_both, decompose_factor=decompose_factor
        )
        for r, d_in, d_out in _ranked(geometry, targets, rank, rank_pattern, layers)
    )


def oft_trainable_parameters(
    geometry: ModelGeometry,
    targets: Targets,
    r: int = 0,
    oft_block_size: int = 32,
    *,
    block_share: bool = False,
    layers: Layers = None,
) -> int:
    """OFT (``OFTConfig(r=r, oft_block_size=...)``): the sum of :func:`oft_layer_parameters`.
    With a block size ``b``: ``in_m (b - 1) / 2`` per module. BERT-base, ``["query", "value"]``,
    ``b = 32``: ``24 * 768 * 31 / 2 = 285,696``."""
    _linear_only(geometry, "OFT")
    chosen = selected_modules(geometry, targets, layers)
    return sum(
        oft_layer_parameters(d_in, r, oft_block_size, block_share=block_share) for d_in, _ in chosen.values()
    )


def adalora_trainable_parameters(
    geometry: ModelGeometry, targets: Targets, init_r: int = 12, *, layers: Layers = None
) -> int:
    """AdaLoRA's trainable parameters (``AdaLoraConfig(init_r=...)``), the whole run:
    ``sum init_r (in_m + out_m + 1)``. Pruning zeroes ``λ`` entries; no tensor shrinks."""
    init_r = check_positive_int(init_r, "init_r")
    return sum(
        adalora_layer_parameters(init_r, *s) for s in selected_modules(geometry, targets, layers).values()
    )


def adalora_final_parameters(
    geometry: ModelGeometry, targets: Targets, target_r: int = 8, *, layers: Layers = None
) -> int:
    """The parameters of the triplets alive after AdaLoRA's last allocation, when the final
    budget (``target_r`` × the number of adapted modules) is spread evenly:
    ``sum target_r (in_m + out_m + 1)``. The allocator moves triplets between modules, so the
    true number differs when the modules' ``in + out`` differ; it is exact when all are equal
    (BERT's q/k/v/o). This is what a merged or pruned (``rank_pattern``) adapter stores."""
    target_r = check_positive_int(target_r, "target_r")
    return sum(
        adalora_layer_parameters(target_r, *s) for s in selected_modules(geometry, targets, layers).values()
    )


# ----------------------------------------------------------------------------- embeddings


def embedding_shapes(geometry: ModelGeometry) -> dict[str, tuple[int, int]]:
    """Every ``nn.Embedding`` of the family's model by full path: ``{path: (num, dim)}``."""
    h = geometry.hidden_size
    if geometry.family == "bert":
        return {
            "bert.embeddings.word_embeddings": (geometry.vocab_size, h),
            "bert.embeddings.position_embeddings": (geometry.max_position_embeddings, h),
            "bert.embeddings.token_type_embeddings": (geometry.type_vocab_size, h),
        }
    if geometry.family == "gpt2":
        return {
            "transformer.wte": (geometry.vocab_size, h),
            "transformer.wpe": (geometry.max_position_embeddings, h),
        }
    return {"model.embed_tokens": (geometry.vocab_size, h)}


def lora_embedding_trainable_parameters(
    geometry: ModelGeometry, targets: Sequence[str], rank: int, *, rank_pattern: RankPattern | None = None
) -> int:
    """LoRA on the embeddings that ``targets`` select (PEFT's suffix rule: ``"word_embeddings"``,
    ``"wte"``, ``"embed_tokens"``): ``sum r (num + dim)``. Add
    :func:`~peft_zoo.cost.lora_trainable_parameters` for the linears of a mixed target list.
    A tied output head shares the embedding's weight, not its LoRA: nothing more to count."""
    rank = check_positive_int(rank, "rank")
    if isinstance(targets, str) or not targets or not all(isinstance(t, str) for t in targets):
        raise ValueError(f"targets must be a non-empty list of embedding names, got {targets!r}")
    shapes = embedding_shapes(geometry)
    chosen = {p: s for p, s in shapes.items() if target_matches(p, list(targets))}
    if not chosen:
        raise ValueError(
            f"{geometry.name}: targets {list(targets)} select no embedding; it has {list(shapes)}"
        )
    pattern = check_rank_pattern(shapes, geometry.num_layers, rank_pattern)
    return sum(lora_embedding_parameters(rank_for(p, rank, pattern), *s) for p, s in chosen.items())
