"""Shared big matrices with per-layer LoRA: parameter counts, and a short training run.

1. Parameter counts of :class:`peft_zoo.models.BidirectionalTransformer` with and without
   sharing, with per-layer LoRA of a few ranks, for a few sizes (built on the meta device:
   nothing is allocated, every count is of an instantiated model).
2. Three variants trained from the same seed on masked-token recovery in periodic sequences
   (a random pattern of period 3 to 5 repeated, padded to a random length; 20% of the real
   tokens hidden): unshared full model, shared + per-layer LoRA, shared without LoRA.

Usage::

    python benchmarks/shared_weights.py [--steps 1000] [--threads 1] \\
        [--json benchmarks/results/shared_weights.json] [--md benchmarks/results/shared_weights.md]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from peft_zoo.models import BidirectionalTransformer, BidirectionalTransformerConfig
from peft_zoo.sharing import unique_parameter_count

SIZES = [(128, 4), (256, 6), (384, 6), (384, 12), (768, 12)]  # (n_embd, n_layer)
RANKS = (4, 8, 16)
VOCAB = 8192  # for the count table


def count(n_embd: int, n_layer: int, *, share: bool, rank: int = 0) -> tuple[int, int]:
    """``(whole model, blocks only)`` unique parameter counts; ``rank > 0`` adds LoRA to all four
    big matrices of every block."""
    config = BidirectionalTransformerConfig(
        vocab_size=VOCAB,
        n_embd=n_embd,
        n_head=n_embd // 64,
        n_layer=n_layer,
        share_main_matrices=share,
        use_lora_attn=rank > 0,
        use_lora_mlp=rank > 0,
        lora_rank=max(rank, 1),
    )
    with torch.device("meta"):
        model = BidirectionalTransformer(config)
    return unique_parameter_count(model), unique_parameter_count(model.blocks)


def count_table() -> list[dict]:
    rows = []
    for n_embd, n_layer in SIZES:
        full, full_blocks = count(n_embd, n_layer, share=False)
        shared, shared_blocks = count(n_embd, n_layer, share=True)
        row = {
            "n_embd": n_embd,
            "n_layer": n_layer,
            "unshared": full,
            "unshared_blocks": full_blocks,
            "shared": shared,
            "shared_blocks": shared_blocks,
        }
        for r in RANKS:
            total, blocks = count(n_embd, n_layer, share=True, rank=r)
            row[f"shared_lora{r}"] = total
            row[f"shared_lora{r}_blocks"] = blocks
            row[f"lora{r}_per_layer"] = (blocks - shared_blocks) // n_layer
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- the training task

PATTERN_VOCAB, T, MASK = 16, 24, 16  # content tokens 0..15, sequences of up to 24, mask id 16


def periodic_batch(g: torch.Generator, batch: int):
    """``(inputs, attention_mask, targets, hidden)``, each ``(batch, T)``. A row repeats a random
    pattern of period 3..5 for 16..24 tokens, then padding; 20% of its real tokens are replaced by
    the mask id. Recovering one needs the tokens a period away: context."""
    period = torch.randint(3, 6, (batch, 1), generator=g)
    pattern = torch.randint(0, PATTERN_VOCAB, (batch, 5), generator=g)
    pos = torch.arange(T)
    targets = torch.gather(pattern, 1, pos[None] % period)  # (B, T)
    keep = pos[None] < torch.randint(16, T + 1, (batch, 1), generator=g)  # (B, T) 1 = real token
    hidden = (torch.rand(batch, T, generator=g) < 0.2) & keep
    inputs = targets.masked_fill(hidden, MASK).masked_fill(~keep, 0)
    return inputs, keep.long(), targets, hidden


VARIANTS = {
    "unshared full": {},
    "shared + per-layer LoRA": {"share_main_matrices": True, "use_lora_attn": True, "use_lora_mlp": True},
    "shared, no LoRA": {"share_main_matrices": True},
}


def train(name: str, steps: int, *, n_embd: int, n_layer: int, rank: int, lr: float, seed: int) -> dict:
    torch.manual_seed(seed)
    config = BidirectionalTransformerConfig(
        vocab_size=PATTERN_VOCAB + 1,
        max_len=T,
        n_embd=n_embd,
        n_head=4,
        n_layer=n_layer,
        lora_rank=rank,
        lora_alpha=2.0 * rank,
        **VARIANTS[name],
    )
    model = BidirectionalTransformer(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    data = torch.Generator().manual_seed(1000 + seed)  # the same batches for every variant
    losses = []
    t0 = time.perf_counter()
    for _ in range(steps):
        inputs, mask, targets, hidden = periodic_batch(data, 32)
        loss = F.cross_entropy(model(inputs, mask)[hidden], targets[hidden])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - t0
    model.eval()
    inputs, mask, targets, hidden = periodic_batch(torch.Generator().manual_seed(99), 1024)  # held out
    with torch.no_grad():
        logits = model(inputs, mask)[hidden]
    tail = max(1, steps // 10)
    return {
        "variant": name,
        "params": unique_parameter_count(model),
        "first_loss": sum(losses[:tail]) / tail,
        "final_loss": sum(losses[-tail:]) / tail,
        "eval_loss": F.cross_entropy(logits, targets[hidden]).item(),
        "eval_accuracy": (logits.argmax(-1) == targets[hidden]).float().mean().item(),
        "seconds": seconds,
    }


def markdown(counts: list[dict], runs: list[dict], setup: dict) -> str:
    lines = [
        f"### Parameter counts (vocabulary {VOCAB:,}, tied head; blocks only in parentheses)",
        "",
        "| n_embd | n_layer | unshared | shared | shared + LoRA r=4 | r=8 | r=16 | LoRA r=8 per layer |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in counts:
        cells = [f"{r['unshared']:,} ({r['unshared_blocks']:,})", f"{r['shared']:,} ({r['shared_blocks']:,})"]
        cells += [f"{r[f'shared_lora{k}']:,} ({r[f'shared_lora{k}_blocks']:,})" for k in RANKS]
        lines.append(
            f"| {r['n_embd']} | {r['n_layer']} | " + " | ".join(cells) + f" | {r['lora8_per_layer']:,} |"
        )
    lines += [
        "",
        f"### Masked-token recovery ({setup['steps']} steps of 32 sequences, n_embd {setup['n_embd']}, "
        f"{setup['n_layer']} layers, LoRA rank {setup['rank']}, AdamW lr {setup['lr']:g}, seed {setup['seed']})",
        "",
        "| variant | parameters | loss, first 10% of steps | loss, last 10% | held-out loss | held-out accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['variant']} | {r['params']:,} | {r['first_loss']:.3f} | {r['final_loss']:.3f} | "
            f"{r['eval_loss']:.3f} | {r['eval_accuracy']:.3f} |"
        )
    lines.append(f"\nChance accuracy is 1/{PATTERN_VOCAB} = {1 / PATTERN_VOCAB:.3f}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--n-embd", type=int, default=64)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="tiny models: 1 thread is fastest")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--md", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    counts = count_table()
    setup = {k: getattr(args, k) for k in ("steps", "n_embd", "n_layer", "rank", "lr", "seed")}
    runs = []
    for name in VARIANTS:
        runs.append(train(name, args.steps, **{k: v for k, v in setup.items() if k != "steps"}))
        print(f"trained {name!r} in {runs[-1]['seconds']:.1f} s", flush=True)
    text = markdown(counts, runs, setup)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"setup": setup, "torch": torch.__version__, "counts": counts, "training": runs}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
