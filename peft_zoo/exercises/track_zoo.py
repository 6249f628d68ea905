"""Part four of the track (challenges 24-27): the other weight-update methods of the zoo.

VeRA (one frozen random pair shared by every layer, two trainable vectors per layer), LoHa
(a Hadamard product of two low-rank products), LoKr (a Kronecker product) and OFT (a
block-diagonal orthogonal rotation through the Cayley transform), each written by hand and
graded against the reference answer and peft_zoo's own layers (``peft_zoo.vera``, ``loha``,
``lokr``, ``oft``, equal to Hugging Face PEFT's). The manifest (:mod:`.manifest`) joins the
parts into one track.
"""

from __future__ import annotations

from .challenge import Challenge

ZOO: tuple[Challenge, ...] = (
    Challenge(
        24,
        "vera_linear",
        "vera_linear: VeRA, one frozen seeded random pair shared by every layer, two trainable vectors",
        2,
        ("vera_projections", "VeRALinear", "vera_layers"),
        prerequisites=(1, 19),
        hints=(
            "vera_projections: g = torch.Generator().manual_seed(seed); A = torch.empty(r, in).uniform_(-b, b, "
            "generator=g) with b = sqrt(6 / in), THEN B = torch.empty(out, r).uniform_(-b, b, generator=g) with "
            "b = sqrt(6 / r). Same generator, A first: the pair is a pure function of the seed.",
            "A and B are frozen: self.register_buffer('vera_A', vera_A) (no nn.Parameter, no copy). The "
            "trainable part is vera_lambda_b = zeros(out) and vera_lambda_d = full((r,), d_initial).",
            "Each layer uses the top-left corner of the shared pair: A[:, :in] and B[:out, :]. "
            "forward: h = lambda_d * F.linear(x, A_s); return base(x) + lambda_b * F.linear(h, B_s).",
            "vera_layers: in_max = max(in_features), out_max = max(out_features) over the layers, ONE "
            "vera_projections(rank, in_max, out_max, seed), the same two tensors handed to every VeRALinear.",
        ),
        interview=(
            "VeRA trains r + out numbers per layer where LoRA trains r (in + out): where did the rest go, "
            "and why can r be 256 or more at almost no cost?",
            "Why start lambda_b at zero and lambda_d at a nonzero constant? What happens if both are zero?",
            "The shared pair is random and frozen: what must you save to reproduce it, and how do layers "
            "of different shapes share one pair?",
        ),
    ),
    Challenge(
        25,
        "loha_linear",
        "loha_linear: LoHa, a Hadamard product of two low-rank products (rank up to r²)",
        2,
        ("LoHaLinear",),
        prerequisites=(1,),
        hints=(
            "Four parameters, PEFT's names: hada_w1_a, hada_w2_a (out, r) and hada_w1_b, hada_w2_b (r, in). "
            "Kaiming-uniform (a = sqrt(5)) for three of them and hada_w2_b = 0, so W2a W2b = 0 and ΔW = 0.",
            "delta_weight: scale * (W1a @ W1b) * (W2a @ W2b): two (out, in) products multiplied ELEMENTWISE, "
            "with scale = alpha / r (alpha defaults to r). Not alpha / r², although the rank reaches r².",
            "forward: base(x) + F.linear(x, ΔW). LoHa has no cheap factored form: build ΔW (out, in) each time.",
            "Rank dropout (training only): keep each OUTPUT row of ΔW with probability 1 - p, mask = "
            "(torch.rand(out) > p).to(ΔW.dtype), divide by mask.mean() (if > 0), then ΔW * mask[:, None].",
        ),
        interview=(
            "Why does the Hadamard product of two rank-r matrices reach rank r², and what does that buy "
            "against LoRA at the same number of parameters?",
            "Which factor must start at zero, why only one, and what would happen if all four did?",
            "LoHa cannot be applied as x A^T B^T like LoRA: what does that cost per forward, and when "
            "does merging pay off?",
        ),
    ),
    Challenge(
        26,
        "lokr_linear",
        "lokr_linear: LoKr, a Kronecker-product update with a decomposition factor and a low-rank factor",
        3,
        ("factorization", "LoKrLinear"),
        prerequisites=(25,),
        hints=(
            "factorization(dim, factor): a factor > 0 that divides dim gives (factor, dim // factor) as is. "
            "Otherwise m = the largest divisor of dim with m * m <= dim (and m <= factor when factor > 0), "
            "and the answer is (m, dim // m): 12 -> (3, 4), 7 -> (1, 7), (12, factor=2) -> (2, 6).",
            "Shapes: (a, b) = factorization(out, f), (c, d) = factorization(in, f); lokr_w1 is (a, c) and "
            "starts at zero; W2 is (b, d), Kaiming-uniform, so ΔW = 0 at init.",
            "W2 is stored whole as lokr_w2 (b, d) when r >= max(b, d) / 2, else as lokr_w2_a (b, r) @ "
            "lokr_w2_b (r, d): PEFT's rule. Use the product, not one of its halves.",
            "delta_weight: scale * torch.kron(W1, W2), (a b, c d) = (out, in): block (i, j) is W1[i, j] * W2. "
            "W1 comes first; scale = alpha / r. forward: base(x) + F.linear(x, ΔW).",
        ),
        interview=(
            "What is the rank of W1 ⊗ W2, and how many parameters does a full-rank update of a 4096 x 4096 "
            "matrix cost with LoKr?",
            "How does the decomposition factor change the shapes of W1 and W2, and why does the automatic "
            "choice pick the divisors closest to the square root?",
            "Why is only W1 zero at initialisation, and what does PEFT's 'lycoris' init do instead?",
        ),
    ),
    Challenge(
        27,
        "oft_linear",
        "oft_linear: OFT, a block-diagonal orthogonal rotation through the Cayley transform, and merge",
        3,
        ("skew_symmetric", "cayley", "OFTLinear"),
        prerequisites=(12,),
        hints=(
            "skew_symmetric(vec, b): rows, cols = torch.triu_indices(b, b, 1); U = zeros (n, b, b); "
            "U[:, rows, cols] = vec; return U - U.transpose(-2, -1). Q = -Q^T, so the Cayley transform is orthogonal.",
            "cayley(Q) = (I - Q)(I + Q)^{-1}, the convention of peft_zoo.oft and PEFT's exact branch: "
            "torch.linalg.solve(I + Q, I - Q, left=False) solves X (I + Q) = I - Q.",
            "rotation(): torch.block_diag(*cayley(skew_symmetric(oft_R, b))), block 0 at the top left: "
            "(in, in). oft_R starts at zero, so R = I and the layer equals its base.",
            "forward rotates the input as a row vector: base(x @ R) = W0 R^T x + b. merge writes W0 R^T "
            "into base.weight (not W0 R) and sets merged; a merged forward is just base(x).",
        ),
        interview=(
            "Why does OFT rotate the input space with an orthogonal matrix rather than add a low-rank "
            "update? What does it preserve (hyperspherical energy)?",
            "Why the Cayley transform, what makes (I - Q)(I + Q)^{-1} orthogonal, and what changes if you "
            "swap the two factors?",
            "Block-diagonal R with r blocks of size b: how many trainable parameters, what does a block "
            "mix, and how do you merge it into W0?",
        ),
    ),
)
