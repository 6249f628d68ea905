"""Parameter accounting you can check against papers: LoRA / IA³ and base-model counts from
a model's *geometry* alone, and the same numbers counted on an instantiated model.

A LoRA layer on a linear map ``in -> out`` adds ``A (r, in)`` and ``B (out, r)``::

    lora params per adapted module = r * (in + out)
    lora params of a model         = sum over adapted modules m of r_m * (in_m + out_m)

IA³ adds one vector per adapted module: ``out`` entries (keys, values), or ``in`` entries for
a feed-forward module (the down projection, whose *input* it scales).

Each family's modules, per transformer layer (``h`` hidden, ``i`` intermediate,
``kv = num_kv_heads * head_dim``), as ``transformers`` names them inside one layer:

    BERT   attention.self.query / key / value, attention.output.dense   h -> h
           intermediate.dense h -> i, output.dense i -> h
    GPT-2  attn.c_attn h -> 3h (q, k, v fused), attn.c_proj h -> h,
           mlp.c_fc h -> i, mlp.c_proj i -> h              (transformers' Conv1D, not nn.Linear)
    LLaMA  self_attn.q_proj h -> h, k_proj / v_proj h -> kv, o_proj h -> h,
           mlp.gate_proj / up_proj h -> i, mlp.down_proj i -> h        (no biases)

Targets follow PEFT's list rule (see :mod:`peft_zoo.injection.targets`): a name selects every module
whose dotted path equals it or ends with ``"." + name``. So ``"c_proj"`` selects *both*
GPT-2 ``c_proj`` layers (attention and MLP) and ``"output.dense"`` both BERT ``output.dense``
layers, exactly as ``LoraConfig(target_modules=[...])`` would; write ``"attn.c_proj"`` or
``"attention.output.dense"`` for one of them. Fused ``c_attn`` shares one ``A`` across q, k
and v: ``r (h + 3h) = 4rh`` per layer, where three separate projections cost ``6rh``.

The counting model is one :class:`ModelGeometry` per model (a dataclass, so later cost
models — FLOPs, serving memory — read the same description).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from torch import nn

from .core.checks import check_positive_int
from .injection.inject import inject_lora
from .injection.surgery import count_parameters, mark_only_adapters_trainable
from .injection.targets import ALL_LINEAR, find_targets, layer_index, target_matches

__all__ = [
    "FAMILIES",
    "GENEFORMER_GF_20L_95M_I4096",
    "GENEFORMER_GF_20L_95M_I4096_AS_QUOTED",
    "GPT2_SMALL",
    "IA3_DEFAULT_TARGETS",
    "LLAMA_7B",
    "SERVING_TARGETS",
    "AccountingRow",
    "ModelGeometry",
    "ModuleFlops",
    "ServingFlops",
    "ServingRow",
    "TrainingMemory",
    "accounting_rows",
    "accounting_table",
    "adapter_bytes",
    "break_even_tokens",
    "build_model",
    "count_instantiated",
    "dynamic_overhead",
    "full_parameters",
    "ia3_trainable_parameters",
    "linear_shapes",
    "lora_trainable_parameters",
    "model_linear_shapes",
    "output_head_name",
    "parallel_style",
    "parameter_breakdown",
    "serving_flops",
    "serving_rows",
    "serving_table",
    "training_memory",
]

Family = Literal["bert", "gpt2", "llama"]
FAMILIES: tuple[str, ...] = ("bert", "gpt2", "llama")

# Where one layer's modules sit in the model transformers builds for each family
# (BertForMaskedLM, GPT2LMHeadModel, LlamaForCausalLM): "<prefix>.<layer index>.<module>".
_LAYER_PREFIX = {"bert": "bert.encoder.layer", "gpt2": "transformer.h", "llama": "model.layers"}


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class ModelGeometry:
    """The sizes that fix a transformer's parameter count, for one of three module layouts.

    The model counted is the one ``transformers`` builds for the family, with its
    pre-training head: ``BertForMaskedLM`` (no pooler), ``GPT2LMHeadModel``,
    ``LlamaForCausalLM``. :func:`build_model` instantiates it.
    """

    name: str  # label used in tables, e.g. "GPT-2 small"
    family: Family  # module layout: "bert" (BertForMaskedLM), "gpt2" (GPT2LMHeadModel), "llama" (LlamaForCausalLM)
    hidden_size: int  # h, the residual-stream width (GPT-2: n_embd)
    num_layers: int  # transformer blocks (num_hidden_layers; GPT-2: n_layer)
    num_heads: int  # query heads; fixes head_dim = h / num_heads, not the count itself
    intermediate_size: int  # i, feed-forward width (GPT-2: n_inner, 4h when unset)
    vocab_size: int  # rows of the token embedding (and of an untied output head)
    num_kv_heads: int | None = None  # LLaMA grouped-query attention: k/v heads; None = num_heads
    head_dim: int | None = None  # LLaMA only; None = hidden_size // num_heads
    max_position_embeddings: int = 512  # learned position rows (BERT, GPT-2); LLaMA's RoPE has none
    type_vocab_size: int = 2  # BERT token-type (segment) embedding rows; other families have none
    tie_word_embeddings: bool | None = None  # output head shares the token embedding; None = family default
    hidden_act: str | None = None  # activation, no parameters; kept so build_model() matches the source
    source: str = ""  # where the numbers come from

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"ModelGeometry.family must be one of {FAMILIES}, got {self.family!r}")
        for field in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "vocab_size"):
            check_positive_int(getattr(self, field), f"ModelGeometry.{field}")
        check_positive_int(self.max_position_embeddings, "ModelGeometry.max_position_embeddings")
        check_positive_int(self.type_vocab_size, "ModelGeometry.type_vocab_size")
        # Resolve the family defaults once, so every reader sees concrete numbers.
        kv = self.num_heads if self.num_kv_heads is None else self.num_kv_heads
        check_positive_int(kv, "ModelGeometry.num_kv_heads")
        if self.family != "llama" and kv != self.num_heads:
            raise ValueError(f"{self.family}: num_kv_heads must equal num_heads (no grouped-query attention)")
        if self.num_heads % kv:
            raise ValueError(f"num_heads={self.num_heads} must be a multiple of num_kv_heads={kv}")
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"hidden_size={self.hidden_size} must be a multiple of num_heads={self.num_heads}"
                )
            head_dim = self.hidden_size // self.num_heads
        else:
            head_dim = check_positive_int(self.head_dim, "ModelGeometry.head_dim")
            if self.family != "llama" and head_dim * self.num_heads != self.hidden_size:
                raise ValueError(f"{self.family}: head_dim * num_heads must equal hidden_size")
        tie = {"bert": True, "gpt2": True, "llama": False}[self.family]
        tie = tie if self.tie_word_embeddings is None else bool(self.tie_word_embeddings)
        if self.family == "bert" and not tie:
            # transformers 4.x keeps the MLM decoder bias shared when untied, 5.x does not, so
            # the count would depend on the installed version. Every published BERT ties.
            raise ValueError("bert: an untied MLM head is not supported (its count depends on the version)")
        object.__setattr__(self, "num_kv_heads", kv)
        object.__setattr__(self, "head_dim", head_dim)
        object.__setattr__(self, "tie_word_embeddings", tie)

    @property
    def kv_dim(self) -> int:
        """Width of the key and value projections' output: ``num_kv_heads * head_dim``."""
        return self.num_kv_heads * self.head_dim  # type: ignore[operator]

    @property
    def attn_dim(self) -> int:
        """Width of the query projection's output: ``num_heads * head_dim`` (``h`` unless LLaMA
        sets ``head_dim`` explicitly)."""
        return self.num_heads * self.head_dim  # type: ignore[operator]

    @classmethod
    def from_hf_config(cls, config: object, name: str | None = None) -> ModelGeometry:
        """Read a ``transformers`` config (``BertConfig``, ``GPT2Config``, ``LlamaConfig``).

        Raises ``ValueError`` for other model types and for options that change the count in
        ways this module does not model (relative position embeddings, LLaMA biases).
        """
        kind = getattr(config, "model_type", None)
        label = name or getattr(config, "name_or_path", "") or str(kind)
        if kind == "bert":
            if getattr(config, "position_embedding_type", "absolute") != "absolute":
                raise ValueError("bert: only position_embedding_type='absolute' is counted")
            return cls(
                name=label,
                family="bert",
                hidden_size=config.hidden_size,
                num_layers=config.num_hidden_layers,
                num_heads=config.num_attention_heads,
                intermediate_size=config.intermediate_size,
                vocab_size=config.vocab_size,
                max_position_embeddings=config.max_position_embeddings,
                type_vocab_size=config.type_vocab_size,
                tie_word_embeddings=getattr(config, "tie_word_embeddings", True),
                hidden_act=config.hidden_act,
            )
        if kind == "gpt2":
            return cls(
                name=label,
                family="gpt2",
                hidden_size=config.n_embd,
                num_layers=config.n_layer,
                num_heads=config.n_head,
                intermediate_size=config.n_inner or 4 * config.n_embd,
                vocab_size=config.vocab_size,
                max_position_embeddings=config.n_positions,
                tie_word_embeddings=getattr(config, "tie_word_embeddings", True),
                hidden_act=config.activation_function,
            )
        if kind == "llama":
            if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
                raise ValueError("llama: attention_bias / mlp_bias are not counted (LLaMA has no biases)")
            return cls(
                name=label,
                family="llama",
                hidden_size=config.hidden_size,
                num_layers=config.num_hidden_layers,
                num_heads=config.num_attention_heads,
                intermediate_size=config.intermediate_size,
                vocab_size=config.vocab_size,
                num_kv_heads=getattr(config, "num_key_value_heads", None),
                head_dim=getattr(config, "head_dim", None),
                max_position_embeddings=config.max_position_embeddings,
                tie_word_embeddings=getattr(config, "tie_word_embeddings", False),
                hidden_act=config.hidden_act,
            )
        raise ValueError(f"no geometry for model_type={kind!r}; supported: bert, gpt2, llama")

    def hf_config(self) -> object:
        """The ``transformers`` config that builds this geometry (imports transformers)."""
        import transformers

        act = {} if self.hidden_act is None else {"hidden_act": self.hidden_act}
        if self.family == "bert":
            return transformers.BertConfig(
                vocab_size=self.vocab_size,
                hidden_size=self.hidden_size,
                num_hidden_layers=self.num_layers,
                num_attention_heads=self.num_heads,
                intermediate_size=self.intermediate_size,
                max_position_embeddings=self.max_position_embeddings,
                type_vocab_size=self.type_vocab_size,
                tie_word_embeddings=self.tie_word_embeddings,
                **act,
            )
        if self.family == "gpt2":
            # GPT-2's special token id 50256 must lie inside a (smaller) test vocabulary.
            special = min(50256, self.vocab_size - 1)
            return transformers.GPT2Config(
                vocab_size=self.vocab_size,
                n_positions=self.max_position_embeddings,
                n_embd=self.hidden_size,
                n_layer=self.num_layers,
                n_head=self.num_heads,
                n_inner=self.intermediate_size,
                tie_word_embeddings=self.tie_word_embeddings,
                bos_token_id=special,
                eos_token_id=special,
                **({} if self.hidden_act is None else {"activation_function": self.hidden_act}),
            )
        special_ids = {"bos_token_id": 0, "eos_token_id": 0} if self.vocab_size < 3 else {}
        return transformers.LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=self.tie_word_embeddings,
            **act,
            **special_ids,
        )


