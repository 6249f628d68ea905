"""peft_zoo.cost serving costs: analytic FLOPs and memory agree with what torch measures.

- FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` counts matmul-like ops (``2 m n k``)
  on small transformers models with LoRA injected, for both strategies: a dynamic forward,
  the one-time merge, and the merged forward. Attention is built ``"eager"``: on CPU,
  ``scaled_dot_product_attention`` runs a fused kernel FlopCounterMode has no formula for,
  so the "sdpa" models report no attention FLOPs at all.
- Tensor parallelism: the shards of a column- and a row-parallel LoRA layer recombine into
  the full layer, and each shard's measured FLOPs equal the per-device numbers.
- Memory: adapter bytes and the training-memory breakdown equal the bytes of an
  instantiated model's parameters, its gradients and a real ``torch.optim.AdamW`` state.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from peft_zoo.core.base import merge_adapters
from peft_zoo.cost import (
    GENEFORMER_GF_20L_95M_I4096,
    GENEFORMER_GF_20L_95M_I4096_AS_QUOTED,
    GPT2_SMALL,
    LLAMA_7B,
    ModelGeometry,
    adapter_bytes,
    break_even_tokens,
    build_model,
    count_instantiated,
    dynamic_overhead,
    full_parameters,
    lora_trainable_parameters,
    parallel_style,
    serving_flops,
    serving_rows,
    serving_table,
    training_memory,
)
from peft_zoo.injection.surgery import adapter_named_parameters

QKVO_7B = ["q_proj", "k_proj", "v_proj", "o_proj"]
TARGET_NAMES = {
    "bert": ["query", "key", "value", "dense", "output.dense", "intermediate.dense", "decoder"],
    "gpt2": ["c_attn", "c_proj", "attn.c_proj", "mlp.c_fc", "lm_head"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"],
}


def _transformers():
    return pytest.importorskip("transformers")


def measured_flops(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


# ----------------------------------------------------------------------------- analytic values


# Imported first, one after the other, each in a fresh copy of the package: every name that
# peft_zoo.cost exports is the very object its module defines (no lazy re-export, no cycle).
IMPORT_ORDER_CHECK = """
import importlib, sys
for first in sys.argv[1:]:
    for name in [m for m in sys.modules if m == "peft_zoo" or m.startswith("peft_zoo.")]:
        del sys.modules[name]
    importlib.import_module(first)
    import peft_zoo.cost as cost
    from peft_zoo.cost import counts, flops, geometry, memory, tables, zoo_counts, zoo_tables
    assert not hasattr(cost, "__getattr__"), "peft_zoo.cost re-exports lazily"
    assert cost.serving_flops is flops.serving_flops
    assert cost.training_memory is memory.training_memory
    assert cost.LLAMA_7B is geometry.LLAMA_7B and cost.serving_table is tables.serving_table
    homes = (geometry, counts, memory, flops, tables, zoo_counts, zoo_tables)
    for n in cost.__all__:
        assert any(n in m.__all__ and getattr(m, n) is getattr(cost, n) for m in homes), n
