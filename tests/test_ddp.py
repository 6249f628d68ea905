"""LoRA under DistributedDataParallel: only adapter gradients are all-reduced, replicas stay equal.

Two CPU processes (gloo backend, a file store in ``tmp_path``, so no port is involved and
``pytest -n 2`` is safe) train the same adapted TinyTransformer on different data. Each
rank saves what it saw (weights, gradients, which parameters DDP communicated) into
``tmp_path``; the parent reloads the files with ``weights_only=True`` and checks them
against local gradients and against single-process training on the concatenated batch.

The second half runs ``examples/ddp_lora.py`` through ``torch.distributed.run`` (what
``torchrun`` calls), as ``docs/distributed.md`` shows, and checks what its output claims.
"""

from __future__ import annotations

import copy
import os
import re
import signal
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import peft_zoo as pz
from peft_zoo.models import TinyTransformer, TinyTransformerConfig

ROOT = Path(__file__).resolve().parents[1]
WORLD_SIZE = 2
STEPS = 3
PER_RANK = 6  # samples per rank and step
SEQ_LEN = 10
CONFIG = TinyTransformerConfig(vocab_size=32, max_len=SEQ_LEN, d_model=16, n_heads=2, d_ff=32, n_layers=2)
# LoRA on attention and feed-forward linears of both blocks; the rest stays frozen.
TARGETS = [
    f"blocks.{i}.{name}" for i in range(2) for name in ("attn.branch.q", "attn.branch.v", "ffn.branch.fc1")
]
LR, MOMENTUM = 0.2, 0.9

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this build"),
    pytest.mark.skipif(
        dist.is_available() and not dist.is_gloo_available(), reason="the gloo backend is not available"
    ),
]


# ----------------------------------------------------------------------------- shared by ranks and parent


def build_model() -> nn.Module:
    """The same adapted model in every process: seed, inject LoRA, freeze everything else."""
    torch.manual_seed(0)
    model, _ = pz.inject_lora(TinyTransformer(CONFIG), TARGETS, rank=4, alpha=8)
    pz.mark_only_adapters_trainable(model)
    return model


def batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s data at ``step``: different on every rank. ``ids (PER_RANK, SEQ_LEN)``, ``labels (PER_RANK,)``."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    ids = torch.randint(0, CONFIG.vocab_size, (PER_RANK, SEQ_LEN), generator=g)
    labels = ((ids < CONFIG.vocab_size // 2).sum(dim=1) * 2 > SEQ_LEN).long()  # more low ids than high
    return ids, labels


def make_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)


def lora_names(model: nn.Module) -> list[str]:
    return [name for name, _ in pz.adapter_named_parameters(model)]


# ----------------------------------------------------------------------------- one rank


def _record_buckets(ddp, model: nn.Module) -> dict[str, list]:
    """A communication hook sees every bucket DDP all-reduces: record it (parameter names,
    bytes), then do the default averaging all-reduce (divide by the world size, sum across
    ranks). Returns the record, filled in as training runs."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    name_of = {id(p): n for n, p in model.named_parameters()}
    seen: dict[str, list] = {"params": [], "bytes": []}

    def recording_allreduce(state, bucket):
        state["params"].append(sorted(name_of[id(p)] for p in bucket.parameters()))
        state["bytes"].append(bucket.buffer().numel() * bucket.buffer().element_size())
        return default_hooks.allreduce_hook(None, bucket)

    ddp.register_comm_hook(seen, recording_allreduce)
    return seen


def _train(
    rank: int, model: nn.Module, reference: nn.Module, ddp, opt: torch.optim.Optimizer
) -> dict[str, list]:
    """STEPS steps under DDP; before each, the same step on ``reference``, a plain copy (the
    local, un-averaged gradient). Returns the losses and both gradients of every step."""
    losses, local_grads, ddp_grads, grad_names = [], [], [], []
    for step in range(STEPS):
        ids, labels = batch(rank, step)
        reference.load_state_dict(model.state_dict())
        reference.zero_grad(set_to_none=True)
        F.cross_entropy(reference(ids), labels).backward()
        local_grads.append({n: p.grad.clone() for n, p in reference.named_parameters() if p.grad is not None})

        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(ddp(ids), labels)
        loss.backward()
        ddp_grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        grad_names.append([n for n, p in model.named_parameters() if p.grad is not None])
        opt.step()
        losses.append(loss.item())
    return {"local_grads": local_grads, "ddp_grads": ddp_grads, "grad_names": grad_names, "losses": losses}


def _ddp_worker(rank: int, store_path: str, out_dir: str) -> None:
    """Runs in a spawned process: train STEPS steps under DDP and save what happened."""
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    store = dist.FileStore(store_path, WORLD_SIZE)
    # A finite timeout: if the other rank dies, collectives fail instead of hanging.
    dist.init_process_group(
        "gloo", store=store, rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=60)
    )
    try:
        model = build_model()
        initial = {n: p.detach().clone() for n, p in model.named_parameters()}
        requires_grad = [n for n, p in model.named_parameters() if p.requires_grad]
        reference = copy.deepcopy(model)  # a plain copy: the local, un-averaged gradient
        ddp = DistributedDataParallel(model)
        seen = _record_buckets(ddp, model)
        trained = _train(rank, model, reference, ddp, make_optimizer(pz.trainable_parameters(ddp)))
        torch.save(
            {
                "requires_grad": requires_grad,
                "lora_names": lora_names(model),
                "bucket_params": seen["params"],
                "bucket_bytes": seen["bytes"],
                "initial": initial,
                "final": {n: p.detach().clone() for n, p in model.named_parameters()},
                **trained,
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Spawn WORLD_SIZE ranks once per module; return each rank's saved record."""
    tmp = tmp_path_factory.mktemp("ddp")
    failure = None
    try:
        # daemon: if the parent is interrupted (pytest-timeout), the ranks die with it. When
        # one rank fails, spawn terminates the others and raises with that rank's traceback.
        mp.spawn(_ddp_worker, args=(str(tmp / "store"), str(tmp)), nprocs=WORLD_SIZE, join=True, daemon=True)
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as err:
        failure = f"a DDP rank failed:\n{err}"
    if failure:  # failed outside the except block, so the traceback is shown once
        pytest.fail(failure, pytrace=False)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]


