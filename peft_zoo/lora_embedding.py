"""LoRA on a token embedding (Hu et al., 2021, arXiv:2106.09685, section 4; as Hugging Face
PEFT's ``lora.Embedding`` implements it).

An embedding is a linear map applied to one-hot inputs: row ``i`` of ``W0`` (vocab, dim) is
``W0^T e_i``. LoRA adds a low-rank update to that map::

    y[t] = W0[x[t]] + scale * B A[:, x[t]]     A: (r, vocab), B: (dim, r)
         = W0[x[t]] + scale * (A^T[x[t]] @ B^T)

so the LoRA path is itself an embedding lookup into ``A^T`` (vocab, r) followed by a
``(r -> dim)`` projection. The lookup uses the base's ``padding_idx``, ``max_norm``,
``norm_type``, ``scale_grad_by_freq`` and ``sparse``, so the padding column of ``A`` never
receives a gradient, exactly as the padding row of ``W0`` does not.

``scale = alpha / r`` (``alpha / sqrt(r)`` with rsLoRA, Kalajdzievski, 2023). Initialisation
is the transpose of the linear case: ``A = 0`` and ``B ~ N(0, 1)``, so ``ΔW = 0`` at the start
and the first gradient reaches ``A`` (through the non-zero ``B``). Only ``A`` and ``B`` train:
``r * (vocab + dim)`` parameters instead of ``vocab * dim``.

Merging adds ``ΔW^T = scale * (B A)^T`` (vocab, dim) to ``W0``; unmerging subtracts it. As in
PEFT, there is no dropout on the LoRA path of an embedding (dropping token ids makes no sense).
A base that multiplies its lookups by a scalar ``embed_scale`` (Gemma's scaled word
embeddings, ``sqrt(dim)``) gets the LoRA path multiplied by it too, as PEFT does, so the
merged table gives the same outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .core.base import AdditiveAdapter, add_delta_, refuse_training_merged
from .core.checks import check_bool
from .lora import check_lora_hyperparameters, lora_scale


def _embed_scale(base: nn.Embedding) -> torch.Tensor | None:
    """The scalar ``base.embed_scale`` as a tensor (``None`` when the base has none); a
    non-scalar one is refused, since the LoRA path could not follow it."""
    scale: object = getattr(base, "embed_scale", None)
    if scale is None:
        return None
    if isinstance(scale, int | float) and not isinstance(scale, bool):
        return torch.tensor(scale, device=base.weight.device, dtype=base.weight.dtype)
    if isinstance(scale, torch.Tensor) and scale.numel() == 1:
        return scale
    raise ValueError(
        f"LoRAEmbedding: the base's embed_scale must be a number or a one-element tensor, got {scale!r}"
    )


def _check_ids(x: object) -> None:
    """Raise a TypeError unless ``x`` is a tensor of int64 / int32 token ids."""
    if not isinstance(x, torch.Tensor) or x.dtype not in (torch.int32, torch.int64):
        what = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"LoRAEmbedding expects a tensor of int64 or int32 token ids, got {what}")


class LoRAEmbedding(AdditiveAdapter):
    """An ``nn.Embedding`` with a trainable low-rank update; the base layer is frozen.

    Args:
        base: the embedding to adapt; kept as ``self.base`` with ``requires_grad=False``.
        rank: ``r`` > 0, the inner dimension of ``B A``.
        alpha: scaling numerator; defaults to ``rank`` (so ``scale == 1``).
        rslora: use ``alpha / sqrt(rank)`` instead of ``alpha / rank``.

    Shapes (PEFT's names and layouts): ``lora_embedding_A (rank, num_embeddings)``,
    ``lora_embedding_B (embedding_dim, rank)``; ``forward`` maps integer ids ``(...)`` to
    ``(..., embedding_dim)``. ``in_features == num_embeddings`` and
    ``out_features == embedding_dim``, as in PEFT. The adapter tensors take the base weight's
    dtype and device.
    """

    adapter_param_names: tuple[str, ...] | None = ("lora_embedding_A", "lora_embedding_B")

    def __init__(
        self, base: nn.Embedding, rank: int, alpha: float | None = None, *, rslora: bool = False
    ) -> None:
        # Validate everything before touching ``base``.
        if not isinstance(base, nn.Embedding):
            raise TypeError(f"LoRAEmbedding base must be an nn.Embedding, got {type(base).__name__}")
        rank, alpha, _ = check_lora_hyperparameters(rank, alpha, 0.0)
        check_bool(rslora, "rslora")
        _embed_scale(base)
        super().__init__()

        self.base = base
        self.num_embeddings = self.in_features = base.num_embeddings
        self.embedding_dim = self.out_features = base.embedding_dim
        self.rank, self.alpha, self.rslora = rank, alpha, rslora
        self.scale = lora_scale(rank, alpha, rslora)
        w = base.weight
        self.lora_embedding_A = nn.Parameter(
            torch.empty(rank, self.num_embeddings, device=w.device, dtype=w.dtype)
        )
        self.lora_embedding_B = nn.Parameter(
            torch.empty(self.embedding_dim, rank, device=w.device, dtype=w.dtype)
        )
        self.merged = False
        self.reset_lora_parameters()
        self.base.requires_grad_(False)  # last: a failed constructor leaves ``base`` as it was

    def reset_lora_parameters(self) -> None:
        """A = 0, B ~ N(0, 1) (PEFT's and loralib's embedding init), so ΔW = 0."""
        nn.init.zeros_(self.lora_embedding_A)
        nn.init.normal_(self.lora_embedding_B)

    def _delta(self, dtype: torch.dtype) -> torch.Tensor:
        return (
            self.lora_embedding_B.to(dtype) @ self.lora_embedding_A.to(dtype)
        ) * self.scale  # (dim, vocab)

    def delta_weight(self) -> torch.Tensor:
        """The update ``scale * B A``, shape ``(embedding_dim, num_embeddings)`` =
        ``(out_features, in_features)`` like every LoRA layer here; the base weight
        ``(num_embeddings, embedding_dim)`` receives its transpose on merge."""
        return self._delta(self.lora_embedding_A.dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The table this layer looks up, ``W0 + ΔW^T``, shape ``(num_embeddings, embedding_dim)``.
        Computed on access; writing into it changes nothing."""
        w = self.base.weight
        return w if self.merged else w + self.delta_weight().T

    def _add_to_base(self, sign: float) -> None:
        # Half-precision products lose bits; form the update and the sum in float32 at least.
        delta = self._delta(torch.promote_types(self.lora_embedding_A.dtype, torch.float32)).T
        add_delta_(self.base.weight, delta, sign)

    def _lookup_A(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of ``A^T`` (vocab, r) for the ids ``x``, with the base's lookup options."""
        b = self.base
        return F.embedding(
            x,
            self.lora_embedding_A.T,
            padding_idx=b.padding_idx,
            max_norm=b.max_norm,
            norm_type=b.norm_type,
            scale_grad_by_freq=b.scale_grad_by_freq,
            sparse=b.sparse,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Integer ids ``(...)`` -> ``(..., embedding_dim)``."""
        _check_ids(x)
        if self.merged:
            refuse_training_merged(self, (self.lora_embedding_A, self.lora_embedding_B), "LoRA weights")
            return self.base(x)
        result = self.base(x)  # range errors for ids come from here, before the LoRA path
        after_A = self._lookup_A(x)  # (..., r)
        update = (after_A @ self.lora_embedding_B.T) * self.scale  # (..., dim)
        embed_scale = _embed_scale(self.base)
        if embed_scale is not None:  # the base scales its lookups: scale the update alike
            update = update * embed_scale.to(update.dtype)
        return result + update

    def adapter_config(self) -> dict[str, object]:
        # The same method as LoRA on a linear layer (one PEFT ``LoraConfig`` covers both);
        # an embedding has no dropout on its LoRA path.
        return {
            "method": "lora",
            "rank": self.rank,
            "alpha": self.alpha,
            "rslora": self.rslora,
            "dropout": 0.0,
        }

    def extra_repr(self) -> str:
        return (
            f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}, rank={self.rank}, "
            f"alpha={self.alpha:g}, scale={self.scale:g}, rslora={self.rslora}, merged={self.merged}"
        )
