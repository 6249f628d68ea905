"""Print the table of max |difference| against AdapterHub (docs/bottleneck_adapters.md):
``build/adapterhub-env/bin/python tests/adapterhub/measure_table.py`` (after
``python tests/adapterhub_env.py`` has built the side environment)."""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

import adapters
import torch

sys.path.insert(0, str(Path(__file__).parent))
from ah_helpers import ARCHS, NAME, adapterhub_model, base_model, compare, inputs, peft_zoo_from_file

from peft_zoo.injection.bottleneck_config import BottleneckConfig
from peft_zoo.injection.bottleneck_placement import adapt_bottleneck
from peft_zoo.interop.adapterhub import adapterhub_parameters, save_adapterhub

CASES = {
    "seq_bn": {},
    "double_seq_bn": {},
    "par_bn": {},
    "scaled_par_bn": {},
    "seq_bn + ln_before, ln_after, learned scaling, gating": {
        "ln_before": True,
        "ln_after": True,
        "scaling": "learned",
        "use_gating": True,
    },
    "seq_bn, original_ln_after=False": {"original_ln_after": False},
}


def _preset(case: str) -> BottleneckConfig:
    name = case.split(" ")[0].rstrip(",")
    return BottleneckConfig.preset(name, **CASES[case])


def from_adapterhub(arch: str, config: BottleneckConfig) -> dict[str, float]:
    base = base_model(arch)
    ah = adapterhub_model(base, config)
    with tempfile.TemporaryDirectory() as d:
        ah.save_adapter(d, NAME)
        return compare(ah, peft_zoo_from_file(base, Path(d)), inputs())


def to_adapterhub(arch: str, config: BottleneckConfig) -> dict[str, float]:
    base = base_model(arch)
    ours, _ = adapt_bottleneck(copy.deepcopy(base), config)
    with torch.no_grad():
        for p in adapterhub_parameters(ours, NAME).values():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    with tempfile.TemporaryDirectory() as d:
        save_adapterhub(ours.eval(), d, name=NAME)
        ah = copy.deepcopy(base)
        adapters.init(ah)
        ah.load_adapter(d, set_active=True)
        ah.train_adapter(NAME)
        return compare(ah.eval(), ours, inputs())


def main() -> None:
    print(
        "| config | arch | AdapterHub file -> peft_zoo (out / grad) | peft_zoo file -> AdapterHub (out / grad) |"
    )
    print("|---|---|---|---|")
    for case in CASES:
        for arch in ARCHS:
            a, b = from_adapterhub(arch, _preset(case)), to_adapterhub(arch, _preset(case))
            print(
                f"| {case} | {arch} | {a['out']:.2g} / {a['grad']:.2g} | {b['out']:.2g} / {b['grad']:.2g} |"
            )


if __name__ == "__main__":
    main()
