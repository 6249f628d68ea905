"""Bad PEFT ``adapter_config.json`` files and dicts, a table of :class:`badinput.Refusal`
cases for tests/test_bad_input_config.py: fields loaded through ``load_peft`` / ``read_peft`` /
``config_from_peft`` (wrong types, bad values, bad regexes, catastrophic regexes, nested,
non-object, invalid, oversized and duplicate-key JSON, missing and unknown fields).

Each file case saves a fresh adapter (``save_peft`` on the ``tiny()`` model) under the test's
``tmp_path``, which the test module's autouse fixture pushes onto :data:`WORKDIR`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bad_input_config_cases import BAD_RE, CATASTROPHIC, LONG, lora_qv, py, tiny
from badinput import Refusal

import peft_zoo as pz
from peft_zoo.interop import (
    PeftFormatError,
    config_from_peft,
    load_peft,
    peft_dict_from_config,
    read_peft,
    save_peft,
)

CONFIG = "adapter_config.json"
WORKDIR: list[Path] = []  # the running test's tmp_path (pushed and popped by its fixture)


def saved_adapter(kind: str) -> dict[str, Any]:
    """A PEFT adapter directory saved by ``save_peft`` from an adapted ``tiny()``, and a fresh base."""
    model = tiny()
    if kind == "lora":
        config: pz.LoraConfig | pz.IA3Config = pz.LoraConfig(target_modules=["q", "v"], rank=2, alpha=4.0)
    else:
        config = pz.IA3Config(target_modules=["q", "mlp"], feedforward_modules=["mlp"])
    pz.adapt_model(model, config)
    path = save_peft(model, WORKDIR[-1] / f"adapter_{kind}")
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
    config = lora_qv()
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
