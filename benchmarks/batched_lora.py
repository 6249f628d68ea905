"""Batched multi-adapter LoRA on a BERT encoder of Geneformer geometry, against the base model
and against Hugging Face PEFT's mixed-batch ``adapter_names=`` forward.

The encoder is ``transformers.BertModel`` built from the published gf-20L-95M-i4096 config
(hidden 896, 14 heads, intermediate 1792, vocabulary 20,275; ``--layers`` of its 20 layers,
random weights). Rank-8 LoRA sits on query, key, value, attention output, intermediate and
output of every layer. Every variant's outputs are checked against the others before any
timing. Times are medians over ``--repeats`` rounds in which the variants run interleaved;
only ratios measured in the same run are reported. Usage::

    python -m pip install -c constraints.txt -e ".[bench]"
    python benchmarks/batched_lora.py [--layers 2] [--repeats 15] [--threads 2] [--quick]
                                      [--device cpu|cuda] [--plot benchmarks/results/batched_lora_cpu.png]

Targets (from the issue): 64 x 1 tokens with 64 distinct adapters: batched/base <= 1.30 and
PEFT/batched >= 3; 32 x 128 tokens with 32 adapters: batched/base <= 1.10 and PEFT/batched >= 1.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from peft_zoo import (
    AdapterBank,
    EmbeddingCache,
    batched_lora_layers,
    find_targets,
    inject_batched_lora,
    inject_lora,
    use_adapters,
)
from peft_zoo.cost import GENEFORMER_GF_20L_95M_I4096

VOCAB = GENEFORMER_GF_20L_95M_I4096.vocab_size
TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
RANK = 8
SLOTS = 64
REGIMES = {"short": (64, 1), "long": (32, 128)}  # name -> (batch, tokens)
DISTINCT = (1, 4, 8, 32, 64)
STRATEGY_SWEEP = ("bmm", "bag")
# The short regime is cheap (one token per sample) and, with forwards of ~15 ms, the noisiest:
# its medians take this many times more rounds.
SHORT_REPEATS = 5


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved_medians(
    fns: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, float]:
    """Median ms of each function, timed round-robin so drift hits every variant alike."""
    for fn in fns.values():  # warm-up
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def build(layers: int, device: torch.device):
    from transformers import BertModel

    torch.manual_seed(0)
    config = GENEFORMER_GF_20L_95M_I4096.hf_config()  # the published config, with fewer layers
    config.num_hidden_layers = layers
    base = BertModel(config, add_pooling_layer=False).eval().to(device)
    names = find_targets(base, TARGETS)
    batched = copy.deepcopy(base)
    inject_batched_lora(batched, names, SLOTS, RANK)
    with torch.no_grad():
        for layer in batched_lora_layers(batched).values():
            layer.lora_B.normal_(0.0, 0.02)  # trained-looking adapters: B != 0
    return base, batched, names


def build_peft(base, batched, names: list[str], adapters: int):
    """A PEFT model holding the first ``adapters`` slots as adapters "a0", "a1", ..."""
    from peft import LoraConfig, get_peft_model

    model = copy.deepcopy(base)
    config = LoraConfig(r=RANK, lora_alpha=RANK, target_modules=names, lora_dropout=0.0)
    peft_model = get_peft_model(model, config, adapter_name="a0")
    for i in range(1, adapters):
        peft_model.add_adapter(f"a{i}", config)
    layers = batched_lora_layers(batched)
    with torch.no_grad():
        for name in names:
            module = peft_model.base_model.model.get_submodule(name)
            for i in range(adapters):
                module.lora_A[f"a{i}"].weight.copy_(layers[name].lora_A[i])
                module.lora_B[f"a{i}"].weight.copy_(layers[name].lora_B[i])
    return peft_model.eval()


def single_adapter_model(base, batched, names: list[str]):
    """peft_zoo's own single-adapter LoRALinear model holding slot 0 (unmerged)."""
    model = copy.deepcopy(base)
    inject_lora(model, names, RANK)
    layers = batched_lora_layers(batched)
    with torch.no_grad():
        for name in names:
            model.get_submodule(name).lora_A.copy_(layers[name].lora_A[0])
            model.get_submodule(name).lora_B.copy_(layers[name].lora_B[0])
    return model.eval()


