"""Prefix tuning in Hugging Face PEFT's file format, both ways.

A PEFT ``PREFIX_TUNING`` adapter directory holds (PEFT 0.21, ``save_pretrained``)::

    adapter_config.json         peft_type "PREFIX_TUNING", num_virtual_tokens, token_dim (H_kv d_head),
                                num_attention_heads (H_kv), num_layers (L), num_transformer_submodules,
                                encoder_hidden_size, prefix_projection, init_weights, task_type, ...
    adapter_model.safetensors   prompt_embeddings   (n, 2 L H_kv d_head)   P, every layer's keys/values
                                base_model.<module>.<tensor>               a modules_to_save copy
                                                                           (SEQ_CLS: the classifier)

PEFT stores ``P`` itself (its projection MLP, if any, is dropped), so
:func:`save_prefix_peft` writes ``P`` with ``prefix_projection`` false and :func:`load_prefix_peft`
builds a wrapper without projection. ``modules_to_save`` copies are written under their full
module names (PEFT matches names by suffix) and read back into the modules that own each key;
``task_type`` is ``CAUSAL_LM`` or ``SEQ_CLS``.
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
from ..injection.virtual_tokens import PROMPT_TASK_TYPES
from .peft_config import PeftFormatError, common_fields
from .peft_keys import write_adapter_dir

__all__ = ["PREFIX_KEY", "load_prefix_peft", "save_prefix_peft"]

PREFIX_KEY = "prompt_embeddings"  # PEFT's key for P (n, 2 L D)
SAVE_PREFIX = "base_model."  # a prompt-learning PeftModel -> the base model (no ".model.")
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
    saves = {n: m for n, m in model.base_model.named_modules() if isinstance(m, ModulesToSave)}
    enc = model.prompt
    width = enc.num_heads * enc.head_dim
    config = common_fields("PREFIX_TUNING", model.task_type, base_model_name_or_path)
    config.update(
        num_virtual_tokens=enc.num_virtual_tokens,
        token_dim=width,
        num_attention_heads=enc.num_heads,
        num_layers=enc.num_layers,
        num_transformer_submodules=1,
        modules_to_save=list(saves) or None,
        init_weights=None,
        encoder_hidden_size=width,
        prefix_projection=False,  # the file holds P itself
        inference_mode=True,
        auto_mapping=None,
    )
    tensors = {PREFIX_KEY: enc.prompt()}
    for name, module in saves.items():
        tensors.update({f"{SAVE_PREFIX}{name}.{k}": v for k, v in module.trained_module.state_dict().items()})
    out = Path(path)
    write_adapter_dir(out, config, tensors)
    return out


def _float_problem(key: str, t: torch.Tensor, want: tuple[int, ...]) -> str | None:
    if tuple(t.shape) != want:
        return f"{key}: shape {tuple(t.shape)} in file, {want} expected"
    if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
        return f"{key}: must be finite floating-point values"
    return None


def _copy_problem(key: str, t: torch.Tensor, current: torch.Tensor) -> str | None:
    """A weight must be finite floats of the model's shape; an integer buffer (a norm's
    ``num_batches_tracked``) must keep the model's shape and dtype."""
    if current.is_floating_point():
        return _float_problem(key, t, tuple(current.shape))
    if (t.shape, t.dtype) != (current.shape, current.dtype):
        return f"{key}: {t.dtype} {tuple(t.shape)} in file, {current.dtype} {tuple(current.shape)} expected"
    return None


def saved_copies(
    model: nn.Module, data: Mapping[str, Any], state: Mapping[str, torch.Tensor]
) -> tuple[dict[tuple[str, str], torch.Tensor], list[str]]:
    """The ``modules_to_save`` tensors of a PEFT prompt-learning file: ``({(module, tensor path
    inside it): value}, problems)``. A key ``base_model.<module>.<path>`` belongs to the
    shortest module name that ends with a ``modules_to_save`` entry and starts the key."""
    wanted = data.get("modules_to_save") or []
    if not isinstance(wanted, list) or not all(isinstance(w, str) for w in wanted):
        return {}, [f"modules_to_save must be a list of names, got {short_repr(wanted)}"]
    names = [n for n, _ in model.named_modules() if n and any(n.endswith(w) for w in wanted)]
    copies: dict[tuple[str, str], torch.Tensor] = {}
    problems = []
    for key in sorted(set(state) - {PREFIX_KEY}):
        path = key[len(SAVE_PREFIX) :] if key.startswith(SAVE_PREFIX) else ""
        owners = sorted((n for n in names if path.startswith(n + ".")), key=len)
        if not owners:
            problems.append(f"unexpected tensor {key!r} (not the prefix, nor in a modules_to_save module)")
            continue
        owner, inner = owners[0], path[len(owners[0]) + 1 :]
        current = dict(model.get_submodule(owner).state_dict()).get(inner)
        if current is None:
            problems.append(f"{key}: {owner} has no tensor {inner!r}")
            continue
        bad = _copy_problem(key, state[key], current)
        if bad:
            problems.append(bad)
        copies[(owner, inner)] = state[key]
    return copies, problems


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
    if data.get("task_type") not in (None, *PROMPT_TASK_TYPES):
        problems.append(
            f"task_type={short_repr(data.get('task_type'))}: prefix tuning here has {PROMPT_TASK_TYPES}"
        )
    p = state.get(PREFIX_KEY)
    if p is None:
        problems.append(f"missing tensor {PREFIX_KEY!r}")
    else:
        bad = _float_problem(PREFIX_KEY, p, (n, 2 * layers * heads * head_dim))
        problems += [bad] if bad else []
    return problems


def load_prefix_peft(
    model: nn.Module, data: Mapping[str, Any], state: Mapping[str, torch.Tensor], where: object = ""
) -> tuple[PrefixTuningModel, list[nn.Parameter]]:
    """Wrap the plain base ``model`` (a causal LM or a sequence classifier) with the PEFT
    prefix-tuning adapter read from a directory (``data``: its config, ``state``: its tensors,
    ``prompt_embeddings`` ``(n, 2 L D)`` and any ``modules_to_save`` copies); returns ``(wrapper,
    trainable parameters)``. Raises :class:`PeftFormatError` listing every problem, ``model``
    unchanged."""
    if any(isinstance(m, AdapterModule) for m in model.modules()):
        raise PeftFormatError(
            f"{where}: the model already has adapters; load_peft adapts the plain base model"
        )
    try:
        shape = prefix_shape(model, PrefixTuningConfig())
    except InjectionError as err:
        raise PeftFormatError(f"{where}: {err}") from None
    problems = _problems(data, state, shape)
    copies, more = saved_copies(model, data, state)
    problems += more
    if problems:
        raise PeftFormatError(
            f"{where}: the PEFT prefix-tuning adapter does not fit the model; nothing was loaded:\n  - "
            + "\n  - ".join(problems)
        )
    saves = sorted({owner for owner, _ in copies})
    config = PrefixTuningConfig(
        num_virtual_tokens=int(data["num_virtual_tokens"]),
        task_type=data.get("task_type"),
        modules_to_save=saves or None,
    )
    try:
        wrapper, params = adapt_prefix_tuning(model, config)
    except InjectionError as err:
        raise PeftFormatError(f"{where}: {err}") from None
    with torch.no_grad():
        wrapper.prompt.embedding.weight.copy_(state[PREFIX_KEY])
        for (owner, inner), value in copies.items():
            module = model.get_submodule(owner)
            trained = module.trained_module if isinstance(module, ModulesToSave) else module
            trained.state_dict(keep_vars=True)[inner].copy_(value)  # checked above: it exists
    return wrapper, params
