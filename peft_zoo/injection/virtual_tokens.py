"""What every virtual-token method shares (prompt tuning, P-tuning, prefix tuning): the
config fields of PEFT's ``PromptLearningConfig`` with their checks, and the wrapper's plumbing
(the frozen ``base_model``, the trained ``prompt`` module, the config it was built from)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar, cast

from torch import nn

from ..core.checks import check_names, check_positive_int, short_repr

__all__ = ["PROMPT_TASK_TYPES", "VirtualTokenConfig", "VirtualTokenWrapper"]

PROMPT_TASK_TYPES = ("CAUSAL_LM", "SEQ_CLS")  # the PEFT task types whose forward the wrappers reproduce


def _optional_positive(value: object, name: str) -> None:
    if value is not None:
        check_positive_int(value, name)


ConfigT = TypeVar("ConfigT", bound="VirtualTokenConfig")


@dataclass
class VirtualTokenConfig:
    """The fields every virtual-token method shares (PEFT's ``PromptLearningConfig``), in PEFT's
    order, with their checks and the dict round trip. Each method's config extends it and its
    ``validate`` (run after construction, and again before use)."""

    num_virtual_tokens: int = field(default=20, metadata={"help": "n: how many virtual tokens to prepend."})
    token_dim: int | None = field(
        default=None, metadata={"help": "d: their width; None takes the model's embedding width."}
    )
    num_transformer_submodules: int | None = field(
        default=None, metadata={"help": "1 (encoder or decoder); 2 (encoder-decoder) is not implemented."}
    )
    num_attention_heads: int | None = field(
        default=None, metadata={"help": "Recorded in PEFT's config; unused by virtual-token methods."}
    )
    num_layers: int | None = field(
        default=None, metadata={"help": "Recorded in PEFT's config; unused by virtual-token methods."}
    )

    task_type: str | None = field(
        default=None,
        metadata={"help": '"CAUSAL_LM" or "SEQ_CLS"; None infers it from the model class name.'},
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={"help": "Modules trained and saved in full; SEQ_CLS adds classifier / score as PEFT does."},
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check the shared fields, ``task_type`` and ``modules_to_save``; raise naming the field."""
        check_positive_int(self.num_virtual_tokens, "num_virtual_tokens")
        for name in ("token_dim", "num_attention_heads", "num_layers", "num_transformer_submodules"):
            _optional_positive(getattr(self, name), name)
        if self.num_transformer_submodules not in (None, 1):
            raise ValueError(
                f"num_transformer_submodules={self.num_transformer_submodules}: only 1 (an encoder or a "
                "decoder) is implemented; encoder-decoder virtual tokens are not"
            )
        task: object = self.task_type
        if task is not None and task not in PROMPT_TASK_TYPES:
            raise ValueError(f"task_type must be one of {PROMPT_TASK_TYPES} or None, got {short_repr(task)}")
        saves: object = self.modules_to_save
        if saves is not None:
            check_names(saves, "modules_to_save")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls: type[ConfigT], data: Mapping[str, Any]) -> ConfigT:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {unknown}; known: {sorted(known)}")
        return cls(**data)


class VirtualTokenWrapper(nn.Module):
    """A frozen ``base_model`` behind a trained ``prompt`` module. ``prompt_config`` is the config
    the wrapper was built from, ``task_type`` its PEFT task; ``config`` is the base model's."""

    base_model: nn.Module
    prompt: nn.Module

    def __init__(self, base_model: nn.Module, prompt: nn.Module, config: Any, task: str) -> None:
        super().__init__()
        self.base_model = base_model
        self.prompt = prompt
        self.prompt_config = config
        self.task_type = task

    @property
    def config(self) -> Any:
        return getattr(self.base_model, "config", None)

    @property
    def num_virtual_tokens(self) -> int:
        return cast(int, self.prompt.num_virtual_tokens)  # every prompt module records its n as an int

    def get_base_model(self) -> nn.Module:
        return self.base_model
