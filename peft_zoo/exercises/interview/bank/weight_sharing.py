"""The interview questions of docs/weight_sharing.md; the guide's section is generated from here."""

from __future__ import annotations

from ..questions import ConceptQuestion

GUIDE = "weight_sharing.md"
TOPIC = "serving"

QUESTIONS = (
    ConceptQuestion(
        id="weight_sharing.albert-style-sharing-cut-parameters",
        topic=TOPIC,
        guide=GUIDE,
        prompt="How does ALBERT-style sharing cut parameters, and what does it not save?",
        answer=(
            "One set of block matrices is stored and reused by all $L$ blocks, so the blocks cost\n"
            "$\\approx 12C^2$ once instead of $L$ times (85M to 7M for $C = 768$, $L = 12$). FLOPs and\n"
            "activation memory are unchanged: every layer still multiplies its own activations. Parameter\n"
            "memory, optimizer state and checkpoint size shrink."
        ),
        challenges=(19,),
        points=(
            "One set of block matrices is stored and reused by all $L$ blocks",
            "Blocks cost $\\approx 12C^2$ once: 85 M to 7 M for $C = 768$, $L = 12$",
            "FLOPs and activation memory are unchanged",
            "Parameter memory, optimizer state and checkpoint size shrink",
        ),
    ),
    ConceptQuestion(
        id="weight_sharing.per-layer-lora-give-back",
        topic=TOPIC,
        guide=GUIDE,
        prompt="What does a per-layer LoRA give back?",
        answer=(
            "Layer $l$ applies $W + sB_lA_l$, so layers can specialise again. It costs $16rC$ per layer for all\n"
            "four matrices, about 1% of a block at $r = 8$, $C = 768$. In the notebook it recovers part of the\n"
            "accuracy gap to the unshared model."
        ),
        challenges=(19,),
        points=(
            "Layer $l$ applies $W + sB_lA_l$, so layers can specialise again",
            "It costs $16rC$ per layer for four matrices, about 1 % of a block at $r = 8$, $C = 768$",
            "In the notebook it recovers part of the gap to the unshared model",
        ),
    ),
    ConceptQuestion(
        id="weight_sharing.one-parameter-used-l-layers",
        topic=TOPIC,
        guide=GUIDE,
        prompt=(
            "When one Parameter is used by $L$ layers, what is its gradient, and why must the optimizer see it only once?"
        ),
        answer=(
            "The gradient is the sum of what each use would receive,\n"
            "$\\sum_l \\partial\\mathcal L/\\partial W^{(l)}$, which autograd accumulates into one `.grad`. If the\n"
            "parameter appeared twice in the optimizer it would be stepped twice per iteration, with two\n"
            "inconsistent sets of Adam moments. PyTorch's `parameters()` deduplicates. Hand-built parameter\n"
            "lists may not."
        ),
        challenges=(19,),
        points=(
            "The gradient is the sum over uses, $\\sum_l \\partial\\mathcal L/\\partial W^{(l)}$, in one `.grad`",
            "Listed twice, it would be stepped twice per iteration with inconsistent Adam moments",
            "`parameters()` deduplicates; hand-built lists may not",
        ),
    ),
    ConceptQuestion(
        id="weight_sharing.t-merge-per-layer-lora",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why can't you merge the per-layer LoRA into a shared base for serving?",
        answer=(
            "Because there is only one base tensor: the merge would apply layer $l$'s update to every\n"
            "layer. Serve the adapters unmerged (a few percent more FLOPs) or materialise per-layer merged\n"
            "copies."
        ),
        challenges=(19,),
        points=(
            "There is only one base tensor",
            "Merging would apply layer $l$'s update to every layer",
            "Serve unmerged (a few percent more FLOPs) or materialise per-layer merged copies",
        ),
    ),
    ConceptQuestion(
        id="weight_sharing.breaks-save-load-checkpoint-shared",
        topic=TOPIC,
        guide=GUIDE,
        prompt="What breaks when you save or load a checkpoint of a shared model?",
        answer=(
            "The `state_dict` repeats the shared tensor under every block's name. Loading an unshared\n"
            "checkpoint into a shared model makes the last block win silently, and safetensors refuses to\n"
            "save aliased tensors. Deduplicate on save and re-alias on load."
        ),
        challenges=(19,),
        points=(
            "The `state_dict` repeats the shared tensor under every block's name",
            "Loading an unshared checkpoint into a shared model: the last block wins silently",
            "safetensors refuses to save aliased tensors",
            "Deduplicate on save and re-alias on load",
        ),
    ),
    ConceptQuestion(
        id="weight_sharing.alias-copy-tell-debugger",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Alias or copy: how do you tell in a debugger?",
        answer=(
            "`a is b` (same Parameter) or `a.data_ptr() == b.data_ptr()`. Equal values prove nothing,\n"
            "since a copy is equal until the first optimizer step. `shared_parameters(model)` lists every\n"
            "tensor reachable under more than one name."
        ),
        challenges=(19,),
        points=(
            "`a is b` or `a.data_ptr() == b.data_ptr()` shows an alias",
            "Equal values prove nothing: a copy is equal until the first optimizer step",
            "`shared_parameters(model)` lists tensors reachable under more than one name",
        ),
    ),
)
