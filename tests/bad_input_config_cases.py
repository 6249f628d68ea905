"""Bad configs built from Python, a table of :class:`badinput.Refusal` cases for
tests/test_bad_input_config.py: ``LoraConfig`` / ``IA3Config`` (every field: wrong types, bad
values, bad and catastrophic regexes), ``adapt_model`` on a config mutated after construction,
and ``find_targets`` arguments. The case builders here serve bad_input_peft_cases.py too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from badinput import Refusal
from torch import nn

import peft_zoo as pz

# A module name on which a nested repetition such as "(a|aa)+$" backtracks for minutes with
# Python's re (about 0.1 s at 28 characters, x1.6 per character).
LONG = "a" * 40 + "b"
CATASTROPHIC = "(a|aa)+$"
BAD_RE = "(unclosed"


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


def lora_qv() -> pz.LoraConfig:
    return pz.LoraConfig(target_modules=["q", "v"], rank=2)


def ia3_ff() -> pz.IA3Config:
    return pz.IA3Config(target_modules=["q", "mlp"], feedforward_modules=["mlp"])


ADAPT = [
    on_model("adapt_model rslora='yes' set after construction", mutated(lora_qv, "rslora", "yes"),
             TypeError, "rslora"),
    on_model("adapt_model rank='4' set after construction", mutated(lora_qv, "rank", "4"), TypeError, "rank"),
    on_model("adapt_model modules_to_save='head' set after construction",
             mutated(lora_qv, "modules_to_save", "head"), TypeError, "modules_to_save"),
    on_model("adapt_model IA3 feedforward_modules=5 set after construction",
             mutated(ia3_ff, "feedforward_modules", 5), TypeError, "feedforward_modules"),
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
