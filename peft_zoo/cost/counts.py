"""Parameter accounting you can check against papers: LoRA / IA³ and base-model counts from
a model's geometry alone (:mod:`.geometry`), and the same numbers counted on an
instantiated model.

A LoRA layer on a linear map ``in -> out`` adds ``A (r, in)`` and ``B (out, r)``::

    lora params per adapted module = r * (in + out)
    lora params of a model         = sum over adapted modules m of r_m * (in_m + out_m)

IA³ adds one vector per adapted module: ``out`` entries (keys, values), or ``in`` entries for
a feed-forward module (the down projection, whose *input* it scales).

Targets follow PEFT's list rule (see :mod:`peft_zoo.injection.targets`): a name selects every module
whose dotted path equals it or ends with ``"." + name``. So ``"c_proj"`` selects *both*
GPT-2 ``c_proj`` layers (attention and MLP) and ``"output.dense"`` both BERT ``output.dense``
layers, exactly as ``LoraConfig(target_modules=[...])`` would; write ``"attn.c_proj"`` or
``"attention.output.dense"`` for one of them. Fused ``c_attn`` shares one ``A`` across q, k
and v: ``r (h + 3h) = 4rh`` per layer, where three separate projections cost ``6rh``.
:func:`selected_modules`, :func:`check_rank_pattern` and :func:`rank_for` apply these rules
to a geometry; the FLOP model (:mod:`.flops`) selects its modules with them too.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from torch import nn

from ..core.checks import check_positive_int
from ..injection.inject import inject_lora
from ..injection.surgery import count_parameters, mark_only_adapters_trainable
from ..injection.targets import ALL_LINEAR, find_targets, layer_index, target_matches
from .geometry import ModelGeometry, head_linear_shapes, linear_shapes, model_linear_shapes, output_head_name

__all__ = [
    "IA3_DEFAULT_TARGETS",
    "RankPattern",
    "Targets",
    "check_rank_pattern",
    "count_instantiated",
    "full_parameters",
    "ia3_trainable_parameters",
    "lora_trainable_parameters",
    "parameter_breakdown",
    "rank_for",
    "selected_modules",
]

# ----------------------------------------------------------------------------- base model count


def parameter_breakdown(geometry: ModelGeometry) -> dict[str, int]:
    """Parameters of the family's ``transformers`` model, in parts that sum to
    :func:`full_parameters`: ``embeddings``, ``layers`` (all of them), ``final`` (final norm,
    MLM head transform, output head; a tied output weight counts zero).

    Per layer (``h`` hidden, ``i`` intermediate, ``q = heads * head_dim``, ``kv`` k/v width):

    - BERT: 4 (h² + h) attention + 2 LayerNorms (4h) + (h i + i) + (i h + h)
    - GPT-2: (3h² + 3h) c_attn + (h² + h) c_proj + 2 LayerNorms (4h) + (h i + i) + (i h + h)
    - LLaMA: h q + 2 h kv + q h attention + 3 h i MLP + 2 RMSNorms (2h); no biases

    Embeddings: BERT ``(v + positions + token types) h + 2h`` (LayerNorm); GPT-2
    ``(v + positions) h``; LLaMA ``v h`` (RoPE has no parameters). Final: BERT
    ``(h² + h) + 2h + v`` (transform dense, LayerNorm, decoder bias; decoder weight tied);
    GPT-2 ``2h`` (ln_f, lm_head tied); LLaMA ``h`` (RMSNorm) + ``v h`` untied ``lm_head``.
    """
    g = geometry
    h, i, v = g.hidden_size, g.intermediate_size, g.vocab_size
    untied_head = 0 if g.tie_word_embeddings else v * h
    if g.family == "bert":
        embeddings = (v + g.max_position_embeddings + g.type_vocab_size) * h + 2 * h
        layer = 4 * (h * h + h) + 4 * h + (h * i + i) + (i * h + h)
        final = (h * h + h) + 2 * h + v + untied_head
    elif g.family == "gpt2":
        embeddings = (v + g.max_position_embeddings) * h
        layer = (3 * h * h + 3 * h) + (h * h + h) + 4 * h + (h * i + i) + (i * h + h)
        final = 2 * h + untied_head
    else:
        embeddings = v * h
        layer = h * g.attn_dim + 2 * h * g.kv_dim + g.attn_dim * h + 3 * h * i + 2 * h
        final = h + untied_head
    return {"embeddings": embeddings, "layers": g.num_layers * layer, "final": final}


def full_parameters(geometry: ModelGeometry) -> int:
    """Total parameters of ``BertForMaskedLM`` / ``GPT2LMHeadModel`` / ``LlamaForCausalLM``
    with this geometry, tied weights counted once: what ``sum(p.numel() for p in
    model.parameters())`` returns. GPT-2 small: 124,439,808; LLaMA-7B: 6,738,415,616."""
    return sum(parameter_breakdown(geometry).values())


# ----------------------------------------------------------------------------- selecting modules

Targets = str | Sequence[str]  # PEFT's target_modules: a list of names, or "all-linear"
RankPattern = Mapping[str | int, int]  # PEFT's rank_pattern: module name or layer index -> rank


def _check_targets(targets: Targets) -> Targets:
    if isinstance(targets, str):
        if targets.lower() != ALL_LINEAR:
            raise ValueError(
                f"targets must be a list of module names or {ALL_LINEAR!r}, got the string {targets!r}"
            )
        return ALL_LINEAR
    targets = list(targets)
    if not targets or not all(isinstance(t, str) for t in targets):
        raise ValueError(f"targets must be a non-empty list of module names, got {targets!r}")
    return targets


def selected_modules(
    geometry: ModelGeometry, targets: Targets, layers: int | Iterable[int] | None
) -> dict[str, tuple[int, int]]:
    """Full path -> (in, out) of the modules that ``targets`` and ``layers`` select, by the
    same rules as :func:`peft_zoo.find_targets` on the instantiated model."""
    targets = _check_targets(targets)
    shapes = model_linear_shapes(geometry)
    if targets == ALL_LINEAR:
        if layers is not None:
            raise ValueError("layers only works with a list of targets, not 'all-linear'")
        head = output_head_name(geometry)
        return {p: s for p, s in shapes.items() if p != head}
    layers = None if layers is None else ([layers] if isinstance(layers, int) else list(layers))
    chosen = {p: s for p, s in shapes.items() if target_matches(p, targets, layers_to_transform=layers)}
    if not chosen:
        where = f" in layers {layers}" if layers is not None else ""
        raise ValueError(
            f"{geometry.name}: targets {targets} select no module{where}. A {geometry.family} "
            f"layer has {list(linear_shapes(geometry))}; the head has {list(head_linear_shapes(geometry))}"
        )
    return chosen


def _ends_with(path: str, name: str) -> bool:
    return path == name or path.endswith("." + name)


def check_rank_pattern(
    geometry_paths: Iterable[str], num_layers: int, rank_pattern: RankPattern | None
) -> dict[str | int, int]:
    """``rank_pattern`` checked against a model with these linear paths and ``num_layers``
    layers: every rank a positive int, every name key naming a module, every layer key in
    range. ``None`` or empty gives ``{}``."""
    if not rank_pattern:
        return {}
    paths = list(geometry_paths)
    out: dict[str | int, int] = {}
    for key, value in rank_pattern.items():
        check_positive_int(value, f"rank_pattern[{key!r}]")
        if isinstance(key, bool) or not isinstance(key, str | int):
            raise TypeError(f"rank_pattern keys are module names (str) or layer indices (int), got {key!r}")
        if isinstance(key, int) and not 0 <= key < num_layers:
            raise ValueError(f"rank_pattern layer {key} is out of range: the model has {num_layers} layers")
        if isinstance(key, str) and not any(_ends_with(p, key) for p in paths):
            raise ValueError(f"rank_pattern key {key!r} names no linear module of the model")
        out[key] = int(value)
    return out


def rank_for(path: str, rank: int, pattern: Mapping[str | int, int]) -> int:
    """Rank of the module at ``path``: the first name key of ``pattern`` that ``path`` ends
    with (mapping order, as PEFT's ``rank_pattern``), else its layer's index key, else ``rank``."""
    for key, value in pattern.items():
        if isinstance(key, str) and _ends_with(path, key):
            return value
    index = layer_index(path)
    if index is not None and index in pattern:
        return pattern[index]
    return rank


# ----------------------------------------------------------------------------- adapter counts


def lora_trainable_parameters(
    geometry: ModelGeometry,
    targets: Targets,
    rank: int,
    *,
    rank_pattern: RankPattern | None = None,
    layers: int | Iterable[int] | None = None,
) -> int:
    """LoRA parameters for ``geometry``: ``sum r_m * (in_m + out_m)`` over the selected modules.

    Args:
        targets: module names as PEFT's ``target_modules`` list takes them (``["q_proj",
            "v_proj"]``, ``["query", "value"]``, ``["c_attn"]``; head modules by path, e.g.
            ``"lm_head"``, ``"cls.predictions.decoder"``), or ``"all-linear"`` (every linear
            except the output head). A list that selects nothing raises ``ValueError``.
        rank: the rank of every selected module not named in ``rank_pattern``.
        rank_pattern: per-module ranks. A ``str`` key is a module name (same suffix rule as
            targets; the first matching key in the mapping's order wins, as in PEFT); an
            ``int`` key is a layer index and applies to every selected module of that layer.
            Name keys win over layer keys. ``{"mlp.c_proj": 4, 0: 16}``.
        layers: only these layer indices (PEFT's ``layers_to_transform``). A module named by
            its whole path (``"lm_head"``) ignores it, as in PEFT; head modules matched by a
            suffix (``"decoder"``) have no layer index and are then not selected.

    LLaMA-7B, ``["q_proj", "k_proj", "v_proj", "o_proj"]``, rank 16: ``32 * 4 * 16 * (4096 +
    4096) = 16,777,216``.
    """
    rank = check_positive_int(rank, "rank")
    chosen = selected_modules(geometry, targets, layers)
    pattern = check_rank_pattern(model_linear_shapes(geometry), geometry.num_layers, rank_pattern)
    return sum(rank_for(p, rank, pattern) * (d_in + d_out) for p, (d_in, d_out) in chosen.items())


# PEFT's defaults (peft.utils.constants TRANSFORMERS_MODELS_TO_IA3_*_MODULES_MAPPING):
# (target_modules, feedforward_modules) per family.
IA3_DEFAULT_TARGETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "bert": (("key", "value", "output.dense"), ("output.dense",)),
    "gpt2": (("c_attn", "mlp.c_proj"), ("mlp.c_proj",)),
    "llama": (("k_proj", "v_proj", "down_proj"), ("down_proj",)),
}


def ia3_trainable_parameters(
    geometry: ModelGeometry,
    targets: Sequence[str] | None = None,
    feedforward_modules: Sequence[str] | None = None,
    *,
    layers: int | Iterable[int] | None = None,
) -> int:
    """IA³ parameters: ``out`` per selected module, ``in`` for a feed-forward one.

    ``targets`` / ``feedforward_modules`` default to PEFT's choice for the family
    (:data:`IA3_DEFAULT_TARGETS`: keys, values and the feed-forward down projection).
    Feed-forward names are matched like targets; BERT's ``"output.dense"`` also selects
    ``attention.output.dense``, whose ``in == out``, so that changes nothing.
    """
    default_targets, default_ff = IA3_DEFAULT_TARGETS[geometry.family]
    targets = list(default_targets if targets is None else targets)
    ff = list(default_ff if feedforward_modules is None else feedforward_modules)
    chosen = selected_modules(geometry, targets, layers)
    return sum(d_in if any(_ends_with(p, f) for f in ff) else d_out for p, (d_in, d_out) in chosen.items())


# ----------------------------------------------------------------------------- instantiated counts


def _linear_types() -> tuple[type[nn.Module], ...]:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is optional
        return (nn.Linear,)
    return (nn.Linear, Conv1D)


def count_instantiated(
    model: nn.Module,
    targets: Targets,
    rank: int,
    *,
    rank_pattern: RankPattern | None = None,
    layers: int | Iterable[int] | None = None,
    backend: Literal["auto", "peft_zoo", "peft"] = "auto",
) -> tuple[int, int]:
    """Inject LoRA into ``model`` (in place) and return ``(trainable, total)`` parameters.

    ``targets``, ``rank``, ``rank_pattern`` and ``layers`` mean what they mean in
    :func:`lora_trainable_parameters`; modules are selected with :func:`peft_zoo.find_targets`.
    ``total`` includes the LoRA parameters, like PEFT's ``print_trainable_parameters``.

    Backends: ``"peft_zoo"`` injects with :func:`peft_zoo.inject_lora` and freezes the rest;
    ``"peft"`` calls Hugging Face PEFT's ``get_peft_model`` (``fan_in_fan_out`` for GPT-2's
    ``Conv1D``) and reads ``get_nb_trainable_parameters()``; ``"auto"`` uses peft_zoo when
    every selected module is an ``nn.Linear``, else PEFT. Works on a model built under
    ``torch.device("meta")``: counting needs shapes only.
    """
    if backend not in ("auto", "peft_zoo", "peft"):
        raise ValueError(f"backend must be 'auto', 'peft_zoo' or 'peft', got {backend!r}")
    rank = check_positive_int(rank, "rank")
    targets = _check_targets(targets)
    types = _linear_types()
    names = find_targets(model, targets, layers_to_transform=layers, types=types)
    modules = dict(model.named_modules())
    all_linear = [n for n, m in modules.items() if isinstance(m, types)]
    num_layers = 1 + max((layer_index(n) or 0 for n in all_linear), default=0)
    pattern = check_rank_pattern(all_linear, num_layers, rank_pattern)
    ranks = {n: rank_for(n, rank, pattern) for n in names}
    if backend == "auto":
        backend = "peft_zoo" if all(isinstance(modules[n], nn.Linear) for n in names) else "peft"

    if backend == "peft_zoo":
        for r in sorted(set(ranks.values())):
            inject_lora(model, [n for n in names if ranks[n] == r], r)
        mark_only_adapters_trainable(model)
        return count_parameters(model)

    import peft

    fan_in_fan_out = any(not isinstance(modules[n], nn.Linear) for n in names)
    config = peft.LoraConfig(
        r=rank,
        target_modules=names,  # full paths: each selects exactly itself
        rank_pattern={re.escape(n): r for n, r in ranks.items() if r != rank},
        fan_in_fan_out=fan_in_fan_out,
    )
    with warnings.catch_warnings():
        # PEFT flips fan_in_fan_out per module (Conv1D vs Linear) and says so; counts are unaffected.
        warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
        peft_model = peft.get_peft_model(model, config)
    trainable, total = peft_model.get_nb_trainable_parameters()
    return int(trainable), int(total)
