"""Two named adapters in AdapterHub (``add_adapter`` twice, ``set_active_adapters`` /
``train_adapter`` to switch) equal peft_zoo's named bottleneck adapters loaded from AdapterHub's
files by name: outputs and the active adapter's gradients, for each adapter in turn; and one
adapter saved by name from peft_zoo loads into AdapterHub under a new name (``load_as``)."""

from __future__ import annotations

import copy
from pathlib import Path

import adapters
import pytest
import torch
from adapters import BnConfig
from ah_helpers import ARCHS, base_model, inputs, output
from torch import nn

from peft_zoo.injection.bottleneck_config import BottleneckConfig, DoubleSeqBnConfig, SeqBnConfig
from peft_zoo.interop.adapterhub import adapterhub_config_dict, save_adapterhub
from peft_zoo.serving.named import load_adapterhub_adapter, set_adapter
from peft_zoo.serving.named_bottleneck import named_bn_sites

# Different locations, layers and widths; no ln_before / gating / learned scaling, so each
# BnAdapter parameter is down.* or up.* (AdapterHub's adapter_down.0.* / adapter_up.*).
CONFIGS: dict[str, BottleneckConfig] = {
    "a": SeqBnConfig(non_linearity="gelu"),
    "b": DoubleSeqBnConfig(reduction_factor=4, leave_out=[1]),
}


def _adapterhub(base: nn.Module) -> nn.Module:
    model = copy.deepcopy(base)
    adapters.init(model)
    g = torch.Generator().manual_seed(3)
    for name, config in CONFIGS.items():
        model.add_adapter(name, config=BnConfig(**adapterhub_config_dict(config)))
    with torch.no_grad():
        for key, p in model.named_parameters():
            if ".adapters." in key:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


def _our_grads(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """AdapterHub's key -> the gradient of adapter ``name``'s parameter holding it."""
    out = {}
    for path, site in named_bn_sites(model).items():
        if name not in site.adapter_names:
            continue
        layer = path.rpartition(".")[0]
        holder = "attention_adapters" if site.location == "mh_adapter" else "output_adapters"
        prefix = f"{path}.adapters.{name}." if site.post_norm else f"{layer}.{holder}.adapters.{name}."
        for local, p in site.adapters[name].named_parameters():
            module, _, leaf = local.partition(".")
            assert p.grad is not None, local
            out[prefix + {"down": "adapter_down.0", "up": "adapter_up"}[module] + "." + leaf] = p.grad
    return out


def _compare(ah: nn.Module, ours: nn.Module, name: str) -> tuple[float, float]:
    batch = inputs()
    for m in (ah, ours):
        m.zero_grad(set_to_none=True)
    out_ah, out_ours = output(ah, batch), output(ours, batch)
    weight = torch.randn(out_ah.shape, generator=torch.Generator().manual_seed(5))
    (out_ah * weight).sum().backward()
    (out_ours * weight).sum().backward()
    theirs = {k: p.grad for k, p in ah.named_parameters() if p.grad is not None}
    mine = _our_grads(ours, name)
    assert theirs and set(theirs) == set(mine), sorted(set(theirs) ^ set(mine))[:6]
    grad = max((theirs[k] - mine[k]).abs().max().item() for k in theirs)
    return (out_ah - out_ours).abs().max().item(), grad


@pytest.mark.parametrize("arch", ARCHS)
def test_two_named_adapters_switched_equal_adapterhubs(arch: str, tmp_path: Path) -> None:
    base = base_model(arch)
    ah = _adapterhub(base)
    ours = copy.deepcopy(base)
    for name in CONFIGS:
        ah.save_adapter(str(tmp_path / name), name)
        load_adapterhub_adapter(ours, tmp_path / name, name)
    ours.eval()
    for name in ("b", "a", "b"):
        ah.train_adapter(name)  # active, and the only trainable part
        ah.eval()
        set_adapter(ours, name)
        out, grad = _compare(ah, ours, name)
        assert out == 0.0 and grad == 0.0, (name, out, grad)
    save_adapterhub(ours, tmp_path / "ours_b", name="b")  # one by name, back into AdapterHub as "c"
    info: dict = {}
    ah.load_adapter(str(tmp_path / "ours_b"), load_as="c", loading_info=info)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [], info
    ah.set_active_adapters("c")
    set_adapter(ours, "b")
    with torch.no_grad():
        assert (output(ah, inputs()) - output(ours, inputs())).abs().max().item() == 0.0
