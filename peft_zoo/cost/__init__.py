"""What a PEFT adapter costs, from a model's geometry alone, checked against instantiated models.

- :mod:`.geometry`: :class:`ModelGeometry` (the sizes that fix a BERT / GPT-2 / LLaMA
  model), published geometries (:data:`GPT2_SMALL`, :data:`LLAMA_7B`, Geneformer), the
  linear modules each one holds, and :func:`build_model`;
- :mod:`.counts`: parameters of the base model and of a LoRA / IA³ adapter, by PEFT's
  target and ``rank_pattern`` rules, and counted on an instantiated model;
- :mod:`.memory`: adapter bytes and training memory (weights, gradients, Adam, master weights);
- :mod:`.flops`: FLOPs per token of merged vs dynamic LoRA serving, the break-even point,
  tensor parallelism;
- :mod:`.tables`: the markdown tables the docs and benchmarks print;
- :mod:`.zoo_counts`: VeRA, LoHa, LoKr, OFT, AdaLoRA and LoRA on embeddings / convolutions,
  per module and per model;
- :mod:`.zoo_tables`: :data:`BERT_BASE` and the table of every method's count on it.

Each module imports only the ones above it in this list, so any of them can be imported
first; every name below is importable from ``peft_zoo.cost``.
"""

from __future__ import annotations

from .counts import (
    IA3_DEFAULT_TARGETS,
    count_instantiated,
    full_parameters,
    ia3_trainable_parameters,
    lora_trainable_parameters,
    parameter_breakdown,
)
from .flops import (
    ModuleFlops,
    ServingFlops,
    break_even_tokens,
    dynamic_overhead,
    parallel_style,
    serving_flops,
)
from .geometry import (
    FAMILIES,
    GENEFORMER_GF_20L_95M_I4096,
    GENEFORMER_GF_20L_95M_I4096_AS_QUOTED,
    GPT2_SMALL,
    LLAMA_7B,
    ModelGeometry,
    build_model,
    linear_shapes,
    model_linear_shapes,
    output_head_name,
)
from .memory import TrainingMemory, adapter_bytes, training_memory
from .tables import (
    SERVING_TARGETS,
    AccountingRow,
    ServingRow,
    accounting_rows,
    accounting_table,
    serving_rows,
    serving_table,
)
from .zoo_counts import (
    adalora_final_parameters,
    adalora_layer_parameters,
    adalora_trainable_parameters,
    embedding_shapes,
    loha_layer_parameters,
    loha_trainable_parameters,
    lokr_layer_parameters,
    lokr_trainable_parameters,
    lora_conv_parameters,
    lora_embedding_parameters,
    lora_embedding_trainable_parameters,
    oft_layer_parameters,
    oft_trainable_parameters,
    vera_layer_parameters,
    vera_trainable_parameters,
)
from .zoo_tables import BERT_BASE, ZooRow, zoo_rows, zoo_table

__all__ = [
    "BERT_BASE",
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
    "ZooRow",
    "accounting_rows",
    "accounting_table",
    "adalora_final_parameters",
    "adalora_layer_parameters",
    "adalora_trainable_parameters",
    "adapter_bytes",
    "break_even_tokens",
    "build_model",
    "count_instantiated",
    "dynamic_overhead",
    "embedding_shapes",
    "full_parameters",
    "ia3_trainable_parameters",
    "linear_shapes",
    "loha_layer_parameters",
    "loha_trainable_parameters",
    "lokr_layer_parameters",
    "lokr_trainable_parameters",
    "lora_conv_parameters",
    "lora_embedding_parameters",
    "lora_embedding_trainable_parameters",
    "lora_trainable_parameters",
    "model_linear_shapes",
    "oft_layer_parameters",
    "oft_trainable_parameters",
    "output_head_name",
    "parallel_style",
    "parameter_breakdown",
    "serving_flops",
    "serving_rows",
    "serving_table",
    "training_memory",
    "vera_layer_parameters",
    "vera_trainable_parameters",
    "zoo_rows",
    "zoo_table",
]
