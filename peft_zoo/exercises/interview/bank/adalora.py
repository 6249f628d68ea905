"""The interview questions of docs/adalora.md; the guide's section is generated from here."""

from __future__ import annotations

from ..questions import ConceptQuestion

GUIDE = "adalora.md"
TOPIC = "lora"

QUESTIONS = (
    ConceptQuestion(
        id="adalora.adalora-prune",
        topic=TOPIC,
        guide=GUIDE,
        prompt="What does AdaLoRA prune, and how?",
        answer=(
            "Singular-value-like scalars. The update is $P \\operatorname{diag}(\\lambda) Q$, and pruning a\n"
            "triplet sets its $\\lambda_i$ to zero, which removes one rank-one component\n"
            "$\\lambda_i P_{:,i} Q_{i,:}$. Which ones: every triplet gets a score, the smoothed sensitivity\n"
            "$\\bar I = \\text{EMA}(\\lvert w \\cdot \\partial L / \\partial w \\rvert)$ times its uncertainty, summed\n"
            "over $\\lambda_i$ and averaged over its column of $P$ and row of $Q$. At each allocation step the\n"
            "lowest-scoring triplets across all layers are masked until the budget $b(t)$, which follows a\n"
            "cubic schedule from `init_r` to `target_r` per layer on average, is met. Masked triplets keep\n"
            "their vectors and can return."
        ),
        challenges=(28,),
        points=(
            "The update is $P\\operatorname{diag}(\\lambda)Q$; pruning sets a $\\lambda_i$ to zero",
            "Each triplet is scored by smoothed sensitivity times uncertainty",
            "Lowest-scoring triplets across all layers are masked until the budget $b(t)$ is met",
            "$b(t)$ follows a cubic schedule from `init_r` to `target_r`",
            "Masked triplets keep their vectors and can return",
        ),
    ),
    ConceptQuestion(
        id="adalora.svd-form-not-prune-lora",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why the SVD form? Why not prune LoRA's $B$ and $A$ directly?",
        answer=(
            "In $BA = \\sum_i B_{:,i} A_{i,:}$ the components are not independent: their directions overlap,\n"
            "so the importance of one depends on the others, and removing one changes what the rest\n"
            "represent. With $P$ and $Q$ kept near-orthonormal, the components are (nearly) independent and\n"
            "$\\lambda_i$ is a single scalar that measures component $i$'s magnitude, so zeroing it is a clean,\n"
            "reversible cut. Zeroing a whole LoRA component would also lose its $B$ and $A$ vectors for good."
        ),
        challenges=(28,),
        points=(
            "LoRA's components $B_{:,i}A_{i,:}$ overlap, so one's importance depends on the others",
            "With near-orthonormal $P$ and $Q$, components are nearly independent",
            "$\\lambda_i$ alone measures component $i$'s magnitude: zeroing it is clean and reversible",
            "Zeroing a LoRA component would lose its $B$ and $A$ vectors for good",
        ),
    ),
    ConceptQuestion(
        id="adalora.multiply-sensitivity-uncertainty",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why multiply sensitivity by uncertainty?",
        answer=(
            "The sensitivity from one mini-batch is noisy. The EMA $\\bar I$ smooths it, and the uncertainty\n"
            "$U$ (how much $I$ deviates from its average) keeps triplets whose importance is still changing\n"
            "from being pruned too early on a lucky or unlucky streak. That is the paper's motivation for\n"
            "scoring with the product rather than the raw sensitivity."
        ),
        challenges=(28,),
        points=(
            "One mini-batch's sensitivity is noisy; the EMA smooths it",
            "The uncertainty $U$ measures how much $I$ deviates from its average",
            "The product keeps triplets whose importance is still changing from early pruning",
        ),
    ),
    ConceptQuestion(
        id="adalora.cubic-schedule-warm-up-final",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why a cubic schedule with warm-up and a final phase?",
        answer=(
            "Warm-up ($t_\\text{init}$): the scores need some training before they mean anything. Cubic\n"
            "decrease: prune the clearly useless triplets early, then slow down as the decisions get harder.\n"
            "Final phase ($t_\\text{final}$): with the pattern frozen, the surviving triplets adapt to the\n"
            "absence of the pruned ones."
        ),
        challenges=(28,),
        points=(
            "Warm-up: scores need some training before they mean anything",
            "Cubic decrease: prune clearly useless triplets early, then slow down",
            "Final phase: the pattern is frozen and the survivors adapt",
        ),
    ),
    ConceptQuestion(
        id="adalora.adalora-save-memory-over-lora",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Does AdaLoRA save memory over LoRA at `init_r`?",
        answer=(
            "No: tensors stay at `init_r`, and optimizer state too. It saves *capacity placement*, not memory.\n"
            "A deployment can drop the zeroed triplets afterwards (smaller matrices, same function), or merge\n"
            "$s P \\operatorname{diag}(\\lambda) Q$ into $W_0$ as with LoRA."
        ),
        challenges=(28,),
        points=(
            "No: tensors and optimizer state stay at `init_r`",
            "It changes where capacity goes, not memory",
            "Afterwards, drop zeroed triplets or merge $sP\\operatorname{diag}(\\lambda)Q$ into $W_0$",
        ),
    ),
)