def run_regime(regime, distinct, base, batched, peft_model, single, repeats, device, check=True):
    bsz, tokens = REGIMES[regime]
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(5, VOCAB, (bsz, tokens), generator=gen).to(device)
    order = torch.randperm(bsz, generator=gen)
    slots = (torch.arange(bsz) % distinct)[order]
    ids = slots.to(device)
    adapter_names = [f"a{int(s)}" for s in slots]
    layers = list(batched_lora_layers(batched).values())

    def run_batched(strategy: str):
        def fn():
            for layer in layers:
                layer.strategy = strategy
            with use_adapters(batched, ids):
                return batched(input_ids=x).last_hidden_state

        return fn

    fns: dict[str, Callable[[], object]] = {
        "base": lambda: base(input_ids=x).last_hidden_state,
        "batched": run_batched("auto"),
        **{f"batched[{s}]": run_batched(s) for s in STRATEGY_SWEEP},
        "peft_mixed": lambda: peft_model(input_ids=x, adapter_names=adapter_names).last_hidden_state,
    }
    if distinct == 1:
        fns["lora_linear_1"] = lambda: single(input_ids=x).last_hidden_state
    with torch.inference_mode():
        if check:  # every variant computes the same thing before anything is timed
            want = fns["peft_mixed"]()
            for name, fn in fns.items():
                if name not in ("base", "peft_mixed"):
                    err = (fn() - want).abs().max().item()
                    assert err < 1e-3, f"{regime}/{distinct}: {name} differs from PEFT by {err}"
        medians = interleaved_medians(fns, repeats, device)
    for layer in layers:
        layer.strategy = "auto"
    chosen = layers[0].resolve_strategy(tokens)
    return medians, chosen


def bench_cache(batched, repeats: int, device: torch.device) -> dict[str, float]:
    """Hit cost against the forward it saves: 32 x 128 tokens, 32 adapters, mean-pooled rows."""
    bank = AdapterBank(batched)
    for i in range(32):  # name the slots that already hold weights
        layers = batched_lora_layers(batched)
        state = {}
        for name, layer in layers.items():
            state[f"{name}.lora_A"] = layer.lora_A[i].detach().clone()
            state[f"{name}.lora_B"] = layer.lora_B[i].detach().clone()
        bank.load(f"t{i}", state)

    def forward(inputs):
        return batched(input_ids=inputs).last_hidden_state.mean(dim=1)  # (B, hidden)

    cache = EmbeddingCache.for_bank(bank, forward)
    bsz, tokens = REGIMES["long"]
    x = torch.randint(5, VOCAB, (bsz, tokens), generator=torch.Generator().manual_seed(2))
    x = x.to(device)
    names = [f"t{i}" for i in range(bsz)]

    def miss():
        cache.clear()
        return cache(x, names)

    def hit():
        return cache(x, names)

    with torch.inference_mode():
        first = miss()
        again = hit()
        assert torch.equal(first, again)
        medians = interleaved_medians({"miss": miss, "hit": hit}, repeats, device)
    stats = cache.stats
    return {
        "miss_ms": medians["miss"],
        "hit_ms": medians["hit"],
        "speedup": medians["miss"] / medians["hit"],
        "bytes_per_entry": stats.bytes_per_entry,
        "entries": stats.entries,
    }


