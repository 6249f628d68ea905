"""``peft-zoo tour``: LoRA end to end on a small transformer, in well under a minute on a CPU.

Build a model, inject LoRA, count what trains, fine-tune a few steps with a progress bar,
merge the adapter and check that the merged model computes the same function, then save
the adapter and compare its size with the full model's.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..core.base import merge_adapters, unmerge_adapters
from ..injection.inject import inject_lora_recursive
from ..injection.surgery import (
    count_parameters,
    mark_only_adapters_trainable,
    print_trainable_parameters,
)
from ..interop.checkpoint import load_adapter, save_adapter
from ..models import TinyTransformer, TinyTransformerConfig


@dataclass
class TourResult:
    loss_start: float  # mean loss over the first 10 steps
    loss_end: float  # mean loss over the last 10 steps
    accuracy_before: float  # held-out accuracy of the base model
    accuracy_after: float  # held-out accuracy after LoRA fine-tuning
    merge_max_abs_diff: float  # max |merged - unmerged| on held-out logits
    reload_max_abs_diff: float  # max |reloaded - trained| on held-out logits
    trainable: int  # trainable parameters
    total: int  # all parameters
    adapter_bytes: int  # size of the saved adapter file
    seconds: float  # wall time of the whole tour


def make_task(
    n: int, cfg: TinyTransformerConfig, seq_len: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic sequence classification: label 1 when low ids (< vocab/2) outnumber high ids.

    Returns ``ids (n, seq_len)`` int64 and ``labels (n,)`` int64.
    """
    ids = torch.randint(0, cfg.vocab_size, (n, seq_len), generator=generator)
    labels = ((ids < cfg.vocab_size // 2).sum(dim=1) * 2 > seq_len).long()
    return ids, labels


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, flush=True)  # flush: the progress bar writes to stderr


TOUR_CONFIG = TinyTransformerConfig(vocab_size=32, max_len=17, d_model=128, n_heads=4, d_ff=512, n_layers=4)
TOUR_RANK, TOUR_ALPHA = 4, 8


@dataclass
class TourData:
    """The synthetic task: 2,048 training and 512 held-out sequences."""

    train_x: torch.Tensor  # (2048, seq_len) int64
    train_y: torch.Tensor  # (2048,) int64
    test_x: torch.Tensor  # (512, seq_len) int64
    test_y: torch.Tensor  # (512,) int64


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Held-out accuracy of ``model`` (switched to eval mode) on ``(x, y)``."""
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(-1) == y).float().mean().item()


def inject_stage(model: nn.Module, quiet: bool) -> tuple[nn.Module, list[nn.Parameter], int, int]:
    """2. LoRA on every Linear (attention q/k/v/o, feed-forward, head); everything else frozen.
    Returns ``(model, lora_params, trainable, total)``."""
    model, lora_params = inject_lora_recursive(model, rank=TOUR_RANK, alpha=TOUR_ALPHA)
    mark_only_adapters_trainable(model)
    _say(
        f"2. Injected LoRA (rank {TOUR_RANK}, alpha {TOUR_ALPHA}) into {len(lora_params) // 2} Linear layers:",
        quiet,
    )
    trainable, total = print_trainable_parameters(model) if not quiet else count_parameters(model)
    return model, lora_params, trainable, total


def fine_tune_stage(
    model: nn.Module,
    params: list[nn.Parameter],
    data: TourData,
    steps: int,
    gen: torch.Generator,
    show_bar: bool,
) -> tuple[float, float]:
    """3. Fine-tune only ``params`` for ``steps`` batches of 64 with a progress bar; return the
    mean loss over the first and over the last 10 steps."""
    opt = torch.optim.AdamW(params, lr=3e-3)
    losses: list[float] = []
    model.train()
    bar = tqdm(range(steps), desc="3. Fine-tuning LoRA", disable=not show_bar, leave=True)
    for step in bar:
        idx = torch.randint(0, data.train_x.shape[0], (64,), generator=gen)
        loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    k = min(10, len(losses))
    return sum(losses[:k]) / k, sum(losses[-k:]) / k


def merge_stage(model: nn.Module, test_x: torch.Tensor, quiet: bool) -> tuple[torch.Tensor, float]:
    """4. Merge: W <- W + scale * B A in every layer; same function, one GEMM per layer. Returns
    the unmerged held-out logits and max |merged - unmerged|; the model is unmerged again."""
    with torch.no_grad():
        unmerged = model(test_x)
        n_merged = merge_adapters(model)
        merged = model(test_x)
        merge_diff = (merged - unmerged).abs().max().item()
        unmerge_adapters(model)
    _say(
        f"4. Merged {n_merged} layers: max |merged - unmerged| = {merge_diff:.2e} (float32 round-off)", quiet
    )
    return unmerged, merge_diff


def save_reload_stage(
    model: nn.Module,
    cfg: TinyTransformerConfig,
    seed: int,
    test_x: torch.Tensor,
    expected: torch.Tensor,
    quiet: bool,
) -> tuple[int, float]:
    """5. Save only the adapter, reload it into a fresh copy of the base, compare its held-out
    logits with ``expected``. Returns ``(adapter file bytes, max |diff|)``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = save_adapter(model, Path(tmp) / "tour_adapter")
        adapter_bytes = path.stat().st_size
        torch.manual_seed(seed)
        fresh: nn.Module = TinyTransformer(cfg)  # same seed -> same base weights
        fresh, _ = inject_lora_recursive(fresh, rank=TOUR_RANK, alpha=TOUR_ALPHA)
        load_adapter(fresh, path.parent)
        fresh.eval()
        with torch.no_grad():
            reload_diff = (fresh(test_x) - expected).abs().max().item()
    full_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    _say(
        f"5. Saved adapter: {adapter_bytes / 1024:.1f} KiB vs {full_bytes / 1024:.1f} KiB for the whole "
        f"model; reloaded into a fresh base: max |diff| = {reload_diff:.1e}",
        quiet,
    )
    return adapter_bytes, reload_diff


def run_tour(
    steps: int = 150,
    seed: int = 0,
    *,
    config: TinyTransformerConfig = TOUR_CONFIG,
    quiet: bool = False,
    progress: bool = True,
) -> TourResult:
    """Run the tour on a ``config``-shaped model and return its measured figures."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train_x, train_y = make_task(2048, config, config.max_len, gen)
    test_x, test_y = make_task(512, config, config.max_len, gen)
    data = TourData(train_x, train_y, test_x, test_y)

    model: nn.Module = TinyTransformer(config)
    _say(f"1. Base model: TinyTransformer({config})", quiet)
    acc_before = accuracy(model, test_x, test_y)
    model, lora_params, trainable, total = inject_stage(model, quiet)
    loss_start, loss_end = fine_tune_stage(model, lora_params, data, steps, gen, not quiet and progress)
    acc_after = accuracy(model, test_x, test_y)
    _say(
        f"   loss {loss_start:.3f} -> {loss_end:.3f}; held-out accuracy {acc_before:.1%} -> {acc_after:.1%}",
        quiet,
    )
    unmerged, merge_diff = merge_stage(model, test_x, quiet)
    adapter_bytes, reload_diff = save_reload_stage(model, config, seed, test_x, unmerged, quiet)
    seconds = time.perf_counter() - t0
    _say(f"Done in {seconds:.1f} s. Next: read README.md for each building block.", quiet)
    return TourResult(
        loss_start,
        loss_end,
        acc_before,
        acc_after,
        merge_diff,
        reload_diff,
        trainable,
        total,
        adapter_bytes,
        seconds,
    )
