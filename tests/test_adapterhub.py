"""AdapterHub's adapter format in peft_zoo (save_adapterhub / load_adapterhub), and the run of
the equivalence tests against AdapterHub itself in their side environment.

``adapters`` 1.3.0 needs transformers 4.57.6 and this project runs 5.x, so
:func:`test_equivalence_with_adapterhub_in_its_environment` builds ``build/adapterhub-env``
(tests/adapterhub_env.py) and runs ``tests/adapterhub`` there; it counts the passes, so a run
that skipped or collected nothing fails.
"""

from __future__ import annotations

import copy
import io
import json
import re
import subprocess

import pytest
import torch
from adapterhub_env import ROOT, ensure_env
from adapterhub_models import ARCHS, hidden, tiny

from peft_zoo.injection.bottleneck_config import BottleneckConfig
from peft_zoo.injection.bottleneck_placement import adapt_bottleneck, bottleneck_sites
from peft_zoo.interop.adapterhub import (
    AdapterHubFormatError,
    adapterhub_parameters,
    load_adapterhub,
    read_adapterhub,
    save_adapterhub,
)

SIDE_TESTS = 46  # tests/adapterhub: 19 test_ah_equivalence.py, 22 test_ah_format.py, 3 test_ah_named.py


@pytest.mark.slow
@pytest.mark.timeout(900)  # builds the environment once (about 20 s), then about 40-80 s of tests
def test_equivalence_with_adapterhub_in_its_environment():
    python = ensure_env()
    cmd = [str(python), "-m", "pytest", "tests/adapterhub", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    summary = proc.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) == SIDE_TESTS, summary
    assert not re.search(r"skipped|failed|error|deselected|xfail", summary), summary


def _adapted(arch: str, config: BottleneckConfig, seed: int = 4):
    base = tiny(arch)
    model, _ = adapt_bottleneck(copy.deepcopy(base), config)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for p in adapterhub_parameters(model, "task").values():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return base, model


CONFIGS = [
    BottleneckConfig.preset("seq_bn", ln_before=True, ln_after=True, use_gating=True),
    BottleneckConfig.preset("double_seq_bn", scaling="channel"),
    BottleneckConfig.preset("scaled_par_bn", reduction_factor={"1": 4, "default": 8}, leave_out=[0]),
]


@pytest.mark.parametrize("config", CONFIGS, ids=["seq_bn", "double_seq_bn", "scaled_par_bn"])
@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_through_adapterhubs_files(arch, config, tmp_path):
    base, model = _adapted(arch, config)
    save_adapterhub(model, tmp_path, name="task")
    assert {p.name for p in tmp_path.iterdir()} == {
        "adapter_config.json",
        "adapter.safetensors",
        "pytorch_adapter.bin",
    }
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert {"config", "hidden_size", "model_class", "model_name", "model_type", "name", "version"} <= set(
        meta
    )
    assert (
        meta["name"] == "task"
        and meta["config"]["phm_layer"] is False
        and meta["version"].startswith("adapters.")
    )
    loaded, params = load_adapterhub(copy.deepcopy(base), tmp_path)
    with torch.no_grad():
        assert torch.equal(hidden(loaded), hidden(model))
    assert {id(p) for p in params} == {id(p) for p in loaded.parameters() if p.requires_grad}
    # the .bin alone (torch.load with weights_only=True) gives the same adapter
    (tmp_path / "adapter.safetensors").unlink()
    loaded_bin, _ = load_adapterhub(copy.deepcopy(base), tmp_path)
    with torch.no_grad():
        assert torch.equal(hidden(loaded_bin), hidden(model))


def test_loading_into_existing_sites_needs_the_same_config(tmp_path):
    base, model = _adapted("gpt2", BottleneckConfig())
    save_adapterhub(model, tmp_path, name="task", weights=("safetensors",))
    fresh, _ = adapt_bottleneck(copy.deepcopy(base), BottleneckConfig())
    load_adapterhub(fresh, tmp_path)
    with torch.no_grad():
        assert torch.equal(hidden(fresh), hidden(model))
    other, _ = adapt_bottleneck(copy.deepcopy(base), BottleneckConfig(reduction_factor=8))
    with pytest.raises(AdapterHubFormatError, match="reduction_factor"):
        load_adapterhub(other, tmp_path)


