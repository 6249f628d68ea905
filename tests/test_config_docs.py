"""Config fields document themselves (as PEFT's ``field(metadata={"help": ...})`` do), and the
docs page ``docs/configs.md`` shows every field with its type, default and help."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from peft_zoo import IA3Config, LoraConfig
from peft_zoo.injection.config_docs import (
    CONFIG_PAGE,
    CONFIGS,
    config_table,
    field_help,
    render_config_reference,
)

ROOT = Path(__file__).resolve().parents[1]
FIELDS = [(cls, f) for cls in CONFIGS for f in dataclasses.fields(cls)]


def test_the_reference_covers_every_exported_config() -> None:
    import peft_zoo

    exported = {getattr(peft_zoo, n) for n in peft_zoo.__all__ if n.endswith("Config")}
    assert {LoraConfig, IA3Config} <= exported
    assert set(CONFIGS) == exported


@pytest.mark.parametrize("cls, f", FIELDS, ids=[f"{cls.__name__}.{f.name}" for cls, f in FIELDS])
def test_every_field_has_a_one_line_help(cls: type, f: dataclasses.Field) -> None:
    text = field_help(f)
    assert text.strip(), f"{cls.__name__}.{f.name} has no metadata={{'help': ...}}"
    assert "\n" not in text and text == text.strip(), f"{cls.__name__}.{f.name}: help must be one line"


def test_the_help_metadata_keeps_the_defaults() -> None:
    lora, other = LoraConfig(target_modules=["q"]), LoraConfig(target_modules=["q"])
    assert (lora.rank, lora.alpha, lora.dropout, lora.rslora, lora.bias, lora.use_dora) == (
        8,
        None,
        0.0,
        False,
        "none",
        False,
    )
    assert lora.rank_pattern == lora.alpha_pattern == lora.target_parts == {}
    assert lora.rank_pattern is not other.rank_pattern, "each config gets its own dict"
    for cfg in (lora, IA3Config(target_modules=["q"])):
        assert cfg.exclude_modules is None and cfg.layers_to_transform is None
        assert cfg.layers_pattern is None and cfg.modules_to_save is None and cfg.fan_in_fan_out is None
    assert IA3Config(target_modules=["q"]).feedforward_modules is None


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_the_table_has_one_row_per_field_with_its_help(cls: type) -> None:
    rows = config_table(cls).splitlines()[2:]
    assert len(rows) == len(dataclasses.fields(cls))
    for row, f in zip(rows, dataclasses.fields(cls), strict=True):
        assert row.startswith(f"| `{f.name}` |"), row
        assert field_help(f) in row


def test_the_page_shows_every_field_of_every_config() -> None:
    page = (ROOT / CONFIG_PAGE).read_text(encoding="utf-8")
    sections = page.split("\n## ")[1:]
    assert [s.split("\n", 1)[0] for s in sections] == [cls.__name__ for cls in CONFIGS]
    for cls, section in zip(CONFIGS, sections, strict=True):
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` |" in section, f"{CONFIG_PAGE} lacks {cls.__name__}.{f.name}"


def test_the_committed_page_is_generated_from_the_field_help() -> None:
    committed = (ROOT / CONFIG_PAGE).read_text(encoding="utf-8")
    assert committed == render_config_reference(), (
        f"{CONFIG_PAGE} drifted from the field help in peft_zoo/injection/config.py: run `peft-zoo build`, "
        "which writes it from peft_zoo.injection.config_docs.render_config_reference()"
    )
