"""The interview questions of docs/batched.md; the guide's section is generated from here."""

from __future__ import annotations

from ..questions import ConceptQuestion

GUIDE = "batched.md"
TOPIC = "serving"

QUESTIONS = (
    ConceptQuestion(
        id="batched.serve-many-lora-fine-tunes",
        topic=TOPIC,
        guide=GUIDE,
        prompt=(
            "How do you serve many LoRA fine-tunes of one base in a single batch, and why can't you merge?"
        ),
        answer=(
            "Merging folds one adapter into $W_0$; a mixed batch would need a merged copy of the model per\n"
            "adapter, or a merge and unmerge (a full weight write) per request. Keep $W_0$ shared and\n"
            "unmerged, stack the adapters, and compute each sample's LoRA path with its own slot:\n"
            "$y_b = W_0x_b + s_iB_iA_ix_b$. One base GEMM for the batch, plus $2r(d_{in}+d_{out})$ FLOPs per\n"
            "token per layer."
        ),
        challenges=(16,),
        points=(
            "Merging folds one adapter into $W_0$: a mixed batch would need one model copy per adapter",
            "Or a merge and unmerge (a full weight write) per request",
            "Keep $W_0$ shared, stack adapters, compute $y_b = W_0x_b + s_iB_iA_ix_b$ per sample",
            "One base GEMM per batch plus $2r(d_{in}+d_{out})$ FLOPs per token per layer",
        ),
    ),
    ConceptQuestion(
        id="batched.gather-gather-bmm-cost-segmented",
        topic=TOPIC,
        guide=GUIDE,
        prompt=(
            "What does the gather in gather-and-bmm cost, and when do segmented kernels (Punica's SGMV, S-LoRA) win?"
        ),
        answer=(
            "`A[ids]` and `B[ids]` copy $B\\,r\\,(d_{in}+d_{out})$ numbers per layer. With long\n"
            "sequences that is small next to the matmuls; in decoding, with one token per sample, the copy\n"
            "costs as much as the product. Segmented kernels (SGMV) sort or segment the batch by adapter and\n"
            "read each adapter's weights once per segment, without materialising per-sample copies; S-LoRA adds\n"
            'paging of adapter weights in GPU memory. peft_zoo\'s `"bag"` strategy gets part of that on a CPU by\n'
            "reading the stacked tables in place with `embedding_bag`."
        ),
        challenges=(16,),
        points=(
            "`A[ids]`, `B[ids]` copy $B\\,r\\,(d_{in}+d_{out})$ numbers per layer",
            "Small next to the matmuls for long sequences; in decoding the copy costs as much as the product",
            "SGMV segments the batch by adapter and reads each adapter's weights once per segment",
            "S-LoRA adds paging of adapter weights in GPU memory",
            'peft_zoo\'s `"bag"` strategy reads the stacked tables in place with `embedding_bag`',
        ),
    ),
    ConceptQuestion(
        id="batched.1-dangerous-sentinel-no-adapter",
        topic=TOPIC,
        guide=GUIDE,
        prompt=(
            'Why is $-1$ a dangerous sentinel for "no adapter", and how do you make those rows exactly the base output with zero gradient into every adapter?'
        ),
        answer=(
            "Negative indices wrap around, so `A[-1]`\n"
            "quietly gathers the last adapter. Gather with `ids.clamp(min=0)` (any valid row) and multiply the\n"
            "LoRA path by a per-sample scale that is exactly 0 for those rows. The product is then exactly zero\n"
            "and so is its gradient into the gathered adapter. Use a *copy* for the clamp, not the caller's tensor."
        ),
        challenges=(16,),
        points=(
            "Negative indices wrap: `A[-1]` quietly gathers the last adapter",
            "Gather with `ids.clamp(min=0)` on a copy, not the caller's tensor",
            "Multiply the LoRA path by a per-sample scale that is exactly 0 for those rows",
            "The product and its gradient into the gathered adapter are then exactly zero",
        ),
    ),
    ConceptQuestion(
        id="batched.peft-supports-mixed-batches-adapter",
        topic=TOPIC,
        guide=GUIDE,
        prompt=("PEFT supports mixed batches with `adapter_names=`. Why is it slower with many adapters?"),
        answer=(
            "In every LoRA layer it loops over the distinct adapters in the batch: find the rows (a host sync on\n"
            "a GPU), run a small matmul pair, scatter the result back. Kernel launches and Python iterations grow\n"
            "with the number of distinct adapters, and small groups use the hardware poorly. With one adapter\n"
            "per batch the two approaches cost about the same."
        ),
        challenges=(16,),
        points=(
            "Each LoRA layer loops over the distinct adapters in the batch",
            "Per adapter: find the rows (a host sync on GPU), a small matmul pair, a scatter back",
            "Launches and Python iterations grow with the number of distinct adapters; small groups underuse hardware",
            "With one adapter per batch both approaches cost about the same",
        ),
    ),
    ConceptQuestion(
        id="batched.adapters-different-ranks-one-bank",
        topic=TOPIC,
        guide=GUIDE,
        prompt="Adapters of different ranks in one bank?",
        answer=(
            "Zero-pad to the largest rank: $B_iA_i$ is unchanged\n"
            "and each slot keeps its own $\\alpha/r_i$. Everyone pays compute and memory at $r_{max}$; with very\n"
            "different ranks, group adapters into banks by rank."
        ),
        challenges=(16,),
        points=(
            "Zero-pad to the largest rank: $B_iA_i$ is unchanged",
            "Each slot keeps its own $\\alpha/r_i$",
            "Everyone pays compute and memory at $r_{max}$",
            "With very different ranks, group adapters into banks by rank",
        ),
    ),
    ConceptQuestion(
        id="batched.put-adapter-version-cache-key",
        topic=TOPIC,
        guide=GUIDE,
        prompt=(
            "Why put the adapter version in the cache key instead of deleting an adapter's entries on every update?"
        ),
        answer=(
            "Bumping a counter is O(1) and cannot be forgotten on one code path, and an old entry can\n"
            "never be hit again, even if a concurrent computation with the old weights writes its result\n"
            "after the update. Deleting is O(entries) and races with in-flight work. The stale entries cost\n"
            "memory only until the LRU evicts them."
        ),
        challenges=(17,),
        points=(
            "Bumping a version is O(1) and cannot be forgotten on one code path",
            "An old entry can never be hit again, even if a late write with old weights lands",
            "Deleting is O(entries) and races with in-flight work",
            "Stale entries cost memory only until the LRU evicts them",
        ),
    ),
    ConceptQuestion(
        id="batched.lru-cache-built-so-get",
        topic=TOPIC,
        guide=GUIDE,
        prompt="How is an LRU cache built so that get, put and evict are all O(1)?",
        answer=(
            "A hash map from key to a\n"
            "node of a doubly linked list ordered by recency: a hit moves its node to the back, eviction pops\n"
            "the front. Python's `collections.OrderedDict` is exactly that (`move_to_end`, `popitem(last=False)`)."
        ),
        challenges=(17,),
        points=(
            "A hash map from key to a node of a doubly linked list ordered by recency",
            "A hit moves its node to the back; eviction pops the front",
            "`collections.OrderedDict` is exactly that: `move_to_end`, `popitem(last=False)`",
        ),
    ),
    ConceptQuestion(
        id="batched.one-adapter-many-retrained-else",
        topic=TOPIC,
        guide=GUIDE,
        prompt=(
            "When one adapter of many is retrained, what else goes stale in a serving stack, and how do you invalidate each?"
        ),
        answer=(
            "Cached embeddings (version the key), merged copies of its weights (re-merge\n"
            "from the new checkpoint), KV caches of sessions that used it (their keys and values came from the\n"
            "old deltas: drop or recompute them), anything built on the embeddings such as a vector index\n"
            "(re-embed, versioned), and compiled graphs or engines that baked in a weight. Keying every\n"
            "derived artefact by (adapter, version) turns invalidation into a lookup."
        ),
        challenges=(17,),
        points=(
            "Cached embeddings: version the key",
            "Merged copies of its weights: re-merge from the new checkpoint",
            "KV caches of sessions that used it: drop or recompute",
            "Vector indexes built on its embeddings, compiled graphs that baked in a weight",
            "Keying every derived artefact by (adapter, version) makes invalidation a lookup",
        ),
    ),
)