"""


def test_cost_is_one_package_importable_in_any_order():
    root = Path(__file__).resolve().parents[1]
    modules = sorted(p.stem for p in (root / "peft_zoo" / "cost").glob("*.py") if p.stem != "__init__")
    assert {"counts", "flops", "geometry", "memory", "tables"} <= set(modules)
    order = [f"peft_zoo.cost.{m}" for m in modules]
    argv = ["peft_zoo.cost", *order, *reversed(order)]
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_ORDER_CHECK, *argv],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_one_module_by_hand():
    # GPT-2 small, LoRA on c_attn (768 -> 2304) at r = 8, no attention, no head.
    f = serving_flops(GPT2_SMALL, ["c_attn"], 8, head=False)
    layer = 2 * 768 * 2304 + 2 * 768 * 768 + 2 * 768 * 3072 + 2 * 3072 * 768
    assert f.layers_gemm == 12 * layer and f.head_gemm == f.attention_gemm == 0
    assert (f.lora_a_gemm, f.lora_b_gemm) == (12 * 2 * 768 * 8, 12 * 2 * 8 * 2304)
    assert f.lora_elementwise == 12 * 2 * 2304  # scale and add on every output
    assert f.merge_gemm == 12 * 2 * 2304 * 8 * 768
    assert f.merge_elementwise == 12 * 2 * 2304 * 768
    assert f.dynamic_per_token == f.merged_per_token + f.dynamic_extra
    assert f.overhead == pytest.approx(1 + (12 * 2 * (768 * 8 + 8 * 2304 + 2304)) / (12 * layer))


def test_attention_and_head_terms():
    g = LLAMA_7B
    base = serving_flops(g, QKVO_7B, 16, head=False)
    full = serving_flops(g, QKVO_7B, 16, seq_len=2048)
    assert full.attention_gemm == 32 * 4 * 2048 * 4096  # q K^T and P V, every layer
    assert full.head_gemm == 2 * 4096 * 32000  # lm_head
    assert full.layers_gemm == base.layers_gemm
    assert full.dynamic_extra == base.dynamic_extra  # neither term depends on the adapter
    assert full.overhead < base.overhead
    # BERT's head has two linears: the MLM transform and the decoder.
    bert = serving_flops(GENEFORMER_GF_20L_95M_I4096, ["query"], 8)
    assert bert.head_gemm == 2 * 896 * 896 + 2 * 896 * 20275


def test_break_even_llama_7b_matches_the_formula():
    # q, k, v, o are all 4096 x 4096 in LLaMA-7B: per module M = 2 * out * r * in + 2 * out * in
    # (merge) and d = 2 * in * r + 2 * r * out + 2 * out (dynamic, per token).
    r, h = 16, 4096
    merge = 2 * h * r * h + 2 * h * h
    extra = 2 * h * r + 2 * r * h + 2 * h
    assert break_even_tokens(LLAMA_7B, QKVO_7B, r, unmerge=False) == pytest.approx(merge / extra)
    assert break_even_tokens(LLAMA_7B, QKVO_7B, r) == pytest.approx(2 * merge / extra)
    assert 4000 < break_even_tokens(LLAMA_7B, QKVO_7B, r) < 4300  # ~ h (r + 1) / (2r + 1) * 2
    f = serving_flops(LLAMA_7B, QKVO_7B, r, seq_len=512)
    n = f.break_even_tokens()
    # at N* both strategies cost the same; beyond it merging wins, before it dynamic does
    assert f.total_flops(math.ceil(n), "merge") <= f.total_flops(math.ceil(n), "dynamic")
    assert f.total_flops(math.floor(n), "merge") > f.total_flops(math.floor(n), "dynamic")
    assert f.total_flops(0, "merge") == f.switch_flops() == 2 * (f.merge_gemm + f.merge_elementwise)
    # the study notes' rank-16 setup: 0.27% more FLOPs per token over the linears
    assert dynamic_overhead(LLAMA_7B, QKVO_7B, r, head=False) == pytest.approx(1 + 32 * 4 * extra / (
        32 * (4 * 2 * h * h + 3 * 2 * h * 11008)))  # fmt: skip


def test_overhead_grows_with_rank_break_even_barely_moves():
    for g, targets in [(GPT2_SMALL, ["c_attn"]), (GENEFORMER_GF_20L_95M_I4096_AS_QUOTED, ["query", "value"])]:
        overheads = [dynamic_overhead(g, targets, r) for r in (1, 4, 16, 64)]
        assert overheads == sorted(overheads) and overheads[0] > 1
        evens = [break_even_tokens(g, targets, r) for r in (1, 4, 16, 64)]
        assert max(evens) / min(evens) < 1.5  # M and d both grow ~linearly in r


def test_rank_pattern_and_layers_reach_the_flops():
    g = GPT2_SMALL
    one = serving_flops(g, ["c_attn"], 8, layers=[3], head=False)
    assert one.lora_a_gemm == 2 * 768 * 8
    mixed = serving_flops(g, ["c_attn"], 8, rank_pattern={0: 32}, head=False)
    assert mixed.lora_a_gemm == 2 * 768 * (11 * 8 + 32)
    assert [m.rank for m in mixed.modules if m.rank] == [32] + [8] * 11


def test_serving_table():
    rows = serving_rows()
    lines = serving_table(rows).splitlines()
    assert len(lines) == 2 + len(rows) == 2 + 4 * 3
    assert lines[0].startswith("| model | targets | r |")
    for row in rows:
        assert row.trainable == lora_trainable_parameters(
            {g.name: g for g in (GPT2_SMALL, LLAMA_7B, GENEFORMER_GF_20L_95M_I4096,
                                 GENEFORMER_GF_20L_95M_I4096_AS_QUOTED)}[row.model], row.targets, row.rank)  # fmt: skip
        assert row.full.seq_len is not None and row.full.overhead < row.linears.overhead
        assert f"| {row.rank} | {row.trainable:,d} |" in serving_table([row])


# ----------------------------------------------------------------------------- FlopCounterMode


@st.composite
def flop_setups(draw: st.DrawFn) -> dict:
    family = draw(st.sampled_from(["bert", "gpt2", "llama"]))
    heads = draw(st.integers(1, 3))
    head_dim = draw(st.sampled_from([2, 4, 8]))
    llama = family == "llama"
    g = ModelGeometry(
        name=f"random {family}",
        family=family,
        hidden_size=heads * head_dim,
        num_layers=draw(st.integers(1, 2)),
        num_heads=heads,
        intermediate_size=draw(st.integers(1, 24)),
        vocab_size=draw(st.integers(4, 40)),
        num_kv_heads=draw(st.sampled_from([d for d in range(1, heads + 1) if heads % d == 0]))
        if llama
        else None,
        head_dim=draw(st.none() | st.sampled_from([2, 4, 6])) if llama else None,
        max_position_embeddings=16,
    )
    names = TARGET_NAMES[family]
    targets = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True))
    pattern = draw(st.none() | st.dictionaries(st.sampled_from(names) | st.integers(0, g.num_layers - 1),
                                               st.integers(1, 5), max_size=2))  # fmt: skip
    return {"geometry": g, "targets": targets, "rank": draw(st.integers(1, 5)), "rank_pattern": pattern,
            "batch": draw(st.integers(1, 2)), "seq_len": draw(st.integers(1, 8))}  # fmt: skip


@settings(deadline=None, max_examples=20)
@given(setup=flop_setups())
def test_analytic_flops_equal_flop_counter(setup):
    _transformers()
    g, targets, rank = setup["geometry"], setup["targets"], setup["rank"]
    batch, seq = setup["batch"], setup["seq_len"]
    tokens = batch * seq
    analytic = serving_flops(g, targets, rank, rank_pattern=setup["rank_pattern"], seq_len=seq)
    torch.manual_seed(0)
    model = build_model(g, attn_implementation="eager").eval()
    ids = torch.randint(0, g.vocab_size, (batch, seq))
    base = measured_flops(lambda: model(input_ids=ids))
    assert base == tokens * analytic.merged_per_token, setup

    # dynamic: LoRA injected, unmerged; FlopCounterMode sees the GEMMs, not the scale and add
    count_instantiated(model, targets, rank, rank_pattern=setup["rank_pattern"], backend="peft_zoo")
    dynamic = measured_flops(lambda: model(input_ids=ids))
    assert dynamic == tokens * analytic.dynamic_gemm_per_token, setup
    assert dynamic - base == tokens * (analytic.lora_a_gemm + analytic.lora_b_gemm)

    # merge: the one-time B @ A per adapted module, then exactly the base cost per token
    assert measured_flops(lambda: merge_adapters(model)) == analytic.merge_gemm, setup
    assert measured_flops(lambda: model(input_ids=ids)) == base


def test_sdpa_on_cpu_reports_no_attention_flops():
    # Why the test above builds eager attention: the fused CPU kernel has no flop formula.
    _transformers()
    g = ModelGeometry("tiny", "bert", 16, 2, 2, 24, 30, max_position_embeddings=16)
    ids = torch.randint(0, 30, (2, 8))
    flops = {}
    for impl in ("eager", "sdpa"):
        model = build_model(g, attn_implementation=impl).eval()
        flops[impl] = measured_flops(lambda model=model: model(input_ids=ids))
    analytic = serving_flops(g, ["query"], 1, seq_len=8)
    assert flops["eager"] == 16 * analytic.merged_per_token
    assert flops["sdpa"] == flops["eager"] - 16 * analytic.attention_gemm  # torch 2.13, CPU


# ----------------------------------------------------------------------------- tensor parallelism


@settings(deadline=None, max_examples=20)
@given(
    tp=st.sampled_from([1, 2, 4]),
    per_device_heads=st.integers(1, 2),
    ffn_per_device=st.integers(1, 6),
    rank=st.integers(1, 6),
    tokens=st.integers(1, 5),
)
def test_tp_shards_recombine_and_cost_the_per_device_flops(
    tp, per_device_heads, ffn_per_device, rank, tokens
):
    heads = tp * per_device_heads
    g = ModelGeometry("tp", "llama", 4 * heads, 1, heads, tp * ffn_per_device, 8)
    f = serving_flops(g, ["q_proj", "down_proj"], rank, tp=tp, head=False)
    single = serving_flops(g, ["q_proj", "down_proj"], rank, head=False)
    by_path = {m.path.rsplit(".", 1)[-1]: m for m in f.modules}
    torch.manual_seed(0)
    for name in ("q_proj", "down_proj"):
        m = by_path[name]
        w, x = torch.randn(m.d_out, m.d_in), torch.randn(tokens, m.d_in)
        a, b, scale = torch.randn(rank, m.d_in), torch.randn(m.d_out, rank), 0.5
        full = x @ w.T + (x @ a.T) @ b.T * scale
        if m.style == "column":  # W and B split by out, A whole: concatenate the outputs
            shards = [(x, wk, a, bk) for wk, bk in zip(w.chunk(tp, 0), b.chunk(tp, 0), strict=True)]
        else:  # row: W and A split by in (and so is x), B whole: all-reduce (sum) the outputs
            shards = list(zip(x.chunk(tp, -1), w.chunk(tp, 1), a.chunk(tp, 1), [b] * tp, strict=True))
        outs = [xk @ wk.T + (xk @ ak.T) @ bk.T * scale for xk, wk, ak, bk in shards]
        joined = torch.cat(outs, -1) if m.style == "column" else sum(outs)
        torch.testing.assert_close(joined, full)
        xk, wk, ak, bk = shards[0]
        got = measured_flops(lambda: xk @ wk.T + (xk @ ak.T) @ bk.T * scale)  # noqa: B023
        assert got == tokens * (m.base_gemm + m.lora_a_gemm + m.lora_b_gemm)
        assert measured_flops(lambda: wk + bk @ ak * scale) == m.merge_gemm  # noqa: B023
    # the split GEMMs divide exactly; LoRA's replicated halves (A of q, B of down) do not
    assert f.layers_gemm * tp == single.layers_gemm and f.merge_gemm * tp == single.merge_gemm
    q, down = by_path["q_proj"], by_path["down_proj"]
    assert (q.lora_a_gemm, down.lora_b_gemm) == (2 * q.d_in * rank, 2 * rank * down.d_out)
    assert q.lora_b_gemm * tp == 2 * rank * q.d_out and down.lora_a_gemm * tp == 2 * down.d_in * rank


def test_tp_on_published_geometries():
    one = serving_flops(LLAMA_7B, QKVO_7B, 16, seq_len=2048)
    for tp in (2, 4, 8, 32):
        f = serving_flops(LLAMA_7B, QKVO_7B, 16, seq_len=2048, tp=tp)
        assert f.layers_gemm * tp == one.layers_gemm and f.head_gemm * tp == one.head_gemm
        assert f.attention_gemm * tp == one.attention_gemm
        assert f.merge_gemm * tp == one.merge_gemm and f.merge_elementwise * tp == one.merge_elementwise
        # q, k, v: A replicated; o: B replicated -> tp copies of 3 A's and 1 B per layer
        assert f.lora_a_gemm + f.lora_b_gemm > (one.lora_a_gemm + one.lora_b_gemm) / tp
        assert f.lora_a_gemm == 32 * (3 * 2 * 4096 * 16 + 2 * 4096 * 16 // tp)
    assert parallel_style(GPT2_SMALL, "transformer.h.0.attn.c_attn") == "column"
    assert parallel_style(GENEFORMER_GF_20L_95M_I4096, "bert.encoder.layer.3.output.dense") == "row"
    assert parallel_style(GENEFORMER_GF_20L_95M_I4096, "cls.predictions.transform.dense") == "replicated"


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: serving_flops(LLAMA_7B, QKVO_7B, 8, tp=3), "tp=3 does not divide: heads"),
        (lambda: serving_flops(GPT2_SMALL, ["c_attn"], 8, tp=2), "lm_head.*pads the vocabulary"),
        (lambda: serving_flops(GENEFORMER_GF_20L_95M_I4096, ["query"], 8, tp=4), "heads"),  # 14 heads
        (lambda: serving_flops(GPT2_SMALL, ["c_attn"], 8, seq_len=0), "seq_len"),
        (lambda: serving_flops(GPT2_SMALL, ["qkv"], 8), "select no module"),
        (lambda: serving_flops(GPT2_SMALL, ["c_attn"], 8).total_flops(5, "lazy"), "strategy"),
        (lambda: parallel_style(GPT2_SMALL, "wte"), "not a linear"),
        (lambda: training_memory(GPT2_SMALL, ["c_attn"]), "both targets and rank"),
        (lambda: training_memory(GPT2_SMALL, layers=[0]), "only apply to LoRA"),
        (lambda: adapter_bytes(GPT2_SMALL, ["c_attn"], 8, dtype="float33"), "not a torch dtype"),
        (lambda: adapter_bytes(GPT2_SMALL, ["c_attn"], 8, dtype=torch.int64), "floating-point"),
    ],
)
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_tp_error_is_fine_without_the_head():
    assert serving_flops(GPT2_SMALL, ["c_attn"], 8, tp=2, head=False).tp == 2
    with pytest.raises(TypeError, match="tp must be an int"):
        serving_flops(GPT2_SMALL, ["c_attn"], 8, tp=2.0)


# ----------------------------------------------------------------------------- memory


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _one_adamw_step(model, params) -> torch.optim.AdamW:
    opt = torch.optim.AdamW(params, lr=1e-3)
    ids = torch.randint(0, model.config.vocab_size, (2, 5))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    return opt


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_memory_equals_an_instantiated_model_and_adamw_state(family, dtype):
    _transformers()
    g = ModelGeometry(f"tiny {family}", family, 16, 2, 2, 24, 30, max_position_embeddings=16)
    targets = {"bert": ["query", "value"], "gpt2": ["c_attn"], "llama": ["q_proj", "down_proj"]}[family]
    torch.manual_seed(0)

    # LoRA: frozen base + adapter; AdamW on bfloat16 parameters keeps bfloat16 moments
    model = build_model(g).to(dtype)
    count_instantiated(model, targets, 4, rank_pattern={1: 2}, backend="peft_zoo")
    lora_params = [p for _, p in adapter_named_parameters(model)]
    assert adapter_bytes(g, targets, 4, dtype=dtype, rank_pattern={1: 2}) == _bytes(lora_params)
    opt = _one_adamw_step(model, lora_params)
    mem = training_memory(g, targets, 4, rank_pattern={1: 2}, param_dtype=dtype, optimizer_dtype=dtype,
                          master_weights=False)  # fmt: skip
    states = [opt.state[p] for p in lora_params]
    assert mem.weights == _bytes(model.parameters())
    assert mem.grads == _bytes(p.grad for p in model.parameters() if p.grad is not None)
    assert mem.optimizer_states == _bytes(s[k] for s in states for k in ("exp_avg", "exp_avg_sq"))
    assert all(s["step"].numel() == 1 for s in states)  # the per-tensor step counters we leave out
    assert mem.trainable == sum(p.numel() for p in lora_params) and mem.master_weights == 0

    # full fine-tuning: every parameter trains
    full = build_model(g).to(dtype)
    opt = _one_adamw_step(full, list(full.parameters()))
    mem = training_memory(g, param_dtype=dtype, optimizer_dtype=dtype, master_weights=False)
    assert mem.trainable == full_parameters(g) and mem.frozen == 0
    assert mem.weights == mem.grads == _bytes(p.grad for p in full.parameters())
    assert mem.optimizer_states == _bytes(s[k] for s in opt.state.values() for k in ("exp_avg", "exp_avg_sq"))


def test_mixed_precision_bytes_per_parameter():
    # ZeRO's count for fp16 Adam: 2 (weights) + 2 (grads) + 4 + 4 + 4 (master, two moments)
    full = training_memory(LLAMA_7B, param_dtype=torch.bfloat16)
    assert full.total == 16 * full_parameters(LLAMA_7B)
    assert round(full.total / 1e9) == 108
    lora = training_memory(LLAMA_7B, QKVO_7B, 16, param_dtype="bfloat16")
    assert lora.total == 2 * full_parameters(LLAMA_7B) + 16 * 16_777_216
    assert lora.master_weights == 4 * 16_777_216
    fp32 = training_memory(LLAMA_7B, QKVO_7B, 16)  # no master copy in float32
    assert fp32.master_weights == 0 and fp32.optimizer_states == 8 * 16_777_216
    # the Geneformer seed: rank 8 on all 122 linears, ~1.7M parameters, ~6.8 MB float32
    quoted = GENEFORMER_GF_20L_95M_I4096_AS_QUOTED
    assert adapter_bytes(quoted, ["query", "key", "value", "dense", "decoder"], 8) == 4 * 8 * 211_282
