"""Bad configs and bad ``adapter_config.json`` files: every one is refused with an error that
names the field (and the file), and nothing is changed.

One table of :class:`badinput.Refusal` cases, run by :func:`badinput.check_refusal`:
``LoraConfig`` / ``IA3Config`` from Python (every field: wrong types, bad values, bad and
catastrophic regexes), ``adapt_model`` on a config mutated after construction,
``find_targets`` arguments, and PEFT ``adapter_config.json`` fields loaded through
``load_peft`` / ``read_peft`` / ``config_from_peft`` (wrong types, bad values, bad regexes,
catastrophic regexes, nested, non-object, invalid, oversized and duplicate-key JSON,
missing and unknown fields).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from badinput import Refusal, check_refusal
from torch import nn

import peft_zoo as pz
from peft_zoo.interop.peft_format import (
    PeftFormatError,
    config_from_peft,
    load_peft,
    peft_dict_from_config,
    read_peft,
    save_peft,
)

# A module name on which a nested repetition such as "(a|aa)+$" backtracks for minutes with
# Python's re (about 0.1 s at 28 characters, x1.6 per character).
LONG = "a" * 40 + "b"
CATASTROPHIC = "(a|aa)+$"
BAD_RE = "(unclosed"
CONFIG = "adapter_config.json"


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(4, 4)
        self.v = nn.Linear(4, 4)
        self.mlp = nn.Linear(4, 4)


class Tiny(nn.Module):
    """``layers.{0,1}.{q,v,mlp}``, modules named ``LONG`` and ``deep.LONG``, and a ``head``."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Block(), Block()])
        self.add_module(LONG, nn.Linear(4, 4))
        self.deep = nn.ModuleDict({LONG: nn.Linear(4, 4)})  # LONG as a dotted suffix
        self.head = nn.Linear(4, 2)


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return Tiny()


_WORKDIR: list[Path] = []


@pytest.fixture(autouse=True)
def _workdir(tmp_path: Path):
    _WORKDIR.append(tmp_path)
    yield
    _WORKDIR.pop()


# ----------------------------------------------------------------------------- case builders


def py(id: str, make: Callable[[], object], raises: Any, *words: str) -> Refusal:
    """A call from Python with no state to watch (a config constructor)."""
    return Refusal(id, call=lambda s: make(), raises=raises, words=words)


def lora(id: str, raises: Any, field: str, **kwargs: Any) -> Refusal:
    kwargs.setdefault("target_modules", ["q"])
    return py(f"LoraConfig {id}", lambda: pz.LoraConfig(**kwargs), raises, field)


def ia3(id: str, raises: Any, field: str, **kwargs: Any) -> Refusal:
    kwargs.setdefault("target_modules", ["q", "mlp"])
    return py(f"IA3Config {id}", lambda: pz.IA3Config(**kwargs), raises, field)


def on_model(id: str, call: Callable[[nn.Module], object], raises: Any, *words: str) -> Refusal:
    """A call on a fresh ``tiny()`` model, which must stay unchanged."""
    return Refusal(
        id, call=lambda s: call(s["model"]), raises=raises, words=words,
        setup=lambda: {"model": tiny()}, watch_modules=["model"],
    )  # fmt: skip


def mutated(config: Callable[[], Any], field: str, value: object) -> Callable[[nn.Module], object]:
    """``adapt_model`` with a config whose ``field`` was set to ``value`` after construction."""

    def call(model: nn.Module) -> object:
        cfg = config()
        setattr(cfg, field, value)
        return pz.adapt_model(model, cfg)

    return call


def saved_adapter(kind: str) -> dict[str, Any]:
    """A PEFT adapter directory saved by ``save_peft`` from an adapted ``tiny()``, and a fresh base."""
    model = tiny()
    if kind == "lora":
        config: pz.LoraConfig | pz.IA3Config = pz.LoraConfig(target_modules=["q", "v"], rank=2, alpha=4.0)
    else:
        config = pz.IA3Config(target_modules=["q", "mlp"], feedforward_modules=["mlp"])
    pz.adapt_model(model, config)
    path = save_peft(model, _WORKDIR[-1] / f"adapter_{kind}")
    return {"model": tiny(), "path": path}