def _saved(tmp_path):
    base, model = _adapted("bert", BottleneckConfig(ln_before=True))
    save_adapterhub(model, tmp_path, name="task")
    return base, tmp_path


def _edit_config(path, edit):
    meta = json.loads((path / "adapter_config.json").read_text())
    edit(meta)
    (path / "adapter_config.json").write_text(json.dumps(meta))


def _edit_tensors(path, edit):
    import safetensors.torch

    tensors = safetensors.torch.load_file(str(path / "adapter.safetensors"))
    edit(tensors)
    safetensors.torch.save_file(tensors, str(path / "adapter.safetensors"))


BAD_FILES = {
    "phm": (lambda p: _edit_config(p, lambda m: m["config"].update(phm_layer=True)), "phm_layer"),
    "lora": (lambda p: _edit_config(p, lambda m: m["config"].update(architecture="lora")), "architecture"),
    "name": (lambda p: _edit_config(p, lambda m: m.update(name="a.b")), "adapter name"),
    "required": (lambda p: _edit_config(p, lambda m: m["config"].pop("reduction_factor")), "required"),
    "type": (lambda p: _edit_config(p, lambda m: m["config"].update(ln_after="yes")), "ln_after"),
    "missing": (lambda p: _edit_tensors(p, lambda t: t.pop(sorted(t)[0])), "missing keys"),
    "extra": (
        lambda p: _edit_tensors(p, lambda t: t.update({"x.adapters.task.y": torch.zeros(1)})),
        "unexpected",
    ),
    "shape": (
        lambda p: _edit_tensors(
            p, lambda t: t.update({k: torch.zeros(3) for k in t if "adapter_up.bias" in k})
        ),
        "shape",
    ),
    "twin": (
        lambda p: _edit_tensors(p, lambda t: t.update({k: t[k] + 1 for k in t if "adapter_down.0" in k})),
        "must equal",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_are_refused_and_change_nothing(case, tmp_path):
    base, path = _saved(tmp_path)
    BAD_FILES[case][0](path)
    model = copy.deepcopy(base)
    types = [type(m) for m in model.modules()]
    with pytest.raises(AdapterHubFormatError, match=BAD_FILES[case][1]):
        load_adapterhub(model, path)
    assert [type(m) for m in model.modules()] == types and not bottleneck_sites(model)


def test_a_pickled_object_in_the_bin_is_refused(tmp_path):
    _, path = _saved(tmp_path)
    (path / "adapter.safetensors").unlink()
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(1), "code": print}, buffer)  # not a plain tensor dict
    (path / "pytorch_adapter.bin").write_bytes(buffer.getvalue())
    with pytest.raises(AdapterHubFormatError, match=r"pytorch_adapter\.bin"):
        read_adapterhub(path)


def test_a_legacy_file_renames_gelu_as_adapterhub_does(tmp_path):
    _, path = _saved(tmp_path)
    _edit_config(path, lambda m: (m.pop("version"), m["config"].update(non_linearity="gelu")))
    assert read_adapterhub(path)[1].non_linearity == "gelu_new"


def test_save_refusals(tmp_path):
    with pytest.raises(AdapterHubFormatError, match="no bottleneck adapters"):
        save_adapterhub(tiny("bert"), tmp_path)
    _, model = _adapted("bert", BottleneckConfig())
    with pytest.raises(AdapterHubFormatError, match="adapter name"):
        save_adapterhub(model, tmp_path, name="a/b")
    with pytest.raises(ValueError, match="weights"):
        save_adapterhub(model, tmp_path, weights=("pickle",))
    (tmp_path / "file").write_text("x")
    with pytest.raises(AdapterHubFormatError, match="is a file"):
        save_adapterhub(model, tmp_path / "file")
