"""Prompt tuning in Hugging Face PEFT's file format, both ways.

A PEFT ``PROMPT_TUNING`` adapter directory holds (PEFT 0.21, ``save_pretrained``)::

    adapter_config.json         peft_type "PROMPT_TUNING", num_virtual_tokens, token_dim,
                                num_transformer_submodules, num_attention_heads, num_layers,
                                prompt_tuning_init, prompt_tuning_init_text, tokenizer_name_or_path,
                                tokenizer_kwargs, task_type, modules_to_save, ...
    adapter_model.safetensors   prompt_embeddings                (n, d)  the virtual tokens
                                base_model.<module>.<tensor>             a modules_to_save copy
                                                                         (SEQ_CLS: the classifier)

:func:`save_prompt_peft` writes a :class:`~peft_zoo.injection.prompt_model.PromptTuningModel`
so; :func:`load_prompt_peft` checks a read config and state dict against a plain base model
(every field, key, shape and value) before it builds the wrapper. ``save_peft`` /
``load_peft`` dispatch here.
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
from ..injection.prompt_model import (
    PROMPT_INITS,
    PromptTuningConfig,
    PromptTuningModel,
    adapt_prompt_tuning,
    input_embeddings,
)
from ..injection.surgery import InjectionError
from ..injection.virtual_tokens import PROMPT_TASK_TYPES
from ..prompt import PromptEmbedding
from ..ptuning import PromptEncoder
from .peft_config import PeftFormatError, common_fields
from .peft_keys import write_adapter_dir

__all__ = ["PROMPT_KEY", "PROMPT_PEFT_TYPES", "load_prompt_peft", "save_prompt_peft"]

PROMPT_PEFT_TYPES = ("PROMPT_TUNING", "P_TUNING")  # the peft_types this module reads

PROMPT_KEY = "prompt_embeddings"  # PEFT's key for the (n, d) virtual token embeddings
_SAVE_PREFIX = "base_model."  # a prompt-learning PeftModel -> the base model (no ".model.")

_PROMPT_FIELDS = ("prompt_tuning_init", "prompt_tuning_init_text", "tokenizer_name_or_path")
_P_TUNING_FIELDS = (
    "encoder_reparameterization_type",
    "encoder_hidden_size",
    "encoder_num_layers",
    "encoder_dropout",
)
# Fields that change nothing once the tensors are loaded, or that only initialise.
_IGNORED = frozenset(
    {
        "auto_mapping",
        "peft_version",
        "base_model_name_or_path",
        "revision",
        "inference_mode",
        "num_attention_heads",
        "num_layers",
        "prompt_tuning_init",
        "prompt_tuning_init_text",
        "tokenizer_name_or_path",
        "tokenizer_kwargs",
        *_P_TUNING_FIELDS,  # P-tuning: they describe the encoder, which the file does not hold
    }
)
_USED = frozenset(
    {
        "peft_type",
        "task_type",
        "num_virtual_tokens",
        "token_dim",
        "num_transformer_submodules",
        "modules_to_save",
    }
)


def _model_config_value(model: nn.Module, *names: str) -> int | None:
    config = getattr(model, "config", None)
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def save_prompt_peft(
    model: PromptTuningModel,
    path: str | os.PathLike[str],
    base_model_name_or_path: str | None = None,
    task_type: str | None = None,
) -> Path:
    """Write ``model``'s prompt (and ``modules_to_save`` copies) as a PEFT adapter directory
    that ``peft.PeftModel.from_pretrained(base, path)`` loads. ``task_type`` defaults to the
    wrapper's; another one is refused (the forward pass differs). Returns the directory."""
    if not isinstance(model, PromptTuningModel):
        raise TypeError(f"model must be a PromptTuningModel, got {type(model).__name__}")
    if task_type is not None and task_type != model.task_type:
        raise PeftFormatError(
            f"save_peft: task_type={task_type!r}, but the prompt was trained as {model.task_type}; "
            "PEFT's forward differs between them. Nothing was written."
        )
    cfg, base, prompt = model.prompt_config, model.base_model, model.prompt
    saves = {n: m for n, m in base.named_modules() if isinstance(m, ModulesToSave)}
    encoder = isinstance(prompt, PromptEncoder)
    config = common_fields(
        "P_TUNING" if encoder else "PROMPT_TUNING", model.task_type, base_model_name_or_path
    )
    config.update(
        num_virtual_tokens=model.num_virtual_tokens,
        token_dim=prompt.token_dim,
        num_transformer_submodules=1,
        num_attention_heads=getattr(cfg, "num_attention_heads", None)
        or _model_config_value(base, "num_attention_heads", "n_head"),
        num_layers=getattr(cfg, "num_layers", None)
        or _model_config_value(base, "num_hidden_layers", "n_layer"),
        modules_to_save=list(saves) or None,
        inference_mode=True,
        auto_mapping=None,
    )
    config.update({k: getattr(cfg, k, None) for k in (_P_TUNING_FIELDS if encoder else _PROMPT_FIELDS)})
    if not encoder:
        config["tokenizer_kwargs"] = None
    # P-tuning: PEFT stores P = f(E) and drops the encoder, so a loaded adapter is a plain prompt.
    tensors = {PROMPT_KEY: prompt.prompt() if isinstance(prompt, PromptEncoder) else prompt.weight}
    for name, module in saves.items():
        tensors.update(
            {f"{_SAVE_PREFIX}{name}.{k}": v for k, v in module.trained_module.state_dict().items()}
        )
    out = Path(path)
    write_adapter_dir(out, config, tensors)
    return out


