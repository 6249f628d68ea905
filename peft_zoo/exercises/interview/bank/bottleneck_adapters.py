"""The interview questions of docs/bottleneck_adapters.md; the guide's section is generated from here."""

from __future__ import annotations

from ..questions import ConceptQuestion

GUIDE = "bottleneck_adapters.md"
TOPIC = "adapters"

QUESTIONS = (
    ConceptQuestion(
        id="bottleneck_adapters.where-each-preset-put-adapter",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Where does each preset put the adapter in a BERT layer?",
        answer=(
            "Houlsby: on both sublayer\n"
            "outputs, after the output dense and dropout, before the residual and LayerNorm:\n"
            "$\\mathrm{LN}(h + f(h) + x)$. Pfeiffer: only after the FFN, on the normalised sum\n"
            "$\\mathrm{LN}(h + x)$, with the residual $h$ and then the layer's residual and LayerNorm again.\n"
            "Parallel: beside the FFN, reading its input, $\\mathrm{LN}(h + 4 f(x) + x)$."
        ),
        challenges=(21,),
        points=(
            "Houlsby: on both sublayer outputs, before the residual and LayerNorm: $\\mathrm{LN}(h + f(h) + x)$",
            "Pfeiffer: only after the FFN, on the normalised sum $\\mathrm{LN}(h + x)$",
            "Parallel: beside the FFN, reading its input: $\\mathrm{LN}(h + 4f(x) + x)$",
        ),
    ),
    ConceptQuestion(
        id="bottleneck_adapters.many-parameters-bert-base-d",
        topic=TOPIC,
        guide=GUIDE,
        prompt=("How many parameters for BERT-base ($d = 768$, 12 layers) with reduction factor 16?"),
        answer=(
            "$r = 48$,\n"
            "one adapter $2 \\cdot 768 \\cdot 48 + 48 + 768 = 74{,}544$; Pfeiffer $12 \\times 74{,}544 = 894{,}528$\n"
            "(0.8 % of 110 M), Houlsby twice that; the parallel preset ($r = 384$) $12 \\times 590{,}976 = 7{,}091{,}712$."
        ),
        challenges=(21,),
        points=(
            "Reduction factor 16 gives $r = 48$; one adapter has 74,544 parameters",
            "Pfeiffer: $12 \\times 74{,}544 = 894{,}528$, 0.8 % of 110 M",
            "Houlsby: twice Pfeiffer",
            "Parallel preset ($r = 384$): 7,091,712",
        ),
    ),
    ConceptQuestion(
        id="bottleneck_adapters.serial-adapter-not-merged-into",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why can a serial adapter not be merged into the weights like LoRA?",
        answer=(
            "$f$ has a\n"
            "non-linearity between the projections, so $h + f(h)$ is not a linear map of the sublayer's\n"
            "input; every forward pass pays for the extra two matrix products (`merge_and_unload` refuses\n"
            'them). Only a `"linear"` adapter placed on $h$ alone could be folded into the output projection.'
        ),
        challenges=(21,),
        points=(
            "A non-linearity sits between the projections, so $h + f(h)$ is not linear",
            "Every forward pays for two extra matrix products; `merge_and_unload` refuses",
            'Only a `"linear"` adapter on $h$ alone could be folded into the output projection',
        ),
    ),
    ConceptQuestion(
        id="bottleneck_adapters.original-ln-before-true-change",
        topic=TOPIC,
        guide=GUIDE,
        prompt="What does `original_ln_before=True` change in a pre-LN model?",
        answer=(
            "There is no LayerNorm after\n"
            "the residual to apply, so AdapterHub's adapter reads the raw sum $h + x$, whose scale grows with\n"
            "depth; in a post-LN model it reads the normalised $\\mathrm{LN}(h + x)$."
        ),
        points=(
            "In a pre-LN model there is no LayerNorm after the residual to apply",
            "The adapter reads the raw sum $h + x$, whose scale grows with depth",
            "In a post-LN model it reads the normalised $\\mathrm{LN}(h + x)$",
        ),
    ),
    ConceptQuestion(
        id="bottleneck_adapters.check-adapter-implementation-equals-reference",
        topic=TOPIC,
        guide=GUIDE,
        prompt="How do you check that an adapter implementation equals a reference library?",
        answer=(
            "Same base\n"
            "weights, the reference's adapter weights made random (so no part is an identity by accident),\n"
            "moved through the reference's own file format; compare the outputs *and* every adapter\n"
            "gradient, for drawn configs, in both directions of the file format (below)."
        ),
        points=(
            "Same base weights, with the reference's adapter weights made random",
            "Move the weights through the reference's own file format",
            "Compare outputs and every adapter gradient for drawn configs",
            "Test both directions of the file format",
        ),
    ),
    ConceptQuestion(
        id="bottleneck_adapters.houlsby-s-adapter-sit-before",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why does Houlsby's adapter sit before the residual and the LayerNorm?",
        answer=(
            "There it changes only what\n"
            "the sublayer adds to the residual stream, $\\mathrm{LN}(h + f(h) + x)$: the LayerNorm still normalises the\n"
            "sum as in pretraining, and with a zero up-projection the layer is exactly the pretrained one. After the\n"
            "LayerNorm the adapter's output would reach the next layer un-normalised. In the AdapterFusion paper's\n"
            "architecture search (Pfeiffer et al., 2021, arXiv:2005.00247) one adapter after the FFN did about as\n"
            "well as Houlsby's pair at half the parameters and less latency, which is why `SeqBnConfig` is\n"
            "AdapterHub's default."
        ),
        challenges=(21,),
        points=(
            "It changes only what the sublayer adds to the residual stream: $\\mathrm{LN}(h + f(h) + x)$",
            "The LayerNorm still normalises the sum as in pretraining",
            "With a zero up-projection the layer is exactly the pretrained one",
            "After the LayerNorm, the adapter's output would reach the next layer un-normalised",
            "One adapter after the FFN did about as well at half the parameters: AdapterHub's default",
        ),
    ),
    ConceptQuestion(
        id="bottleneck_adapters.initialise-up-projection-zero",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why initialise the up-projection at zero?",
        answer=(
            "Then every adapter returns its residual and the adapted\n"
            "model *is* the pretrained model at step 0: training starts from the pretrained function, and the\n"
            "cheapest test of a placement (adapted at init equals base) can pass. With a random up-projection the\n"
            'frozen layers see perturbed inputs from the first step. AdapterHub\'s default `init_weights="bert"`\n'
            "draws $\\mathcal{N}(0, 0.02^2)$ for both projections, close to but not equal to the base;\n"
            '`"mam_adapter"` zeros the up-projection.'
        ),
        challenges=(21,),
        points=(
            "Every adapter returns its residual, so the model at step 0 is the pretrained model",
            'Then the cheap test "adapted at init equals base" can pass',
            "A random up-projection feeds perturbed inputs to the frozen layers from the first step",
            'AdapterHub\'s `"bert"` init draws $\\mathcal{N}(0, 0.02^2)$ for both; `"mam_adapter"` zeros the up-projection',
        ),
    ),
)
