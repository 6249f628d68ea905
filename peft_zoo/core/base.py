"""The one protocol every adapter module follows, so generic code never special-cases a method.

An adapter module says which of its own parameters are adapter weights (trainable, saved
in adapter checkpoints) through :meth:`AdapterModule.adapter_named_parameters`. Everything
else it holds (a wrapped base layer, a sublayer) belongs to the frozen model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, cast

import torch
from torch import nn


class AdapterModule(nn.Module):
    """Base class of peft_zoo's adapter modules.

    Subclasses set ``adapter_param_names`` to the *local* names of their adapter
    parameters (``("lora_A", "lora_B")`` for LoRA), or leave it ``None`` when every
    parameter of the module is an adapter parameter (a bottleneck adapter).
    """

    adapter_param_names: tuple[str, ...] | None = None

    def adapter_named_parameters(self, prefix: str = "") -> Iterator[tuple[str, nn.Parameter]]:
        """Yield ``(qualified_name, parameter)`` for this module's adapter parameters."""
        dot = f"{prefix}." if prefix else ""
        if self.adapter_param_names is None:
            for name, param in self.named_parameters():
                yield dot + name, param
        else:
            for name in self.adapter_param_names:
                yield dot + name, getattr(self, name)

    def adapter_config(self) -> dict[str, object]:
        """The hyperparameters that, with the adapter tensors, define this module's function
        (stored in adapter checkpoints and compared on load). Subclasses extend it."""
        return {"method": type(self).__name__}

    def never_trained(self) -> Iterator[nn.Parameter]:
        """Parameters kept only to restore the model (a ``ModulesToSave``'s frozen original):
        no ``bias`` mode ever trains them. None by default."""
        return iter(())


class MergeableAdapter(Protocol):
    """An adapter layer that can fold its update into its base weight (LoRA, DoRA, IA³)."""

    merged: bool

    def merge(self) -> None: ...

    def unmerge(self) -> None: ...


# Set to True on a linear layer whose weight several blocks use (peft_zoo.sharing does this).
SHARED_WEIGHT_FLAG = "peft_zoo_shared_weight"


def refuse_merge_into_shared(adapter: nn.Module) -> None:
    """Raise ``RuntimeError`` when ``adapter.base`` holds a weight shared across blocks.

    Merging writes this layer's update into a tensor every sharing block reads, so each
    block would silently compute with the others' updates as well."""
    if getattr(getattr(adapter, "base", None), SHARED_WEIGHT_FLAG, False):
        raise RuntimeError(
            f"cannot merge this {type(adapter).__name__}: its base weight is shared across blocks "
            "(peft_zoo.sharing), so the update of one layer would be written into every layer. "
            "Serve the model unmerged."
        )


class AdditiveAdapter(AdapterModule):
    """An adapter whose update ``ΔW`` is *added* to its frozen base's weight (LoRA and its
    variants, LoHa, LoKr, VeRA, AdaLoRA): ``merge()`` adds it, ``unmerge()`` subtracts it.
    A subclass sets ``merged = False`` in ``__init__`` and defines ``_add_to_base(sign)``, which
    writes ``W + sign · ΔW`` into the base weight (``sign`` is +1 or -1), summing in float32 at
    least so that a half-precision weight is rounded once."""

    merged: bool

    def _add_to_base(self, sign: float) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define _add_to_base(sign)")

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ``ΔW`` into the base weight. Merging an already-merged layer is a no-op;
        a base weight shared across blocks is refused (:func:`refuse_merge_into_shared`)."""
        if not self.merged:
            refuse_merge_into_shared(self)
            self._add_to_base(1.0)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract ``ΔW`` from the base weight again. No-op when not merged."""
        if self.merged:
            self._add_to_base(-1.0)
            self.merged = False


def add_delta_(weight: torch.Tensor, delta: torch.Tensor, sign: float) -> None:
    """``weight += sign * delta`` in place, summed in float32 at least (or the weight's wider
    dtype) and rounded once to the weight's dtype: what every ``_add_to_base`` does.
    ``delta`` has the weight's shape (in its layout) and may live on another device."""
    compute = torch.promote_types(weight.dtype, torch.float32)
    weight.copy_((weight.to(compute) + sign * delta.to(weight.device)).to(weight.dtype))


def refuse_training_merged(adapter: nn.Module, params: Iterable[nn.Parameter], what: str) -> None:
    """Raise ``RuntimeError`` when a merged ``adapter`` runs a training forward pass (training
    mode, gradients enabled) while any of ``params`` wants a gradient: the merged base computes
    the output, so ``what`` (its adapter weights) would silently never receive one."""
    if adapter.training and torch.is_grad_enabled() and any(p.requires_grad for p in params):
        raise RuntimeError(
            f"{type(adapter).__name__} is merged, so its {what} would get no gradient: call "
            "unmerge() before training, or run inference under model.eval() / torch.no_grad()"
        )


def outermost_adapters(model: nn.Module) -> dict[str, AdapterModule]:
    """``name -> module`` for the adapter modules of ``model`` that are not inside another
    adapter module (a ``ModulesToSave`` copy holding a LoRA layer counts once), in
    ``named_modules()`` order."""
    found: dict[str, AdapterModule] = {}
    inside: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, AdapterModule) and id(module) not in inside:
            found[name] = module
            inside.update(id(m) for m in module.modules())
    return found


def merge_adapters(model: nn.Module) -> int:
    """Call ``merge()`` on every mergeable adapter layer in ``model`` (LoRA, IA³); return how
    many layers were merged by this call. Already-merged layers are left as they are."""
    done: list[MergeableAdapter] = []
    try:
        for module in model.modules():
            if isinstance(module, AdapterModule) and hasattr(module, "merge") and not module.merged:
                layer = cast(MergeableAdapter, module)  # an adapter layer with merge() has all three
                layer.merge()
                done.append(layer)
    except Exception:
        for layer in reversed(done):  # all or nothing
            layer.unmerge()
        raise
    return len(done)


def unmerge_adapters(model: nn.Module) -> int:
    """Undo :func:`merge_adapters`: call ``unmerge()`` on every merged adapter layer."""
    count = 0
    for module in model.modules():
        if isinstance(module, AdapterModule) and getattr(module, "merged", False):
            cast(MergeableAdapter, module).unmerge()  # a merged adapter layer can unmerge
            count += 1
    return count
