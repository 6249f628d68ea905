"""peft_zoo: parameter-efficient fine-tuning methods for PyTorch, small enough to learn from.

Every public building block is importable from here::

    from peft_zoo import LoRALinear, inject_lora, save_adapter
"""

from .adalora import AdaLoRALinear, orthogonal_regulariser
from .adalora_allocator import RankAllocator, adalora_budget
from .adapters import AdapterBlock, AdapterStack, BottleneckAdapter, ParallelAdapterBlock
from .boft import BOFTLinear
from .bottleneck import BnAdapter
from .core.base import AdapterModule, merge_adapters, unmerge_adapters
from .core.version import __version__
from .dora import DoRALinear
from .fused import FusedLoRALinear
from .ia3 import IA3Linear
from .injection.adalora_config import AdaLoraConfig
from .injection.adapt import adapt_model
from .injection.boft_config import BOFTConfig
from .injection.bottleneck_config import BottleneckConfig, DoubleSeqBnConfig, ParBnConfig, SeqBnConfig
from .injection.bottleneck_placement import adapt_bottleneck, remove_bottleneck
from .injection.config import IA3Config, LoraConfig, ModulesToSave
from .injection.inject import (
    build_lora_adapter_model,
    inject_ia3,
    inject_lora,
    inject_lora_recursive,
    inject_qlora,
)
from .injection.lycoris_config import LoHaConfig, LoKrConfig
from .injection.oft_config import OFTConfig
from .injection.prefix_model import PrefixTuningConfig, PrefixTuningModel
from .injection.prompt_model import PromptTuningConfig, PromptTuningModel
from .injection.ptuning_config import PromptEncoderConfig
from .injection.surgery import (
    InjectionError,
    adapter_named_parameters,
    count_parameters,
    mark_only_adapters_trainable,
    print_trainable_parameters,
    trainable_parameters,
)
from .injection.targets import find_targets, layer_index, target_matches
from .injection.unload import UnloadError, merge_and_unload, unload
from .injection.vera_config import VeraConfig
from .interop.adapterhub import AdapterHubFormatError, load_adapterhub, read_adapterhub, save_adapterhub
from .interop.bnb import (
    nf4_linear_from_bnb,
    nf4_linear_from_bnb_state_dict,
    nf4_linear_to_bnb,
    nf4_linear_to_bnb_state_dict,
    qlora_from_bnb,
)
from .interop.checkpoint import (
    CheckpointError,
    adapter_config,
    adapter_state_dict,
    load_adapter,
    load_adapter_state_dict,
    read_adapter,
    save_adapter,
)
from .interop.peft_config import (
    PeftFormatError,
    config_from_peft,
    ia3_config_from_peft,
    lora_config_from_peft,
    peft_dict_from_config,
)
from .interop.peft_methods import method_config_from_peft
from .interop.peft_read import load_peft, read_peft
from .interop.peft_write import save_peft
from .loha import LoHaLinear
from .lokr import LoKrLinear
from .lora import LoRALinear, lora_scale
from .lora_conv import LoRAConv
from .lora_embedding import LoRAEmbedding
from .loraplus import create_loraplus_optimizer, loraplus_param_groups
from .nf4 import NF4_CODE, NF4Linear, NF4Tensor, quantize_int4, quantize_nf4
from .oft import OFTLinear
from .pissa import ConvertedLoRA, olora_init_, pissa_init_, pissa_to_lora, pissa_to_lora_delta
from .prefix import LearnablePrefix, PrefixKV
from .prefix_kv import PrefixKVEncoder
from .prompt import PromptEmbedding
from .ptuning import PromptEncoder
from .qlora import QLoRALinear, merge_qlora
from .serving.bank import AdapterBank, BankError
from .serving.batched import (
    BatchedLoRALinear,
    Routing,
    batched_lora_layers,
    inject_batched_lora,
    use_adapters,
)
from .serving.cache import CacheStats, EmbeddingCache
from .serving.named import (
    active_adapters,
    add_adapter,
    delete_adapter,
    disable_adapters,
    list_adapters,
    load_adapterhub_adapter,
    load_peft_adapter,
    named_adapter_layers,
    set_adapter,
    use_adapter_names,
)
from .serving.named_bottleneck import NamedBnSite
from .serving.named_ia3 import NamedIA3Linear
from .serving.named_layer import NamedLoRALinear
from .sharing import share_main_matrices, shared_parameters, unique_parameter_count
from .vera import VeRALinear, VeraProjections

