"""Small models to adapt, fast on a CPU with the module layout real networks have.

- :mod:`.tiny`: ``TinyMLP``, ``TinyTransformer`` and their parts (residual units, attention
  projections), the models the tests, graders, examples and the tour inject into;
- :mod:`.bidirectional`: a nanoGPT-style encoder with RoPE whose big matrices can be shared
  across blocks, each block keeping its own LoRA.
"""

from .bidirectional import (
    BidirectionalBlock,
    BidirectionalMLP,
    BidirectionalSelfAttention,
    BidirectionalTransformer,
    BidirectionalTransformerConfig,
    apply_rope,
    rope_tables,
)
from .tiny import (
    FeedForward,
    PreNormFeedForward,
    Residual,
    SelfAttention,
    TinyMLP,
    TinyTransformer,
    TinyTransformerBlock,
    TinyTransformerConfig,
)

__all__ = [
    "BidirectionalBlock",
    "BidirectionalMLP",
    "BidirectionalSelfAttention",
    "BidirectionalTransformer",
    "BidirectionalTransformerConfig",
    "FeedForward",
    "PreNormFeedForward",
    "Residual",
    "SelfAttention",
    "TinyMLP",
    "TinyTransformer",
    "TinyTransformerBlock",
    "TinyTransformerConfig",
    "apply_rope",
    "rope_tables",
]