def build_model(geometry: ModelGeometry, *, attn_implementation: str | None = None) -> nn.Module:
    """Instantiate the family's ``transformers`` model for ``geometry`` (random weights).

    Wrap the call in ``with torch.device("meta"):`` to get a model with every parameter's
    shape but no storage: enough to count parameters of a 7B model in milliseconds.
    ``attn_implementation`` (``"eager"``, ``"sdpa"``; ``None`` = transformers' default) picks
    the attention kernel: FLOP counts need ``"eager"``, whose score and value products are
    plain ``matmul`` calls (see :mod:`peft_zoo.cost_serving`).
    """
    import transformers

    cls = {
        "bert": transformers.BertForMaskedLM,
        "gpt2": transformers.GPT2LMHeadModel,
        "llama": transformers.LlamaForCausalLM,
    }[geometry.family]
    config = geometry.hf_config()
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation  # what from_config(attn_implementation=) sets
    return cls(config)


# ----------------------------------------------------------------------------- published geometries

# Radford et al. 2019, "Language Models are Unsupervised Multitask Learners" (the 117M/124M
# model); Hugging Face config `openai-community/gpt2`: n_embd 768, n_layer 12, n_head 12,
# n_inner null (= 4 * 768), vocab 50257, n_positions 1024.
GPT2_SMALL = ModelGeometry(
    name="GPT-2 small",
    family="gpt2",
    hidden_size=768,
    num_layers=12,
    num_heads=12,
    intermediate_size=3072,
    vocab_size=50257,
    max_position_embeddings=1024,
    hidden_act="gelu_new",
    source="openai-community/gpt2 config.json; Radford et al. 2019",
)

# Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language Models", Table 2
# (dimension 4096, 32 heads, 32 layers); the HF conversion (e.g. `huggyllama/llama-7b`
# config.json): intermediate 11008, vocab 32000, max positions 2048, untied lm_head.
LLAMA_7B = ModelGeometry(
    name="LLaMA-7B",
    family="llama",
    hidden_size=4096,
    num_layers=32,
    num_heads=32,
    intermediate_size=11008,
    vocab_size=32000,
    max_position_embeddings=2048,
    hidden_act="silu",
    source="Touvron et al. 2023 (arXiv:2302.13971) Table 2; huggyllama/llama-7b config.json",
)

# The published config, Hugging Face `ctheodoris/Geneformer`, folder gf-20L-95M-i4096,
# config.json: BertForMaskedLM, hidden 896, 20 layers, 14 heads, intermediate 1792,
# vocab 20275, max positions 4096, type vocab 2, hidden_act relu. Counted here it has
# 151,313,459 parameters: the "95M" in the name is not a parameter count (in Geneformer's
# model names it is the size of the pretraining corpus, in millions of cells).
GENEFORMER_GF_20L_95M_I4096 = ModelGeometry(
    name="Geneformer gf-20L-95M-i4096",
    family="bert",
    hidden_size=896,
    num_layers=20,
    num_heads=14,
    intermediate_size=1792,
    vocab_size=20275,
    max_position_embeddings=4096,
    hidden_act="relu",
    source="huggingface.co/ctheodoris/Geneformer gf-20L-95M-i4096/config.json",
)

