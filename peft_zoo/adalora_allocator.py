"""AdaLoRA's rank allocator: importance scores, the budget schedule and masking
(Zhang et al., 2023, arXiv:2303.10512, Sections 3.2-3.3; reproduces Hugging Face PEFT 0.21.2's
``peft.tuners.adalora.layer.RankAllocator`` and ``AdaLoraModel.update_and_allocate``).

Budget. ``b(0) = init_bgt`` = the sum of the layers' initial ranks, ``target_bgt = target_r ×
layers``. With ``T = total_step``::

    t <= tinit                      b = init_bgt                      (warm-up, no masking)
    tinit < t <= T - tfinal         b = int((init_bgt - target_bgt) (1 - (t - tinit) / (T - tfinal - tinit))³
                                            + target_bgt)            (mask when t % deltaT == 0)
    t > T - tfinal                  b = target_bgt                    (final fine-tuning, pattern frozen)

Importance (after each ``backward``, for every entry w of ``lora_A``, ``lora_E``, ``lora_B``)::

    I    = |w · ∂L/∂w|                              sensitivity
    Ī    = β1 Ī + (1 - β1) I                        smoothed sensitivity (Eq. 8)
    U    = β2 U + (1 - β2) |I - Ī|                  uncertainty (Eq. 9)
    s(w) = Ī · U                                    entry score (Eq. 10)

Triplet ``i`` of a layer scores ``S_i = s(λ_i) + mean_j s(Q_ij) + mean_k s(P_ki)`` (Eq. 11);
masking finds the ``(init_bgt - b)``-th smallest ``S`` over all layers and sets every ``λ_i``
whose score is ``<=`` that threshold to zero (ties are all masked, as in PEFT).
"""

from __future__ import annotations

import numbers

import torch
from torch import nn

from .adalora import AdaLoRALinear, adalora_layers
from .core.checks import check_module, check_positive_int

__all__ = ["RankAllocator", "adalora_budget"]

PARAMS = ("lora_A", "lora_E", "lora_B")