def _config_problems(data: Mapping[str, Any], width: int) -> list[str]:
    problems = []
    unknown = sorted(set(data) - _IGNORED - _USED)
    if unknown:
        problems.append(f"unknown fields {unknown} (a feature peft_zoo does not implement)")
    n = data.get("num_virtual_tokens")
    if type(n) is not int or n <= 0:
        problems.append(f"num_virtual_tokens must be an int > 0, got {short_repr(n)}")
    d = data.get("token_dim")
    if d is not None and d != width:
        problems.append(f"token_dim={short_repr(d)}, but the model's embeddings are {width} wide")
    if data.get("num_transformer_submodules") not in (None, 1):
        problems.append(
            f"num_transformer_submodules={short_repr(data.get('num_transformer_submodules'))}: only 1 "
            "is implemented (encoder-decoder prompt tuning is not)"
        )
    task = data.get("task_type")
    if task is not None and task not in PROMPT_TASK_TYPES:
        problems.append(f"task_type={short_repr(task)}: peft_zoo's prompt tuning has {PROMPT_TASK_TYPES}")
    init = data.get("prompt_tuning_init")
    if init is not None and init not in PROMPT_INITS:
        problems.append(f"prompt_tuning_init={short_repr(init)}: PEFT knows {PROMPT_INITS}")
    return problems


def _tensor_problems(key: str, t: torch.Tensor, shape: tuple[int, ...]) -> list[str]:
    if tuple(t.shape) != shape:
        return [f"{key}: shape {tuple(t.shape)} in file, {shape} expected"]
    if not t.is_floating_point():
        return [f"{key}: dtype {t.dtype}, expected a floating-point tensor"]
    if not bool(torch.isfinite(t).all()):
        return [f"{key}: contains NaN or inf"]
    return []


