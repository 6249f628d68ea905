"""PiSSA and OLoRA adapters in PEFT's format, both ways.

PiSSA / OLoRA (:mod:`peft_zoo.pissa`) move a part of each base weight into the adapter, so a
trained adapter fits the RESIDUAL base ``W_res = W0 - s B0 A0``, not ``W0``.

Loading a file whose config says ``init_lora_weights: "pissa"`` / ``"pissa_niter_K"`` /
``"olora"``: PEFT 0.21.2's ``from_pretrained`` builds the layers with that initialisation,
which decomposes the base it is given (``W0``) again and leaves the residual in it, then
loads the trained factors over the initial ones. ``load_peft`` does the same
(:class:`~peft_zoo.LoraConfig` ``init_lora_weights``), so the original base model gives the
trained model back. :func:`check_redo_init` refuses, before anything changes, what the
decomposition cannot take, and lists the base weights it rewrites so that a failed load puts
them back. ``"pissa_niter_K"`` is a randomized SVD: its residual, in PEFT too, depends on the
random state (equal outputs up to that approximation, not bit for bit).

Saving: ``save_peft(model, path)`` writes the trained factors; when the layers record their
initialisation (``layer.init_lora_weights``, set by ``LoraConfig``) it goes into the config, as
PEFT writes it, so that PEFT and ``load_peft`` redo it on the original base; without the record
the file is plain LoRA, which fits the residual base the model holds. ``save_peft(model, path,
path_initial_model_for_weight_conversion=init_dir)``, where ``init_dir`` is the adapter saved
right after the initialisation (``save_peft`` or PEFT's ``save_pretrained``), writes what
PEFT's ``save_pretrained`` with that argument writes: each layer as the rank-``2r`` plain LoRA
on the ORIGINAL ``W0`` (:func:`~peft_zoo.pissa.pissa_to_lora`), ``lora_alpha`` doubled
(``sqrt(2)`` times with rsLoRA), which ``PeftModel.from_pretrained(original_base, path)`` loads.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..core.checks import linear_features, weight_of
from ..core.io import read_torch_state_dict
from ..injection.config import LoraConfig
from ..lora import LoRALinear
from ..pissa import SUPPORTED_DTYPES, pissa_to_lora
from .checkpoint import find_weights_file, read_safetensors
from .peft_config import PeftFormatError
from .peft_keys import LEGACY_WEIGHTS_NAME, PEFT_PREFIX
from .peft_match import Expected

__all__ = ["check_redo_init", "convert_pissa_layers"]


def _redo_problems(module: nn.Module, name: str, rank: int, init: str, dora: bool) -> list[str]:
    if dora:
        return [f"{name}: init_lora_weights={init!r} with use_dora is not implemented"]
    if isinstance(module, (nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return [
            f"{name}: init_lora_weights={init!r} is implemented for linear layers, this is a {type(module).__name__}"
        ]
    d_in, d_out, fan_in_fan_out = linear_features(module, name)
    problems = []
    if rank > min(d_in, d_out):
        problems.append(
            f"{name}: rank {rank} > min(in, out) = {min(d_in, d_out)}: nothing to decompose into it"
        )
    if weight_of(module).dtype not in SUPPORTED_DTYPES:
        problems.append(f"{name}: init_lora_weights={init!r} needs a float32/float16/bfloat16 weight")
    if init == "olora" and fan_in_fan_out:
        problems.append(
            f"{name}: OLoRA on a (in, out) weight (GPT-2's Conv1D) is refused, as PEFT 0.21.2 breaks it"
        )
    return problems


def check_redo_init(model: nn.Module, config: LoraConfig, targets: list[str], expected: Expected) -> None:
    """For a PiSSA / OLoRA config: refuse (:class:`PeftFormatError`, nothing changed) a target
    the decomposition cannot take, and add each target's base weight to ``expected.base_paths``
    (snapshotted before the load, put back if it fails). Other configs: nothing."""
    init = config.init_lora_weights
    if not isinstance(init, str) or init == "gaussian":
        return
    problems = []
    for name in targets:
        problems += _redo_problems(
            model.get_submodule(name), name, expected.ranks[name], init, config.use_dora
        )
        expected.base_paths[f"{name}.base.weight"] = f"{name}.weight"
    if init.startswith("pissa_niter_") and not problems:
        warnings.warn(
            f"load_peft: init_lora_weights={init!r} is a randomized SVD: the residual base it leaves "
            "differs a little from the one the adapter was trained on (in PEFT too); 'pissa' is exact",
            stacklevel=4,
        )
    if problems:
        raise PeftFormatError(
            f"init_lora_weights={init!r}: the load redoes the decomposition on this model's weights, "
            "and it cannot here:\n  - " + "\n  - ".join(problems)
        )


def _initial_state(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of the adapter directory saved right after the initialisation."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path_initial_model_for_weight_conversion must be a path, got {type(path).__name__}")
    file = find_weights_file(Path(path), (LEGACY_WEIGHTS_NAME,)) if Path(path).is_dir() else None
    if file is None:
        raise PeftFormatError(f"save_peft: {path}: no adapter directory with the initial weights")
    if file.name == LEGACY_WEIGHTS_NAME:
        return read_torch_state_dict(file, PeftFormatError)
    return read_safetensors(file, PeftFormatError)[0]


def _initial_pair(
    state: Mapping[str, torch.Tensor], name: str, layer: LoRALinear
) -> tuple[torch.Tensor, torch.Tensor]:
    keys = [f"{PEFT_PREFIX}{name}.lora_A.weight", f"{PEFT_PREFIX}{name}.lora_B.weight"]
    missing = [k for k in keys if k not in state]
    if missing:
        raise PeftFormatError(f"save_peft: the initial adapter lacks {missing} (saved from another model?)")
    a0, b0 = (state[k] for k in keys)
    if tuple(a0.shape) != tuple(layer.lora_A.shape) or tuple(b0.shape) != tuple(layer.lora_B.shape):
        raise PeftFormatError(
            f"save_peft: the initial adapter's {name} factors are {tuple(a0.shape)}, {tuple(b0.shape)}; "
            f"the layer's are {tuple(layer.lora_A.shape)}, {tuple(layer.lora_B.shape)}"
        )
    return a0.to(layer.lora_A.dtype), b0.to(layer.lora_B.dtype)


def convert_pissa_layers(
    layers: Mapping[str, nn.Module], initial: str | os.PathLike[str]
) -> dict[str, LoRALinear]:
    """Each trained PiSSA / OLoRA layer as the rank-``2r`` plain LoRA on the original weights,
    from the initial factors saved in ``initial``. New layers sharing each layer's base (whose
    flags are left as they were); the model is not changed. Raises :class:`PeftFormatError`."""
    state = _initial_state(initial)
    wrong = [n for n, m in layers.items() if type(m) is not LoRALinear]
    if wrong:
        raise PeftFormatError(
            f"save_peft: only plain LoRALinear layers convert from PiSSA / OLoRA; {wrong[:4]} are not"
        )
    pairs = {n: _initial_pair(state, n, m) for n, m in layers.items() if isinstance(m, LoRALinear)}
    out: dict[str, LoRALinear] = {}
    for name, layer in layers.items():
        assert isinstance(layer, LoRALinear)
        flags = [(p, p.requires_grad) for p in layer.base.parameters()]
        try:
            out[name] = pissa_to_lora(layer, *pairs[name], original_base=layer.base)
        except (TypeError, ValueError, RuntimeError) as err:
            raise PeftFormatError(f"save_peft: {name}: {err}") from None
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
    return out
