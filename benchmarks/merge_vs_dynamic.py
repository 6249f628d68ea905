"""Merge vs dynamic LoRA serving: the analytic cost model of :mod:`peft_zoo.cost.flops`,
with a CPU timing check that its direction holds.

Analytic part (no model is built): for both Geneformer geometries, GPT-2 small and LLaMA-7B
at ranks 8 / 16 / 64 with typical targets (``peft_zoo.cost.SERVING_TARGETS``), the FLOPs
overhead of dynamic serving over merged per token, and the total cost against the number
of tokens served per adapter switch (a switch = unmerge the old adapter + merge the new
one), with the break-even point where merging pays off.

Measured part (``--repeats 0`` skips it): a ``BertModel`` of the published gf-20L-95M-i4096
geometry with ``--layers`` layers and LoRA on every linear of its layers; median forward
time with the adapters unmerged against merged (interleaved rounds), and the median time of
a merge + unmerge. Only ratios from the same run are reported. Usage::

    python -m pip install -c constraints.txt -e ".[bench]"
    python benchmarks/merge_vs_dynamic.py [--repeats 7] [--layers 2] [--threads 2]
        [--out benchmarks/results/merge_vs_dynamic]      # writes .md, .json and .png
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from peft_zoo import merge_adapters, unmerge_adapters
from peft_zoo.cost import (
    GENEFORMER_GF_20L_95M_I4096,
    GENEFORMER_GF_20L_95M_I4096_AS_QUOTED,
    GPT2_SMALL,
    LLAMA_7B,
    SERVING_TARGETS,
    count_instantiated,
    serving_flops,
    serving_rows,
    serving_table,
)

GEOMETRIES = (GENEFORMER_GF_20L_95M_I4096, GENEFORMER_GF_20L_95M_I4096_AS_QUOTED, GPT2_SMALL, LLAMA_7B)
RANKS = (8, 16, 64)
CURVE_RANKS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PLOT_RANK = 16  # the rank of the tokens-per-switch panel
TIMED_RANKS = (8, 16, 64)
BATCH, SEQ = 4, 128  # timed input: 512 tokens


# ----------------------------------------------------------------------------- analytic


def analytic() -> dict:
    """Rows of the table, overhead-vs-rank curves and cost-vs-tokens curves, all analytic."""
    rows = serving_rows(GEOMETRIES, RANKS)
    out: dict = {"table": serving_table(rows), "rows": [], "overhead_vs_rank": {}, "cost_vs_tokens": {}}
    for row in rows:
        out["rows"].append(
            {
                "model": row.model,
                "targets": list(row.targets),
                "rank": row.rank,
                "lora_params": row.trainable,
                "adapter_bytes_bf16": row.adapter_bytes_bf16,
                "merged_flops_per_token": row.linears.merged_per_token,
                "dynamic_extra_flops_per_token": row.linears.dynamic_extra,
                "overhead_linears": row.linears.overhead,
                "overhead_with_attention_and_head": row.full.overhead,
                "seq_len": row.seq_len,
                "merge_unmerge_flops": row.linears.switch_flops(),
                "break_even_tokens": row.break_even,
                "break_even_tokens_merge_only": row.linears.break_even_tokens(unmerge=False),
            }
        )
    for g in GEOMETRIES:
        targets = SERVING_TARGETS[g.name]
        out["overhead_vs_rank"][g.name] = {
            "ranks": list(CURVE_RANKS),
            "linears": [serving_flops(g, targets, r, head=False).overhead for r in CURVE_RANKS],
            "with_attention_and_head": [
                serving_flops(g, targets, r, seq_len=g.max_position_embeddings).overhead for r in CURVE_RANKS
            ],
        }
        f = serving_flops(g, targets, PLOT_RANK, head=False)
        tokens = [round(10 ** (k / 8)) for k in range(0, 8 * 6 + 1)]  # 1 .. 1e6
        out["cost_vs_tokens"][g.name] = {
            "rank": PLOT_RANK,
            "tokens": tokens,
            # FLOPs above the base model's N * merged_per_token, in % of it, for each strategy
            "merge_excess_percent": [100 * f.switch_flops() / (n * f.merged_per_token) for n in tokens],
            "dynamic_excess_percent": 100 * f.dynamic_extra / f.merged_per_token,
            "break_even_tokens": f.break_even_tokens(),
        }
    return out


# ----------------------------------------------------------------------------- measured


def interleaved_medians(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function, timed round-robin so drift hits every variant alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def measured(layers: int, repeats: int) -> list[dict]:
    """CPU: unmerged vs merged forward time and the merge + unmerge time, per rank."""
    from transformers import BertModel

    g = GENEFORMER_GF_20L_95M_I4096
    targets = SERVING_TARGETS[g.name]
    results = []
    for rank in TIMED_RANKS:
        torch.manual_seed(0)
        config = g.hf_config()
        config.num_hidden_layers = layers
        model = BertModel(config, add_pooling_layer=False).eval()
        count_instantiated(model, list(targets), rank, backend="peft_zoo")
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)  # a trained-looking adapter
        ids = torch.randint(0, g.vocab_size, (BATCH, SEQ))
        merged = copy.deepcopy(model)  # the same adapter, folded in: timed side by side
        merge_adapters(merged)

        def switch(model=model) -> None:
            merge_adapters(model)
            unmerge_adapters(model)

        with torch.inference_mode():
            dynamic_out = model(input_ids=ids).last_hidden_state
            torch.testing.assert_close(
                merged(input_ids=ids).last_hidden_state, dynamic_out, rtol=1e-4, atol=1e-4
            )
            t = interleaved_medians(
                {
                    "dynamic": lambda m=model, i=ids: m(input_ids=i),
                    "merged": lambda m=merged, i=ids: m(input_ids=i),
                },
                repeats,
            )
            t_switch = interleaved_medians({"switch": switch}, repeats)["switch"]
        # the analytic twin: these layers only, the encoder's attention at SEQ, no head
        small = dataclasses.replace(g, num_layers=layers, name=f"{g.name}, {layers} layers")
        f = serving_flops(small, targets, rank, seq_len=SEQ, head=False)
        extra_per_token = (t["dynamic"] - t["merged"]) / (BATCH * SEQ)
        results.append(
            {
                "rank": rank,
                "tokens": BATCH * SEQ,
                "dynamic_over_merged_time": t["dynamic"] / t["merged"],
                "dynamic_over_merged_flops": f.overhead,
                "switch_over_merged_forward_time": t_switch / t["merged"],
                "break_even_tokens_time": t_switch / extra_per_token if extra_per_token > 0 else None,
                "break_even_tokens_flops": f.break_even_tokens(),
            }
        )
    return results


def timing_table(rows: list[dict], layers: int) -> str:
    lines = [
        f"Measured, CPU: `BertModel`, gf-20L-95M-i4096 geometry, {layers} layers, {BATCH} x {SEQ} tokens, "
        "LoRA on every linear of the layers.",
        "",
        "| r | dynamic / merged, time | dynamic / merged, FLOPs | merge + unmerge / merged forward, time "
        "| break-even tokens, time | break-even tokens, FLOPs |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        be = "n/a" if r["break_even_tokens_time"] is None else f"{r['break_even_tokens_time']:,.0f}"
        lines.append(
            f"| {r['rank']} | {r['dynamic_over_merged_time']:.3f} | {r['dynamic_over_merged_flops']:.3f} "
            f"| {r['switch_over_merged_forward_time']:.3f} | {be} | {r['break_even_tokens_flops']:,.0f} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plot


def plot(results: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot; pip install matplotlib)")
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = dict(zip([g.name for g in GEOMETRIES], ["C0", "C1", "C2", "C3"], strict=True))
    for name, curve in results["overhead_vs_rank"].items():
        left.plot(
            curve["ranks"], [100 * (x - 1) for x in curve["linears"]], "o-", color=colors[name], label=name
        )
        left.plot(
            curve["ranks"],
            [100 * (x - 1) for x in curve["with_attention_and_head"]],
            "--",
            color=colors[name],
        )
    left.set(
        xscale="log", yscale="log", xlabel="LoRA rank r", ylabel="dynamic FLOPs over merged, per token (%)"
    )
    left.set_title(
        "Per-token overhead (solid: linears; dashed: + attention at max length + head)", fontsize=9
    )
    left.legend(fontsize=8)
    for k, (name, curve) in enumerate(results["cost_vs_tokens"].items()):
        right.plot(curve["tokens"], curve["merge_excess_percent"], color=colors[name], label=name)
        right.axhline(curve["dynamic_excess_percent"], color=colors[name], ls="--", lw=1)
        n = curve["break_even_tokens"]
        right.plot([n], [curve["dynamic_excess_percent"]], "o", color=colors[name])
        right.annotate(
            f"{n:,.0f}", (n, curve["dynamic_excess_percent"]), textcoords="offset points",
            xytext=(6, 6 - 12 * (k % 2)), fontsize=7, color=colors[name],
        )  # fmt: skip
    right.set(
        xscale="log",
        yscale="log",
        xlabel="tokens served per adapter switch",
        ylabel="FLOPs above the base model (%)",
    )
    right.set_title(
        f"r = {PLOT_RANK}: merge + unmerge per switch (solid) vs dynamic (dashed); dots: break-even",
        fontsize=9,
    )
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timing rounds; 0 skips the measured part")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write OUT.md, OUT.json and OUT.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    results = analytic()
    markdown = results["table"]
    if args.repeats > 0:
        results["measured"] = measured(args.layers, args.repeats)
        markdown += "\n\n" + timing_table(results["measured"], args.layers)
    results["environment"] = {"torch": torch.__version__, "threads": args.threads, "layers": args.layers}
    print(markdown)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(markdown + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
        plot(results, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
