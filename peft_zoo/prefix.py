"""Prefix tuning: learned vectors placed in front of the sequence (Li & Liang, 2021,
arXiv:2101.00190; prompt tuning, Lester et al., 2021, is the input-embedding form).

    X: (B, L, d)  ->  [P; X]: (B, P + L, d)        P: (prefix_len, d), shared by every row

Every token of the sequence can now attend to ``prefix_len`` extra positions whose
content is trained while the model stays frozen: ``prefix_len * d`` parameters.
:class:`LearnablePrefix` prepends to a hidden-state sequence; :class:`PrefixKV` holds the
per-layer key/value prefixes that prefix tuning proper feeds to attention.
"""

from __future__ import annotations

import torch
from torch import nn

from .core.base import AdapterModule
from .core.checks import check_float_dtype, check_nonnegative_float, check_positive_int


def _check_hidden(x: object, d_model: int) -> torch.Tensor:
    """``x`` if it is a floating-point ``(B, L, d_model)`` tensor, else raise."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"LearnablePrefix expects a floating-point tensor (B, L, {d_model}), got {got}")
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(f"LearnablePrefix expects input of shape (B, L, {d_model}), got {tuple(x.shape)}")
    return x


def _check_mask(mask: object) -> torch.Tensor:
    """``mask`` if it is a ``(B, L)`` tensor, else raise."""
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"extend_mask expects a padding mask of shape (B, L), got {got}")
    return mask


class LearnablePrefix(AdapterModule):
    """Prepend a trainable ``(prefix_len, d_model)`` prefix to every sequence in the batch.

    The prefix is drawn from ``N(0, init_std^2)``; ``init_std`` must be a finite number >= 0
    and ``dtype`` a floating-point dtype (or None).

    ``forward``: ``(B, L, d_model) -> (B, prefix_len + L, d_model)``, prefix first. Each
    batch row gets its own copy (``torch.cat`` copies), and gradients from every row sum
    into the one shared parameter.
    """

    def __init__(
        self,
        prefix_len: int,
        d_model: int,
        *,
        init_std: float = 0.02,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.prefix_len = check_positive_int(prefix_len, "prefix_len")
        self.d_model = check_positive_int(d_model, "d_model")
        init_std = check_nonnegative_float(init_std, "LearnablePrefix init_std")
        check_float_dtype(dtype, "LearnablePrefix dtype")
        super().__init__()
        self.prefix = nn.Parameter(torch.empty(prefix_len, d_model, device=device, dtype=dtype))
        nn.init.normal_(self.prefix, std=init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, d_model) -> (B, prefix_len + L, d_model)``."""
        x = _check_hidden(x, self.d_model)
        p = self.prefix.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)  # (B, P, d)
        return torch.cat([p, x], dim=1)  # (B, P + L, d)

    def extend_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Extend a padding mask ``(B, L)`` (1 = keep) to ``(B, prefix_len + L)``: prefix
        positions are always kept."""
        mask = _check_mask(mask)
        ones = torch.ones(mask.shape[0], self.prefix_len, dtype=mask.dtype, device=mask.device)
        return torch.cat([ones, mask], dim=1)

    def adapter_config(self) -> dict[str, object]:
        return {"method": "prefix", "prefix_len": self.prefix_len, "d_model": self.d_model}

    def extra_repr(self) -> str:
        return f"prefix_len={self.prefix_len}, d_model={self.d_model}"


class PrefixKV(AdapterModule):
    """Trainable key and value prefixes for one attention layer.

    Holds ``key`` and ``value`` of shape ``(num_heads, prefix_len, head_dim)``;
    ``forward(k, v)`` maps ``(B, H, L, Dh)`` keys and values to ``(B, H, prefix_len + L, Dh)``.
    Queries are left alone, so the output sequence length does not change.
    """

    def __init__(
        self,
        prefix_len: int,
        num_heads: int,
        head_dim: int,
        *,
        init_std: float = 0.02,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.prefix_len = check_positive_int(prefix_len, "prefix_len")
        self.num_heads = check_positive_int(num_heads, "num_heads")
        self.head_dim = check_positive_int(head_dim, "head_dim")
        init_std = check_nonnegative_float(init_std, "PrefixKV init_std")
        check_float_dtype(dtype, "PrefixKV dtype")
        super().__init__()
        shape = (num_heads, prefix_len, head_dim)
        self.key = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        self.value = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        nn.init.normal_(self.key, std=init_std)
        nn.init.normal_(self.value, std=init_std)

    def forward(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``k, v: (B, H, L, Dh) -> (B, H, prefix_len + L, Dh)`` each."""
        expected = (self.num_heads, self.head_dim)
        for name, t in (("k", k), ("v", v)):
            if t.dim() != 4 or (t.shape[1], t.shape[3]) != expected:
                raise ValueError(
                    f"PrefixKV expects {name} of shape (B, {self.num_heads}, L, {self.head_dim}), "
                    f"got {tuple(t.shape)}"
                )
        if k.shape != v.shape:  # same batch and length: one value per key
            raise ValueError(
                f"PrefixKV expects k and v of the same shape (B, {self.num_heads}, L, "
                f"{self.head_dim}), got k {tuple(k.shape)} and v {tuple(v.shape)}"
            )
        b = k.shape[0]
        pk = self.key.to(k.dtype).unsqueeze(0).expand(b, -1, -1, -1)  # (B, H, P, Dh)
        pv = self.value.to(v.dtype).unsqueeze(0).expand(b, -1, -1, -1)
        return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)

    def adapter_config(self) -> dict[str, object]:
        return {
            "method": "prefix_kv",
            "prefix_len": self.prefix_len,
            "num_heads": self.num_heads,
            "head_dim": self.head_dim,
        }

    def extra_repr(self) -> str:
        return f"prefix_len={self.prefix_len}, num_heads={self.num_heads}, head_dim={self.head_dim}"
