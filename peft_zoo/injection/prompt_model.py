"""Prompt tuning on a ``transformers`` model: :class:`PromptTuningConfig` and the wrapper
:class:`PromptTuningModel`, called exactly like the original model.

    model, params = adapt_model(model, PromptTuningConfig(num_virtual_tokens=8))
    out = model(input_ids=ids, attention_mask=mask, labels=labels)   # as before
    tokens = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5)   # decoders

The wrapper does what Hugging Face PEFT's ``PeftModelForCausalLM`` / ``...ForSequenceClassification``
do for ``PROMPT_TUNING`` (the maths: :mod:`peft_zoo.prompt`): look the ids up in the model's
input embeddings (``get_input_embeddings()``), put the ``n`` virtual tokens in front, extend
``attention_mask`` with ones, ``labels`` with -100 (causal LM only), ``token_type_ids`` with
zeros (sequence classification only; a causal LM drops them, as PEFT does), drop
``position_ids`` (with PEFT's warning) and call the frozen model with ``inputs_embeds``.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.checks import short_repr
from ..prompt import PromptEmbedding, extend_attention_mask, extend_labels, prepend_prompt
from ..ptuning import PromptEncoder
from .modules_to_save import modules_to_save_names, wrap_modules_to_save
from .surgery import InjectionError
from .virtual_tokens import PROMPT_TASK_TYPES, VirtualTokenConfig, VirtualTokenWrapper

__all__ = [
    "PROMPT_INITS",
    "PromptTuningConfig",
    "PromptTuningModel",
    "adapt_prompt_tuning",
    "attach_prompt",
    "check_prompt_target",
    "input_embeddings",
    "prompt_task_type",
]

PROMPT_INITS = ("RANDOM", "TEXT", "SAMPLE_VOCAB")
_SEQ_CLS_HEADS = ("classifier", "score")  # PEFT trains and saves these in full for SEQ_CLS


def _optional_str(value: object, name: str) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a str or None, got {short_repr(value)}")


@dataclass
class PromptTuningConfig(VirtualTokenConfig):
    """Prompt tuning as ``peft.PromptTuningConfig`` configures it (PEFT's field names).

    ``TEXT`` initialisation needs the text's token ids in ``init_token_ids`` (tokenise it
    yourself: ``tokenizer(text)["input_ids"]``); peft_zoo never downloads a tokenizer.
    """

    prompt_tuning_init: str = field(
        default="RANDOM",
        metadata={"help": 'Start values: "RANDOM" (N(0, 1)), "TEXT" (a text\'s tokens), "SAMPLE_VOCAB".'},
    )
    prompt_tuning_init_text: str | None = field(
        default=None, metadata={"help": "The TEXT init's text (recorded; its ids go in init_token_ids)."}
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "The tokenizer of the TEXT init (recorded in PEFT's config)."}
    )
    init_token_ids: list[int] | None = field(
        default=None,
        metadata={"help": "TEXT init: the text's token ids, cut or repeated to n. Not a PEFT field."},
    )

    def validate(self) -> None:
        """Check every field (types and values); raise naming the field."""
        super().validate()
        init: object = self.prompt_tuning_init
        if not isinstance(init, str) or init not in PROMPT_INITS:
            raise ValueError(f"prompt_tuning_init must be one of {PROMPT_INITS}, got {short_repr(init)}")
        for name in ("prompt_tuning_init_text", "tokenizer_name_or_path"):
            _optional_str(getattr(self, name), name)
        ids: object = self.init_token_ids
        if ids is not None and (
            not isinstance(ids, list) or not ids or not all(type(i) is int and i >= 0 for i in ids)
        ):
            raise TypeError(f"init_token_ids must be a non-empty list of ints >= 0, got {short_repr(ids)}")
        if init == "TEXT" and ids is None:
            raise ValueError(
                'prompt_tuning_init="TEXT" needs init_token_ids: the token ids of the init text, e.g. '
                'tokenizer(text)["input_ids"] (peft_zoo does not download tokenizers)'
            )
        if init != "TEXT" and ids is not None:
            raise ValueError(f'init_token_ids is only used with prompt_tuning_init="TEXT", not {init!r}')


def input_embeddings(model: nn.Module) -> nn.Embedding:
    """The model's token embedding table (``get_input_embeddings()``), or a clear error."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if not isinstance(emb, nn.Embedding):
        raise InjectionError(
            f"{type(model).__name__} has no input embeddings (get_input_embeddings() gave "
            f"{type(emb).__name__}); prompt tuning prepends embeddings and needs an nn.Embedding there"
        )
    return emb


