"""Files in and out: peft_zoo's own adapter checkpoints and Hugging Face PEFT's format.

Everything here validates a file completely before it changes a model, writes atomically, and
reads tensors with safetensors or ``torch.load(weights_only=True)``, never a pickle.

- :mod:`.checkpoint`: ``save_adapter`` / ``load_adapter`` / ``read_adapter``, peft_zoo's own
  adapter-only checkpoints (config and SHA-256 digest in the safetensors header);
- :mod:`.peft_keys`: PEFT's on-disk format, what its files and tensors are called;
- :mod:`.peft_write`: ``save_peft``, peft_zoo adapters -> a directory PEFT loads;
- :mod:`.peft_read`: ``read_peft``, ``load_peft``, a PEFT adapter -> peft_zoo layers;
- :mod:`.peft_match`: PEFT's rules for which modules an adapter names, on this model's names;
- :mod:`.peft_config`: ``adapter_config.json`` <-> ``LoraConfig`` / ``IA3Config``;
- :mod:`.peft_checks`: the type and range of every config field, a bounded JSON reader;
- :mod:`.peft_parts`: the LoRA (linear, embedding, convolution) and IA³ parts of a file;
- :mod:`.peft_methods`, :mod:`.peft_method_load`: LoHa, LoKr, VeRA, OFT, BOFT and AdaLoRA files;
- :mod:`.peft_pissa`: PiSSA / OLoRA files (the decomposition redone on load, as PEFT does;
  conversion to plain LoRA on save).

The public names are also importable from here (``from peft_zoo.interop import save_peft``)
and from :mod:`peft_zoo` itself.
"""

from .checkpoint import (
    CheckpointError,
    adapter_config,
    adapter_state_dict,
    load_adapter,
    load_adapter_state_dict,
    read_adapter,
    save_adapter,
)
from .peft_config import (
    PeftFormatError,
    config_from_peft,
    ia3_config_from_peft,
    lora_config_from_peft,
    peft_dict_from_config,
)
from .peft_keys import PEFT_PREFIX
from .peft_methods import method_config_from_peft
from .peft_read import load_peft, read_peft
from .peft_write import save_peft

__all__ = [
    "PEFT_PREFIX",
    "CheckpointError",
    "PeftFormatError",
    "adapter_config",
    "adapter_state_dict",
    "config_from_peft",
    "ia3_config_from_peft",
    "load_adapter",
    "load_adapter_state_dict",
    "load_peft",
    "lora_config_from_peft",
    "method_config_from_peft",
    "peft_dict_from_config",
    "read_adapter",
    "read_peft",
    "save_adapter",
    "save_peft",
]