# The same model as some write-ups quote it (the project's seed notes on batched LoRA for
# Geneformer): "BertForMaskedLM, 20 transformer layers, hidden_dim=512, intermediate=2048"
# and an MLM decoder to 25,426 tokens. The notes state no head count: we assume 8 heads
# (head_dim 64), which changes no parameter count. Max positions 4096 as the "i4096" in the
# name says. Where it differs from the published config above:
#   hidden 512 vs 896, intermediate 2048 (4h) vs 1792 (2h), vocab 25,426 vs 20,275,
#   heads 8 (assumed) vs 14; layers (20), max positions (4096) and the layout agree.
# 25,426 is the token dictionary of the first Geneformer release; the total here is
# ~78.5M parameters, not the 95M the name seems to promise, nor the published 151.3M.
GENEFORMER_GF_20L_95M_I4096_AS_QUOTED = ModelGeometry(
    name="Geneformer gf-20L-95M-i4096 (as quoted)",
    family="bert",
    hidden_size=512,
    num_layers=20,
    num_heads=8,
    intermediate_size=2048,
    vocab_size=25426,
    max_position_embeddings=4096,
    hidden_act="relu",
    source="seed notes 000 (hidden 512, intermediate 2048, vocab 25,426, 20 layers); 8 heads assumed",
)


# ----------------------------------------------------------------------------- module shapes


def linear_shapes(geometry: ModelGeometry) -> dict[str, tuple[int, int]]:
    """The linear modules of *one* transformer layer: ``{name inside the layer: (in, out)}``.

    Names are the paths ``named_modules()`` prints below ``<layers>.<index>``; the table in
    the module docstring lists them for each family.
    """
    h, i, kv, q = geometry.hidden_size, geometry.intermediate_size, geometry.kv_dim, geometry.attn_dim
    if geometry.family == "bert":
        return {
            "attention.self.query": (h, h),
            "attention.self.key": (h, h),
            "attention.self.value": (h, h),
            "attention.output.dense": (h, h),
            "intermediate.dense": (h, i),
            "output.dense": (i, h),
        }
    if geometry.family == "gpt2":
        return {
            "attn.c_attn": (h, 3 * h),  # q, k, v in one (in, out) = (h, 3h) Conv1D
            "attn.c_proj": (h, h),
            "mlp.c_fc": (h, i),
            "mlp.c_proj": (i, h),
        }
    return {
        "self_attn.q_proj": (h, q),
        "self_attn.k_proj": (h, kv),  # grouped-query attention: kv = num_kv_heads * head_dim
        "self_attn.v_proj": (h, kv),
        "self_attn.o_proj": (q, h),
        "mlp.gate_proj": (h, i),
        "mlp.up_proj": (h, i),
        "mlp.down_proj": (i, h),
    }


