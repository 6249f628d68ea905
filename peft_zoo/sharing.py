"""Cross-layer weight sharing with a LoRA per layer (ALBERT-style; Lan et al., 2020, arXiv:1909.11942).

A transformer of L identical blocks stores L copies of its big projections. Sharing keeps
one copy, block 0's, and makes every other block point at the *same* ``nn.Parameter``:

    W_attn, W_proj, W_fc, W_out   one set, used by blocks 0 .. L-1
    LayerNorms                    per block (cheap: 2 C each, and they let layers differ)
    LoRA A_l, B_l                 per block: layer l computes (W + scale B_l A_l) x

Aliasing (``block_i.lin.weight = block_0.lin.weight``) is what makes this work, and copying
is not: the model then *holds* the tensor once, so ``model.parameters()`` yields it once, an
optimizer updates it once, and autograd adds the gradient of every use into the one
``.grad``, the sum over layers of what each layer would have received on its own.

Consequences worth knowing:

- a shared base can never be merged with a per-layer LoRA: ``merge()`` on block l would write
  ``scale B_l A_l`` into the tensor every block uses. The shared layers are flagged, and
  ``merge()`` (LoRA, DoRA, IA³) on an adapter around one raises. Serve such a model unmerged.
- ``state_dict()`` lists the shared tensor under every block's name. Loading an unshared
  checkpoint into a shared model copies each block's tensor into the same storage in turn,
  so the last block silently wins; safetensors refuses to save aliased tensors at all.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import TypeAlias, cast

import torch
from torch import nn

from .core.base import SHARED_WEIGHT_FLAG, AdapterModule
from .core.checks import bias_of, check_name_list, is_conv1d, weight_of

__all__ = [
    "MAIN_MATRICES",
    "block_submodule",
    "main_linear",
    "share_main_matrices",
    "shared_parameters",
    "unique_parameter_count",
]

# The big matrices of a nanoGPT-style block (also GPT-2's names in ``transformers``).
MAIN_MATRICES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def main_linear(module: nn.Module, what: str = "module") -> nn.Module:
    """The linear layer holding the big matrix: ``module`` itself, or the ``base`` of an adapter
    layer wrapping it (:class:`peft_zoo.LoRALinear`, :class:`peft_zoo.IA3Linear`, ...).

    Raises ``TypeError`` for anything else, ``ValueError`` for a merged adapter (its base
    weight holds ``W0 + ΔW``, not the matrix to share)."""
    layer: object = module
    if isinstance(module, AdapterModule) and hasattr(module, "base"):
        if getattr(module, "merged", False):
            raise ValueError(f"{what} is a merged {type(module).__name__}: unmerge() it before sharing")
        layer = module.base
    if isinstance(layer, nn.Linear) or is_conv1d(layer):
        return layer
    raise TypeError(f"{what} must be an nn.Linear (or an adapter around one), got {type(layer).__name__}")


Blocks: TypeAlias = Sequence[nn.Module] | nn.ModuleList | nn.Sequential  # what share_main_matrices takes


def _check_blocks(blocks: Blocks) -> list[nn.Module]:
    if isinstance(blocks, nn.Module) and not isinstance(blocks, nn.ModuleList | nn.Sequential):
        raise TypeError(
            f"blocks must be a sequence of blocks (an nn.ModuleList), got {type(blocks).__name__}"
        )
    items: list[object] = list(blocks)
    if len(items) < 2:
        raise ValueError(f"sharing needs at least 2 blocks, got {len(items)}")
    modules = [b for b in items if isinstance(b, nn.Module)]
    if len(modules) < len(items):
        bad = [type(b).__name__ for b in items if not isinstance(b, nn.Module)]
        raise TypeError(f"every block must be an nn.Module, got {bad}")
    return modules


def _check_names(names: object) -> list[str]:
    found = check_name_list(names, "names")
    if not found:
        raise ValueError("names is empty: name at least one linear layer to share")
    return found


def block_submodule(block: nn.Module, name: str, index: int) -> nn.Module:
    """``block.get_submodule(name)``, or a ValueError naming block ``index`` and close names."""
    try:
        return block.get_submodule(name)
    except AttributeError:
        known = [n for n, _ in block.named_modules() if n]
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {close}?" if close else ""
        raise ValueError(f"block {index} has no submodule {name!r}{hint}") from None


def _describe(t: torch.Tensor | None) -> str:
    return "None" if t is None else f"{tuple(t.shape)} {t.dtype} on {t.device}"


def _same_layout(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Both None, or both tensors of the same shape, dtype and device."""
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device


