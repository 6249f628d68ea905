"""LoRA fine-tuning with DistributedDataParallel, one process per rank, launched by torchrun.

    torchrun --nproc_per_node=2 examples/ddp_lora.py            # CPU, gloo backend
    torchrun --nproc_per_node=2 examples/ddp_lora.py --out my_adapter

Every rank builds the same model from the same seed and injects the same LoRA layers;
``mark_only_adapters_trainable`` freezes the rest, so DDP registers (and all-reduces) only
the adapter tensors. A ``DistributedSampler`` hands each rank a different shard of the data.
Rank 0 prints the figures and saves the adapter; docs/distributed.md walks through it.
"""

import argparse
import shutil
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import peft_zoo as pz
from peft_zoo.models import TinyTransformer, TinyTransformerConfig

CONFIG = TinyTransformerConfig(vocab_size=32, max_len=16, d_model=64, n_heads=4, d_ff=128, n_layers=2)
# LoRA on the attention queries and values of both blocks, and on the classifier head
# (frozen like everything else, so it needs an adapter to move).
TARGETS = [*(f"blocks.{i}.attn.branch.{p}" for i in range(CONFIG.n_layers) for p in "qv"), "head"]


def make_dataset(n: int, seed: int) -> TensorDataset:
    """Label 1 when a sequence holds more low token ids (< vocab/2) than high ones."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, CONFIG.vocab_size, (n, CONFIG.max_len), generator=g)  # (n, T)
    labels = ((ids < CONFIG.vocab_size // 2).sum(dim=1) * 2 > CONFIG.max_len).long()  # (n,)
    return TensorDataset(ids, labels)


def say(msg: str) -> None:
    """Print on rank 0 only."""
    if dist.get_rank() == 0:
        print(msg, flush=True)


def build_model() -> tuple[torch.nn.Module, list[torch.nn.Parameter]]:
    """1. Same seed on every rank -> the same base weights and the same LoRA initialisation."""
    torch.manual_seed(0)
    model, lora_params = pz.inject_lora(TinyTransformer(CONFIG), TARGETS, rank=8, alpha=16)
    pz.mark_only_adapters_trainable(model)
    return model, lora_params


def count_traffic(ddp: DistributedDataParallel, lora_params: list[torch.nn.Parameter]) -> dict:
    """A communication hook that counts what DDP all-reduces, then averages as usual. (DDP checks
    these annotations at runtime, so this file does not use `from __future__ import annotations`.)"""
    adapter_ids = {id(p) for p in lora_params}
    traffic = {"bytes": 0, "tensors": 0, "all_adapter": True}

    def counting_allreduce(state: dict, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        state["bytes"] += bucket.buffer().numel() * bucket.buffer().element_size()
        state["tensors"] += len(bucket.parameters())
        state["all_adapter"] &= all(id(p) in adapter_ids for p in bucket.parameters())
        return default_hooks.allreduce_hook(None, bucket)

    ddp.register_comm_hook(traffic, counting_allreduce)
    return traffic


def shard_data(batch_size: int) -> tuple[DistributedSampler, DataLoader]:
    """3. Different data on every rank: all ranks draw the same shuffled permutation, and rank r
    takes its positions r, r + world, r + 2 * world, ..."""
    rank, world = dist.get_rank(), dist.get_world_size()
    data = make_dataset(1024, seed=1)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=batch_size, sampler=sampler)
    shards = [None] * world
    dist.all_gather_object(shards, list(sampler))
    overlap = set(shards[0]).intersection(*shards[1:])
    say(f"samples per rank: {[len(s) for s in shards]}, sample overlap between ranks: {len(overlap)}")
    return sampler, loader


def train(
    ddp: DistributedDataParallel, sampler: DistributedSampler, loader: DataLoader, epochs: int, traffic: dict
) -> None:
    opt = torch.optim.AdamW(pz.trainable_parameters(ddp), lr=3e-3)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)  # a new shuffle each epoch, still disjoint across ranks
        total = torch.zeros(2)  # (sum of losses, number of samples) on this rank
        for ids, labels in loader:
            loss = F.cross_entropy(ddp(ids), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # DDP all-reduces the adapter gradients here, overlapped with backward
            opt.step()
            total += torch.tensor([loss.item() * len(labels), len(labels)])
            traffic.setdefault("per_step", (traffic["bytes"], traffic["tensors"]))  # after step 1
        dist.all_reduce(total)  # the mean loss over every rank's samples
        say(f"epoch {epoch + 1:2d}  mean loss {total[0] / total[1]:.4f}")


def report_traffic(model: torch.nn.Module, lora_params: list[torch.nn.Parameter], traffic: dict) -> None:
    per_step_bytes, per_step_tensors = traffic["per_step"]
    adapter_bytes = sum(p.numel() * p.element_size() for p in lora_params)
    frozen_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    say(
        f"all-reduced per step: {per_step_bytes:,} bytes in {per_step_tensors} tensors, all of them "
        f"adapter weights: {traffic['all_adapter']} (adapter size {adapter_bytes:,} bytes; the "
        f"{frozen_bytes:,} bytes of frozen base weights are never sent)"
    )


def check_replicas(model: torch.nn.Module, lora_params: list[torch.nn.Parameter], base_before: dict) -> None:
    """4. Replicas: every rank holds bitwise the same adapter. Gather rank 1's into rank 0."""
    world = dist.get_world_size()
    flat = torch.cat([p.detach().flatten() for p in lora_params])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    same = all(torch.equal(gathered[0], g) for g in gathered[1:])
    max_diff = max((gathered[0] - g).abs().max().item() for g in gathered)
    say(f"replicas identical: {same} (max |rank 0 - rank r| = {max_diff:.1e})")
    unchanged = all(torch.equal(p, base_before[n]) for n, p in model.named_parameters() if n in base_before)
    flags = [None] * world
    dist.all_gather_object(flags, unchanged)
    say(f"base weights unchanged: {all(flags)}")