# ----------------------------------------------------------------------------- what DDP communicates


def test_only_lora_parameters_require_grad_and_are_bucketed(ranks) -> None:
    expected = sorted(lora_names(build_model()))
    assert len(expected) == 2 * len(TARGETS)
    for r, rec in enumerate(ranks):
        assert sorted(rec["requires_grad"]) == expected, f"rank {r}: trainable parameters"
        # The all-reduced buckets hold LoRA tensors only, each of them once per step.
        communicated = [n for bucket in rec["bucket_params"] for n in bucket]
        assert sorted(communicated) == sorted(expected * STEPS), f"rank {r}: DDP all-reduced {communicated}"


def test_all_reduced_bytes_are_the_adapter_size(ranks) -> None:
    model = build_model()
    adapter_bytes = sum(p.numel() * p.element_size() for _, p in pz.adapter_named_parameters(model))
    full_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    for rec in ranks:
        assert sum(rec["bucket_bytes"]) == STEPS * adapter_bytes
    assert adapter_bytes < full_bytes / 5  # the point of it: far less traffic than full fine-tuning


def test_frozen_parameters_get_no_gradient(ranks) -> None:
    expected = lora_names(build_model())
    for r, rec in enumerate(ranks):
        for step, names in enumerate(rec["grad_names"]):
            assert names == expected, f"rank {r}, step {step}: parameters with a .grad: {names}"


def test_ddp_gradient_is_the_mean_of_the_local_gradients(ranks) -> None:
    for step in range(STEPS):
        local = [rec["local_grads"][step] for rec in ranks]
        assert not torch.equal(
            local[0]["blocks.0.attn.branch.q.lora_B"], local[1]["blocks.0.attn.branch.q.lora_B"]
        )
        for name in local[0]:
            mean = sum(g[name] for g in local) / WORLD_SIZE
            for r, rec in enumerate(ranks):
                torch.testing.assert_close(
                    rec["ddp_grads"][step][name],
                    mean,
                    rtol=1e-6,
                    atol=1e-8,
                    msg=lambda m, r=r, s=step, n=name: f"rank {r}, step {s}, {n}: {m}",
                )


# ----------------------------------------------------------------------------- what the ranks end with


