"""VeRA: vector-based random matrix adaptation (Kopiczko et al., 2023, arXiv:2310.11454).

LoRA trains a pair ``B A`` per layer. VeRA freezes one *random* pair, shared by every
adapted layer, and trains only two scaling vectors per layer::

    y = W0 x + b + Λb B Λd A x          A: (r, in), B: (out, r)   frozen, random, shared
                                        Λd = diag(lambda_d), lambda_d: (r,)    trainable
                                        Λb = diag(lambda_b), lambda_b: (out,)  trainable

so a layer trains ``r + out`` numbers instead of LoRA's ``r * (in + out)``, and ``r`` can
be large (PEFT's default is 256) at almost no cost. ``lambda_b`` starts at zero, so at
initialisation ``ΔW = Λb B Λd A = 0`` and the layer equals its base; ``lambda_d`` starts at
a small constant ``d_initial`` (0.1 in the paper's Table 7) so that ``lambda_b`` gets a
gradient from the first step.

One pair for layers of different shapes: :class:`VeraProjections` generates
``A (r, in_max)`` and ``B (out_max, r)`` for the largest input and output sizes among the
adapted layers, and each layer slices its own corner, ``A[:, :in]`` and ``B[:out, :]``
(as Hugging Face PEFT's ``VeraModel`` does). A layer larger than the shared pair cannot be
served from it, and :class:`VeRALinear` refuses one.

The pair is a pure function of ``(r, in_max, out_max, seed)``: PEFT 0.21.2 seeds a CPU
``torch.Generator`` with ``projection_prng_key`` and draws ``A`` then ``B`` from it, each
Kaiming-uniform over its own fan-in, ``U(-sqrt(6 / fan_in), +sqrt(6 / fan_in))`` with
``fan_in = in_max`` for ``A`` and ``r`` for ``B``. :func:`vera_projection_pair` does exactly
that, so a seed alone reproduces PEFT's matrices.

Merging folds the update into the base weight, ``W0 <- W0 + (lambda_b ⊙ B) (lambda_d ⊙ A)``;
unmerging subtracts it again.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .core.base import AdditiveAdapter, add_delta_, refuse_training_merged
from .core.checks import (
    bias_of,
    check_last_dim,
    check_module,
    check_positive_int,
    check_probability,
    linear_features,
    weight_of,
)

__all__ = ["VeRALinear", "VeraProjections", "vera_projection_pair"]

_MAX_SEED = 2**64  # torch.Generator.manual_seed accepts seeds below this


def check_seed(value: object, name: str = "seed") -> int:
    """Return ``value`` if it is an int in ``[0, 2**64)`` (``bool`` refused), else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= 0, got {value!r} of type {type(value).__name__}")
    seed = int(value)
    if not 0 <= seed < _MAX_SEED:
        raise ValueError(f"{name} must be in [0, 2**64), got {seed}")
    return seed


def check_d_initial(value: object) -> float:
    """Return ``value`` as a float if it is finite and nonzero. With ``lambda_d = 0`` (and
    ``lambda_b = 0`` as VeRA starts) neither vector ever gets a gradient: the layer cannot train."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"d_initial must be a number, got {value!r} of type {type(value).__name__}")
    if not math.isfinite(value) or value == 0:
        raise ValueError(
            f"d_initial must be a finite nonzero number, got {value}: with lambda_d = 0 and "
            "lambda_b = 0 neither scaling vector ever receives a gradient"
        )
    return float(value)


def _seeded_kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """A tensor of ``shape`` (default dtype, CPU) drawn from ``U(-bound, bound)`` with
    ``bound = sqrt(3) * sqrt(2) / sqrt(fan_in)`` and ``fan_in = shape[1]``, the same arithmetic
    as PEFT's ``_kaiming_init`` so the bound is bit-identical."""
    tensor = torch.empty(shape)
    std = math.sqrt(2) / math.sqrt(shape[1])
    bound = math.sqrt(3.0) * std
    with torch.no_grad():
        return tensor.uniform_(-bound, bound, generator=generator)


