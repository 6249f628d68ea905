"""Bad input to the method modules, the serving modules and adapter checkpoints (issue 12, §5).

One table of :class:`~badinput.Refusal` cases, each run by :func:`~badinput.check_refusal`:
the call must raise the named exception type with a message naming the problem, and every
watched module (tensor values, module tree, ``requires_grad``) and watched path on disk
must be exactly as before. Objects that are not modules (a cache, a bank) are checked by
the call itself, which compares their state before and after.
"""

from __future__ import annotations

import json
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from badinput import Refusal, check_refusal
from torch import nn

from peft_zoo import (
    AdapterBank,
    AdapterBlock,
    AdapterStack,
    BankError,
    BottleneckAdapter,
    CheckpointError,
    IA3Linear,
    LearnablePrefix,
    ParallelAdapterBlock,
    adapter_state_dict,
    inject_batched_lora,
    inject_lora,
    load_adapter,
    load_adapter_state_dict,
    read_adapter,
    save_adapter,
    use_adapters,
)
from peft_zoo.dora import DoRALinear
from peft_zoo.interop import checkpoint as ckpt
from peft_zoo.prefix import PrefixKV
from peft_zoo.serving.batched import BatchedLoRALinear
from peft_zoo.serving.cache import EmbeddingCache

_TMP = tempfile.TemporaryDirectory(prefix="peft_zoo_bad_input_")
CASES: list[Refusal] = []


def case(
    id: str,
    call: Callable[[dict[str, Any]], object],
    raises: type[BaseException] | tuple[type[BaseException], ...],
    *words: str,
    setup: Callable[[], dict[str, Any]] = dict,
    watch: tuple[str, ...] = (),
    paths: tuple[str, ...] = (),
) -> None:
    CASES.append(Refusal(id, call, raises, words, setup, watch, paths))


# ----------------------------------------------------------------------------- fixtures (fresh per case)


def _linear() -> dict[str, Any]:
    torch.manual_seed(0)
    return {"base": nn.Linear(4, 3)}


def _lora_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    inject_lora(model, ["0", "2"], 2, 4.0)
    return model


def _lora() -> dict[str, Any]:
    return {"model": _lora_model()}


def _dir() -> Path:
    return Path(tempfile.mkdtemp(dir=_TMP.name))


def _saved(mutate: Callable[[Path], None] | None = None) -> Callable[[], dict[str, Any]]:
    """A trained model saved to ``<tmp>/a.safetensors`` (then ``mutate``d), and a fresh target."""

    def setup() -> dict[str, Any]:
        trained, fresh = _lora_model(), _lora_model()
        with torch.no_grad():
            for p in adapter_state_dict(trained).values():
                p.add_(1.0)
        d = _dir()
        path = save_adapter(trained, d / "a.safetensors")
        if mutate is not None:
            mutate(path)
        return {"model": fresh, "path": path, "dir": d}

    return setup


def _write(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str] | None) -> None:
    safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)


def _with_config(config_text: str) -> Callable[[Path], None]:
    """Rewrite the file with ``config_text`` as its config and a matching digest."""

    def mutate(path: Path) -> None:
        state, _ = read_adapter(path)
        digest = ckpt.checkpoint_digest(state, config_text)
        _write(path, state, {ckpt.METADATA_KEY: config_text, ckpt.DIGEST_KEY: digest})

    return mutate


def _flip_data_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    data[8 + n + 5] ^= 0x10
    path.write_bytes(bytes(data))


def _previous_version(path: Path) -> None:  # as peft_zoo wrote it before the digest existed
    state, config = read_adapter(path)
    _write(path, state, {ckpt.METADATA_KEY: json.dumps(config)})


def _no_metadata(path: Path) -> None:
    state, _ = read_adapter(path)
    _write(path, state, None)


def _legacy_pt(path: Path) -> None:
    state, _ = read_adapter(path)
    torch.save(state, path.with_suffix(".pt"))


