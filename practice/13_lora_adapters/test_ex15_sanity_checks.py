"""Grader for challenge 15 · sanity_checks. Run: peft-zoo check 15 (or pytest this file).

Your four checks are run on correct LoRA layers (every check must pass on each) and on
deliberately broken ones defined below (each must be rejected, with AssertionError, by the
check meant for it). Read the broken classes: each is a bug seen in real LoRA code.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from torch import nn

import peft_zoo
from peft_zoo.exercises.graders.ex15_sanity_checks import DeltaWeightLoRA, MinimalLoRA
from peft_zoo.exercises.grading import learner_code, load_module, require
from peft_zoo.testing import explain, seeds

CHALLENGE = "ex15_sanity_checks"
pytestmark = pytest.mark.timeout(120)

CHECKS = (
    "check_trainable_fraction",
    "check_init_equals_base",
    "check_loss_decreases",
    "check_adapters_differ",
)


# Classic mistakes, planted into a copy of the reference answer by the test suite: the
# grader must reject every one. (description, exact snippet of the answer, replacement,
# and the bug's name as this grader's "likely:" line gives it: tests/test_diagnosis.py checks it)
PLANTED_BUGS: list[tuple[str, ...]] = [
    (
        "check_trainable_fraction never asserts anything",
        "def check_trainable_fraction(lora_cls: type) -> None:\n",
        "def check_trainable_fraction(lora_cls: type) -> None:\n    return  # planted: checks nothing\n",
        "assert requires_grad is False on every parameter of layer.base",
    ),
    (
        "check_init_equals_base never asserts anything",
        "def check_init_equals_base(lora_cls: type) -> None:\n",
        "def check_init_equals_base(lora_cls: type) -> None:\n    return  # planted: checks nothing\n",
        "compare the fresh layer's output with the base layer's output",
    ),
    (
        "check_loss_decreases never asserts anything",
        "def check_loss_decreases(lora_cls: type) -> None:\n",
        "def check_loss_decreases(lora_cls: type) -> None:\n    return  # planted: checks nothing\n",
        "assert the loss clearly drops",
    ),
    (
        "check_adapters_differ never asserts anything",
        "def check_adapters_differ(lora_cls: type) -> None:\n",
        "def check_adapters_differ(lora_cls: type) -> None:\n    return  # planted: checks nothing\n",
        "give two layers different non-zero A and B and assert their outputs differ",
    ),
    (
        "check_init_equals_base compares the layer with itself instead of with the base",
        "expected = original(x)",
        "expected = layer(x)",
        "compare with the base you passed in (or a copy made before wrapping), not with layer.base",
    ),
    (
        "check_adapters_differ compares the first layer with itself instead of with the base",
        "base_out = base(x)",
        "base_out = first(x)",
    ),
    (
        "check_trainable_fraction only looks at the fraction, not at the frozen base (a trainable bias slips through)",
        '    assert not trainable_base, f"base parameters are still trainable: {trainable_base}"\n',
        "",
        "check every parameter of layer.base (weight and bias)",
    ),
    (
        "check_trainable_fraction's threshold is too loose (any fraction below 100% passes)",
        "assert 0 < trainable / total < 0.05",
        "assert 0 < trainable / total < 1",
        "assert the trainable fraction is tiny",
    ),
    (
        "check_init_equals_base uses the default alpha (scale = 1): a scale applied to the base goes unseen",
        "layer = lora_cls(base, 4, alpha=8.0)",
        "layer = lora_cls(base, 4)",
        "pass an alpha different from the rank",
    ),
    (
        "check_loss_decreases calls backward without checking the output requires grad (crashes on a detached path)",
        '        assert out.requires_grad, "the output does not depend on any trainable parameter"\n',
        "",
        "assert out.requires_grad before calling backward",
    ),
    (
        "check_adapters_differ leaves the adapters at their initial values (B = 0: everything equals the base)",
        "            layer.lora_B.normal_()\n",
        "",
    ),
]


# ----------------------------------------------------------------------------- correct layers


@functools.cache
def _correct_classes() -> dict[str, type]:
    ex01 = (
        Path(__file__).resolve().parents[2] / "solutions" / Path(__file__).parent.name / "ex01_lora_linear.py"
    )
    return {
        "peft_zoo.LoRALinear": peft_zoo.LoRALinear,
        "the challenge 01 reference answer": load_module(ex01, "ex15_ref01").LoRALinear,
        "a minimal LoRA layer (only base, lora_A, lora_B, scale, forward)": MinimalLoRA,
        "a LoRA layer computing F.linear(x, W0 + scale * B @ A, bias)": DeltaWeightLoRA,
    }


# ----------------------------------------------------------------------------- broken layers


class _BaseTrainable(MinimalLoRA):
    def __init__(self, base, rank, alpha=None):
        super().__init__(base, rank, alpha)
        self.base.requires_grad_(True)  # BUG: forgot to freeze (or unfroze) the base


class _BiasTrainable(MinimalLoRA):
    def __init__(self, base, rank, alpha=None):
        super().__init__(base, rank, alpha)
        if self.base.bias is not None:
            self.base.bias.requires_grad_(True)  # BUG: froze base.weight only


class _FullRank(MinimalLoRA):
    def __init__(self, base, rank, alpha=None):
        super().__init__(base, rank, alpha)
        n = base.in_features  # BUG: the rank is ignored, the "low-rank" factors are full size
        self.lora_A = nn.Parameter(torch.empty(n, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, n))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))


class _RandomB(MinimalLoRA):
    def __init__(self, base, rank, alpha=None):
        super().__init__(base, rank, alpha)
        with torch.no_grad():
            self.lora_B.normal_()  # BUG: B random at init, so B A != 0


class _FreshBase(MinimalLoRA):
    def __init__(self, base, rank, alpha=None):
        # BUG: builds a new Linear of the same shape instead of wrapping the given one
        super().__init__(
            nn.Linear(base.in_features, base.out_features, bias=base.bias is not None), rank, alpha
        )


class _NoBias(MinimalLoRA):
    def forward(self, x):
        return F.linear(x, self.base.weight) + self.lora_path(x)  # BUG: the base bias is dropped


class _ScaledBase(MinimalLoRA):
    def forward(self, x):
        # BUG: the scale multiplies the base output too
        return self.scale * (self.base(x) + F.linear(F.linear(x, self.lora_A), self.lora_B))


class _Detached(MinimalLoRA):
    def forward(self, x):
        return self.base(x) + self.lora_path(x).detach()  # BUG: no gradient reaches A or B


class _StaleB(MinimalLoRA):
    def __init__(self, base, rank, alpha=None):
        super().__init__(base, rank, alpha)
        self.register_buffer("lora_B_cached", self.lora_B.detach().clone())  # BUG: a copy taken at init

    def forward(self, x):
        return self.base(x) + self.scale * F.linear(F.linear(x, self.lora_A), self.lora_B_cached)


class _IgnoresLoRA(MinimalLoRA):
    def forward(self, x):
        return self.base(x)  # BUG: the LoRA path is never added


class _ZeroScale(MinimalLoRA):
    def forward(self, x):
        return self.base(x) + 0.0 * self.lora_path(x)  # BUG: a scale of zero (e.g. alpha // rank == 0)


_LOSS_HINT = (
    "assert out.requires_grad before calling backward (a detached or missing LoRA path leaves "
    "no graph), then assert the loss clearly drops"
)

# (class, what is wrong, {check that must reject it: what that check should have done})
BROKEN: list[tuple[type, str, dict[str, str]]] = [
    (
        _BaseTrainable,
        "the base layer is left trainable",
        {"check_trainable_fraction": "assert requires_grad is False on every parameter of layer.base"},
    ),
    (
        _BiasTrainable,
        "only base.weight is frozen; base.bias still trains",
        {
            "check_trainable_fraction": "check every parameter of layer.base (weight and bias), not only "
            "the trainable fraction: a bias is too small to move the fraction much"
        },
    ),
    (
        _FullRank,
        "the rank is ignored: lora_A is (in, in) and lora_B (out, in), as many numbers as full fine-tuning",
        {
            "check_trainable_fraction": "assert the trainable fraction is tiny (about rank * (in + out) / (in * out))"
        },
    ),
    (
        _RandomB,
        "lora_B is random at init",
        {
            "check_init_equals_base": "compare the fresh layer's output with the base layer's output on random inputs"
        },
    ),
    (
        _FreshBase,
        "it builds its own new nn.Linear instead of wrapping the base it was given",
        {
            "check_init_equals_base": "compare with the base you passed in (or a copy made before "
            "wrapping), not with layer.base"
        },
    ),
    (
        _NoBias,
        "its forward drops the base bias",
        {
            "check_init_equals_base": "use a base with a bias (nn.Linear's default) and compare with its output"
        },
    ),
    (
        _ScaledBase,
        "its forward multiplies the base output by the scale too: scale * (base(x) + B A x)",
        {
            "check_init_equals_base": "pass an alpha different from the rank, so scale != 1 and a misplaced scale shows"
        },
    ),
    (
        _Detached,
        "its LoRA path is detached from autograd, so it never learns",
        {"check_loss_decreases": _LOSS_HINT},
    ),
    (
        _StaleB,
        "its forward uses a copy of lora_B taken at init (zeros), never the live parameter",
        {
            "check_loss_decreases": "train only the trainable parameters for a few steps and assert the "
            "loss clearly drops (here it stays flat)",
            "check_adapters_differ": "give two layers different non-zero A and B and assert their outputs differ",
        },
    ),
    (
        _IgnoresLoRA,
        "its forward ignores the LoRA path (returns base(x))",
        {
            "check_adapters_differ": "a non-zero adapter must change the output: compare with the base's output",
            "check_loss_decreases": _LOSS_HINT,
        },
    ),
    (
        _ZeroScale,
        "its LoRA path is multiplied by zero",
        {
            "check_adapters_differ": "give the adapters non-zero random values and assert the output moves "
            "away from the base's",
            "check_loss_decreases": "assert the loss clearly drops (a zero scale keeps it flat)",
        },
    ),
]

_BROKEN_CASES = [
    pytest.param(cls, what, check, hint, id=f"{check}-{cls.__name__.lstrip('_')}")
    for cls, what, hints in BROKEN
    for check, hint in hints.items()
]


# ----------------------------------------------------------------------------- tests


def _run(check, lora_cls, seed: int):
    """Call one learner check under a global seed the check must not depend on."""
    torch.manual_seed(seed)
    return check(lora_cls)


@pytest.mark.parametrize("check_name", CHECKS)
@settings(max_examples=2, deadline=None)
@given(seed=seeds())
@learner_code()
def test_check_passes_on_correct_layers(impl, check_name, seed) -> None:
    (check,) = require(impl, check_name)
    for name, cls in _correct_classes().items():
        drawn = {"lora_cls": name, "global seed before the call": seed}
        try:
            result = _run(check, cls, seed)
        except AssertionError as err:
            raise AssertionError(
                explain(
                    f"your {check_name} rejected a correct LoRA layer",
                    drawn=drawn,
                    got=f"AssertionError: {err}",
                    hint="a check must pass on every correct implementation: is a tolerance too tight, a "
                    "threshold too strict, too few optimizer steps, or is the seed not set inside the check?",
                )
            ) from None
        except NotImplementedError:
            raise
        except Exception as err:
            raise AssertionError(
                explain(
                    f"your {check_name} crashed on a correct LoRA layer",
                    drawn=drawn,
                    got=f"{type(err).__name__}: {err}",
                    hint="use only the contract: lora_cls(base, rank, alpha=None) and the attributes base, "
                    "lora_A, lora_B, scale and forward (no merge(), delta_weight(), rank or merged)",
                )
            ) from None
        assert result is None, explain(
            f"your {check_name} should return None (and raise AssertionError on failure)",
            drawn=drawn,
            got=repr(result),
        )


@pytest.mark.parametrize(("broken", "what", "check_name", "hint"), _BROKEN_CASES)
@settings(max_examples=2, deadline=None)
@given(seed=seeds())
@learner_code()
def test_check_rejects_the_broken_layer_it_is_meant_for(impl, broken, what, check_name, hint, seed) -> None:
    (check,) = require(impl, check_name)
    drawn = {"broken layer": broken.__name__.lstrip("_"), "global seed before the call": seed}
    try:
        result = _run(check, broken, seed)
    except AssertionError:
        return  # caught, as it should be
    except NotImplementedError:
        raise
    except Exception as err:
        raise AssertionError(
            explain(
                f"your {check_name} crashed on a LoRA layer where {what}, instead of failing with AssertionError",
                drawn=drawn,
                got=f"{type(err).__name__}: {err}",
                hint=f"{hint}; test the property with assert and a message, so the failure explains itself",
            )
        ) from None
    returned = (
        f"; it returned {result!r}: returning False fails nothing, use assert" if result is not None else ""
    )
    raise AssertionError(
        explain(
            f"your {check_name} accepted a LoRA layer where {what}",
            drawn=drawn,
            expected="AssertionError",
            got=f"no error{returned}",
            hint=hint,
        )
    )
