"""A Hugging Face PEFT adapter directory -> peft_zoo layers (the format: :mod:`.peft_keys`).

    peft_model.save_pretrained("out/")            # a PEFT adapter ...
    model, params = load_peft(base, "out/")       # ... -> peft_zoo layers on the plain base model

:func:`read_peft` reads the two files without touching a model: ``adapter_config.json`` with
bounds on size and nesting and every field's type and range checked, the tensors with
safetensors (or ``torch.load(weights_only=True)`` for a legacy ``adapter_model.bin``).

:func:`load_peft` validates everything before the model is touched (every config field
against an explicit list; every key, shape and value; that each named module exists; regexes
matched with a time bound: :mod:`.peft_match`), raising :class:`PeftFormatError` listing all
the problems, and the model is then exactly as it was. Only then does it adapt the model,
and a failure halfway puts every module, flag and value back.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.base import AdapterModule
from ..core.io import read_torch_state_dict
from ..core.regex import PatternError, time_budget
from ..injection.adapt import adapt_model
from ..injection.config import IA3Config, LoraConfig, ModulesToSave
from ..injection.surgery import mark_only_adapters_trainable, parent_of
from ..injection.targets import MATCH_BUDGET
from .checkpoint import CONFIG_NAME, WEIGHTS_NAME, find_weights_file, read_safetensors
from .peft_checks import field_problems
from .peft_config import PeftFormatError, config_from_peft, read_config_file
from .peft_keys import LEGACY_WEIGHTS_NAME, PEFT_PREFIX, exact_pattern
from .peft_match import Expected, SavedNames, expected_tensors, regex_of, resolve_names, select_modules
from .peft_method_load import plan_method
from .peft_methods import METHODS, method_config_from_peft
from .peft_pissa import check_redo_init
from .peft_prefix import load_prefix_peft
from .peft_prompt import PROMPT_PEFT_TYPES, load_prompt_peft

__all__ = ["load_peft", "read_peft", "tensor_at"]


def read_peft(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a PEFT adapter directory into ``(config dict, state dict)`` without touching any
    model and without unpickling (safetensors, or ``torch.load(weights_only=True)`` for a
    legacy ``adapter_model.bin``). Raises :class:`PeftFormatError` for a missing, truncated
    or corrupt file, a config that is not a bounded JSON object, or a config field of the
    wrong type or range (``"use_rslora": "no"``). Whether peft_zoo supports every feature
    the config uses is checked by :func:`load_peft` / :func:`config_from_peft`."""
    path = Path(path)
    if path.is_file() and path.name in (CONFIG_NAME, WEIGHTS_NAME, LEGACY_WEIGHTS_NAME):
        path = path.parent
    if not path.is_dir():
        raise PeftFormatError(f"{path}: no such adapter directory")
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        nested = sorted(p.parent.name for p in path.glob(f"*/{CONFIG_NAME}"))
        hint = f"; PEFT saves named adapters in subfolders: {nested}" if nested else ""
        raise PeftFormatError(f"{path}: no {CONFIG_NAME} in this directory{hint}")
    config = read_config_file(config_file)
    problems = field_problems(config)  # each known field's type and range (support: load_peft)
    if problems:
        raise PeftFormatError(f"{config_file}: invalid PEFT config:\n  - " + "\n  - ".join(problems))
    file = find_weights_file(path, (LEGACY_WEIGHTS_NAME,))
    if file is None:
        raise PeftFormatError(
            f"{path}: no {WEIGHTS_NAME} (or legacy {LEGACY_WEIGHTS_NAME}) in this directory"
        )
    if file.name == WEIGHTS_NAME:
        state, _ = read_safetensors(file, PeftFormatError)
    else:
        state = read_torch_state_dict(file, PeftFormatError)
    return config, state


@dataclass
class _Plan:
    """Everything :func:`load_peft` will do, worked out before it does any of it."""

    config: Any  # for adapt_model (a LayerMethodConfig): exactly the targets, in this model's names
    targets: list[str]
    saves: list[str]
    bias: str
    copies: dict[str, torch.Tensor]  # adapted-model tensor path -> value
    base_paths: dict[str, str]


_UNEXPECTED_HINTS = {
    "lora_magnitude_vector": "DoRA magnitudes, but the config has use_dora off",
    "lora_A.bias": "lora_bias",
    "lora_B.bias": "lora_bias",
    "lora_": "a LoRA layer the config does not target",
    "ia3_l": "an IA3 layer the config does not target",
}


