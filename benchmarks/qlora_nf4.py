"""QLoRA with NF4 in plain PyTorch: bits, error, memory, a fine-tune, and the cost of dequantising.

Prints, and writes as JSON (``--json``):

1. bits per parameter of NF4 with and without double quantisation (paper: 4.5 and ~4.127);
2. RMSE of NF4 vs plain 4-bit integer absmax quantisation on N(0, sigma) weights (ratio);
3. what re-quantising a merged LoRA update keeps of it (why ``QLoRALinear.merge`` refuses);
4. memory (MiB, from the actual tensors) of a BERT model of the published Geneformer
   gf-20L-95M-i4096 geometry (random weights) in float32, bfloat16, NF4 and NF4 + double quant;
5. a short QLoRA fine-tune of a tiny transformer, loss before/after, next to float LoRA;
6. median forward time of a QLoRALinear / NF4Linear against nn.Linear (ratios only: the CPU is
   shared and absolute times are noise).

Usage::

    python benchmarks/qlora_nf4.py [--layers 20] [--threads 2] [--json benchmarks/results/qlora_nf4.json]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from peft_zoo.cost import GENEFORMER_GF_20L_95M_I4096, build_model
from peft_zoo.injection.inject import inject_lora, inject_qlora
from peft_zoo.injection.surgery import mark_only_adapters_trainable
from peft_zoo.lora import LoRALinear
from peft_zoo.models import TinyTransformer, TinyTransformerConfig
from peft_zoo.nf4 import NF4Linear, model_nbytes, quantize_int4, quantize_nf4
from peft_zoo.qlora import QLoRALinear

MIB = 2**20


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).pow(2).mean().sqrt().item()


def bits_per_parameter() -> dict[str, float]:
    """On a 4096 x 4096 weight (a multiple of 64 * 256, as the paper's figures assume)."""
    w = torch.randn(4096, 4096) * 0.02
    return {
        "nf4": quantize_nf4(w).bits_per_parameter,
        "nf4_double_quant": quantize_nf4(w, double_quant=True).bits_per_parameter,
        "paper_nf4": 4 + 32 / 64,
        "paper_nf4_double_quant": 4 + 8 / 64 + 32 / (64 * 256),
    }


def reconstruction_error(seeds: int = 3) -> list[dict[str, float]]:
    """RMSE of NF4, NF4 + double quant and int4 on normal weights of a few sizes and scales."""
    rows = []
    for n, sigma in ((1024 * 1024, 0.02), (256 * 1024, 0.02), (1024 * 1024, 1.0)):
        errs: dict[str, list[float]] = {"nf4": [], "nf4_dq": [], "int4": []}
        for seed in range(seeds):
            w = torch.randn(n, generator=torch.Generator().manual_seed(seed)) * sigma
            errs["nf4"].append(rmse(quantize_nf4(w).dequantize(), w))
            errs["nf4_dq"].append(rmse(quantize_nf4(w, double_quant=True).dequantize(), w))
            errs["int4"].append(rmse(quantize_int4(w).dequantize(), w))
        mean = {k: statistics.mean(v) for k, v in errs.items()}
        rows.append(
            {
                "numel": n,
                "sigma": sigma,
                "rmse_nf4": mean["nf4"],
                "rmse_nf4_dq": mean["nf4_dq"],
                "rmse_int4": mean["int4"],
                "int4_over_nf4": mean["int4"] / mean["nf4"],
                "dq_over_nf4": mean["nf4_dq"] / mean["nf4"],
            }
        )
    return rows


def requantised_merge(rel_sizes: tuple[float, ...] = (0.01, 0.05, 0.2)) -> list[dict[str, float]]:
    """Fold a rank-8 update of relative size ||dW|| / ||W|| into the dequantised weight and quantise
    again: how much of the update is left, ``1 - ||(Q(W' + dW) - W') - dW|| / ||dW||``."""
    torch.manual_seed(0)
    w = torch.randn(1024, 1024) * 0.02
    w_deq = quantize_nf4(w).dequantize()
    rows = []
    for rel in rel_sizes:
        delta = torch.randn(1024, 8) @ torch.randn(8, 1024)
        delta *= rel * w.norm() / delta.norm()
        kept = quantize_nf4(w_deq + delta).dequantize() - w_deq
        rows.append(
            {
                "update_rel_size": rel,
                "update_error_after_requant": (kept - delta).norm().item() / delta.norm().item(),
            }
        )
    return rows


def memory(layers: int) -> dict[str, object]:
    """MiB of a BertForMaskedLM of the published Geneformer geometry (random weights)."""
    geometry = GENEFORMER_GF_20L_95M_I4096
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build_model(dataclasses.replace(geometry, num_layers=layers)).eval()
    build_s = time.perf_counter() - t0
    linear_params = sum(
        m.weight.numel() for n, m in model.named_modules() if isinstance(m, nn.Linear) and "decoder" not in n
    )
    out: dict[str, object] = {
        "model": f"{geometry.name}, {layers} of {geometry.num_layers} layers (BertForMaskedLM, random weights)",
        "parameters": sum(p.numel() for p in model.parameters()),
        "quantised_linear_parameters": linear_params,
        "float32_mib": model_nbytes(model) / MIB,
        "bfloat16_mib": model_nbytes(copy.deepcopy(model).to(torch.bfloat16)) / MIB,
        "build_seconds": build_s,
    }
    for label, dq in (("nf4", False), ("nf4_dq", True)):
        q = copy.deepcopy(model)
        t0 = time.perf_counter()
        _, params = inject_qlora(q, rank=8, double_quant=dq)  # every linear but the tied MLM decoder
        out[f"{label}_seconds"] = time.perf_counter() - t0
        lora = sum(p.numel() * p.element_size() for p in params)
        bases = [m.base for m in q.modules() if isinstance(m, QLoRALinear)]
        out[f"{label}_mib"] = model_nbytes(q) / MIB  # embeddings, LayerNorms, biases stay float32
        out[f"{label}_lora_mib"] = lora / MIB
        out[f"{label}_linear_weight_bits"] = 8 * sum(b.nbytes for b in bases) / linear_params
        del q
    return out


def fine_tune(steps: int = 60) -> dict[str, float]:
    """Tiny transformer, task: does token 0 occur more often than token 1? Rank-8 adapters on every
    linear but the head; the head trains too (it is random). Same seeds for QLoRA and LoRA."""
    cfg = TinyTransformerConfig(vocab_size=16, max_len=24, d_model=64, d_ff=128, n_layers=2)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 16, (1024, 24), generator=g)
    labels = ((ids == 0).sum(1) > (ids == 1).sum(1)).long()
    results: dict[str, float] = {}
    for label in ("qlora", "lora"):
        torch.manual_seed(0)
        model = TinyTransformer(cfg)
        if label == "qlora":
            inject_qlora(model, rank=8, alpha=16)
        else:
            names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "head"]
            inject_lora(model, names, 8, 16)
        params = mark_only_adapters_trainable(model) + list(model.head.parameters())
        model.head.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=3e-3)

        def loss_and_acc(model: nn.Module = model) -> tuple[float, float]:
            with torch.no_grad():
                logits = model(ids)
                return F.cross_entropy(logits, labels).item(), (
                    logits.argmax(1) == labels
                ).float().mean().item()

        results[f"{label}_loss_before"], results[f"{label}_acc_before"] = loss_and_acc()
        for step in range(steps):
            batch = torch.arange(64) + (step * 64) % 1024
            loss = F.cross_entropy(model(ids[batch]), labels[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        results[f"{label}_loss_after"], results[f"{label}_acc_after"] = loss_and_acc()
    results["steps"] = steps
    return results


def interleaved_medians(fns: dict[str, object], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median wall time (ms) of each ``fn()``, the variants run in turn within every round so that
    a busy spell on the shared machine hits them all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def forward_timing(repeats: int = 25) -> list[dict[str, float]]:
    """Median forward time ratios against nn.Linear (random, trained-looking adapters)."""
    rows = []
    for tokens, d in ((512, 1024), (32, 1024)):
        torch.manual_seed(0)
        base = nn.Linear(d, d)
        x = torch.randn(tokens, d)
        layers = {
            "linear": base,
            "lora": LoRALinear(copy.deepcopy(base), 8),
            "nf4_linear": NF4Linear(copy.deepcopy(base)),
            "qlora": QLoRALinear(copy.deepcopy(base), 8),
        }
        with torch.inference_mode():
            t = interleaved_medians({k: (lambda m=m, x=x: m(x)) for k, m in layers.items()}, repeats)
        rows.append(
            {
                "tokens": tokens,
                "d": d,
                "linear_ms": t["linear"],
                "lora_over_linear": t["lora"] / t["linear"],
                "nf4_linear_over_linear": t["nf4_linear"] / t["linear"],
                "qlora_over_linear": t["qlora"] / t["linear"],
            }
        )
    return rows


def show_bits() -> dict[str, float]:
    bits = bits_per_parameter()
    print("\n1. bits per parameter (4096 x 4096 weight, block 64; double quant: 8-bit, blocks of 256)")
    print(f"   NF4            {bits['nf4']:.4f}   (paper {bits['paper_nf4']:.3f})")
    print(f"   NF4 + DQ       {bits['nf4_double_quant']:.4f}   (paper {bits['paper_nf4_double_quant']:.4f})")
    return bits


def show_errors() -> list[dict[str, float]]:
    errors = reconstruction_error()
    print("\n2. reconstruction RMSE on N(0, sigma) weights (mean of 3 seeds)")
    print(
        f"   {'numel':>9} {'sigma':>6} {'NF4':>10} {'NF4+DQ':>10} {'int4':>10} {'int4/NF4':>9} {'DQ/NF4':>8}"
    )
    for r in errors:
        print(
            f"   {r['numel']:>9} {r['sigma']:>6} {r['rmse_nf4']:>10.3e} {r['rmse_nf4_dq']:>10.3e} "
            f"{r['rmse_int4']:>10.3e} {r['int4_over_nf4']:>9.3f} {r['dq_over_nf4']:>8.4f}"
        )
    return errors


def show_merge() -> list[dict[str, float]]:
    merge = requantised_merge()
    print("\n3. merging a rank-8 update into the NF4 weight by re-quantising (1024 x 1024)")
    for r in merge:
        print(
            f"   ||dW||/||W|| = {r['update_rel_size']:<5}  relative error of the update after re-quantising: "
            f"{r['update_error_after_requant']:.2f}"
        )
    return merge


def show_memory(layers: int) -> dict:
    mem = memory(layers)
    print(f"\n4. memory: {mem['model']}")
    print(f"   {mem['parameters']:,} parameters, {mem['quantised_linear_parameters']:,} in quantised linears")
    print(f"   float32 {mem['float32_mib']:8.1f} MiB")
    print(f"   bfloat16 {mem['bfloat16_mib']:7.1f} MiB")
    for label, name in (("nf4", "NF4"), ("nf4_dq", "NF4+DQ")):
        print(
            f"   {name:<8} {mem[f'{label}_mib']:8.1f} MiB  (incl. {mem[f'{label}_lora_mib']:.1f} MiB rank-8 LoRA; "
            f"linear weights at {mem[f'{label}_linear_weight_bits']:.3f} bits; "
            f"quantised in {mem[f'{label}_seconds']:.1f} s)"
        )
    return mem


def show_fine_tune() -> dict:
    ft = fine_tune()
    print(
        f"\n5. fine-tune, tiny transformer, {ft['steps']} steps of 64 (loss, accuracy on the 1024 examples)"
    )
    for label in ("qlora", "lora"):
        print(
            f"   {label:<6} loss {ft[f'{label}_loss_before']:.3f} -> {ft[f'{label}_loss_after']:.3f}, "
            f"accuracy {ft[f'{label}_acc_before']:.2f} -> {ft[f'{label}_acc_after']:.2f}"
        )
    return ft


def show_timing() -> list[dict]:
    timing = forward_timing()
    print("\n6. forward time / nn.Linear (median of 25, interleaved, float32, rank 8)")
    for r in timing:
        print(
            f"   {r['tokens']:>4} x {r['d']}: LoRALinear {r['lora_over_linear']:.2f}, NF4Linear "
            f"{r['nf4_linear_over_linear']:.2f}, QLoRALinear {r['qlora_over_linear']:.2f}"
        )
    return timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--layers", type=int, default=20, help="encoder layers of the Geneformer-geometry model"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU ({platform.machine()})")
    report = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "bits_per_parameter": show_bits(),
        "reconstruction_rmse": show_errors(),
        "requantised_merge": show_merge(),
        "memory": show_memory(args.layers),
        "fine_tune": show_fine_tune(),
        "forward_time_ratios": show_timing(),
    }
    total = time.perf_counter() - t_start
    print(f"\ntotal {total:.0f} s")

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report["total_seconds"] = total
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
