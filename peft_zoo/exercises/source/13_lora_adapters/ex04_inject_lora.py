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
  and nothing else; ``model.parameters()`` would also hand it every frozen weight;
- freeze everything that is not an adapter, as PEFT's ``inject_adapter_in_model`` does.
  ``LoRALinear`` freezes only the layer it wraps: the rest of the model (other Linears,
  embeddings, norms, biases) would still train, and backward would compute a gradient for
  every one of those weights for nothing. After the call, ``requires_grad=True`` must mark
  exactly the returned parameters.
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
        Every other parameter of ``model`` ends frozen (``requires_grad=False``), so the
        trainable parameters are exactly ``params``. (Any way of freezing is fine: freeze the
        whole model and re-enable ``params``, or freeze each parameter that is not LoRA's.)

    Raises:
        ValueError: naming the problem, when a name does not exist or is not an
            ``nn.Linear``. Raised *before* anything changes: the model is left exactly as it was,
            ``requires_grad`` flags included (``get_submodule`` raises ``AttributeError`` for a
            missing path: turn it into a ``ValueError``).

    About 18 lines.
    """
    # BEGIN SOLUTION: check every name first (ValueError), swap each Linear for a LoRALinear via its parent, freeze the rest
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
    # 3. Freeze everything else (as PEFT does): only the new LoRA parameters train.
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return model, params
    # END SOLUTION
