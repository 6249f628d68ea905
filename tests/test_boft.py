"""BOFT (peft_zoo.boft.BOFTLinear, BOFTConfig through pz.adapt_model) equals Hugging Face PEFT 0.21.2.

Layer level: PEFT's own ``peft.tuners.boft.layer.Linear`` around a copy of the same base, the
same random non-zero ``boft_R`` / ``boft_s`` in both (float64); outputs, the gradients of
``boft_R`` and ``boft_s``, the rotation (PEFT's ``get_delta_weight``), merged weights and
merged outputs, unmerge. PEFT computes butterfly factors > 1 only through its CUDA kernel
``fbd`` (on CPU it silently falls back to one factor), so those comparisons run PEFT's own
code with ``KernelStandIn``: a pure-PyTorch block diagonal in place of the kernel, which is
exactly what ``fbd_cuda_kernel.cu`` computes. The CPU fallback itself is pinned too.

Model level: tiny random BERT and LLaMA, ``pz.adapt_model`` vs ``peft.get_peft_model`` with the
same config: logits, every trainable tensor's gradient, ``merge_and_unload`` outputs and
weights, trainable counts equal ``get_nb_trainable_parameters()``. GPT-2's Conv1D: both refuse.

Observed (CPU, peft 0.21.2), max |diff|: layer level, float64, over LAYER_CASES: outputs 7e-16,
gradients of boft_R / boft_s 4e-16, rotation 1e-16, merged weights 1e-16, merged outputs 8e-16
(tolerance 1e-12). Model level, float32: BERT logits <= 1.4e-9, gradients <= 9e-8, merged
logits and weights 0; LLaMA logits <= 3e-8, gradients <= 9e-8, merged logits <= 3e-8, merged
weights <= 8e-9 (tolerance ``MODEL_TOL``).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

peft = pytest.importorskip("peft")
pytest.importorskip("transformers")

from peft.tuners.boft import layer as peft_boft  # noqa: E402
from vera_oft_helpers import INPUTS, adapt_both, base_model, peft_name, trainable, unchanged  # noqa: E402

import peft_zoo as pz  # noqa: E402
from peft_zoo.boft import BOFTLinear, butterfly_perm  # noqa: E402
from peft_zoo.injection.boft_config import BOFTConfig  # noqa: E402
from peft_zoo.injection.surgery import InjectionError  # noqa: E402
from peft_zoo.injection.unload import merge_and_unload  # noqa: E402

KEY = "default"
MODEL_TOL = 1e-6  # float32 models; observed <= 9e-8


class KernelStandIn:
    """PEFT's ``fbd_cuda`` extension in pure PyTorch: ``(N, D, H, H) -> (N, D H, D H)`` block
    diagonal and its backward (the diagonal blocks of the gradient)."""

    @staticmethod
    def forward(blocks: torch.Tensor) -> list[torch.Tensor]:
        return [torch.stack([torch.block_diag(*f.unbind(0)) for f in blocks.unbind(0)])]

    @staticmethod
    def backward(grad: torch.Tensor, blocks: torch.Tensor) -> list[torch.Tensor]:
        h, d = blocks.shape[-1], blocks.shape[1]
        return [torch.stack([grad[:, k * h : (k + 1) * h, k * h : (k + 1) * h] for k in range(d)], 1)]


def kernel() -> Any:
    """Context manager: PEFT's layers see ``KernelStandIn`` as their compiled CUDA kernel."""
    return mock.patch.object(peft_boft, "_FBD_CUDA", KernelStandIn())


def peft_layer(base: nn.Linear, **fields: Any) -> Any:
    theirs = peft_boft.Linear(copy.deepcopy(base), KEY, peft.BOFTConfig(**fields))
    return theirs.to(base.weight.dtype)