__all__ = [
    "NF4_CODE",
    "AdaLoRALinear",
    "AdaLoraConfig",
    "AdapterBank",
    "AdapterBlock",
    "AdapterHubFormatError",
    "AdapterModule",
    "AdapterStack",
    "BOFTConfig",
    "BOFTLinear",
    "BankError",
    "BatchedLoRALinear",
    "BnAdapter",
    "BottleneckAdapter",
    "BottleneckConfig",
    "CacheStats",
    "CheckpointError",
    "ConvertedLoRA",
    "DoRALinear",
    "DoubleSeqBnConfig",
    "EmbeddingCache",
    "FusedLoRALinear",
    "IA3Config",
    "IA3Linear",
    "InjectionError",
    "LearnablePrefix",
    "LoHaConfig",
    "LoHaLinear",
    "LoKrConfig",
    "LoKrLinear",
    "LoRAConv",
    "LoRAEmbedding",
    "LoRALinear",
    "LoraConfig",
    "ModulesToSave",
    "NF4Linear",
    "NF4Tensor",
    "NamedBnSite",
    "NamedIA3Linear",
    "NamedLoRALinear",
    "OFTConfig",
    "OFTLinear",
    "ParBnConfig",
    "ParallelAdapterBlock",
    "PeftFormatError",
    "PrefixKV",
    "PrefixKVEncoder",
    "PrefixTuningConfig",
    "PrefixTuningModel",
    "PromptEmbedding",
    "PromptEncoder",
    "PromptEncoderConfig",
    "PromptTuningConfig",
    "PromptTuningModel",
    "QLoRALinear",
    "RankAllocator",
    "Routing",
    "SeqBnConfig",
    "UnloadError",
    "VeRALinear",
    "VeraConfig",
    "VeraProjections",
    "__version__",
    "active_adapters",
    "adalora_budget",
    "adapt_bottleneck",
    "adapt_model",
    "adapter_config",
    "adapter_named_parameters",
    "adapter_state_dict",
    "add_adapter",
    "batched_lora_layers",
    "build_lora_adapter_model",
    "config_from_peft",
    "count_parameters",
    "create_loraplus_optimizer",
    "delete_adapter",
    "disable_adapters",
    "find_targets",
    "ia3_config_from_peft",
    "inject_batched_lora",
    "inject_ia3",
    "inject_lora",
    "inject_lora_recursive",
    "inject_qlora",
    "layer_index",
    "list_adapters",
    "load_adapter",
    "load_adapter_state_dict",
    "load_adapterhub",
    "load_adapterhub_adapter",
    "load_peft",
    "load_peft_adapter",
    "lora_config_from_peft",
    "lora_scale",
    "loraplus_param_groups",
    "mark_only_adapters_trainable",
    "merge_adapters",
    "merge_and_unload",
    "merge_qlora",
    "method_config_from_peft",
    "named_adapter_layers",
    "nf4_linear_from_bnb",
    "nf4_linear_from_bnb_state_dict",
    "nf4_linear_to_bnb",
    "nf4_linear_to_bnb_state_dict",
    "olora_init_",
    "orthogonal_regulariser",
    "peft_dict_from_config",
    "pissa_init_",
    "pissa_to_lora",
    "pissa_to_lora_delta",
    "print_trainable_parameters",
    "qlora_from_bnb",
    "quantize_int4",
    "quantize_nf4",
    "read_adapter",
    "read_adapterhub",
    "read_peft",
    "remove_bottleneck",
    "save_adapter",
    "save_adapterhub",
    "save_peft",
    "set_adapter",
    "share_main_matrices",
    "shared_parameters",
    "target_matches",
    "trainable_parameters",
    "unique_parameter_count",
    "unload",
    "unmerge_adapters",
    "use_adapter_names",
    "use_adapters",
]
