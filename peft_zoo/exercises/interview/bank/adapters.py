"""The interview questions of docs/adapters.md; the guide's section is generated from here."""

from __future__ import annotations

from ..questions import ConceptQuestion

GUIDE = "adapters.md"
TOPIC = "adapters"

QUESTIONS = (
    ConceptQuestion(
        id="adapters.where-houlsby-adapters-go-transformer",
        topic=TOPIC,
        guide=GUIDE,
        prompt=("Where do Houlsby adapters go in a transformer block, and how many parameters do they add?"),
        answer=(
            "Two per block: after the attention output projection and after the FFN, each before the\n"
            "residual add and the LayerNorm. Each adapter has $2dm + m + d$ parameters, so a block gets\n"
            "$2(2dm + m + d)$. For BERT-base ($d = 768$, 12 layers) with $m = 64$ that is about 2.4 M, or 2 %\n"
            "of the model. Pfeiffer's single adapter after the FFN halves this."
        ),
        challenges=(2,),
        points=(
            "Two per block: after the attention output projection and after the FFN",
            "Each sits before the residual add and the LayerNorm",
            "One adapter has $2dm + m + d$ parameters, a block $2(2dm + m + d)$",
            "BERT-base with $m = 64$: about 2.4 M, 2 % of the model",
            "Pfeiffer's single adapter after the FFN halves this",
        ),
    ),
    ConceptQuestion(
        id="adapters.zero-initialise-up-projection-rather",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why zero-initialise the up projection rather than the down projection?",
        answer=(
            "With $W_\\text{up} = 0$ and $b_\\text{up} = 0$ the adapter outputs exactly zero, so the adapted\n"
            "model starts as the pretrained one. $W_\\text{down}$ stays random, so the first gradient of\n"
            "$W_\\text{up}$, which is $g\\,\\phi(W_\\text{down} h + b_\\text{down})^\\top$, is informative. If you\n"
            "zero $W_\\text{down}$ instead, the output is $W_\\text{up}\\phi(b_\\text{down}) + b_\\text{up}$: not zero\n"
            "unless more things are zero. And $W_\\text{down}$'s gradient passes through $W_\\text{up}$, which is\n"
            "what LoRA's $B = 0$ avoids. Zeroing both leaves no learning signal in either matrix."
        ),
        challenges=(2,),
        points=(
            "$W_\\text{up} = 0$, $b_\\text{up} = 0$: the adapter outputs zero, so training starts at the pretrained model",
            "Random $W_\\text{down}$ makes the first gradient of $W_\\text{up}$ informative",
            "Zero $W_\\text{down}$ instead: output $W_\\text{up}\\phi(b_\\text{down}) + b_\\text{up}$ is not zero in general",
            "Zeroing both leaves no learning signal in either matrix",
        ),
    ),
    ConceptQuestion(
        id="adapters.serial-parallel-adapters-each-see",
        topic=TOPIC,
        guide=GUIDE,
        prompt=("Serial vs parallel adapters: what does each see, and what changes for the gradients?"),
        answer=(
            "A serial adapter sees the sublayer's result $h = x + F(x)$ and outputs $h + \\delta(h)$. It can\n"
            "correct what $F$ computed, but it waits for $F$, and every gradient to the layers below passes\n"
            "through the adapter's Jacobian $I + \\partial\\delta/\\partial h$. A parallel adapter sees $x$ and\n"
            "outputs $F(x) + \\delta(x)$. Its parameters get their gradient directly from the block output,\n"
            "without passing through $F$, and the gradient to $x$ is the sum of the two branches'. He et al.\n"
            "found the parallel form stronger at the same budget."
        ),
        challenges=(3,),
        points=(
            "Serial sees $h = x + F(x)$ and outputs $h + \\delta(h)$: it can correct $F$ but waits for it",
            "Serial: gradients to lower layers pass through $I + \\partial\\delta/\\partial h$",
            "Parallel sees $x$ and outputs $F(x) + \\delta(x)$; its gradient does not pass through $F$",
            "Parallel: the gradient to $x$ is the sum of both branches'",
            "He et al. found the parallel form stronger at the same budget",
        ),
    ),
    ConceptQuestion(
        id="adapters.parallel-adapter-computed-concurrently-sublayer",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why can a parallel adapter be computed concurrently with the sublayer?",
        answer=(
            "Neither branch reads the other's output; they only meet in the final sum. They can run on\n"
            "separate streams, or $W_\\text{down}$ can be concatenated onto the FFN's first projection so the\n"
            "adapter rides along in the same GEMM. A serial adapter must wait for $F$, which adds sequential\n"
            "latency to every layer."
        ),
        challenges=(6,),
        points=(
            "Neither branch reads the other's output; they meet only in the final sum",
            "They can run on separate streams",
            "Or $W_\\text{down}$ can be concatenated onto the FFN's first projection in one GEMM",
            "A serial adapter must wait for $F$, adding latency every layer",
        ),
    ),
    ConceptQuestion(
        id="adapters.would-combine-lora-adapters-each",
        topic=TOPIC,
        guide=GUIDE,
        prompt="When would you combine LoRA with adapters, and what does each add?",
        answer=(
            "LoRA changes existing linear maps; it is mergeable, so it costs no latency. A bottleneck adapter\n"
            "adds a new non-linear function of the hidden state, which LoRA cannot express in one layer.\n"
            "Combining them gives more capacity per parameter when LoRA alone plateaus below full\n"
            'fine-tuning. He et al.\'s "mix-and-match" adapter combines prefix tuning and parallel adapters in\n'
            "the same spirit. The price is that the adapter part can never be merged away."
        ),
        challenges=(5,),
        points=(
            "LoRA changes existing linear maps and merges, so it adds no latency",
            "A bottleneck adapter adds a new non-linear function of the hidden state",
            "Combined: more capacity per parameter when LoRA alone plateaus",
            "Price: the adapter part can never be merged away",
        ),
    ),
    ConceptQuestion(
        id="adapters.would-serve-many-task-adapters",
        topic=TOPIC,
        guide=GUIDE,
        prompt="How would you serve many task adapters over one frozen base?",
        answer=(
            "Load the base once. Keep the adapters in a bank (`AdapterStack`, a `ModuleList`, or stacked\n"
            'tensors) and pick one per request by id, validating the id: `-1` must not silently mean "the\n'
            "last adapter\". Group requests by adapter, or, for LoRA, gather each row's matrices and use\n"
            "batched GEMMs so that one batch mixes adapters ([batched LoRA](batched.md), notebook 04). Cache\n"
            "results keyed by (input, adapter, adapter version), so that retraining an adapter invalidates\n"
            "exactly its entries. Merge an adapter into its own copy of the weights only if it carries most\n"
            "of the traffic."
        ),
        challenges=(11,),
        points=(
            "Load the base once; keep adapters in a bank and pick one per request by a validated id",
            "`-1` must not silently mean the last adapter",
            "Group requests by adapter, or gather per-row LoRA matrices for batched GEMMs",
            "Cache keyed by (input, adapter, version), so retraining invalidates exactly its entries",
            "Merge into a separate weight copy only for an adapter carrying most traffic",
        ),
    ),
)