def _check_nonnegative_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= 0, got {value!r} of type {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def _check_beta(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float in (0, 1), got {value!r} of type {type(value).__name__}")
    beta = float(value)
    if not 0.0 < beta < 1.0:
        raise ValueError(f"{name} must be in (0, 1) (an EMA coefficient), got {value}")
    return beta


def check_schedule(
    total_step: object, tinit: object, tfinal: object, deltaT: object
) -> tuple[int, int, int, int]:
    """Validated ``(total_step, tinit, tfinal, deltaT)`` with PEFT's ``AdaLoraConfig`` checks:
    ``total_step`` must be given and > 0 and ``tinit < total_step - tfinal`` (else there is no
    budgeting phase)."""
    if total_step is None:
        raise ValueError(
            "AdaLoRA needs total_step (the number of training steps); got None, supply a value > 0"
        )
    total_step = check_positive_int(total_step, "total_step")
    tinit, tfinal = _check_nonnegative_int(tinit, "tinit"), _check_nonnegative_int(tfinal, "tfinal")
    deltaT = check_positive_int(deltaT, "deltaT")
    if tinit >= total_step - tfinal:
        raise ValueError(
            f"the schedule leaves no budgeting phase: tinit={tinit} >= total_step - tfinal = "
            f"{total_step} - {tfinal}; decrease tinit / tfinal or increase total_step"
        )
    return total_step, tinit, tfinal, deltaT


def adalora_budget(
    step: int, init_bgt: int, target_bgt: int, *, tinit: int, tfinal: int, total_step: int, deltaT: int
) -> tuple[int, bool]:
    """``(budget, mask_now)`` at ``step``: PEFT's ``RankAllocator.budget_schedule`` (cubic decrease
    from ``init_bgt`` to ``target_bgt`` between ``tinit`` and ``total_step - tfinal``)."""
    if step <= tinit:
        return init_bgt, False
    if step > total_step - tfinal:
        return target_bgt, True
    mul_coeff = 1 - (step - tinit) / (total_step - tfinal - tinit)
    budget = int((init_bgt - target_bgt) * (mul_coeff**3) + target_bgt)
    return budget, step % deltaT == 0


class RankAllocator:
    """Reallocates the rank budget of every :class:`~peft_zoo.AdaLoRALinear` in a model.

    Args (PEFT's ``AdaLoraConfig`` names and defaults): ``model`` holding the layers (their
    ``rank`` is PEFT's ``init_r``); ``target_r`` (average final rank per layer); ``total_step``
    (required); ``tinit``, ``tfinal``, ``deltaT``; ``beta1``, ``beta2`` in (0, 1).

    State: ``ipt``, ``exp_avg_ipt``, ``exp_avg_unc`` map ``"<layer>.lora_A"`` (etc.) to tensors
    shaped like the parameter; ``rank_pattern`` maps ``"<layer>.lora_E"`` to a list of booleans
    (True = triplet kept) after the first masking. Call :meth:`step` after ``loss.backward()``
    (and the optimiser step) and before ``zero_grad()``, as with PEFT's ``update_and_allocate``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        target_r: int = 8,
        total_step: int | None = None,
        tinit: int = 0,
        tfinal: int = 0,
        deltaT: int = 1,
        beta1: float = 0.85,
        beta2: float = 0.85,
    ) -> None:
        check_module(model, "model")
        self.target_r = check_positive_int(target_r, "target_r")
        self.total_step, self.tinit, self.tfinal, self.deltaT = check_schedule(
            total_step, tinit, tfinal, deltaT
        )
        self.beta1, self.beta2 = _check_beta(beta1, "beta1"), _check_beta(beta2, "beta2")
        layers = dict(adalora_layers(model))
        if not layers:
            raise ValueError(
                "RankAllocator: the model holds no AdaLoRALinear layer, so there is no rank to allocate"
            )
        self.layer_names = list(layers)
        self.init_bgt = sum(layer.rank for layer in layers.values())
        self.target_bgt = self.target_r * len(layers)
        if self.target_bgt > self.init_bgt:
            raise ValueError(
                f"target_r={target_r} over {len(layers)} layers asks for a final budget of {self.target_bgt} "
                f"triplets, more than the {self.init_bgt} the layers start with; use target_r <= init_r"
            )
        self.rank_pattern: dict[str, list[bool]] | None = None
        self.reset_ipt()

    def reset_ipt(self) -> None:
        """Forget the importance statistics (PEFT does this when the pattern is frozen)."""
        self.ipt: dict[str, torch.Tensor] = {}
        self.exp_avg_ipt: dict[str, torch.Tensor] = {}
        self.exp_avg_unc: dict[str, torch.Tensor] = {}

    def budget_schedule(self, step: int) -> tuple[int, bool]:
        """``(budget, mask_now)`` at ``step``; see :func:`adalora_budget`."""
        return adalora_budget(
            step,
            self.init_bgt,
            self.target_bgt,
            tinit=self.tinit,
            tfinal=self.tfinal,
            total_step=self.total_step,
            deltaT=self.deltaT,
        )

    def _layers(self, model: nn.Module) -> dict[str, AdaLoRALinear]:
        found = dict(adalora_layers(model))
        missing = [n for n in self.layer_names if n not in found]
        if missing or len(found) != len(self.layer_names):
            raise ValueError(
                f"RankAllocator was built for layers {self.layer_names}, but the model holds {list(found)}"
            )
        return {n: found[n] for n in self.layer_names}

    def _params(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return {f"{n}.{p}": getattr(layer, p) for n, layer in self._layers(model).items() for p in PARAMS}

    @torch.no_grad()
    def update_ipt(self, model: nn.Module) -> None:
        """Update sensitivity ``|w · grad|`` and its two moving averages for every adapter entry.
        Raises ``RuntimeError`` (changing nothing) when a parameter has no gradient."""
        params = self._params(model)
        grads = {n: p.grad for n, p in params.items() if p.grad is not None}
        missing = [n for n in params if n not in grads]
        if missing:
            raise RuntimeError(f"RankAllocator: no gradient on {missing}; call it after loss.backward()")
        for n, p in params.items():
            if n not in self.ipt:
                self.ipt[n] = torch.zeros_like(p)
                self.exp_avg_ipt[n] = torch.zeros_like(p)
                self.exp_avg_unc[n] = torch.zeros_like(p)
            self.ipt[n] = (p * grads[n]).abs().detach()
            self.exp_avg_ipt[n] = self.beta1 * self.exp_avg_ipt[n] + (1 - self.beta1) * self.ipt[n]
            self.exp_avg_unc[n] = (
                self.beta2 * self.exp_avg_unc[n]
                + (1 - self.beta2) * (self.ipt[n] - self.exp_avg_ipt[n]).abs()
            )

    def triplet_scores(self) -> dict[str, torch.Tensor]:
        """``"<layer>.lora_E" -> S`` of shape ``(rank, 1)``: ``s(λ) + mean s(Q row) + mean s(P column)``."""
        missing = [n for n in self.layer_names if f"{n}.lora_A" not in self.exp_avg_ipt]
        if missing:
            raise RuntimeError(
                f"RankAllocator: no importance statistics yet for {missing}; call update_ipt first"
            )
        scores = {}
        for n in self.layer_names:
            s_a, s_e, s_b = (self.exp_avg_ipt[f"{n}.{p}"] * self.exp_avg_unc[f"{n}.{p}"] for p in PARAMS)
            ab = torch.cat([s_a.mean(dim=1, keepdim=True), s_b.mean(dim=0).view(-1, 1)], dim=1)  # (r, 2)
            scores[f"{n}.lora_E"] = (s_e.view(-1) + ab.sum(dim=1).view(-1)).view(-1, 1)
        return scores

    @torch.no_grad()
    def mask_to_budget(self, model: nn.Module, budget: int) -> dict[str, list[bool]]:
        """Zero ``λ`` of every triplet scoring at or below the ``(init_bgt - budget)``-th smallest
        score; return the rank pattern (True = kept). With ``budget >= init_bgt`` nothing is
        masked (PEFT's ``kthvalue`` would fail there)."""
        layers = self._layers(model)
        scores = self.triplet_scores()
        k = self.init_bgt - budget
        threshold = None
        if k > 0:
            threshold = torch.kthvalue(torch.cat([s.view(-1) for s in scores.values()]), k=k)[0].item()
        pattern = {}
        for n, layer in layers.items():
            key = f"{n}.lora_E"
            dropped = (
                scores[key] <= threshold
                if threshold is not None
                else torch.zeros_like(scores[key], dtype=torch.bool)
            )
            layer.lora_E.masked_fill_(dropped, 0.0)
            pattern[key] = (~dropped).view(-1).tolist()
        return pattern

    def update_and_allocate(
        self, model: nn.Module, global_step: int, force_mask: bool = False
    ) -> tuple[int, dict[str, list[bool]] | None]:
        """PEFT's ``RankAllocator.update_and_allocate``: update the scores (before the final
        phase), then mask to the step's budget when the schedule says so. Returns
        ``(budget, rank_pattern or None)``."""
        step = _check_nonnegative_int(global_step, "global_step")
        if step < self.total_step - self.tfinal:
            self.update_ipt(model)
        budget, mask_ind = self.budget_schedule(step)
        pattern = self.mask_to_budget(model, budget) if mask_ind or force_mask else None
        return budget, pattern

    @torch.no_grad()
    def mask_using_rank_pattern(self, model: nn.Module, rank_pattern: dict[str, list[bool]]) -> None:
        """Zero ``λ_i`` wherever ``rank_pattern`` says False (the frozen final-phase pattern)."""
        for n, layer in self._layers(model).items():
            keep = torch.tensor(rank_pattern[f"{n}.lora_E"], device=layer.lora_E.device).view(-1, 1)
            layer.lora_E.masked_fill_(~keep, 0.0)

    def step(self, model: nn.Module, global_step: int) -> tuple[int, dict[str, list[bool]] | None]:
        """One training step of PEFT's ``AdaLoraModel.update_and_allocate``: score and mask during
        the budgeting phase, force the final mask (and reset the scores) at ``total_step - tfinal``,
        re-apply the frozen pattern afterwards. Returns ``(budget, rank_pattern)``."""
        step = _check_nonnegative_int(global_step, "global_step")
        end = self.total_step - self.tfinal
        if step < end:
            budget, pattern = self.update_and_allocate(model, step)
            if pattern:
                self.rank_pattern = pattern
        elif step == end:
            budget, pattern = self.update_and_allocate(model, step, force_mask=True)
            self.rank_pattern = pattern
            self.reset_ipt()
        else:
            if self.rank_pattern is None:
                raise RuntimeError(
                    f"RankAllocator.step({step}): the final pattern is fixed at step {end}, which was never run"
                )
            budget = self.budget_schedule(step)[0]
            self.mask_using_rank_pattern(model, self.rank_pattern)
        return budget, self.rank_pattern
