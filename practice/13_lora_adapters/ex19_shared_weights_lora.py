# Challenge 19 · shared_weights_lora: one set of big matrices for every block, a LoRA per layer. Replace each TODO(ex19) with your code, then run:
#     peft-zoo check 19        (or: pytest practice/13_lora_adapters/test_ex19_shared_weights_lora.py)
# Stuck? `peft-zoo hint 19`. Start over: `peft-zoo reset 19` (your file is backed up).
"""Shared weights with a LoRA per layer: one set of big matrices serves every block.

ALBERT (Lan et al., 2020, arXiv:1909.11942) shares one block's weights across all layers of
a transformer. Here only the *big* matrices are shared, and each block keeps what is cheap
and lets it differ from its neighbours, its LayerNorms and its own LoRA:

    block l:  attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj    -> block 0's weight and bias
              ln_1, ln_2                                         -> its own
              LoRA A_l, B_l (when the layer is a LoRALinear)     -> its own
    so layer l computes (W + scale B_l A_l) x with one W for all layers.

Share by *aliasing*: make block l's layer hold the very ``nn.Parameter`` object of block 0
(``layer.weight = source.weight``). Then the model stores the tensor once,
``blocks.parameters()`` yields it once, an optimizer updates it once, and autograd adds the
gradient of every use into its single ``.grad``: the sum over layers. Copying values
(``.data.copy_``, ``.clone()``) only makes the blocks equal until the first optimizer step.

The blocks below are given (a small pre-norm transformer block; ``make_blocks`` builds a
stack, optionally with LoRALinear on the attention or MLP matrices). Write
``share_main_matrices``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from peft_zoo import LoRALinear

# The big matrices of a block, as dotted paths inside it.
MAIN_MATRICES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


class Attention(nn.Module):
    """Bidirectional multi-head attention, ``(B, T, C) -> (B, T, C)``; fused ``c_attn`` C -> 3C."""

    def __init__(self, n_embd: int, n_head: int, bias: bool = True) -> None:
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (
            z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in self.c_attn(x).split(c, 2)
        )
        y = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, C / H), non-causal
        return self.c_proj(y.transpose(1, 2).reshape(b, t, c))


class MLP(nn.Module):
    """``c_proj(gelu(c_fc(x)))``: ``(B, T, C) -> (B, T, 4C) -> (B, T, C)``."""

    def __init__(self, n_embd: int, bias: bool = True) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    """Pre-norm block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, n_embd: int, n_head: int, bias: bool = True) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = Attention(n_embd, n_head, bias)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


def make_blocks(
    n_layer: int,
    n_embd: int,
    n_head: int = 2,
    *,
    bias: bool = True,
    lora_attn: bool = False,
    lora_mlp: bool = False,
    rank: int = 2,
) -> nn.ModuleList:
    """``n_layer`` blocks, each with its own freshly initialised weights; with ``lora_attn`` /
    ``lora_mlp`` the attention / MLP matrices are wrapped in a ``LoRALinear`` of rank ``rank``."""
    blocks = nn.ModuleList(Block(n_embd, n_head, bias) for _ in range(n_layer))
    for block in blocks:
        for part, on in (("attn", lora_attn), ("mlp", lora_mlp)):
            module = getattr(block, part)
            for name in ("c_attn", "c_proj") if part == "attn" else ("c_fc", "c_proj"):
                if on:
                    setattr(module, name, LoRALinear(getattr(module, name), rank))
    return blocks


def main_linear(module: nn.Module) -> nn.Linear:
    """The ``nn.Linear`` holding a big matrix: the module itself, or a LoRALinear's frozen ``base``."""
    return module.base if isinstance(module, LoRALinear) else module


def share_main_matrices(blocks: Sequence[nn.Module], names: Sequence[str] = MAIN_MATRICES) -> None:
    """Make every block use block 0's ``weight`` and ``bias`` Parameters for each named layer.

    Args:
        blocks: the stack (an ``nn.ModuleList`` from ``make_blocks``), modified in place.
        names: dotted paths inside a block (``"attn.c_attn"``); each names an ``nn.Linear`` or a
            ``LoRALinear`` around one (then share its ``base``: the LoRA A and B stay per block).

    Only the named layers are shared; LayerNorms, LoRA A/B and unnamed layers stay per block,
    and block 0's values stay exactly as they were.

    Raise ``ValueError`` before changing anything when there are fewer than 2 blocks, when a
    block has no layer of a given name (say which), or when a layer's weight shape or bias
    presence differs from block 0's (a call that raises leaves every block as it was).
    About 18 lines.
    """
    # TODO(ex19): check everything first: >= 2 blocks, each name in each block, same shapes and bias
    raise NotImplementedError("ex19 (shared_weights_lora): share_main_matrices is not implemented yet")
    # TODO(ex19): alias block 0's weight and bias Parameter objects into the other blocks (no copies)
    raise NotImplementedError("ex19 (shared_weights_lora): share_main_matrices is not implemented yet")
