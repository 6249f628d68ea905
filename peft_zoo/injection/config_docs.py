"""The config reference page, written from the configs' own field help.

Every field of :class:`~peft_zoo.LoraConfig` and :class:`~peft_zoo.IA3Config` carries a one-line
help in ``field(metadata={"help": ...})``, as Hugging Face PEFT's configs do. :func:`config_table`
turns one config class into a Markdown table (field, type, default, help) and
:func:`render_config_reference` into the whole page ``docs/configs.md`` (:data:`CONFIG_PAGE`),
which is committed and kept equal to this output by a test, like the generated challenge index.
"""

from __future__ import annotations

import dataclasses
import html
import inspect
import re
from typing import Any

from .adalora_config import AdaLoraConfig
from .boft_config import BOFTConfig
from .bottleneck_config import BottleneckConfig, DoubleSeqBnConfig, ParBnConfig, SeqBnConfig
from .config import IA3Config, LoraConfig
from .lycoris_config import LoHaConfig, LoKrConfig
from .oft_config import OFTConfig
from .prefix_model import PrefixTuningConfig
from .prompt_model import PromptTuningConfig
from .ptuning_config import PromptEncoderConfig
from .vera_config import VeraConfig

__all__ = ["CONFIGS", "CONFIG_PAGE", "config_table", "field_help", "render_config_reference"]

CONFIGS: tuple[type[Any], ...] = (
    LoraConfig,
    IA3Config,
    LoHaConfig,
    LoKrConfig,
    VeraConfig,
    OFTConfig,
    BOFTConfig,
    AdaLoraConfig,
    BottleneckConfig,
    SeqBnConfig,
    DoubleSeqBnConfig,
    ParBnConfig,
    PromptTuningConfig,
    PromptEncoderConfig,
    PrefixTuningConfig,
)
CONFIG_PAGE = "docs/configs.md"  # relative to the repository root

_ROLE = re.compile(r":\w+:`~?(?:[\w.]*\.)?(\w+)`")  # :class:`~peft_zoo.dora.DoRALinear` -> DoRALinear


def field_help(f: dataclasses.Field[Any]) -> str:
    """The one-line help of a config field (``""`` when it has none)."""
    return str(f.metadata.get("help", ""))


def _code(text: str) -> str:
    """``text`` as inline code that is safe inside a table cell: a backtick span, or, when it
    holds a ``|`` (which would split the cell, even inside backticks on GitHub), an HTML
    ``<code>`` element with the pipe written as ``&#124;``."""
    if "|" not in text:
        return f"`{text}`"
    return "<code>" + html.escape(text).replace("|", "&#124;") + "</code>"


def _default(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        return _code(repr(f.default))
    if f.default_factory is not dataclasses.MISSING:
        return _code(repr(f.default_factory()))
    return "required"


def _markdown(docstring: str) -> str:
    """A reST docstring as Markdown: ``code`` -> `code`, :class:`~a.B` -> `B`."""
    return _ROLE.sub(r"`\1`", docstring).replace("``", "`")


def config_table(cls: type[Any]) -> str:
    """A Markdown table of every field of the config dataclass ``cls``, in definition order."""
    rows = ["| field | type | default | help |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        help_text = field_help(f).replace("|", "\\|")
        rows.append(f"| `{f.name}` | {_code(str(f.type))} | {_default(f)} | {help_text} |")
    return "\n".join(rows) + "\n"


def render_config_reference() -> str:
    """The text of ``docs/configs.md``: one section per config, its docstring and its table."""
    parts = [
        "# Config fields\n",
        "<!-- Generated from the field help in peft_zoo/injection/config.py by "
        "peft_zoo.injection.config_docs; do not edit by hand. -->\n",
        'Every field of a config says what it does in `field(metadata={"help": ...})`, as Hugging '
        "Face PEFT's configs do; this page is written from those helps "
        "([config.py](../peft_zoo/injection/config.py)). Pass a config to `adapt_model(model, "
        "config)`; `lora_config_from_peft` / `peft_dict_from_config` translate it to and from "
        "PEFT's field names (`rank` is PEFT's `r`, `alpha` its `lora_alpha`). A `TargetSpec` is a "
        "regex (`str`) or a list, tuple or set of module names.\n",
    ]
    for cls in CONFIGS:
        doc = _markdown(inspect.cleandoc(cls.__doc__ or ""))
        parts.append(f"## {cls.__name__}\n\n{doc}\n\n{config_table(cls)}")
    return "\n".join(parts)
