"""Part five of the track (challenges 28-30): where the rank goes and where LoRA starts.

AdaLoRA's SVD-form update with its importance scores and cubic budget, PiSSA and OLoRA
(the adapter starts from the weight's principal part) with the conversion back to a plain
LoRA, and LoRA on ``nn.Embedding`` and ``nn.Conv2d``. The manifest (:mod:`.manifest`) joins
the parts into one track.
"""

from __future__ import annotations

from .challenge import Challenge

ZOO_RANK: tuple[Challenge, ...] = (
    Challenge(
        28,
        "adalora_svd",
        "adalora_svd: AdaLoRA's SVD-form update, orthogonality penalty, smoothed importance and cubic budget",
        3,
        ("SVDLinear", "orthogonal_regulariser", "ImportanceTracker", "budget_schedule", "mask_to_budget"),
        prerequisites=(1, 12),
        hints=(
            "lora_E is (r, 1), so lora_A * lora_E multiplies row i of Q by λ_i: delta = scale * "
            "(lora_B @ (lora_A * lora_E)); forward: h = x @ (lora_A * lora_E).T, then base(x) + (h @ lora_B.T) * scale.",
            "The penalty is PEFT's, not the paper's: torch.linalg.norm(Q @ Q.T - I) and torch.linalg.norm(P.T @ P - I) "
            "(UNsquared, both (r, r)) for every layer, then the mean of all 2 x layers norms.",
            "update(): ipt = (param * param.grad).abs(); Ī = β1 Ī + (1 - β1) ipt FIRST, then U = β2 U + (1 - β2) "
            "|ipt - Ī| with that new Ī. score = Ī * U. Triplet i: s_E[i, 0] + s_A[i].mean() + s_B[:, i].mean().",
            "Schedule: step <= tinit -> (init, False); step > T - tfinal -> (target, True); else progress = "
            "(step - tinit) / (T - tfinal - tinit), int((init - target) * (1 - progress) ** 3 + target), step % deltaT == 0.",
            "Masking: k = init_bgt - budget; threshold = torch.kthvalue(torch.cat(all scores), k).values; "
            "lora_E[score <= threshold] = 0. Only λ: P and Q stay, so a pruned triplet can come back.",
        ),
        interview=(
            "Why does AdaLoRA parameterise the update as P Λ Q instead of B A, and why prune singular values "
            "rather than whole rows of B and A?",
            "What do the smoothing (EMA) and the uncertainty term add to the plain sensitivity |w · grad|, "
            "and why is a single batch's sensitivity a poor importance score?",
            "Sketch the cubic budget schedule: why a warm-up before pruning, why a final phase with the "
            "pattern fixed, and why fall fast early and slowly late?",
        ),
    ),
    Challenge(
        29,
        "pissa_init",
        "pissa_init: PiSSA and OLoRA start the adapter from the weight's principal part; back to plain LoRA",
        2,
        ("pissa_init", "olora_init", "pissa_to_lora"),
        prerequisites=(1, 12),
        hints=(
            "u, s, vh = torch.linalg.svd(W, full_matrices=False): W = u diag(s) vh. Keep the first r: u[:, :r], "
            "s[:r], vh[:r] (rows of vh are the right singular vectors).",
            "Fold the scale in before the square root: sr = s[:r] / scale, A = diag(sqrt(sr)) @ vh[:r], "
            "B = u[:, :r] @ diag(sqrt(sr)); then scale * B @ A is the principal part whatever alpha is.",
            "The base keeps only the residual: W_res = W - scale * B @ A, so W_res + scale * B A = W and the "
            "layer starts as its base. OLoRA: q, r = torch.linalg.qr(W); A = r[:rank], B = q[:, :rank] (no fold).",
            "Back to LoRA on the ORIGINAL W: W_res + s B A = W + s (B A - B0 A0), so A' = cat([A, A0]), "
            "B' = cat([B, -B0], dim=1), rank 2r, and alpha' = 2 alpha (sqrt(2) alpha with rsLoRA) keeps the scale.",
        ),
        interview=(
            "What does PiSSA change compared with LoRA's B = 0 start, and why does it converge faster "
            "and quantise better (QPiSSA)?",
            "Why must the principal part be removed from the frozen weight, and why divide the singular "
            "values by the scale before taking their square root?",
            "A PiSSA adapter was trained on W_res: how do you ship it as a plain LoRA on the original "
            "weights, and why does that double its rank?",
        ),
    ),
    Challenge(
        30,
        "lora_conv_embedding",
        "lora_conv_embedding: LoRA on nn.Embedding (a lookup into A) and nn.Conv2d (a k x k then a 1 x 1 conv)",
        2,
        ("LoRAEmbedding", "LoRAConv2d"),
        prerequisites=(1, 12),
        hints=(
            "Embedding, PEFT's init: lora_embedding_A (r, vocab) zeros, lora_embedding_B (dim, r) ~ N(0, 1). A = 0 "
            "(not B) makes ΔW = 0 at the start; B random lets A's gradient flow from the first step.",
            "Embedding forward: the ids pick COLUMNS of A, i.e. rows of A.T: F.embedding(ids, lora_embedding_A.T) "
            "is (..., r); then @ lora_embedding_B.T * scale. Merge: base.weight += (scale * B @ A).T, (vocab, dim).",
            "Conv2d: lora_A (r, in, kh, kw) is a convolution with the base's kernel, stride, padding and dilation, "
            "so its output lines up with the base's; lora_B (out, r, 1, 1) is pointwise. A Kaiming-uniform, B zeros.",
            "Conv2d merge: ΔW[o, i, :, :] = scale * Σ_j B[o, j] A[j, i, :, :]: (B.flatten(1) @ A.flatten(1)) "
            ".view(out, in, kh, kw) (A.flatten(1) keeps (in, kh, kw) together in that order).",
        ),
        interview=(
            "LoRA on an embedding: why is A (and not B) the zero factor in PEFT, and why is the forward a "
            "lookup into A rather than a matrix product?",
            "How does LoRA adapt a k x k convolution with rank r, how many parameters does it add, and why "
            "must A share the base's stride, padding and dilation?",
            "How do you merge a conv LoRA into the kernel, and what stops you when the base has groups > 1?",
        ),
    ),
)
"""AdaLoRA, PiSSA/OLoRA, and LoRA on embeddings and convolutions (challenges 28-30)."""
