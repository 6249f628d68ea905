"""The interview questions of docs/named_adapters.md; the guide's section is generated from here."""

from __future__ import annotations

from ..questions import ConceptQuestion

GUIDE = "named_adapters.md"
TOPIC = "serving"

QUESTIONS = (
    ConceptQuestion(
        id="named_adapters.keep-several-adapters-one-layer",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why keep several adapters on one layer instead of one model copy per adapter?",
        answer=(
            "The base\n"
            "weights dominate memory; adapters are a few megabytes. One copy of $W_0$ with $N$ small pairs\n"
            "serves every task, and switching is a list assignment, not a weight load."
        ),
        challenges=(11,),
        points=(
            "Base weights dominate memory; adapters are a few megabytes",
            "One copy of $W_0$ with $N$ small pairs serves every task",
            "Switching is a list assignment, not a weight load",
        ),
    ),
    ConceptQuestion(
        id="named_adapters.set-adapter-b-compute-same",
        topic=TOPIC,
        guide=GUIDE,
        prompt='What does `set_adapter(["a", "b"])` compute, and is it the same as merging both?',
        answer=(
            "The sum\n"
            "$s_a B_a A_a + s_b B_b A_b$ on top of $W_0$: linear, so merging both gives the same function (up\n"
            "to float rounding), which is what `merge_and_unload` does with two active adapters."
        ),
        points=(
            "It computes $W_0 + s_aB_aA_a + s_bB_bA_b$",
            "The sum is linear, so merging both gives the same function up to rounding",
            "`merge_and_unload` with two active adapters does exactly that",
        ),
    ),
    ConceptQuestion(
        id="named_adapters.mixed-batch-avoid-python-loop",
        topic=TOPIC,
        guide=GUIDE,
        prompt="How does a mixed batch avoid a Python loop over adapters, and what does it cost?",
        answer=(
            "Stack the\n"
            "adapters per layer (zero-pad the ranks), map each sample's name to a slot once, and run a\n"
            "gathered batched matmul or an `embedding_bag` over the stacked tables. The adapter bytes read\n"
            "grow with the number of distinct adapters in the batch, which at one token per sample is about\n"
            "the size of the base weights for 64 rank-8 adapters."
        ),
        challenges=(16,),
        points=(
            "Stack adapters per layer, zero-padding the ranks",
            "Map each sample's name to a slot once",
            "Run a gathered batched matmul or an `embedding_bag` over the stacked tables",
            "Bytes read grow with distinct adapters: 64 rank-8 adapters ≈ base weights at one token per sample",
        ),
    ),
    ConceptQuestion(
        id="named_adapters.peft-refuse-adapter-names-training",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why does PEFT refuse `adapter_names` in training mode?",
        answer=(
            "Dropout and gradient flow per\n"
            "sub-batch would make each adapter's update depend on which other samples share the batch; the\n"
            "feature is meant for serving. Train one adapter at a time with `set_adapter`."
        ),
        points=(
            "Per-sub-batch dropout and gradients would make each update depend on the other samples",
            "The feature is meant for serving",
            "Train one adapter at a time with `set_adapter`",
        ),
    ),
)
