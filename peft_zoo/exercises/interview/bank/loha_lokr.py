"""The interview questions of docs/loha_lokr.md; the guide's section is generated from here."""

from __future__ import annotations

from ..questions import ConceptQuestion

GUIDE = "loha_lokr.md"
TOPIC = "lora"

QUESTIONS = (
    ConceptQuestion(
        id="loha_lokr.kronecker-trick-lokr",
        topic=TOPIC,
        guide=GUIDE,
        prompt="What is the Kronecker trick in LoKr?",
        answer=(
            "$A \\otimes B$ for $A \\in \\mathbb{R}^{a \\times c}$, $B \\in \\mathbb{R}^{b \\times d}$ is the\n"
            "$ab \\times cd$ block matrix whose block $(i, j)$ is $A_{ij} B$. Its rank is the product of the two\n"
            "ranks, and its size the product of the sizes, while its parameter count is the *sum*\n"
            "$ac + bd$. So a $768 \\times 768$ update can be built from a $24 \\times 24$ and a $32 \\times 32$\n"
            "matrix, 1,600 numbers, and still have full rank 768. It also never needs forming for a matrix\n"
            "product: with $x \\in \\mathbb{R}^{cd}$ reshaped row-major into $X \\in \\mathbb{R}^{c \\times d}$,\n"
            "$(A \\otimes B)\\,x$ is $A X B^\\top \\in \\mathbb{R}^{a \\times b}$ flattened row-major, two small\n"
            "matrix products instead of one large one, which is how Kronecker layers can run fast.\n"
            "(peft_zoo, like PEFT, forms $\\Delta W$ explicitly: simpler, and merging needs it anyway.)"
        ),
        challenges=(26,),
        points=(
            "$A \\otimes B$ is the block matrix with blocks $A_{ij}B$",
            "Rank and size multiply, while the parameter count is the sum $ac + bd$",
            "A full-rank $768 \\times 768$ update from $24 \\times 24$ and $32 \\times 32$: 1,600 numbers",
            "$(A \\otimes B)x = A X B^\\top$ flattened: two small matmuls, no need to form the product",
        ),
    ),
    ConceptQuestion(
        id="loha_lokr.loha-reach-rank-r-2",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why can LoHa reach rank $r^2$, and what does it cost?",
        answer=(
            "Write $W_{1a}W_{1b} = \\sum_i u_i v_i^\\top$ and $W_{2a}W_{2b} = \\sum_j p_j q_j^\\top$. Their\n"
            "Hadamard product is $\\sum_{i,j} (u_i \\odot p_j)(v_i \\odot q_j)^\\top$, a sum of $r^2$ rank-one\n"
            "terms. With $2r(d_\\text{in} + d_\\text{out})$ parameters that is rank $r^2$ against $2r$ for LoRA.\n"
            "The cost: no factored forward pass ($x \\mapsto B(Ax)$ has no Hadamard analogue), so each step\n"
            "builds a dense $(d_\\text{out}, d_\\text{in})$ matrix, and the set of reachable updates is\n"
            "structured (sums of elementwise products), not every rank-$r^2$ matrix."
        ),
        challenges=(25,),
        points=(
            "The Hadamard product of two rank-$r$ matrices is a sum of $r^2$ rank-one terms",
            "$2r(d_\\text{in} + d_\\text{out})$ parameters reach rank $r^2$, against $2r$ for LoRA",
            "Cost: no factored forward; each step builds a dense $(d_\\text{out}, d_\\text{in})$ matrix",
            "Reachable updates are structured, not every rank-$r^2$ matrix",
        ),
    ),
    ConceptQuestion(
        id="loha_lokr.exactly-one-factor-initialised-zero",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why is exactly one factor initialised to zero?",
        answer=(
            "To start from the pretrained model, $\\Delta W$ must be 0; to train, some gradient must be\n"
            "non-zero. Zeroing one factor of one product does both: the gradient of the zero factor\n"
            "contains only non-zero factors. Zero two (both factors of a product, or $W_1$ and $W_2$ in LoKr)\n"
            "and every gradient contains a zero factor: a saddle point."
        ),
        challenges=(25, 26),
        points=(
            "$\\Delta W$ must start at 0 to start from the pretrained model",
            "Zeroing one factor of one product keeps some gradient non-zero",
            "Zeroing two factors makes every gradient contain a zero: a saddle point",
        ),
    ),
    ConceptQuestion(
        id="loha_lokr.loha-lokr-lora-fixed-budget",
        topic=TOPIC,
        guide=GUIDE,
        prompt=("LoHa, LoKr or LoRA for a fixed budget of 300 K parameters on BERT-base's attention?"),
        answer=(
            "LoRA at $r = 8$ on `query` and `value` uses 294,912 and reaches rank 8 per layer. LoHa at $r = 4$\n"
            "uses the same and reaches rank 16, at the cost of a dense $\\Delta W$ per step. LoKr reaches full\n"
            "rank with about an eighth of that budget, so it can cover every linear layer instead, but its updates are\n"
            "Kronecker-structured. Which wins is empirical; the rank argument only says which updates are\n"
            "*reachable*."
        ),
        challenges=(25, 26),
        points=(
            "LoRA $r = 8$ on query and value: 294,912 parameters, rank 8",
            "LoHa $r = 4$: same budget, rank 16, but a dense $\\Delta W$ per step",
            "LoKr reaches full rank on about an eighth of the budget, so it can cover every linear layer",
            "Which wins is empirical; rank only says which updates are reachable",
        ),
    ),
    ConceptQuestion(
        id="loha_lokr.decompose-factor-control",
        topic=TOPIC,
        guide=GUIDE,
        prompt="What does `decompose_factor` control?",
        answer=(
            "How each dimension splits into the two Kronecker sizes. The default picks sizes near\n"
            "$\\sqrt n$ (balanced $W_1$ and $W_2$, fewest parameters). A small factor makes $W_1$ small and\n"
            "$W_2$ large (then $W_2$ is usually stored low-rank, and the update looks like a few repeated\n"
            "low-rank blocks); a factor equal to both dimensions makes $W_2$ a single number and $W_1$ the\n"
            "whole update."
        ),
        challenges=(26,),
        points=(
            "It sets how each dimension splits into the two Kronecker sizes",
            "Default: sizes near $\\sqrt n$, balanced factors, fewest parameters",
            "A small factor gives a small $W_1$ and a large (often low-rank) $W_2$",
            "A factor equal to both dimensions makes $W_2$ a scalar and $W_1$ the whole update",
        ),
    ),
)
