"""Grader for challenge 02 · BottleneckAdapter. Run: peft-zoo check 2 (or pytest this file)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from peft_zoo.exercises.grading import assert_gradients_match, assert_matches, learner_code, require
from peft_zoo.testing import dims, dtypes, explain, leading_shapes, ranks, seeds

CHALLENGE = "ex02_bottleneck_adapter"
pytestmark = pytest.mark.timeout(120)

# Classic mistakes planted into a copy of the answer; the grader must reject every one.
PLANTED_BUGS: list[tuple[str, ...]] = [
    (
        "up_proj not zero-initialised (the down projection zeroed instead)",
        "nn.init.zeros_(self.up_proj.weight)",
        "nn.init.zeros_(self.down_proj.weight)",
        "zero up_proj's weight AND bias",
    ),
    (
        "up_proj.bias left at nn.Linear's random init",
        "\n        nn.init.zeros_(self.up_proj.bias)",
        "",
        "zero up_proj's weight AND bias",
    ),
    (
        "the residual flag is ignored (x always added)",
        "return x + delta if self.residual else delta",
        "return x + delta",
        (
            "residual=False is ignored (x + delta returned anyway)",
            "the residual's gradient is missing or doubled",
        ),
    ),
    (
        "the residual is never added",
        "return x + delta if self.residual else delta",
        "return delta",
        (
            "the residual is never added",
            "the residual is never added (forward returns only delta)",
            "the residual's gradient is missing or doubled",
        ),
    ),
    (
        "the activation is skipped",
        "self.up_proj(self.act(self.down_proj(x)))",
        "self.up_proj(self.down_proj(x))",
        "the activation is skipped (up(down(x)))",
    ),
    (
        "the activation is applied after up_proj",
        "self.up_proj(self.act(self.down_proj(x)))",
        "self.act(self.up_proj(self.down_proj(x)))",
        "the activation is applied after up_proj (act(up(down(x))))",
    ),
    (
        "'gelu' builds a ReLU",
        "self.act = nn.GELU()",
        "self.act = nn.ReLU()",
        "the other activation was built ('gelu' gave a ReLU, or 'relu' a GELU)",
    ),
    (
        "an unknown activation silently falls back to GELU",
        'if activation == "gelu":',
        'if activation != "relu":',
        "an unknown name silently fell back to a default",
    ),
    (
        "the projections have no bias",
        "self.down_proj = nn.Linear(d_model, bottleneck_dim)",
        "self.down_proj = nn.Linear(d_model, bottleneck_dim, bias=False)",
        "keep nn.Linear's bias",
    ),
]

PARAM_NAMES = ["down_proj.bias", "down_proj.weight", "up_proj.bias", "up_proj.weight"]
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


def _copy_params(mine: nn.Module, theirs: nn.Module, drawn: dict) -> None:
    """Give the learner's adapter exactly the reference adapter's weights, by parameter name."""
    own = dict(mine.named_parameters())
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            q = own.get(name)
            if q is None or tuple(q.shape) != tuple(p.shape):
                raise AssertionError(
                    explain(
                        f"cannot find parameter {name} of shape {tuple(p.shape)} in your adapter",
                        drawn=drawn,
                        expected=str({n: tuple(t.shape) for n, t in theirs.named_parameters()}),
                        got=str({n: tuple(t.shape) for n, t in own.items()}),
                        hint="down_proj = nn.Linear(d_model, bottleneck_dim), up_proj = "
                        "nn.Linear(bottleneck_dim, d_model), both with their bias",
                    )
                )
            q.copy_(p)


def _pair(impl, ref, d, r, seed, *, dtype=torch.float32, **kw):
    """The learner's adapter and the reference adapter holding identical random weights
    (up_proj nonzero, so the whole path matters)."""
    (impl_cls,) = require(impl, "BottleneckAdapter")
    drawn = {"d_model": d, "bottleneck_dim": r, "seed": seed, **kw}
    mine = impl_cls(d, r, **kw)
    theirs = ref.BottleneckAdapter(d, r, **kw)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0.0, 0.5)
    _copy_params(mine, theirs, drawn)
    return mine.to(dtype), theirs.to(dtype)


def _bugs_delta(theirs, x):
    """What the classic mistakes would output for ``forward_delta(x)``."""
    down, up, act = theirs.down_proj, theirs.up_proj, theirs.act
    other = nn.ReLU() if isinstance(act, nn.GELU) else nn.GELU()
    return {
        "the activation is skipped (up(down(x)))": lambda: up(down(x)),
        "the activation is applied after up_proj (act(up(down(x))))": lambda: act(up(down(x))),
        "the other activation was built ('gelu' gave a ReLU, or 'relu' a GELU)": lambda: up(other(down(x))),
        "forward_delta adds the residual (x + delta): only forward adds x": lambda: x + up(act(down(x))),
    }


def _bugs_forward(theirs, x):
    """What the classic mistakes would output for ``forward(x)``."""
    down, up, act = theirs.down_proj, theirs.up_proj, theirs.act
    delta = up(act(down(x)))
    bugs = {
        "the activation is skipped (x + up(down(x)))": lambda: (
            x + up(down(x)) if theirs.residual else up(down(x))
        ),
        "the residual is added twice (2x + delta)": lambda: 2 * x + delta,
    }
    if theirs.residual:
        bugs["the residual is never added (forward returns only delta)"] = lambda: delta
    else:
        bugs["residual=False is ignored (x + delta returned anyway)"] = lambda: x + delta
    return bugs


@settings(max_examples=15, deadline=None)
@given(d=dims(), r=ranks(), activation=st.sampled_from(["gelu", "relu"]), residual=st.booleans())
@learner_code()
def test_layers_names_and_shapes(impl, d, r, activation, residual) -> None:
    (impl_cls,) = require(impl, "BottleneckAdapter")
    adapter = impl_cls(d, r, activation=activation, residual=residual)
    drawn = {"d_model": d, "bottleneck_dim": r, "activation": activation, "residual": residual}
    for name, (fan_in, fan_out) in (("down_proj", (d, r)), ("up_proj", (r, d))):
        layer = getattr(adapter, name, None)
        assert isinstance(layer, nn.Linear), explain(
            f"{name} must be an nn.Linear", drawn=drawn, got=f"{type(layer).__name__}: {layer!r:.100}"
        )
        assert (layer.in_features, layer.out_features) == (fan_in, fan_out), explain(
            f"{name} has the wrong size",
            drawn=drawn,
            expected=f"nn.Linear({fan_in}, {fan_out})",
            got=f"nn.Linear({layer.in_features}, {layer.out_features})",
            hint="down_proj squeezes d_model -> bottleneck_dim, up_proj expands it back",
        )
    act = getattr(adapter, "act", None)
    assert isinstance(act, ACTIVATIONS[activation]), explain(
        f"act must be an nn.{ACTIVATIONS[activation].__name__}() for activation={activation!r}",
        drawn=drawn,
        got=f"{type(act).__name__}: {act!r:.80}",
        hint="build the module instance (nn.GELU(), not the class nn.GELU)"
        if isinstance(act, type)
        else "'gelu' must give nn.GELU() and 'relu' nn.ReLU(): are the two swapped?",
    )
    names = sorted(n for n, _ in adapter.named_parameters())
    assert names == PARAM_NAMES, explain(
        "the adapter's parameters are not exactly the two layers' weights and biases",
        drawn=drawn,
        expected=str(PARAM_NAMES),
        got=str(names),
        hint="keep nn.Linear's bias (bias=True, the default) and add no parameters of your own",
    )
    frozen = [n for n, p in adapter.named_parameters() if not p.requires_grad]
    assert not frozen, explain(
        "every adapter parameter must be trainable", drawn=drawn, got=f"frozen: {frozen}"
    )


@settings(max_examples=10, deadline=None)
@given(d=dims(), r=ranks(), name=st.sampled_from(["swish", "gelu_new", "lrelu", "no_such_activation"]))
@learner_code()
def test_unknown_activation_raises_value_error(impl, d, r, name) -> None:
    (impl_cls,) = require(impl, "BottleneckAdapter")
    drawn = {"d_model": d, "bottleneck_dim": r, "activation": name}
    try:
        adapter = impl_cls(d, r, activation=name)
    except ValueError:
        return
    except NotImplementedError:
        raise
    except Exception as err:
        raise AssertionError(
            explain(
                "an unknown activation name must raise ValueError",
                drawn=drawn,
                got=f"{type(err).__name__}: {err}",
                hint="check the name yourself (if/elif/else) and raise ValueError naming the accepted ones",
            )
        ) from None
    raise AssertionError(
        explain(
            "an unknown activation name must raise ValueError",
            drawn=drawn,
            got=f"no error; act = {getattr(adapter, 'act', None)!r}",
            hint="an unknown name silently fell back to a default: a typo like 'gleu' would go unnoticed",
        )
    )


@settings(max_examples=20, deadline=None)
@given(
    d=dims(),
    r=ranks(),
    lead=leading_shapes(),
    activation=st.sampled_from(["gelu", "relu"]),
    seed=seeds(),
)
@learner_code()
def test_initialisation_is_the_identity(impl, d, r, lead, activation, seed) -> None:
    (impl_cls,) = require(impl, "BottleneckAdapter")
    torch.manual_seed(seed)
    adapter = impl_cls(d, r, activation=activation)
    drawn = {"d_model": d, "bottleneck_dim": r, "activation": activation, "lead": lead, "seed": seed}
    for name in ("weight", "bias"):
        p = adapter.up_proj.get_parameter(name)
        assert torch.count_nonzero(p) == 0, explain(
            f"up_proj.{name} must start at zero",
            drawn=drawn,
            got=f"{torch.count_nonzero(p).item()} nonzero entries",
            hint="zero up_proj's weight AND bias (nn.init.zeros_): otherwise delta != 0 at "
            "initialisation and the adapter disturbs the pretrained model",
        )
    w_down = adapter.down_proj.weight
    assert torch.count_nonzero(w_down) > 0, explain(
        "down_proj.weight must keep its random initialisation",
        drawn=drawn,
        hint="zero the up projection only: with both zero, no gradient ever reaches down_proj",
    )
    x = torch.randn(*lead, d)
    with torch.no_grad():
        delta = adapter.forward_delta(x)
        assert_matches(delta, torch.zeros_like(x), what="forward_delta(x) at initialisation", drawn=drawn)
        assert_matches(
            adapter(x),
            x,
            what="forward(x) at initialisation must equal x (the adapter starts as the identity)",
            drawn=drawn,
            bugs={
                "the residual is added twice (2x)": lambda: 2 * x,
                "the residual is never added": lambda: 0 * x,
            },
        )


@settings(max_examples=25, deadline=None)
@example(d=4, r=2, lead=(3,), activation="gelu", residual=False, dtype=torch.float32, seed=0)
@example(d=4, r=2, lead=(3,), activation="relu", residual=True, dtype=torch.float64, seed=1)
@given(
    d=dims(),
    r=ranks(),
    lead=leading_shapes(),
    activation=st.sampled_from(["gelu", "relu"]),
    residual=st.booleans(),
    dtype=dtypes(),
    seed=seeds(),
)
@learner_code()
def test_forward_matches_reference(impl, ref, d, r, lead, activation, residual, dtype, seed) -> None:
    mine, theirs = _pair(impl, ref, d, r, seed, dtype=dtype, activation=activation, residual=residual)
    drawn = {"d_model": d, "bottleneck_dim": r, "lead": lead, "activation": activation, "residual": residual}
    drawn |= {"dtype": dtype}
    x = torch.randn(*lead, d, dtype=dtype)
    with torch.no_grad():
        assert_matches(
            mine.forward_delta(x),
            theirs.forward_delta(x),
            what="forward_delta(x) = up_proj(act(down_proj(x)))",
            drawn=drawn,
            bugs=_bugs_delta(theirs, x),
        )
        assert_matches(
            mine(x),
            theirs(x),
            what=f"forward(x) with residual={residual}",
            drawn=drawn,
            bugs=_bugs_forward(theirs, x),
        )


@settings(max_examples=15, deadline=None)
@given(
    d=dims(),
    r=ranks(),
    lead=leading_shapes(max_dims=2),
    activation=st.sampled_from(["gelu", "relu"]),
    residual=st.booleans(),
    seed=seeds(),
)
@learner_code()
def test_gradients_match_reference(impl, ref, d, r, lead, activation, residual, seed) -> None:
    mine, theirs = _pair(impl, ref, d, r, seed, dtype=torch.float64, activation=activation, residual=residual)
    drawn = {"d_model": d, "bottleneck_dim": r, "lead": lead, "activation": activation, "residual": residual}
    x = torch.randn(*lead, d, dtype=torch.float64)
    g = torch.randn(*lead, d, dtype=torch.float64)
    assert_gradients_match(
        mine,
        theirs,
        x,
        g,
        drawn=drawn,
        input_bugs=lambda ref_grad: {
            "the residual's gradient is missing or doubled": lambda: ref_grad + (-g if residual else g)
        },
    )
