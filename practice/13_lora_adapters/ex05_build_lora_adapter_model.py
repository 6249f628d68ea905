# Challenge 05 · build_lora_adapter_model: LoRA + an optional adapter, all else frozen. Replace each TODO(ex05) with your code, then run:
#     peft-zoo check 5        (or: pytest practice/13_lora_adapters/test_ex05_build_lora_adapter_model.py)
# Stuck? `peft-zoo hint 5`. Start over: `peft-zoo reset 5` (your file is backed up).
"""Combining methods: LoRA inside the model, a bottleneck adapter around it, all else frozen.

PEFT methods compose. LoRA changes *how* chosen layers compute (a low-rank update of their
weights); a serial adapter adds a small *new* computation on the residual stream:

    model(x) = h + delta(h),   h = x + base_lora(x)     (AdapterBlock(base, adapter))

The job of a "build" function is bookkeeping, and it is where real fine-tuning runs go
wrong silently:

- freeze first, then unfreeze exactly what should train. ``LoRALinear`` freezes only the
  layer it wraps; every other weight of the base (embeddings, LayerNorms, untouched
  Linears) is still trainable until you say otherwise, and a fresh ``BottleneckAdapter``
  is trainable too. ``model.requires_grad_(False)`` then re-enabling the new parameters
  makes the trainable set exactly what you decided;
- return exactly that set, so ``torch.optim.AdamW(params)`` sees nothing else (and check
  it with :func:`peft_zoo.print_trainable_parameters`).
"""

from __future__ import annotations

from torch import nn

from peft_zoo import AdapterBlock, BottleneckAdapter, inject_lora


def build_lora_adapter_model(
    base: nn.Module,
    lora_names: list[str],
    rank: int,
    alpha: float | None = None,
    adapter_bottleneck: int | None = None,
) -> tuple[nn.Module, list[nn.Parameter]]:
    """LoRA on the named linears of ``base``, plus (optionally) a serial adapter around it.

    Steps:
        1. ``peft_zoo.inject_lora(base, lora_names, rank, alpha)`` (in place; at least one name);
        2. if ``adapter_bottleneck`` is not None: ``model = AdapterBlock(base,
           BottleneckAdapter(base.d_model, adapter_bottleneck))`` (``base`` maps
           ``(..., d_model) -> (..., d_model)`` and has a ``d_model`` attribute); otherwise
           ``model = base``;
        3. freeze every parameter of ``model``, then make exactly the LoRA and adapter
           parameters trainable.

    Returns:
        ``(model, params)``: ``params`` are exactly the trainable parameters, LoRA first
        (as ``inject_lora`` returns them), then the adapter's (``adapter.parameters()``
        order), each once.

    About 10 lines.
    """
    # TODO(ex05): inject LoRA; optionally wrap base in an AdapterBlock; freeze all; unfreeze exactly the new parameters
    raise NotImplementedError("ex05 (build_lora_adapter_model): build_lora_adapter_model is not implemented yet")
