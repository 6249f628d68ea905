"""Export: fold the adapters into the model, or take them out again.

    merge_and_unload(model)   each adapter layer -> its base module, holding the adapted weight
    unload(model)             each adapter layer -> its base module, holding W0 as it was

A LoRA-style layer computes ``y = W' x + b'`` with one effective weight (``W0 + s B A`` for
LoRA and fused LoRA, ``m ⊙ V / ||V||`` for DoRA, ``diag(l) W0`` and ``l ⊙ b`` for IA³), which
each layer exposes as its ``weight`` / ``bias``. :func:`merge_and_unload` writes ``W'`` (and
``b'``) into the base ``nn.Linear`` / GPT-2 ``Conv1D`` and puts that very module back where
the adapter layer was, so the model holds no peft_zoo class and ``transformers``'
``save_pretrained`` / ``from_pretrained`` round-trips it without peft_zoo installed (as
Hugging Face PEFT's ``PeftModel.merge_and_unload()``). A ``QLoRALinear`` becomes a float
``nn.Linear`` (:meth:`~peft_zoo.QLoRALinear.to_linear`), and a :class:`ModulesToSave` its
trained copy.

:func:`unload` drops the adapters without merging: every layer's own ``base`` goes back
(after ``unmerge()`` if the layer was merged), a ``ModulesToSave`` its original module, a
``ParallelAdapterBlock`` its sublayer (it only adds ``delta(x)`` beside it). A QLoRA layer
gives back its quantised :class:`~peft_zoo.NF4Linear` (the float weight was freed when it was
quantised). Parameters keep their ``requires_grad`` flags (frozen by the injection), as in PEFT.

Both are all or nothing. The whole model is checked first; what cannot be folded (a bottleneck
adapter, whose non-linearity sits between its projections; a prefix, which lengthens the
sequence; a batched layer holding many adapters) or cannot be put back exactly (an
``AdapterBlock``, whose residual is the block's own) raises :class:`UnloadError` naming every
such layer's path, and nothing is changed. So does a merge into a weight the layer does not
own alone (a weight shared across blocks by :mod:`peft_zoo.sharing`, or tied to another
module such as GPT-2's ``lm_head`` and ``wte``), and a merged weight that would not be finite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, cast, runtime_checkable

import torch
from torch import nn

from ..adapters import AdapterBlock, ParallelAdapterBlock
from ..boft import BOFTLinear
from ..core.base import SHARED_WEIGHT_FLAG, AdapterModule, AdditiveAdapter
from ..core.checks import bias_of, check_module, weight_of
from ..dora import DoRALinear
from ..ia3 import IA3Linear
from ..nf4 import NF4Linear
from ..oft import OFTLinear
from ..qlora import QLoRALinear
from .modules_to_save import ModulesToSave
from .surgery import parent_of

__all__ = ["SelfUnloading", "UnloadError", "merge_and_unload", "unload"]

# Every additive update (LoRA, DoRA, fused LoRA, LoRA on embeddings / convolutions, LoHa, LoKr,
# VeRA, AdaLoRA), IA3's scaling, OFT's rotation and BOFT's rotation and scale: each layer's ``weight`` property is the
# weight it applies, in its base's layout.
FOLDABLE = (AdditiveAdapter, IA3Linear, OFTLinear, BOFTLinear)
# Why a kind of module of the rooms below cannot be merged (or, for unload, put back exactly).
# A layer of a higher room (serving's BatchedLoRALinear, NamedLoRALinear) says it itself:
# it follows the SelfUnloading protocol.
WHY_NOT = {
    "AdapterBlock": "a bottleneck adapter has a non-linearity between its projections, so no weight "
    "can absorb it (and its sublayer's residual lives in the block, so unload cannot restore it either)",
    "ParallelAdapterBlock": "a bottleneck adapter has a non-linearity between its projections, so no "
    "weight can absorb it",
    "BottleneckAdapter": "a bottleneck adapter has a non-linearity between its projections (and even "
    "with activation='identity' it follows no single linear layer it could be folded into)",
    "AdapterStack": "it holds one bottleneck adapter per task, chosen per call",
    "LearnablePrefix": "a prefix lengthens the sequence; it is no change to any weight",
    "PrefixKV": "key/value prefixes add attention positions; they are no change to any weight",
    "PromptTuningModel": "virtual tokens are prepended to the input; they are no change to any weight",
    "PromptEmbedding": "virtual tokens are prepended to the input; they are no change to any weight",
    "PromptEncoder": "virtual tokens are prepended to the input; they are no change to any weight",
}


@runtime_checkable
class SelfUnloading(Protocol):
    """A layer that says itself how :func:`merge_and_unload` / :func:`unload` take it apart, so
    this module needs no rule (and no import) for it. ``merge`` is ``True`` for
    ``merge_and_unload``. ``unload_refusal`` returns why it cannot be (``None``: it can) and
    changes nothing; ``unload_replacement`` (called only after every layer said yes) returns
    the module to put in its place, its update folded into the weights when ``merge``."""

    def unload_refusal(self, merge: bool) -> str | None: ...

    def unload_replacement(self, merge: bool) -> nn.Module: ...


class UnloadError(ValueError):
    """A model that :func:`merge_and_unload` / :func:`unload` cannot take apart. Nothing was changed."""


@dataclass
class _Plan:
    """What to replace, children before parents: ``(paths, module)`` per adapter module (a
    module reachable under several names is listed once, with all of them)."""

    steps: dict[int, tuple[list[str], nn.Module]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def add(self, path: str, module: nn.Module) -> None:
        self.steps.setdefault(id(module), ([], module))[0].append(path)


def _where(path: str) -> str:
    return repr(path) if path else "the model itself"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _unknown_peft_zoo_module(module: nn.Module) -> bool:
    """A peft_zoo class that is no base model (``peft_zoo.models``) and no quantised base:
    adapter machinery this module has no rule for."""
    where = type(module).__module__
    return (
        where.startswith("peft_zoo.")
        and not where.startswith("peft_zoo.models.")
        and not isinstance(module, NF4Linear)
    )


def _visit(module: nn.Module, path: str, merge: bool, plan: _Plan) -> None:
    if isinstance(module, ModulesToSave):  # the kept copy may hold adapter layers of its own
        kept = "trained_module" if merge else "original_module"
        _visit(getattr(module, kept), _join(path, kept), merge, plan)
        plan.add(path, module)
    elif isinstance(module, (*FOLDABLE, QLoRALinear)):
        plan.add(path, module)
    elif isinstance(module, SelfUnloading):
        why = module.unload_refusal(merge)
        if why:
            plan.problems.append(f"{_where(path)} is a {type(module).__name__}: {why}")
        else:
            plan.add(path, module)
    elif not merge and isinstance(module, ParallelAdapterBlock):
        _visit(module.sublayer, _join(path, "sublayer"), merge, plan)
        plan.add(path, module)
    elif isinstance(module, AdapterModule | AdapterBlock | ParallelAdapterBlock) or (
        _unknown_peft_zoo_module(module)
    ):
        name = type(module).__name__
        why = WHY_NOT.get(name, "peft_zoo has no rule to fold it into a weight or take it out")
        plan.problems.append(f"{_where(path)} is a {name}: {why}")
    else:
        # Every child under every name: named_children() would list a module held twice once.
        for child_name, child in module._modules.items():
            if child is not None:
                _visit(child, _join(path, child_name), merge, plan)


def _check_owned(layer: nn.Module, paths: list[str], param_paths: dict[int, list[str]]) -> str | None:
    """Why merging into ``layer.base`` would change another module too, or ``None``."""
    base = getattr(layer, "base", None)
    if not isinstance(base, nn.Module):
        return None
    if getattr(base, SHARED_WEIGHT_FLAG, False):
        return (
            "its base weight is shared across blocks (peft_zoo.sharing), so one merge would change them all"
        )
    own = tuple(f"{p}." if p else "" for p in paths)  # "": the layer is the model itself
    for tensor in (weight_of(base), bias_of(base)):
        others = [p for p in param_paths.get(id(tensor), []) if not p.startswith(own)]
        if others:
            return f"its base weight is tied to {others[:3]}, which a merge would change as well"
    return None


class Foldable(Protocol):
    """What a :data:`FOLDABLE` layer offers: its frozen ``base``, the ``merged`` flag, and the
    ``weight`` / ``bias`` it applies, in the base's layout."""

    base: nn.Module
    merged: bool

    @property
    def weight(self) -> torch.Tensor: ...

    @property
    def bias(self) -> torch.Tensor | None: ...


