"""Prefix tuning in Hugging Face PEFT's file format, both ways.

A PEFT ``PREFIX_TUNING`` adapter directory holds (PEFT 0.21, ``save_pretrained``)::

    adapter_config.json         peft_type "PREFIX_TUNING", num_virtual_tokens, token_dim (H_kv d_head),
                                num_attention_heads (H_kv), num_layers (L), num_transformer_submodules,
                                encoder_hidden_size, prefix_projection, init_weights, task_type, ...
    adapter_model.safetensors   prompt_embeddings   (n, 2 L H_kv d_head)   P, every layer's keys/values

PEFT stores ``P`` itself (its projection MLP, if any, is dropped), so
:func:`save_prefix_peft` writes ``P`` with ``prefix_projection`` false and :func:`load_prefix_peft`
builds a wrapper without projection. ``modules_to_save`` is not supported here (refused both ways).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.base import AdapterModule
from ..core.checks import short_repr
from ..injection.modules_to_save import ModulesToSave
from ..injection.prefix_model import PrefixTuningConfig, PrefixTuningModel, adapt_prefix_tuning, prefix_shape
from ..injection.surgery import InjectionError
from .peft_config import PeftFormatError, common_fields
from .peft_keys import write_adapter_dir

__all__ = ["PREFIX_KEY", "load_prefix_peft", "save_prefix_peft"]

PREFIX_KEY = "prompt_embeddings"  # PEFT's key for P (n, 2 L D)
_KNOWN = frozenset(
    {
        "auto_mapping",
        "peft_version",
        "base_model_name_or_path",
        "revision",
        "inference_mode",
        "peft_type",
        "task_type",
        "num_virtual_tokens",
        "token_dim",
        "num_attention_heads",
        "num_layers",
        "num_transformer_submodules",
        "modules_to_save",
        "init_weights",
        "encoder_hidden_size",
        "prefix_projection",
    }
)


def save_prefix_peft(
    model: PrefixTuningModel,
    path: str | os.PathLike[str],
    base_model_name_or_path: str | None = None,
    task_type: str | None = None,
) -> Path:
    """Write ``model``'s prefix ``P`` as a PEFT adapter directory that
    ``peft.PeftModel.from_pretrained(base, path)`` loads. Returns the directory."""
    if not isinstance(model, PrefixTuningModel):
        raise TypeError(f"model must be a PrefixTuningModel, got {type(model).__name__}")
    if task_type not in (None, model.task_type):
        raise PeftFormatError(f"save_peft: task_type={task_type!r}; the prefix is {model.task_type}")
    if any(isinstance(m, ModulesToSave) for m in model.base_model.modules()):
        raise PeftFormatError(
            "save_peft: modules_to_save with prefix tuning is not supported. Nothing was written."
        )
    enc = model.prompt
    width = enc.num_heads * enc.head_dim
    config = common_fields("PREFIX_TUNING", model.task_type, base_model_name_or_path)
    config.update(
        num_virtual_tokens=enc.num_virtual_tokens,
        token_dim=width,
        num_attention_heads=enc.num_heads,
        num_layers=enc.num_layers,
        num_transformer_submodules=1,
        modules_to_save=None,
        init_weights=None,
        encoder_hidden_size=width,
        prefix_projection=False,  # the file holds P itself
        inference_mode=True,
        auto_mapping=None,
    )
    out = Path(path)
    write_adapter_dir(out, config, {PREFIX_KEY: enc.prompt()})
    return out


def _problems(
    data: Mapping[str, Any], state: Mapping[str, torch.Tensor], shape: tuple[int, int, int]
) -> list[str]:
    layers, heads, head_dim = shape
    problems = []
    unknown = sorted(set(data) - _KNOWN)
    if unknown:
        problems.append(f"unknown fields {unknown} (a feature peft_zoo does not implement)")
    n = data.get("num_virtual_tokens")
    if type(n) is not int or n <= 0:
        return [*problems, f"num_virtual_tokens must be an int > 0, got {short_repr(n)}"]
    expected = {"num_layers": layers, "num_attention_heads": heads, "token_dim": heads * head_dim}
    for name, value in expected.items():
        if data.get(name) not in (None, value):
            problems.append(f"{name}={short_repr(data.get(name))}, but the model needs {value}")
    if data.get("num_transformer_submodules") not in (None, 1):
        problems.append("num_transformer_submodules must be 1 (encoder-decoder prefixes are not implemented)")
    if data.get("task_type") not in (None, "CAUSAL_LM"):
        problems.append(
            f"task_type={short_repr(data.get('task_type'))}: prefix tuning here is CAUSAL_LM only"
        )
    if data.get("modules_to_save"):
        problems.append("modules_to_save with prefix tuning is not supported")
    extra = sorted(set(state) - {PREFIX_KEY})
    if extra:
        problems.append(f"unexpected tensors {extra[:6]}")
    p = state.get(PREFIX_KEY)
    want = (n, 2 * layers * heads * head_dim)
    if p is None:
        problems.append(f"missing tensor {PREFIX_KEY!r}")
    elif tuple(p.shape) != want:
        problems.append(f"{PREFIX_KEY}: shape {tuple(p.shape)} in file, {want} expected")
    elif not p.is_floating_point() or not bool(torch.isfinite(p).all()):
        problems.append(f"{PREFIX_KEY}: must be finite floating-point values")
    return problems


def load_prefix_peft(
    model: nn.Module, data: Mapping[str, Any], state: Mapping[str, torch.Tensor], where: object = ""
) -> tuple[PrefixTuningModel, list[nn.Parameter]]:
    """Wrap the plain causal LM ``model`` with the PEFT prefix-tuning adapter read from a
    directory; returns ``(wrapper, trainable parameters)``. Raises :class:`PeftFormatError`
    listing every problem, ``model`` unchanged."""
    if any(isinstance(m, AdapterModule) for m in model.modules()):
        raise PeftFormatError(
            f"{where}: the model already has adapters; load_peft adapts the plain base model"
        )
    try:
        shape = prefix_shape(model, PrefixTuningConfig())
    except InjectionError as err:
        raise PeftFormatError(f"{where}: {err}") from None
    problems = _problems(data, state, shape)
    if problems:
        raise PeftFormatError(
            f"{where}: the PEFT prefix-tuning adapter does not fit the model; nothing was loaded:\n  - "
            + "\n  - ".join(problems)
        )
    config = PrefixTuningConfig(
        num_virtual_tokens=int(data["num_virtual_tokens"]), task_type=data.get("task_type")
    )
    try:
        wrapper, params = adapt_prefix_tuning(model, config)
    except InjectionError as err:
        raise PeftFormatError(f"{where}: {err}") from None
    with torch.no_grad():
        wrapper.prompt.embedding.weight.copy_(state[PREFIX_KEY])
    return wrapper, params
