"""The interview questions of docs/oft.md; the guide's section is generated from here."""

from __future__ import annotations

from ..questions import ConceptQuestion

GUIDE = "oft.md"
TOPIC = "lora"

QUESTIONS = (
    ConceptQuestion(
        id="oft.oft-preserve-hyperspherical-energy",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why does OFT preserve hyperspherical energy?",
        answer=(
            "The hyperspherical energy of a layer's neurons (Liu et al., 2018,\n"
            "[arXiv:1805.09298](https://arxiv.org/abs/1805.09298)) is\n"
            "$\\sum_{i \\ne j} \\lVert \\hat w_i - \\hat w_j \\rVert^{-1}$ over the normalised neurons\n"
            "$\\hat w_i = w_i / \\lVert w_i \\rVert$: it depends only on the pairwise angles. OFT replaces every\n"
            "$w_i$ by $R w_i$ with the same orthogonal $R$, so\n"
            "$\\langle R w_i, R w_j \\rangle = w_i^\\top R^\\top R\\, w_j = \\langle w_i, w_j \\rangle$ and\n"
            "$\\lVert R w_i \\rVert = \\lVert w_i \\rVert$: every angle, hence the energy, is unchanged. An\n"
            "additive update $W_0 + \\Delta W$ has no such guarantee. Two caveats: with the Neumann\n"
            "approximation $R$ is only nearly orthogonal, and the guarantee is about the neurons *within* a\n"
            "layer, not about the function of the network."
        ),
        challenges=(27,),
        points=(
            "Hyperspherical energy depends only on pairwise angles between normalised neurons",
            "OFT maps every $w_i$ to $Rw_i$ with one orthogonal $R$",
            "$R^\\top R = I$ keeps every inner product and norm, hence every angle and the energy",
            "An additive update $W_0 + \\Delta W$ has no such guarantee",
            "Caveats: the Neumann $R$ is only nearly orthogonal; the guarantee is within a layer",
        ),
    ),
    ConceptQuestion(
        id="oft.cayley-transform-skew-symmetric",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why the Cayley transform, and why skew-symmetric?",
        answer=(
            "The map $Q \\mapsto (I - Q)(I + Q)^{-1}$ sends every skew-symmetric matrix to an orthogonal one\n"
            "(without eigenvalue $-1$), and $Q = 0$ to $I$. Skew matrices form a vector space, so they can be\n"
            "trained with any optimizer without projection, and $b(b-1)/2$ numbers parameterise each block\n"
            "exactly. Alternatives: the matrix exponential (exact, costlier) or Householder products."
        ),
        challenges=(27,),
        points=(
            "Cayley $(I - Q)(I + Q)^{-1}$ maps skew-symmetric $Q$ to an orthogonal matrix, $Q = 0$ to $I$",
            "Skew matrices form a vector space: any optimizer works without projection",
            "$b(b-1)/2$ numbers parameterise each block exactly",
            "Alternatives: the matrix exponential (exact, costlier) or Householder products",
        ),
    ),
    ConceptQuestion(
        id="oft.many-parameters-oft-add-compare",
        topic=TOPIC,
        guide=GUIDE,
        prompt="How many parameters does OFT add, and how does it compare with LoRA?",
        answer=(
            "$d_\\text{in}(b - 1)/2$ per layer: 11,904 for a $768$-input layer with $b = 32$, against LoRA's\n"
            "12,288 at $r = 8$ on a square layer. Unlike LoRA, the count does not grow with $d_\\text{out}$."
        ),
        challenges=(27,),
        points=(
            "$d_\\text{in}(b - 1)/2$ per layer",
            "11,904 for a 768-input layer with $b = 32$, against LoRA's 12,288 at $r = 8$",
            "Unlike LoRA, the count does not grow with $d_\\text{out}$",
        ),
    ),
    ConceptQuestion(
        id="oft.lose-block-diagonal-r-boft",
        topic=TOPIC,
        guide=GUIDE,
        prompt="What do you lose with block-diagonal $R$, and what does BOFT do about it?",
        answer=(
            "Features in different blocks never mix, so the reachable rotations are a small subgroup. BOFT\n"
            "composes several sparse orthogonal factors in a butterfly pattern, so information from every\n"
            "input feature can reach every other, at $O(d \\log d)$ parameters."
        ),
        challenges=(27,),
        points=(
            "With block-diagonal $R$, features in different blocks never mix",
            "The reachable rotations are a small subgroup",
            "BOFT composes sparse orthogonal factors in a butterfly pattern, so every feature reaches every other",
            "BOFT costs $O(d \\log d)$ parameters",
        ),
    ),
    ConceptQuestion(
        id="oft.oft-merged-unmerging-exact",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Can OFT be merged? Is unmerging exact?",
        answer=(
            "Yes: $W_0 R^\\top$ is an ordinary weight. Unmerging needs $R^{-\\top}$; for an exactly\n"
            "orthogonal $R$ that is $R$ itself, but PEFT's default Neumann form is only approximately\n"
            "orthogonal, so peft_zoo inverts, and the result is $W_0$ up to rounding."
        ),
        challenges=(27,),
        points=(
            "Merging works: $W_0 R^\\top$ is an ordinary weight",
            "Unmerging needs $R^{-\\top}$, which is $R$ only for an exactly orthogonal $R$",
            "PEFT's default Neumann form is approximate, so peft_zoo inverts: $W_0$ up to rounding",
        ),
    ),
)
