"""Which modules of a model a saved PEFT adapter means, by PEFT's own rules.

A PEFT adapter names modules as they were called in the model it was saved from, behind
``base_model.model.``. :func:`resolve_names` maps those names onto the model being loaded
(also across a task model's ``base_model_prefix``: ``bert.encoder...`` <-> ``encoder...``);
:func:`select_modules` applies PEFT's matching rules to the *saved* names (``target_modules``
as a list of dotted suffixes or a regex, ``all-linear``, ``modules_to_save`` as plain string
suffixes, the modules a task wrapper adds); :func:`expected_tensors` lists every tensor those
modules need, with its shape and where it goes. :mod:`.peft_read` checks the file against that
list before anything changes.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.checks import is_conv1d, linear_features
from ..core.regex import fullmatch, match
from ..injection.config import IA3Config, LoraConfig
from ..injection.config_base import TargetingConfig
from ..injection.targets import TargetSpec, output_head_names, target_matches
from .peft_config import PeftFormatError

__all__ = [
    "Expected",
    "SavedNames",
    "expected_bias",
    "expected_saves",
    "expected_tensors",
    "regex_of",
    "resolve_names",
    "select_modules",
]

# PEFT's task wrappers add these to modules_to_save (PeftModelForSequenceClassification...).
_TASK_SAVES = {
    "SEQ_CLS": ("classifier", "score"),
    "TOKEN_CLS": ("classifier", "score"),
    "QUESTION_ANS": ("qa_outputs",),
}
# PEFT's bias="all" also saves the biases inside its modules_to_save wrappers (both copies).
_WRAPPED_BIAS = re.compile(r"(.*)\.(original_module|modules_to_save)\..*bias")


@dataclass
class SavedNames:
    """Module names as saved (the PEFT model's base) <-> names in the model being loaded.

    A checkpoint saved on ``BertForSequenceClassification`` names ``bert.encoder...``; the
    same adapter loaded into a bare ``BertModel`` must drop the ``bert.`` (the model's
    ``base_model_prefix``), and the other way round.
    """

    strip: str = ""  # removed from a saved name ...
    add: str = ""  # ... and this put in front

    def to_model(self, saved: str) -> str | None:
        if not saved.startswith(self.strip):
            return None
        return self.add + saved[len(self.strip) :]

    def to_saved(self, name: str) -> str | None:
        if not name.startswith(self.add):
            return None
        return self.strip + name[len(self.add) :]

    def saved_name(self, name: str) -> str:
        """The saved name of a module that was selected by its saved name (so it has one)."""
        saved = self.to_saved(name)
        if saved is None:  # cannot happen: selection skips the modules without a saved name
            raise PeftFormatError(f"internal: module {name!r} has no name in the checkpoint")
        return saved

    def describe(self) -> str:
        if self.strip:
            return f"(saved names start with {self.strip!r}, which this model lacks: dropped)"
        return f"(saved names lack this model's prefix {self.add!r}: added)" if self.add else ""


def _name_mapping(model: nn.Module, saved_modules: set[str]) -> SavedNames | None:
    modules = {n for n, _ in model.named_modules()}
    prefix = getattr(model, "base_model_prefix", "")
    candidates = [SavedNames()]
    if isinstance(prefix, str) and prefix:
        candidates += [SavedNames(strip=prefix + "."), SavedNames(add=prefix + ".")]
    for names in candidates:
        if all(names.to_model(s) in modules for s in saved_modules):
            return names
    return None


def regex_of(names: Sequence[str]) -> str:
    """A target regex (full match) selecting exactly ``names``."""
    return "(?:" + "|".join(re.escape(n) for n in names) + ")"


def _unknown_modules_message(model: nn.Module, missing: list[str]) -> str:
    names = [n for n, _ in model.named_modules() if n]
    first = missing[0]
    close = difflib.get_close_matches(first, names, n=3, cutoff=0.5)
    hint = f"; closest names here: {close}" if close else ""
    return (
        f"the checkpoint names {len(missing)} modules that this model does not have, e.g. "
        f"{missing[:4]} (saved for another architecture?{hint})"
    )


def _peft_ff(spec: TargetSpec | None, saved_name: str) -> bool:
    """PEFT's ``IA3Model._check_target_module_feedforward``: regex fullmatch, or a plain
    string suffix for a list."""
    if not spec:
        return False
    if isinstance(spec, str):
        return fullmatch(spec, saved_name, "feedforward_modules") is not None
    return any(saved_name.endswith(f) for f in spec)


def _selected_targets(
    model: nn.Module, config: TargetingConfig, names: SavedNames, saves: list[str]
) -> list[str]:
    """The Linear/Conv1D modules (and the config's ``extra_target_types``: LoRA's embeddings and
    convolutions, never with "all-linear") PEFT's rules select for ``config``, judged on the
    names as saved; never a modules_to_save module or one inside it (PEFT's guard)."""
    spec = config.target_modules
    if spec is None:  # refused by config_from_peft already; selects nothing
        return []
    heads = output_head_names(model) if isinstance(spec, str) and spec.lower() == "all-linear" else None
    extra = () if heads is not None else tuple(getattr(config, "extra_target_types", ()))
    guard = list(config.modules_to_save or [])
    chosen = []
    for name, module in model.named_modules():
        saved = names.to_saved(name)
        kind_ok = isinstance(module, (nn.Linear, *extra)) or is_conv1d(module)
        if not name or saved is None or not kind_ok:
            continue
        if any(name == s or name.startswith(s + ".") for s in saves):
            continue
        if any(match(rf"(^|.*\.){m}($|\..*)", saved, "modules_to_save") for m in guard):
            continue
        if heads is not None:
            hit = not any(name == h or name.startswith(h + ".") for h in heads) and target_matches(
                saved, ".*", exclude_modules=config.exclude_modules
            )
        else:
            hit = target_matches(
                saved,
                spec,
                exclude_modules=config.exclude_modules,
                layers_to_transform=config.layers_to_transform,
                layers_pattern=config.layers_pattern,
            )
        if hit:
            chosen.append(name)
    return chosen


def _selected_saves(model: nn.Module, wanted: Sequence[str], names: SavedNames) -> list[str]:
    """PEFT's modules_to_save rule (a plain string suffix of the saved name), outermost only.
    An entry that matches nothing is allowed, as in PEFT (its classifier wrappers add
    ``"classifier"`` and ``"score"`` to every config)."""
    chosen: list[str] = []
    for name, _ in model.named_modules():
        saved = names.to_saved(name)
        if not name or saved is None or any(name.startswith(c + ".") for c in chosen):
            continue
        if any(saved.endswith(w) for w in wanted):
            chosen.append(name)
    return chosen


@dataclass
class Expected:
    """The tensors the selected modules need: saved key -> (shape, path in the adapted model)."""

    tensors: dict[str, tuple[tuple[int, ...], str]] = field(default_factory=dict)
    other_form: dict[str, tuple[int, int]] = field(default_factory=dict)  # IA3 key -> the other form's shape
    ignorable: set[str] = field(default_factory=set)  # keys PEFT writes that carry nothing new
    ranks: dict[str, int] = field(default_factory=dict)  # LoRA: module -> rank
    alphas: dict[str, float] = field(default_factory=dict)  # LoRA: module -> alpha
    feedforward: list[str] = field(default_factory=list)  # IA3: feed-forward modules
    # saved key -> how its value becomes the adapted model's tensor (AdaLoRA: pruned triplets back in)
    reshape: dict[str, Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=dict)
    base_paths: dict[str, str] = field(
        default_factory=dict
    )  # base-model tensors overwritten: new -> old path


_LORA_SUFFIXES = (
    ".lora_A.weight",
    ".lora_B.weight",
    ".lora_magnitude_vector",
    ".lora_embedding_A",
    ".lora_embedding_B",
    ".base_layer.weight",  # PEFT saves a targeted embedding's own table too
)


def resolve_names(
    model: nn.Module, config: object, saved: Mapping[str, Any], suffixes: Sequence[str] | None = None
) -> SavedNames:
    """Map the saved module names onto this model's, or raise naming what does not exist.
    ``suffixes``: the method's tensor names after the module's (default: LoRA's or IA3's)."""
    if suffixes is None:
        suffixes = _LORA_SUFFIXES if isinstance(config, LoraConfig) else (".ia3_l",)
    owners = set()
    for key in saved:
        if _WRAPPED_BIAS.fullmatch(key):
            continue
        owner = key.rpartition(".")[0]
        for suffix in (*suffixes, ".base_layer.bias"):
            if key.endswith(suffix):
                owner = key[: -len(suffix)]
        owners.add(owner)
    names = _name_mapping(model, owners)
    if names is None:
        modules = {n for n, _ in model.named_modules()}
        raise PeftFormatError(_unknown_modules_message(model, sorted(owners - modules)))
    return names


def select_modules(
    model: nn.Module,
    config: TargetingConfig,
    task_type: object,
    saved: Mapping[str, Any],
    names: SavedNames,
) -> tuple[list[str], list[str]]:
    """``(targets, modules_to_save)`` in this model's names, by PEFT's rules on the saved names."""
    own = list(config.modules_to_save or [])
    task = getattr(task_type, "value", task_type)  # a TaskType enum or its string
    implicit = [c for c in _TASK_SAVES.get(str(task), ()) if c not in own]
    saves = _selected_saves(model, own, names) if own else []
    # A module only the task wrapper adds, and the file holds nothing for, stays as it is (in
    # PEFT its copy keeps the original weights).
    for name in _selected_saves(model, implicit, names) if implicit else []:
        if name not in saves and any(k.startswith(f"{names.to_saved(name)}.") for k in saved):
            saves.append(name)
    config.modules_to_save = own + implicit or None  # PEFT never targets these
    targets = _selected_targets(model, config, names, saves)
    if not targets:
        raise PeftFormatError(
            f"target_modules={config.target_modules!r} selects no Linear/Conv1D module of this model "
            f"{names.describe()}(saved for another architecture?)"
        )
    return targets, saves


def expected_tensors(
    model: nn.Module,
    config: LoraConfig | IA3Config,
    names: SavedNames,
    targets: list[str],
    saves: list[str],
    saved: Mapping[str, Any],
) -> Expected:
    """Every tensor the file must hold for these ``targets`` and ``saves``, with its shape and
    the path it is copied to in the adapted model (plus ranks, alphas and feed-forward layers)."""
    out = Expected()
    bias = getattr(config, "bias", "none")
    for name in targets:
        key = names.saved_name(name)
        module = model.get_submodule(name)
        if isinstance(config, LoraConfig):
            rank, out.alphas[name] = config.rank_alpha(key)  # PEFT matches patterns on its own names
            out.ranks[name] = rank
            out.tensors.update(_lora_expected(module, name, key, rank, config.use_dora))
            if isinstance(module, nn.Embedding) and f"{key}.base_layer.weight" in saved:
                # PEFT saves a targeted embedding's table and loads it back over the base's
                out.tensors[f"{key}.base_layer.weight"] = (tuple(module.weight.shape), f"{name}.base.weight")
                out.base_paths[f"{name}.base.weight"] = f"{name}.weight"
            expected_bias(out, bias, module, name, key)
            continue
        d_in, d_out, _ = linear_features(module, name)
        if _peft_ff(config.feedforward_modules, key):
            out.feedforward.append(name)
            out.tensors[f"{key}.ia3_l"] = ((1, d_in), f"{name}.scale")
            out.other_form[f"{key}.ia3_l"] = (d_out, 1)
        else:
            out.tensors[f"{key}.ia3_l"] = ((d_out, 1), f"{name}.scale")
            out.other_form[f"{key}.ia3_l"] = (1, d_in)
        expected_bias(out, bias, module, name, key)
    expected_saves(out, model, config, names, targets, saves, saved)
    return out


def _lora_expected(
    module: nn.Module, name: str, key: str, rank: int, dora: bool
) -> dict[str, tuple[tuple[int, ...], str]]:
    """The LoRA tensors of one module: saved key -> (shape, path in the adapted model)."""
    if dora and not (isinstance(module, nn.Linear) or is_conv1d(module)):
        raise PeftFormatError(
            f"use_dora on {name!r}, a {type(module).__name__}: DoRA is implemented for linear layers only"
        )
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and any(d != 1 for d in module.dilation):
        raise PeftFormatError(
            f"{name!r} is a dilated convolution: PEFT 0.21.2's LoRA path ignores the dilation (and its merged "
            "weight disagrees with it), peft_zoo's follows it; the function would differ, so it is refused"
        )
    if isinstance(module, nn.Embedding):  # A (r, vocab), B (dim, r)
        return {
            f"{key}.lora_embedding_A": ((rank, module.num_embeddings), f"{name}.lora_embedding_A"),
            f"{key}.lora_embedding_B": ((module.embedding_dim, rank), f"{name}.lora_embedding_B"),
        }
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):  # A (r, in, *k), B (out, r / groups, 1, ...)
        ones = (1,) * len(module.kernel_size)
        return {
            f"{key}.lora_A.weight": ((rank, module.in_channels, *module.kernel_size), f"{name}.lora_A"),
            f"{key}.lora_B.weight": ((module.out_channels, rank // module.groups, *ones), f"{name}.lora_B"),
        }
    d_in, d_out, _ = linear_features(module, name)
    found: dict[str, tuple[tuple[int, ...], str]] = {
        f"{key}.lora_A.weight": ((rank, d_in), f"{name}.lora_A"),  # (r, in)
        f"{key}.lora_B.weight": ((d_out, rank), f"{name}.lora_B"),  # (out, r)
    }
    if dora:
        found[f"{key}.lora_magnitude_vector"] = ((d_out,), f"{name}.magnitude")  # (out,)
    return found


def expected_bias(out: Expected, bias: str, module: nn.Module, name: str, key: str) -> None:
    """A trained bias of an adapted layer (any ``bias`` but "none"), saved on PEFT's base_layer."""
    module_bias = getattr(module, "bias", None)
    if bias != "none" and isinstance(module_bias, torch.Tensor):
        out.tensors[f"{key}.base_layer.bias"] = (tuple(module_bias.shape), f"{name}.base.bias")
        out.base_paths[f"{name}.base.bias"] = f"{name}.bias"


def expected_saves(
    out: Expected,
    model: nn.Module,
    config: object,
    names: SavedNames,
    targets: list[str],
    saves: list[str],
    saved: Mapping[str, Any],
) -> None:
    """Add the ``modules_to_save`` copies and, with ``bias="all"``, every other bias to ``out``."""
    bias = getattr(config, "bias", "none")
    for name in saves:
        key = names.saved_name(name)
        for k, v in model.get_submodule(name).state_dict().items():
            out.tensors[f"{key}.{k}"] = (tuple(v.shape), f"{name}.trained_module.{k}")
    if bias == "all":  # every other bias of the model too
        skip = {id(p) for n in (*targets, *saves) for p in model.get_submodule(n).parameters()}
        for n, p in model.named_parameters():
            bias_key = names.to_saved(n)
            if n.rsplit(".", 1)[-1] == "bias" and id(p) not in skip and bias_key is not None:
                out.tensors[bias_key] = (tuple(p.shape), n)
                out.base_paths[n] = n
        for name in saves:
            prefix = f"{names.saved_name(name)}."
            out.ignorable.update(k for k in saved if k.startswith(prefix) and _WRAPPED_BIAS.fullmatch(k))
