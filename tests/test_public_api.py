"""The public names and signatures of ../shared/DESIGN.md are relied on from outside."""

import inspect

import pytest

import peft_zoo

CONTRACT = {
    "LoRALinear": ["base", "rank", "alpha", "dropout", "rslora"],
    "BottleneckAdapter": ["d_model", "bottleneck_dim", "activation", "residual"],
    "AdapterBlock": ["sublayer", "adapter"],
    "ParallelAdapterBlock": ["sublayer", "adapter"],
    "LearnablePrefix": ["prefix_len", "d_model"],
    "IA3Linear": ["base"],
    "AdapterStack": ["d_model", "bottleneck_dim", "num_adapters"],
    "inject_lora": ["model", "linear_names", "rank", "alpha"],
    "inject_lora_recursive": ["model", "rank", "alpha"],
    "inject_ia3": ["model", "linear_names"],
    "build_lora_adapter_model": ["base", "lora_names", "rank", "alpha", "adapter_bottleneck"],
    "mark_only_adapters_trainable": ["model", "bias"],
    "trainable_parameters": ["model"],
    "print_trainable_parameters": ["model"],
    "adapter_state_dict": ["model"],
    "save_adapter": ["model", "path"],
    "load_adapter": ["model", "path"],
    "merge_and_unload": ["model"],
    "unload": ["model"],
    "PromptTuningConfig": ["num_virtual_tokens", "token_dim"],  # PEFT's field order
    "PromptEncoderConfig": ["num_virtual_tokens", "token_dim"],
    "PromptEmbedding": ["num_virtual_tokens", "token_dim"],
    "PrefixTuningConfig": ["num_virtual_tokens", "token_dim"],
    "BottleneckConfig": ["mh_adapter", "output_adapter", "reduction_factor", "non_linearity"],  # AdapterHub's
    "adapt_bottleneck": ["model", "config"],
    "save_adapterhub": ["model", "directory", "name"],
    "load_adapterhub": ["model", "directory"],
    "add_adapter": ["model", "adapter_name", "config"],  # PEFT's names and order
    "set_adapter": ["model", "adapter_name"],
    "delete_adapter": ["model", "adapter_name"],
    "disable_adapters": ["model"],
    "use_adapter_names": ["model", "adapter_names"],
    "active_adapters": ["model"],
    "list_adapters": ["model"],
    "load_peft_adapter": ["model", "path", "adapter_name"],
    "load_adapterhub_adapter": ["model", "path", "adapter_name"],
    "NamedBnSite": ["base", "location"],
    "NamedLoRALinear": ["base"],
    "NamedIA3Linear": ["base"],
    "LoRAEmbedding": ["base", "rank", "alpha", "rslora"],
    "pissa_init_": ["layer", "niter"],
    "AdaLoRALinear": ["base", "rank", "alpha", "dropout"],
    "RankAllocator": ["model", "target_r", "total_step", "tinit", "tfinal", "deltaT", "beta1", "beta2"],
    "olora_init_": ["layer"],
    "pissa_to_lora_delta": ["layer", "initial_A", "initial_B"],
    "pissa_to_lora": ["layer", "initial_A", "initial_B", "original_base"],
    "LoRAConv": ["base", "rank", "alpha", "dropout", "rslora"],
    "VeRALinear": ["base", "projections", "d_initial", "dropout"],
    "VeraProjections": ["rank", "in_features", "out_features", "seed"],
    "OFTLinear": [
        "base",
        "r",
        "oft_block_size",
        "coft",
        "eps",
        "block_share",
        "use_cayley_neumann",
        "num_cayley_neumann_terms",
        "init_weights",
    ],
    "BOFTLinear": [
        "base",
        "boft_block_size",
        "boft_block_num",
        "boft_n_butterfly_factor",
        "boft_dropout",
        "init_weights",
    ],
    "LoHaLinear": ["base", "rank", "alpha", "rank_dropout", "module_dropout", "init_weights"],
    "LoKrLinear": [
        "base",
        "rank",
        "alpha",
        "decompose_both",
        "decompose_factor",
        "rank_dropout",
        "module_dropout",
        "rank_dropout_scale",
        "init_weights",
    ],
}
KEYWORD_ONLY = {
    ("LoRALinear", "dropout"),
    ("LoRALinear", "rslora"),
    ("BottleneckAdapter", "activation"),
    ("BottleneckAdapter", "residual"),
    ("AdaLoRALinear", "dropout"),
    ("RankAllocator", "target_r"),
    ("RankAllocator", "total_step"),
    ("RankAllocator", "tinit"),
    ("RankAllocator", "tfinal"),
    ("RankAllocator", "deltaT"),
    ("RankAllocator", "beta1"),
    ("RankAllocator", "beta2"),
    ("LoRAEmbedding", "rslora"),
    ("LoRAConv", "dropout"),
    ("LoRAConv", "rslora"),
    ("VeRALinear", "d_initial"),
    ("VeRALinear", "dropout"),
    ("VeraProjections", "seed"),
    ("OFTLinear", "coft"),
    ("OFTLinear", "eps"),
    ("OFTLinear", "block_share"),
    ("OFTLinear", "use_cayley_neumann"),
    ("OFTLinear", "num_cayley_neumann_terms"),
    ("OFTLinear", "init_weights"),
    ("LoHaLinear", "rank_dropout"),
    ("LoHaLinear", "module_dropout"),
    ("LoHaLinear", "init_weights"),
    ("BOFTLinear", "boft_dropout"),
    ("BOFTLinear", "init_weights"),
    ("LoKrLinear", "decompose_both"),
    ("LoKrLinear", "decompose_factor"),
    ("LoKrLinear", "rank_dropout"),
    ("LoKrLinear", "module_dropout"),
    ("LoKrLinear", "rank_dropout_scale"),
    ("LoKrLinear", "init_weights"),
}


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_contract_name_and_parameters(name: str) -> None:
    obj = getattr(peft_zoo, name)
    assert name in peft_zoo.__all__
    params = inspect.signature(obj).parameters
    for i, pname in enumerate(CONTRACT[name]):
        assert pname in params, f"{name} lost its parameter {pname!r}"
        kind = params[pname].kind
        if (name, pname) in KEYWORD_ONLY:
            assert kind is inspect.Parameter.KEYWORD_ONLY
        else:
            assert list(params)[i] == pname, f"{name}: {pname!r} must stay positional #{i}"
    assert obj.__doc__ and obj.__doc__.strip(), f"{name} needs a docstring"