def prompt_task_type(model: nn.Module, task_type: str | None) -> str:
    """``task_type``, or the one the model class name says (``...ForCausalLM`` / ``...LMHeadModel``
    -> ``CAUSAL_LM``, ``...ForSequenceClassification`` -> ``SEQ_CLS``)."""
    if task_type is not None:
        return task_type
    name = type(model).__name__
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return "CAUSAL_LM"
    if name.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    raise InjectionError(f"cannot tell the task of {name}; set task_type to one of {PROMPT_TASK_TYPES}")


_HOOK = "prepare_inputs_for_generation"


@contextlib.contextmanager
def _no_position_ids(model: nn.Module) -> Iterator[None]:
    """While generating, drop the ``position_ids`` the model's ``prepare_inputs_for_generation``
    makes (PEFT does so for prompt learning); put the method back afterwards."""
    prepare = getattr(model, _HOOK, None)
    if not callable(prepare):
        raise TypeError(f"{type(model).__name__} has no {_HOOK}; it cannot generate")

    @functools.wraps(prepare)  # generate reads the signature (inputs_embeds, **kwargs)
    def without_position_ids(*args: Any, **kwargs: Any) -> Any:
        inputs = prepare(*args, **kwargs)
        inputs.pop("position_ids", None)  # positions count from the first virtual token
        return inputs

    own = vars(model).get(_HOOK)  # an instance override, if any
    setattr(model, _HOOK, without_position_ids)
    try:
        yield
    finally:
        delattr(model, _HOOK)  # the class's method again ...
        if own is not None:
            setattr(model, _HOOK, own)  # ... or the one it had


class PromptTuningModel(VirtualTokenWrapper):
    """A frozen ``transformers`` model behind ``n`` trainable virtual tokens (``prompt``).

    Attributes: ``base_model`` (the original model, frozen; ``modules_to_save`` wrapped),
    ``prompt`` (:class:`~peft_zoo.prompt.PromptEmbedding`, weight ``(n, d)``, or a P-tuning
    :class:`~peft_zoo.ptuning.PromptEncoder`), ``prompt_config`` (the config it was built from),
    ``task_type``. ``config`` is the base model's config.
    """

    prompt: PromptEmbedding | PromptEncoder

    def get_input_embeddings(self) -> nn.Embedding:
        return input_embeddings(self.base_model)

    def _embed(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> torch.Tensor:
        """``(B, n + L, d)``: the virtual tokens, then the inputs' embeddings."""
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids or inputs_embeds")
            inputs_embeds = self.get_input_embeddings()(input_ids)  # (B, L, d)
        return prepend_prompt(self.prompt(inputs_embeds.shape[0]), inputs_embeds)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """The base model's output on the prompted inputs; same arguments as the base model."""
        n = self.num_virtual_tokens
        if attention_mask is not None:
            attention_mask = extend_attention_mask(attention_mask, n)  # (B, n + L)
        if kwargs.get("position_ids") is not None:
            warnings.warn(
                "Position ids are not supported for parameter efficient tuning. Ignoring position ids.",
                stacklevel=2,
            )
            kwargs["position_ids"] = None
        token_types = kwargs.get("token_type_ids")
        if token_types is not None:
            if self.task_type == "SEQ_CLS":
                kwargs["token_type_ids"] = torch.cat(
                    (token_types.new_zeros(token_types.shape[0], n), token_types), 1
                )
            else:
                warnings.warn(
                    "Token type ids are not supported for parameter efficient tuning. Ignoring token type ids",
                    stacklevel=2,
                )
                kwargs["token_type_ids"] = None
        if labels is not None and self.task_type == "CAUSAL_LM":
            labels = extend_labels(labels, n)  # (B, n + L), -100 on the virtual tokens
        embeds = self._embed(input_ids, inputs_embeds)
        return self.base_model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> Any:
        """The base model's ``generate`` on the prompted inputs; returns ``input_ids`` followed by
        the new tokens (as PEFT's does). Decoders only; bound the length with ``max_new_tokens``.
        As PEFT does, no ``position_ids`` reach the model: positions run over the virtual tokens
        and any left padding alike (the model's default), in every step."""
        if self.task_type != "CAUSAL_LM":
            raise ValueError(f"generate needs a causal LM; this model's task_type is {self.task_type}")
        if input_ids is None:
            raise ValueError("generate needs input_ids")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        embeds = self._embed(input_ids, None)
        mask = extend_attention_mask(attention_mask, self.num_virtual_tokens)
        generate = getattr(self.base_model, "generate", None)
        if not callable(generate):
            raise TypeError(f"{type(self.base_model).__name__} has no generate method")
        with _no_position_ids(self.base_model):
            out = generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)  # new tokens only
        if isinstance(out, torch.Tensor):
            return torch.cat((input_ids, out), dim=1)
        out.sequences = torch.cat((input_ids, out.sequences), dim=1)
        return out


