"""The interview questions of docs/vera.md; the guide's section is generated from here."""

from __future__ import annotations

from ..questions import ConceptQuestion

GUIDE = "vera.md"
TOPIC = "lora"

QUESTIONS = (
    ConceptQuestion(
        id="vera.vera-get-away-shared-random",
        topic=TOPIC,
        guide=GUIDE,
        prompt="How does VeRA get away with shared random matrices?",
        answer=(
            "Two facts. First, random projections preserve a lot: a random $A$ maps $x$ to $r$ random\n"
            "features that, for $r$ in the hundreds, keep most of the geometry of the input (the\n"
            "Johnson–Lindenstrauss intuition), and a random $B$ maps them back into random directions of the\n"
            "output space. Second, the trainable scaling is per layer and per coordinate: $\\lambda_d$ picks\n"
            "*which* of the $r$ random features matter for this layer, and $\\lambda_b$ sets how much each\n"
            "output row changes. Since $r$ is cheap ($r$ numbers per layer), it can be large, so the random\n"
            "basis is rich enough that a good per-layer selection exists. Sharing loses little: a separate\n"
            "random pair per layer would be no better suited to the task than the shared one, only more\n"
            "memory. What is lost compared with LoRA is the ability to *learn* the directions."
        ),
        challenges=(24,),
        points=(
            "Random projections with $r$ in the hundreds keep most of the input's geometry",
            "Trainable $\\lambda_d$ selects which random features matter per layer",
            "$\\lambda_b$ sets how much each output row changes",
            "$r$ costs only $r$ numbers per layer, so it can be large and the random basis rich",
            "Lost against LoRA: the ability to learn the directions",
        ),
    ),
    ConceptQuestion(
        id="vera.many-trainable-parameters-vera-add",
        topic=TOPIC,
        guide=GUIDE,
        prompt=(
            "How many trainable parameters does VeRA add to BERT-base's query and value projections with $r = 256$, and what does LoRA at $r = 8$ add?"
        ),
        answer=(
            "VeRA: $24 \\times (256 + 768) = 24{,}576$. LoRA: $24 \\times 8 \\times (768 + 768) = 294{,}912$,\n"
            "twelve times more. VeRA also keeps a frozen, shared pair of $2 \\times 256 \\times 768 = 393{,}216$\n"
            "numbers, which the seed can regenerate."
        ),
        challenges=(24,),
        points=(
            "VeRA: $24 \\times (256 + 768) = 24{,}576$",
            "LoRA at $r = 8$: $24 \\times 8 \\times (768 + 768) = 294{,}912$, twelve times more",
            "VeRA also keeps a frozen shared pair of 393,216 numbers, regenerable from the seed",
        ),
    ),
    ConceptQuestion(
        id="vera.lambda-b-zero-lambda-d",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why is $\\lambda_b$ zero and $\\lambda_d$ not?",
        answer=(
            "$\\lambda_b = 0$ makes $\\Delta W = 0$, so training starts at the pretrained model. Its gradient\n"
            "is $g \\odot B \\Lambda_d A x$, which needs $\\lambda_d \\neq 0$. If both were zero, each gradient\n"
            "would contain the other vector as a factor and stay zero: a saddle, like LoRA with $A = B = 0$."
        ),
        challenges=(24,),
        points=(
            "$\\lambda_b = 0$ makes $\\Delta W = 0$, so training starts at the pretrained model",
            "$\\lambda_b$'s gradient $g \\odot B \\Lambda_d A x$ needs $\\lambda_d \\ne 0$",
            "Both zero: each gradient has the other as a factor, a saddle like LoRA with $A = B = 0$",
        ),
    ),
    ConceptQuestion(
        id="vera.vera-merged-two-vera-adapters",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Can VeRA be merged? Can two VeRA adapters share a batch?",
        answer=(
            "Yes to merging: $\\Delta W$ is a fixed matrix once trained, so $W_0 + \\Delta W$ is an ordinary\n"
            "weight. For a mixed batch, all adapters of the same seed share $A$ and $B$, so per-sample\n"
            "adapters only change two vectors: the random projections can be computed once for the whole\n"
            "batch and only the elementwise scalings differ per sample."
        ),
        challenges=(24,),
        points=(
            "Merging works: the trained $\\Delta W$ is a fixed matrix",
            "Adapters of the same seed share $A$ and $B$",
            "In a mixed batch, random projections run once; only the elementwise scalings differ per sample",
        ),
    ),
    ConceptQuestion(
        id="vera.must-travel-vera-adapter",
        topic=TOPIC,
        guide=GUIDE,
        prompt="What must travel with a VeRA adapter?",
        answer=(
            "The vectors, the rank, and either the pair or the seed *and* the sizes $(d_\\text{in}^{\\max},\n"
            "d_\\text{out}^{\\max})$ it was drawn for: the pair for another target set (another maximum size)\n"
            "is a different draw. peft_zoo records `projection_prng_key` and `projection_shape` in\n"
            "`adapter_config()`."
        ),
        challenges=(24,),
        points=(
            "The vectors and the rank",
            "The pair, or the seed and the sizes $(d_\\text{in}^{\\max}, d_\\text{out}^{\\max})$ it was drawn for",
            "peft_zoo records `projection_prng_key` and `projection_shape` in `adapter_config()`",
        ),
    ),
)