def plot(results: dict, path: Path, device: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot; pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    for ax, (regime, rows) in zip(axes, results["regimes"].items(), strict=True):
        bsz, tokens = REGIMES[regime]
        xs = [r["distinct"] for r in rows]
        for key, label in (("batched", "peft_zoo batched"), ("peft_mixed", "PEFT mixed batch")):
            ax.plot(xs, [r["ms"][key] / r["ms"]["base"] for r in rows], marker="o", label=label)
        for s in STRATEGY_SWEEP:
            ax.plot(
                xs, [r["ms"][f"batched[{s}]"] / r["ms"]["base"] for r in rows], ls=":", label=f"strategy {s}"
            )
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_ylim(bottom=0.9)
        ax.set_xlabel("distinct adapters in the batch")
        ax.set_ylabel("time / base model without LoRA")
        ax.set_title(f"{bsz} x {tokens} tokens ({device})")
        ax.legend(fontsize=8)
    fig.suptitle(f"Rank-8 LoRA on 6 projections x {results['layers']} BERT layers (Geneformer geometry)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"plot saved to {path}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="distinct 1 and 64 only, 5 repeats (25 short)")
    parser.add_argument("--plot", type=Path, default=None, help="where to save the plot (PNG)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw medians here")
    return parser.parse_args(argv)


def check_no_host_sync(batched: torch.nn.Module, device: torch.device) -> None:
    """On a GPU, one batched forward under ``set_sync_debug_mode('error')``: it must never synchronise."""
    if device.type != "cuda":
        return
    torch.cuda.set_sync_debug_mode("error")  # the batched path must never synchronise
    with torch.inference_mode(), use_adapters(batched, torch.arange(64, device=device) % SLOTS):
        batched(input_ids=torch.ones(64, 1, dtype=torch.long, device=device))
    torch.cuda.set_sync_debug_mode("default")
    print("GPU path ran under torch.cuda.set_sync_debug_mode('error'): no host synchronisation")


def sweep(models: tuple, distinct_list: tuple[int, ...], repeats: int, device: torch.device) -> dict:
    """Every regime x number of distinct adapters: one table row each; ``regime -> rows``."""
    base, batched, peft_model, single = models
    print(
        f"{'regime':>12} {'adapters':>8} {'base ms':>8} {'batched/base':>12} {'PEFT/batched':>12} "
        f"{'auto=':>6} " + " ".join(f"{s + '/base':>9}" for s in STRATEGY_SWEEP)
    )
    regimes = {}
    for regime, (bsz, tokens) in REGIMES.items():
        rows = []
        for distinct in distinct_list:
            if distinct > bsz:
                print(f"{f'{bsz}x{tokens}':>12} {distinct:>8}   (needs a batch of at least {distinct})")
                continue
            rounds = repeats * (SHORT_REPEATS if regime == "short" else 1)
            ms, chosen = run_regime(regime, distinct, base, batched, peft_model, single, rounds, device)
            rows.append({"distinct": distinct, "ms": ms, "auto": chosen})
            print(
                f"{f'{bsz}x{tokens}':>12} {distinct:>8} {ms['base']:>8.2f} {ms['batched'] / ms['base']:>12.2f} "
                f"{ms['peft_mixed'] / ms['batched']:>12.2f} {chosen:>6} "
                + " ".join(f"{ms[f'batched[{s}]'] / ms['base']:>9.2f}" for s in STRATEGY_SWEEP),
                flush=True,
            )
        regimes[regime] = rows
    return regimes


def report_targets(regimes: dict) -> bool:
    """Print the single-adapter ratio and whether the issue's targets are met; True if all are."""
    print("\nsingle adapter, unmerged (peft_zoo LoRALinear) / base:")
    for regime, rows in regimes.items():
        one = next(r for r in rows if r["distinct"] == 1)
        print(f"  {regime:>6}: {one['ms']['lora_linear_1'] / one['ms']['base']:.2f}")
    print("\ntargets:")
    ok = True
    for regime, distinct, max_ratio, min_speedup in (("short", 64, 1.30, 3.0), ("long", 32, 1.10, 1.0)):
        row = next((r for r in regimes[regime] if r["distinct"] == distinct), None)
        if row is None:
            continue
        ratio = row["ms"]["batched"] / row["ms"]["base"]
        speedup = row["ms"]["peft_mixed"] / row["ms"]["batched"]
        good = ratio <= max_ratio and speedup >= min_speedup
        ok &= good
        bsz, tokens = REGIMES[regime]
        print(
            f"  {bsz}x{tokens}, {distinct} adapters: batched/base {ratio:.2f} (target <= {max_ratio}), "
            f"PEFT/batched {speedup:.2f} (target >= {min_speedup}) -> {'met' if good else 'MISSED'}"
        )
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    repeats = 5 if args.quick else args.repeats
    distinct_list = (1, 64) if args.quick else DISTINCT

    import peft
    import transformers

    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}; "
        f"{device}, {torch.get_num_threads()} threads, float32; BERT {args.layers} layers, hidden 896, "
        f"rank {RANK} on {len(TARGETS)} projections/layer, {SLOTS} slots; median of {repeats} "
        f"({repeats * SHORT_REPEATS} for the short regime)"
    )
    base, batched, names = build(args.layers, device)
    peft_model = build_peft(base, batched, names, SLOTS)
    single = single_adapter_model(base, batched, names)
    check_no_host_sync(batched, device)

    results: dict = {"layers": args.layers, "device": str(device)}
    results["regimes"] = sweep((base, batched, peft_model, single), distinct_list, repeats, device)
    ok = report_targets(results["regimes"])

    cache = bench_cache(batched, repeats, device)
    results["cache"] = cache
    print(
        f"\nembedding cache (32 x 128 tokens, 32 adapters, mean-pooled rows): miss {cache['miss_ms']:.2f} ms, "
        f"hit {cache['hit_ms']:.3f} ms -> a hit is {cache['speedup']:.0f}x faster (target >= 100x); "
        f"{cache['bytes_per_entry']:.0f} bytes per entry"
    )
    if args.plot:
        plot(results, args.plot, str(device))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
