"""Bad input to the method modules, the serving modules and adapter checkpoints (issue 12, §5).

One table of :class:`~badinput.Refusal` cases (the method modules' here, the serving modules'
in bad_input_serving_cases.py, the checkpoints' in bad_input_checkpoint_cases.py), each run by
:func:`~badinput.check_refusal`: the call must raise the named exception type with a message
naming the problem, and every watched module (tensor values, module tree, ``requires_grad``)
and watched path on disk must be exactly as before. Objects that are not modules (a cache, a
bank) are checked by the call itself, which compares their state before and after.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from bad_input_checkpoint_cases import CHECKPOINT
from bad_input_module_helpers import CaseTable
from bad_input_serving_cases import SERVING
from badinput import Refusal, check_refusal
from torch import nn

from peft_zoo import (
    AdapterBlock,
    AdapterStack,
    BottleneckAdapter,
    IA3Linear,
    LearnablePrefix,
    ParallelAdapterBlock,
)
from peft_zoo.dora import DoRALinear
from peft_zoo.prefix import PrefixKV

CASES = CaseTable()
case = CASES.add

# ----------------------------------------------------------------------------- fixtures (fresh per case)


def _linear() -> dict[str, Any]:
    torch.manual_seed(0)
    return {"base": nn.Linear(4, 3)}


# ----------------------------------------------------------------------------- LearnablePrefix / PrefixKV

for bad, err in [
    (-1, ValueError),
    (float("nan"), ValueError),
    (float("inf"), ValueError),
    ("0.02", TypeError),
]:
    case(f"prefix-init_std-{bad}", lambda s, b=bad: LearnablePrefix(2, 4, init_std=b), err, "init_std")
case("prefix-init_std-bool", lambda s: LearnablePrefix(2, 4, init_std=True), TypeError, "init_std")
case("prefix-dtype-long", lambda s: LearnablePrefix(2, 4, dtype=torch.long), TypeError, "dtype")
case("prefixkv-init_std-neg", lambda s: PrefixKV(2, 2, 3, init_std=-0.5), ValueError, "init_std")
case("prefixkv-dtype-int", lambda s: PrefixKV(2, 2, 3, dtype=torch.int32), TypeError, "dtype")
case("prefix-prefix_len-str", lambda s: LearnablePrefix("2", 4), TypeError, "prefix_len")
_prefix = lambda: {"p": LearnablePrefix(2, 4)}  # noqa: E731
case("prefix-forward-int", lambda s: s["p"](torch.ones(1, 3, 4, dtype=torch.long)), TypeError, "floating",
     setup=_prefix, watch=("p",))  # fmt: skip
case("prefix-forward-list", lambda s: s["p"]([[0.0] * 4]), TypeError, "tensor", setup=_prefix, watch=("p",))
case("prefix-forward-2d", lambda s: s["p"](torch.ones(3, 4)), ValueError, "(B, L, 4)", setup=_prefix)
case("prefix-mask-1d", lambda s: s["p"].extend_mask(torch.ones(3)), ValueError, "(B, L)", setup=_prefix)

# ----------------------------------------------------------------------------- IA3Linear

for bad in ["yes", 1, None, "False"]:
    case(f"ia3-feedforward-{bad!r}", lambda s, b=bad: IA3Linear(s["base"], feedforward=b), TypeError,
         "feedforward", setup=_linear, watch=("base",))  # fmt: skip
case("ia3-fan_in_fan_out-str", lambda s: IA3Linear(s["base"], fan_in_fan_out="no"), TypeError,
     "fan_in_fan_out", setup=_linear, watch=("base",))  # fmt: skip
case("ia3-base-none", lambda s: IA3Linear(None), TypeError, "nn.Linear")
case("ia3-base-conv", lambda s: IA3Linear(nn.Conv2d(2, 2, 1)), TypeError, "Conv2d")
case("ia3-forward-shape", lambda s: IA3Linear(s["base"])(torch.ones(2, 5)), ValueError, "(..., 4)",
     setup=_linear)  # fmt: skip

# ----------------------------------------------------------------------------- bottleneck adapters and blocks

for bad in ["yes", 0, None]:
    case(f"bottleneck-residual-{bad!r}", lambda s, b=bad: BottleneckAdapter(4, 2, residual=b), TypeError,
         "residual")  # fmt: skip
case("bottleneck-dtype-long", lambda s: BottleneckAdapter(4, 2, dtype=torch.long), TypeError, "dtype")
case("bottleneck-activation", lambda s: BottleneckAdapter(4, 2, activation="swish"), ValueError, "swish")
case("bottleneck-dim-zero", lambda s: BottleneckAdapter(4, 0), ValueError, "bottleneck_dim")
case("bottleneck-d_model-float", lambda s: BottleneckAdapter(2.5, 2), TypeError, "d_model")
_adapter = lambda: {"adapter": BottleneckAdapter(4, 2), "sub": nn.Linear(4, 4)}  # noqa: E731
for cls in (AdapterBlock, ParallelAdapterBlock):
    n = cls.__name__
    case(f"{n}-sublayer-none", lambda s, c=cls: c(None, s["adapter"]), TypeError, n, "sublayer",
         setup=_adapter, watch=("adapter",))  # fmt: skip
    case(f"{n}-sublayer-lambda", lambda s, c=cls: c(lambda x: x, s["adapter"]), TypeError, "sublayer",
         setup=_adapter)  # fmt: skip
    case(
        f"{n}-sublayer-str", lambda s, c=cls: c("linear", s["adapter"]), TypeError, "sublayer", setup=_adapter
    )
    case(f"{n}-same-module", lambda s, c=cls: c(s["adapter"], s["adapter"]), ValueError, "same module",
         setup=_adapter, watch=("adapter",))  # fmt: skip
    case(f"{n}-adapter-linear", lambda s, c=cls: c(s["sub"], s["sub"]), TypeError, "BottleneckAdapter",
         setup=_adapter, watch=("sub",))  # fmt: skip
case("stack-dtype-int", lambda s: AdapterStack(4, 2, 3, dtype=torch.int32), TypeError, "dtype")
case("stack-num-bool", lambda s: AdapterStack(4, 2, True), TypeError, "num_adapters")
_stack = lambda: {"stack": AdapterStack(4, 2, 3)}  # noqa: E731
for bad in [1.0, "0", torch.tensor(True), None]:
    case(f"stack-id-{bad!r}", lambda s, b=bad: s["stack"](torch.ones(2, 4), b), TypeError, "adapter_id",
         setup=_stack, watch=("stack",))  # fmt: skip
case("stack-id-3", lambda s: s["stack"](torch.ones(2, 4), 3), IndexError, "out of range", setup=_stack)

# ----------------------------------------------------------------------------- DoRALinear on a meta base


def _dora_meta(s: dict[str, Any]) -> object:
    base = nn.Linear(4, 3, device="meta")
    try:
        return DoRALinear(base, 2)
    finally:
        assert base.weight.requires_grad and base.bias.requires_grad, "the base was left frozen"


case("dora-meta-base", _dora_meta, ValueError, "meta device")
case("dora-base-str", lambda s: DoRALinear("base", 2), TypeError, "DoRALinear base")

# ----------------------------------------------------------------------------- the serving modules and checkpoints

CASES.extend([*SERVING, *CHECKPOINT])


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_and_changes_nothing(bad: Refusal) -> None:
    check_refusal(bad)


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 80, len(CASES)
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
