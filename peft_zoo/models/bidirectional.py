"""A small nanoGPT-style encoder: bidirectional attention, RoPE, a padding mask.

Its big matrices can be shared across blocks, each block keeping its own LoRA (see
:mod:`peft_zoo.sharing`), which is what challenge 19 and notebook 06 study.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.checks import check_positive_float, check_positive_int, check_probability
from ..lora import LoRALinear
from ..sharing import MAIN_MATRICES, share_main_matrices


@dataclass
class BidirectionalTransformerConfig:
    """Sizes of a :class:`BidirectionalTransformer`, its per-layer LoRA and whether blocks share weights."""

    vocab_size: int = 64  # token ids are 0..vocab_size-1
    max_len: int = 128  # longest sequence (RoPE tables are built up to this length)
    n_embd: int = 64  # hidden width C
    n_head: int = 4  # attention heads; C / n_head must be even (RoPE rotates pairs)
    n_layer: int = 4  # transformer blocks
    dropout: float = 0.0  # attention-weight and residual dropout
    bias: bool = True  # biases in the linear layers and LayerNorms
    rope_base: float = 10000.0  # RoPE frequency base: theta_i = base^(-2i / head_dim)
    tie_weights: bool = True  # the token head reuses the embedding matrix
    n_classes: int = 0  # > 0 adds a classification head over the masked mean of the final states
    use_lora_attn: bool = False  # LoRA on attn.c_attn and attn.c_proj of every block
    use_lora_mlp: bool = False  # LoRA on mlp.c_fc and mlp.c_proj of every block
    lora_rank: int = 8  # r of every LoRA layer
    lora_alpha: float = 16.0  # LoRA scale numerator: scale = alpha / r
    lora_dropout: float = 0.0  # dropout on the LoRA path's input only
    share_main_matrices: bool = False  # one c_attn, c_proj, c_fc, c_proj for all blocks (ALBERT-style)
    train_main_matrices: bool = True  # False freezes the big matrices (classic LoRA on a pretrained base)


def rope_tables(seq_len: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin`` of the RoPE angles ``m * theta_i``, each ``(seq_len, head_dim // 2)``.

    RoFormer (Su et al., 2021, arXiv:2104.09864): ``theta_i = base^(-2i / d)``, i = 0 .. d/2 - 1.
    """
    theta = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (d/2,)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), theta)  # (T, d/2): m * theta_i
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each feature pair ``(x_i, x_{i + d/2})`` of ``x (B, H, T, d)`` by the angle ``m theta_i``
    of its position m (the "rotate half" pairing of GPT-NeoX and LLaMA); ``cos, sin`` are ``(T, d/2)``.

    As complex numbers ``z_i = x_i + j x_{i + d/2}``: ``z_i <- z_i * exp(j m theta_i)``, so the
    dot product of a rotated query at m and key at n depends on ``m - n`` only.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (B, H, T, d)


class BidirectionalSelfAttention(nn.Module):
    """Non-causal multi-head attention with RoPE, ``(B, T, C) -> (B, T, C)``.

    ``c_attn`` is the fused ``C -> 3C`` projection to q, k, v; ``c_proj`` maps back to ``C``.
    """

    def __init__(self, config: BidirectionalTransformerConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, keep: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        """``keep`` is ``(B, T)`` bool (True = a real token) or None (attend everywhere)."""
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)  # 3 x (B, T, C)
        q, k, v = (
            z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v)
        )  # (B, H, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # positions enter through q and k only
        mask = None
        if keep is not None:
            any_kept = keep.any(dim=1)  # (B,)
            # A row with no real token would softmax over nothing (NaN on some backends): let it
            # attend everywhere, then zero its output below.
            mask = (keep | ~any_kept[:, None])[:, None, None, :]  # (B, 1, 1, T): keys to attend to
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=False
        )  # (B, H, T, hd)
        if keep is not None:
            y = y * any_kept.view(b, 1, 1, 1).to(y.dtype)  # fully masked rows: attention output 0
        y = y.transpose(1, 2).reshape(b, t, c)  # (B, T, C): heads side by side
        return self.resid_dropout(self.c_proj(y))


