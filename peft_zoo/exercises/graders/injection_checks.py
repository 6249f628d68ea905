"""Checks of an injected model (challenges 04, 05, 09, 10): the module tree, the layers'
settings, the trainable flags, the returned parameter list and the behaviour against the
reference model.

Every failure message says what was drawn, what was expected, what came back and which
classic mistake that pattern usually means. The models and strategies are in
:mod:`.injection_zoo`; calling the learner's injector in :mod:`.injection_calls`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn

from peft_zoo import LoRALinear
from peft_zoo.exercises.grading import assert_matches
from peft_zoo.testing import explain

# ----------------------------------------------------------------------------- the module tree


def check_wrapped(
    model: nn.Module,
    before: Mapping[str, nn.Module],
    targets: Sequence[str],
    wrapper: type[nn.Module],
    *,
    drawn: Mapping[str, Any],
    missed_hint: str | None = None,
) -> None:
    """Every target is now a ``wrapper`` holding the ORIGINAL Linear as ``.base``; no other
    module was wrapped or replaced; no wrapper wraps another wrapper.

    ``before`` is ``dict(model.named_modules())`` taken before the injection.
    """
    cls = wrapper.__name__
    for name in targets:
        now = _module_at(model, name)
        if not isinstance(now, wrapper):
            raise AssertionError(
                explain(
                    f"{name!r} should now be a peft_zoo.{cls}",
                    drawn=drawn,
                    expected=f"peft_zoo.{cls} wrapping the original {name!r}",
                    got=type(now).__name__ if now is not None else "no module at that path",
                    hint=_unwrapped_hint(model, before, name, now, cls, missed_hint),
                )
            )
    for name in targets:
        base = model.get_submodule(name).base
        if base is not before[name]:
            raise AssertionError(
                explain(
                    f"{name!r}: the {cls} must wrap the original Linear object",
                    drawn=drawn,
                    got=f"base is a different {type(base).__name__}",
                    hint="pass the existing module itself (no copy, no new nn.Linear): its pretrained "
                    "weights are the point",
                )
            )
    _check_wrapped_once(model, before, targets, wrapper, drawn=drawn)
    _check_others_untouched(model, before, targets, cls, drawn=drawn)


def _module_at(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _unwrapped_hint(
    model: nn.Module,
    before: Mapping[str, nn.Module],
    name: str,
    now: nn.Module | None,
    cls: str,
    missed_hint: str | None,
) -> str | None:
    """Why the target ``name`` is not a ``cls`` now: the classic mistakes behind each pattern."""
    if "." in name and name in model._modules:
        return (
            f"setattr(model, {name!r}, layer) registers a new child literally named {name!r} on the "
            "root and leaves the real layer in place: set the attribute on the parent, "
            f"setattr(model.get_submodule({name.rpartition('.')[0]!r}), {name.rpartition('.')[2]!r}, layer)"
        )
    if now is before.get(name) and "." in name:
        return missed_hint or (
            "a nested layer was left as it was: replacing needs the parent module "
            "(model.get_submodule(name.rpartition('.')[0])), not the root"
        )
    if now is not None and type(now).__name__ == cls:
        return f"use peft_zoo.{cls} (imported at the top of the stub), not your own class"
    return None


def _check_wrapped_once(
    model: nn.Module,
    before: Mapping[str, nn.Module],
    targets: Sequence[str],
    wrapper: type[nn.Module],
    *,
    drawn: Mapping[str, Any],
) -> None:
    """No wrapper wraps another, and the wrappers are exactly the targets plus the old ones."""
    cls = wrapper.__name__
    nested = [n for n, m in model.named_modules() if isinstance(m, wrapper) and isinstance(m.base, wrapper)]
    if nested:
        raise AssertionError(
            explain(
                f"a {cls} wraps another {cls}",
                drawn=drawn,
                got=f"{nested}: their .base is itself a {cls}",
                hint=f"double wrapping: the .base of an existing {cls} is an nn.Linear but already adapted; skip it",
            )
        )
    wrapped = {n for n, m in model.named_modules() if isinstance(m, wrapper)}
    expected = set(targets) | {n for n, m in before.items() if isinstance(m, wrapper)}
    if wrapped != expected:
        raise AssertionError(
            explain(
                f"{cls} layers at the wrong places",
                drawn=drawn,
                expected=str(sorted(expected)),
                got=str(sorted(wrapped)),
                hint="wrap exactly the layers you were asked to, each once",
            )
        )


def _check_others_untouched(
    model: nn.Module,
    before: Mapping[str, nn.Module],
    targets: Sequence[str],
    cls: str,
    *,
    drawn: Mapping[str, Any],
) -> None:
    """Every module that was not a target is still the same object at the same path."""
    for name, module in before.items():
        if name in targets:
            continue
        now = _module_at(model, name)
        if now is not module:
            raise AssertionError(
                explain(
                    f"{name!r} was not a target but was replaced or removed",
                    drawn=drawn,
                    expected=f"the original {type(module).__name__}, untouched",
                    got=type(now).__name__ if now is not None else "no module at that path",
                    hint=f"double wrapping? {name!r} is the .base of an existing {cls}"
                    if name.endswith(".base")
                    else "only the targets may change",
                )
            )


def check_same_tree(mine: nn.Module, theirs: nn.Module, *, drawn: Mapping[str, Any]) -> None:
    """The two models have the same module paths with the same types, in the same order."""
    a = [(n, type(m).__name__) for n, m in mine.named_modules()]
    b = [(n, type(m).__name__) for n, m in theirs.named_modules()]
    if a != b:
        diff = [f"{n}: {t}" for n, t in a if (n, t) not in b][:6]
        missing = [f"{n}: {t}" for n, t in b if (n, t) not in a][:6]
        raise AssertionError(
            explain(
                "the module tree differs from the reference's",
                drawn=drawn,
                expected=f"also these modules: {missing}" if missing else "the same modules, in order",
                got=f"unexpected modules: {diff}" if diff else "the same modules in another order",
            )
        )


def check_lora_settings(
    model: nn.Module, targets: Sequence[str], rank: int, alpha: float | None, *, drawn: Mapping[str, Any]
) -> None:
    """Each LoRA layer at ``targets`` got the drawn rank and alpha."""
    expected_scale = (rank if alpha is None else alpha) / rank
    for name in targets:
        layer = cast(LoRALinear, model.get_submodule(name))  # check_wrapped has made sure of it
        got_rank = layer.lora_A.shape[0]
        if got_rank != rank or abs(layer.scale - expected_scale) > 1e-9 * max(1.0, expected_scale):
            raise AssertionError(
                explain(
                    f"{name!r}: wrong rank or scale",
                    drawn=drawn,
                    expected=f"rank {rank}, scale {expected_scale:.6g} (alpha / rank, alpha defaults to rank)",
                    got=f"rank {got_rank}, scale {layer.scale:.6g}",
                    hint="pass rank and alpha on to the layer: LoRALinear(linear, rank, alpha)",
                )
            )


NOT_FROZEN_HINT = (
    "base layer not frozen: the wrapped layer's own base is not enough, every parameter of the model "
    "that is not an adapter parameter must end frozen (as PEFT's inject_adapter_in_model does). For "
    "example model.requires_grad_(False) after replacing, then p.requires_grad_(True) for the new "
    "adapter parameters"
)


def check_requires_grad(
    mine: nn.Module,
    theirs: nn.Module,
    *,
    drawn: Mapping[str, Any],
    hint: str | None = None,
    either: Collection[str] = (),
) -> None:
    """Every parameter has the same ``requires_grad`` as in the reference model, except the
    ones named in ``either`` (adapter parameters that were in the model before the call: an
    answer may keep their flags or freeze them)."""
    a = {n: p.requires_grad for n, p in mine.named_parameters() if n not in either}
    b = {n: p.requires_grad for n, p in theirs.named_parameters() if n not in either}
    should_freeze = sorted(n for n in b if b[n] is False and a.get(n) is True)
    should_train = sorted(n for n in b if b[n] is True and a.get(n) is False)
    if should_freeze:
        raise AssertionError(
            explain(
                "these parameters are trainable but should be frozen",
                drawn=drawn,
                got=str(should_freeze[:8]) + (" ..." if len(should_freeze) > 8 else ""),
                hint=hint or NOT_FROZEN_HINT,
            )
        )
    if should_train:
        raise AssertionError(
            explain(
                "these parameters are frozen but should be trainable",
                drawn=drawn,
                got=str(should_train[:8]) + (" ..." if len(should_train) > 8 else ""),
                hint=hint
                or "the new adapter parameters must be trainable: re-enable them after freezing the model",
            )
        )


# ----------------------------------------------------------------------------- the returned parameters


def check_param_list(
    got: Sequence[Any],
    expected: Sequence[nn.Parameter],
    model: nn.Module,
    *,
    what: str,
    drawn: Mapping[str, Any],
    order: str = "name order",
) -> None:
    """``got`` is exactly ``expected``: the same Parameter objects, in that order, once each."""
    names = {id(p): n for n, p in model.named_parameters()}

    def label(p: Any) -> str:
        if not isinstance(p, torch.Tensor):
            return f"<{type(p).__name__}>"
        return names.get(id(p), f"<a tensor of shape {tuple(p.shape)} that is not in the model>")

    if [id(p) for p in got] == [id(p) for p in expected] and len(got) == len(expected):
        return
    got_names, want_names = [label(p) for p in got], [label(p) for p in expected]
    want_ids = {id(p) for p in expected}
    extra = [label(p) for p in got if id(p) not in want_ids]
    missing = [label(p) for p in expected if id(p) not in {id(q) for q in got}]
    dupes = sorted({n for n in got_names if got_names.count(n) > 1})
    if any(n.startswith("<") for n in extra):
        hint = (
            "return the Parameter objects themselves (not .data, .clone() or .detach()): an optimizer "
            "given copies trains nothing"
        )
    elif any(n.rsplit(".", 1)[-1] in ("weight", "bias") and ".base." in f".{n}" for n in extra):
        hint = (
            "the list holds frozen base weights: model.parameters() / layer.parameters() include the "
            "wrapped Linear's weight and bias; return only the new adapter parameters"
        )
    elif any(n.rsplit(".", 1)[-1] in ("lora_A", "lora_B", "scale") for n in extra):
        hint = (
            "the list holds adapter parameters of layers that were already in the model: return only "
            "the parameters of the layers this call created"
        )
    elif extra:
        hint = "the list holds parameters that are not the new adapter parameters"
    elif dupes:
        hint = "the same parameter appears more than once: an optimizer would update it twice per step"
    elif missing:
        hint = f"these parameters are missing from the list: {missing[:6]}"
    else:
        hint = f"same parameters, wrong order: return them in {order}"
    raise AssertionError(
        explain(
            f"{what}: wrong parameter list",
            drawn=drawn,
            expected=str(want_names),
            got=str(got_names),
            hint=hint,
        )
    )


# ----------------------------------------------------------------------------- behaviour


def compare_outputs_and_grads(
    mine: nn.Module,
    theirs: nn.Module,
    adapter_names: Sequence[str],
    x: torch.Tensor,
    *,
    drawn: Mapping[str, Any],
    seed: int,
    either: Collection[str] = (),
) -> None:
    """Give the adapter parameters ``adapter_names`` identical random values in both models,
    then compare the outputs and the gradients of every parameter (for those in ``either``,
    frozen or trainable both pass: only a gradient that is there is compared)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in adapter_names:
            p = theirs.get_parameter(name)
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
            mine.get_parameter(name).copy_(p)
    out_mine, out_theirs = mine(x), theirs(x)
    assert_matches(
        out_mine, out_theirs, what="model output (adapter parameters set to random values)", drawn=drawn
    )
    cot = torch.randn(out_theirs.shape, generator=g, dtype=out_theirs.dtype)
    (out_mine * cot).sum().backward()
    (out_theirs * cot).sum().backward()
    mine_params = dict(mine.named_parameters())
    for name, p in theirs.named_parameters():
        q = mine_params[name]
        if name in either and (p.grad is None or q.grad is None):
            continue
        if p.grad is None:
            if q.grad is not None:
                raise AssertionError(
                    explain(
                        f"{name} received a gradient but should be frozen",
                        drawn=drawn,
                        hint=NOT_FROZEN_HINT,
                    )
                )
            continue
        if q.grad is None:
            raise AssertionError(
                explain(
                    f"{name} received no gradient",
                    drawn=drawn,
                    hint="is it frozen (requires_grad=False) or cut off from the forward pass?",
                )
            )
        assert_matches(q.grad, p.grad, what=f"gradient of {name}", drawn=drawn)
