"""Part three of the track (challenges 21-): the methods as real models carry them.

Bottleneck adapters placed in a BERT layer as AdapterHub places them, prefix tuning through
``past_key_values`` with grouped-query attention, and folding LoRA into a real model's weights.
The manifest (:mod:`.manifest`) joins the parts into one track.
"""

from __future__ import annotations

from .challenge import Challenge

REAL_MODELS: tuple[Challenge, ...] = (
    Challenge(
        21,
        "houlsby_bert_layer",
        "houlsby_bert_layer: Houlsby and Pfeiffer adapters in a BERT layer, as AdapterHub places them",
        2,
        ("SeqBnAdapter", "HoulsbyLayer", "PfeifferLayer"),
        prerequisites=(2, 3),
        hints=(
            "bottleneck = max(1, d_model // reduction_factor): the floor, as AdapterHub's int(d // factor). "
            "Zero BOTH up.weight and up.bias, so up(...) = 0 and the adapter returns its residual at init.",
            "The adapter adds its own residual: forward(x, residual) = up(act(down(x))) + residual. Whoever "
            "calls it must not add that residual again.",
            "Houlsby: h = layer.attention_sublayer(x), then layer.attn_norm(attn_adapter(h, h) + x); the same "
            "after the FFN with f = layer.ffn_sublayer(a) and its residual a. Two separate adapters.",
            "Pfeiffer (SeqBn): one adapter after the FFN that reads z = layer.ffn_norm(f + a) with residual f, "
            "then layer.ffn_norm(ffn_adapter(z, f) + a): the layer's LayerNorm runs twice.",
        ),
        interview=(
            "Where exactly does a Houlsby adapter sit in a post-LN transformer layer, and why before the "
            "residual and LayerNorm rather than after them?",
            "Houlsby or Pfeiffer: how many adapters per layer, how many parameters for BERT-base with "
            "reduction_factor 16, and what does AdapterFusion's choice of Pfeiffer tell you?",
            "Why initialise the up-projection at zero, and what goes wrong if the adapted model does not "
            "start equal to the pretrained one?",
        ),
    ),
    Challenge(
        22,
        "prefix_past_key_values",
        "prefix_past_key_values: per-layer key/value prefixes for grouped-query attention",
        3,
        ("PrefixKV", "extend_attention_mask"),
        prerequisites=(7,),
        hints=(
            "Size everything by the KEY/VALUE heads: D = num_kv_heads * head_dim. Without a projection the "
            "embedding is (n, 2 L D); with one it is (n, D) and transform is Linear(D, h), Tanh, Linear(h, 2 L D).",
            "prompt(): E = self.embedding.weight, run through transform once if there is one. One MLP for all "
            "layers: its output already holds every layer's keys and values.",
            "P.view(n, 2L, H_kv, d_head) puts one layer's keys (index 2l) and values (2l + 1) side by side; "
            ".permute(1, 2, 0, 3) moves the tokens after the heads: (2L, H_kv, n, d_head). A plain "
            ".view(2L, H_kv, n, d_head) scrambles tokens and heads.",
            "Expand over the batch with .unsqueeze(1).expand(-1, B, -1, -1, -1) and return "
            "[(p[2l], p[2l + 1]) for each layer]. The mask: torch.cat([mask.new_ones(B, n), mask], dim=1).",
        ),
        interview=(
            "Why does prefix tuning go through past_key_values, and what shape does each layer's prefix "
            "have under grouped-query attention?",
            "What does the reparameterisation MLP buy during training, and why can it be thrown away when "
            "the adapter is saved?",
            "Where do the n extra ones of the attention mask go, and what breaks with left padding if they "
            "go at the end? What happens to position ids?",
        ),
    ),
    Challenge(
        23,
        "merge_and_unload",
        "merge_and_unload: fold LoRA into the weights of Linear and GPT-2 Conv1D layers, or refuse",
        2,
        ("delta_weight", "merge_and_unload", "unload"),
        prerequisites=(12,),
        hints=(
            "delta_weight: layer.scale * (layer.lora_B @ layer.lora_A) is (out, in); a fan_in_fan_out layer "
            "(GPT-2's Conv1D) stores its weight as (in, out), so return the transpose there.",
            "Refuse first: collect the names of every wrapper whose mergeable flag is False and raise one "
            "ValueError naming them, before any weight or module changes.",
            "Then, for each wrapper: base.weight.add_(delta_weight(layer)) under torch.no_grad(), and "
            "replace(model, name, layer.base). The wrapper must go, or its update counts twice.",
            "unload: the same replacement for every wrapper, mergeable or not, with no merging.",
        ),
        interview=(
            "What does merge_and_unload give you at inference, and what do you lose (switching adapters, "
            "unmerging exactly in low precision)?",
            "GPT-2 stores its projections as Conv1D with (in, out) weights: what does fan_in_fan_out change "
            "when you merge, and what goes wrong if you ignore it on a square matrix?",
            "Which adapters cannot be merged into the weights, and why must the refusal happen before the "
            "first layer is changed?",
        ),
    ),
)
