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

import torch
from torch import nn

from .core.base import SHARED_WEIGHT_FLAG, AdapterModule
from .core.checks import is_conv1d

__all__ = [
    "MAIN_MATRICES",
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
    if isinstance(module, AdapterModule) and hasattr(module, "base"):
        if getattr(module, "merged", False):
            raise ValueError(f"{what} is a merged {type(module).__name__}: unmerge() it before sharing")
        module = module.base
    if not (isinstance(module, nn.Linear) or is_conv1d(module)):
        raise TypeError(
            f"{what} must be an nn.Linear (or an adapter around one), got {type(module).__name__}"
        )
    return module


def _names(names: str | Iterable[str]) -> list[str]:
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError("names is empty: name at least one linear layer to share")
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"names must be dotted module paths (str), got {bad!r}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"names lists these more than once: {dupes}")
    return names


def _lookup(block: nn.Module, name: str, index: int) -> nn.Module:
    try:
        return block.get_submodule(name)
    except AttributeError:
        known = [n for n, _ in block.named_modules() if n]
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {close}?" if close else ""
        raise ValueError(f"block {index} has no submodule {name!r}{hint}") from None


def _describe(t: torch.Tensor | None) -> str:
    return "None" if t is None else f"{tuple(t.shape)} {t.dtype} on {t.device}"


def share_main_matrices(
    blocks: Sequence[nn.Module], names: str | Iterable[str] = MAIN_MATRICES
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
    if isinstance(blocks, nn.Module) and not isinstance(blocks, nn.ModuleList | nn.Sequential):
        raise TypeError(
            f"blocks must be a sequence of blocks (an nn.ModuleList), got {type(blocks).__name__}"
        )
    blocks = list(blocks)
    if len(blocks) < 2:
        raise ValueError(f"sharing needs at least 2 blocks, got {len(blocks)}")
    bad = [type(b).__name__ for b in blocks if not isinstance(b, nn.Module)]
    if bad:
        raise TypeError(f"every block must be an nn.Module, got {bad}")
    names = _names(names)

    # 1) Validate every (block, name) pair before touching anything: all or nothing.
    pairs: list[tuple[nn.Module, nn.Module]] = []  # (block 0's linear, block i's linear)
    for name in names:
        source = main_linear(_lookup(blocks[0], name, 0), f"block 0 {name!r}")
        for i, block in enumerate(blocks[1:], start=1):
            target = main_linear(_lookup(block, name, i), f"block {i} {name!r}")
            for attr in ("weight", "bias"):
                a, b = getattr(source, attr, None), getattr(target, attr, None)
                same = (a is None) == (b is None) and (
                    a is None or (a.shape == b.shape and a.dtype == b.dtype and a.device == b.device)
                )
                if not same:
                    raise ValueError(
                        f"{name}.{attr} differs between block 0 ({_describe(a)}) and block {i} "
                        f"({_describe(b)}): only identical layers can share one tensor"
                    )
            pairs.append((source, target))

    # 2) Alias: the same Parameter object, not a copy, so updates and gradients are shared.
    for source, target in pairs:
        target.weight = source.weight
        if source.bias is not None:
            target.bias = source.bias
        # Mark both ends: an adapter around either must never merge into the shared tensor.
        setattr(source, SHARED_WEIGHT_FLAG, True)
        setattr(target, SHARED_WEIGHT_FLAG, True)
    shared: dict[str, nn.Parameter] = {}
    for name in names:
        source = main_linear(blocks[0].get_submodule(name))
        shared[f"{name}.weight"] = source.weight
        if source.bias is not None:
            shared[f"{name}.bias"] = source.bias
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
