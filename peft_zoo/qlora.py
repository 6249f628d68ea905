"""QLoRA: LoRA on a frozen base stored as 4-bit NormalFloat (Dettmers et al., 2023, arXiv:2305.14314).

Paper eq. 5: ``Y = X · dequant(W_NF4) + s · X A^T B^T``. The 4-bit base (the NF4 format,
blockwise absmax scaling and double quantisation are in :mod:`peft_zoo.nf4`) is frozen and
dequantised on the fly into the compute dtype (bfloat16 in the paper); only the LoRA
matrices, kept in higher precision, train. Gradients still flow *through* the frozen base.
:func:`peft_zoo.inject_qlora` puts these layers into a model; :func:`merge_qlora` folds the
update back into float linear layers for export.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .core.checks import check_blocksize, check_float_dtype, check_last_dim, check_weight, linear_features
from .lora import LoRALayer, check_lora_hyperparameters, init_lora_pair, set_lora_hyperparameters
from .nf4 import NF4Linear

__all__ = ["QLoRALinear", "merge_qlora"]


class QLoRALinear(LoRALayer):
    """QLoRA: a frozen NF4 base layer plus a trainable LoRA update in higher precision.

        y = dequant(W_NF4) x + b + scale * B (A dropout(x))       (QLoRA paper, eq. 5)

    Args:
        base: the ``nn.Linear`` (or ``Conv1D``) to adapt. Its weight is quantised into
            ``self.base``, an :class:`NF4Linear` holding buffers; ``base`` itself is not
            kept, so its float weight can be freed. Its bias is kept, frozen. An
            :class:`NF4Linear` (e.g. converted from bitsandbytes) becomes ``self.base`` as it
            is, and then ``blocksize``, ``double_quant`` and ``compute_dtype`` are its own.
        rank, alpha, dropout, rslora: as in :class:`~peft_zoo.LoRALinear` (``scale = alpha / r``
            or ``alpha / sqrt(r)``; alpha defaults to rank).
        blocksize: elements per NF4 block (even; default 64).
        double_quant: also quantise the block constants (default True, as in the paper).
        compute_dtype: dtype the base is dequantised into and multiplied in; default: the
            input's dtype (bfloat16 in the paper's setup).
        adapter_dtype: dtype of ``lora_A`` and ``lora_B`` (default float32).

    Shapes: ``lora_A (rank, in)``, ``lora_B (out, rank)``; ``(..., in) -> (..., out)``.
    The module never merges in place: see :meth:`merge` and :meth:`to_linear`.
    """

    adapter_param_names = ("lora_A", "lora_B")

    def __init__(
        self,
        base: nn.Module,
        rank: int,
        alpha: float | None = None,
        *,
        dropout: float = 0.0,
        rslora: bool = False,
        blocksize: int = 64,
        double_quant: bool = True,
        compute_dtype: torch.dtype | None = None,
        adapter_dtype: torch.dtype = torch.float32,
    ) -> None:
        # Validate every argument before touching ``base`` (NF4Linear only reads it, then
        # freezes its bias).
        if not isinstance(base, NF4Linear):
            linear_features(base, "QLoRALinear base")
        rank, alpha, dropout = check_lora_hyperparameters(rank, alpha, dropout)
        check_blocksize(blocksize)
        check_float_dtype(compute_dtype, "compute_dtype")
        if check_float_dtype(adapter_dtype, "adapter_dtype") is None:
            raise TypeError("adapter_dtype must be a floating-point torch.dtype, got None")
        if isinstance(base, NF4Linear):
            device = base.weight_packed.device
        else:
            device = check_weight(base.weight, "the base weight").device
        super().__init__()

        if isinstance(base, NF4Linear):
            self.base = base
        else:
            self.base = NF4Linear(
                base, blocksize=blocksize, double_quant=double_quant, compute_dtype=compute_dtype
            )
        self.in_features, self.out_features = self.base.in_features, self.base.out_features
        set_lora_hyperparameters(self, rank, alpha, dropout, rslora)
        d_in, d_out = self.in_features, self.out_features
        self.lora_A = nn.Parameter(torch.empty(rank, d_in, device=device, dtype=adapter_dtype))  # (r, in)
        self.lora_B = nn.Parameter(torch.empty(d_out, rank, device=device, dtype=adapter_dtype))  # (out, r)
        self.merged = False  # always: the NF4 base cannot absorb the update (see merge)
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """A ~ Kaiming-uniform, B = 0, so the layer starts equal to its (quantised) base."""
        init_lora_pair(self.lora_A, self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        """The update ``scale * B A``, shape ``(out_features, in_features)``, in the adapter dtype."""
        return (self.lora_B @ self.lora_A) * self.scale

    @property
    def weight(self) -> torch.Tensor:
        """The weight this layer applies, ``dequant(W_NF4) + scale * B A``, ``(out, in)``, float32
        at least. Computed on access; writing into it changes nothing."""
        dtype = torch.promote_types(self.lora_A.dtype, torch.float32)
        return self.base.dequantize_weight(dtype) + self.delta_weight().to(dtype)

    @property
    def bias(self) -> torch.Tensor | None:
        """The base layer's bias (frozen), shape ``(out_features,)``."""
        return self.base.bias

    @property
    def fan_in_fan_out(self) -> bool:
        """Whether the quantised layer was a GPT-2 ``Conv1D`` (what PEFT's config records)."""
        return self.base.fan_in_fan_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``, in ``x.dtype``."""
        check_last_dim(x, self.in_features, "QLoRALinear")
        y = self.base(x)  # (..., out) frozen NF4 path, dequantised on the fly
        h = F.linear(self.lora_dropout(x).to(self.lora_A.dtype), self.lora_A)  # (..., r)
        return y + (F.linear(h, self.lora_B) * self.scale).to(y.dtype)  # (..., out)

    @torch.no_grad()
    def to_linear(self, dtype: torch.dtype | None = None) -> nn.Linear:
        """A plain ``nn.Linear`` computing what this layer computes: weight ``dequant(W_NF4) +
        scale * B A`` formed in float32, then cast to ``dtype`` (default: the base weight's
        original dtype); bias copied. The returned layer owns new tensors."""
        dtype = check_float_dtype(dtype, "dtype") or self.base.weight_dtype
        device = self.lora_A.device
        w = self.weight.to(dtype)  # (out, in)
        out = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, device=device, dtype=dtype
        )
        out.weight.copy_(w)
        if self.bias is not None:
            out.bias.copy_(self.bias)
        return out

    def merge(self) -> None:
        """Refuse: the base is stored as 4-bit codes, so ``W + scale * B A`` cannot be written
        back without re-quantising it, and a LoRA update is usually far smaller than the gap
        between neighbouring NF4 levels: re-quantising would round most of it away."""
        raise RuntimeError(
            "QLoRALinear cannot merge in place: its base weight is stored as 4-bit NF4 codes, and "
            "re-quantising W + scale*BA would round most of the small LoRA update away. Use "
            "layer.to_linear() (or merge_qlora(model)) to get a float nn.Linear with the update folded in."
        )

    def unmerge(self) -> None:
        """Nothing to undo: a QLoRALinear is never merged."""

    def adapter_config(self) -> dict[str, object]:
        return {
            "method": "qlora",
            "rank": self.rank,
            "alpha": self.alpha,
            "rslora": self.rslora,
            "dropout": self.dropout_p,
            "blocksize": self.base.blocksize,
            "double_quant": self.base.double_quant,
        }

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"alpha={self.alpha:g}, scale={self.scale:g}, rslora={self.rslora}, dropout={self.dropout_p:g}"
        )


def merge_qlora(model: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Replace every :class:`QLoRALinear` in ``model`` by its :meth:`~QLoRALinear.to_linear`
    (a float ``nn.Linear`` with the update folded in); return how many were replaced.
    The float weights cost 16 or 32 bits per parameter again: this is for export and serving."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, QLoRALinear)]
    if any(not n for n, _ in found):
        raise ValueError("merge_qlora: the model itself is a QLoRALinear; call model.to_linear() instead")
    built = [(n, m.to_linear(dtype)) for n, m in found]  # all built before any is installed
    for name, linear in built:
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, linear)
    return len(built)
