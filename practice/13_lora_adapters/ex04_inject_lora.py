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
    # TODO(ex04): check every name first (ValueError), swap each Linear for a LoRALinear via its parent, freeze the rest
    raise NotImplementedError("ex04 (inject_lora): inject_lora is not implemented yet")
