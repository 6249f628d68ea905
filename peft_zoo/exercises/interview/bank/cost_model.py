"""The interview questions of docs/cost_model.md; the guide's section is generated from here."""

from __future__ import annotations

from ..questions import ConceptQuestion

GUIDE = "cost_model.md"
TOPIC = "serving"

QUESTIONS = (
    ConceptQuestion(
        id="cost_model.llama-7b-rank-16-q",
        topic=TOPIC,
        guide=GUIDE,
        prompt=(
            "LLaMA-7B with rank 16 on $q,k,v,o$: how many trainable parameters, and what does the adapter weigh?"
        ),
        answer=(
            "$32 \\times 4 \\times 16 \\times (4096 + 4096) = 16{,}777{,}216$, 0.25% of 6.74B, which is 32 MiB in bf16."
        ),
        challenges=(14,),
        points=(
            "$32 \\times 4 \\times 16 \\times (4096 + 4096) = 16{,}777{,}216$",
            "0.25 % of 6.74 B",
            "32 MiB in bf16",
        ),
    ),
    ConceptQuestion(
        id="cost_model.lora-cut-training-memory-only",
        topic=TOPIC,
        guide=GUIDE,
        prompt=(
            "Why does LoRA cut training memory by only about 8×, not by the 400× of the trainable fraction?"
        ),
        answer=(
            "The frozen base still sits in memory at 2 bytes per parameter. Full fine-tuning holds 16 bytes\n"
            "per parameter (weights, gradients, Adam moments, master copy), LoRA about 2. Activations come\n"
            "on top in both cases. QLoRA goes after the remaining 2 bytes."
        ),
        points=(
            "The frozen base still sits in memory at 2 bytes per parameter",
            "Full fine-tuning: 16 bytes per parameter (weights, gradients, Adam moments, master copy)",
            "LoRA: about 2 bytes per parameter; activations come on top in both",
            "QLoRA goes after the remaining 2 bytes",
        ),
    ),
    ConceptQuestion(
        id="cost_model.unmerged-adapter-cost-per-token",
        topic=TOPIC,
        guide=GUIDE,
        prompt="What does an unmerged adapter cost per token?",
        answer=(
            "$2r(d_{in} + d_{out}) + 2d_{out}$ FLOPs per adapted module: 0.27% of LLaMA-7B's linear FLOPs at\n"
            "$r = 16$ on $q,k,v,o$, a few percent for narrow models, high ranks or all-linear targets. It\n"
            "costs more in time, because the thin GEMMs are memory-bound."
        ),
        challenges=(12,),
        points=(
            "$2r(d_{in} + d_{out}) + 2d_{out}$ FLOPs per adapted module",
            "0.27 % of LLaMA-7B's linear FLOPs at $r = 16$ on $q,k,v,o$",
            "A few percent for narrow models, high ranks or all-linear targets",
            "More in time than FLOPs, because thin GEMMs are memory-bound",
        ),
    ),
    ConceptQuestion(
        id="cost_model.merge-break-even-point-barely",
        topic=TOPIC,
        guide=GUIDE,
        prompt="When do you merge, and why does the break-even point barely depend on the rank?",
        answer=(
            "Merge when an adapter serves more than $N^* = M/d$ tokens between switches, roughly the model\n"
            "width (about 4,200 for LLaMA-7B). Both the merge ($\\propto r + 1$) and the per-token extra\n"
            "($\\propto r$) grow linearly with $r$, so their ratio hardly moves."
        ),
        challenges=(12,),
        points=(
            "Merge when an adapter serves more than $N^* = M/d$ tokens between switches",
            "That is roughly the model width, about 4,200 tokens for LLaMA-7B",
            "Merge cost ($\\propto r + 1$) and per-token extra ($\\propto r$) both grow linearly in $r$",
            "So their ratio hardly moves with the rank",
        ),
    ),
    ConceptQuestion(
        id="cost_model.would-verify-analytic-flop-model",
        topic=TOPIC,
        guide=GUIDE,
        prompt="How would you verify an analytic FLOP model?",
        answer=(
            "Build a small model with the same layout, run it under `FlopCounterMode`, and compare exactly\n"
            "for each phase (base, dynamic, merge, merged). Know the counter's blind spots: fused attention\n"
            "kernels on CPU and elementwise ops."
        ),
        points=(
            "Build a small model with the same layout and run it under `FlopCounterMode`",
            "Compare exactly per phase: base, dynamic, merge, merged",
            "Blind spots: fused attention kernels on CPU and elementwise ops",
        ),
    ),
    ConceptQuestion(
        id="cost_model.changes-under-tensor-parallelism",
        topic=TOPIC,
        guide=GUIDE,
        prompt="What changes under tensor parallelism?",
        answer=(
            "Base FLOPs split exactly by `tp`. LoRA's replicated factor does not, so the relative overhead\n"
            "grows with `tp`. LoRA needs no extra communication, since its partial outputs join the\n"
            "row-parallel all-reduce."
        ),
        points=(
            "Base FLOPs split exactly by `tp`",
            "LoRA's replicated factor does not split, so relative overhead grows with `tp`",
            "No extra communication: LoRA's partial outputs join the row-parallel all-reduce",
        ),
    ),
)