def _compare(
    expected: Expected, saved: Mapping[str, torch.Tensor], names: SavedNames
) -> dict[str, torch.Tensor]:
    """The copies to make (adapted-model path -> value), or raise listing every mismatch."""
    problems = []
    missing = [k for k in expected.tensors if k not in saved]
    unexpected = [k for k in saved if k not in expected.tensors and k not in expected.ignorable]
    if missing:
        dora = any(k.endswith(".lora_magnitude_vector") for k in missing)
        problems.append(
            f"missing tensors {missing[:6]}{' ...' if len(missing) > 6 else ''}"
            + (" (use_dora is on: DoRA needs a lora_magnitude_vector for every layer)" if dora else "")
        )
    if unexpected:
        why = sorted({h for k in unexpected for pat, h in _UNEXPECTED_HINTS.items() if pat in k})
        problems.append(
            f"unexpected tensors {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}"
            + (f" ({'; '.join(why)})" if why else "")
        )
    copies: dict[str, torch.Tensor] = {}
    for key, (shape, dest) in expected.tensors.items():
        t = saved.get(key)
        if t is None:
            continue
        if tuple(t.shape) != shape:
            hint = ""
            if tuple(t.shape) == expected.other_form.get(key):
                hint = " (feed-forward (1, in) vs output (out, 1) scaling: does feedforward_modules match?)"
            problems.append(f"{PEFT_PREFIX}{key}: shape {tuple(t.shape)} in file, {shape} expected{hint}")
        elif not t.is_floating_point():
            problems.append(f"{PEFT_PREFIX}{key}: dtype {t.dtype}, expected a floating-point tensor")
        elif not bool(torch.isfinite(t).all()):
            problems.append(f"{PEFT_PREFIX}{key}: contains NaN or inf")
        else:
            copies[dest] = t.reshape(-1) if key.endswith(".ia3_l") else t  # IA3: (out, 1) -> (out,)
            if key in expected.reshape:  # AdaLoRA: the kept triplets back at their places
                copies[dest] = expected.reshape[key](t)
    if problems:
        note = names.describe()
        raise PeftFormatError(
            "the PEFT adapter does not fit the model; nothing was loaded"
            + (f" {note}" if note else "")
            + ":\n  - "
            + "\n  - ".join(problems)
        )
    return copies


def _adapt_config(
    config: LoraConfig | IA3Config, expected: Expected, targets: list[str]
) -> LoraConfig | IA3Config:
    """The peft_zoo config that builds exactly these layers: exact names, ranks and alphas."""
    if isinstance(config, IA3Config):
        ff = expected.feedforward
        return IA3Config(target_modules=regex_of(targets), feedforward_modules=regex_of(ff) if ff else None)
    r = config.rank
    alpha = float(r if config.alpha is None else config.alpha)  # lora_config_from_peft always sets it
    return LoraConfig(
        target_modules=regex_of(targets),
        rank=r,
        alpha=alpha,
        dropout=config.dropout,
        rslora=config.rslora,
        bias=config.bias,
        rank_pattern={exact_pattern(n): v for n, v in expected.ranks.items() if v != r},
        alpha_pattern={exact_pattern(n): v for n, v in expected.alphas.items() if v != alpha},
        use_dora=config.use_dora,
        init_lora_weights=config.init_lora_weights,
    )


def _plan(model: nn.Module, data: dict[str, Any], state: dict[str, torch.Tensor]) -> _Plan:
    """Check everything against ``model`` without changing it; raise listing every problem."""
    adapted = [n for n, m in model.named_modules() if isinstance(m, AdapterModule)]
    if adapted:
        raise PeftFormatError(
            f"the model already has adapter layers {adapted[:4]}; load_peft adapts the plain base model "
            "(to add this adapter by name beside them: peft_zoo.load_peft_adapter(model, path, name))"
        )
    if data.get("peft_type") in METHODS:  # LoHa, LoKr, VeRA, OFT, BOFT, AdaLoRA: .peft_method_load
        method = plan_method(model, data, state)
        copies = _compare(method.expected, method.saved, method.names)
        bias = getattr(method.config, "bias", "none")
        return _Plan(method.config, method.targets, method.saves, bias, copies, method.expected.base_paths)
    config = config_from_peft(data)
    outside = sorted(k for k in state if not k.startswith(PEFT_PREFIX))
    if outside:
        raise PeftFormatError(f"tensor names {outside[:4]} lack PEFT's prefix {PEFT_PREFIX!r}")
    saved = {k[len(PEFT_PREFIX) :]: v for k, v in state.items()}
    names = resolve_names(model, config, saved)
    with time_budget(MATCH_BUDGET):  # every regex from the file is matched here, time-bounded
        targets, saves = select_modules(model, config, data.get("task_type"), saved, names)
        expected = expected_tensors(model, config, names, targets, saves, saved)
    copies = _compare(expected, saved, names)
    adapt = _adapt_config(config, expected, targets)
    if isinstance(adapt, LoraConfig):  # PiSSA / OLoRA: checked here, the base snapshotted for a rollback
        check_redo_init(model, adapt, targets, expected)
    if adapt.find(model) != targets:  # cannot happen: exact names; checked so it never mutates on it
        raise PeftFormatError(f"internal: the translated config does not select exactly {targets[:4]}...")
    bias = getattr(config, "bias", "none")
    return _Plan(adapt, targets, saves, bias, copies, expected.base_paths)


