"""A transformer's *geometry*: the handful of sizes that fix its parameter count, the linear
modules it holds, published geometries to check numbers against, and the ``transformers``
model each one builds.

Each family's modules, per transformer layer (``h`` hidden, ``i`` intermediate,
``kv = num_kv_heads * head_dim``), as ``transformers`` names them inside one layer:

    BERT   attention.self.query / key / value, attention.output.dense   h -> h
           intermediate.dense h -> i, output.dense i -> h
    GPT-2  attn.c_attn h -> 3h (q, k, v fused), attn.c_proj h -> h,
           mlp.c_fc h -> i, mlp.c_proj i -> h              (transformers' Conv1D, not nn.Linear)
    LLaMA  self_attn.q_proj h -> h, k_proj / v_proj h -> kv, o_proj h -> h,
           mlp.gate_proj / up_proj h -> i, mlp.down_proj i -> h        (no biases)

The counting model is one :class:`ModelGeometry` per model (a dataclass, so every cost model
— parameter counts, memory, FLOPs — reads the same description).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, cast

from torch import nn

from ..core.checks import check_positive_int

if TYPE_CHECKING:
    from transformers import PretrainedConfig

__all__ = [
    "FAMILIES",
    "GENEFORMER_GF_20L_95M_I4096",
    "GENEFORMER_GF_20L_95M_I4096_AS_QUOTED",
    "GPT2_SMALL",
    "LLAMA_7B",
    "Family",
    "ModelGeometry",
    "build_model",
    "head_linear_shapes",
    "linear_shapes",
    "model_linear_shapes",
    "output_head_name",
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
        return cast(int, self.num_kv_heads) * cast(int, self.head_dim)  # ints after __post_init__

    @property
    def attn_dim(self) -> int:
        """Width of the query projection's output: ``num_heads * head_dim`` (``h`` unless LLaMA
        sets ``head_dim`` explicitly)."""
        return self.num_heads * cast(int, self.head_dim)  # an int after __post_init__

    @classmethod
    def from_hf_config(cls, config: PretrainedConfig, name: str | None = None) -> ModelGeometry:
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

    def hf_config(self) -> PretrainedConfig:
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
    plain ``matmul`` calls (see :mod:`peft_zoo.cost.flops`).
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


def head_linear_shapes(geometry: ModelGeometry) -> dict[str, tuple[int, int]]:
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
    out.update(head_linear_shapes(geometry))
    return out