def _batched() -> dict[str, Any]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    inject_batched_lora(model, ["0", "2"], 3, 2)
    return {"model": model, "layer": model[0], "x": torch.randn(2, 4)}


def _bank() -> dict[str, Any]:
    state = _batched()
    source = _lora_model()  # the same layer names and shapes, rank 2
    d = _dir()
    path = save_adapter(source, d / "a.safetensors")
    return {**state, "bank": AdapterBank(state["model"]), "sd": adapter_state_dict(source), "path": path}


def _bank_call(fn: Callable[[AdapterBank, dict[str, Any]], object]) -> Callable[[dict[str, Any]], object]:
    """Run ``fn``; whatever it raises, the bank's slots must be as before."""

    def call(s: dict[str, Any]) -> object:
        before = (s["bank"].names, s["bank"].free_slots)
        try:
            return fn(s["bank"], s)
        finally:
            assert (s["bank"].names, s["bank"].free_slots) == before, "the bank changed"

    return call


def _compute(inputs: Any, names: list) -> torch.Tensor:
    return inputs.float().sum(-1, keepdim=True)


def _cache() -> dict[str, Any]:
    return {"cache": EmbeddingCache(_compute, max_entries=8)}


def _cache_call(*args: Any, **kwargs: Any) -> Callable[[dict[str, Any]], object]:
    """Call the cache; whatever it raises, its statistics and entries must be as before."""

    def call(s: dict[str, Any]) -> object:
        before = s["cache"].stats
        try:
            return s["cache"](*args, **kwargs)
        finally:
            assert s["cache"].stats == before, "the cache changed"

    return call


# ----------------------------------------------------------------------------- LearnablePrefix / PrefixKV

for bad, err in [
    (-1, ValueError),
    (float("nan"), ValueError),
    (float("inf"), ValueError),
    ("0.02", TypeError),
]:
    case(f"prefix-init_std-{bad}", lambda s, b=bad: LearnablePrefix(2, 4, init_std=b), err, "init_std")
case("prefix-init_std-bool", lambda s: LearnablePrefix(2, 4, init_std=True), TypeError, "init_std")
case("prefix-dtype-long", lambda s: LearnablePrefix(2, 4, dtype=torch.long), TypeError, "dtype")
case("prefixkv-init_std-neg", lambda s: PrefixKV(2, 2, 3, init_std=-0.5), ValueError, "init_std")
case("prefixkv-dtype-int", lambda s: PrefixKV(2, 2, 3, dtype=torch.int32), TypeError, "dtype")
case("prefix-prefix_len-str", lambda s: LearnablePrefix("2", 4), TypeError, "prefix_len")
_prefix = lambda: {"p": LearnablePrefix(2, 4)}  # noqa: E731
case("prefix-forward-int", lambda s: s["p"](torch.ones(1, 3, 4, dtype=torch.long)), TypeError, "floating",
     setup=_prefix, watch=("p",))  # fmt: skip
case("prefix-forward-list", lambda s: s["p"]([[0.0] * 4]), TypeError, "tensor", setup=_prefix, watch=("p",))
case("prefix-forward-2d", lambda s: s["p"](torch.ones(3, 4)), ValueError, "(B, L, 4)", setup=_prefix)
case("prefix-mask-1d", lambda s: s["p"].extend_mask(torch.ones(3)), ValueError, "(B, L)", setup=_prefix)

# ----------------------------------------------------------------------------- IA3Linear

for bad in ["yes", 1, None, "False"]:
    case(f"ia3-feedforward-{bad!r}", lambda s, b=bad: IA3Linear(s["base"], feedforward=b), TypeError,
         "feedforward", setup=_linear, watch=("base",))  # fmt: skip
case("ia3-fan_in_fan_out-str", lambda s: IA3Linear(s["base"], fan_in_fan_out="no"), TypeError,
     "fan_in_fan_out", setup=_linear, watch=("base",))  # fmt: skip