def test_replicas_stay_identical_and_adapters_train(ranks) -> None:
    r0, r1 = ranks
    for name in r0["lora_names"]:
        assert torch.equal(r0["final"][name], r1["final"][name]), f"{name} differs between rank 0 and rank 1"
        assert not torch.equal(r0["final"][name], r0["initial"][name]), f"{name} did not change"
        if name.endswith("lora_B"):
            assert torch.equal(r0["initial"][name], torch.zeros_like(r0["initial"][name]))
            assert r0["final"][name].abs().max() > 0


def test_base_weights_never_change(ranks) -> None:
    start = {n: p.detach() for n, p in build_model().named_parameters()}
    adapter = set(ranks[0]["lora_names"])
    for r, rec in enumerate(ranks):
        for name, value in start.items():
            assert torch.equal(rec["initial"][name], value), f"rank {r}: {name} did not start from the seed"
            if name not in adapter:
                assert torch.equal(rec["final"][name], value), f"rank {r}: frozen {name} changed"


def test_ddp_equals_single_process_training_on_the_concatenated_batch(ranks) -> None:
    model = build_model()
    opt = make_optimizer(pz.trainable_parameters(model))
    for step in range(STEPS):
        parts = [batch(r, step) for r in range(WORLD_SIZE)]
        ids = torch.cat([p[0] for p in parts])  # (WORLD_SIZE * PER_RANK, SEQ_LEN)
        labels = torch.cat([p[1] for p in parts])
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(ids), labels)  # mean over the combined batch
        loss.backward()
        opt.step()
        # Equal per-rank batch sizes: the full-batch mean loss is the mean of the ranks' losses.
        ddp_mean = sum(rec["losses"][step] for rec in ranks) / WORLD_SIZE
        assert loss.item() == pytest.approx(ddp_mean, rel=1e-5), f"step {step}"
    for name, p in pz.adapter_named_parameters(model):
        torch.testing.assert_close(ranks[0]["final"][name], p.detach(), msg=lambda m, n=name: f"{n}: {m}")


# ----------------------------------------------------------------------------- the torchrun example


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_example(tmp_path: Path, timeout: float = 90) -> tuple[int, str, str]:
    """``torchrun --nproc_per_node=2 examples/ddp_lora.py`` on a free port; ``(rc, stdout, stderr)``."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    for _attempt in range(3):  # the free port can be taken between finding and binding it
        cmd = [
            *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"),
            *("--master_addr=127.0.0.1", f"--master_port={_free_port()}"),
            *(str(ROOT / "examples" / "ddp_lora.py"), "--out", str(tmp_path / "adapter")),
        ]
        # A session of its own, so a hang can be ended for the launcher and both ranks at once.
        with subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
            start_new_session=True,
        ) as proc:
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                if hasattr(os, "killpg"):
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
                out, err = proc.communicate()
                pytest.fail(f"torchrun did not finish in {timeout} s:\n{out}\n{err}", pytrace=False)
        if proc.returncode == 0 or "address already in use" not in (out + err).lower():
            break
    return proc.returncode, out, err


def test_torchrun_example_does_what_the_docs_say(tmp_path) -> None:
    rc, out, err = _run_example(tmp_path)
    assert rc == 0, f"torchrun failed (rc {rc}):\n{out}\n{err}"

    assert "world size 2, backend gloo" in out
    # Communication volume is the adapter: 4 bytes per trainable (float32) parameter, per step.
    trainable = int(re.search(r"trainable params: ([\d,]+)", out).group(1).replace(",", ""))
    m = re.search(
        r"all-reduced per step: ([\d,]+) bytes in \d+ tensors, all of them adapter weights: True", out
    )
    assert m, out
    assert int(m.group(1).replace(",", "")) == 4 * trainable
    # The page pastes this run's output; its size figures depend only on the example's shapes.
    assert m.group(0) in (ROOT / "docs" / "distributed.md").read_text(encoding="utf-8")
    assert "sample overlap between ranks: 0" in out

    losses = [float(x) for x in re.findall(r"epoch +\d+ +mean loss ([\d.]+)", out)]
    assert len(losses) >= 3 and losses[-1] < 0.8 * losses[0], out
    assert "replicas identical: True" in out
    assert "base weights unchanged: True" in out
    assert "rank 1 reloaded rank 0's file: identical to its own adapter: True" in out
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
