"""Checks shared by the injection graders (challenges 04, 05, 09 and 10).

- a zoo of small models (float64 unless asked otherwise) whose ``nn.Linear`` layers sit at every kind of dotted
  path: inside ``nn.Sequential`` (``encoder.0``), ``nn.ModuleList`` (``blocks.1.attn.branch.q``),
  both (``layers.0.2``) and residual units several levels deep;
- hypothesis strategies that draw which of those layers to target (and bad names);
- checks of the module tree, the returned parameter list and the trainable flags whose
  failure messages say what was drawn, what was expected, what came back and which classic
  mistake that pattern usually means.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

import torch
from hypothesis import strategies as st
from torch import nn

import peft_zoo
import peft_zoo.injection.inject
import peft_zoo.injection.surgery
from peft_zoo.exercises.grading import assert_matches
from peft_zoo.models import TinyMLP, TinyTransformer, TinyTransformerBlock, TinyTransformerConfig
from peft_zoo.testing import alphas, assert_model_unchanged, explain, fingerprint, seeds

# ----------------------------------------------------------------------------- the model zoo


class Stack(nn.Module):
    """``(..., d) -> (..., d)``: an ``nn.ModuleList`` of ``nn.Sequential`` residual layers.

    Linear paths: ``inp``, ``layers.{0,1}.0``, ``layers.{0,1}.2``, ``out`` (no bias).
    """

    def __init__(self, d_model: int = 6, n_layers: int = 2) -> None:
        super().__init__()
        self.d_model = d_model
        self.inp = nn.Linear(d_model, d_model)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.Tanh(), nn.Linear(2 * d_model, d_model))
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for layer in self.layers:
            h = h + layer(h)
        return self.out(self.norm(h))


D_MODEL = 6  # every zoo model maps (..., 6) -> (..., 6) except the token classifier


def _transformer() -> nn.Module:
    cfg = TinyTransformerConfig(vocab_size=11, max_len=6, d_model=D_MODEL, n_heads=2, d_ff=8, n_layers=2)
    return TinyTransformer(cfg)


_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "TinyMLP": lambda: TinyMLP(d_in=D_MODEL, d_hidden=D_MODEL, d_out=D_MODEL),
    "TinyTransformerBlock": lambda: TinyTransformerBlock(d_model=D_MODEL, n_heads=2, d_ff=8),
    "Stack": Stack,
    "TinyTransformer": _transformer,
}
KINDS: tuple[str, ...] = tuple(_BUILDERS)
# Models that map (..., d_model) -> (..., d_model), so an AdapterBlock can wrap them.
SQUARE_KINDS: tuple[str, ...] = ("TinyMLP", "TinyTransformerBlock", "Stack")


def build_model(kind: str, seed: int, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A fresh model of ``kind`` in ``dtype``; the same ``seed`` gives the same weights."""
    torch.manual_seed(seed)
    return _BUILDERS[kind]().to(dtype)


