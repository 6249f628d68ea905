"""Prefix tuning on a ``transformers`` model: :class:`PrefixTuningConfig` (``peft.PrefixTuningConfig``'s
fields) and the wrapper :class:`PrefixTuningModel`, called exactly like the original model.

    model, params = adapt_model(model, PrefixTuningConfig(num_virtual_tokens=8))
    out = model(input_ids=ids, attention_mask=mask, labels=labels)   # as before
    tokens = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5)

As PEFT's ``PeftModelForCausalLM`` / ``PeftModelForSequenceClassification`` do for
``PREFIX_TUNING`` (the maths: :mod:`peft_zoo.prefix_kv`): the trained keys and values go in as a
``transformers`` ``DynamicCache`` (``past_key_values``), ``attention_mask`` gets ``n`` ones in
front, the tokens' positions start at ``n`` (given ``position_ids`` are shifted by ``n``).

Sequence classification (``SEQ_CLS``) as PEFT runs it: a model whose ``forward`` names
``past_key_values`` (GPT-2, LLaMA) gets the cache and ``labels`` directly; one that does not
(``BertForSequenceClassification`` takes it only through ``**kwargs``) runs its backbone (the
first child that is a ``PreTrainedModel``) with the cache, then ``pooler_output`` -> ``dropout``
-> the classifier head (the first child whose name contains a ``modules_to_save`` entry) and
the loss ``transformers`` computes (:func:`classify`). ``token_type_ids`` stay as given (length
``L``) for ``SEQ_CLS`` and are dropped for ``CAUSAL_LM``; the classifier (``classifier`` /
``score``) is added to ``modules_to_save`` as PEFT does.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.checks import check_bool, check_positive_int
from ..prefix_kv import PrefixKVEncoder
from .modules_to_save import wrap_modules_to_save
from .prompt_model import check_prompt_target, input_embeddings
from .surgery import InjectionError
from .virtual_tokens import VirtualTokenConfig, VirtualTokenWrapper

__all__ = ["PrefixTuningConfig", "PrefixTuningModel", "adapt_prefix_tuning", "prefix_shape"]

_HOOK = "prepare_inputs_for_generation"
_SEQ_CLS_HEADS = ("classifier", "score")  # PEFT's PeftModelForSequenceClassification adds these


@dataclass
class PrefixTuningConfig(VirtualTokenConfig):
    """Prefix tuning as ``peft.PrefixTuningConfig`` configures it (PEFT's field names)."""

    token_dim: int | None = field(
        default=None,
        metadata={"help": "D: the key width; None reads it from the model (H_kv d_head with GQA)."},
    )
    num_attention_heads: int | None = field(
        default=None, metadata={"help": "H: key/value heads; None reads them from the model."}
    )
    num_layers: int | None = field(
        default=None, metadata={"help": "L: layers; None reads them from the model."}
    )
    encoder_hidden_size: int | None = field(
        default=None, metadata={"help": "h: the projection's hidden width; None takes token_dim."}
    )
    prefix_projection: bool = field(
        default=False, metadata={"help": "Train E (n, D) and an MLP to P; False trains P directly."}
    )

    def validate(self) -> None:
        """Check every field (types and values); raise naming the field."""
        super().validate()
        if self.encoder_hidden_size is not None:
            check_positive_int(self.encoder_hidden_size, "encoder_hidden_size")
        check_bool(self.prefix_projection, "prefix_projection")


def prefix_shape(model: nn.Module, config: PrefixTuningConfig) -> tuple[int, int, int]:
    """``(L, H_kv, d_head)`` as PEFT derives them from the model's config (grouped-query
    models: the key/value heads, overriding ``token_dim`` / ``num_attention_heads`` as PEFT
    does). Raises :class:`InjectionError` when a field set in ``config`` disagrees with the model."""
    cfg = getattr(model, "config", None)

    def read(*names: str) -> int | None:
        for name in names:
            value = getattr(cfg, name, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return None

    layers, width = read("num_hidden_layers", "n_layer"), read("hidden_size", "n_embd")
    heads = read("num_attention_heads", "n_head")
    if layers is None or width is None or heads is None or width % heads:
        raise InjectionError(f"cannot read layers / width / heads from {type(model).__name__}'s config")
    kv_heads = read("num_key_value_heads")
    if kv_heads is not None:  # PEFT: D = head_dim * H_kv (grouped-query attention)
        shape = (layers, kv_heads, read("head_dim") or width // heads)
        wanted = {"num_layers": (config.num_layers, layers)}
    else:
        shape = (layers, heads, width // heads)
        wanted = {
            "num_layers": (config.num_layers, layers),
            "num_attention_heads": (config.num_attention_heads, heads),
            "token_dim": (config.token_dim, width),
        }
    bad = [
        f"{k}={mine} (the model has {theirs})"
        for k, (mine, theirs) in wanted.items()
        if mine not in (None, theirs)
    ]
    if bad:
        raise InjectionError(f"PrefixTuningConfig disagrees with {type(model).__name__}: " + ", ".join(bad))
    return shape


def _seq_cls_loss(model: nn.Module, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss ``transformers``' ``...ForSequenceClassification`` (and PEFT) compute: the
    ``problem_type`` chosen (and recorded in the config) from ``num_labels`` and the label dtype."""
    config, num = getattr(model, "config", None), getattr(model, "num_labels", None)
    if not isinstance(num, int) or config is None:
        raise TypeError(f"{type(model).__name__} has no num_labels / config to compute a loss with")
    if config.problem_type is None:
        if num == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        if num == 1:
            return nn.functional.mse_loss(logits.squeeze(), labels.squeeze())
        return nn.functional.mse_loss(logits, labels)
    if config.problem_type == "single_label_classification":
        return nn.functional.cross_entropy(logits.view(-1, num), labels.view(-1))
    return nn.functional.binary_cross_entropy_with_logits(logits, labels)


def classify(
    model: nn.Module, route: tuple[str, str], labels: torch.Tensor | None, kwargs: dict[str, Any]
) -> Any:
    """PEFT's sequence classification for a model whose ``forward`` does not take
    ``past_key_values``: ``route = (backbone, head)`` child names; ``kwargs`` (the cache among
    them) go to the backbone; its ``pooler_output`` ``(B, d)`` (else its first output) ->
    ``model.dropout`` (if the model has that child) -> head -> logits ``(B, num_labels)``."""
    from transformers.modeling_outputs import SequenceClassifierOutput  # optional library

    outputs = model.get_submodule(route[0])(**kwargs)
    pooled = outputs[1] if len(outputs) > 1 else outputs[0]
    if "dropout" in dict(model.named_children()):
        pooled = model.get_submodule("dropout")(pooled)
    logits = model.get_submodule(route[1])(pooled)
    loss = None if labels is None else _seq_cls_loss(model, logits, labels)
    if kwargs.get("return_dict") is False:
        rest = (logits, *tuple(outputs)[2:])
        return rest if loss is None else (loss, *rest)
    hidden, attentions = getattr(outputs, "hidden_states", None), getattr(outputs, "attentions", None)
    return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=hidden, attentions=attentions)


class PrefixTuningModel(VirtualTokenWrapper):
    """A frozen causal LM or sequence classifier with trained per-layer keys/values (``prompt``:
    a :class:`~peft_zoo.prefix_kv.PrefixKVEncoder`). ``prompt_config``, ``task_type`` as the
    prompt wrapper; ``config`` is the base model's. ``route``: ``(backbone, head)`` child names
    when a ``SEQ_CLS`` model's ``forward`` cannot take the cache (BERT), else ``None``."""

    prompt: PrefixKVEncoder
    route: tuple[str, str] | None = None

    def cache(self, batch_size: int) -> Any:
        """The prefix as a fresh ``transformers.DynamicCache`` for ``batch_size`` samples."""
        from transformers import DynamicCache  # optional library: imported where needed

        dtype = input_embeddings(self.base_model).weight.dtype  # PEFT casts to the model's dtype
        return DynamicCache([(k.to(dtype), v.to(dtype)) for k, v in self.prompt.key_values(batch_size)])

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """The base model's output with the prefix in its cache; same arguments as the base model
        (``input_ids`` ``(B, L)`` or ``inputs_embeds`` ``(B, L, d)``, ``attention_mask`` ``(B, L)``)."""
        source = input_ids if input_ids is not None else inputs_embeds
        if source is None:
            raise ValueError("pass input_ids or inputs_embeds")
        if kwargs.get("past_key_values") is not None:
            raise ValueError("past_key_values is where the prefix goes; do not pass one")
        batch = source.shape[0]
        if attention_mask is not None:
            ones = torch.ones(
                batch, self.num_virtual_tokens, dtype=attention_mask.dtype, device=source.device
            )
            attention_mask = torch.cat((ones, attention_mask), dim=1)  # (B, n + L)
        if kwargs.get("position_ids") is not None:
            kwargs["position_ids"] = kwargs["position_ids"] + self.num_virtual_tokens
        if self.task_type == "CAUSAL_LM":
            kwargs.pop("token_type_ids", None)
        kwargs.update(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            past_key_values=self.cache(batch),
        )
        if self.route is not None:
            return classify(self.base_model, self.route, labels, kwargs)
        return self.base_model(labels=labels, **kwargs)

    def _prepare(self, prepare: Any, *args: Any, **kwargs: Any) -> Any:
        """PEFT's ``prepare_inputs_for_generation`` for prefix tuning, one step."""
        inputs = prepare(*args, **kwargs)
        n, ids = self.num_virtual_tokens, inputs["input_ids"]
        cache = inputs.get("past_key_values")
        if cache is not None and cache.get_seq_length() >= ids.shape[1]:
            inputs["input_ids"] = ids = ids[:, -1:]
        mask = inputs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            inputs["attention_mask"] = torch.cat((mask.new_ones(ids.shape[0], n), mask), dim=1)
        if inputs.get("position_ids") is not None:
            inputs["position_ids"] = inputs["position_ids"] + n
        inputs.pop("token_type_ids", None)
        position = inputs.get("cache_position")
        if cache is None or not cache.get_seq_length():
            inputs["past_key_values"] = self.cache(ids.shape[0])
        if position is not None and int(position[0]) == 0:
            inputs["cache_position"] = position + n
        return inputs

    @torch.no_grad()
    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The base model's ``generate`` with the prefix in the cache of every step (as PEFT)."""
        if self.task_type != "CAUSAL_LM":
            raise ValueError(f"generate needs a causal LM; this model's task_type is {self.task_type}")
        prepare = getattr(self.base_model, _HOOK, None)
        generate = getattr(self.base_model, "generate", None)
        if not callable(prepare) or not callable(generate):
            raise TypeError(f"{type(self.base_model).__name__} cannot generate")
        own = vars(self.base_model).get(_HOOK)
        setattr(self.base_model, _HOOK, functools.wraps(prepare)(functools.partial(self._prepare, prepare)))
        try:
            return generate(*args, **kwargs)
        finally:
            delattr(self.base_model, _HOOK)
            if own is not None:
                setattr(self.base_model, _HOOK, own)


def _takes_cache(module: nn.Module) -> bool:
    return "past_key_values" in inspect.signature(module.forward).parameters


def seq_cls_route(model: nn.Module, modules_to_save: list[str] | None) -> tuple[str, str] | None:
    """``None`` when ``model.forward`` takes ``past_key_values``; else PEFT's ``(backbone, head)``:
    the first child that is a ``PreTrainedModel`` (its ``forward`` must take the cache) and the
    first child whose name contains an entry of ``modules_to_save`` + ``classifier`` / ``score``.
    Raises :class:`InjectionError` when either is missing."""
    if _takes_cache(model):
        return None
    from transformers import PreTrainedModel  # optional library: imported where needed

    children = list(model.named_children())
    backbone = next((n for n, m in children if isinstance(m, PreTrainedModel)), None)
    if backbone is None or not _takes_cache(model.get_submodule(backbone)):
        raise InjectionError(
            f"{type(model).__name__}.forward takes no past_key_values and it has no backbone that "
            "does; prefix tuning needs one (as PEFT does)"
        )
    wanted = [*(modules_to_save or []), *_SEQ_CLS_HEADS]
    head = next((n for n, _ in children if any(w in n for w in wanted)), None)
    if head is None:
        raise InjectionError(
            f"{type(model).__name__} has no classifier head: no child's name contains one of {wanted}"
        )
    return backbone, head


def adapt_prefix_tuning(
    model: nn.Module, config: PrefixTuningConfig
) -> tuple[PrefixTuningModel, list[nn.Parameter]]:
    """Freeze ``model`` and wrap it in a :class:`PrefixTuningModel`; return ``(wrapper,
    trainable parameters)``: the prefix encoder's, then the ``modules_to_save`` copies' (for
    ``SEQ_CLS`` the classifier joins them). Everything is checked first; an error leaves
    ``model`` as it was."""
    if not isinstance(config, PrefixTuningConfig):
        raise TypeError(f"config must be a PrefixTuningConfig, got {type(config).__name__}")
    config.validate()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if any(isinstance(m, PrefixKVEncoder) for m in model.modules()):
        raise InjectionError("the model already has a prefix; adapt the plain base model")
    emb, task, save_names = check_prompt_target(model, None, config.task_type, config.modules_to_save)
    route = seq_cls_route(model, config.modules_to_save) if task == "SEQ_CLS" else None
    layers, heads, head_dim = prefix_shape(model, config)
    hidden = (config.encoder_hidden_size or heads * head_dim) if config.prefix_projection else None
    encoder = PrefixKVEncoder(config.num_virtual_tokens, layers, heads, head_dim, hidden)
    encoder.to(device=emb.weight.device)
    model.requires_grad_(False)
    params = [*encoder.parameters(), *wrap_modules_to_save(model, save_names)]
    wrapper = PrefixTuningModel(model, encoder, config, task)
    wrapper.route = route
    return wrapper, params
