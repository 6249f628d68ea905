"""Grader for challenge 19 · shared_weights_lora. Run: peft-zoo check 19 (or pytest this file).

Each test draws a stack of blocks (number of layers, width, biases, LoRA on the attention
and/or the MLP matrices, which big matrices to share, a seed), applies your
share_main_matrices and the reference's to two identical copies and compares them: which
tensors are the very same object, the values they hold, the outputs, and the gradients and
weights after one optimizer step.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from peft_zoo import LoRALinear
from peft_zoo.exercises.graders.ex19_shared_weights_lora import (
    MAIN,
    TYPOS,
    build,
    expect_blocks_refusal,
    main_of,
    run,
    share_closed,
    stacks,
    values,
    weight_key,
    why_not_aliased,
)
from peft_zoo.exercises.grading import assert_matches, learner_code, require
from peft_zoo.testing import explain

CHALLENGE = "ex19_shared_weights_lora"
pytestmark = pytest.mark.timeout(120)

# Classic mistakes, each planted alone into a copy of the answer: this grader must reject every one
# (checked by tests/test_exercises.py). (description, snippet in the answer, mistaken snippet,
# and the bug's name as this grader's "likely:" line gives it: tests/test_diagnosis.py checks it)
PLANTED_BUGS: list[tuple[str, ...]] = [
    (
        "values copied (.data.copy_) instead of aliased: the blocks drift apart after one step",
        "        target.weight = source.weight  # the same Parameter object: one tensor, one .grad\n"
        "        target.bias = source.bias  # (None stays None)\n",
        "        target.weight.data.copy_(source.weight.data)\n"
        "        if source.bias is not None:\n"
        "            target.bias.data.copy_(source.bias.data)\n",
        "each block holds its own copy (only block 0's own gradient reached block 0's tensor)",
    ),
    (
        "block 0's weight cloned into a new Parameter per block",
        "target.weight = source.weight  #",
        "target.weight = nn.Parameter(source.weight.detach().clone())  #",
        "each block holds its own copy (only block 0's own gradient reached block 0's tensor)",
    ),
    (
        "block 0's tensor wrapped in a new nn.Parameter: same storage, but separate Parameters and grads",
        "target.weight = source.weight  #",
        "target.weight = nn.Parameter(source.weight)  #",
        "each block holds its own copy (only block 0's own gradient reached block 0's tensor)",
    ),
    (
        "the LayerNorms are shared too",
        "        target.bias = source.bias  # (None stays None)\n",
        "        target.bias = source.bias\n"
        "    for block in blocks[1:]:\n"
        "        block.ln_1, block.ln_2 = blocks[0].ln_1, blocks[0].ln_2\n",
        "LayerNorms stay per layer",
    ),
    (
        "the whole LoRALinear module is aliased: LoRA A and B are shared too",
        "        target.weight = source.weight  # the same Parameter object: one tensor, one .grad\n"
        "        target.bias = source.bias  # (None stays None)\n",
        "        pass\n"
        "    for block in blocks[1:]:\n"
        "        for name in names:\n"
        "            parent, _, leaf = name.rpartition('.')\n"
        "            setattr(block.get_submodule(parent), leaf, blocks[0].get_submodule(name))\n",
        "share module.base's weight and bias, never the LoRALinear",
    ),
    (
        "the bias is forgotten",
        "        target.bias = source.bias  # (None stays None)\n",
        "",
        "the bias was forgotten: alias it too",
    ),
    (
        "the last block is skipped (off by one)",
        "if i > 0:",
        "if 0 < i < len(blocks) - 1:",
        "the last block was skipped",
    ),
    (
        "block 0's layers are re-initialised",
        "    for source, target in pairs:\n",
        "    for source, target in pairs:\n        source.reset_parameters()\n",
        "never re-initialise them",
    ),
    (
        "aliasing while still checking: an error in a later block leaves the earlier ones shared",
        "                pairs.append((source, target))\n",
        "                target.weight, target.bias = source.weight, source.bias\n"
        "                pairs.append((source, target))\n",
        "check every block and name first, then alias",
    ),
    (
        "weight shapes not checked",
        "if target.weight.shape != source.weight.shape or (target.bias is None) != (source.bias is None):",
        "if (target.bias is None) != (source.bias is None):",
        "compare each layer's weight shape and whether it has a bias",
    ),
    (
        "bias presence not checked",
        "if target.weight.shape != source.weight.shape or (target.bias is None) != (source.bias is None):",
        "if target.weight.shape != source.weight.shape:",
        "compare each layer's weight shape and whether it has a bias",
    ),
    (
        "a single block accepted",
        "if len(blocks) < 2:",
        "if len(blocks) < 1:",
        "sharing needs at least two blocks",
    ),
    (
        "an unknown name escapes as AttributeError instead of a ValueError",
        "except AttributeError:",
        "except KeyError:",
        "check the names yourself (get_submodule raises AttributeError) and raise a ValueError",
    ),
    (
        "all four matrices shared whatever names says",
        "for name in names:",
        "for name in MAIN_MATRICES:",
        "look every name up in every block before aliasing anything",
    ),
]


def _check_block(block, first, i: int, last: int, before, names, drawn) -> None:
    """Block ``i``: the named big matrices are block 0's Parameters, the rest its own."""
    for name in MAIN:
        module, module0 = block.get_submodule(name), first.get_submodule(name)
        if isinstance(module0, LoRALinear):
            assert module is not module0, explain(
                f"block {i}'s {name} is block 0's LoRALinear module itself",
                drawn=drawn,
                expected="a LoRALinear per block whose base shares block 0's weight and bias",
                got="one LoRALinear for every block: its LoRA A and B are shared too",
                hint="share module.base's weight and bias, never the LoRALinear: each layer keeps its own "
                "A and B (that is the point of a per-layer LoRA)",
            )
            for p in ("lora_A", "lora_B"):
                assert torch.equal(getattr(module, p), before[i][f"{name}.{p}"]), explain(
                    f"block {i}'s {name}.{p} changed", drawn=drawn, hint="LoRA A and B stay per block"
                )
        for attr in ("weight", "bias"):
            mine, theirs = getattr(main_of(block, name), attr), getattr(main_of(first, name), attr)
            if name not in names:
                assert mine is None or mine is not theirs, explain(
                    f"block {i}'s {name}.{attr} is shared, but {name} is not in names={list(names)}",
                    drawn=drawn,
                    hint="share only the layers named in the names argument",
                )
            elif theirs is None:
                assert mine is None, explain(f"block {i}'s {name}.bias should stay None", drawn=drawn)
            else:
                assert mine is theirs, explain(
                    f"block {i}'s {name}.{attr} is not block 0's Parameter object",
                    drawn=drawn,
                    expected=f"blocks[{i}].{name}.{attr} is blocks[0].{name}.{attr}",
                    got="a different tensor",
                    hint=(
                        "the bias was forgotten: alias it too"
                        if attr == "bias" and main_of(block, name).weight is main_of(first, name).weight
                        else why_not_aliased(mine, theirs, i, last)
                    ),
                )
    for norm in ("ln_1", "ln_2"):
        for attr in ("weight", "bias"):
            mine, theirs = getattr(getattr(block, norm), attr), getattr(getattr(first, norm), attr)
            assert mine is not theirs and torch.equal(mine, before[i][f"{norm}.{attr}"]), explain(
                f"block {i}'s {norm}.{attr} is shared with block 0 or changed",
                drawn=drawn,
                hint="LayerNorms stay per layer: they are tiny and let the layers differ",
            )


