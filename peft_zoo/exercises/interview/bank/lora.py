"""The interview questions of docs/lora.md; the guide's section is generated from here."""

from __future__ import annotations

from ..questions import ConceptQuestion

GUIDE = "lora.md"
TOPIC = "lora"

QUESTIONS = (
    ConceptQuestion(
        id="lora.b-initialised-zero-not-happens",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why is $B$ initialised to zero and not $A$? What happens if both are zero?",
        answer=(
            "$B = 0$ makes $\\Delta W = BA = 0$, so fine-tuning starts exactly at the pretrained model, and\n"
            "the random $A$ gives $B$ a non-zero first gradient $s\\,g(Ax)^\\top$. The opposite choice\n"
            "($A = 0$, $B$ random) would also work; the convention follows the paper. With both zero,\n"
            "$\\partial L/\\partial A = s B^\\top g x^\\top = 0$ and $\\partial L/\\partial B = s\\,g(Ax)^\\top = 0$,\n"
            "so nothing ever trains. Random values in both would start from a perturbed model."
        ),
        challenges=(1,),
        points=(
            "$B = 0$ makes $\\Delta W = BA = 0$, so training starts at the pretrained model",
            "The random $A$ gives $B$ a non-zero first gradient $s\\,g(Ax)^\\top$",
            "$A = 0$ with random $B$ would also work; zero $B$ is the paper's convention",
            "Both zero: both gradients are zero, so nothing ever trains",
        ),
    ),
    ConceptQuestion(
        id="lora.many-parameters-lora-add-d",
        topic=TOPIC,
        guide=GUIDE,
        prompt=(
            "How many parameters does LoRA add to a $d_\\text{in} \\times d_\\text{out}$ layer at rank $r$?"
        ),
        answer=(
            "$r(d_\\text{in} + d_\\text{out})$. For a square layer that is a fraction $2r/d$: 0.39 % at\n"
            "$r = 8$, $d = 4096$."
        ),
        challenges=(1,),
        points=(
            "$r(d_\\text{in} + d_\\text{out})$ parameters per layer",
            "A fraction $2r/d$ of a square layer: 0.39 % at $r = 8$, $d = 4096$",
        ),
    ),
    ConceptQuestion(
        id="lora.alpha-divide-r-rslora-change",
        topic=TOPIC,
        guide=GUIDE,
        prompt="What does $\\alpha$ do, why divide by $r$, and what does rsLoRA change?",
        answer=(
            "The LoRA path is multiplied by $\\alpha/r$. $\\alpha$ works like a learning-rate multiplier for\n"
            "that path. Dividing by $r$ keeps the update's size comparable across ranks, so you can set\n"
            "$\\alpha$ once and sweep $r$. rsLoRA shows that this over-corrects: the update shrinks like\n"
            "$1/\\sqrt r$, so large ranks learn no better than small ones. It uses $\\alpha/\\sqrt r$."
        ),
        challenges=(1,),
        points=(
            "The LoRA path is scaled by $\\alpha/r$; $\\alpha$ acts like a learning-rate multiplier for it",
            "Dividing by $r$ keeps the update's size comparable across ranks: set $\\alpha$ once, sweep $r$",
            "rsLoRA: $1/r$ over-corrects, so large ranks learn no better than small ones",
            "rsLoRA scales by $\\alpha/\\sqrt r$ instead",
        ),
    ),
    ConceptQuestion(
        id="lora.llama-7b-rank-16-q",
        topic=TOPIC,
        guide=GUIDE,
        prompt="LLaMA-7B with rank 16 on $q, k, v, o$: how many trainable parameters?",
        answer=(
            "32 layers × 4 matrices × $16 \\cdot (4096 + 4096)$ = 16,777,216, about 16.8 M, or 0.25 % of 6.7 B."
        ),
        challenges=(14,),
        points=(
            "Per matrix: $16 \\cdot (4096 + 4096) = 131{,}072$",
            "32 layers × 4 matrices × 131,072 = 16,777,216, about 16.8 M",
            "About 0.25 % of 6.7 B",
        ),
    ),
    ConceptQuestion(
        id="lora.inject-lora-return-lora-parameters",
        topic=TOPIC,
        guide=GUIDE,
        prompt=(
            "Why does `inject_lora` return the LoRA parameters instead of letting the caller use `model.parameters()`?"
        ),
        answer=(
            "`model.parameters()` also yields every frozen base weight. Passing those to the optimizer\n"
            "wastes optimizer state: AdamW allocates two moments per parameter, which is the memory LoRA is\n"
            "meant to save. Worse, if anything re-enables their gradients, they train silently. The\n"
            "returned list is exactly what should train, and it is also what to save."
        ),
        challenges=(4,),
        points=(
            "`model.parameters()` also yields every frozen base weight",
            "Giving those to AdamW allocates two moments each: the memory LoRA is meant to save",
            "If their gradients are re-enabled by mistake, they train silently",
            "The returned list is exactly what should train and what to save",
        ),
    ),
    ConceptQuestion(
        id="lora.dotted-names-named-modules-map",
        topic=TOPIC,
        guide=GUIDE,
        prompt=(
            "How do dotted names from `named_modules()` map onto `nn.Sequential` and `nn.ModuleList` children?"
        ),
        answer=(
            "Children of containers are named by their index: `encoder.2.branch.fc1` is attribute `branch`\n"
            "of child `2` of `encoder`. `model.get_submodule(name)` follows the dots. To replace a layer, get\n"
            'its parent (`name.rpartition(".")[0]`) and `setattr(parent, "fc1", new)`; a numeric last part\n'
            'works through `setattr` on a `Sequential` or `ModuleList` too. `getattr(model, "a.b")` does\n'
            "not follow dots."
        ),
        challenges=(4,),
        points=(
            "Container children are named by index: `encoder.2.branch.fc1`",
            '`model.get_submodule(name)` follows the dots; `getattr(model, "a.b")` does not',
            'Replace via the parent (`name.rpartition(".")[0]`) and `setattr(parent, last, new)`',
            "`setattr` with a numeric name works on `Sequential` and `ModuleList` too",
        ),
    ),
    ConceptQuestion(
        id="lora.goes-wrong-if-replace-modules",
        topic=TOPIC,
        guide=GUIDE,
        prompt="What goes wrong if you replace modules while iterating `named_modules()`?",
        answer=(
            "The generator walks the live tree. A replacement can be visited again (its `.base` is an\n"
            "`nn.Linear`, so it gets wrapped a second time: LoRA of LoRA), or it can change a dict during\n"
            "iteration and raise. Collect the names first, then replace."
        ),
        challenges=(10,),
        points=(
            "`named_modules()` is a generator over the live module tree",
            "A replacement can be visited again and wrapped twice (its `.base` is an `nn.Linear`): LoRA of LoRA",
            "Or a dict changes during iteration and raises",
            "Fix: collect the names first, then replace",
        ),
    ),
    ConceptQuestion(
        id="lora.merge-keep-adapters-separate-serving",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Merge or keep adapters separate when serving? What does each cost per token?",
        answer=(
            "Merged: a one-off $d_\\text{out} d_\\text{in} r$ multiply-adds, then exactly the base model's\n"
            "cost per token, but one adapter per copy of the weights. Switching adapters means\n"
            "unmerge + merge. Separate (dynamic): $2r(d_\\text{in} + d_\\text{out})$ extra FLOPs per token per\n"
            "layer plus extra kernels, and many adapters can share one base, even within one batch. Merge\n"
            "for one hot adapter; keep them separate for many tenants. The break-even point is in the\n"
            "[cost model](cost_model.md)."
        ),
        challenges=(12,),
        points=(
            "Merged: one-off $d_\\text{out} d_\\text{in} r$ multiply-adds, then exactly the base cost per token",
            "Merged allows one adapter per copy of the weights; switching means unmerge + merge",
            "Separate: $2r(d_\\text{in} + d_\\text{out})$ extra FLOPs per token per layer, plus extra kernels",
            "Separate adapters share one base, even within one batch",
            "Merge for one hot adapter, keep separate for many tenants",
        ),
    ),
    ConceptQuestion(
        id="lora.merge-unload-unload-each-return",
        topic=TOPIC,
        guide=GUIDE,
        prompt=("`merge_and_unload` or `unload`: what does each return, and when do you use which?"),
        answer=(
            "`merge_and_unload` folds every update into its weight and returns the plain model, with the\n"
            "adapted behaviour and the base model's cost: use it to ship one fine-tuned model, for example\n"
            "with `save_pretrained`. `unload` throws the adapters away and returns the base model as it was\n"
            "before adaptation, exactly (`torch.equal`) for layers that were never merged: use it to get the\n"
            "base back, say to attach another adapter. In both, the layer put back is the very module that was\n"
            "wrapped, so no peft_zoo class remains."
        ),
        challenges=(23,),
        points=(
            "`merge_and_unload` folds every update into its weight and returns the plain model",
            "Use it to ship one fine-tuned model at the base model's cost",
            "`unload` discards the adapters and returns the base exactly (`torch.equal`) for unmerged layers",
            "Both put back the very module that was wrapped: no peft_zoo class remains",
        ),
    ),
    ConceptQuestion(
        id="lora.lora-dora-ia-layer-merged",
        topic=TOPIC,
        guide=GUIDE,
        prompt=(
            "Why can a LoRA, DoRA or IA³ layer be merged, but not a bottleneck adapter with a non-linearity?"
        ),
        answer=(
            "A merge needs the adapted layer to stay one linear map, $y = W' x + b'$. LoRA adds $s\\,BA$ to\n"
            "$W_0$; IA³ scales rows or columns of $W_0$; DoRA rescales each row of $W_0 + s\\,BA$ to a learned norm. All of\n"
            "these are again a matrix of the same shape. A bottleneck adapter computes\n"
            "$h + W_\\text{up}\\,\\sigma(W_\\text{down} h)$. With $\\sigma$ = GELU or ReLU, that is not linear in\n"
            "$h$, so no matrix $W'$ equals it for every input, and writing it into a weight would change the\n"
            "function. Even with $\\sigma$ = identity, the adapter sits after a whole sublayer (attention or\n"
            "the FFN, with its own non-linearities and residual), not after one linear layer, so there is\n"
            "no single weight that could absorb it. The same goes for prefixes and virtual tokens: they add\n"
            "positions to the sequence, which no weight can express. That is why those methods keep an\n"
            "inference cost, and `merge_and_unload` refuses them with `pz.UnloadError`, changing nothing."
        ),
        challenges=(23,),
        points=(
            "Merging needs the layer to stay one linear map $y = W'x + b'$",
            "LoRA, IA³ and DoRA each give a matrix of the same shape as $W_0$",
            "A bottleneck adapter $h + W_\\text{up}\\sigma(W_\\text{down}h)$ is not linear in $h$",
            "Even with identity $\\sigma$ it sits after a whole sublayer, so no single weight can absorb it",
            "Prefixes and virtual tokens add sequence positions; `merge_and_unload` refuses them, changing nothing",
        ),
    ),
    ConceptQuestion(
        id="lora.happens-if-merge-lora-tied",
        topic=TOPIC,
        guide=GUIDE,
        prompt="What happens if you merge a LoRA on a tied `lm_head`?",
        answer=(
            "In GPT-2 (and many other language models), `lm_head.weight` is the same tensor as the input\n"
            "embedding `transformer.wte.weight`. Writing $W_0 + s\\,BA$ into it would also change every\n"
            "token's input embedding, which the adapter never trained, so the merged model would compute\n"
            "something different from the adapted one. peft_zoo checks this before changing anything:\n"
            "`merge_and_unload` raises `UnloadError` naming `lm_head` and the tied `transformer.wte.weight`.\n"
            "`unload` is allowed, since it writes no weight. To ship such a model, untie the head first (give\n"
            "it its own copy of the weight), or leave `lm_head` out of the targets; the head is usually a\n"
            "poor target anyway."
        ),
        challenges=(23,),
        points=(
            "In GPT-2, `lm_head.weight` is the same tensor as `transformer.wte.weight`",
            "Merging into it would also change every input embedding, which the adapter never trained",
            "`merge_and_unload` raises `UnloadError` naming both, before changing anything; `unload` is allowed",
            "Fix: untie the head (own copy of the weight) or leave `lm_head` out of the targets",
        ),
    ),
    ConceptQuestion(
        id="lora.after-merge-unload-check-export",
        topic=TOPIC,
        guide=GUIDE,
        prompt="After `merge_and_unload`, how do you check the export?",
        answer=(
            "Compare the exported model's outputs with the adapted model's on a fixed batch: they should\n"
            "agree within float32 rounding (the tests also check the result against PEFT's\n"
            "`merge_and_unload()`, with difference 0). Then check that no peft_zoo class is left\n"
            "(`type(m).__module__` of every module), save with `save_pretrained`, and reload with\n"
            "`from_pretrained` in a fresh environment without peft_zoo."
        ),
        challenges=(23,),
        points=(
            "Outputs on a fixed batch agree with the adapted model within float32 rounding",
            "No peft_zoo class is left (check `type(m).__module__` of every module)",
            "Save with `save_pretrained`, reload with `from_pretrained` in an environment without peft_zoo",
        ),
    ),
    ConceptQuestion(
        id="lora.save-adapters-separately-base-model",
        topic=TOPIC,
        guide=GUIDE,
        prompt=("Why save adapters separately from the base model, and what must match to load one?"),
        answer=(
            "An adapter is megabytes where the base is gigabytes. One base can serve many adapters, and an\n"
            "adapter file carries no copy of (possibly licensed) base weights. To load one you need the\n"
            "same base, the same set of adapted module names, and the same shapes (ranks, widths). The\n"
            "hyperparameters that are not stored in tensors must also match ($\\alpha$, rsLoRA, dropout,\n"
            "which targets). peft_zoo's `save_adapter` writes them in the safetensors header, and\n"
            "`load_adapter` checks every key, shape, dtype and hyperparameter before it copies anything.\n"
            "It also verifies a SHA-256 digest of the config and the tensor bytes, so a flipped bit in a\n"
            "copied file is refused instead of silently training from corrupt weights."
        ),
        challenges=(13,),
        points=(
            "An adapter is megabytes, the base gigabytes; one base serves many adapters",
            "An adapter file carries no copy of (possibly licensed) base weights",
            "Loading needs the same base, the same adapted module names and the same shapes",
            "Hyperparameters not in tensors must match too: $\\alpha$, rsLoRA, dropout, targets",
            "`load_adapter` checks keys, shapes, dtypes, hyperparameters and a SHA-256 digest before copying",
        ),
    ),
    ConceptQuestion(
        id="lora.cheap-checks-would-run-before",
        topic=TOPIC,
        guide=GUIDE,
        prompt=("Which cheap checks would you run before a long LoRA fine-tune, and what does each catch?"),
        answer=(
            "(1) The trainable fraction is small and no base parameter requires grad: catches a\n"
            "forgotten freeze. (2) The output equals the base model's at init, tested with $\\alpha \\ne r$:\n"
            "catches a non-zero $B$ and a scale applied to the wrong path. (3) A few steps on one batch\n"
            "lower the loss: catches a detached or unconnected LoRA path. (4) After perturbing $B$, the\n"
            "output differs from the base: catches an adapter that is not in the forward pass. Challenge 15\n"
            "asks you to write these checks."
        ),
        challenges=(15,),
        points=(
            "Trainable fraction small, no base parameter requires grad: catches a forgotten freeze",
            "Output equals the base at init with $\\alpha \\ne r$: catches non-zero $B$ or a misplaced scale",
            "A few steps on one batch lower the loss: catches a detached LoRA path",
            "Perturbing $B$ changes the output: catches an adapter missing from the forward pass",
        ),
    ),
    ConceptQuestion(
        id="lora.merge-unload-give-inference-lose",
        topic=TOPIC,
        guide=GUIDE,
        prompt="What does merge_and_unload give you at inference, and what do you lose?",
        answer=(
            "A plain model: no\n"
            "extra matmuls, no wrapper, files any library can load. You lose cheap adapter switching (one\n"
            "merged copy per adapter) and, in low precision, exact unmerging ($W + \\Delta - \\Delta \\ne W$\n"
            "after rounding; keep the original weights if you need them back)."
        ),
        challenges=(23,),
        points=(
            "Gain: a plain model, no extra matmuls or wrappers, loadable by any library",
            "Lose: cheap adapter switching (one merged copy per adapter)",
            "Lose: exact unmerging in low precision ($W + \\Delta - \\Delta \\ne W$ after rounding)",
        ),
    ),
    ConceptQuestion(
        id="lora.fan-fan-out-change-merging",
        topic=TOPIC,
        guide=GUIDE,
        prompt="What does fan_in_fan_out change when merging?",
        answer=(
            "GPT-2's `Conv1D` stores $(in, out)$ and\n"
            "computes $xW + b$, so the update $s\\,BA$ (shape $(out, in)$) is added transposed. Ignoring it\n"
            "fails loudly on a non-square matrix (a shape error) but silently on a square one such as\n"
            "`c_proj` ($768 \\times 768$): the merged model computes $x(W + s\\,BA)$ instead of\n"
            "$x(W + (s\\,BA)^\\top)$ and its outputs drift."
        ),
        challenges=(23,),
        points=(
            "GPT-2's `Conv1D` stores $(in, out)$ and computes $xW + b$",
            "So the update $s\\,BA$ of shape $(out, in)$ must be added transposed",
            "Ignoring it fails loudly on a non-square matrix, silently on a square one such as `c_proj`",
        ),
    ),
    ConceptQuestion(
        id="lora.adapters-cannot-merge-refuse-before",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Which adapters cannot merge, and why refuse before changing anything?",
        answer=(
            "Anything that is not\n"
            "a change of one weight matrix: bottleneck adapters with a non-linearity, prefix and prompt\n"
            "tuning (extra keys and values, or extra inputs). A refusal after half the layers were merged\n"
            "would leave a model that is neither adapted nor plain, so every layer is checked first and the\n"
            "error names each layer that cannot merge (challenge 23)."
        ),
        challenges=(23,),
        points=(
            "Cannot merge: anything that is not a change of one weight matrix",
            "Examples: bottleneck adapters with a non-linearity, prefix and prompt tuning",
            "Refusing halfway would leave a model neither adapted nor plain",
            "So every layer is checked first and the error names each layer that cannot merge",
        ),
    ),
)
