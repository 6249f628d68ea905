"""LoRA on every Linear layer: walking the module tree safely.

``inject_lora`` (challenge 04) needs the names spelled out. Often you want "every linear
layer" instead (QLoRA's recipe puts LoRA on all of them), so the injector finds the names
itself with ``model.named_modules()``, which visits the whole tree depth-first, root first
(name ``''``), each module once.

Three traps:

1. Do not replace modules while ``named_modules()`` is still walking the tree: collect the
   names into a list first, then replace. (Changing a structure while you iterate over it
   is fragile: a walk that reaches a freshly inserted ``LoRALinear`` finds its ``.base``,
   an ``nn.Linear``, and wraps it again.)
2. The model may already hold ``LoRALinear`` layers. Their ``.base`` is an ``nn.Linear``
   but it is already adapted: wrapping it would put a LoRA inside a LoRA. A ``LoRALinear``
   itself is not an ``nn.Linear``, so ``isinstance`` already leaves it alone.
3. The root has no parent, so it cannot be replaced in place: if the model *is* an
   ``nn.Linear``, refuse (``LoRALinear(model, rank)`` is what the caller wants).

As in challenge 04, everything that is not a LoRA parameter ends frozen (embeddings, norms,
biases, the bases): only LoRA trains.
"""

from __future__ import annotations

from torch import nn

from peft_zoo import LoRALinear


def inject_lora_recursive(
    model: nn.Module, rank: int, alpha: float | None = None
) -> tuple[nn.Module, list[nn.Parameter]]:
    """Wrap every ``nn.Linear`` below the root of ``model`` (in place) in ``LoRALinear(linear, rank, alpha)``.

    Each Linear is wrapped exactly once; a Linear that already is the ``.base`` of a
    ``peft_zoo.LoRALinear`` is skipped.

    Returns:
        ``(model, params)``: the ``lora_A`` and ``lora_B`` of each NEW layer,
        ``[A1, B1, A2, B2, ...]`` in module order (the order of ``model.named_modules()``);
        no parameter of a LoRA layer that was already there. Every parameter of ``model``
        that is not a LoRA parameter ends frozen (``requires_grad=False``); the new LoRA
        parameters are trainable. The LoRA parameters of layers that were already there may
        keep their flags or be frozen: either is accepted.

    Raises:
        ValueError: ``model`` itself is an ``nn.Linear`` (the root cannot be replaced in
            place); the model, ``requires_grad`` flags included, is left as it was.

    About 15 lines.
    """
    # BEGIN SOLUTION: refuse a Linear root; collect every Linear that is not a LoRA base (no mutation yet); replace; freeze the rest
    # Linears that are already adapted: the .base of every existing LoRA layer.
    lora_bases = {id(m.base) for m in model.modules() if isinstance(m, LoRALinear)}
    if isinstance(model, nn.Linear):  # the root has no parent to replace it through
        raise ValueError("inject_lora_recursive: the model is an nn.Linear; use LoRALinear(model, rank)")
    # 1. Collect first: never mutate the tree while named_modules() walks it.
    targets = [
        (name, m)
        for name, m in model.named_modules()
        if name and isinstance(m, nn.Linear) and id(m) not in lora_bases  # name '' is the root
    ]
    # 2. Replace each through its parent, in module order.
    params = []
    for name, linear in targets:
        parent_name, _, attr = name.rpartition(".")
        layer = LoRALinear(linear, rank, alpha)  # wraps the original Linear and freezes it
        setattr(model.get_submodule(parent_name), attr, layer)
        params += [layer.lora_A, layer.lora_B]  # only the new layers' parameters
    # 3. Freeze everything else (as PEFT does); here the earlier LoRA layers are frozen too.
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return model, params
    # END SOLUTION