class BidirectionalMLP(nn.Module):
    """``c_proj(gelu(c_fc(x)))``: ``(B, T, C) -> (B, T, 4C) -> (B, T, C)``."""

    def __init__(self, config: BidirectionalTransformerConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class BidirectionalBlock(nn.Module):
    """Pre-norm block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``; ``(B, T, C) -> (B, T, C)``."""

    def __init__(self, config: BidirectionalTransformerConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = BidirectionalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = BidirectionalMLP(config)

    def forward(
        self, x: torch.Tensor, keep: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), keep, cos, sin)
        return x + self.mlp(self.ln_2(x))


def _check_config(c: BidirectionalTransformerConfig) -> None:
    for name in ("vocab_size", "max_len", "n_embd", "n_head", "n_layer"):
        check_positive_int(getattr(c, name), name)
    if c.n_embd % c.n_head or (c.n_embd // c.n_head) % 2:
        raise ValueError(
            f"n_embd={c.n_embd} must split into n_head={c.n_head} heads of even size (RoPE rotates pairs)"
        )
    n_classes: object = c.n_classes  # whatever the config holds: checked here at run time
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 0:
        raise ValueError(f"n_classes must be an int >= 0, got {n_classes!r}")
    check_probability(c.dropout, "dropout")
    check_positive_float(c.rope_base, "rope_base")
    if c.use_lora_attn or c.use_lora_mlp:
        check_positive_int(c.lora_rank, "lora_rank")
        check_positive_float(c.lora_alpha, "lora_alpha")
        check_probability(c.lora_dropout, "lora_dropout")


class BidirectionalTransformer(nn.Module):
    """An encoder over token ids: ``forward(idx (B, T), attention_mask (B, T)) -> logits (B, T, vocab)``.

    ``attention_mask`` holds 1 = keep (a real token), 0 = masked (padding); no key at a masked
    position is ever attended to, so outputs at kept positions do not depend on what the
    padded positions hold. A row with no kept position gets a zero attention output (never
    NaN) and, in :meth:`classify`, a zero pooled vector (the logits are the head's bias).

    With ``share_main_matrices`` every block uses block 0's ``c_attn``, ``c_proj``, ``c_fc``,
    ``c_proj`` (:func:`peft_zoo.sharing.share_main_matrices`); LayerNorms and each block's
    LoRA stay per block. LoRALinear freezes its base, but this model trains the big matrices
    by default (the shared base is learned from scratch together with the per-layer LoRA);
    set ``train_main_matrices=False`` or call :meth:`freeze_main_matrices` to freeze them.

    Weights start as in nanoGPT (normal, std 0.02; residual projections 0.02 / sqrt(2 n_layer));
    the base weights depend only on the seed, not on the LoRA or sharing settings, and LoRA's
    ``B = 0`` makes a fresh LoRA model compute exactly what the same model without LoRA does.
    """

    rope_cos: torch.Tensor  # (max_len, head_dim / 2) buffer, registered in __init__
    rope_sin: torch.Tensor

    def __init__(self, config: BidirectionalTransformerConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or BidirectionalTransformerConfig()
        _check_config(c)
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(BidirectionalBlock(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        if c.tie_weights:
            self.lm_head.weight = self.wte.weight
        self.cls_head = nn.Linear(c.n_embd, c.n_classes) if c.n_classes else None
        cos, sin = rope_tables(c.max_len, c.n_embd // c.n_head, c.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)  # (max_len, hd/2)
        self.register_buffer("rope_sin", sin, persistent=False)
        self._init_weights()
        self._add_lora()  # after the init, so the base weights do not depend on the LoRA settings
        if c.share_main_matrices and c.n_layer > 1:
            share_main_matrices(list(self.blocks), MAIN_MATRICES)
        for p in self.main_parameters():
            p.requires_grad_(c.train_main_matrices)

    def _init_weights(self) -> None:
        std = 0.02
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                scaled = name.endswith("c_proj")  # residual projections (GPT-2 paper, sec. 2.3)
                nn.init.normal_(
                    module.weight, 0.0, std / math.sqrt(2 * self.config.n_layer) if scaled else std
                )
                bias = getattr(module, "bias", None)  # nn.Embedding has none
                if bias is not None:
                    nn.init.zeros_(bias)

    def _add_lora(self) -> None:
        c = self.config
        targets = []  # (submodule, its linear layers to wrap)
        if c.use_lora_attn:
            targets.append(("attn", ("c_attn", "c_proj")))
        if c.use_lora_mlp:
            targets.append(("mlp", ("c_fc", "c_proj")))
        for block in self.blocks:
            for part, names in targets:
                parent = getattr(block, part)
                for name in names:
                    lora = LoRALinear(
                        getattr(parent, name), c.lora_rank, c.lora_alpha, dropout=c.lora_dropout
                    )
                    setattr(parent, name, lora)

    def main_parameters(self) -> list[nn.Parameter]:
        """The weights and biases of every block's big matrices, each shared tensor once."""
        seen: dict[int, nn.Parameter] = {}
        for block in self.blocks:
            for name in MAIN_MATRICES:
                layer = block.get_submodule(name)
                linear = layer.base if isinstance(layer, LoRALinear) else layer
                for p in (linear.weight, linear.bias):
                    if isinstance(p, nn.Parameter):  # a registered weight or bias is a Parameter or None
                        seen.setdefault(id(p), p)
        return list(seen.values())

    def freeze_main_matrices(self) -> None:
        """Stop training the big matrices (e.g. after a warm-up): LoRA, LayerNorms, the embedding
        and the heads keep training."""
        for p in self.main_parameters():
            p.requires_grad_(False)

    def _check_inputs(self, idx: object, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.is_floating_point():
            raise ValueError(f"idx must be an integer tensor (B, T), got {getattr(idx, 'shape', type(idx))}")
        if idx.shape[1] > self.config.max_len:
            raise ValueError(f"sequence length {idx.shape[1]} exceeds max_len={self.config.max_len}")
        if attention_mask is None:
            return None
        if attention_mask.shape != idx.shape:
            raise ValueError(
                f"attention_mask must have idx's shape {tuple(idx.shape)}, got {tuple(attention_mask.shape)}"
            )
        if not ((attention_mask == 0) | (attention_mask == 1)).all():
            raise ValueError("attention_mask must hold only 1 (keep) and 0 (masked)")
        return attention_mask.bool()

    def encode(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states ``(B, T, C)`` after ``ln_f``."""
        keep = self._check_inputs(idx, attention_mask)
        t = idx.shape[1]
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]  # (T, hd/2)
        x = self.drop(self.wte(idx))  # (B, T, C); no position embedding: RoPE carries positions
        for block in self.blocks:
            x = block(x, keep, cos, sin)
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token logits ``(B, T, vocab_size)`` (e.g. for masked-token prediction)."""
        return self.lm_head(self.encode(idx, attention_mask))

    def classify(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits ``(B, n_classes)`` from the mean of the final states over kept positions."""
        if self.cls_head is None:
            raise ValueError("this model has no classification head: set n_classes > 0 in its config")
        h = self.encode(idx, attention_mask)  # (B, T, C)
        w = torch.ones_like(idx, dtype=h.dtype) if attention_mask is None else attention_mask.to(h.dtype)
        pooled = (h * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp(min=1)  # (B, C); 0 if none kept
        return self.cls_head(pooled)
