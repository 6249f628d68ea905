# Challenge 04 · inject_lora: replace named Linear layers with LoRALinear. Replace each TODO(ex04) with your code, then run:
#     peft-zoo check 4        (or: pytest practice/13_lora_adapters/test_ex04_inject_lora.py)
# Stuck? `peft-zoo hint 4`. Start over: `peft-zoo reset 4` (your file is backed up).
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
    # TODO(ex04): resolve and check every name first (ValueError), then swap each Linear for a LoRALinear via its parent
    raise NotImplementedError("ex04 (inject_lora): inject_lora is not implemented yet")
