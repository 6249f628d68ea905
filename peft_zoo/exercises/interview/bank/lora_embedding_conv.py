"""The interview questions of docs/lora_embedding_conv.md; the guide's section is generated from here."""

from __future__ import annotations

from ..questions import ConceptQuestion

GUIDE = "lora_embedding_conv.md"
TOPIC = "lora"

QUESTIONS = (
    ConceptQuestion(
        id="lora_embedding_conv.embedding-lora-start-0-b",
        topic=TOPIC,
        guide=GUIDE,
        prompt=(
            "Why does the embedding LoRA start with $A = 0$ and $B$ random, the other way round from a linear layer?"
        ),
        answer=(
            "Both choices give $\\Delta W = 0$ with a non-zero first gradient. With $A = 0$ there is a bonus\n"
            "specific to lookups: row $t$ of $\\Delta W^\\top$ is $s\\,B A_{:,t}$, and $A_{:,t}$ gets a gradient\n"
            "only when token $t$ appears in a batch (the lookup's backward is sparse). So tokens never seen in\n"
            "training keep *exactly* their pretrained embedding. With $A$ random and $B = 0$, every update of\n"
            "$B$ would change every token's embedding, seen or not. The convention itself comes from the\n"
            "LoRA reference implementation (loralib), and PEFT keeps it."
        ),
        challenges=(30,),
        points=(
            "Either choice gives $\\Delta W = 0$ with a non-zero first gradient",
            "Column $A_{:,t}$ gets a gradient only when token $t$ appears (sparse lookup backward)",
            "So unseen tokens keep exactly their pretrained embedding",
            "With random $A$ and $B = 0$, every $B$ update changes every token's embedding",
        ),
    ),
    ConceptQuestion(
        id="lora_embedding_conv.lora-convolution-work-full-kernel",
        topic=TOPIC,
        guide=GUIDE,
        prompt=("How does LoRA on a convolution work, and why is $A$ a full kernel but $B$ pointwise?"),
        answer=(
            "A convolution is a matrix $(C_\\text{out}, C_\\text{in} \\prod k)$ applied to every receptive\n"
            "field. A low-rank update of that matrix is $BA$ with $A$ $(r, C_\\text{in} \\prod k)$, which is\n"
            "exactly a $k$-sized convolution to $r$ channels, and $B$ $(C_\\text{out}, r)$, a pointwise\n"
            "convolution back. Composing them gives a kernel of the base's shape, so it merges; the spatial\n"
            "structure lives in $A$, the channel mixing in $B$."
        ),
        challenges=(30,),
        points=(
            "A convolution is a $(C_\\text{out}, C_\\text{in}\\prod k)$ matrix applied to each receptive field",
            "$A$ is a $k$-sized convolution to $r$ channels",
            "$B$ is a pointwise convolution back to $C_\\text{out}$",
            "Composed they give a kernel of the base's shape, so it merges",
        ),
    ),
    ConceptQuestion(
        id="lora_embedding_conv.must-lora-path-use-base",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why must the LoRA path use the base's dilation and padding mode?",
        answer=(
            "To be one update of the same convolution, $A$ must read the same pixels as $W_0$: same stride,\n"
            "padding, dilation and padding values. Without the base's dilation the path reads a denser\n"
            "neighbourhood, so its outputs have another size (a shape error) or, where sizes happen to agree,\n"
            "a function that the merged kernel (which inherits the base's dilation) does not compute. PEFT\n"
            "0.21.2's `lora_A` is built without the base's dilation; peft_zoo uses it. For the padding mode\n"
            "PEFT pads the LoRA path with zeros whatever the base does, so a reflect-padded base's unmerged and\n"
            "merged outputs differ at the borders; peft_zoo refuses such a base."
        ),
        challenges=(30,),
        points=(
            "$A$ must read the same pixels as $W_0$: stride, padding, dilation, padding values",
            "Without the base's dilation: a shape error, or a function the merged kernel does not compute",
            "PEFT 0.21.2 builds `lora_A` without dilation; peft_zoo uses it",
            "PEFT zero-pads the LoRA path whatever the base does; peft_zoo refuses a reflect-padded base",
        ),
    ),
    ConceptQuestion(
        id="lora_embedding_conv.many-parameters-lora-add-bert",
        topic=TOPIC,
        guide=GUIDE,
        prompt="How many parameters does LoRA add to BERT-base's word embeddings at $r = 8$?",
        answer=(
            "$8 \\times (30522 + 768) = 250{,}320$, about 1.1 % of the table's 23.4 M, and comparable to the\n"
            "294,912 of rank-8 LoRA on all 24 query and value projections."
        ),
        challenges=(30,),
        points=(
            "$8 \\times (30522 + 768) = 250{,}320$",
            "About 1.1 % of the table's 23.4 M",
            "Comparable to the 294,912 of rank-8 LoRA on all query and value projections",
        ),
    ),
    ConceptQuestion(
        id="lora_embedding_conv.lora-embedding-teach-model-new",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Can LoRA on an embedding teach the model a new token?",
        answer=(
            "No. It changes how existing rows are used; a new token needs a new row. Resize the embedding\n"
            "and train the new rows fully (PEFT also offers `trainable_token_indices` for training only\n"
            "selected rows; peft_zoo does not)."
        ),
        challenges=(30,),
        points=(
            "No: LoRA changes how existing rows are used; a new token needs a new row",
            "Resize the embedding and train the new rows fully",
            "PEFT offers `trainable_token_indices`; peft_zoo does not",
        ),
    ),
)
