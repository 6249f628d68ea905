"""Bottleneck adapters, serial / parallel blocks and the per-task AdapterStack, each checked
against ``delta(h) = (act(h W_down^T + b_down)) W_up^T + b_up`` written out by hand."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from peft_zoo import AdapterBlock, AdapterStack, BottleneckAdapter, ParallelAdapterBlock
from peft_zoo.testing import assert_close, dims, leading_shapes, ranks, seeds

FAST = settings(max_examples=25, deadline=None)

HAND_ACTIVATIONS = {
    "gelu": lambda z: 0.5 * z * (1.0 + torch.erf(z / math.sqrt(2.0))),
    "relu": lambda z: torch.clamp_min(z, 0.0),
    "silu": lambda z: z / (1.0 + torch.exp(-z)),
    "tanh": torch.tanh,
    "identity": lambda z: z,
}


def randomize(adapter: BottleneckAdapter) -> None:
    """Random nonzero weights everywhere, including the zero-initialised up projection."""
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn_like(p) * 0.5)


def weights(adapter: BottleneckAdapter) -> tuple[torch.Tensor, ...]:
    """Detached copies (down W, down b, up W, up b), taken before the call under test."""
    return tuple(
        t.detach().clone().double()
        for t in (
            adapter.down_proj.weight,
            adapter.down_proj.bias,
            adapter.up_proj.weight,
            adapter.up_proj.bias,
        )
    )


def hand_delta(x: torch.Tensor, w: tuple[torch.Tensor, ...], act: str = "gelu") -> torch.Tensor:
    wd, bd, wu, bu = w
    z = x.double() @ wd.T + bd  # (..., r)
    return HAND_ACTIVATIONS[act](z) @ wu.T + bu  # (..., d)


def hand_linear(x: torch.Tensor, lin: nn.Linear) -> torch.Tensor:
    return x.double() @ lin.weight.detach().double().T + lin.bias.detach().double()


# ----------------------------------------------------------------------------- BottleneckAdapter


@FAST
@given(d=dims(), r=ranks(), lead=leading_shapes(), seed=seeds())
def test_bottleneck_init_is_identity(d, r, lead, seed):
    torch.manual_seed(seed)
    adapter = BottleneckAdapter(d, r)
    assert tuple(adapter.down_proj.weight.shape) == (r, d)
    assert tuple(adapter.up_proj.weight.shape) == (d, r)
    assert torch.count_nonzero(adapter.up_proj.weight) == 0
    assert torch.count_nonzero(adapter.up_proj.bias) == 0
    assert torch.count_nonzero(adapter.down_proj.weight) > 0, "down_proj must not start at zero"
    x = torch.randn(*lead, d)
    assert torch.equal(adapter(x), x), "zero up_proj must make forward the identity"
    delta = adapter.forward_delta(x)
    assert delta.shape == x.shape and torch.count_nonzero(delta) == 0
    assert all(p.requires_grad for p in adapter.parameters())


@FAST
@given(
    d=dims(),
    r=ranks(),
    lead=leading_shapes(),
    seed=seeds(),
    act=st.sampled_from(sorted(HAND_ACTIVATIONS)),
    residual=st.booleans(),
)
def test_bottleneck_forward_matches_hand_formula(d, r, lead, seed, act, residual):
    torch.manual_seed(seed)
    adapter = BottleneckAdapter(d, r, activation=act, residual=residual).double()
    randomize(adapter)
    w = weights(adapter)
    x = torch.randn(*lead, d, dtype=torch.float64)
    drawn = {"d": d, "r": r, "lead": lead, "act": act, "residual": residual}
    delta = hand_delta(x, w, act)
    assert_close(
        adapter.forward_delta(x),
        delta,
        what="forward_delta vs up(act(down(x)))",
        drawn=drawn,
        hint="activation missing or applied after up_proj",
    )
    expected = x + delta if residual else delta
    assert_close(
        adapter(x),
        expected,
        what="BottleneckAdapter.forward",
        drawn=drawn,
        hint="residual=False must return the delta only",
    )


def test_bottleneck_accepts_module_activation():
    torch.manual_seed(0)
    adapter = BottleneckAdapter(6, 3, activation=nn.LeakyReLU(0.2))
    randomize(adapter)
    wd, bd, wu, bu = weights(adapter)
    x = torch.randn(4, 6)
    z = x.double() @ wd.T + bd
    expected = x.double() + torch.where(z > 0, z, 0.2 * z) @ wu.T + bu
    assert_close(adapter(x), expected.float(), what="adapter with nn.Module activation")


def test_bottleneck_only_down_and_up_parameters():
    adapter = BottleneckAdapter(8, 2)
    names = sorted(n for n, _ in adapter.named_parameters())
    assert names == ["down_proj.bias", "down_proj.weight", "up_proj.bias", "up_proj.weight"]


def test_unknown_activation_raises():
    with pytest.raises(ValueError, match=r"unknown activation 'swish'.*gelu"):
        BottleneckAdapter(4, 2, activation="swish")


@pytest.mark.parametrize(
    ("d", "r", "name"), [(0, 2, "d_model"), (4, 0, "bottleneck_dim"), (-1, 2, "d_model")]
)
def test_bottleneck_bad_sizes(d, r, name):
    with pytest.raises(ValueError, match=f"{name} must be > 0"):
        BottleneckAdapter(d, r)


def test_bottleneck_wrong_last_dim():
    adapter = BottleneckAdapter(4, 2)
    with pytest.raises(ValueError, match=re.escape("(..., 4)") + ".*" + re.escape("(3, 5)")):
        adapter(torch.randn(3, 5))


# ----------------------------------------------------------------------------- AdapterBlock


class _MLP(nn.Module):
    """A nonlinear sublayer (so x + F(x) and F(x) differ in more than scale)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(x))

    def hand(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(hand_linear(x, self.lin))


@FAST
@given(d=dims(), r=ranks(), lead=leading_shapes(), seed=seeds())
def test_adapter_block_matches_hand_formula(d, r, lead, seed):
    torch.manual_seed(seed)
    sub = _MLP(d).double()
    adapter = BottleneckAdapter(d, r).double()
    block = AdapterBlock(sub, adapter)
    x = torch.randn(*lead, d, dtype=torch.float64)
    drawn = {"d": d, "r": r, "lead": lead}

    h = x + sub.hand(x)
    assert_close(block(x), h, what="AdapterBlock at init (zero up_proj) vs x + F(x)", drawn=drawn)

    randomize(adapter)
    w = weights(adapter)
    expected = h + hand_delta(h, w)
    assert_close(
        block(x),
        expected,
        what="AdapterBlock vs h + delta(h), h = x + F(x)",
        drawn=drawn,
        hint="residual added twice (adapter(h) instead of forward_delta(h)), or the "
        "adapter fed x / F(x) instead of h",
    )


@FAST
@given(d=dims(), r=ranks(), lead=leading_shapes(), seed=seeds())
def test_parallel_adapter_block_matches_hand_formula(d, r, lead, seed):
    torch.manual_seed(seed)
    sub = _MLP(d).double()
    adapter = BottleneckAdapter(d, r).double()
    block = ParallelAdapterBlock(sub, adapter)
    x = torch.randn(*lead, d, dtype=torch.float64)
    drawn = {"d": d, "r": r, "lead": lead}
    fx = sub.hand(x)
    assert_close(
        block(x), fx, what="ParallelAdapterBlock at init vs F(x)", drawn=drawn, hint="a residual x was added"
    )

    randomize(adapter)
    w = weights(adapter)
    assert_close(
        block(x),
        fx + hand_delta(x, w),
        what="ParallelAdapterBlock vs F(x) + delta(x)",
        drawn=drawn,
        hint="adapter fed the sublayer output instead of the input",
    )


def test_blocks_register_submodules():
    sub, adapter = nn.Linear(4, 4), BottleneckAdapter(4, 2)
    for cls in (AdapterBlock, ParallelAdapterBlock):
        block = cls(sub, adapter)
        assert block.sublayer is sub and block.adapter is adapter
        params = {id(p) for p in block.parameters()}
        assert params == {id(p) for p in (*sub.parameters(), *adapter.parameters())}


@pytest.mark.parametrize("cls", [AdapterBlock, ParallelAdapterBlock])
def test_block_sublayer_changing_shape_raises(cls):
    block = cls(nn.Linear(4, 5), BottleneckAdapter(4, 2))
    with pytest.raises(ValueError, match=re.escape("(3, 4)") + ".*" + re.escape("(3, 5)")):
        block(torch.randn(3, 4))


@pytest.mark.parametrize("cls", [AdapterBlock, ParallelAdapterBlock])
def test_block_sublayer_broadcastable_shape_change_raises(cls):
    """(B, L, d) -> (B, 1, d) would broadcast silently in x + F(x); it must be refused."""

    class Pool(nn.Module):
        def forward(self, x):
            return x.mean(dim=1, keepdim=True)

    block = cls(Pool(), BottleneckAdapter(4, 2))
    with pytest.raises(ValueError, match="shape"):
        block(torch.randn(2, 3, 4))


@pytest.mark.parametrize("cls", [AdapterBlock, ParallelAdapterBlock])
@pytest.mark.parametrize("bad", [nn.Linear(4, 4), AdapterStack(4, 2, 2)], ids=["linear", "stack"])
def test_block_rejects_non_bottleneck_adapter(cls, bad):
    with pytest.raises(TypeError, match=r"must be a BottleneckAdapter, got " + type(bad).__name__):
        cls(nn.Linear(4, 4), bad)


# ----------------------------------------------------------------------------- AdapterStack


@FAST
@given(d=dims(), r=ranks(), n=st.integers(2, 4), lead=leading_shapes(), seed=seeds())
def test_adapter_stack_selects_its_own_adapter(d, r, n, lead, seed):
    torch.manual_seed(seed)
    stack = AdapterStack(d, r, n).double()
    assert isinstance(stack.adapters, nn.ModuleList) and len(stack.adapters) == n
    assert all(isinstance(a, BottleneckAdapter) for a in stack.adapters)
    assert len({id(a) for a in stack.adapters}) == n, "adapters must be distinct modules"
    x = torch.randn(*lead, d, dtype=torch.float64)
    for k in range(n):  # zero up_proj: every adapter starts as the identity
        assert torch.equal(stack(x, k), x)

    for a in stack.adapters:
        randomize(a)  # different random weights per adapter
    all_w = [weights(a) for a in stack.adapters]
    outs = []
    for k in range(n):
        expected = x + hand_delta(x, all_w[k])
        out = stack(x, k)
        assert_close(
            out,
            expected,
            what=f"AdapterStack(x, {k}) vs x + delta_{k}(x)",
            drawn={"d": d, "r": r, "n": n, "lead": lead, "k": k},
            hint="wrong adapter selected, or the residual missing",
        )
        assert_close(stack(x, torch.tensor(k)), expected, what="0-d tensor id")
        outs.append(out)
    for j in range(n):
        for k in range(j + 1, n):
            assert not torch.allclose(outs[j], outs[k]), "two ids gave the same output"


def test_adapter_stack_adapters_do_not_share_parameters():
    torch.manual_seed(0)
    stack = AdapterStack(6, 3, 3)
    w = [a.down_proj.weight for a in stack.adapters]
    assert len({p.data_ptr() for p in w}) == 3
    assert not torch.equal(w[0], w[1]), "each adapter needs its own initialisation"


def test_adapter_stack_only_selected_adapter_gets_gradient():
    torch.manual_seed(0)
    stack = AdapterStack(6, 3, 3)
    for a in stack.adapters:
        randomize(a)
    stack(torch.randn(2, 6), 1).sum().backward()
    for k, a in enumerate(stack.adapters):
        grads = [p.grad for p in a.parameters()]
        if k == 1:
            assert all(g is not None and torch.count_nonzero(g) > 0 for g in grads)
        else:
            assert all(g is None for g in grads), f"adapter {k} was used for id 1"


@pytest.mark.parametrize("bad_id", [3, -1, 7], ids=["num_adapters", "minus-one", "far"])
def test_adapter_stack_id_out_of_range(bad_id):
    stack = AdapterStack(4, 2, 3)
    with pytest.raises(IndexError, match=rf"adapter_id {bad_id} out of range.*0\.\.2"):
        stack(torch.randn(2, 4), bad_id)


@pytest.mark.parametrize(
    "bad_id",
    [1.5, True, "1", None, torch.tensor(1.0), torch.tensor(True)],
    ids=["float", "bool", "str", "none", "float-tensor", "bool-tensor"],
)
def test_adapter_stack_non_int_id(bad_id):
    stack = AdapterStack(4, 2, 3)
    with pytest.raises(TypeError, match="adapter_id must be an int"):
        stack(torch.randn(2, 4), bad_id)


def test_adapter_stack_d_model_mismatch():
    stack = AdapterStack(4, 2, 3)
    with pytest.raises(ValueError, match=re.escape("(..., 4)") + ".*" + re.escape("(2, 5)")):
        stack(torch.randn(2, 5), 0)


@pytest.mark.parametrize(
    ("args", "name"), [((4, 2, 0), "num_adapters"), ((0, 2, 2), "d_model"), ((4, 0, 2), "bottleneck_dim")]
)
def test_adapter_stack_bad_sizes(args, name):
    with pytest.raises(ValueError, match=f"{name} must be > 0"):
        AdapterStack(*args)