def tensor_at(model: nn.Module, path: str) -> torch.Tensor:
    """The tensor (parameter or buffer) at dotted ``path`` in ``model``: what :func:`load_peft`
    reads and writes in place, the one place a test can make a load fail halfway."""
    owner, attr = parent_of(model, path)
    tensor = getattr(owner, attr)
    if not isinstance(tensor, torch.Tensor):
        raise AttributeError(f"{path} is not a tensor")
    return tensor


def _apply(model: nn.Module, plan: _Plan) -> list[nn.Parameter]:
    """Adapt, wrap, copy; on any failure put every module, flag and value back."""
    originals = {n: model.get_submodule(n) for n in (*plan.targets, *plan.saves)}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    # Tensors of the base model that the copy overwrites in place (trained biases).
    before = {old: tensor_at(model, old).detach().clone() for old in plan.base_paths.values()}
    try:
        adapt_model(model, plan.config)
        for name in plan.saves:
            parent, attr = parent_of(model, name)
            setattr(parent, attr, ModulesToSave(originals[name]))
        params = mark_only_adapters_trainable(model, bias=plan.config.bias_mode())
        with torch.no_grad():
            for path, value in plan.copies.items():
                tensor_at(model, path).copy_(value)
    except BaseException:
        for name, module in originals.items():
            parent, attr = parent_of(model, name)
            setattr(parent, attr, module)
        for p, flag in flags:
            p.requires_grad_(flag)
        with torch.no_grad():
            for path, value in before.items():
                tensor_at(model, path).copy_(value)
        raise
    return params


def load_peft(model: nn.Module, path: str | os.PathLike[str]) -> tuple[nn.Module, list[nn.Parameter]]:
    """Adapt the plain base ``model`` as the PEFT adapter in directory ``path`` says (saved by
    ``peft_model.save_pretrained(path)`` or :func:`save_peft`) and load its tensors.

    The layers are peft_zoo's (LoRA on linear, embedding and convolution layers, DoRA with
    ``use_dora``, IA³, LoHa, LoKr, VeRA, OFT, AdaLoRA; ``ModulesToSave`` for the
    ``modules_to_save`` modules), built by :func:`~peft_zoo.adapt_model` with a config
    translated from ``adapter_config.json`` and matched by PEFT's own rules on the names as
    saved (the layer methods: :mod:`.peft_method_load`). A PiSSA / OLoRA adapter redoes its
    decomposition on the given base, as PEFT does (:mod:`.peft_pissa`): give it the ORIGINAL base. A checkpoint saved on the task model (``bert.encoder...``) loads into the bare
    base model and the other way round (the model's ``base_model_prefix``). Tensors are
    cast to the dtype of the layer they go into. Returns ``(model, trainable parameters)``.

    Raises :class:`PeftFormatError` and leaves the model exactly as it was for: a missing or
    corrupt file, an unknown config field or an unsupported feature (``lora_bias``,
    ``target_parameters``, layer replication...), missing or unexpected tensors, a shape
    mismatch, non-finite values, names of modules this model does not have.
    """
    data, state = read_peft(path)
    if data.get("peft_type") in PROMPT_PEFT_TYPES:  # a wrapper, not layers: .peft_prompt
        return load_prompt_peft(model, data, state, path)
    if data.get("peft_type") == "PREFIX_TUNING":  # a wrapper with a key/value prefix: .peft_prefix
        return load_prefix_peft(model, data, state, path)
    config_file = (Path(path).parent if Path(path).is_file() else Path(path)) / CONFIG_NAME
    translate = method_config_from_peft if data.get("peft_type") in METHODS else config_from_peft
    try:
        translate(data)  # what the config asks for, checked before the model is looked at
    except PeftFormatError as err:
        raise PeftFormatError(f"{config_file}: {err}") from None
    try:
        plan = _plan(model, data, state)
    except PeftFormatError as err:
        raise PeftFormatError(f"{path}: {err}") from None
    except PatternError as err:  # a regex of the config is too slow on this model's names
        raise PeftFormatError(f"{config_file}: {err}") from None
    return model, _apply(model, plan)