case("ia3-base-none", lambda s: IA3Linear(None), TypeError, "nn.Linear")
case("ia3-base-conv", lambda s: IA3Linear(nn.Conv2d(2, 2, 1)), TypeError, "Conv2d")
case("ia3-forward-shape", lambda s: IA3Linear(s["base"])(torch.ones(2, 5)), ValueError, "(..., 4)",
     setup=_linear)  # fmt: skip

# ----------------------------------------------------------------------------- bottleneck adapters and blocks

for bad in ["yes", 0, None]:
    case(f"bottleneck-residual-{bad!r}", lambda s, b=bad: BottleneckAdapter(4, 2, residual=b), TypeError,
         "residual")  # fmt: skip
case("bottleneck-dtype-long", lambda s: BottleneckAdapter(4, 2, dtype=torch.long), TypeError, "dtype")
case("bottleneck-activation", lambda s: BottleneckAdapter(4, 2, activation="swish"), ValueError, "swish")
case("bottleneck-dim-zero", lambda s: BottleneckAdapter(4, 0), ValueError, "bottleneck_dim")
case("bottleneck-d_model-float", lambda s: BottleneckAdapter(2.5, 2), TypeError, "d_model")
_adapter = lambda: {"adapter": BottleneckAdapter(4, 2), "sub": nn.Linear(4, 4)}  # noqa: E731
for cls in (AdapterBlock, ParallelAdapterBlock):
    n = cls.__name__
    case(f"{n}-sublayer-none", lambda s, c=cls: c(None, s["adapter"]), TypeError, n, "sublayer",
         setup=_adapter, watch=("adapter",))  # fmt: skip
    case(f"{n}-sublayer-lambda", lambda s, c=cls: c(lambda x: x, s["adapter"]), TypeError, "sublayer",
         setup=_adapter)  # fmt: skip
    case(
        f"{n}-sublayer-str", lambda s, c=cls: c("linear", s["adapter"]), TypeError, "sublayer", setup=_adapter
    )
    case(f"{n}-same-module", lambda s, c=cls: c(s["adapter"], s["adapter"]), ValueError, "same module",
         setup=_adapter, watch=("adapter",))  # fmt: skip
    case(f"{n}-adapter-linear", lambda s, c=cls: c(s["sub"], s["sub"]), TypeError, "BottleneckAdapter",
         setup=_adapter, watch=("sub",))  # fmt: skip
case("stack-dtype-int", lambda s: AdapterStack(4, 2, 3, dtype=torch.int32), TypeError, "dtype")
case("stack-num-bool", lambda s: AdapterStack(4, 2, True), TypeError, "num_adapters")
_stack = lambda: {"stack": AdapterStack(4, 2, 3)}  # noqa: E731
for bad in [1.0, "0", torch.tensor(True), None]:
    case(f"stack-id-{bad!r}", lambda s, b=bad: s["stack"](torch.ones(2, 4), b), TypeError, "adapter_id",
         setup=_stack, watch=("stack",))  # fmt: skip
case("stack-id-3", lambda s: s["stack"](torch.ones(2, 4), 3), IndexError, "out of range", setup=_stack)

# ----------------------------------------------------------------------------- EmbeddingCache

case("cache-compute-none", lambda s: EmbeddingCache(None), TypeError, "compute")
case("cache-compute-str", lambda s: EmbeddingCache("model"), TypeError, "compute")
case("cache-version-str", lambda s: EmbeddingCache(_compute, version="v1"), TypeError, "version")
for field, bad in [("max_entries", 0), ("max_entries", 2.5), ("max_bytes", "3"), ("max_bytes", True)]:
    case(
        f"cache-{field}-{bad!r}",
        lambda s, f=field, b=bad: EmbeddingCache(_compute, **{f: b}),
        ValueError,
        field,
    )
