"""LoRA on embeddings and convolutions, and PiSSA / OLoRA initialisation, through
``pz.adapt_model(model, LoraConfig(...))``, against PEFT 0.21.2's ``get_peft_model`` with the
same config: identical weights, then outputs, gradients and merged outputs compared.

PiSSA and OLoRA are deterministic (a full SVD, a QR), so both libraries start from the same
base and neither needs weights copied: the rewritten base weights and the factors themselves
are compared.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_hf import tiny_hf
from torch import nn

import peft_zoo as pz
from peft_zoo.testing import assert_close, assert_model_unchanged, fingerprint

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

PREFIX = "base_model.model."


def tiny(arch: str) -> nn.Module:
    return tiny_hf(arch, vocab=40)


class ConvNet(nn.Module):
    """A small model with every convolution kind LoRA adapts, and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Conv1d(3, 6, kernel_size=3, padding=1)
        self.img = nn.Conv2d(6, 8, kernel_size=(3, 2), stride=(1, 2), padding=1, dilation=(1, 1))
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, 3, L)
        h = torch.relu(self.seq(x))  # (B, 6, L)
        img = self.img(h[:, :, None, :].expand(-1, -1, 3, -1))  # (B, 8, H', W')
        return self.head(img.mean(dim=(2, 3)))  # (B, 4)


def ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(seed))


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x) if x.is_floating_point() else model(input_ids=x)
    return out if isinstance(out, torch.Tensor) else out.logits


def peft_tensor(theirs: nn.Module, layer: str, attr: str) -> torch.Tensor:
    """PEFT's tensor ``attr`` ("lora_A", "lora_embedding_B", ...) of the adapted module ``layer``."""
    held = getattr(theirs.get_submodule(PREFIX + layer), attr)["default"]
    return held if isinstance(held, torch.Tensor) else held.weight


def copy_random_factors(
    ours: nn.Module, theirs: nn.Module, seed: int
) -> list[tuple[str, nn.Parameter, torch.Tensor]]:
    """Give every LoRA factor of ``ours`` random non-zero values and the same to PEFT's."""
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for name, module in ours.named_modules():
        if isinstance(module, pz.AdapterModule) and not isinstance(module, pz.ModulesToSave):
            for attr, p in module.adapter_named_parameters():
                q = peft_tensor(theirs, name, attr)
                assert q.shape == p.shape, f"{name}.{attr}: {tuple(p.shape)} vs PEFT {tuple(q.shape)}"
                with torch.no_grad():
                    p.copy_(0.3 * torch.randn(p.shape, generator=g))
                    q.copy_(p)
                pairs.append((f"{name}.{attr}", p, q))
    assert pairs, "no adapter layer found"
    return pairs


def check_against_peft(
    base: nn.Module, ours_config: pz.LoraConfig, theirs_config: object, x: torch.Tensor, tied: bool = False
) -> float:
    """Outputs, every factor's gradient and merged outputs; returns the largest |difference|.
    ``tied``: the adapted embedding shares its weight with the output head (GPT-2), so merging
    changes the head too, in both libraries: merged outputs are compared with PEFT's only."""
    ours, params = pz.adapt_model(copy.deepcopy(base), ours_config)
    theirs = peft.get_peft_model(copy.deepcopy(base), theirs_config)
    assert sum(p.numel() for p in params) == theirs.get_nb_trainable_parameters()[0]
    ours.eval(), theirs.eval()
    pairs = copy_random_factors(ours, theirs, seed=3)
    mine, other = outputs(ours, x), outputs(theirs, x)
    assert_close(mine, other, what="outputs, peft_zoo vs PEFT", rtol=1e-5, atol=1e-5)
    weights = torch.randn(mine.shape, generator=torch.Generator().manual_seed(4))
    (mine * weights).sum().backward()
    (other * weights).sum().backward()
    worst = float((mine - other).abs().max())
    for name, p, q in pairs:
        assert p.grad is not None and q.grad is not None, name
        scale = 1.0 + float(q.grad.abs().max())
        assert_close(p.grad, q.grad, what=f"gradient of {name}", rtol=1e-4, atol=1e-5 * scale)
    pz.merge_adapters(ours)
    merged = theirs.merge_and_unload()
    with torch.no_grad():
        assert_close(outputs(ours, x), outputs(merged, x), what="merged outputs", rtol=1e-4, atol=1e-5)
        if not tied:
            assert_close(outputs(ours, x), mine.detach(), what="merged vs unmerged", rtol=1e-4, atol=1e-5)
    return worst


@pytest.mark.parametrize(
    ("arch", "targets"),
    [
        ("bert", ["word_embeddings", "query"]),
        ("llama", ["embed_tokens", "q_proj", "v_proj"]),
        ("gpt2", ["wte", "c_attn"]),
    ],
)
def test_lora_on_embeddings_matches_peft(arch: str, targets: list[str]) -> None:
    base = tiny(arch)
    ours = pz.LoraConfig(rank=4, alpha=8, target_modules=targets)
    theirs = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets)
    assert check_against_peft(base, ours, theirs, ids(), tied=arch == "gpt2") < 1e-5
    adapted, _ = pz.adapt_model(copy.deepcopy(base), ours)
    kinds = {type(m).__name__ for n, m in adapted.named_modules() if n.endswith(targets[0])}
    assert kinds == {"LoRAEmbedding"}


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_on_convolutions_matches_peft(rslora: bool) -> None:
    base = ConvNet().eval()
    x = torch.randn(2, 3, 9, generator=torch.Generator().manual_seed(2))
    ours = pz.LoraConfig(
        rank=2, alpha=6, rslora=rslora, target_modules=["seq", "img", "head"], rank_pattern={"img": 4}
    )
    theirs = peft.LoraConfig(
        r=2, lora_alpha=6, use_rslora=rslora, target_modules=["seq", "img", "head"], rank_pattern={"img": 4}
    )
    assert check_against_peft(base, ours, theirs, x) < 1e-5


