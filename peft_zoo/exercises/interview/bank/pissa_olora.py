"""The interview questions of docs/pissa_olora.md; the guide's section is generated from here."""

from __future__ import annotations

from ..questions import ConceptQuestion

GUIDE = "pissa_olora.md"
TOPIC = "lora"

QUESTIONS = (
    ConceptQuestion(
        id="pissa_olora.initialise-principal-singular-vectors-pissa",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why initialise from the principal singular vectors (PiSSA)?",
        answer=(
            "The directions with the largest singular values carry most of what the layer does (by the\n"
            "Eckart–Young theorem, the top-$r$ SVD part is the best rank-$r$ approximation of $W_0$).\n"
            "Putting them in the trainable factors means fine-tuning adjusts the layer's most important\n"
            "directions from step one, with gradients of a useful size, instead of growing an update out of\n"
            "zero along a random $A$. The frozen remainder holds the many small components. The model still\n"
            "starts exactly at the pretrained function, because $W_\\text{res} + s\\,BA = W_0$. Two side\n"
            "benefits: $A$ and $B$ start balanced (each holds $\\sqrt{S}$), and quantising the residual, whose\n"
            "range no longer includes the largest components, loses less than quantising $W_0$."
        ),
        challenges=(29,),
        points=(
            "The top-$r$ SVD part is the best rank-$r$ approximation of $W_0$ (Eckart–Young)",
            "Training adjusts the most important directions from step one, with useful gradient sizes",
            "The frozen residual holds the many small components; $W_\\text{res} + s\\,BA = W_0$",
            "$A$ and $B$ start balanced, each holding $\\sqrt S$",
            "Quantising the residual loses less than quantising $W_0$",
        ),
    ),
    ConceptQuestion(
        id="pissa_olora.pissa-change-model-initialisation",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Does PiSSA change the model at initialisation?",
        answer=(
            "No: $W_\\text{res} + s\\,BA = W_0$ exactly in real arithmetic, and in float32 the outputs match to\n"
            "about $10^{-7}$ relative. What changes is the *parameterisation*, hence the gradients and the\n"
            "optimizer's trajectory."
        ),
        challenges=(29,),
        points=(
            "No: $W_\\text{res} + s\\,BA = W_0$ exactly in real arithmetic",
            "In float32 outputs match to about $10^{-7}$ relative",
            "The parameterisation changes, hence the gradients and the optimizer's path",
        ),
    ),
    ConceptQuestion(
        id="pissa_olora.pissa-lora-same-parameters-same",
        topic=TOPIC,
        guide=GUIDE,
        prompt="PiSSA vs LoRA: same parameters, same cost per step?",
        answer=(
            "Same shapes, same forward and backward cost. Extra: one SVD per layer at the start, and a\n"
            "modified base that must travel with the adapter (or a conversion to rank $2r$)."
        ),
        challenges=(29,),
        points=(
            "Same shapes, same forward and backward cost",
            "Extra: one SVD per layer at the start",
            "The modified base must travel with the adapter, or be converted to rank $2r$",
        ),
    ),
    ConceptQuestion(
        id="pissa_olora.converted-adapter-rank-2r-2",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why is the converted adapter rank $2r$, and why $2\\alpha$?",
        answer=(
            "The trained layer is $W_0 - s\\,B_0A_0 + s\\,BA$, so relative to $W_0$ the update is\n"
            "$s\\,(BA - B_0A_0)$, a difference of two rank-$r$ products: stack them into one rank-$2r$ pair.\n"
            "Doubling the rank halves $\\alpha/r$; doubling $\\alpha$ keeps the scale (with rsLoRA,\n"
            "$\\alpha/\\sqrt{r}$ needs $\\sqrt 2\\,\\alpha$)."
        ),
        challenges=(29,),
        points=(
            "Relative to $W_0$ the update is $s(BA - B_0A_0)$",
            "That is two rank-$r$ products stacked into one rank-$2r$ pair",
            "Doubling the rank halves $\\alpha/r$, so $\\alpha$ doubles to keep the scale",
            "With rsLoRA, $\\alpha/\\sqrt r$ needs $\\sqrt 2\\,\\alpha$",
        ),
    ),
    ConceptQuestion(
        id="pissa_olora.pissa-olora",
        topic=TOPIC,
        guide=GUIDE,
        prompt="PiSSA or OLoRA?",
        answer=(
            "PiSSA picks the directions by importance (singular values), at the price of an SVD (or a\n"
            "randomized one). OLoRA's QR is cheaper and gives an orthonormal $B$, but the leading QR columns\n"
            "are just the first columns of $W_0$ orthogonalised, not its most important directions."
        ),
        challenges=(29,),
        points=(
            "PiSSA picks directions by singular value, at the cost of an SVD",
            "OLoRA's QR is cheaper and gives an orthonormal $B$",
            "OLoRA's leading columns are the first columns of $W_0$ orthogonalised, not the most important",
        ),
    ),
    ConceptQuestion(
        id="pissa_olora.fast-pissa-niter-k-give",
        topic=TOPIC,
        guide=GUIDE,
        prompt="How fast is `pissa_niter_K`, and what does it give up?",
        answer=(
            "A randomized SVD of rank $r$ costs about $O(d_\\text{in} d_\\text{out}\\, r\\, K)$ instead of a full\n"
            "SVD's $O(d_\\text{in} d_\\text{out} \\min(d_\\text{in}, d_\\text{out}))$. The top-$r$ subspace is\n"
            "approximate (better with more iterations $K$, and when the spectrum decays fast) and depends on\n"
            "the random seed, but the output at initialisation is still the base's (up to rounding): the\n"
            "residual is computed from whatever factors were found."
        ),
        challenges=(29,),
        points=(
            "Randomized SVD costs about $O(d_\\text{in} d_\\text{out} r K)$",
            "A full SVD costs $O(d_\\text{in} d_\\text{out} \\min(d_\\text{in}, d_\\text{out}))$",
            "The top-$r$ subspace is approximate and depends on the seed",
            "The output at initialisation is still the base's: the residual uses the factors found",
        ),
    ),
)