case("cache-for_bank-none", lambda s: EmbeddingCache.for_bank(None, lambda x: x), TypeError, "AdapterBank")
_x2 = torch.ones(2, 3)
case("cache-inputs-list", _cache_call([[1.0], [2.0]], ["a", "b"]), TypeError, "inputs", setup=_cache)
case("cache-inputs-empty-dict", _cache_call({}, []), TypeError, "inputs", setup=_cache)
case("cache-inputs-dict-list", _cache_call({"x": [1, 2]}, ["a", "b"]), TypeError, "'x'", setup=_cache)
case("cache-adapters-str", _cache_call(_x2, "ab"), ValueError, "adapter name", setup=_cache)
case("cache-adapters-int", _cache_call(_x2, [1, 2]), TypeError, "adapter names", setup=_cache)
case("cache-adapters-count", _cache_call(_x2, ["a"]), ValueError, "one adapter name", setup=_cache)
case(
    "cache-keys-unhashable",
    _cache_call(_x2, ["a", "b"], keys=[[1], [2]]),
    TypeError,
    "hashable",
    setup=_cache,
)
case("cache-keys-str", _cache_call(_x2, ["a", "b"], keys="ab"), TypeError, "keys", setup=_cache)
case("cache-keys-count", _cache_call(_x2, ["a", "b"], keys=[1]), ValueError, "one key", setup=_cache)

# ----------------------------------------------------------------------------- AdapterBank


def _load(**kw: Any) -> Callable[[dict[str, Any]], object]:
    return _bank_call(lambda b, s: b.load("t", s["sd"], **kw))


for bad, err in [(-4, BankError), (0, BankError), (float("nan"), BankError), (float("inf"), BankError)]:
    case(f"bank-alpha-{bad}", _load(alpha=bad), err, "alpha", setup=_bank, watch=("model",))
for bad in ["4", True, [4]]:
    case(f"bank-alpha-{bad!r}", _load(alpha=bad), BankError, "alpha", setup=_bank, watch=("model",))
case("bank-rslora-str", _load(rslora="yes"), BankError, "rslora", setup=_bank, watch=("model",))
case("bank-strict-str", _load(strict="no"), BankError, "strict", setup=_bank, watch=("model",))
case("bank-unverified-int", _load(allow_unverified=1), BankError, "allow_unverified", setup=_bank)
case("bank-name-empty", _bank_call(lambda b, s: b.load("", s["sd"])), BankError, "non-empty", setup=_bank)
case("bank-name-int", _bank_call(lambda b, s: b.load(3, s["sd"])), BankError, "non-empty", setup=_bank)
case("bank-adapter-int", _bank_call(lambda b, s: b.load("t", 42)), BankError, "int", setup=_bank)
case("bank-sd-int-key", _bank_call(lambda b, s: b.load("t", {1: torch.ones(2, 4)})), BankError, "1",
     setup=_bank, watch=("model",))  # fmt: skip
case("bank-async-alpha", _bank_call(lambda b, s: b.load_async("t", s["sd"], alpha=-4)), BankError, "alpha",
     setup=_bank, watch=("model",))  # fmt: skip


def _bank_file(mutate: Callable[[Path], None]) -> Callable[[dict[str, Any]], object]:
    def fn(b: AdapterBank, s: dict[str, Any]) -> object:
        mutate(s["path"])
        return b.load("t", s["path"])

    return _bank_call(fn)


case("bank-file-bitflip", _bank_file(_flip_data_bit), BankError, "integrity", setup=_bank, watch=("model",))
case(
    "bank-file-old",
    _bank_file(_previous_version),
    BankError,
    "allow_unverified",
    setup=_bank,
    watch=("model",),
)
_bad_alpha = _with_config(
    json.dumps(
        {
            "format": ckpt.FORMAT,
            "layers": {n: {"method": "lora", "alpha": "8", "rank": 2} for n in ("0", "2")},
        }
    )
)
case("bank-file-alpha-str", _bank_file(_bad_alpha), BankError, "alpha", setup=_bank, watch=("model",))
case("bank-model-none", lambda s: AdapterBank(None), BankError, "nn.Module")