@settings(max_examples=40, deadline=None)
@given(setup=stacks())
@example(
    setup={
        "n_layer": 3,
        "n_embd": 4,
        "bias": True,
        "lora_attn": True,
        "lora_mlp": False,
        "names": None,
        "seed": 0,
    }
)
@learner_code()
def test_named_matrices_are_aliased_and_everything_else_stays_per_block(impl, ref, setup) -> None:
    (share,) = require(impl, "share_main_matrices")
    blocks = build(ref, setup)
    expected = copy.deepcopy(blocks)
    before = values(blocks)
    share_closed(share, blocks, setup["names"])
    share_closed(ref.share_main_matrices, expected, setup["names"])
    drawn = dict(setup)
    names = MAIN if setup["names"] is None else setup["names"]
    first, last = blocks[0], len(blocks) - 1

    for i, block in enumerate(blocks[1:], start=1):
        _check_block(block, first, i, last, before, names, drawn)
    for key, value in first.state_dict().items():
        assert torch.equal(value, before[0][key]), explain(
            f"block 0's {key} changed",
            drawn=drawn,
            hint="block 0's tensors are the shared ones: alias them as they are, never re-initialise them",
        )
    for name in MAIN:
        if name not in names:
            for i, block in enumerate(blocks):
                assert torch.equal(main_of(block, name).weight, before[i][weight_key(block, name)]), explain(
                    f"block {i}'s {name}.weight changed although {name} is not in names", drawn=drawn
                )

    got_count, want_count = len(list(blocks.parameters())), len(list(expected.parameters()))
    assert got_count == want_count, explain(
        "the stack holds the wrong number of distinct parameters",
        drawn=drawn,
        expected=f"{want_count} (each shared tensor once)",
        got=str(got_count),
    )
    torch.manual_seed(setup["seed"])
    x = torch.randn(2, 3, setup["n_embd"])
    with torch.no_grad():
        assert_matches(run(blocks, x), run(expected, x), what="output of the shared stack", drawn=drawn)


def _check_summed_gradients(blocks, plain, names, drawn) -> None:
    """The gradient of each shared tensor is the sum of what every layer's copy received."""
    for name in names:
        for attr in ("weight", "bias"):
            shared = getattr(main_of(blocks[0], name), attr)
            if shared is None:
                continue
            per_layer = [getattr(main_of(b, name), attr).grad for b in plain]
            got = shared.grad
            assert got is not None, explain(f"block 0's {name}.{attr} received no gradient", drawn=drawn)
            assert_matches(
                got,
                sum(per_layer),
                what=f"gradient of the shared {name}.{attr} (must be the sum over all layers)",
                drawn=drawn,
                bugs={
                    "each block holds its own copy (only block 0's own gradient reached block 0's tensor)": (
                        lambda per_layer=per_layer: per_layer[0]
                    ),
                    "the last block was skipped (its gradient is missing from the sum)": (
                        lambda per_layer=per_layer: sum(per_layer[:-1])
                    ),
                },
            )