def save_and_reload(ddp: DistributedDataParallel, out_dir: Path | None) -> None:
    """5. Save from rank 0 only (the replicas are equal); the others wait, then may read it.
    Save ddp.module (or the model itself): its names have no "module." prefix."""
    rank, world = dist.get_rank(), dist.get_world_size()
    keep = out_dir is not None
    out = [str(out_dir) if keep else (tempfile.mkdtemp(prefix="ddp_lora_") if rank == 0 else None)]
    dist.broadcast_object_list(out)
    if rank == 0:
        path = pz.save_adapter(ddp.module, out[0])
        where = path if keep else f"{path.name} (a temporary directory; pass --out DIR to keep it)"
        say(f"rank 0 saved {where}: {path.stat().st_size:,} bytes")
    dist.barrier()
    if rank == world - 1:  # the last rank reads the file back into a fresh model
        torch.manual_seed(0)
        fresh, _ = pz.inject_lora(TinyTransformer(CONFIG), TARGETS, rank=8, alpha=16)
        pz.load_adapter(fresh, out[0])
        mine, loaded = pz.adapter_state_dict(ddp.module), pz.adapter_state_dict(fresh)
        match = mine.keys() == loaded.keys() and all(torch.equal(mine[k], loaded[k]) for k in mine)
        print(f"rank {rank} reloaded rank 0's file: identical to its own adapter: {match}", flush=True)
    dist.barrier()
    if rank == 0 and not keep:
        shutil.rmtree(out[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--out", type=Path, default=None, help="adapter directory (default: a temporary one)")
    args = parser.parse_args()

    # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; env:// reads them.
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    say(f"world size {dist.get_world_size()}, backend {dist.get_backend()}")

    model, lora_params = build_model()
    if dist.get_rank() == 0:
        pz.print_trainable_parameters(model)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    # 2. Wrap after freezing: DDP builds its gradient buckets from the parameters that
    #    require grad at construction time, so the frozen base is never communicated.
    ddp = DistributedDataParallel(model)  # CPU: no device_ids; find_unused_parameters=False
    traffic = count_traffic(ddp, lora_params)
    sampler, loader = shard_data(args.batch_size)
    train(ddp, sampler, loader, args.epochs, traffic)
    report_traffic(model, lora_params, traffic)
    check_replicas(model, lora_params, base_before)
    save_and_reload(ddp, args.out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