def test_contract_defaults() -> None:
    sig = inspect.signature(peft_zoo.LoRALinear)
    assert sig.parameters["alpha"].default is None
    assert sig.parameters["dropout"].default == 0.0
    assert sig.parameters["rslora"].default is False
    sig = inspect.signature(peft_zoo.BottleneckAdapter)
    assert sig.parameters["activation"].default == "gelu" and sig.parameters["residual"].default is True
    assert inspect.signature(peft_zoo.mark_only_adapters_trainable).parameters["bias"].default == "none"


def test_every_exported_name_resolves() -> None:
    missing = [n for n in peft_zoo.__all__ if not hasattr(peft_zoo, n)]
    assert not missing


def test_the_version_has_one_source() -> None:
    """pyproject.toml reads the version from peft_zoo/core/version.py; the installed metadata
    and ``peft_zoo.__version__`` say the same."""
    import importlib.metadata
    from pathlib import Path

    from peft_zoo.core.version import __version__

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '\nversion = "' not in pyproject, "the version is written in pyproject.toml again"
    assert 'dynamic = ["version"]' in pyproject
    assert 'version = { attr = "peft_zoo.core.version.__version__" }' in pyproject
    assert peft_zoo.__version__ == __version__ == importlib.metadata.version("peft_zoo")


def test_the_package_ships_its_type_information() -> None:
    """PEP 561: ``py.typed`` sits in the package and is listed as package data."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    assert (root / "peft_zoo" / "py.typed").is_file()
    assert 'peft_zoo = ["py.typed"]' in (root / "pyproject.toml").read_text()
