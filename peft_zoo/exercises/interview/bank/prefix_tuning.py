"""The interview questions of docs/prefix_tuning.md; the guide's section is generated from here."""

from __future__ import annotations

from ..questions import ConceptQuestion

GUIDE = "prefix_tuning.md"
TOPIC = "adapters"

QUESTIONS = (
    ConceptQuestion(
        id="prefix_tuning.prefix-tuning-prompt-tuning-lora",
        topic=TOPIC,
        guide=GUIDE,
        prompt=(
            "Prefix tuning vs prompt tuning vs LoRA: what is trained, and what does it cost at inference?"
        ),
        answer=(
            "Prompt tuning trains $P$ input vectors ($P d$ parameters). Prefix tuning trains $P$ keys and\n"
            "values in every layer ($2 P d\\, n_\\text{layers}$). LoRA trains low-rank updates\n"
            "$r(d_\\text{in} + d_\\text{out})$ of chosen matrices. At inference the prefix methods make every\n"
            "sequence $P$ positions longer for attention. That means more FLOPs and KV-cache memory, and\n"
            "fewer usable context positions. They cannot be merged away. LoRA can be merged and then costs\n"
            "nothing. In exchange, prefix methods never touch the weights, so one batch can mix tasks\n"
            "trivially (each row carries its own prefix). Prefix tuning is more expressive than prompt\n"
            "tuning because it acts at every layer. LoRA is usually stronger than both at the same\n"
            "parameter budget."
        ),
        challenges=(7,),
        points=(
            "Trained: prompt $Pd$, prefix $2Pd\\,n_\\text{layers}$ keys and values, LoRA $r(d_\\text{in} + d_\\text{out})$",
            "Prefix methods add $P$ positions: more FLOPs, KV-cache memory, less context; not mergeable",
            "Merged LoRA costs nothing at inference",
            "Prefix methods leave weights untouched, so one batch mixes tasks trivially",
            "Prefix is more expressive than prompt tuning (every layer); LoRA is usually stronger than both",
        ),
    ),
    ConceptQuestion(
        id="prefix_tuning.prefixed-model-not-start-out",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why does a prefixed model not start out equal to the base, and does it matter?",
        answer=(
            "Softmax gives every key positive weight. Even zero prefix keys take $e^0$ of the mass and mix\n"
            'their values into every output, so there is no "zero" prefix. Training therefore starts from a\n'
            "slightly perturbed model. Small inits, initialisation from real token activations, and Li &\n"
            "Liang's MLP reparameterisation keep the perturbation mild and the optimisation stable."
        ),
        challenges=(7,),
        points=(
            "Softmax gives every key positive weight, so there is no zero prefix",
            "Zero prefix keys still take $e^0$ of the mass and mix their values in",
            "Training starts from a slightly perturbed model",
            "Small inits, real-token initialisation or the MLP reparameterisation keep it mild",
        ),
    ),
    ConceptQuestion(
        id="prefix_tuning.add-prefix-model-padding-mask",
        topic=TOPIC,
        guide=GUIDE,
        prompt="How do you add a prefix to a model with a padding mask, or a KV cache?",
        answer=(
            "Extend the mask by $P$ always-kept columns (`LearnablePrefix.extend_mask`) so that padding\n"
            "stays masked and the prefix stays visible. With a KV cache, the prefix keys and values are the\n"
            "first $P$ entries of the cache for every layer. Insert them once per sequence; decoding then\n"
            "continues as usual, with positions shifted by $P$ in the cache."
        ),
        challenges=(22,),
        points=(
            "Extend the mask by $P$ always-kept columns (`LearnablePrefix.extend_mask`)",
            "Padding stays masked and the prefix stays visible",
            "With a KV cache, the prefix is the first $P$ cache entries of every layer, inserted once per sequence",
            "Decoding continues as usual, with positions shifted by $P$",
        ),
    ),
    ConceptQuestion(
        id="prefix_tuning.prefix-s-gradient-sum-over",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why is the prefix's gradient the sum over the batch?",
        answer=(
            "The same parameter is copied into every row. By the chain rule, its gradient is the sum of the\n"
            "gradients at each row's prefix positions. A bug that detaches the prefix, or gives only row 0\n"
            "a copy, shows up exactly here."
        ),
        challenges=(7,),
        points=(
            "The same parameter is copied into every row",
            "By the chain rule, its gradient sums the gradients at each row's prefix positions",
            "A detached prefix, or a copy only in row 0, shows up exactly here",
        ),
    ),
)
