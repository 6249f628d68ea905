"""The interview questions of docs/ia3.md; the guide's section is generated from here."""

from __future__ import annotations

from ..questions import ConceptQuestion

GUIDE = "ia3.md"
TOPIC = "adapters"

QUESTIONS = (
    ConceptQuestion(
        id="ia3.many-parameters-ia-train-per",
        topic=TOPIC,
        guide=GUIDE,
        prompt=("How many parameters does IA³ train per layer, and why can it be merged into the weight?"),
        answer=(
            "One per rescaled activation: $d_\\text{out}$ for an output-form layer (keys, values) and\n"
            "$d_\\text{in}$ for the feed-forward form. A block gets $2d + d_\\text{ff}$; for $d = 4096$,\n"
            "$d_\\text{ff} = 11008$ that is 19,200 per layer, against 65,536 for rank-8 LoRA on a single\n"
            "$4096^2$ matrix. Elementwise scaling is a diagonal matrix, which is linear:\n"
            "$(W_0 x + b) \\odot l = (\\operatorname{diag}(l) W_0) x + l \\odot b$. So multiply the weight's rows\n"
            "(or columns, in the input form) by $l$ once, and the adapter disappears from the forward pass."
        ),
        challenges=(8,),
        points=(
            "One parameter per rescaled activation: $d_\\text{out}$ (keys, values) or $d_\\text{in}$ (FFN form)",
            "A block gets $2d + d_\\text{ff}$: 19,200 for $d = 4096$, $d_\\text{ff} = 11008$",
            "Compare 65,536 for rank-8 LoRA on one $4096^2$ matrix",
            "Elementwise scaling is $\\operatorname{diag}(l)$, a linear map: scale $W_0$'s rows or columns once",
        ),
    ),
    ConceptQuestion(
        id="ia3.layers-ia-paper-rescale-those",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Which layers does the IA³ paper rescale, and why those?",
        answer=(
            "The keys and values in every attention block, and the intermediate FFN activation (the input of\n"
            "the down projection). Rescaling keys changes where the heads attend, rescaling values changes\n"
            "what they read, and rescaling FFN hidden units switches individual learned features on or off.\n"
            "The authors found this set the best trade-off. Adding queries would be redundant: a scale on $q_i$ acts on $q_i k_i$ exactly like the same scale on $k_i$. The FFN\n"
            "vector goes after the non-linearity so that it gates features rather than shifting the\n"
            "non-linearity's operating point."
        ),
        challenges=(9,),
        points=(
            "Keys and values in every attention block, and the intermediate FFN activation",
            "Keys change where heads attend, values what they read, FFN scales gate features",
            "Queries would be redundant: a scale on $q_i$ acts like the same scale on $k_i$",
            "The FFN vector goes after the non-linearity, so it gates rather than shifts",
        ),
    ),
    ConceptQuestion(
        id="ia3.ia-lora-would-pick",
        topic=TOPIC,
        guide=GUIDE,
        prompt="IA³ vs LoRA: when would you pick which?",
        answer=(
            "IA³: the smallest possible adapter (kilobytes), no rank to tune, mergeable, and many tasks fit\n"
            "in memory at once. It works well when the base already computes the right features, as with\n"
            "large instruction-tuned models and few-shot data. LoRA: more capacity (new directions, not just\n"
            "reweighting) at still-small cost. Choose it when the task needs the network to compute\n"
            "something new."
        ),
        challenges=(8,),
        points=(
            "IA³: kilobyte adapters, no rank to tune, mergeable, many tasks in memory",
            "IA³ suits bases that already compute the right features (large instruction-tuned, few-shot)",
            "LoRA: more capacity (new directions, not just reweighting) at small cost",
            "Choose LoRA when the network must compute something new",
        ),
    ),
    ConceptQuestion(
        id="ia3.unmerging-ia-need-care-lora",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why does unmerging IA³ need care that LoRA does not?",
        answer=(
            "LoRA unmerges by subtraction, which always works. IA³ unmerges by dividing by $l$: a zero entry\n"
            "would have wiped that row or column of $W_0$ for good, and a tiny entry amplifies rounding\n"
            "error. peft_zoo refuses to merge a scale with zeros for this reason."
        ),
        challenges=(8,),
        points=(
            "LoRA unmerges by subtraction, which always works",
            "IA³ unmerges by dividing by $l$",
            "A zero entry wipes a row or column of $W_0$ for good; a tiny one amplifies rounding",
            "peft_zoo refuses to merge a scale with zeros",
        ),
    ),
)
