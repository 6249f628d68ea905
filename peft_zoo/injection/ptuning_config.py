"""P-tuning on a ``transformers`` model: :class:`PromptEncoderConfig` (``peft.PromptEncoderConfig``'s
fields) and :func:`adapt_p_tuning`, which puts the model behind a
:class:`~peft_zoo.injection.prompt_model.PromptTuningModel` whose prompt is a
:class:`~peft_zoo.ptuning.PromptEncoder` (the maths: :mod:`peft_zoo.ptuning`).

    model, params = adapt_model(model, PromptEncoderConfig(num_virtual_tokens=8, encoder_hidden_size=32))
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..core.checks import check_positive_int, check_probability, short_repr
from ..ptuning import ENCODER_TYPES, PromptEncoder
from .prompt_model import PromptTuningModel, attach_prompt, check_prompt_target
from .virtual_tokens import VirtualTokenConfig

__all__ = ["PromptEncoderConfig", "adapt_p_tuning"]


@dataclass
class PromptEncoderConfig(VirtualTokenConfig):
    """P-tuning as ``peft.PromptEncoderConfig`` configures it (PEFT's field names)."""

    encoder_reparameterization_type: str = field(
        default="MLP",
        metadata={"help": 'The encoder f: "MLP" (three layers) or "LSTM" (BiLSTM + two layers).'},
    )
    encoder_hidden_size: int | None = field(
        default=None, metadata={"help": "h: the encoder's hidden width; None takes token_dim."}
    )
    encoder_num_layers: int = field(default=2, metadata={"help": "LSTM layers (the MLP always has three)."})
    encoder_dropout: float = field(default=0.0, metadata={"help": "Dropout between the LSTM layers."})

    def validate(self) -> None:
        """Check every field (types and values); raise naming the field."""
        super().validate()
        kind: object = self.encoder_reparameterization_type
        if not isinstance(kind, str) or kind not in ENCODER_TYPES:
            raise ValueError(
                f"encoder_reparameterization_type must be one of {ENCODER_TYPES}, got {short_repr(kind)}"
            )
        if self.encoder_hidden_size is not None:
            check_positive_int(self.encoder_hidden_size, "encoder_hidden_size")
        check_positive_int(self.encoder_num_layers, "encoder_num_layers")
        check_probability(self.encoder_dropout, "encoder_dropout")


def adapt_p_tuning(
    model: nn.Module, config: PromptEncoderConfig
) -> tuple[PromptTuningModel, list[nn.Parameter]]:
    """Freeze ``model`` and put it behind a P-tuning prompt encoder; return ``(wrapper,
    trainable parameters)``: the encoder's (``E`` and ``f``) and the ``modules_to_save``
    copies. Everything is checked first; an error leaves ``model`` exactly as it was."""
    if not isinstance(config, PromptEncoderConfig):
        raise TypeError(f"config must be a PromptEncoderConfig, got {type(config).__name__}")
    config.validate()
    emb, task, save_names = check_prompt_target(
        model, config.token_dim, config.task_type, config.modules_to_save
    )
    encoder = PromptEncoder(
        config.num_virtual_tokens,
        emb.embedding_dim,
        encoder_type=config.encoder_reparameterization_type,
        hidden_size=config.encoder_hidden_size,
        num_layers=config.encoder_num_layers,
        dropout=config.encoder_dropout,
    ).to(device=emb.weight.device)
    return attach_prompt(model, encoder, config, task, save_names)