def example_input(kind: str, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """An input batch for a model of ``kind``."""
    g = torch.Generator().manual_seed(seed + 1)
    if kind == "TinyTransformer":
        return torch.randint(0, 11, (2, 5), generator=g)  # (B, T) token ids
    if kind == "TinyTransformerBlock":
        return torch.randn(2, 3, D_MODEL, generator=g, dtype=dtype)  # (B, T, d)
    return torch.randn(3, D_MODEL, generator=g, dtype=dtype)  # (B, d)


def _names(kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    model = _BUILDERS[kind]()
    linears = tuple(n for n, m in model.named_modules() if isinstance(m, nn.Linear))
    others = tuple(n for n, m in model.named_modules() if not isinstance(m, nn.Linear))
    return linears, others


LINEARS: dict[str, tuple[str, ...]] = {}  # kind -> dotted paths of its nn.Linear layers
NON_LINEARS: dict[str, tuple[str, ...]] = {}  # kind -> every other module path ('' is the root)
for _kind in KINDS:
    LINEARS[_kind], NON_LINEARS[_kind] = _names(_kind)


def missing_names(kind: str) -> tuple[str, ...]:
    """Names that ``named_modules()`` does not list: a parameter path, an index past the end,
    a bare last component of a nested path, a typo."""
    nested_all = [n for n in LINEARS[kind] if "." in n]
    nested = next((n for n in nested_all if not n.rpartition(".")[2].isdigit()), nested_all[0])
    container = nested.split(".")[0]
    return (
        f"{LINEARS[kind][0]}.weight",  # a parameter, not a module
        f"{container}.9",  # index / attribute that does not exist
        nested.rpartition(".")[2],  # the short name only ("fc1" for "encoder.2.branch.fc1")
        nested.upper(),  # wrong case
        "no_such_layer",
    )


# ----------------------------------------------------------------------------- strategies


@st.composite
def injection_cases(
    draw: st.DrawFn, kinds: Sequence[str] = KINDS, min_size: int = 1, max_rank: int = 4
) -> dict[str, Any]:
    """A model kind, a non-empty list of its Linear paths in a drawn order, rank, alpha, seed."""
    kind = draw(st.sampled_from(list(kinds)))
    names = draw(st.lists(st.sampled_from(LINEARS[kind]), min_size=min_size, unique=True))
    return {
        "model": kind,
        "names": names,
        "rank": draw(st.integers(1, max_rank)),
        "alpha": draw(alphas()),
        "seed": draw(seeds()),
    }


@st.composite
def bad_name_cases(draw: st.DrawFn, kinds: Sequence[str] = KINDS) -> dict[str, Any]:
    """Valid Linear paths with one bad name inserted *after* at least one of them, so an
    injector that mutates before validating has already changed something when it fails."""
    case = draw(injection_cases(kinds))
    problem = draw(st.sampled_from(["does not exist", "is not an nn.Linear"]))
    pool = missing_names(case["model"]) if problem == "does not exist" else NON_LINEARS[case["model"]]
    bad = draw(st.sampled_from(pool))
    at = draw(st.integers(1, len(case["names"])))
    return {**case, "names": [*case["names"][:at], bad, *case["names"][at:]], "bad": bad, "problem": problem}


# ----------------------------------------------------------------------------- calling learner code


@contextlib.contextmanager
def library_injectors_closed(exercise: str) -> Iterator[None]:
    """While active, peft_zoo's own injectors refuse to run: the exercise is to write one."""
    injectors = peft_zoo.injection.inject  # the module whose replace_linears inject_* call
    original = injectors.replace_linears

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(
            f"{exercise} called peft_zoo's own injector (peft_zoo.inject_lora / inject_ia3): "
            "write the injection yourself, using only the layer class"
        )

    injectors.replace_linears = refuse
    try:
        yield
    finally:
        injectors.replace_linears = original


@contextlib.contextmanager
def library_function_closed(name: str, exercise: str) -> Iterator[None]:
    """While active, ``peft_zoo.<name>`` (and the same name in the injection modules) refuses to run."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{exercise} called peft_zoo.{name}: write it yourself")

    homes = (peft_zoo, peft_zoo.injection.inject, peft_zoo.injection.surgery)
    owners = [m for m in homes if hasattr(m, name)]
    originals = [getattr(m, name) for m in owners]
    for m in owners:
        setattr(m, name, refuse)
    try:
        yield
    finally:
        for m, original in zip(owners, originals, strict=True):
            setattr(m, name, original)


def call(
    fn: Callable[..., Any],
    *args: Any,
    what: str,
    drawn: Mapping[str, Any],
    hints: Mapping[type[BaseException], str] | None = None,
) -> Any:
    """Call learner code. ``NotImplementedError`` passes through (the harness turns it into
    "not implemented yet"); any other exception becomes a failure that explains itself, with
    the hint of the first matching exception type in ``hints``."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise
    except Exception as err:
        hint = next((h for kind, h in (hints or {}).items() if isinstance(err, kind)), None)
        raise AssertionError(
            explain(
                f"{what} raised {type(err).__name__} on valid input",
                drawn=drawn,
                got=f"{type(err).__name__}: {err}",
                hint=hint,
            )
        ) from None


def _changes(model: nn.Module, before: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Module paths whose module was replaced and parameters whose ``requires_grad`` changed
    since ``before`` (a :func:`peft_zoo.testing.fingerprint`). Safe on a model that now
    contains itself (``state_dict`` would recurse forever there)."""
    ids = {n: id(m) for n, m in model.named_modules()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    replaced = sorted(n for n, i in before["ids"].items() if ids.get(n) != i)
    flags = sorted(n for n, f in before["requires_grad"].items() if grads.get(n) != f)
    return replaced, flags


def check_refused(
    fn: Callable[..., Any],
    *args: Any,
    model: nn.Module,
    bad: str | None,
    what: str,
    drawn: Mapping[str, Any],
    not_raised_hint: str,
    reason: str = "for a bad name",
) -> None:
    """``fn(*args)`` must raise ``ValueError`` (mentioning ``bad`` unless it is None) and leave
    ``model`` exactly as it was: same modules (same objects), same tensors, same
    ``requires_grad`` flags."""
    wanted = "ValueError" if bad is None else f"ValueError naming {bad!r}"
    before = fingerprint(model)
    try:
        fn(*args)
    except NotImplementedError:
        raise
    except ValueError as err:
        message = str(err)
    except Exception as err:
        if isinstance(err, AttributeError):
            hint = (
                "model.get_submodule raises AttributeError for a missing path: catch it and raise ValueError"
            )
        elif isinstance(err, TypeError):
            hint = (
                "the layer class refused a module with a TypeError, probably in the middle of the injection: "
                "check isinstance(module, nn.Linear) yourself, before replacing anything, and raise ValueError"
            )
        else:
            hint = None
        raise AssertionError(
            explain(
                f"{what} must raise ValueError {reason}",
                drawn=drawn,
                expected=wanted,
                got=f"{type(err).__name__}: {err}",
                hint=hint,
            )
        ) from None
    else:
        replaced, flags = _changes(model, before)
        got = "no exception"
        if replaced or flags:
            got += (
                f", and the model was changed (modules replaced: {replaced}, requires_grad changed: {flags})"
            )
        raise AssertionError(
            explain(
                f"{what} must raise ValueError {reason}",
                drawn=drawn,
                expected=wanted,
                got=got,
                hint=not_raised_hint,
            )
        )
    if bad is not None and bad not in message:
        raise AssertionError(
            explain(
                "the ValueError should name the problem",
                drawn=drawn,
                expected=f"a message that contains {bad!r}",
                got=repr(message),
                hint='say which name is wrong and why, e.g. f"no module named {name!r}"',
            )
        )
    replaced, flags = _changes(model, before)
    if replaced or flags:
        got = f"replaced before the error: {replaced}" if replaced else f"requires_grad changed: {flags}"
        raise AssertionError(
            explain(
                f"{what} raised, but only after changing the model",
                drawn=drawn,
                expected="the model exactly as it was (validate every name before replacing any)",
                got=got,
                hint="no validation before mutating: the names before the bad one were already injected, "
                "leaving a half-injected model"
                if replaced
                else "building the layer freezes the Linear it wraps, and freezing the model changes every flag: "
                "build layers and freeze only after every name is checked",
            )
        )
    try:
        assert_model_unchanged(model, before, what=f"{what} raised, but the model was changed first")
    except RecursionError:
        raise AssertionError(
            explain(
                f"{what} raised, but the model now contains itself", drawn=drawn, hint="was the root wrapped?"
            )
        ) from None


NESTED_HINT = (
    "every drawn name exists: model.named_modules() lists it. getattr(model, 'encoder.0') does "
    "not follow dots; resolve names with model.get_submodule(name)"
)


def unpack(
    out: Any, model: nn.Module, *, what: str, drawn: Mapping[str, Any], in_place: bool = True
) -> tuple[nn.Module, list[Any]]:
    """Check that ``out`` is ``(model, params)`` (with the same model object when ``in_place``)."""
    if not (isinstance(out, tuple) and len(out) == 2):
        raise AssertionError(
            explain(
                f"{what} must return a pair (model, params)",
                drawn=drawn,
                got=f"{type(out).__name__}: {out!r:.150}",
                hint="end with `return model, params`",
            )
        )
    returned, params = out
    if in_place and returned is not model:
        raise AssertionError(
            explain(
                f"{what} must modify the model in place and return that same object",
                drawn=drawn,
                got=f"a different {type(returned).__name__} object",
                hint="replace layers with setattr on their parent; do not deepcopy or rebuild the model",
            )
        )
    if not isinstance(params, list):
        raise AssertionError(
            explain(
                f"{what}: params must be a list",
                drawn=drawn,
                got=type(params).__name__,
                hint="a generator is used up after one pass; build a list",
            )
        )
    return returned, params


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
        try:
            now = model.get_submodule(name)
        except AttributeError:
            now = None
        if isinstance(now, wrapper):
            continue
        if "." in name and name in model._modules:
            hint = (
                f"setattr(model, {name!r}, layer) registers a new child literally named {name!r} on the "
                "root and leaves the real layer in place: set the attribute on the parent, "
                f"setattr(model.get_submodule({name.rpartition('.')[0]!r}), {name.rpartition('.')[2]!r}, layer)"
            )
        elif now is before.get(name) and "." in name:
            hint = missed_hint or (
                "a nested layer was left as it was: replacing needs the parent module "
                "(model.get_submodule(name.rpartition('.')[0])), not the root"
            )
        elif now is not None and type(now).__name__ == cls:
            hint = f"use peft_zoo.{cls} (imported at the top of the stub), not your own class"
        else:
            hint = None
        raise AssertionError(
            explain(
                f"{name!r} should now be a peft_zoo.{cls}",
                drawn=drawn,
                expected=f"peft_zoo.{cls} wrapping the original {name!r}",
                got=type(now).__name__ if now is not None else "no module at that path",
                hint=hint,
            )
        )
    for name in targets:
        layer = model.get_submodule(name)
        if layer.base is not before[name]:
            raise AssertionError(
                explain(
                    f"{name!r}: the {cls} must wrap the original Linear object",
                    drawn=drawn,
                    got=f"base is a different {type(layer.base).__name__}",
                    hint="pass the existing module itself (no copy, no new nn.Linear): its pretrained "
                    "weights are the point",
                )
            )
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
    for name, module in before.items():
        if name in targets:
            continue
        try:
            now = model.get_submodule(name)
        except AttributeError:
            now = None
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
        layer = model.get_submodule(name)
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
