"""Grader for challenge 13 · adapter_state_dict. Run: peft-zoo check 13 (or pytest this file)."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from peft_zoo import inject_lora
from peft_zoo.exercises.graders.refusals import expect_refusal
from peft_zoo.exercises.grading import assert_matches, learner_code, require
from peft_zoo.models import TinyMLP, TinyTransformer, TinyTransformerConfig
from peft_zoo.testing import assert_model_unchanged, explain, fingerprint, seeds

CHALLENGE = "ex13_adapter_state_dict"
pytestmark = pytest.mark.timeout(120)

# Classic mistakes, planted into a copy of the reference answer by the test suite: the
# grader must reject every one. (description, exact snippet of the answer, replacement,
# and the bug's name as this grader's "likely:" line gives it: tests/test_diagnosis.py checks it)
PLANTED_BUGS: list[tuple[str, ...]] = [
    (
        "the saved dict includes the frozen base tensors (no key filter)",
        "for k, v in model.state_dict().items() if k.endswith(ADAPTER_SUFFIXES)}",
        "for k, v in model.state_dict().items()}",
        "filter model.state_dict() on k.endswith(('lora_A', 'lora_B'))",
    ),
    (
        "the loader copies entries while validating them: a bad dict leaves a partial load",
        "    missing = sorted(set(params) - set(state))\n",
        "    for k, v in state.items():  # validate-as-you-go\n"
        "        if k not in params:\n"
        '            raise KeyError(f"unexpected key {k}")\n'
        "        if v.shape != params[k].shape:\n"
        '            raise ValueError(f"wrong shape for {k}")\n'
        "        with torch.no_grad():\n"
        "            params[k].copy_(v)\n"
        "    missing = sorted(set(params) - set(state))\n",
        "validate everything first, copy afterwards",
    ),
    (
        "unexpected keys are not checked (only missing ones)",
        "if missing or unexpected:",
        "if missing:",
        "missing AND unexpected",
    ),
    (
        "shapes are not checked before copying",
        "    if wrong:\n",
        "    if False:\n",
        "check keys and shapes yourself before copying",
    ),
    (
        "the loader aliases the saved tensors instead of copying them (p.data = tensor)",
        "p.copy_(state[k])",
        "p.data = state[k]",
        "`param.data = tensor` aliases them",
    ),
]

SUFFIXES = ("lora_A", "lora_B")
_MLP_LINEARS = ("encoder.0", "encoder.2.branch.fc1", "encoder.2.branch.fc2", "head")
_TT_CONFIG = TinyTransformerConfig(
    vocab_size=16, max_len=8, d_model=8, n_heads=2, d_ff=12, n_layers=2, n_classes=3
)
_TT_SUBLAYERS = (
    "attn.branch.q",
    "attn.branch.k",
    "attn.branch.v",
    "attn.branch.o",
    "ffn.branch.fc1",
    "ffn.branch.fc2",
)
_TT_LINEARS = (*(f"blocks.{i}.{sub}" for i in range(_TT_CONFIG.n_layers) for sub in _TT_SUBLAYERS), "head")


@st.composite
def setups(draw: st.DrawFn) -> dict:
    """A small model kind, the Linear layers to adapt, a rank and a seed."""
    kind = draw(st.sampled_from(["mlp", "transformer"]))
    names = _MLP_LINEARS if kind == "mlp" else _TT_LINEARS
    return {
        "model": kind,
        "targets": draw(st.lists(st.sampled_from(names), min_size=1, max_size=5, unique=True)),
        "rank": draw(st.integers(1, 4)),
        "seed": draw(seeds()),
    }


def _base(setup) -> nn.Module:
    torch.manual_seed(setup["seed"])
    return TinyMLP(d_in=6, d_hidden=8, d_out=3) if setup["model"] == "mlp" else TinyTransformer(_TT_CONFIG)


def _inputs(setup) -> torch.Tensor:
    g = torch.Generator().manual_seed(setup["seed"] % 1000)
    if setup["model"] == "mlp":
        return torch.randn(4, 6, generator=g)
    return torch.randint(0, _TT_CONFIG.vocab_size, (2, 5), generator=g)


def _pair(setup) -> tuple[nn.Module, nn.Module]:
    """(trained, fresh): LoRA on the same targets of two copies of one base; the trained
    one holds random adapters (B nonzero), the fresh one its own initial A and B = 0."""
    base = _base(setup)
    trained, _ = inject_lora(copy.deepcopy(base), setup["targets"], setup["rank"])
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if name.endswith(SUFFIXES):
                p.normal_(0.0, 0.5)
    fresh, _ = inject_lora(copy.deepcopy(base), setup["targets"], setup["rank"])
    return trained.eval(), fresh.eval()


def _adapter_keys(model: nn.Module) -> list[str]:
    return [k for k in model.state_dict() if k.endswith(SUFFIXES)]


def _good_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A correct adapter dict, built independently of the learner's code."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.endswith(SUFFIXES)}


def _drawn(setup, **extra):
    return {**setup, **extra}


@settings(max_examples=20, deadline=None)
@given(setup=setups())
@learner_code()
def test_saved_dict_holds_exactly_the_adapter_tensors(impl, setup) -> None:
    (adapter_state_dict,) = require(impl, "adapter_state_dict")
    trained, _ = _pair(setup)
    drawn = _drawn(setup)
    state = adapter_state_dict(trained)
    assert isinstance(state, dict), explain(
        "adapter_state_dict must return a dict", drawn=drawn, got=type(state).__name__
    )
    expected = _adapter_keys(trained)
    extra = sorted(set(state) - set(expected))
    base_keys = [k for k in extra if k in trained.state_dict()]
    assert not base_keys, explain(
        "the adapter dict includes frozen base tensors",
        drawn=drawn,
        expected=f"only keys ending in lora_A / lora_B ({len(expected)} keys)",
        got=f"also {base_keys[:6]}{' ...' if len(base_keys) > 6 else ''}",
        hint="filter model.state_dict() on k.endswith(('lora_A', 'lora_B')): the base model is "
        "shipped separately, the whole point of an adapter checkpoint is to leave it out",
    )
    missing = sorted(set(expected) - set(state))
    assert not missing and not extra, explain(
        "the adapter dict's keys differ from model.state_dict()'s adapter keys",
        drawn=drawn,
        expected=str(expected),
        got=str(sorted(state)),
        hint="use the keys exactly as model.state_dict() writes them (full dotted paths), so "
        "load_adapter_state_dict can match them on another copy of the model",
    )
    live = trained.state_dict()
    for k in expected:
        assert isinstance(state[k], torch.Tensor) and torch.equal(state[k], live[k]), explain(
            f"state[{k!r}] does not hold the model's current {k.rsplit('.', 1)[-1]}",
            drawn=drawn,
            expected=f"a tensor equal to model.state_dict()[{k!r}], shape {tuple(live[k].shape)}",
            got=repr(getattr(state[k], "shape", state[k])),
        )


@settings(max_examples=20, deadline=None)
@given(setup=setups())
@learner_code()
def test_roundtrip_into_a_fresh_copy_gives_identical_outputs(impl, setup) -> None:
    adapter_state_dict, load_adapter_state_dict = require(
        impl, "adapter_state_dict", "load_adapter_state_dict"
    )
    trained, fresh = _pair(setup)
    drawn = _drawn(setup)
    x = _inputs(setup)
    base_before = {k: v.clone() for k, v in fresh.state_dict().items() if not k.endswith(SUFFIXES)}
    params_before = dict(fresh.named_parameters())

    state = adapter_state_dict(trained)
    result = load_adapter_state_dict(fresh, state)

    assert result is None, explain(
        "load_adapter_state_dict should load in place and return None", got=repr(result)
    )
    with torch.no_grad():
        assert_matches(
            fresh(x),
            trained(x),
            what="outputs of the fresh model after loading the saved adapters",
            drawn=drawn,
            bugs={"nothing was loaded (the fresh model's own initial adapters)": lambda: _pair(setup)[1](x)},
        )
    now = dict(fresh.named_parameters())
    replaced = [k for k, p in params_before.items() if now.get(k) is not p]
    assert not replaced, explain(
        "loading replaced Parameter objects instead of copying into them",
        drawn=drawn,
        got=f"new objects at {replaced[:4]}",
        hint="param.copy_(tensor) under torch.no_grad(): an optimizer built before loading still "
        "holds the old Parameters and would train tensors the model no longer uses",
    )
    frozen = [k for k, p in now.items() if k.endswith(SUFFIXES) and not p.requires_grad]
    assert not frozen, explain("loading froze adapter parameters", drawn=drawn, got=str(frozen[:4]))
    changed = [k for k, v in base_before.items() if not torch.equal(fresh.state_dict()[k], v)]
    assert not changed, explain("loading changed base tensors", drawn=drawn, got=str(changed[:4]))

    # The loaded parameters must own their values: editing the dict afterwards changes nothing.
    snapshot = {k: p.detach().clone() for k, p in now.items()}
    with torch.no_grad():
        for v in state.values():
            v.add_(1.0)
    aliased = [k for k, p in fresh.named_parameters() if not torch.equal(p, snapshot[k])]
    assert not aliased, explain(
        "the loaded parameters share memory with the saved dict",
        drawn=drawn,
        got=f"changing the dict after loading changed {aliased[:4]}",
        hint="copy the values (param.copy_(tensor)); `param.data = tensor` aliases them, so "
        "two models (or a model and its checkpoint) silently change together",
    )


def _reorder(state: dict, key: str, value: torch.Tensor, position: int) -> dict:
    """``state`` with ``key: value`` placed at ``position`` in iteration order."""
    items = [(k, v) for k, v in state.items() if k != key]
    items.insert(position, (key, value))
    return dict(items)


def _bad_dicts(model: nn.Module, setup) -> list[tuple[str, dict, tuple[type[BaseException], ...], str]]:
    """(what is wrong, the bad dict, errors accepted, a key the message should name), with the
    bad entry first, in the middle and last: a loader that copies as it goes is caught."""
    good = _good_state(model)
    keys = list(good)
    positions = sorted({0, len(keys) // 2, len(keys) - 1})
    targeted = set(setup["targets"])
    names = _MLP_LINEARS if setup["model"] == "mlp" else _TT_LINEARS
    other = next((n for n in names if n not in targeted), "extra")
    extra_key = f"{other}.lora_A"
    out = []
    for pos in positions:
        k = keys[pos]
        missing = {key: v for key, v in good.items() if key != k}
        out.append((f"the key {k!r} is missing", missing, (KeyError, ValueError), k))
        extra = _reorder(good, extra_key, torch.randn(setup["rank"], 4), pos)
        out.append((f"an unexpected key {extra_key!r} is present", extra, (KeyError, ValueError), extra_key))
        shape = list(good[k].shape)
        shape[0 if k.endswith("lora_A") else 1] += 1  # a rank that does not match
        wrong = _reorder(good, k, torch.randn(*shape), pos)
        out.append(
            (f"{k!r} has shape {tuple(shape)} instead of {tuple(good[k].shape)}", wrong, (ValueError,), k)
        )
    return out


@settings(max_examples=15, deadline=None)
@given(setup=setups())
@learner_code()
def test_bad_dicts_raise_and_leave_the_model_unchanged(impl, setup) -> None:
    (load_adapter_state_dict,) = require(impl, "load_adapter_state_dict")
    trained, fresh = _pair(setup)
    drawn = _drawn(setup)
    before = fingerprint(fresh)
    for problem, bad, accepted, named in _bad_dicts(trained, setup):
        expect_refusal(
            lambda bad=bad: load_adapter_state_dict(fresh, bad),
            drawn=drawn,
            errors=accepted,
            mention=named,
            when_unnamed=f"the error for a bad dict should name the offending key ({problem})",
            when_wrong=f"a bad adapter dict ({problem}) raised the wrong error",
            wrong_hint="check keys and shapes yourself before copying and raise KeyError / ValueError "
            "with a clear message; a RuntimeError from copy_ comes after earlier entries were "
            "already copied",
            when_accepted=f"a bad adapter dict was accepted: {problem}",
            accepted_hint="compare the dict's keys with the model's adapter keys in both directions "
            "(missing AND unexpected), and every shape, before the first copy_",
            accepted_expected=f"{' or '.join(e.__name__ for e in accepted)} before anything is copied",
        )
        try:
            assert_model_unchanged(fresh, before, what=f"after refusing a bad dict ({problem})")
        except AssertionError as err:
            raise AssertionError(
                explain(
                    str(err),
                    drawn=drawn,
                    hint="validate everything first, copy afterwards: a loader that copies entries "
                    "while it checks them leaves a half-loaded model when a later entry is bad",
                )
            ) from None
