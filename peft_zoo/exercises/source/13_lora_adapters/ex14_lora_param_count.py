"""Counting LoRA parameters on paper: the arithmetic behind "0.25% of the model trains".

LoRA replaces the update of a ``(out, in)`` weight, ``in · out`` numbers, by two thin
factors ``A: (rank, in)`` and ``B: (out, rank)``:

    params(Linear in -> out, rank r) = r · in + out · r = r · (in + out)

In a transformer block the usual targets are the attention projections q, k, v, o (each
``d_model -> d_model``) and the feed-forward pair fc1 (``d_model -> d_ff``) and fc2
(``d_ff -> d_model``). Every block has its own copy, so the per-block sum is multiplied
by the number of blocks. Worked example, LLaMA-7B (d_model 4096, 32 blocks) at rank 16 on
q, k, v, o:

    32 blocks · 4 projections · 16 · (4096 + 4096) = 16,777,216 ≈ 16.8M

against about 6.7B frozen weights: 0.25%. Being able to do this in your head is a common
interview question, and a good check on what an injection actually did.
"""

from __future__ import annotations

from collections.abc import Iterable

TARGETS = ("q", "k", "v", "o", "fc1", "fc2")


def lora_params_for_linear(in_features: int, out_features: int, rank: int) -> int:
    """The number of LoRA parameters for one ``nn.Linear(in_features, out_features)``.

    ``A`` is ``(rank, in_features)`` and ``B`` is ``(out_features, rank)``. 1 line.
    """
    # BEGIN SOLUTION: A has rank * in numbers, B has out * rank
    return rank * (in_features + out_features)  # |A| + |B| = r·in + out·r
    # END SOLUTION


def lora_param_count(d_model: int, d_ff: int, n_layers: int, targets: Iterable[str], rank: int) -> int:
    """LoRA parameters added to a transformer with ``n_layers`` blocks when the Linear layers
    named in ``targets`` (a subset of ``TARGETS``) get rank-``rank`` adapters in every block.

    Shapes (in -> out): q, k, v, o: ``d_model -> d_model``; fc1: ``d_model -> d_ff``;
    fc2: ``d_ff -> d_model``. An unknown name in ``targets`` raises ``ValueError``. Use
    :func:`lora_params_for_linear`. About 8 lines.
    """
    # BEGIN SOLUTION: map each target name to its (in, out) shape, reject unknown names, sum and multiply by n_layers
    shapes = {
        "q": (d_model, d_model),
        "k": (d_model, d_model),
        "v": (d_model, d_model),
        "o": (d_model, d_model),
        "fc1": (d_model, d_ff),  # up projection
        "fc2": (d_ff, d_model),  # down projection
    }
    targets = list(targets)  # an iterator could be consumed only once
    unknown = sorted(set(targets) - set(shapes))
    if unknown:
        raise ValueError(f"unknown LoRA targets {unknown}; choose from {list(shapes)}")
    per_block = sum(lora_params_for_linear(*shapes[t], rank) for t in set(targets))
    return n_layers * per_block  # every block has its own adapters
    # END SOLUTION
