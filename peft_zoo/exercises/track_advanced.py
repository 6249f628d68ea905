"""Part two of the track (challenges 11-20): manage, count, test, serve, quantise and share
adapters, and DoRA.

Adapter stacks, merging, adapter-only state dicts, parameter counts, property tests,
batched serving, an embedding cache, NF4 quantisation, cross-layer sharing and DoRA. The
manifest (:mod:`.manifest`) joins the parts into one track.
"""

from __future__ import annotations

from .challenge import Challenge

ADVANCED: tuple[Challenge, ...] = (
    Challenge(
        11,
        "adapter_stack",
        "AdapterStack: one adapter per task, chosen per call",
        1,
        ("AdapterStack",),
        prerequisites=(2,),
        hints=(
            "self.adapters = nn.ModuleList(BottleneckAdapter(d_model, bottleneck_dim) for _ in range(num_adapters)).",
            "Check 0 <= adapter_id < num_adapters yourself: Python's negative indexing would silently pick "
            "the last adapter.",
        ),
        interview=("How would you serve many task adapters over one frozen base?",),
    ),
    Challenge(
        12,
        "merge_unmerge",
        "merge / unmerge: fold scale·B·A into the weight and back",
        2,
        ("merge_lora", "unmerge_lora"),
        prerequisites=(1,),
        hints=(
            "delta = layer.scale * (layer.lora_B @ layer.lora_A) has the weight's shape (out, in).",
            "Update layer.base.weight in place under torch.no_grad(), and set layer.merged.",
            "Merging twice must not add delta twice; unmerging an unmerged layer must do nothing.",
        ),
        interview=("Merge or keep adapters separate when serving? What does each cost per token?",),
    ),
    Challenge(
        13,
        "adapter_state_dict",
        "adapter_state_dict: save and restore only the adapter tensors",
        2,
        ("adapter_state_dict", "load_adapter_state_dict"),
        prerequisites=(4,),
        hints=(
            "Keep the model.state_dict() entries whose key ends in 'lora_A' or 'lora_B'.",
            "Before copying anything, check that the keys match exactly and every shape agrees; raise otherwise.",
            "Copy with param.copy_(tensor) under torch.no_grad().",
        ),
        interview=("Why save adapters separately from the base model, and what must match to load one?",),
    ),
    Challenge(
        14,
        "lora_param_count",
        "lora_param_count: count LoRA parameters analytically",
        1,
        ("lora_params_for_linear", "lora_param_count"),
        prerequisites=(1,),
        hints=(
            "One adapted Linear adds rank * (in_features + out_features) parameters.",
            "q, k, v, o are (d_model, d_model); fc1 is d_model -> d_ff; fc2 is d_ff -> d_model.",
            "Multiply the per-block sum by n_layers.",
        ),
        interview=("LLaMA-7B with rank 16 on q, k, v, o: how many trainable parameters? (16.8M)",),
    ),
    Challenge(
        15,
        "sanity_checks",
        "sanity_checks: write the property tests that catch broken LoRA",
        3,
        (
            "check_trainable_fraction",
            "check_init_equals_base",
            "check_loss_decreases",
            "check_adapters_differ",
        ),
        prerequisites=(1,),
        hints=(
            "Each check builds what it needs from lora_cls (a class with LoRALinear's signature) and raises "
            "AssertionError when the property fails.",
            "Think of the bug each check should catch: a trainable base, a non-zero B at init, a LoRA path "
            "that never learns, adapters that do not change the output.",
            "Compare against independent computations (the base layer alone, the loss before training), not "
            "against the implementation itself.",
        ),
        interview=(
            "Which cheap checks would you run before a long LoRA fine-tune, and what does each catch?",
        ),
    ),
    Challenge(
        16,
        "batched_lora",
        "batched_lora: many LoRA adapters in one batch (gather + bmm)",
        3,
        ("batched_lora_delta", "batched_lora_forward"),
        prerequisites=(1, 11),
        hints=(
            "Validate first: one id per sample, x's last dim equal to lora_A's, every id in [-1, N); "
            "raise ValueError naming the bad id and the valid range.",
            "Never index with a raw -1: lora_A[-1] is the LAST adapter. Gather with idx = ids.clamp(min=0) "
            "and give the base-only samples a scale of exactly 0.",
            "lora_A[idx] is (B, r, in): torch.bmm(x, A.transpose(1, 2)) gives (B, T, r), then torch.bmm(h, "
            "B.transpose(1, 2)) with B = lora_B[idx] gives (B, T, out).",
            "The per-sample scale is scale[idx] * (ids >= 0), indexed by id, not by position b; reshape it "
            "to (B, 1, 1) so it broadcasts over T and out. forward = base(x) + delta.",
        ),
        interview=(
            "How do you serve many LoRA fine-tunes of one base in a single batch, and why can't you merge?",
            "What does the gather in gather-and-bmm cost, and when do segmented kernels (Punica's SGMV, "
            "S-LoRA) win?",
            "Why is -1 a dangerous sentinel for 'no adapter' in PyTorch indexing, and how do you make "
            "those rows exactly the base output with zero gradient into every adapter?",
        ),
    ),
    Challenge(
        17,
        "embedding_cache",
        "embedding_cache: a versioned LRU cache that never serves stale embeddings",
        2,
        ("VersionedLRUCache",),
        prerequisites=(16,),
        hints=(
            "Key every entry by (key, adapter, version(adapter)): after bump(adapter) the old entries "
            "can never be hit again, and bump stays O(1).",
            "collections.OrderedDict is an LRU: move_to_end(k) marks k most recent (on a hit and on put), "
            "popitem(last=False) removes the least recent (the front).",
            "Insert first, then evict while len > capacity: a full cache holds exactly capacity entries.",
            "In lookup, get() each item in order, collect the first position of each missing (key, adapter) "
            "pair, call compute once with those positions (not at all if nothing missed), put each row, "
            "and reuse it for duplicates.",
        ),
        interview=(
            "Why put the adapter version in the cache key instead of deleting an adapter's entries on "
            "every update?",
            "How is an LRU cache built so that get, put and evict are all O(1)?",
            "When one adapter of many is retrained, what else goes stale in a serving stack (cached "
            "embeddings, KV caches, merged weights), and how do you invalidate each?",
        ),
    ),
    # ---- issue 6 (each entry is owned by the helper writing that challenge; placeholders until then)
    Challenge(
        18,
        "nf4_quantize",
        "nf4_quantize: blockwise 4-bit NormalFloat quantisation with the QLoRA code table",
        2,
        ("nf4_quantize", "nf4_dequantize"),
        prerequisites=(1,),
        hints=(
            "Blocks are consecutive elements: flat = w.reshape(-1).float(), zero-pad it to n_pad (n rounded "
            "up to a multiple of blocksize) with F.pad, then blocks = flat.view(n_pad // blocksize, blocksize).",
            "absmax = blocks.abs().amax(dim=1): the ABSOLUTE maximum, one per block (not .amax(), not the "
            "whole tensor's). Divide by torch.where(absmax > 0, absmax, 1) so a zero block stays 0, not NaN.",
            "NF4 is not evenly spaced, so round(7 * x) is wrong: compare every value with all 16 entries, "
            "(normed[..., None] - NF4).abs(), and take argmin over the LAST axis (the table).",
            "Pack in uint8: (first << 4) | second per pair. To dequantize: high = packed >> 4, low = packed & 15, "
            "interleave them (high first), NF4[codes] * absmax per block, drop the padding, reshape, cast.",
        ),
        interview=(
            "Why does QLoRA quantise in blocks of 64 with an absmax each instead of one scale per tensor, and "
            "what does that cost in bits per parameter?",
            "What makes NF4 better than int4 for pretrained weights, and why does it have an exact zero and one "
            "more positive level than negative ones?",
            "What is double quantisation, and why can a QLoRA adapter not simply be merged back into the 4-bit "
            "base weight?",
        ),
    ),
    Challenge(
        19,
        "shared_weights_lora",
        "shared_weights_lora: one set of big matrices for every block, a LoRA per layer",
        2,
        ("share_main_matrices",),
        prerequisites=(1, 4),
        hints=(
            "Two passes: first look up every name in every block (block.get_submodule(name), turning its "
            "AttributeError into a ValueError) and compare weight shapes and bias presence with block 0's; "
            "only then change anything.",
            "main_linear(module) gives the nn.Linear to share: a LoRALinear's base. Never share the "
            "LoRALinear itself, nor the LayerNorms: each block keeps its own A, B, ln_1 and ln_2.",
            "Alias, don't copy: target.weight = source.weight assigns block 0's Parameter object itself. "
            ".data.copy_(), .clone() or nn.Parameter(source.weight) give each block its own Parameter.",
            "Do it for every block from 1 to the last, and for the bias too (None stays None); leave block 0 "
            "exactly as it is.",
        ),
        interview=(
            "How does ALBERT-style sharing cut parameters, what does it not save (FLOPs, activations), and "
            "what does a per-layer LoRA give back?",
            "When one Parameter is used by L layers, what is its gradient, and why must the optimizer see it "
            "only once?",
            "Why can't you merge the per-layer LoRA into a shared base for serving, and what breaks when you "
            "save or load a checkpoint of a shared model?",
        ),
    ),
    Challenge(
        20,
        "dora_linear",
        "dora_linear: weight-decomposed LoRA (magnitude times normalised direction)",
        3,
        ("DoRALinear",),
        prerequisites=(1, 12),
        hints=(
            "One magnitude per OUTPUT feature: the norms of the rows of the (out, in) weight, "
            "torch.linalg.norm(W, dim=1). Initialise m from W0 (detached) so that m V / ||V|| = W0 at init.",
            "weight_norm(): V = W0 + scale * (B @ A), then the row norms of V, and .detach() them: the paper "
            "(Sec. 4.3) treats ||V|| as a constant, so no gradient flows through it.",
            "forward: ratio = magnitude / weight_norm(), shape (out,); return ratio * (F.linear(x, W0) + "
            "scale * F.linear(F.linear(x, A), B)) and add the base's bias AFTER the rescaling.",
            "merge: under torch.no_grad(), base.weight.copy_((m / ||V||)[:, None] * V) (one factor per row), "
            "then merged = True; return at once when already merged.",
        ),
        interview=(
            "What does DoRA decompose, and what does it learn that LoRA does not? How many extra "
            "parameters per adapted layer?",
            "Why does DoRA detach ||W0 + BA|| in backpropagation, and what does that save?",
            "Can a DoRA adapter be merged for serving at zero extra cost? What must you keep to unmerge it?",
        ),
    ),
)