def _initial_prompt(config: PromptTuningConfig, emb: nn.Embedding) -> PromptEmbedding:
    n = config.num_virtual_tokens
    if config.prompt_tuning_init == "TEXT":
        return PromptEmbedding.from_token_ids(emb, config.init_token_ids or [], n)
    if config.prompt_tuning_init == "SAMPLE_VOCAB":
        ids = torch.randint(0, emb.num_embeddings, (n,)).tolist()
        return PromptEmbedding.from_token_ids(emb, ids, n)
    return PromptEmbedding(n, emb.embedding_dim)


def _save_names(model: nn.Module, wanted: list[str], task: str) -> list[str]:
    if task == "SEQ_CLS":
        names = [n for n, _ in model.named_modules()]
        wanted = wanted + [h for h in _SEQ_CLS_HEADS if h not in wanted and any(n.endswith(h) for n in names)]
    return modules_to_save_names(model, wanted) if wanted else []


def check_prompt_target(
    model: nn.Module, token_dim: int | None, task_type: str | None, modules_to_save: list[str] | None
) -> tuple[nn.Embedding, str, list[str]]:
    """Check that ``model`` can take a prompt: ``(input embeddings, task type, modules to save)``.
    Raises (naming the problem) for a model that is not a module, already has a prompt, has
    no input embeddings, embeddings of another width than ``token_dim``, or an unknown task."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, PromptTuningModel) or any(
        isinstance(m, (PromptEmbedding, PromptEncoder)) for m in model.modules()
    ):
        raise InjectionError("the model already has a prompt; adapt the plain base model")
    emb = input_embeddings(model)
    if token_dim is not None and token_dim != emb.embedding_dim:
        raise InjectionError(
            f"token_dim={token_dim}, but the model's embeddings are {emb.embedding_dim} wide"
        )
    task = prompt_task_type(model, task_type)
    return emb, task, _save_names(model, list(modules_to_save or []), task)


def attach_prompt(
    model: nn.Module, prompt: PromptEmbedding | PromptEncoder, config: Any, task: str, save_names: list[str]
) -> tuple[PromptTuningModel, list[nn.Parameter]]:
    """Freeze ``model``, wrap ``save_names`` in :class:`ModulesToSave`, put it behind ``prompt``;
    return ``(wrapper, trainable parameters)``. Call after :func:`check_prompt_target`: it cannot fail."""
    model.requires_grad_(False)
    saved = wrap_modules_to_save(model, save_names)
    return PromptTuningModel(model, prompt, config, task), [*prompt.parameters(), *saved]


def adapt_prompt_tuning(
    model: nn.Module, config: PromptTuningConfig
) -> tuple[PromptTuningModel, list[nn.Parameter]]:
    """Freeze ``model`` and wrap it in a :class:`PromptTuningModel`; return ``(wrapper,
    trainable parameters)``: the prompt ``(n, d)`` and the ``modules_to_save`` copies.

    Everything is checked first (config fields, input embeddings, ``token_dim`` against the
    embedding width, the task type, the ``modules_to_save`` names, TEXT token ids inside the
    vocabulary); an error leaves ``model`` exactly as it was."""
    if not isinstance(config, PromptTuningConfig):
        raise TypeError(f"config must be a PromptTuningConfig, got {type(config).__name__}")
    config.validate()
    emb, task, save_names = check_prompt_target(
        model, config.token_dim, config.task_type, config.modules_to_save
    )
    prompt = _initial_prompt(config, emb).to(device=emb.weight.device)
    return attach_prompt(model, prompt, config, task, save_names)