def vera_projection_pair(
    rank: int, in_features: int, out_features: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen pair ``(A (rank, in_features), B (out_features, rank))`` for ``seed``,
    generated as PEFT 0.21.2 does for ``projection_prng_key=seed``: one CPU generator, ``A``
    drawn first, then ``B``, each Kaiming-uniform over its fan-in. Tensors in the default
    dtype (float32 unless changed), on the CPU."""
    rank = check_positive_int(rank, "rank")
    in_features = check_positive_int(in_features, "in_features")
    out_features = check_positive_int(out_features, "out_features")
    generator = torch.Generator(device="cpu").manual_seed(check_seed(seed))
    vera_A = _seeded_kaiming_uniform((rank, in_features), generator)
    vera_B = _seeded_kaiming_uniform((out_features, rank), generator)
    return vera_A, vera_B


class VeraProjections(nn.Module):
    """The frozen random pair every :class:`VeRALinear` of one model shares.

    Args:
        rank: ``r`` > 0, the inner dimension.
        in_features: the largest input size of the layers it will serve (``in_max``).
        out_features: the largest output size of the layers it will serve (``out_max``).
        seed: the PRNG seed (PEFT's ``projection_prng_key``), an int in ``[0, 2**64)``.

    Buffers (persistent, never trained): ``vera_A (rank, in_features)`` and
    ``vera_B (out_features, rank)``, from :func:`vera_projection_pair`. Moving or casting the
    holder (``.to(...)``) moves the pair for every layer that shares it.
    """

    vera_A: torch.Tensor
    vera_B: torch.Tensor

    def __init__(self, rank: int, in_features: int, out_features: int, *, seed: int = 0) -> None:
        vera_A, vera_B = vera_projection_pair(rank, in_features, out_features, seed)
        super().__init__()
        self.rank, self.in_features, self.out_features = int(rank), int(in_features), int(out_features)
        self.seed = int(seed)
        self.register_buffer("vera_A", vera_A)  # (r, in_max)
        self.register_buffer("vera_B", vera_B)  # (out_max, r)

    @classmethod
    def covering(cls, layers: Iterable[nn.Module], rank: int, *, seed: int = 0) -> VeraProjections:
        """A pair large enough for every layer in ``layers`` (``nn.Linear`` or ``Conv1D``):
        ``in_max`` and ``out_max`` are the largest sizes among them, as PEFT's ``_find_dim``
        computes them over the targeted layers. Raises ``ValueError`` when ``layers`` is empty."""
        sizes = [linear_features(layer, "VeraProjections.covering layer")[:2] for layer in layers]
        if not sizes:
            raise ValueError("VeraProjections.covering needs at least one layer to size the shared pair")
        return cls(rank, max(s[0] for s in sizes), max(s[1] for s in sizes), seed=seed)

    def check_fits(self, in_features: int, out_features: int, what: str) -> None:
        """Raise ``ValueError`` when a layer ``(in_features -> out_features)`` is larger than the
        pair: slicing ``A[:, :in]`` or ``B[:out]`` would silently return a smaller matrix."""
        if in_features > self.in_features or out_features > self.out_features:
            raise ValueError(
                f"{what}: the layer maps {in_features} -> {out_features} features, but the shared "
                f"VeRA projections only cover {self.in_features} -> {self.out_features} "
                f"(vera_A {tuple(self.vera_A.shape)}, vera_B {tuple(self.vera_B.shape)}); build "
                "them for the largest layer, e.g. with VeraProjections.covering(layers, rank)"
            )

    def extra_repr(self) -> str:
        return f"rank={self.rank}, in_features={self.in_features}, out_features={self.out_features}, seed={self.seed}"


class VeRALinear(AdditiveAdapter):
    """An ``nn.Linear`` (or GPT-2 ``Conv1D``) with a VeRA update; the base layer is frozen.

    Args:
        base: the layer to adapt; kept as ``self.base`` with ``requires_grad=False``.
        projections: the shared :class:`VeraProjections`; it must cover this layer's sizes.
            Held as ``self.projections`` (the same object in every layer that shares it).
        d_initial: the initial value of every entry of ``lambda_d`` (finite, nonzero).
        dropout: probability in ``[0, 1)`` of dropping inputs *of the VeRA path only*.
        fan_in_fan_out: the base stores its weight as ``(in, out)`` (GPT-2's ``Conv1D``);
            ``None`` (default) infers it from the base's type.

    Parameters (PEFT's names): ``vera_lambda_d (rank,)`` filled with ``d_initial`` and
    ``vera_lambda_b (out_features,)`` zeros, in the base weight's dtype and device: ``rank +
    out_features`` trainable numbers. ``forward`` maps ``(..., in_features) -> (..., out_features)``.
    ``merge()`` sums in float32 at least and rounds once (PEFT adds an already rounded delta in
    half precision, so a bfloat16 merge may differ from PEFT's by one step).
    """

    adapter_param_names = ("vera_lambda_b", "vera_lambda_d")

    def __init__(
        self,
        base: nn.Module,
        projections: VeraProjections,
        *,
        d_initial: float = 0.1,
        dropout: float = 0.0,
        fan_in_fan_out: bool | None = None,
    ) -> None:
        # Validate everything before touching ``base``.
        d_in, d_out, fan_in_fan_out = linear_features(base, "VeRALinear base", fan_in_fan_out)
        if not isinstance(check_module(projections, "VeRALinear projections"), VeraProjections):
            raise TypeError(
                f"VeRALinear projections must be a VeraProjections, got {type(projections).__name__}"
            )
        projections.check_fits(d_in, d_out, "VeRALinear")
        d_initial = check_d_initial(d_initial)
        dropout = check_probability(dropout, "dropout")
        super().__init__()

        self.base = base
        self.projections = projections
        self.in_features, self.out_features = d_in, d_out
        self.rank = projections.rank
        self.fan_in_fan_out = fan_in_fan_out
        self.d_initial, self.dropout_p = d_initial, dropout
        self.vera_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        w = weight_of(base)
        self.vera_lambda_b = nn.Parameter(torch.zeros(d_out, device=w.device, dtype=w.dtype))  # (out,)
        # PEFT fills lambda_d in the default dtype and then casts it to the base's: do the same,
        # so a float64 layer starts from d_initial rounded to float32 exactly as PEFT's does.
        lambda_d = torch.full((self.rank,), d_initial).to(device=w.device, dtype=w.dtype)  # (r,)
        self.vera_lambda_d = nn.Parameter(lambda_d)
        self.merged = False
        self.base.requires_grad_(False)  # last: a failed constructor leaves the caller's flags

    def sliced_projections(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's corner of the shared pair, ``A[:, :in] (rank, in)`` and
        ``B[:out, :] (out, rank)``, on the device and in the dtype of ``vera_lambda_d``."""
        # Cast the whole pair, then slice (a no-op cast when the holder already has the lambdas'
        # dtype): PEFT casts its shared buffers to the base dtype once and slices views of them,
        # and the same memory layout gives bit-identical products.
        lam = self.vera_lambda_d
        sliced_A = self.projections.vera_A.to(lam.device, lam.dtype)[:, : self.in_features]
        sliced_B = self.projections.vera_B.to(lam.device, lam.dtype)[: self.out_features, :]
        return sliced_A, sliced_B

    def _delta(self, dtype: torch.dtype) -> torch.Tensor:
        sliced_A, sliced_B = (t.to(dtype) for t in self.sliced_projections())
        lambda_b = self.vera_lambda_b.to(dtype).unsqueeze(-1)  # (out, 1)
        lambda_d = self.vera_lambda_d.to(dtype).unsqueeze(-1)  # (r, 1)
        return (lambda_b * sliced_B) @ (lambda_d * sliced_A)  # (out, in)

    def delta_weight(self) -> torch.Tensor:
        """``ΔW = (lambda_b ⊙ B) (lambda_d ⊙ A)``, shape ``(out_features, in_features)``, in the
        adapter dtype (PEFT's ``get_delta_weight``, which transposes for ``fan_in_fan_out``).
        Formed in float32 at least and rounded once, as PEFT does for half precision on the CPU."""
        dtype = self.vera_lambda_d.dtype
        return self._delta(torch.promote_types(dtype, torch.float32)).to(dtype)

    def _layout(self, delta: torch.Tensor) -> torch.Tensor:
        """``delta`` (out, in) in the base weight's layout."""
        return delta.T if self.fan_in_fan_out else delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``, PEFT's order of operations:
        ``base(x) + lambda_b * linear(lambda_d * linear(dropout(x), A_s), B_s)``."""
        check_last_dim(x, self.in_features, "VeRALinear")
        if self.merged:
            refuse_training_merged(self, (self.vera_lambda_b, self.vera_lambda_d), "lambda vectors")
            return self.base(x)
        result = self.base(x)  # (..., out)
        sliced_A, sliced_B = self.sliced_projections()
        h = self.vera_lambda_d * F.linear(
            self.vera_dropout(x.to(self.vera_lambda_d.dtype)), sliced_A
        )  # (..., r)
        return (result + self.vera_lambda_b * F.linear(h, sliced_B)).to(result.dtype)  # (..., out)

    @property
    def weight(self) -> torch.Tensor:
        """The weight this layer applies, ``W0 + ΔW``, in the base's own layout. Computed on
        access (see ``LoRALinear.weight``); writing into it changes nothing."""
        w = weight_of(self.base)
        return w if self.merged else w + self._layout(self.delta_weight()).to(w.dtype)

    @property
    def bias(self) -> torch.Tensor | None:
        """The base layer's bias (VeRA leaves it unchanged), shape ``(out_features,)``."""
        return bias_of(self.base)

    def _add_to_base(self, sign: float) -> None:
        # Half-precision products lose bits; form the update and the sum in float32 at least.
        delta = self._layout(self._delta(torch.promote_types(self.vera_lambda_d.dtype, torch.float32)))
        add_delta_(weight_of(self.base), delta, sign)

    def adapter_config(self) -> dict[str, object]:
        p = self.projections
        return {
            "method": "vera",
            "rank": self.rank,
            "d_initial": self.d_initial,
            "dropout": self.dropout_p,
            "projection_prng_key": p.seed,
            "projection_shape": [p.out_features, p.in_features],
        }

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"d_initial={self.d_initial:g}, dropout={self.dropout_p:g}, merged={self.merged}"
            + (", fan_in_fan_out=True" if self.fan_in_fan_out else "")
        )
