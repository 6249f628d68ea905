"""The interview questions of docs/dora_loraplus.md; the guide's section is generated from here."""

from __future__ import annotations

from ..questions import ConceptQuestion

GUIDE = "dora_loraplus.md"
TOPIC = "lora"

QUESTIONS = (
    ConceptQuestion(
        id="dora_loraplus.dora-decompose-learn-lora-not",
        topic=TOPIC,
        guide=GUIDE,
        prompt=(
            "What does DoRA decompose, and what does it learn that LoRA does not? How many extra parameters?"
        ),
        answer=(
            "Each weight row is split into a magnitude and a unit direction, $W' = m \\odot V/\\|V\\|$ with\n"
            "$V = W_0 + sBA$. LoRA adapts the direction. The magnitude vector $m$ is learned directly, so\n"
            "the length and the direction of each row can change independently, as they do in full\n"
            "fine-tuning. It costs $d_{out}$ extra parameters per adapted layer."
        ),
        challenges=(20,),
        points=(
            "Each row is split into magnitude and direction: $W' = m \\odot V/\\|V\\|$, $V = W_0 + sBA$",
            "LoRA adapts the direction; the magnitude $m$ is learned directly",
            "Length and direction change independently, as in full fine-tuning",
            "Costs $d_{out}$ extra parameters per adapted layer",
        ),
    ),
    ConceptQuestion(
        id="dora_loraplus.dora-detach-w-0-sba",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why does DoRA detach $\\|W_0 + sBA\\|$ in backpropagation, and what does it save?",
        answer=(
            "Backpropagating through the row norms would need the full $(d_{out}, d_{in})$ matrix $V$ and its\n"
            "norm's Jacobian in the backward graph, for every adapted layer. Treating the norm as a constant\n"
            "(paper §4.3) keeps the backward at LoRA-like memory. The paper finds no accuracy loss. The\n"
            "gradient direction changes slightly, which is why the grader checks gradients, not only outputs."
        ),
        challenges=(20,),
        points=(
            "Backpropagating through the norms needs the full $(d_{out}, d_{in})$ $V$ in the backward graph",
            "Treating the norm as a constant keeps backward memory LoRA-like",
            "The paper finds no accuracy loss",
            "Gradients change slightly, so the grader checks gradients, not only outputs",
        ),
    ),
    ConceptQuestion(
        id="dora_loraplus.dora-adapter-merged-serving-zero",
        topic=TOPIC,
        guide=GUIDE,
        prompt=(
            "Can a DoRA adapter be merged for serving at zero extra cost? What must you keep to unmerge it?"
        ),
        answer=(
            "Yes. $W' = (m/\\|V\\|)V$ is a plain matrix: write it into the base weight and serve an ordinary\n"
            "linear layer. To unmerge you need $\\|V\\|$ at merge time (or recompute it from $W_0$, which is\n"
            "gone). Then $V = W'\\|V\\|/m$ and $W_0 = V - sBA$. A zero magnitude makes that impossible, so\n"
            "`merge()` refuses one."
        ),
        challenges=(20,),
        points=(
            "Yes: $W' = (m/\\|V\\|)V$ is a plain matrix written into the base weight",
            "To unmerge, keep $\\|V\\|$ from merge time",
            "Then $V = W'\\|V\\|/m$ and $W_0 = V - sBA$",
            "A zero magnitude makes that impossible, so `merge()` refuses one",
        ),
    ),
    ConceptQuestion(
        id="dora_loraplus.t-dora-served-dynamically-cheaply",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why can't DoRA be served dynamically as cheaply as LoRA?",
        answer=(
            "Unmerged, every forward needs $\\|W_0 + sBA\\|$, which forms a $(d_{out}, d_{in})$ matrix: an\n"
            "$O(d_{out}d_{in}r)$ cost that LoRA's two thin GEMMs avoid. The norm could be cached while the\n"
            "adapter is frozen. In practice DoRA adapters are merged for inference, or the norm is\n"
            "precomputed per adapter."
        ),
        challenges=(20,),
        points=(
            "Unmerged, each forward needs $\\|W_0 + sBA\\|$, forming a $(d_{out}, d_{in})$ matrix",
            "That costs $O(d_{out}d_{in}r)$, which LoRA's two thin GEMMs avoid",
            "The norm can be cached while the adapter is frozen",
            "In practice DoRA is merged for inference or the norm precomputed per adapter",
        ),
    ),
    ConceptQuestion(
        id="dora_loraplus.lora-should-b-learn-faster",
        topic=TOPIC,
        guide=GUIDE,
        prompt="What is LoRA+, and why should $B$ learn faster than $A$?",
        answer=(
            "LoRA+ uses $\\eta_B = \\lambda\\eta_A$, with $\\lambda \\approx 16$. $B$ starts at zero and its\n"
            "updates are what first move the output. $A$ is a random projection that mostly needs to stay\n"
            "well-conditioned. The paper's width-scaling analysis shows that equal rates make feature\n"
            "learning inefficient in wide models. The reported gain is up to about 2× faster fine-tuning at\n"
            "no extra cost."
        ),
        points=(
            "LoRA+ sets $\\eta_B = \\lambda\\eta_A$ with $\\lambda \\approx 16$",
            "$B$ starts at zero and its updates first move the output",
            "$A$ is a random projection that mainly needs to stay well-conditioned",
            "Equal rates make feature learning inefficient in wide models (width-scaling analysis)",
            "Reported gain: up to about 2× faster fine-tuning at no extra cost",
        ),
    ),
    ConceptQuestion(
        id="dora_loraplus.under-lora-learning-rate-dora",
        topic=TOPIC,
        guide=GUIDE,
        prompt=("Under LoRA+, which learning rate does DoRA's magnitude get, and why does it matter?"),
        answer=(
            "PEFT puts every 1-D trainable tensor in the $B$ group, so the magnitude trains at $\\lambda\\eta$.\n"
            'Reproducing a PEFT run with a different grouping (e.g. `"lora_B" in name` only) gives a\n'
            "different optimiser and different results. peft_zoo reproduces PEFT's grouping exactly."
        ),
        points=(
            "PEFT puts every 1-D trainable tensor in the $B$ group",
            "So DoRA's magnitude trains at $\\lambda\\eta$",
            'A different grouping (e.g. `"lora_B" in name`) gives a different optimiser and results',
        ),
    ),
)
