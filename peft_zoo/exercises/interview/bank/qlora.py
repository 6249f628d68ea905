"""The interview questions of docs/qlora.md; the guide's section is generated from here."""

from __future__ import annotations

from ..questions import ConceptQuestion

GUIDE = "qlora.md"
TOPIC = "quantisation"

QUESTIONS = (
    ConceptQuestion(
        id="qlora.blocks-64-one-absmax-each",
        topic=TOPIC,
        guide=GUIDE,
        prompt=("Why blocks of 64 with one absmax each, instead of one scale per tensor? What does it cost?"),
        answer=(
            "One scale per tensor lets a single outlier set the step size for millions of weights. The\n"
            "others are squeezed into the few levels around zero. Per-block scales confine an outlier to\n"
            "its 63 neighbours. The cost is one float32 per 64 weights, 0.5 bits per parameter, or 0.127\n"
            "with double quantisation."
        ),
        challenges=(18,),
        points=(
            "One scale per tensor lets a single outlier set the step for millions of weights",
            "Per-block scales confine an outlier to its 63 neighbours",
            "Cost: one float32 per 64 weights, 0.5 bits per parameter",
            "With double quantisation the overhead is 0.127 bits",
        ),
    ),
    ConceptQuestion(
        id="qlora.makes-nf4-better-int4-pretrained",
        topic=TOPIC,
        guide=GUIDE,
        prompt="What makes NF4 better than int4 for pretrained weights?",
        answer=(
            "It is a quantile quantiser for the distribution the weights actually have. After absmax\n"
            "scaling that distribution is fixed (normal-shaped in $[-1, 1]$), so one table fits all\n"
            "tensors. Levels are dense where weights are dense. With the same 4 bits the RMSE is about 15%\n"
            "lower than int4's, and the code usage entropy is 3.9 rather than 3.5 bits."
        ),
        challenges=(18,),
        points=(
            "NF4 is a quantile quantiser for normal-shaped weights",
            "After absmax scaling the distribution is fixed, so one table fits all tensors",
            "Levels are dense where weights are dense",
            "About 15 % lower RMSE than int4; code entropy 3.9 against 3.5 bits",
        ),
    ),
    ConceptQuestion(
        id="qlora.nf4-have-exact-zero-one",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why does NF4 have an exact zero, and one more positive level than negative ones?",
        answer=(
            "Sixteen levels cannot be symmetric and contain 0. Zero is worth representing exactly:\n"
            "padding, pruned weights and zero-initialised entries stay exact. The paper builds 8 positive\n"
            "and 7 negative quantiles plus 0, so the table is slightly asymmetric."
        ),
        challenges=(18,),
        points=(
            "Sixteen levels cannot be symmetric and contain 0",
            "An exact zero keeps padding, pruned and zero-initialised entries exact",
            "The table has 8 positive and 7 negative quantiles plus 0",
        ),
    ),
    ConceptQuestion(
        id="qlora.double-quantisation-buy",
        topic=TOPIC,
        guide=GUIDE,
        prompt="What is double quantisation, and what does it buy?",
        answer=(
            "The fp32 block constants are quantised too: mean-subtracted, 8 bits each, one fp32 scale per\n"
            "256 constants. The cost drops from 4.5 to 4.127 bits per parameter (about 3 GB on a 65B model)\n"
            "and the reconstruction error barely changes (RMSE ratio 1.0002 in the benchmark, 0.02 %)."
        ),
        challenges=(18,),
        points=(
            "The fp32 block constants are quantised: mean-subtracted, 8 bits each",
            "One fp32 scale per 256 constants",
            "Cost drops from 4.5 to 4.127 bits per parameter, about 3 GB on a 65B model",
            "Reconstruction error barely changes (RMSE ratio 1.0002)",
        ),
    ),
    ConceptQuestion(
        id="qlora.where-compute-qlora-faster-lora",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Where is the compute in QLoRA, and is it faster than LoRA?",
        answer=(
            "No, it is slower. Every forward and backward dequantises the codes into bf16 and then runs an\n"
            "ordinary GEMM. QLoRA buys memory, not speed. Fused kernels (bitsandbytes on GPU) hide much of\n"
            "the dequantisation; plain PyTorch on a CPU does not (about 16× an `nn.Linear` for a small\n"
            "batch in the benchmark)."
        ),
        points=(
            "QLoRA is slower than LoRA, not faster",
            "Every forward and backward dequantises to bf16, then runs an ordinary GEMM",
            "QLoRA buys memory, not speed",
            "Fused GPU kernels hide much of the dequantisation; plain PyTorch on CPU does not (about 16×)",
        ),
    ),
    ConceptQuestion(
        id="qlora.many-bits-per-parameter-nf4",
        topic=TOPIC,
        guide=GUIDE,
        prompt="How many bits per parameter does NF4 cost, with and without double quantisation?",
        answer=(
            "Without: 4 bits of code plus one float32 absmax per 64 weights, $4 + 32/64 = 4.5$. With:\n"
            "4 bits, one 8-bit constant per 64 weights, and one float32 nested absmax per $64 \\cdot 256$\n"
            "weights, $4 + 8/64 + 32/16384 \\approx 4.127$. The mean $\\mu$ is one float32 per tensor, which\n"
            "rounds to nothing. For a 7B model that is 3.94 GB against 3.61 GB. Against bf16 (16 bits) the\n"
            "linear layers shrink $16/4.127 \\approx 3.9\\times$, against float32 about $7.8\\times$."
        ),
        challenges=(18,),
        points=(
            "Without double quantisation: $4 + 32/64 = 4.5$ bits",
            "With: $4 + 8/64 + 32/16384 \\approx 4.127$ bits",
            "7B model: 3.94 GB against 3.61 GB",
            "Against bf16, linear layers shrink about 3.9×; against float32 about 7.8×",
        ),
    ),
    ConceptQuestion(
        id="qlora.table-double-quantisation-non-uniform",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why is the table of double quantisation non-uniform?",
        answer=(
            "It is not a table built for the constants: it is the dynamic 8-bit type of Dettmers et al.\n"
            "2021, made for optimizer states that span many orders of magnitude. Its decade at scale\n"
            "$10^{i-6}$ holds $2^i$ levels, so it is dense near 0 (steps down to $10^{-6}$) and coarse near\n"
            "$\\pm 1$ (steps of 0.014). That suits the centred constants $c_b - \\mu$. Most blocks of a weight\n"
            "matrix have a similar absmax, so most $c_b - \\mu$ are small next to the group's largest\n"
            "deviation $s_k$, which a rare outlier block sets. The common small values land where $D$ is\n"
            "dense; only the outliers get the coarse steps, and those still cost at most $0.007\\,s_k$, half\n"
            "the widest step. A uniform 8-bit grid would give every constant the same step $2 s_k/255$\n"
            "instead. Either way the effect on the weights is small (RMSE ratio 1.0002), and reusing $D$ keeps\n"
            "the bytes equal to bitsandbytes'."
        ),
        points=(
            "It reuses the dynamic 8-bit type made for optimizer states",
            "Dense near 0 (steps down to $10^{-6}$), coarse near $\\pm 1$ (steps of 0.014)",
            "Most centred constants $c_b - \\mu$ are small and land where the table is dense",
            "Only rare outlier blocks get the coarse steps",
            "Reusing it keeps the bytes equal to bitsandbytes'",
        ),
    ),
    ConceptQuestion(
        id="qlora.odd-number-weights-last-block",
        topic=TOPIC,
        guide=GUIDE,
        prompt="How are an odd number of weights, and a last block shorter than 64, stored?",
        answer=(
            "Without padding, as bitsandbytes does. The codes are packed two per byte, the first in the high\n"
            "nibble; an odd $n$ fills the last low nibble with the code of 0 (index 7), so the codes take\n"
            "$\\lceil n/2 \\rceil$ bytes. The blocks run over the flattened weight, so a block may straddle\n"
            "two rows, and the last block simply has fewer elements and its own absmax:\n"
            "$\\lceil n/64 \\rceil$ constants. A $33 \\times 1000$ weight takes 16,500 bytes of codes and 516\n"
            "constants."
        ),
        challenges=(18,),
        points=(
            "No padding, as in bitsandbytes; codes packed two per byte, first in the high nibble",
            "An odd $n$ fills the last low nibble with the code of 0: $\\lceil n/2 \\rceil$ bytes",
            "Blocks run over the flattened weight and may straddle rows",
            "The last block is shorter with its own absmax: $\\lceil n/64 \\rceil$ constants",
        ),
    ),
    ConceptQuestion(
        id="qlora.peft-zoo-use-checkpoint-quantised",
        topic=TOPIC,
        guide=GUIDE,
        prompt=("Can peft_zoo use a checkpoint quantised by bitsandbytes, and the other way round?"),
        answer=(
            "Yes, because the stored bytes are the same; a conversion only renames and reshapes.\n"
            "`pz.nf4_linear_from_bnb_state_dict(sd, prefix)` reads the keys `transformers` writes for a\n"
            "4-bit linear (packed codes, absmax, the quant maps, the nested absmax and the JSON quant\n"
            "state) and needs no bitsandbytes installed; `pz.nf4_linear_from_bnb(layer)` takes a\n"
            "`bnb.nn.Linear4bit`, and the `..._to_bnb` functions go back. `pz.qlora_from_bnb(layer, rank,\n"
            "alpha)` puts a LoRA on the same stored base. Only NF4 converts: peft_zoo's `int4` is not\n"
            "bitsandbytes' `fp4`."
        ),
        points=(
            "Yes: the stored bytes are the same; conversion only renames and reshapes",
            "`nf4_linear_from_bnb_state_dict` reads `transformers`' keys without bitsandbytes installed",
            "`nf4_linear_from_bnb` and the `..._to_bnb` functions convert layers both ways",
            "Only NF4 converts: peft_zoo's `int4` is not bitsandbytes' `fp4`",
        ),
    ),
    ConceptQuestion(
        id="qlora.qlora-adapter-not-simply-merged",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Why can a QLoRA adapter not simply be merged back into the 4-bit base?",
        answer=(
            "The merged weight would have to be re-quantised, and the learned update is usually far\n"
            "smaller than the spacing between NF4 levels times the block absmax. Most entries would round\n"
            "back to their old code. Serve unmerged with the 4-bit base, or dequantise and merge into a\n"
            "bf16/fp16 weight (`merge_qlora`). Re-quantising that merged model for deployment is a new\n"
            "quantisation with its own error."
        ),
        challenges=(18,),
        points=(
            "The merged weight would have to be re-quantised",
            "The update is usually far smaller than the NF4 level spacing, so most entries round back",
            "Serve unmerged with the 4-bit base, or dequantise and merge into bf16/fp16 (`merge_qlora`)",
            "Re-quantising the merged model is a new quantisation with its own error",
        ),
    ),
    ConceptQuestion(
        id="qlora.qlora-lose-quality-against-16",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Does QLoRA lose quality against 16-bit LoRA?",
        answer=(
            "The paper reports that NF4 with double quantisation and LoRA on every linear layer matches\n"
            "16-bit LoRA and 16-bit full fine-tuning on its benchmarks. The data type matters: Int4 and FP4\n"
            "give clearly worse perplexity than NF4 (paper Table 2). The targets matter too: LoRA on\n"
            "attention only does not close the gap. In notebook 05 the QLoRA and float-LoRA runs reach the\n"
            "same loss."
        ),
        points=(
            "The paper: NF4 + double quantisation + LoRA on every linear matches 16-bit LoRA and full tuning",
            "Int4 and FP4 give clearly worse perplexity than NF4",
            "LoRA on attention only does not close the gap",
        ),
    ),
)