def _pairs(blocks: list[nn.Module], names: list[str]) -> list[tuple[nn.Module, nn.Module]]:
    """``(block 0's linear, block i's linear)`` for every name and block, every pair checked
    (layer types, identical weight and bias layouts) before anything is touched."""
    pairs: list[tuple[nn.Module, nn.Module]] = []
    for name in names:
        source = main_linear(block_submodule(blocks[0], name, 0), f"block 0 {name!r}")
        for i, block in enumerate(blocks[1:], start=1):
            target = main_linear(block_submodule(block, name, i), f"block {i} {name!r}")
            for attr, get in (("weight", weight_of), ("bias", bias_of)):
                a, b = get(source), get(target)
                if not _same_layout(a, b):
                    raise ValueError(
                        f"{name}.{attr} differs between block 0 ({_describe(a)}) and block {i} "
                        f"({_describe(b)}): only identical layers can share one tensor"
                    )
            pairs.append((source, target))
    return pairs


def share_main_matrices(
    blocks: Blocks, names: str | Iterable[str] = MAIN_MATRICES
) -> dict[str, nn.Parameter]:
    """Make every block use block 0's ``weight`` and ``bias`` for each named linear layer.

    Args:
        blocks: two or more blocks of the same structure (an ``nn.ModuleList``).
        names: dotted paths, inside one block, of the layers to share. Each may name an
            ``nn.Linear`` or an adapter wrapping one: then the adapter's ``base`` is shared
            and its own weights (LoRA ``A``/``B``) stay per block. Everything not named
            (LayerNorms, other layers) stays per block.

    Returns ``{"attn.c_attn.weight": Parameter, ...}``: the shared tensors (block 0's).
    The other blocks' own tensors for these layers are dropped. Everything is checked first
    (names, layer types, identical shapes, dtypes and devices, bias present in all or none);
    on any error nothing changes. Aliasing is idempotent: sharing twice changes nothing.
    """
    blocks = _check_blocks(blocks)
    names = _check_names(names)
    pairs = _pairs(blocks, names)  # 1) validate every (block, name) pair first: all or nothing

    # 2) Alias: the same Parameter object, not a copy, so updates and gradients are shared.
    for source, target in pairs:
        target.weight = source.weight
        if source.bias is not None:
            target.bias = source.bias
        # Mark both ends: an adapter around either must never merge into the shared tensor.
        setattr(source, SHARED_WEIGHT_FLAG, True)
        setattr(target, SHARED_WEIGHT_FLAG, True)
    shared: dict[str, nn.Parameter] = {}  # a linear layer holds its weight and bias as Parameters
    for name in names:
        source = main_linear(blocks[0].get_submodule(name))
        shared[f"{name}.weight"] = cast(nn.Parameter, weight_of(source))
        bias = bias_of(source)
        if bias is not None:
            shared[f"{name}.bias"] = cast(nn.Parameter, bias)
    return shared


def shared_parameters(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Every parameter reachable under more than one name: ``first name -> all its names``.

    ``len(names)`` is how many places use the tensor (the number of blocks sharing it).
    An unshared model returns ``{}``."""
    uses: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        uses.setdefault(id(p), []).append(name)
    return {names[0]: tuple(names) for names in uses.values() if len(names) > 1}


def unique_parameter_count(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of scalars ``model`` stores, each shared tensor counted once (what the optimizer
    and a checkpoint without duplicates hold); ``trainable_only`` keeps ``requires_grad`` ones."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
