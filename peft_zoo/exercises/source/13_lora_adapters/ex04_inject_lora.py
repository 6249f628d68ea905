"""Injecting LoRA into a model you did not write.

A pretrained network is a tree of modules. ``model.named_modules()`` prints every node
with its dotted path from the root::

    encoder              nn.Sequential
    encoder.0            nn.Linear        <- child "0" of the Sequential
    encoder.2.branch.fc1 nn.Linear        <- three levels down
    blocks.1.attn.q      nn.Linear        <- inside the second entry of an nn.ModuleList

To add LoRA to a layer we do not touch the model's code: we swap the ``nn.Linear`` object
at that path for a ``LoRALinear`` that wraps it. A module is replaced through its parent,
``setattr(parent, "fc1", new)``; for ``nn.Sequential`` / ``nn.ModuleList`` the attribute
is the index as a string (``setattr(seq, "0", new)``). ``model.get_submodule(path)``
walks the dots for you; ``getattr(model, "encoder.0")`` does not.

Two habits from real libraries (Hugging Face PEFT, loralib):

- validate first, mutate second: check every name before replacing any, so a typo in the
  last name does not leave a half-injected model behind;
- return the new parameters explicitly. The optimizer should get ``[A1, B1, A2, B2, ...]``
  and nothing else; ``model.parameters()`` would also hand it every frozen weight.
"""

from __future__ import annotations

from torch import nn

from peft_zoo import LoRALinear


def inject_lora(
    model: nn.Module, linear_names: list[str], rank: int, alpha: float | None = None
) -> tuple[nn.Module, list[nn.Parameter]]:
    """Replace each named ``nn.Linear`` of ``model`` (in place) with ``LoRALinear(linear, rank, alpha)``.

    Args:
        model: any ``nn.Module``; modified in place and returned.
        linear_names: dotted paths exactly as ``model.named_modules()`` prints them
            (``"encoder.0"``, ``"blocks.1.attn.branch.q"``), each naming an ``nn.Linear``.
        rank, alpha: passed on to :class:`peft_zoo.LoRALinear` (which freezes the base).

    Returns:
        ``(model, params)`` with ``params == [A1, B1, A2, B2, ...]``: the ``lora_A`` and
        ``lora_B`` of each new layer, in the order of ``linear_names``, and nothing else.

    Raises:
        ValueError: naming the problem, when a name does not exist or is not an
            ``nn.Linear``. Raised *before* anything changes: the model is left exactly as it was
            (``get_submodule`` raises ``AttributeError`` for a missing path: turn it into
            a ``ValueError``).

    About 15 lines.
    """
    # BEGIN SOLUTION: resolve and check every name first (ValueError), then swap each Linear for a LoRALinear via its parent
    # 1. Validate everything before changing anything: a failing call leaves the model as it was.
    names, targets = list(linear_names), []
    for name in names:
        try:
            module = model.get_submodule(name)  # follows the dots: "encoder.0" -> model.encoder[0]
        except AttributeError:
            raise ValueError(f"inject_lora: no module named {name!r} in the model") from None
        if not isinstance(module, nn.Linear):
            raise ValueError(f"inject_lora: {name!r} is a {type(module).__name__}, not an nn.Linear")
        targets.append(module)
    # 2. Replace each Linear through its parent ("encoder.0" -> parent "encoder", attribute "0").
    params = []
    for name, linear in zip(names, targets, strict=True):
        parent_name, _, attr = name.rpartition(".")
        layer = LoRALinear(linear, rank, alpha)  # wraps the original object and freezes it
        setattr(model.get_submodule(parent_name), attr, layer)  # get_submodule("") is the model itself
        params += [layer.lora_A, layer.lora_B]  # only the new parameters: no frozen base weight
    return model, params
    # END SOLUTION