# ----------------------------------------------------------------------------- BatchedLoRALinear / use_adapters


def _ids(*values: Any, dtype: torch.dtype = torch.long) -> torch.Tensor:
    return torch.tensor(values).to(dtype)


for name, ids in [
    ("complex64", _ids(0, 1, dtype=torch.complex64)),
    ("complex128", _ids(0, 1, dtype=torch.complex128)),
    ("float", _ids(0.0, 1.0, dtype=torch.float32)),
    ("half", _ids(0, 1, dtype=torch.float16)),
    ("bool", _ids(True, False, dtype=torch.bool)),
    ("uint16", _ids(0, 1, dtype=torch.uint16)),
]:
    case(f"batched-ids-{name}", lambda s, i=ids: s["layer"](s["x"], i), TypeError, "integer", str(ids.dtype),
         setup=_batched, watch=("model",))  # fmt: skip
    case(f"use_adapters-ids-{name}", lambda s, i=ids: use_adapters(s["model"], i).__enter__(), TypeError,
         "integer", setup=_batched)  # fmt: skip
case("batched-ids-list", lambda s: s["layer"](s["x"], [0, 1]), TypeError, "list", setup=_batched)
case("batched-ids-2d", lambda s: s["layer"](s["x"], _ids([0], [1])), ValueError, "(2, 1)", setup=_batched)
case("batched-ids-0d", lambda s: s["layer"](s["x"], torch.tensor(0)), ValueError, "shape", setup=_batched)
case("batched-ids-N", lambda s: s["layer"](s["x"], _ids(0, 3)), IndexError, "3", setup=_batched)
case("batched-ids--2", lambda s: s["layer"](s["x"], _ids(-2, 0)), IndexError, "-2", setup=_batched)
case("batched-x-list", lambda s: s["layer"]([[0.0] * 4] * 2, _ids(0, 1)), TypeError, "tensor", setup=_batched)
case("batched-x-long", lambda s: s["layer"](torch.ones(2, 4, dtype=torch.long), _ids(0, 1)), TypeError,
     "floating", setup=_batched)  # fmt: skip
case(
    "batched-x-batch",
    lambda s: s["layer"](torch.ones(3, 4), _ids(0, 1)),
    ValueError,
    "batch=2",
    setup=_batched,
)
case("batched-no-ids", lambda s: s["layer"](s["x"]), RuntimeError, "use_adapters", setup=_batched)
case("use_adapters-model-none", lambda s: use_adapters(None, _ids(0)).__enter__(), TypeError, "nn.Module")
case("use_adapters-no-layers", lambda s: use_adapters(nn.Linear(2, 2), _ids(0)).__enter__(), ValueError,
     "no BatchedLoRALinear")  # fmt: skip
case("batched-base-none", lambda s: BatchedLoRALinear(None, 2, 2), TypeError, "nn.Linear")

# ----------------------------------------------------------------------------- DoRALinear on a meta base


def _dora_meta(s: dict[str, Any]) -> object:
    base = nn.Linear(4, 3, device="meta")
    try:
        return DoRALinear(base, 2)
    finally:
        assert base.weight.requires_grad and base.bias.requires_grad, "the base was left frozen"


case("dora-meta-base", _dora_meta, ValueError, "meta device")
case("dora-base-str", lambda s: DoRALinear("base", 2), TypeError, "DoRALinear base")

# ----------------------------------------------------------------------------- save_adapter: bad destinations