def _head_linear_shapes(geometry: ModelGeometry) -> dict[str, tuple[int, int]]:
    """Linear modules outside the layers, by full path: the pre-training head."""
    h, v = geometry.hidden_size, geometry.vocab_size
    if geometry.family == "bert":
        return {"cls.predictions.transform.dense": (h, h), "cls.predictions.decoder": (h, v)}
    return {"lm_head": (h, v)}


def output_head_name(geometry: ModelGeometry) -> str:
    """Full path of the output layer (``get_output_embeddings()``), which ``"all-linear"`` skips."""
    return "cls.predictions.decoder" if geometry.family == "bert" else "lm_head"


def model_linear_shapes(geometry: ModelGeometry) -> dict[str, tuple[int, int]]:
    """Every linear module of the whole model by full dotted path, in ``named_modules()``
    order: ``{"bert.encoder.layer.0.attention.self.query": (h, h), ...}`` — the layers
    (:func:`linear_shapes` under ``<prefix>.<index>``), then the head."""
    prefix = _LAYER_PREFIX[geometry.family]
    per_layer = linear_shapes(geometry)
    out = {
        f"{prefix}.{index}.{name}": shape
        for index in range(geometry.num_layers)
        for name, shape in per_layer.items()
    }
    out.update(_head_linear_shapes(geometry))
    return out


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


# ----------------------------------------------------------------------------- adapter counts

Targets = str | Sequence[str]
RankPattern = Mapping[str | int, int]


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


def _selected(
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
            f"layer has {list(linear_shapes(geometry))}; the head has {list(_head_linear_shapes(geometry))}"
        )
    return chosen


def _ends_with(path: str, name: str) -> bool:
    return path == name or path.endswith("." + name)


def _check_rank_pattern(
    geometry_paths: Iterable[str], num_layers: int, rank_pattern: RankPattern | None
) -> dict[str | int, int]:
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


def _rank_for(path: str, rank: int, pattern: Mapping[str | int, int]) -> int:
    """Rank of the module at ``path``: the first name key of ``pattern`` that ``path`` ends
    with (mapping order, as PEFT's ``rank_pattern``), else its layer's index key, else ``rank``."""
    for key, value in pattern.items():
        if isinstance(key, str) and _ends_with(path, key):
            return value
    index = layer_index(path)
    if index is not None and index in pattern:
        return pattern[index]
    return rank


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
    chosen = _selected(geometry, targets, layers)
    pattern = _check_rank_pattern(model_linear_shapes(geometry), geometry.num_layers, rank_pattern)
    return sum(_rank_for(p, rank, pattern) * (d_in + d_out) for p, (d_in, d_out) in chosen.items())


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
    chosen = _selected(geometry, targets, layers)
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
    pattern = _check_rank_pattern(all_linear, num_layers, rank_pattern)
    ranks = {n: _rank_for(n, rank, pattern) for n in names}
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


# ----------------------------------------------------------------------------- the table


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


def _markdown_lines(rows: Iterable[AccountingRow]) -> Iterator[str]:
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
    return "\n".join(_markdown_lines(accounting_rows() if rows is None else rows))


# ----------------------------------------------------------------------------- serving costs

# FLOPs of merge vs dynamic serving, tensor parallelism and training memory live in
# peft_zoo.cost_serving, which builds on the geometry above. They are re-exported here on
# first access (PEP 562), so `from peft_zoo.cost import serving_flops` works and importing
# either module first makes no import cycle.
if TYPE_CHECKING:  # what the names are, for type checkers and linters
    from .cost_serving import (
        SERVING_TARGETS,
        ModuleFlops,
        ServingFlops,
        ServingRow,
        TrainingMemory,
        adapter_bytes,
        break_even_tokens,
        dynamic_overhead,
        parallel_style,
        serving_flops,
        serving_rows,
        serving_table,
        training_memory,
    )


def __getattr__(name: str) -> object:
    from . import cost_serving  # the names it re-exports are its own __all__

    if name in cost_serving.__all__:
        return getattr(cost_serving, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