def peft_file(
    id: str,
    edit: Callable[[dict[str, Any]], object] | bytes | str,
    *words: str,
    kind: str = "lora",
    reader: str = "load_peft",
) -> Refusal:
    """``adapter_config.json`` edited (a function of the dict) or replaced (bytes / text), then
    read with ``load_peft`` or ``read_peft``; the message must name the file and ``words``."""

    def setup() -> dict[str, Any]:
        state = saved_adapter(kind)
        file = state["path"] / CONFIG
        if isinstance(edit, bytes):
            file.write_bytes(edit)
        elif isinstance(edit, str):
            file.write_text(edit)
        else:
            data = json.loads(file.read_text())
            edit(data)
            file.write_text(json.dumps(data))
        return state

    def call(state: dict[str, Any]) -> object:
        if reader == "read_peft":
            return read_peft(state["path"])
        return load_peft(state["model"], state["path"])

    return Refusal(
        f"{reader} {kind} {id}", call=call, raises=PeftFormatError, words=(CONFIG, *words), setup=setup,
        watch_modules=["model"], watch_paths=["path"],
    )  # fmt: skip


def setting(**fields: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.update(fields)


def dropping(field: str) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.pop(field)


def nested(depth: int) -> str:
    return '{"peft_type": "LORA", "target_modules": ' + "[" * depth + "]" * depth + "}"


# ----------------------------------------------------------------------------- the table

LORA_PY = [
    lora("rslora='yes' (issue)", TypeError, "rslora", rslora="yes"),
    lora("rslora=1", TypeError, "rslora", rslora=1),
    lora("rslora=None", TypeError, "rslora", rslora=None),
    lora("use_dora='no'", TypeError, "use_dora", use_dora="no"),
    lora("use_dora=0", TypeError, "use_dora", use_dora=0),
    lora("rank='8'", TypeError, "rank", rank="8"),
    lora("rank=8.0", TypeError, "rank", rank=8.0),
    lora("rank=True", TypeError, "rank", rank=True),
    lora("rank=0", ValueError, "rank", rank=0),
    lora("rank=10**30", ValueError, "rank", rank=10**30),
    lora("alpha='8' (issue)", TypeError, "alpha", alpha="8"),
    lora("alpha=True", TypeError, "alpha", alpha=True),
    lora("alpha=nan", ValueError, "alpha", alpha=float("nan")),
    lora("alpha=inf", ValueError, "alpha", alpha=float("inf")),
    lora("alpha=-4", ValueError, "alpha", alpha=-4.0),
    lora("dropout='0.1'", TypeError, "dropout", dropout="0.1"),
    lora("dropout=1.5", ValueError, "dropout", dropout=1.5),
    lora("dropout=True", TypeError, "dropout", dropout=True),
    lora("bias='yes'", ValueError, "bias", bias="yes"),
    lora("bias=None", TypeError, "bias", bias=None),
    lora("bias=['none']", TypeError, "bias", bias=["none"]),
    lora("layers_to_transform='x' (issue)", TypeError, "layers_to_transform", layers_to_transform="x"),
    lora(
        "layers_to_transform=[10**30] (issue)",
        ValueError,
        "layers_to_transform",
        layers_to_transform=[10**30],
    ),
    lora("layers_to_transform=[-1]", ValueError, "layers_to_transform", layers_to_transform=[-1]),
    lora("layers_to_transform=[True]", TypeError, "layers_to_transform", layers_to_transform=[True]),
    lora("layers_to_transform=[1.0]", TypeError, "layers_to_transform", layers_to_transform=[1.0]),
    lora("layers_to_transform=1.5", TypeError, "layers_to_transform", layers_to_transform=1.5),
    lora("layers_to_transform={1: 2}", TypeError, "layers_to_transform", layers_to_transform={1: 2}),
    lora("layers_pattern=3", TypeError, "layers_pattern", layers_pattern=3),
    lora("layers_pattern=['layer', 3]", TypeError, "layers_pattern", layers_pattern=["layer", 3]),
    lora("layers_pattern invalid regex", ValueError, "layers_pattern", layers_pattern=BAD_RE),
    lora("modules_to_save='head' (issue)", TypeError, "modules_to_save", modules_to_save="head"),
    lora("modules_to_save=[3]", TypeError, "modules_to_save", modules_to_save=[3]),
    lora("modules_to_save=['']", ValueError, "modules_to_save", modules_to_save=[""]),
    lora("fan_in_fan_out='no'", TypeError, "fan_in_fan_out", fan_in_fan_out="no"),
    lora("fan_in_fan_out=0", TypeError, "fan_in_fan_out", fan_in_fan_out=0),
    lora("target_modules=3", TypeError, "target_modules", target_modules=3),
    lora("target_modules=[3]", TypeError, "target_modules", target_modules=[3]),
    lora("target_modules=['q', None]", TypeError, "target_modules", target_modules=["q", None]),
    lora("target_modules=['']", ValueError, "target_modules", target_modules=[""]),
    lora("target_modules={'q': 1}", TypeError, "target_modules", target_modules={"q": 1}),
    lora("target_modules invalid regex", ValueError, "target_modules", target_modules=BAD_RE),
    lora("target_modules=None", ValueError, "target_modules", target_modules=None),
    lora("exclude_modules=5", TypeError, "exclude_modules", exclude_modules=5),
    lora("exclude_modules invalid regex", ValueError, "exclude_modules", exclude_modules="[a-"),
    lora("rank_pattern=['q']", TypeError, "rank_pattern", rank_pattern=["q"]),
    lora("rank_pattern={'q': '4'}", TypeError, "rank_pattern", rank_pattern={"q": "4"}),
    lora("rank_pattern={'q': 4.0}", TypeError, "rank_pattern", rank_pattern={"q": 4.0}),
    lora("rank_pattern={'q': True}", TypeError, "rank_pattern", rank_pattern={"q": True}),
    lora("rank_pattern={'q': 10**30}", ValueError, "rank_pattern", rank_pattern={"q": 10**30}),
    lora("rank_pattern={3: 4}", TypeError, "rank_pattern", rank_pattern={3: 4}),
    lora("rank_pattern invalid regex key", ValueError, "rank_pattern", rank_pattern={BAD_RE: 4}),
    lora("alpha_pattern={'q': '8'}", TypeError, "alpha_pattern", alpha_pattern={"q": "8"}),
    lora("alpha_pattern={'q': nan}", ValueError, "alpha_pattern", alpha_pattern={"q": float("nan")}),
    lora("alpha_pattern invalid regex key", ValueError, "alpha_pattern", alpha_pattern={"[": 8.0}),
    lora("target_parts={'q': 'yes'}", ValueError, "target_parts", target_parts={"q": "yes"}),
    lora("target_parts invalid regex key", ValueError, "target_parts", target_parts={BAD_RE: [True]}),
]

IA3_PY = [
    ia3("feedforward_modules=3", TypeError, "feedforward_modules", feedforward_modules=3),
    ia3("feedforward_modules=[1]", TypeError, "feedforward_modules", feedforward_modules=[1]),
    ia3("feedforward_modules invalid regex", ValueError, "feedforward_modules", feedforward_modules=BAD_RE),
    ia3("modules_to_save='head'", TypeError, "modules_to_save", modules_to_save="head"),
    ia3("fan_in_fan_out='yes'", TypeError, "fan_in_fan_out", fan_in_fan_out="yes"),
    ia3("target_modules=('q', 3)", TypeError, "target_modules", target_modules=("q", 3)),
    ia3("layers_to_transform=[10**30]", ValueError, "layers_to_transform", layers_to_transform=[10**30]),
    ia3("exclude_modules invalid regex", ValueError, "exclude_modules", exclude_modules=BAD_RE),
]


def _lora_qv() -> pz.LoraConfig:
    return pz.LoraConfig(target_modules=["q", "v"], rank=2)


def _ia3_ff() -> pz.IA3Config:
    return pz.IA3Config(target_modules=["q", "mlp"], feedforward_modules=["mlp"])


ADAPT = [
    on_model("adapt_model rslora='yes' set after construction", mutated(_lora_qv, "rslora", "yes"),
             TypeError, "rslora"),
    on_model("adapt_model rank='4' set after construction", mutated(_lora_qv, "rank", "4"), TypeError, "rank"),
    on_model("adapt_model modules_to_save='head' set after construction",
             mutated(_lora_qv, "modules_to_save", "head"), TypeError, "modules_to_save"),
    on_model("adapt_model IA3 feedforward_modules=5 set after construction",
             mutated(_ia3_ff, "feedforward_modules", 5), TypeError, "feedforward_modules"),
    on_model("adapt_model catastrophic target_modules",
             lambda m: pz.adapt_model(m, pz.LoraConfig(target_modules=CATASTROPHIC)), ValueError,
             "target_modules", "regular expression"),
    on_model("adapt_model catastrophic rank_pattern key",
             lambda m: pz.adapt_model(m, pz.LoraConfig(target_modules=[LONG], rank_pattern={"(a|aa)+": 4})),
             ValueError, "rank_pattern", "regular expression"),
    on_model("adapt_model catastrophic alpha_pattern key",
             lambda m: pz.adapt_model(m, pz.LoraConfig(target_modules=[LONG], alpha_pattern={"(a|aa)+": 4.0})),
             ValueError, "alpha_pattern", "regular expression"),
    on_model("adapt_model catastrophic exclude_modules",
             lambda m: pz.adapt_model(m, pz.LoraConfig(target_modules=[LONG], exclude_modules=CATASTROPHIC)),
             ValueError, "exclude_modules", "regular expression"),
    on_model("adapt_model IA3 catastrophic feedforward_modules",
             lambda m: pz.adapt_model(m, pz.IA3Config(target_modules=[LONG], feedforward_modules=CATASTROPHIC)),
             ValueError, "feedforward_modules", "regular expression"),
    on_model("adapt_model a dict config", lambda m: pz.adapt_model(m, {"rank": 4}), TypeError, "config"),
]  # fmt: skip

FIND = [
    on_model("find_targets target_modules=None", lambda m: pz.find_targets(m, None), TypeError, "target_modules"),
    on_model("find_targets target_modules=3", lambda m: pz.find_targets(m, 3), TypeError, "target_modules"),
    on_model("find_targets target_modules=[3]", lambda m: pz.find_targets(m, [3]), TypeError, "target_modules"),
    on_model("find_targets target_modules invalid regex", lambda m: pz.find_targets(m, BAD_RE), ValueError,
             "target_modules", "regular expression"),
    on_model("find_targets exclude_modules invalid regex",
             lambda m: pz.find_targets(m, ["q"], exclude_modules="*q"), ValueError, "exclude_modules"),
    on_model("find_targets exclude_modules=7", lambda m: pz.find_targets(m, ["q"], exclude_modules=7),
             TypeError, "exclude_modules"),
    on_model("find_targets layers_to_transform='x'",
             lambda m: pz.find_targets(m, ["q"], layers_to_transform="x"), TypeError, "layers_to_transform"),
    on_model("find_targets layers_to_transform=[10**30]",
             lambda m: pz.find_targets(m, ["q"], layers_to_transform=[10**30]), ValueError, "layers_to_transform"),
    on_model("find_targets layers_to_transform=[True]",
             lambda m: pz.find_targets(m, ["q"], layers_to_transform=[True]), TypeError, "layers_to_transform"),
    on_model("find_targets layers_pattern invalid regex",
             lambda m: pz.find_targets(m, ["q"], layers_to_transform=[0], layers_pattern=BAD_RE), ValueError,
             "layers_pattern"),
    on_model("find_targets layers_pattern=5",
             lambda m: pz.find_targets(m, ["q"], layers_to_transform=[0], layers_pattern=5), TypeError,
             "layers_pattern"),
    on_model("find_targets catastrophic target_modules", lambda m: pz.find_targets(m, CATASTROPHIC),
             ValueError, "target_modules", "regular expression"),
    on_model("find_targets catastrophic exclude_modules",
             lambda m: pz.find_targets(m, [LONG], exclude_modules=CATASTROPHIC), ValueError, "exclude_modules"),
    on_model("find_targets catastrophic layers_pattern",
             lambda m: pz.find_targets(m, [LONG], layers_to_transform=[0], layers_pattern="(a|aa)+"),
             ValueError, "layers_pattern"),
    on_model("find_targets model='x'", lambda m: pz.find_targets("x", ["q"]), TypeError, "model"),
    on_model("find_targets types=('x',)", lambda m: pz.find_targets(m, ["q"], types=("x",)), TypeError, "types"),
]  # fmt: skip

FILES = [
    peft_file("use_rslora='no' (issue)", setting(use_rslora="no"), "use_rslora"),
    peft_file("use_rslora=1", setting(use_rslora=1), "use_rslora"),
    peft_file("lora_alpha='8' (issue)", setting(lora_alpha="8"), "lora_alpha"),
    peft_file("lora_alpha=NaN", setting(lora_alpha=float("nan")), "lora_alpha"),
    peft_file("lora_alpha=-1", setting(lora_alpha=-1), "lora_alpha"),
    peft_file("lora_alpha=true", setting(lora_alpha=True), "lora_alpha"),
    peft_file("r='2'", setting(r="2"), "r must"),
    peft_file("r=2.5", setting(r=2.5), "r must"),
    peft_file("r=true", setting(r=True), "r must"),
    peft_file("r=10**30", setting(r=10**30), "r must"),
    peft_file("lora_dropout='0.1'", setting(lora_dropout="0.1"), "lora_dropout"),
    peft_file("lora_dropout=2", setting(lora_dropout=2), "lora_dropout"),
    peft_file("bias='yes'", setting(bias="yes"), "bias"),
    peft_file("bias=0", setting(bias=0), "bias"),
    peft_file("layers_to_transform='x' (issue)", setting(layers_to_transform="x"), "layers_to_transform"),
    peft_file("layers_to_transform=[10**30] (issue)", setting(layers_to_transform=[10**30]), "layers_to_transform"),
    peft_file("layers_pattern=3", setting(layers_pattern=3), "layers_pattern"),
    peft_file("rank_pattern={'q': '4'}", setting(rank_pattern={"q": "4"}), "rank_pattern"),
    peft_file("rank_pattern=[1]", setting(rank_pattern=[1]), "rank_pattern"),
    peft_file("rank_pattern invalid regex key", setting(rank_pattern={BAD_RE: 4}), "rank_pattern",
              "regular expression"),
    peft_file("alpha_pattern={'q': '8'}", setting(alpha_pattern={"q": "8"}), "alpha_pattern"),
    peft_file("target_modules invalid regex", setting(target_modules=BAD_RE), "target_modules",
              "regular expression"),
    peft_file("target_modules=5", setting(target_modules=5), "target_modules"),
    peft_file("target_modules=[1, 2]", setting(target_modules=[1, 2]), "target_modules"),
    peft_file("exclude_modules invalid regex", setting(exclude_modules="[a-"), "exclude_modules"),
    peft_file("modules_to_save='head'", setting(modules_to_save="head"), "modules_to_save"),
    peft_file("modules_to_save=[1]", setting(modules_to_save=[1]), "modules_to_save"),
    peft_file("fan_in_fan_out='no'", setting(fan_in_fan_out="no"), "fan_in_fan_out"),
    peft_file("use_dora='no'", setting(use_dora="no"), "use_dora"),
    peft_file("inference_mode='yes'", setting(inference_mode="yes"), "inference_mode"),
    peft_file("init_lora_weights=1", setting(init_lora_weights=1), "init_lora_weights"),
    peft_file("task_type='CLASSIFY'", setting(task_type="CLASSIFY"), "task_type"),
    peft_file("task_type=5", setting(task_type=5), "task_type"),
    peft_file("peft_version=3", setting(peft_version=3), "peft_version"),
    peft_file("base_model_name_or_path=[1]", setting(base_model_name_or_path=[1]), "base_model_name_or_path"),
    peft_file("catastrophic target_modules", setting(target_modules=CATASTROPHIC), "target_modules",
              "regular expression"),
    peft_file("catastrophic exclude_modules", setting(exclude_modules=CATASTROPHIC), "exclude_modules",
              "regular expression"),
    peft_file("catastrophic rank_pattern key", setting(target_modules=[LONG], rank_pattern={"(a|aa)+": 4}),
              "rank_pattern", "regular expression"),
    peft_file("catastrophic alpha_pattern key", setting(target_modules=[LONG], alpha_pattern={"(a|aa)+": 4}),
              "alpha_pattern", "regular expression"),
    peft_file("catastrophic layers_pattern",
              setting(target_modules=[LONG], layers_to_transform=[0], layers_pattern="(a|aa)+"),
              "layers_pattern", "regular expression"),
    peft_file("catastrophic modules_to_save", setting(modules_to_save=["(a|aa)+"]), "modules_to_save",
              "regular expression"),
    peft_file("100000 nested lists", nested(100_000), "nested"),
    peft_file("a JSON array", "[]", "JSON object"),
    peft_file("a JSON string", '"LORA"', "JSON object"),
    peft_file("invalid JSON", "{not json", "invalid JSON"),
    peft_file("20 MB of whitespace", b" " * (20 << 20) + b"{}", "too large"),
    peft_file("duplicate keys", '{"peft_type": "LORA", "use_rslora": false, "use_rslora": true}', "use_rslora"),
    peft_file("not UTF-8", b'{"peft_type": "LORA", "target_modules": ["\xff"]}', "UTF-8"),
    peft_file("an unknown field", setting(shiny_new_option=1), "shiny_new_option"),
    peft_file("no target_modules", dropping("target_modules"), "target_modules"),
    peft_file("no peft_type", dropping("peft_type"), "peft_type"),
    peft_file("peft_type=3", setting(peft_type=3), "peft_type"),
    peft_file("feedforward_modules invalid regex", setting(feedforward_modules=BAD_RE), "feedforward_modules",
              kind="ia3"),
    peft_file("feedforward_modules=5", setting(feedforward_modules=5), "feedforward_modules", kind="ia3"),
    peft_file("catastrophic feedforward_modules", setting(target_modules=[LONG], feedforward_modules=CATASTROPHIC),
              "feedforward_modules", "regular expression", kind="ia3"),
    peft_file("init_ia3_weights='yes'", setting(init_ia3_weights="yes"), "init_ia3_weights", kind="ia3"),
    peft_file("modules_to_save='head'", setting(modules_to_save="head"), "modules_to_save", kind="ia3"),
    peft_file("use_rslora='no'", setting(use_rslora="no"), "use_rslora", reader="read_peft"),
    peft_file("lora_alpha='8'", setting(lora_alpha="8"), "lora_alpha", reader="read_peft"),
    peft_file("100000 nested lists", nested(100_000), "nested", reader="read_peft"),
    peft_file("a JSON array", "[1, 2]", "JSON object", reader="read_peft"),
]  # fmt: skip

_PEFT = {"peft_type": "LORA", "target_modules": ["q"]}
DICTS = [
    py("config_from_peft use_rslora='no'", lambda: config_from_peft({**_PEFT, "use_rslora": "no"}),
       PeftFormatError, "use_rslora"),
    py("config_from_peft lora_alpha='8'", lambda: config_from_peft({**_PEFT, "lora_alpha": "8"}),
       PeftFormatError, "lora_alpha"),
    py("config_from_peft layers_to_transform=[10**30]",
       lambda: config_from_peft({**_PEFT, "layers_to_transform": [10**30]}), PeftFormatError, "layers_to_transform"),
    py("config_from_peft a list", lambda: config_from_peft([("peft_type", "LORA")]), PeftFormatError, "JSON object"),
]  # fmt: skip


def _mutated_config(field: str, value: object) -> pz.LoraConfig:
    config = _lora_qv()
    setattr(config, field, value)
    return config


MORE = [
    py("peft_dict_from_config use_rslora='yes' set after construction",
       lambda: peft_dict_from_config(_mutated_config("rslora", "yes")), TypeError, "rslora"),
    py("LoraConfig.from_dict lora rank='8'",
       lambda: pz.LoraConfig.from_dict({"target_modules": ["q"], "rank": "8"}), TypeError, "rank"),
    py("LoraConfig.from_dict unknown field",
       lambda: pz.LoraConfig.from_dict({"target_modules": ["q"], "use_rslora": True}), ValueError, "use_rslora"),
    peft_file("alpha_pattern={'q': NaN}", setting(alpha_pattern={"q": float("nan")}), "alpha_pattern"),
    peft_file("lora_dropout=NaN", setting(lora_dropout=float("nan")), "lora_dropout"),
    peft_file("layers_to_transform=[0.0]", setting(layers_to_transform=[0.0]), "layers_to_transform"),
    peft_file("layers_to_transform=[-1]", setting(layers_to_transform=[-1]), "layers_to_transform"),
    peft_file("rank_pattern={'q': 0}", setting(rank_pattern={"q": 0}), "rank_pattern"),
    peft_file("qalora_group_size='16'", setting(qalora_group_size="16"), "qalora_group_size"),
    peft_file("loftq_config=[]", setting(loftq_config=[]), "loftq_config"),
]  # fmt: skip

CASES = [*LORA_PY, *IA3_PY, *ADAPT, *FIND, *FILES, *DICTS, *MORE]


def test_there_are_enough_cases_and_unique_ids() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 80


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused(case: Refusal) -> None:
    check_refusal(case)


def test_catastrophic_regexes_are_refused_within_a_few_seconds() -> None:
    """The issue's case: ``(a+)+$`` ran > 10 s against ``'a'*30+'b'``; now each refusal (or the
    plain "no match") comes back in well under that."""
    slow = [c for c in CASES if "catastrophic" in c.id]
    assert len(slow) >= 10
    for case in slow:
        start = time.perf_counter()
        check_refusal(case)
        assert time.perf_counter() - start < 5.0, case.id
    model = tiny()
    model.add_module("a" * 30 + "b", nn.Linear(4, 4))
    start = time.perf_counter()
    with pytest.raises(ValueError, match="target_modules"):
        pz.find_targets(model, "(a+)+$")
    assert time.perf_counter() - start < 5.0