def layer_pair(
    in_features: int, out: int, fields: dict[str, Any], seed: int, bias: bool = True
) -> tuple[BOFTLinear, Any, nn.Linear]:
    """Ours and PEFT's (with the kernel stand-in) around copies of one float64 base; the same
    random non-zero boft_R / boft_s in both. Returns the untouched base too."""
    torch.manual_seed(seed)
    base = nn.Linear(in_features, out, bias=bias).double()
    with kernel():
        theirs = peft_layer(base, **fields)
    ours = BOFTLinear(copy.deepcopy(base), **fields)
    mine = dict(ours.adapter_named_parameters())
    other = {"boft_R": theirs.boft_R[KEY], "boft_s": theirs.boft_s[KEY]}
    with torch.no_grad():
        for name, p in mine.items():
            assert p.shape == other[name].shape, (name, p.shape, other[name].shape)
            p.copy_(0.4 * torch.randn_like(p) + (1.0 if name == "boft_s" else 0.0))
            other[name].copy_(p)
    return ours, theirs, base


def diff(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    assert a is not None and b is not None and a.shape == b.shape
    return float((a.detach() - b.detach()).abs().max()) if a.numel() else 0.0


def compare_layers(ours: BOFTLinear, theirs: Any, base: nn.Linear, seed: int) -> dict[str, float]:
    """Outputs, gradients, rotation, merged weights / outputs, unmerge; all within 1e-12."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, ours.in_features, dtype=torch.float64, generator=gen)
    d: dict[str, float] = {}
    with kernel():
        out, expected = ours(x), theirs(x)
        g = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        (out * g).sum().backward(), (expected * g).sum().backward()
        d["out"] = diff(out, expected)
        d["grad_R"] = diff(ours.boft_R.grad, theirs.boft_R[KEY].grad)
        d["grad_s"] = diff(ours.boft_s.grad, theirs.boft_s[KEY].grad)
        assert diff(ours.boft_s.grad, torch.zeros_like(ours.boft_s)) > 0  # boft_R's too, unless b = 1
        assert diff(ours.boft_R.grad, torch.zeros_like(ours.boft_R)) > 0 or ours.boft_block_size == 1
        d["rotation"] = diff(ours.rotation(), theirs.get_delta_weight(KEY)[0])
        d["weight_property"] = diff(ours.weight, _peft_merged(theirs))
        ours.merge(), theirs.merge()
        d["merged_weight"] = diff(ours.base.weight, theirs.base_layer.weight)
        with torch.no_grad():
            d["merged_out"] = diff(ours(x), theirs(x))
            d["merged_vs_unmerged"] = diff(ours(x), out)
        ours.unmerge()
    d["unmerged_weight"] = diff(ours.base.weight, base.weight)
    assert not ours.merged and diff(ours(x), out) <= 1e-12
    bad = {k: v for k, v in d.items() if not v <= 1e-12}
    assert not bad, (bad, d)
    return d


def _peft_merged(theirs: Any) -> torch.Tensor:
    """PEFT's merged weight, computed on a copy (``theirs`` is left unmerged)."""
    other = copy.deepcopy(theirs)
    other.merge()
    return other.base_layer.weight.detach()


LAYER_CASES = [
    (16, 5, {"boft_block_size": 4}),  # PEFT's defaults: OFT with the exact Cayley transform and a scale
    (12, 3, {"boft_block_size": 0, "boft_block_num": 3}),
    (16, 4, {"boft_block_size": 2, "boft_n_butterfly_factor": 3}),
    (24, 6, {"boft_block_size": 0, "boft_block_num": 4, "boft_n_butterfly_factor": 2}),
    (32, 2, {"boft_block_size": 2, "boft_n_butterfly_factor": 4}),
    (8, 7, {"boft_block_size": 8}),  # one block spanning the whole input
]


@pytest.mark.parametrize(("in_features", "out", "fields"), LAYER_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_layer_matches_peft(in_features: int, out: int, fields: dict[str, Any], bias: bool) -> None:
    ours, theirs, base = layer_pair(in_features, out, fields, seed=in_features + out, bias=bias)
    m = ours.boft_n_butterfly_factor
    for i in range(m):  # PEFT's permutation matrices, as index vectors
        assert torch.equal(theirs.boft_P[i].argmax(1), butterfly_perm(in_features, ours.boft_block_size, i))
    compare_layers(ours, theirs, base, seed=m)


@settings(max_examples=25, deadline=None)
@given(
    factor=st.integers(0, 3),
    block=st.integers(1, 4),
    chunks=st.integers(1, 3),
    by_num=st.booleans(),
    out=st.integers(1, 6),
    seed=st.integers(0, 1000),
)
def test_layer_matches_peft_drawn(
    factor: int, block: int, chunks: int, by_num: bool, out: int, seed: int
) -> None:
    """Block size vs block number, butterfly factors 0..3 (0 is refused by both); the input
    made to fit the butterfly (``in = b * 2^(m-1) * chunks``, ``b`` even when ``m > 1``)."""
    block = 2 * block if factor > 1 else block
    in_features = block * 2 ** max(factor - 1, 0) * chunks
    fields: dict[str, Any] = {"boft_n_butterfly_factor": factor}
    num = in_features // block
    fields |= {"boft_block_size": 0, "boft_block_num": num} if by_num else {"boft_block_size": block}
    if factor == 0:
        base = nn.Linear(in_features, out)
        with kernel(), pytest.raises(ValueError, match="positive integer"):
            peft_layer(base, **fields)
        with pytest.raises(ValueError, match="boft_n_butterfly_factor"):
            BOFTLinear(base, **fields)
        return
    ours, theirs, base = layer_pair(in_features, out, fields, seed=seed)
    assert ours.boft_R.shape == (factor, in_features // block, block, block)
    compare_layers(ours, theirs, base, seed=seed)


def test_peft_cpu_fallback_uses_one_factor() -> None:
    """Pinned: without its kernel, PEFT silently drops to one butterfly factor (and turns 0 into
    1); ours with ``boft_n_butterfly_factor=1`` equals that fallback (float64, within 1e-15)."""
    torch.manual_seed(0)
    base = nn.Linear(16, 4).double()
    with warnings.catch_warnings(), mock.patch.object(peft_boft, "get_fbd_cuda", lambda: None):
        warnings.simplefilter("ignore")
        fallback = peft_layer(base, boft_block_size=2, boft_n_butterfly_factor=3)
        zero = peft_layer(base, boft_block_size=2, boft_n_butterfly_factor=0)
        assert fallback.boft_R[KEY].shape == zero.boft_R[KEY].shape == (1, 8, 2, 2)
        ours = BOFTLinear(copy.deepcopy(base), 2, boft_n_butterfly_factor=1)
        with torch.no_grad():
            ours.boft_R.normal_(), ours.boft_s.normal_()
            fallback.boft_R[KEY].copy_(ours.boft_R), fallback.boft_s[KEY].copy_(ours.boft_s)
        x = torch.randn(5, 16, dtype=torch.float64)
        assert diff(ours(x), fallback(x)) <= 1e-15
        assert diff(ours.weight, _peft_merged(fallback)) <= 1e-15


def test_dropout_drops_peft_s_blocks() -> None:
    """boft_dropout in training: with the same seed, the same blocks of the same factor become
    the identity as in PEFT (outputs and gradients agree); in eval mode nothing is dropped."""
    fields = {"boft_block_size": 2, "boft_n_butterfly_factor": 3, "boft_dropout": 0.5}
    ours, theirs, _ = layer_pair(16, 4, fields, seed=1)
    ours.train(), theirs.train()
    x = torch.randn(3, 16, dtype=torch.float64)
    with kernel():
        for seed in range(4):
            torch.manual_seed(seed)
            out = ours(x)
            out.sum().backward()
            torch.manual_seed(seed)
            theirs(x).sum().backward()
            torch.manual_seed(seed)
            assert diff(out, theirs(x)) <= 1e-12
        assert diff(ours.boft_R.grad, theirs.boft_R[KEY].grad) <= 1e-12
        assert diff(ours.boft_s.grad, theirs.boft_s[KEY].grad) <= 1e-12
        ours.eval()
        assert diff(ours(x), out) > 1e-3  # training dropped blocks, eval does not
    plain = BOFTLinear(nn.Linear(16, 4), 2, boft_n_butterfly_factor=3, init_weights=False).train()
    assert torch.equal(plain(x.float()), plain.eval()(x.float()))  # p = 0: no dropout


def test_init_and_extras() -> None:
    base = nn.Linear(12, 5)
    ours = BOFTLinear(copy.deepcopy(base))  # defaults: b = 4, 3 blocks, 1 factor
    assert ours.boft_R.shape == (1, 3, 4, 4) and ours.boft_s.shape == (5, 1)
    x = torch.randn(2, 12)
    assert torch.equal(ours.weight, base.weight) and diff(ours(x), base(x)) <= 1e-6
    assert not ours.base.weight.requires_grad and ours.num_adapter_parameters() == 3 * 16 + 5
    rand = BOFTLinear(base, 6, init_weights=False)
    assert rand.boft_R.std() > 0.05 and (rand.boft_s - 1).abs().max() > 0.01
    assert "boft_block_size=6" in repr(rand) and rand.adapter_config()["boft_block_num"] == 2
    rand.boft_s.data[0] = 0.0
    with pytest.raises(ValueError, match="boft_s has a 0 entry"):
        rand.merge()
    assert not rand.merged


@pytest.mark.parametrize(
    ("kwargs", "error", "match", "peft_refuses"),
    [
        ({"boft_block_size": 5}, ValueError, "boft_block_size=5 does not divide.*in_features=12", True),
        ({"boft_block_size": 0, "boft_block_num": 5}, ValueError, "boft_block_num=5 does not divide", True),
        ({"boft_block_size": 4, "boft_block_num": 3}, ValueError, "exactly one of", False),
        ({"boft_block_size": 0}, ValueError, "exactly one of", False),
        ({"boft_block_size": 3, "boft_n_butterfly_factor": 2}, ValueError, "even boft_block_size", True),
        ({"boft_block_size": 2, "boft_n_butterfly_factor": 3}, ValueError, r"2\^2 = 8 dividing", True),
        ({"boft_block_size": 4, "boft_n_butterfly_factor": 2}, ValueError, "even boft_block_num", True),
        ({"boft_block_size": -4}, ValueError, "boft_block_size", False),
        ({"boft_block_size": 4.0}, TypeError, "boft_block_size", False),
        ({"boft_n_butterfly_factor": True}, TypeError, "boft_n_butterfly_factor", False),
        ({"boft_dropout": 1.0}, ValueError, "boft_dropout", False),
        ({"init_weights": "yes"}, TypeError, "init_weights", False),
    ],
)
def test_bad_layer_arguments_refused(
    kwargs: dict[str, Any], error: type[Exception], match: str, peft_refuses: bool
) -> None:
    base = nn.Linear(12, 3)
    before = base.weight.clone()
    with pytest.raises(error, match=match):
        BOFTLinear(base, **kwargs)
    assert base.weight.requires_grad and torch.equal(base.weight, before)
    if peft_refuses:
        with kernel(), pytest.raises(ValueError):
            peft_layer(base, **kwargs)


def test_conv1d_base_refused() -> None:
    conv1d = base_model("gpt2").get_submodule("transformer.h.0.attn.c_attn")
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        BOFTLinear(conv1d)
    assert conv1d.weight.requires_grad


# ----------------------------------------------------------------------------- models

TARGETS = {"bert": ["query", "value", "dense"], "llama": ["q_proj", "v_proj", "down_proj"]}  # in 16, 24


def compare_models(ours: Any, theirs: Any, seed: int) -> dict[str, float]:
    mine, other = trainable(ours), trainable(theirs, peft_name)
    assert sorted(mine) == sorted(other) and any(n.endswith("boft_R") for n in mine)
    assert pz.count_parameters(ours)[0] == theirs.get_nb_trainable_parameters()[0]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in mine.items():
            if name.endswith(("boft_R", "boft_s")):
                p.copy_(0.1 * torch.randn(p.shape, generator=g) + (1.0 if name.endswith("boft_s") else 0.0))
                other[name].copy_(p)
    d: dict[str, float] = {}
    out, expected = ours(**INPUTS).logits, theirs(**INPUTS).logits
    d["logits"] = diff(out, expected)
    weights = torch.randn(out.shape, generator=g)
    (out * weights).sum().backward(), (expected * weights).sum().backward()
    d["grads"] = max(diff(p.grad, other[n].grad) for n, p in mine.items())
    merged_ours, merged_theirs = merge_and_unload(ours), theirs.merge_and_unload()
    assert not any(isinstance(m, pz.AdapterModule) for m in merged_ours.modules())
    with torch.no_grad():
        merged_out = merged_ours(**INPUTS).logits
        d["merged"] = diff(merged_out, merged_theirs(**INPUTS).logits)
        d["merged_vs_unmerged"] = diff(merged_out, out)
    state, peft_state = merged_ours.state_dict(), merged_theirs.state_dict()
    assert sorted(state) == sorted(peft_state)
    d["merged_weights"] = max(diff(state[k], peft_state[k]) for k in state)
    assert all(v <= MODEL_TOL for v in d.values()), d
    return d


MODEL_CASES = [
    ("bert", {}),
    ("bert", {"boft_block_size": 0, "boft_block_num": 4, "bias": "boft_only"}),
    ("bert", {"boft_block_size": 2, "boft_n_butterfly_factor": 2, "modules_to_save": ["classifier"]}),
    ("llama", {"boft_block_size": 8}),
    ("llama", {"boft_block_size": 2, "boft_n_butterfly_factor": 3, "bias": "all"}),
    ("llama", {"boft_block_size": 0, "boft_block_num": 2, "layers_to_transform": [1]}),
]


@pytest.mark.parametrize(("arch", "fields"), MODEL_CASES)
def test_model_matches_peft(arch: str, fields: dict[str, Any]) -> None:
    fields = {"target_modules": TARGETS[arch], **fields}
    with kernel():
        ours, theirs = adapt_both(arch, BOFTConfig(**fields), peft.BOFTConfig(**fields))
        assert torch.equal(ours(**INPUTS).logits, base_model(arch)(**INPUTS).logits)  # R = 0, s = 1
        compare_models(ours, theirs, seed=len(fields))


def test_gpt2_conv1d_refused_by_both() -> None:
    with pytest.raises(TypeError, match="not supported"):
        peft.get_peft_model(base_model("gpt2"), peft.BOFTConfig(target_modules=["c_attn"]))
    model = base_model("gpt2")
    with unchanged(model), pytest.raises(InjectionError, match=r"transformer\.h\.0\.attn\.c_attn.*Conv1D"):
        pz.adapt_model(model, BOFTConfig(target_modules=["c_attn"]))


@pytest.mark.parametrize(
    ("arch", "fields", "match"),
    [
        ("bert", {"boft_block_size": 5}, r"layer\.0\.attention\.self\.query' \(16 -> 16\).*does not divide"),
        ("bert", {"boft_block_size": 16}, r"output\.dense' \(24 -> 16\).*in_features=24"),
        (
            "llama",
            {"boft_block_size": 4, "boft_n_butterfly_factor": 3},
            r"down_proj. \(24 -> 16\).*2\^2 = 16 dividing in_features=24",
        ),
    ],
)
def test_model_bad_sizes_refused_unchanged(arch: str, fields: dict[str, Any], match: str) -> None:
    model = base_model(arch)
    with unchanged(model), pytest.raises(InjectionError, match=match):
        pz.adapt_model(model, BOFTConfig(target_modules=TARGETS[arch], **fields))


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"boft_block_size": 4, "boft_block_num": 4}, ValueError, "exactly one of"),
        ({"boft_block_size": 0}, ValueError, "exactly one of"),
        ({"boft_block_size": "4"}, TypeError, "boft_block_size"),
        ({"boft_n_butterfly_factor": 0}, ValueError, "boft_n_butterfly_factor"),
        ({"boft_dropout": -0.1}, ValueError, "boft_dropout"),
        ({"init_weights": 1}, TypeError, "init_weights"),
        ({"bias": "lora_only"}, ValueError, "bias"),
        ({"bias": None}, TypeError, "bias"),
        ({"fan_in_fan_out": True}, ValueError, "fan_in_fan_out"),
        ({"layers_pattern": "layer"}, ValueError, "without layers_to_transform"),
    ],
)
def test_bad_config_fields_refused(fields: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        BOFTConfig(target_modules=["query"], **fields)
    config = BOFTConfig(target_modules=["query"])  # set after construction: adapt_model checks it
    for key, value in fields.items():
        setattr(config, key, value)
    model = base_model("bert")
    with unchanged(model), pytest.raises(error, match=match):
        pz.adapt_model(model, config)


def test_config_defaults_are_peft_s() -> None:
    ours, theirs = BOFTConfig(target_modules=["query"]), peft.BOFTConfig(target_modules=["query"])
    for name in (
        "boft_block_size",
        "boft_block_num",
        "boft_n_butterfly_factor",
        "boft_dropout",
        "bias",
        "init_weights",
    ):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert BOFTConfig.from_dict(ours.to_dict()) == ours