def _in_the_way(kind: str) -> Callable[[], dict[str, Any]]:
    def setup() -> dict[str, Any]:
        d = _dir()
        model = _lora_model()
        if kind == "file-is-dir":
            (d / "a.safetensors").mkdir()
            (d / "a.safetensors" / "keep.txt").write_text("keep")
            target = d / "a.safetensors"
        elif kind == "weights-is-dir":
            (d / "out" / ckpt.WEIGHTS_NAME).mkdir(parents=True)
            target = d / "out"
        elif kind == "sidecar-is-dir":
            save_adapter(_lora_model(), d / "out")
            (d / "out" / ckpt.CONFIG_NAME).unlink()
            (d / "out" / ckpt.CONFIG_NAME).mkdir()
            target = d / "out"
        elif kind == "parent-is-file":
            (d / "f").write_text("a file")
            target = d / "f" / "sub" / "a.safetensors"
        else:  # "dir-is-file": a directory save onto an existing file
            (d / "out").write_text("a file")
            target = d / "out"
        return {"model": model, "dir": d, "target": target}

    return setup


for kind in ("file-is-dir", "weights-is-dir", "sidecar-is-dir", "parent-is-file", "dir-is-file"):
    case(f"save-{kind}", lambda s: save_adapter(s["model"], s["target"]), CheckpointError, "cannot save to",
         setup=_in_the_way(kind), watch=("model",), paths=("dir",))  # fmt: skip
case("save-model-none", lambda s: save_adapter(None, s["dir"] / "a"), TypeError, "nn.Module",
     setup=lambda: {"dir": _dir()}, paths=("dir",))  # fmt: skip
for bad in [None, 3, b"adapter", ""]:
    case(f"save-path-{bad!r}", lambda s, b=bad: save_adapter(s["model"], b), (TypeError, ValueError), "path",
         setup=_lora, watch=("model",))  # fmt: skip
case("save-no-adapters", lambda s: save_adapter(nn.Linear(2, 2), s["dir"] / "a"), CheckpointError,
     "no adapter parameters", setup=lambda: {"dir": _dir()}, paths=("dir",))  # fmt: skip

# ----------------------------------------------------------------------------- load_adapter: bad files


def _load_file(**kw: Any) -> Callable[[dict[str, Any]], object]:
    return lambda s: load_adapter(s["model"], s["path"], **kw)