def _save_targets(model: nn.Module, data: Mapping[str, Any], keys: list[str]) -> dict[str, tuple[str, str]]:
    """``{file key: (module to save, tensor path inside it)}`` for each
    ``base_model.<module>.<tensor>`` key, or raise naming the keys that fit nothing."""
    wanted = data.get("modules_to_save") or []
    if not isinstance(wanted, list) or not all(isinstance(w, str) for w in wanted):
        raise PeftFormatError(f"modules_to_save must be a list of names, got {short_repr(wanted)}")
    names = [n for n, _ in model.named_modules() if n and any(n.endswith(w) for w in wanted)]
    targets: dict[str, tuple[str, str]] = {}
    bad = []
    for key in keys:
        path = key[len(_SAVE_PREFIX) :] if key.startswith(_SAVE_PREFIX) else ""
        owners = sorted((n for n in names if path.startswith(n + ".")), key=len)
        if owners:
            targets[key] = (owners[0], path[len(owners[0]) + 1 :])
        else:
            bad.append(key)
    if bad:
        raise PeftFormatError(f"unexpected tensors {bad[:6]} (not the prompt, nor a modules_to_save module)")
    return targets


def _tensor_in(module: nn.Module, path: str) -> torch.Tensor | None:
    owner, _, attr = path.rpartition(".")
    try:
        value = getattr(module.get_submodule(owner), attr, None)
    except AttributeError:
        return None
    return value if isinstance(value, torch.Tensor) else None


def load_prompt_peft(
    model: nn.Module, data: Mapping[str, Any], state: Mapping[str, torch.Tensor], where: object = ""
) -> tuple[PromptTuningModel, list[nn.Parameter]]:
    """Wrap the plain base ``model`` with the PEFT prompt-tuning adapter read from a directory
    (``data``: its config, ``state``: its tensors); returns ``(wrapper, trainable parameters)``.
    Raises :class:`PeftFormatError` listing every problem, ``model`` unchanged."""
    if any(isinstance(m, AdapterModule) for m in model.modules()):
        raise PeftFormatError(
            f"{where}: the model already has adapters; load_peft adapts the plain base model"
        )
    try:
        emb = input_embeddings(model)
    except InjectionError as err:
        raise PeftFormatError(f"{where}: {err}") from None
    problems = _config_problems(data, emb.embedding_dim)
    if problems:
        raise PeftFormatError(f"{where}: invalid prompt-tuning config:\n  - " + "\n  - ".join(problems))
    n = int(data["num_virtual_tokens"])
    prompt = state.get(PROMPT_KEY)
    if prompt is None:
        problems.append(f"missing tensor {PROMPT_KEY!r}")
    else:
        problems += _tensor_problems(PROMPT_KEY, prompt, (n, emb.embedding_dim))
    copies: dict[tuple[str, str], torch.Tensor] = {}
    try:
        targets = _save_targets(model, data, [k for k in state if k != PROMPT_KEY])
    except PeftFormatError as err:
        problems.append(str(err))
        targets = {}
    for key, (owner, inner) in targets.items():
        current = _tensor_in(model.get_submodule(owner), inner)
        if current is None:
            problems.append(f"{key}: {owner}.{inner} is not a tensor of the model")
            continue
        problems += _tensor_problems(key, state[key], tuple(current.shape))
        copies[(owner, inner)] = state[key]
    if problems:
        raise PeftFormatError(
            f"{where}: the PEFT adapter does not fit the model; nothing was loaded:\n  - "
            + "\n  - ".join(problems)
        )
    saves = sorted({owner for owner, _ in copies})
    task = data.get("task_type")
    config = PromptTuningConfig(num_virtual_tokens=n, task_type=task, modules_to_save=saves or None)
    try:
        wrapper, params = adapt_prompt_tuning(model, config)
    except InjectionError as err:
        raise PeftFormatError(f"{where}: {err}") from None
    with torch.no_grad():
        if prompt is not None and isinstance(wrapper.prompt, PromptEmbedding):  # always: built above
            wrapper.prompt.weight.copy_(prompt)
        for (owner, inner), value in copies.items():
            module = model.get_submodule(owner)
            trained = module.trained_module if isinstance(module, ModulesToSave) else module
            tensor = _tensor_in(trained, inner)
            if tensor is not None:  # always: the copy has the original's tensors
                tensor.copy_(value)
    return wrapper, params
