"""Part one of the track (challenges 1-10): write each adapter layer, then put it into a model.

LoRA, bottleneck and parallel adapters, a learnable prefix and IA³, and the injectors that
replace a model's layers. The manifest (:mod:`.manifest`) joins the parts into one track.
"""

from __future__ import annotations

from .challenge import Challenge

FOUNDATIONS: tuple[Challenge, ...] = (
    Challenge(
        1,
        "lora_linear",
        "LoRALinear: a frozen Linear plus a low-rank update",
        1,
        ("LoRALinear",),
        hints=(
            "Freeze the wrapped layer with base.requires_grad_(False); only lora_A and lora_B train.",
            "lora_A has shape (rank, in_features), lora_B (out_features, rank); create them with the "
            "base weight's dtype and device.",
            "Initialise A like nn.Linear does (nn.init.kaiming_uniform_(A, a=math.sqrt(5))) and B with "
            "zeros, so B @ A = 0 and the layer starts equal to its base.",
            "scale = alpha / rank (alpha defaults to rank; rsLoRA: alpha / sqrt(rank)). forward = base(x) "
            "+ scale * (dropout(x) @ A.T @ B.T): dropout touches the LoRA path only.",
        ),
        interview=(
            "Why is B initialised to zero and not A? What happens if both are zero?",
            "How many parameters does LoRA add to a d_in x d_out layer at rank r?",
            "What does alpha do, why divide by r, and what does rsLoRA change?",
        ),
    ),
    Challenge(
        2,
        "bottleneck_adapter",
        "BottleneckAdapter: down, non-linearity, up (zero-initialised)",
        1,
        ("BottleneckAdapter",),
        hints=(
            "down_proj = nn.Linear(d_model, bottleneck_dim), up_proj = nn.Linear(bottleneck_dim, d_model).",
            "Zero up_proj's weight AND bias, so the adapter's delta is exactly zero at initialisation.",
            "forward_delta(x) = up(act(down(x))); forward(x) = x + delta if residual else delta.",
        ),
        interview=(
            "Where do Houlsby adapters go in a transformer block, and how many parameters do they add?",
            "Why zero-initialise the up projection rather than the down projection?",
        ),
    ),
    Challenge(
        3,
        "adapter_block",
        "AdapterBlock: a sublayer and a serial adapter, one residual each",
        1,
        ("AdapterBlock",),
        prerequisites=(2,),
        hints=(
            "First the sublayer's own residual: h = x + sublayer(x).",
            "The adapter sees h, not x, and contributes only its delta: out = h + adapter.forward_delta(h).",
            "Calling adapter(h) (which already adds h) and then adding h again double-counts the residual.",
        ),
        interview=("Serial vs parallel adapters: what does each see, and what changes for the gradients?",),
    ),
    Challenge(
        4,
        "inject_lora",
        "inject_lora: replace named Linear layers with LoRALinear",
        2,
        ("inject_lora",),
        prerequisites=(1,),
        hints=(
            "Resolve every name first with model.get_submodule(name); raise before changing anything.",
            "To replace a module you need its parent: parent = model.get_submodule(name.rpartition('.')[0]), "
            "then setattr(parent, name.rpartition('.')[2], new_layer).",
            "Return the new layers' lora_A and lora_B, in name order, and nothing else.",
            "LoRALinear freezes only its own base: after replacing, freeze the whole model "
            "(model.requires_grad_(False)) and re-enable the new parameters, so only LoRA trains, as in PEFT.",
        ),
        interview=(
            "Why return the LoRA parameters instead of letting the caller use model.parameters()?",
            "After injection, which parameters should still train, and what does an unfrozen base cost?",
            "How do dotted names from named_modules() map onto nn.Sequential and nn.ModuleList children?",
        ),
    ),
    Challenge(
        5,
        "build_lora_adapter_model",
        "build_lora_adapter_model: LoRA + an optional adapter, all else frozen",
        2,
        ("build_lora_adapter_model",),
        prerequisites=(3, 4),
        hints=(
            "Inject LoRA with peft_zoo.inject_lora, then, if adapter_bottleneck is given, wrap the whole "
            "base in AdapterBlock(base, BottleneckAdapter(base.d_model, adapter_bottleneck)).",
            "Freeze everything (model.requires_grad_(False)), then re-enable exactly the LoRA and adapter parameters.",
            "Return those parameters and nothing else: no frozen weight, no duplicates.",
        ),
        interview=("When would you combine LoRA with adapters, and what does each add?",),
    ),
    Challenge(
        6,
        "parallel_adapter_block",
        "ParallelAdapterBlock: the adapter sees the block's input",
        1,
        ("ParallelAdapterBlock",),
        prerequisites=(2,),
        hints=("out = sublayer(x) + adapter.forward_delta(x): both branches read the same x.",),
        interview=("Why can a parallel adapter be computed concurrently with the sublayer?",),
    ),
    Challenge(
        7,
        "learnable_prefix",
        "LearnablePrefix: trainable vectors prepended to the sequence",
        1,
        ("LearnablePrefix",),
        hints=(
            "self.prefix = nn.Parameter(torch.randn(prefix_len, d_model) * 0.02).",
            "Expand it to (B, prefix_len, d) with prefix.unsqueeze(0).expand(B, -1, -1); cat copies, so "
            "rows never share memory.",
            "torch.cat([prefix, x], dim=1): prefix first.",
        ),
        interview=(
            "Prefix tuning vs prompt tuning vs LoRA: what is trained, and what does it cost at inference?",
        ),
    ),
    Challenge(
        8,
        "ia3_linear",
        "IA3Linear: learned elementwise scaling of a frozen layer",
        1,
        ("IA3Linear",),
        hints=(
            "Freeze base; scale = nn.Parameter(torch.ones(out_features)) with the base weight's dtype and device.",
            "forward = base(x) * scale: the scale multiplies the output, after the bias.",
        ),
        interview=(
            "How many parameters does IA³ train per layer, and why can it be merged into the weight?",
        ),
    ),
    Challenge(
        9,
        "inject_ia3",
        "inject_ia3: replace named Linear layers with IA3Linear",
        2,
        ("inject_ia3",),
        prerequisites=(4, 8),
        hints=(
            "Same shape as inject_lora: resolve and check every name first, then replace; return the scales.",
            "Then freeze everything else, as in challenge 04: model.requires_grad_(False), then "
            "scale.requires_grad_(True) for each new scale.",
        ),
        interview=("Which layers does the IA³ paper rescale, and why those?",),
    ),
    Challenge(
        10,
        "inject_lora_recursive",
        "inject_lora_recursive: LoRA on every Linear, exactly once",
        2,
        ("inject_lora_recursive",),
        prerequisites=(4,),
        hints=(
            "Collect the names first (list(model.named_modules())), then replace: never mutate while iterating.",
            "Skip the root (name ''), and skip any Linear that is the .base of an existing LoRALinear.",
            "Use isinstance(module, nn.Linear); a LoRALinear is not an nn.Linear, so it is never wrapped again.",
            "Refuse a Linear root before changing anything; at the end freeze every non-LoRA parameter "
            "(model.requires_grad_(False), then re-enable the new lora_A / lora_B).",
        ),
        interview=("What goes wrong if you replace modules while iterating named_modules()?",),
    ),
)