def _bytes(fn: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(fn(p.read_bytes()))


_deep = "[" * 100_000 + "]" * 100_000
BAD_FILES: list[tuple[str, Callable[[Path], None], tuple[str, ...]]] = [
    ("truncated-half", _bytes(lambda b: b[: len(b) // 2]), ("truncated or corrupt",)),
    ("truncated-header", _bytes(lambda b: b[:20]), ("truncated or corrupt",)),
    ("truncated-last-byte", _bytes(lambda b: b[:-1]), ("truncated or corrupt",)),
    ("empty", _bytes(lambda b: b""), ("truncated or corrupt",)),
    ("garbage", _bytes(lambda b: bytes(range(256)) * 4), ("truncated or corrupt",)),
    ("huge-header-length", _bytes(lambda b: struct.pack("<Q", 2**62) + b[8:]), ("corrupt",)),
    ("header-not-json", _bytes(lambda b: b[:8] + b"\xff" * (len(b) - 8)), ("corrupt",)),
    ("bit-flip-data", _flip_data_bit, ("integrity check failed",)),
    ("extra-byte", _bytes(lambda b: b + b"\x00"), ("corrupt",)),
    ("previous-version", _previous_version, ("no integrity digest", "allow_unverified=True")),
    ("no-metadata", _no_metadata, ("no integrity digest", "allow_unverified=True")),
    ("config-deep", _with_config(_deep), ("invalid JSON",)),
    ("config-list", _with_config("[1, 2]"), ("config",)),
    ("config-not-json", _with_config("{rank: 2"), ("invalid JSON",)),
    ("config-other-format", _with_config(json.dumps({"format": "peft", "layers": {}})), ("'peft'",)),
    ("config-no-records", _with_config(json.dumps({"format": ckpt.FORMAT, "layers": {}})), ("no record",)),
    (
        "config-alpha-str",
        _with_config(
            json.dumps({"format": ckpt.FORMAT, "layers": {"0": {"method": "lora", "alpha": "4.0"}}})
        ),
        ("alpha='4.0'",),
    ),
]
for name, mutate, words in BAD_FILES:
    case(f"load-{name}", _load_file(), CheckpointError, *words, setup=_saved(mutate), watch=("model",),
         paths=("dir",))  # fmt: skip
case("load-digest-without-config", _load_file(), CheckpointError, "no peft_zoo config", "allow_unverified",
     setup=_saved(lambda p: _write(p, read_adapter(p)[0], {ckpt.DIGEST_KEY: ckpt.checkpoint_digest(
         read_adapter(p)[0])})), watch=("model",))  # fmt: skip
case("load-bit-flip-even-if-unverified-allowed", _load_file(allow_unverified=True), CheckpointError, "integrity",
     setup=_saved(_flip_data_bit), watch=("model",))  # fmt: skip
case("load-legacy-pt", lambda s: load_adapter(s["model"], s["path"].with_suffix(".pt")), CheckpointError,
     "legacy", "allow_unverified=True", setup=_saved(_legacy_pt), watch=("model",))  # fmt: skip
case("load-flag-str", _load_file(allow_unverified="yes"), TypeError, "allow_unverified", setup=_saved(),
     watch=("model",))  # fmt: skip
case("load-model-none", lambda s: load_adapter(None, s["path"]), TypeError, "nn.Module", setup=_saved())
case(
    "load-path-none",
    lambda s: load_adapter(s["model"], None),
    TypeError,
    "path",
    setup=_lora,
    watch=("model",),
)
case("load-missing", lambda s: load_adapter(s["model"], s["dir"] / "nope"), CheckpointError, "no such",
     setup=_saved(), watch=("model",))  # fmt: skip
case("load-wrong-rank", lambda s: load_adapter(s["other"], s["path"]), CheckpointError, "shape",
     setup=lambda: {**_saved()(), "other": inject_lora(nn.Sequential(nn.Linear(4, 6), nn.ReLU(),
         nn.Linear(6, 3)), ["0", "2"], 3, 4.0)[0]}, watch=("other",))  # fmt: skip
case("read-path-int", lambda s: read_adapter(7), TypeError, "path")

# ----------------------------------------------------------------------------- load_adapter_state_dict

_good = lambda s: adapter_state_dict(_lora_model())  # noqa: E731
for name, state in [
    ("list", lambda s: []),
    ("none", lambda s: None),
    ("tensor", lambda s: torch.zeros(3)),
    ("str", lambda s: "0.lora_A"),
    ("int-key", lambda s: {1: torch.zeros(2, 4), **_good(s)}),
    ("list-value", lambda s: {**_good(s), "0.lora_A": [[0.0] * 4] * 2}),
    ("none-value", lambda s: {**_good(s), "2.lora_B": None}),
]:
    case(f"state-{name}", lambda s, f=state: load_adapter_state_dict(s["model"], f(s)), TypeError, "state",
         setup=_lora, watch=("model",))  # fmt: skip
case("state-config-str", lambda s: load_adapter_state_dict(s["model"], _good(s), "lora"), TypeError, "config",
     setup=_lora, watch=("model",))  # fmt: skip
case("state-model-none", lambda s: load_adapter_state_dict(None, _good(s)), TypeError, "nn.Module")
case("state-nan", lambda s: load_adapter_state_dict(s["model"], {**_good(s), "0.lora_B": torch.full((6, 2),
     float("nan"))}), CheckpointError, "NaN", setup=_lora, watch=("model",))  # fmt: skip


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_and_changes_nothing(bad: Refusal) -> None:
    check_refusal(bad)


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 80, len(CASES)
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
