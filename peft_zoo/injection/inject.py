"""The injectors: put adapters into an existing model by module name.

``inject_lora``, ``inject_lora_recursive``, ``inject_ia3``, ``inject_qlora`` and
``build_lora_adapter_model`` replace ``nn.Linear`` modules *in place*, addressed by the dotted
paths that ``model.named_modules()`` prints (``"encoder.0.attn.q"``). Each is a thin layer over
:mod:`peft_zoo.injection.surgery`: it checks its own arguments, then
:func:`~peft_zoo.injection.surgery.replace_linears` validates every name first and only then
swaps modules, so a call that raises leaves the model exactly as it was (``requires_grad``
flags included). Each returns ``(model, params)`` where ``params`` are exactly the new adapter
parameters, ready for an optimizer.

Freezing follows Hugging Face PEFT's ``inject_adapter_in_model``: after a successful call
every parameter of ``model`` that is not an adapter parameter has ``requires_grad=False``,
so on a model without earlier adapters ``params`` is exactly the trainable set. Adapter
parameters that were already in the model (an earlier injection, a ``modules_to_save``
copy) keep their flags. To train more, use ``modules_to_save`` / ``bias`` in a config
(:mod:`peft_zoo.injection.config`), the trainability helpers of
:mod:`peft_zoo.injection.surgery` (``mark_only_adapters_trainable(model, bias=...)``), or set
``requires_grad`` yourself.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, TypedDict

import torch
from torch import nn

from ..adapters import AdapterBlock, BottleneckAdapter
from ..core.checks import check_module, check_positive_int, is_conv1d
from ..ia3 import IA3Linear
from ..lora import LoRALinear
from ..qlora import QLoRALinear
from .surgery import InjectionError, adapter_owned, as_name_list, parent_of, replace_linears
from .targets import output_head_names

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+; only the type checker reads it here
    from typing_extensions import Unpack

__all__ = [
    "LoRAOptions",
    "QLoRAOptions",
    "build_lora_adapter_model",
    "inject_ia3",
    "inject_lora",
    "inject_lora_recursive",
    "inject_qlora",
]


class LoRAOptions(TypedDict, total=False):
    """The keyword arguments the LoRA injectors pass on to :class:`~peft_zoo.LoRALinear`."""

    dropout: float
    rslora: bool
    fan_in_fan_out: bool | None


class QLoRAOptions(TypedDict, total=False):
    """The keyword arguments :func:`inject_qlora` passes on to :class:`~peft_zoo.QLoRALinear`."""

    dropout: float
    rslora: bool
    blocksize: int
    double_quant: bool
    compute_dtype: torch.dtype | None
    adapter_dtype: torch.dtype


def _matches(name: str, pattern: str) -> bool:
    """``pattern`` names this module, a module it sits in, or ends its dotted path."""
    return (
        name == pattern
        or name.endswith("." + pattern)
        or name.startswith(pattern + ".")
        or f".{pattern}." in f".{name}."
    )


def inject_lora(
    model: nn.Module,
    linear_names: str | Iterable[str],
    rank: int,
    alpha: float | None = None,
    **lora_kwargs: Unpack[LoRAOptions],
) -> tuple[nn.Module, list[nn.Parameter]]:
    """Replace each named ``nn.Linear`` with a :class:`LoRALinear` and freeze everything else.

    Args:
        model: modified in place and returned.
        linear_names: dotted module paths as ``model.named_modules()`` prints them.
        rank, alpha, lora_kwargs: passed to :class:`LoRALinear` (``dropout``, ``rslora``).

    Returns:
        ``(model, params)``: ``params`` is ``[A_1, B_1, A_2, B_2, ...]`` in name order. Every
        parameter of ``model`` that is not an adapter parameter is now frozen (as PEFT's
        ``inject_adapter_in_model`` does), so without earlier adapters ``params`` is exactly
        the set with ``requires_grad=True``; earlier adapters keep their flags.

    Raises:
        InjectionError: a name is unknown (close matches are listed), is not an
            ``nn.Linear``, is already adapted, or appears twice. The model is unchanged.
        TypeError: ``linear_names`` is not a name or a list of names (``None``, a number).
        TypeError, ValueError: a bad ``rank``, ``alpha`` or ``dropout`` (from
            :class:`LoRALinear`'s checks). The model is unchanged.
    """
    check_module(model, "inject_lora: model")
    names = as_name_list(linear_names, "linear_names")
    params = replace_linears(
        model, names, lambda _n, lin: LoRALinear(lin, rank, alpha, **lora_kwargs), "inject_lora"
    )
    return model, params


def inject_lora_recursive(
    model: nn.Module,
    rank: int,
    alpha: float | None = None,
    *,
    exclude: str | Iterable[str] = (),
    **lora_kwargs: Unpack[LoRAOptions],
) -> tuple[nn.Module, list[nn.Parameter]]:
    """Wrap every ``nn.Linear`` below ``model`` in a :class:`LoRALinear`.

    Never the root, never a Linear that already belongs to an adapter (a LoRA layer's base,
    a bottleneck adapter's projections), never one inside ``nn.MultiheadAttention``. Names
    in ``exclude`` (exact, dotted suffix, or a containing module such as ``"head"``) are
    skipped. Returns ``(model, params)`` like :func:`inject_lora`, and freezes every
    non-adapter parameter the same way.
    """
    check_module(model, "inject_lora_recursive: model")
    if isinstance(model, nn.Linear):
        raise InjectionError(
            "inject_lora_recursive never replaces the root module; wrap a lone Linear with "
            "LoRALinear(linear, rank) instead"
        )
    excluded = as_name_list(exclude, "exclude")
    owned = adapter_owned(model)
    names, skipped = [], []
    for name, module in model.named_modules():
        if not name or not (isinstance(module, nn.Linear) or is_conv1d(module)) or id(module) in owned:
            continue
        if any(_matches(name, p) for p in excluded):
            continue
        if isinstance(parent_of(model, name)[0], nn.MultiheadAttention):
            skipped.append(name)
            continue
        names.append(name)
    if skipped:
        warnings.warn(
            f"inject_lora_recursive skipped {skipped}: nn.MultiheadAttention reads these "
            "weights directly, so they cannot be wrapped",
            stacklevel=2,
        )
    if not names:
        raise InjectionError(
            "inject_lora_recursive found no nn.Linear to wrap (all are excluded or already "
            "adapted). The model was not changed."
        )
    return inject_lora(model, names, rank, alpha, **lora_kwargs)


def inject_ia3(
    model: nn.Module,
    linear_names: str | Iterable[str],
    *,
    feedforward_names: str | Iterable[str] = (),
) -> tuple[nn.Module, list[nn.Parameter]]:
    """Replace each named ``nn.Linear`` with an :class:`IA3Linear` scaling its output.

    Names in ``feedforward_names`` get the feed-forward form, which scales the layer's
    *input* (the IA³ paper applies it to the feed-forward down projection). Returns
    ``(model, [scale, ...])`` in name order; like :func:`inject_lora` it freezes every
    non-adapter parameter of ``model`` and raises (changing nothing) on a bad name.
    """
    check_module(model, "inject_ia3: model")
    names = as_name_list(linear_names, "linear_names")
    ff = as_name_list(feedforward_names, "feedforward_names")
    all_names = as_name_list(names + ff, "linear_names + feedforward_names")
    ff_set = set(ff)
    params = replace_linears(
        model, all_names, lambda n, lin: IA3Linear(lin, feedforward=n in ff_set), "inject_ia3"
    )
    return model, params


def _infer_d_model(model: nn.Module) -> int | None:
    for attr in ("d_model", "hidden_size", "embed_dim"):
        value = getattr(model, attr, None) or getattr(getattr(model, "config", None), attr, None)
        if isinstance(value, int):
            return value
    first = next((m for m in model.modules() if isinstance(m, nn.Linear)), None)
    return None if first is None else first.in_features


def build_lora_adapter_model(
    base: nn.Module,
    lora_names: str | Iterable[str],
    rank: int,
    alpha: float | None = None,
    adapter_bottleneck: int | None = None,
    *,
    d_model: int | None = None,
    **lora_kwargs: Unpack[LoRAOptions],
) -> tuple[nn.Module, list[nn.Parameter]]:
    """LoRA on the named linears of ``base``, optionally a serial adapter around all of it.

    With ``adapter_bottleneck`` the result is ``AdapterBlock(base, BottleneckAdapter(d_model,
    adapter_bottleneck))``, i.e. ``h = x + base(x); out = h + delta(h)``; ``base`` must map
    ``(..., d_model) -> (..., d_model)``. ``d_model`` defaults to ``base.d_model``, then the
    ``in_features`` of its first Linear. Everything except the LoRA and adapter weights is
    frozen. Returns ``(model, params)`` with exactly the trainable parameters (LoRA first).

    All or nothing: every argument is checked and the adapter is built before LoRA is
    injected, so a call that raises (a bad name, an adapter too large to allocate) leaves
    ``base`` exactly as it was, ``requires_grad`` flags included.
    """
    check_module(base, "build_lora_adapter_model: base")
    names = as_name_list(lora_names, "lora_names")
    adapter = None
    if adapter_bottleneck is not None:
        check_positive_int(adapter_bottleneck, "adapter_bottleneck")
        d_model = _infer_d_model(base) if d_model is None else check_positive_int(d_model, "d_model")
        if d_model is None:
            raise InjectionError("build_lora_adapter_model: pass d_model; it cannot be inferred")
        adapter = _build_adapter(base, d_model, adapter_bottleneck)
    elif not names:
        raise InjectionError("build_lora_adapter_model: no LoRA targets and no adapter: nothing to train")
    params: list[nn.Parameter] = []
    if names:
        base, params = inject_lora(base, names, rank, alpha, **lora_kwargs)  # checks, then mutates
    model: nn.Module = base
    if adapter is not None:
        model = AdapterBlock(base, adapter)
        params = params + list(adapter.parameters())
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return model, params


def _build_adapter(base: nn.Module, d_model: int, bottleneck: int) -> BottleneckAdapter:
    """The serial adapter of :func:`build_lora_adapter_model`, built before anything changes."""
    ref = next(base.parameters(), None)  # the adapter lives where the base model's weights do
    try:
        return BottleneckAdapter(
            d_model,
            bottleneck,
            device=None if ref is None else ref.device,
            dtype=None if ref is None else ref.dtype,
        )
    except (RuntimeError, MemoryError) as err:  # e.g. the allocator refuses the size
        raise MemoryError(
            f"build_lora_adapter_model: cannot allocate BottleneckAdapter(d_model={d_model}, "
            f"adapter_bottleneck={bottleneck}) ({err}). The model was not changed."
        ) from err


def inject_qlora(
    model: nn.Module,
    linear_names: str | Iterable[str] | None = None,
    rank: int = 8,
    alpha: float | None = None,
    **qlora_kwargs: Unpack[QLoRAOptions],
) -> tuple[nn.Module, list[nn.Parameter]]:
    """Replace linear layers of ``model`` by :class:`QLoRALinear`, all or nothing.

    Args:
        model: modified in place and returned.
        linear_names: dotted module paths (as ``named_modules()`` prints them); ``None`` means
            every ``nn.Linear`` / ``Conv1D`` except the output head (see
            :func:`peft_zoo.injection.targets.output_head_names`) and layers inside
            ``nn.MultiheadAttention`` (QLoRA's "all linear layers" recipe).
        rank, alpha, qlora_kwargs: passed to :class:`QLoRALinear` (``dropout``, ``rslora``,
            ``blocksize``, ``double_quant``, ``compute_dtype``, ``adapter_dtype``).

    Returns ``(model, params)``, ``params = [A_1, B_1, A_2, B_2, ...]`` in name order. Every
    name is checked and every layer quantised before any is installed: on an error (an
    unknown name, a non-linear module, a bad rank or block size, NaN weights) the model is
    unchanged. On success every parameter that is not an adapter parameter is frozen (as
    :func:`~peft_zoo.inject_lora` does), so ``params`` is the trainable set; adapters injected
    earlier keep their flags.
    """
    check_module(model, "inject_qlora: model")
    if linear_names is None:
        heads = output_head_names(model)
        owned = adapter_owned(model)
        names = [
            name
            for name, module in model.named_modules()
            if name
            and (isinstance(module, nn.Linear) or is_conv1d(module))
            and id(module) not in owned
            and not any(name == h or name.startswith(h + ".") for h in heads)
            and not isinstance(parent_of(model, name)[0], nn.MultiheadAttention)
        ]
        if not names:
            raise InjectionError(
                "inject_qlora: the model has no linear layer to quantise (besides its output head)"
            )
    else:
        names = as_name_list(linear_names, "linear_names")
    params = replace_linears(
        model, names, lambda _n, lin: QLoRALinear(lin, rank, alpha, **qlora_kwargs), "inject_qlora"
    )
    return model, params
