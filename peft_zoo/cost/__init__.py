"""What a PEFT adapter costs, from a model's geometry alone, checked against instantiated models.

- :mod:`.geometry`: :class:`ModelGeometry` (the sizes that fix a BERT / GPT-2 / LLaMA
  model), published geometries (:data:`GPT2_SMALL`, :data:`LLAMA_7B`, Geneformer), the
  linear modules each one holds, and :func:`build_model`;
- :mod:`.counts`: parameters of the base model and of a LoRA / IA³ adapter, by PEFT's
  target and ``rank_pattern`` rules, and counted on an instantiated model;
- :mod:`.memory`: adapter bytes and training memory (weights, gradients, Adam, master weights);
- :mod:`.flops`: FLOPs per token of merged vs dynamic LoRA serving, the break-even point,
  tensor parallelism;
- :mod:`.tables`: the markdown tables the docs and benchmarks print.

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
