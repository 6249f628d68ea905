"""Grader machinery of challenge 19 · shared_weights_lora: drawn stacks of blocks, peft_zoo's
own sharing closed while the learner's runs, and the refusal check that also proves nothing
was aliased before the error."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, NoReturn, cast

import torch
from hypothesis import strategies as st
from torch import nn

import peft_zoo.sharing
from peft_zoo import LoRALinear
from peft_zoo.exercises.graders.refusals import expect_refusal
from peft_zoo.testing import explain, seeds

MAIN = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
TYPOS = ("attn.c_atn", "mlp.fc", "attn.q", "c_attn", "mlp.c_proj.weight")


def name_lists() -> st.SearchStrategy[tuple[str, ...] | None]:
    """None (use the default: all four) or 1 to 4 of the big matrices in a random order."""
    some = st.permutations(MAIN).flatmap(lambda p: st.integers(1, 4).map(lambda k: tuple(p[:k])))
    return st.none() | some


@st.composite
def stacks(draw: st.DrawFn, min_layers: int = 2) -> dict[str, Any]:
    return {
        "n_layer": draw(st.integers(min_layers, 4)),
        "n_embd": draw(st.sampled_from([4, 6, 8])),
        "bias": draw(st.booleans()),
        "lora_attn": draw(st.booleans()),
        "lora_mlp": draw(st.booleans()),
        "names": draw(name_lists()),
        "seed": draw(seeds()),
    }


def build(ref: ModuleType, setup: dict[str, Any], **overrides: Any) -> nn.ModuleList:
    """A stack from the reference's ``make_blocks``; every LoRA B random, so the layers differ, and
    every tensor trainable (LoRALinear freezes its base; here the shared base trains too)."""
    kw = {k: setup[k] for k in ("bias", "lora_attn", "lora_mlp")} | overrides
    n_layer = kw.pop("n_layer", setup["n_layer"])
    n_embd = kw.pop("n_embd", setup["n_embd"])
    torch.manual_seed(setup["seed"] + 7 * n_layer + n_embd)
    blocks: nn.ModuleList = ref.make_blocks(n_layer, n_embd, **kw)
    with torch.no_grad():
        for m in blocks.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(0.0, 0.3)
    return blocks.requires_grad_(True)


@contextlib.contextmanager
def library_closed() -> Iterator[None]:
    """peft_zoo's own share_main_matrices refuses to run: the exercise is to write it."""
    original = peft_zoo.sharing.block_submodule  # the step every path of share_main_matrices takes

    def refuse(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("ex19 called peft_zoo.sharing.share_main_matrices: write the aliasing yourself")

    peft_zoo.sharing.block_submodule = refuse
    try:
        yield
    finally:
        peft_zoo.sharing.block_submodule = original


def share_closed(fn: Callable[..., Any], blocks: nn.ModuleList, names: tuple[str, ...] | None) -> None:
    """``fn(blocks[, names])`` with peft_zoo's own sharing closed."""
    with library_closed():
        if names is None:
            fn(blocks)
        else:
            fn(blocks, list(names))


def main_of(block: nn.Module, name: str) -> nn.Linear:
    """The big Linear at ``name``: the layer itself, or the base of its LoRALinear."""
    module = block.get_submodule(name)
    return cast(nn.Linear, module.base if isinstance(module, LoRALinear) else module)


def weight_key(block: nn.Module, name: str) -> str:
    """The state-dict key of the big matrix at ``name``."""
    return f"{name}.base.weight" if isinstance(block.get_submodule(name), LoRALinear) else f"{name}.weight"


def values(blocks: nn.ModuleList) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().clone() for k, v in b.state_dict().items()} for b in blocks]


def run(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for block in blocks:
        x = block(x)
    return x


def why_not_aliased(mine: torch.Tensor, theirs: torch.Tensor, i: int, last: int) -> str:
    if mine.data_ptr() == theirs.data_ptr():
        return (
            "a new nn.Parameter around block 0's tensor: same storage, but a second Parameter, so an "
            "optimizer updates it twice and each keeps its own .grad; assign the Parameter itself"
        )
    if torch.equal(mine, theirs):
        return (
            "the values were copied (.data.copy_ / .clone()): equal now, apart after the first optimizer "
            "step; assign block 0's Parameter object (target.weight = source.weight)"
        )
    if i == last:
        return "the last block was skipped: off by one in the range of blocks"
    return "this block's layer was never pointed at block 0's Parameter"


def expect_blocks_refusal(
    call: Callable[[], object],
    blocks: nn.ModuleList,
    *,
    problem: str,
    drawn: dict[str, Any],
    hint: str,
    mention: str | None = None,
) -> None:
    """``call()`` must raise ValueError (naming ``mention``) and leave every block as it was."""
    before = values(blocks)
    ids = [[id(p) for p in b.parameters()] for b in blocks]
    expect_refusal(
        call,
        drawn=drawn,
        mention=mention,
        when_unnamed=f"the ValueError for {problem} should name it",
        when_wrong=f"{problem} raised the wrong error",
        wrong_hint="check the names yourself (get_submodule raises AttributeError) and raise a ValueError",
        when_accepted=f"{problem} was accepted",
        accepted_hint=hint,
    )
    now = values(blocks)
    changed = [
        f"block {i} {k}"
        for i, (b, a) in enumerate(zip(before, now, strict=True))
        for k in b
        if not torch.equal(b[k], a[k])
    ]
    same_objects = [[id(p) for p in b.parameters()] for b in blocks] == ids
    if changed or not same_objects:
        raise AssertionError(
            explain(
                f"{problem}: the ValueError came after some blocks were already changed",
                drawn=drawn,
                expected="every block exactly as before the call",
                got=f"changed: {changed[:4] or 'which Parameters the blocks hold'}",
                hint="check every block and name first, then alias: a call that raises must change nothing",
            )
        )
