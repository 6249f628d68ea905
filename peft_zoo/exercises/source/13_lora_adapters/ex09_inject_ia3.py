"""Injecting IA³ (Liu et al., 2022, arXiv:2205.05638) into an existing model.

The mechanics are those of ``inject_lora`` (challenge 04): resolve each dotted path from
``model.named_modules()``, check it names an ``nn.Linear``, then swap the layer for its
adapted version *through its parent*. Only the wrapper changes: ``IA3Linear(linear)``
freezes ``linear`` and adds one trainable vector ``scale`` of shape ``(out_features,)``.

Which layers? The paper rescales the attention keys and values and the inner activations
of the feed-forward block of a T0 model: one vector per rescaled activation, about 0.01%
of the model's parameters, and in the paper's few-shot experiments it matched or beat
full fine-tuning. In the small models here the keys and values are ``attn.branch.k`` and
``attn.branch.v``.

As before: validate every name before replacing any (a failing call must leave the model
exactly as it was), return the new parameters, in the order of the names, and freeze every
other parameter of the model, so that only the scales train.
"""

from __future__ import annotations

from torch import nn

from peft_zoo import IA3Linear


def inject_ia3(model: nn.Module, linear_names: list[str]) -> tuple[nn.Module, list[nn.Parameter]]:
    """Replace each named ``nn.Linear`` of ``model`` (in place) with ``IA3Linear(linear)``.

    Args:
        model: any ``nn.Module``; modified in place and returned.
        linear_names: dotted paths exactly as ``model.named_modules()`` prints them, each
            naming an ``nn.Linear``.

    Returns:
        ``(model, params)`` with ``params == [scale_1, scale_2, ...]``: the ``scale`` of each
        new layer, in the order of ``linear_names``, and nothing else. Every other parameter
        of ``model`` ends frozen (``requires_grad=False``), so the trainable parameters are
        exactly ``params`` (freeze in any way you like).

    Raises:
        ValueError: naming the problem, when a name does not exist or is not an
            ``nn.Linear``, before anything changes (``requires_grad`` flags included).

    About 18 lines.
    """
    # BEGIN SOLUTION: check every name first (ValueError), swap each Linear for an IA3Linear via its parent, freeze the rest
    # 1. Validate everything before changing anything.
    names, targets = list(linear_names), []
    for name in names:
        try:
            module = model.get_submodule(name)  # follows the dots, through Sequential/ModuleList indices
        except AttributeError:
            raise ValueError(f"inject_ia3: no module named {name!r} in the model") from None
        if not isinstance(module, nn.Linear):
            raise ValueError(f"inject_ia3: {name!r} is a {type(module).__name__}, not an nn.Linear")
        targets.append(module)
    # 2. Replace each Linear through its parent; collect the new scales.
    params = []
    for name, linear in zip(names, targets, strict=True):
        parent_name, _, attr = name.rpartition(".")
        layer = IA3Linear(linear)  # wraps the original object and freezes it
        setattr(model.get_submodule(parent_name), attr, layer)
        params.append(layer.scale)  # (out_features,): the only trainable tensor of the layer
    # 3. Freeze everything else (as PEFT does): only the new scales train.
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return model, params
    # END SOLUTION