def test_all_linear_never_selects_embeddings_or_convolutions() -> None:
    net = ConvNet()
    net.mid = nn.Linear(8, 8)  # a linear that is not the output head
    model, _ = pz.adapt_model(net, pz.LoraConfig(rank=2, target_modules="all-linear"))
    assert isinstance(model.mid, pz.LoRALinear)
    assert not isinstance(model.seq, pz.AdapterModule) and not isinstance(model.img, pz.AdapterModule)
    bert, _ = pz.adapt_model(tiny("bert"), pz.LoraConfig(rank=2, target_modules="all-linear"))
    assert not isinstance(bert.bert.embeddings.word_embeddings, pz.AdapterModule)


@pytest.mark.parametrize(
    ("arch", "init", "targets"),
    [
        ("bert", "pissa", ["query", "value", "dense"]),
        ("llama", "pissa", ["q_proj", "v_proj", "down_proj"]),
        ("gpt2", "pissa", ["c_attn", "c_fc"]),
        ("bert", "olora", ["query", "value"]),
        ("llama", "olora", ["q_proj", "o_proj"]),
    ],
)
def test_pissa_and_olora_start_where_peft_starts(arch: str, init: str, targets: list[str]) -> None:
    """The same residual base weights and factors as PEFT, and the model's outputs unchanged."""
    base = tiny(arch)
    x = ids()
    with torch.no_grad():
        before = outputs(base, x)
    ours, _ = pz.adapt_model(
        copy.deepcopy(base), pz.LoraConfig(rank=4, alpha=4, init_lora_weights=init, target_modules=targets)
    )
    theirs = peft.get_peft_model(
        copy.deepcopy(base),
        peft.LoraConfig(r=4, lora_alpha=4, init_lora_weights=init, target_modules=targets),
    )
    layers = [(n, m) for n, m in ours.named_modules() if isinstance(m, pz.LoRALinear)]
    assert layers
    for name, layer in layers:
        base_layer = theirs.get_submodule(PREFIX + name).base_layer
        assert_close(layer.base.weight, base_layer.weight, what=f"{name} residual W0", rtol=1e-5, atol=1e-6)
        assert_close(
            layer.lora_A, peft_tensor(theirs, name, "lora_A"), what=f"{name} A", rtol=1e-5, atol=1e-6
        )
        assert_close(
            layer.lora_B, peft_tensor(theirs, name, "lora_B"), what=f"{name} B", rtol=1e-5, atol=1e-6
        )
    with torch.no_grad():
        assert_close(
            outputs(ours, x), before, what="PiSSA/OLoRA keep the model's outputs", rtol=1e-4, atol=1e-5
        )
        assert_close(outputs(ours, x), outputs(theirs, x), what="peft_zoo vs PEFT", rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("init", ["gaussian", False, "pissa_niter_2"])
def test_other_initialisations(init: bool | str) -> None:
    base = tiny("bert")
    x = ids()
    with torch.no_grad():
        before = outputs(base, x)
    torch.manual_seed(5)
    ours, _ = pz.adapt_model(
        copy.deepcopy(base), pz.LoraConfig(rank=4, init_lora_weights=init, target_modules=["query"])
    )
    layer = ours.bert.encoder.layer[0].attention.self.query
    with torch.no_grad():
        after = outputs(ours, x)
    if init is False:  # both factors random: the layer's own output moves
        h = torch.randn(3, 16)
        assert float(layer.lora_B.abs().min()) > 0
        assert float((layer(h) - layer.base(h)).abs().max()) > 1e-3
        return
    assert_close(after, before, what=f"{init} keeps the outputs", rtol=1e-4, atol=1e-5)
    if init == "gaussian":
        assert float(layer.lora_B.abs().max()) == 0.0
        assert 0.1 < float(layer.lora_A.std()) < 0.5  # std 1 / r = 0.25
    else:  # the residual is W0 minus a rank-4 part
        W0 = base.bert.encoder.layer[0].attention.self.query.weight
        assert int(torch.linalg.matrix_rank(W0 - layer.base.weight, atol=1e-4)) == 4


@pytest.mark.parametrize(
    ("init", "targets", "error", "match"),
    [
        ("pissa", ["word_embeddings", "query"], ValueError, "word_embeddings.*Embedding"),
        ("loftq", ["query"], ValueError, "loftq.*not supported"),
        ("yes", ["query"], ValueError, "not supported"),
        (1, ["query"], TypeError, "init_lora_weights"),
        ("pissa_niter_x", ["query"], ValueError, "not supported"),
    ],
)
def test_bad_initialisations_change_nothing(
    init: object, targets: list[str], error: type, match: str
) -> None:
    model = tiny("bert")
    before = fingerprint(model)
    with pytest.raises(error, match=match):
        config = pz.LoraConfig(rank=2, target_modules=["query"])
        config.target_modules = targets
        config.init_lora_weights = init  # type: ignore[assignment]  # as a user might set it
        pz.adapt_model(model, config)
    assert_model_unchanged(model, before, what="a refused initialisation")


def test_pissa_rank_above_a_layers_size_changes_nothing() -> None:
    model = tiny("bert")  # query is 16 x 16
    before = fingerprint(model)
    with pytest.raises(ValueError, match="rank 17"):
        pz.adapt_model(model, pz.LoraConfig(rank=17, init_lora_weights="pissa", target_modules=["query"]))
    assert_model_unchanged(model, before, what="PiSSA with too large a rank")