@torch.no_grad()
def _merged(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight and bias ``layer`` (a FOLDABLE or QLoRA layer) applies, in its base's layout
    (new tensors unless merged)."""
    if isinstance(layer, QLoRALinear):
        linear = layer.to_linear()
        return linear.weight, linear.bias
    foldable = cast(Foldable, layer)
    weight, bias = foldable.weight, foldable.bias  # each layer's own effective weight (a property)
    return weight.detach(), None if bias is None else bias.detach()


def _check_merge(step: tuple[list[str], nn.Module], param_paths: dict[int, list[str]]) -> str | None:
    """Why ``step`` cannot be merged, or ``None``. Computes (and drops) the merged weight."""
    paths, layer = step
    if isinstance(layer, ModulesToSave):
        return None
    if isinstance(layer, SelfUnloading):  # its own refusal (non-finite merges included) ran in _visit
        why = _check_owned(layer, paths, param_paths)
        return f"{_where(paths[0])} ({type(layer).__name__}): {why}" if why else None
    # QLoRA layers (LoRA layers too) dequantise into a new Linear: nothing is written into their base.
    base = None if isinstance(layer, QLoRALinear) else cast(Foldable, layer).base
    if base is not None and not cast(Foldable, layer).merged:
        why = _check_owned(layer, paths, param_paths)
        if why:
            return f"{_where(paths[0])} ({type(layer).__name__}): {why}"
    try:
        weight, bias = _merged(layer)
    except NotImplementedError as error:  # e.g. LoRA on a grouped convolution has no merged kernel
        return f"{_where(paths[0])} ({type(layer).__name__}): {error}"
    # Only what the merge itself makes non-finite counts (a base that holds inf keeps it).
    if _made_non_finite(weight, None if base is None else weight_of(base)) or (
        bias is not None and _made_non_finite(bias, None if base is None else bias_of(base))
    ):
        return f"{_where(paths[0])} ({type(layer).__name__}): its merged weight has NaN or inf entries"
    return None


def _made_non_finite(new: torch.Tensor, old: torch.Tensor | None) -> bool:
    """Does ``new`` hold NaN or inf where ``old`` (if given) was finite?"""
    bad = ~torch.isfinite(new)
    return bool((bad if old is None else bad & torch.isfinite(old)).any())


def _plan(model: object, merge: bool) -> _Plan:
    what = "merge_and_unload" if merge else "unload"
    check_module(model, f"{what}: model")
    assert isinstance(model, nn.Module)  # check_module raised otherwise
    plan = _Plan()
    _visit(model, "", merge, plan)
    if merge and not plan.problems:
        param_paths: dict[int, list[str]] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            param_paths.setdefault(id(p), []).append(name)
        for step in plan.steps.values():
            why = _check_merge(step, param_paths)
            if why:
                plan.problems.append(why)
    if plan.problems:
        raise UnloadError(f"{what}: " + "; ".join(plan.problems) + ". The model was not changed.")
    return plan


def _install(model: nn.Module, paths: list[str], replacement: nn.Module) -> nn.Module:
    """Put ``replacement`` at every path; return the (possibly new) root."""
    for path in paths:
        if not path:
            model = replacement
        else:
            parent, attr = parent_of(model, path)
            setattr(parent, attr, replacement)
    return model


@torch.no_grad()
def _fold(layer: nn.Module) -> nn.Module:
    """Write ``layer``'s effective weight into its base and return the module to put back."""
    if isinstance(layer, ModulesToSave):
        return layer.trained_module
    if isinstance(layer, QLoRALinear):
        return layer.to_linear()
    if isinstance(layer, SelfUnloading):
        return layer.unload_replacement(True)
    assert isinstance(layer, FOLDABLE)  # _visit plans nothing else for a merge
    foldable = cast(Foldable, layer)
    if not foldable.merged:  # a merged layer's base already holds W': never fold twice
        norm = layer.weight_norm() if isinstance(layer, DoRALinear) else None
        weight, bias = _merged(layer)
        weight_of(foldable.base).copy_(weight)
        base_bias = bias_of(foldable.base)
        if bias is not None and base_bias is not None:
            base_bias.copy_(bias)
        # The dropped layer stays consistent (its base now holds W'), should anyone still hold it.
        if isinstance(layer, DoRALinear):
            layer.merged_norm = norm
        foldable.merged = True
    return foldable.base


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold every adapter of ``model`` into its weights and return the plain model.

    Every ``LoRALinear``, ``DoRALinear``, ``FusedLoRALinear``, ``LoRAEmbedding``, ``LoRAConv``,
    ``LoHaLinear``, ``LoKrLinear``, ``VeRALinear``, ``AdaLoRALinear``, ``OFTLinear``, ``BOFTLinear`` and
    ``IA3Linear`` is replaced by its own base (``nn.Linear``, ``Conv1D``, ``nn.Embedding``,
    ``nn.Conv*``), whose weight (and, for IA³, bias) now holds what the layer applied (a layer merged before is not merged again); every ``QLoRALinear`` by a
    float ``nn.Linear``; every ``ModulesToSave`` by its trained copy. Dropout on the LoRA path
    goes with its layer. The model is changed in place and returned (a new object only when
    ``model`` itself was an adapter layer); its outputs equal the adapted model's up to float
    rounding, and no peft_zoo class is left in it.

    Raises :class:`UnloadError` naming every layer that cannot be merged (bottleneck adapters,
    prefixes, batched layers, shared or tied base weights (an embedding tied to the output head),
    LoRA on a grouped convolution, non-finite merged weights), and
    ``TypeError`` when ``model`` is not an ``nn.Module``; either way nothing was changed.
    """
    plan = _plan(model, merge=True)
    for paths, layer in plan.steps.values():
        model = _install(model, paths, _fold(layer))
    return model


def _put_back(layer: nn.Module) -> nn.Module:
    if isinstance(layer, ModulesToSave):
        return layer.original_module
    if isinstance(layer, ParallelAdapterBlock):
        return layer.sublayer
    if isinstance(layer, SelfUnloading):
        return layer.unload_replacement(False)
    if isinstance(layer, FOLDABLE) and layer.merged:
        layer.unmerge()  # W0 back, up to the rounding of W0 + dW - dW
    base = getattr(layer, "base", None)
    assert isinstance(base, nn.Module)  # every layer _visit plans for unload has one
    return base


def unload(model: nn.Module) -> nn.Module:
    """Take every adapter out of ``model`` without merging and return the base model.

    Each adapter layer is replaced by its own base module (unmerged first if it was merged:
    ``W0`` comes back up to float rounding; an unmerged layer's base was never written, so its
    weights are exactly the original ones), a ``ModulesToSave`` by its original module, a
    ``ParallelAdapterBlock`` by its sublayer, and a ``QLoRALinear`` by its quantised
    ``NF4Linear``. Changed in place and returned (a new object only when ``model`` itself was an
    adapter layer).

    Raises :class:`UnloadError` naming every module that cannot be taken out exactly (an
    ``AdapterBlock``, a bare ``BottleneckAdapter``, prefixes, batched layers, unknown peft_zoo
    modules), and ``TypeError`` when ``model`` is not an ``nn.Module``; nothing was changed.
    """
    plan = _plan(model, merge=False)
    for paths, layer in plan.steps.values():
        model = _install(model, paths, _put_back(layer))
    return model