@settings(max_examples=25, deadline=None)
@given(setup=stacks())
@example(
    setup={
        "n_layer": 3,
        "n_embd": 6,
        "bias": True,
        "lora_attn": False,
        "lora_mlp": True,
        "names": None,
        "seed": 1,
    }
)
@learner_code()
def test_gradients_sum_over_layers_and_an_optimizer_step_keeps_blocks_shared(impl, ref, setup) -> None:
    (share,) = require(impl, "share_main_matrices")
    blocks = build(ref, setup)
    plain = copy.deepcopy(blocks)  # unshared, every block holding block 0's big matrices
    share_closed(share, blocks, setup["names"])
    drawn = dict(setup)
    names = MAIN if setup["names"] is None else setup["names"]
    with torch.no_grad():
        for block in plain[1:]:
            for name in names:
                for attr in ("weight", "bias"):
                    if getattr(main_of(block, name), attr) is not None:
                        getattr(main_of(block, name), attr).copy_(getattr(main_of(plain[0], name), attr))

    torch.manual_seed(setup["seed"])
    x = torch.randn(2, 3, setup["n_embd"])
    g = torch.randn(2, 3, setup["n_embd"])
    for stack in (blocks, plain):
        (run(stack, x) * g).sum().backward()
    _check_summed_gradients(blocks, plain, names, drawn)

    opt = torch.optim.SGD(blocks.parameters(), lr=0.5)
    n_params = len([p for group in opt.param_groups for p in group["params"]])
    expected = copy.deepcopy(build(ref, setup))
    share_closed(ref.share_main_matrices, expected, setup["names"])
    assert n_params == len(list(expected.parameters())), explain(
        "the optimizer sees the wrong number of tensors",
        drawn=drawn,
        expected=f"{len(list(expected.parameters()))}: every shared tensor once",
        got=str(n_params),
    )
    opt.step()
    for i, block in enumerate(blocks[1:], start=1):
        for name in names:
            mine, theirs = main_of(block, name).weight, main_of(blocks[0], name).weight
            assert torch.equal(mine, theirs), explain(
                f"after one optimizer step block {i}'s {name}.weight differs from block 0's",
                drawn=drawn,
                hint="the blocks held copies, each updated with its own gradient: alias the Parameter object",
            )


@settings(max_examples=25, deadline=None)
@given(
    setup=stacks(min_layers=3),
    problem=st.sampled_from(["one block", "unknown name", "other shape", "other bias"]),
    typo=st.sampled_from(TYPOS),
    pos=st.integers(0, 4),
)
@example(
    setup={
        "n_layer": 3,
        "n_embd": 4,
        "bias": True,
        "lora_attn": False,
        "lora_mlp": False,
        "names": None,
        "seed": 0,
    },
    problem="other shape",
    typo=TYPOS[0],
    pos=0,
)
@learner_code()
def test_bad_stacks_and_names_raise_value_error_and_change_nothing(
    impl, ref, setup, problem, typo, pos
) -> None:
    (share,) = require(impl, "share_main_matrices")
    blocks = build(ref, setup)
    names = list(MAIN if setup["names"] is None else setup["names"])
    drawn = dict(setup, problem=problem)
    if problem == "one block":
        one = nn.ModuleList([blocks[0]])
        expect_blocks_refusal(
            lambda: share_closed(share, one, tuple(names)),
            one,
            problem="a single block",
            drawn=drawn,
            hint="sharing needs at least two blocks: check len(blocks) first",
        )
        return
    if problem == "unknown name":
        names.insert(min(pos, len(names)), typo)
        drawn["names"] = names
        expect_blocks_refusal(
            lambda: share_closed(share, blocks, tuple(names)),
            blocks,
            problem=f"the unknown layer name {typo!r}",
            drawn=drawn,
            hint="look every name up in every block before aliasing anything",
            mention=typo,
        )
        return
    # The LAST block differs, so a solution that aliases while checking has already changed the others.
    if problem == "other shape":
        odd = build(ref, setup, n_layer=1, n_embd=setup["n_embd"] + 2)[0]
        what = f"a last block of width {setup['n_embd'] + 2} (the others: {setup['n_embd']})"
    else:
        odd = build(ref, setup, n_layer=1, bias=not setup["bias"])[0]
        what = f"a last block with bias={not setup['bias']} (the others: bias={setup['bias']})"
    blocks[-1] = odd
    hint = (
        "compare each layer's weight shape and whether it has a bias with block 0's: aliasing mismatched "
        "tensors gives a stack that fails later, far from the cause"
    )
    expect_blocks_refusal(
        lambda: share_closed(share, blocks, tuple(names)), blocks, problem=what, drawn=drawn, hint=hint
    )
