"""Bad input to the serving modules (EmbeddingCache, AdapterBank, BatchedLoRALinear and
use_adapters): a table of :class:`~badinput.Refusal` cases for test_bad_input_modules.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bad_input_module_helpers import (
    CaseTable,
    flip_data_bit,
    lora_model,
    previous_version,
    tmp_dir,
    with_config,
)
from torch import nn

from peft_zoo import (
    AdapterBank,
    BankError,
    adapter_state_dict,
    inject_batched_lora,
    save_adapter,
    use_adapters,
)
from peft_zoo.interop import checkpoint as ckpt
from peft_zoo.serving.batched import BatchedLoRALinear
from peft_zoo.serving.cache import EmbeddingCache

SERVING = CaseTable()
case = SERVING.add

# ----------------------------------------------------------------------------- fixtures (fresh per case)


def _batched() -> dict[str, Any]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    inject_batched_lora(model, ["0", "2"], 3, 2)
    return {"model": model, "layer": model[0], "x": torch.randn(2, 4)}


def _bank() -> dict[str, Any]:
    state = _batched()
    source = lora_model()  # the same layer names and shapes, rank 2
    d = tmp_dir()
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


case("bank-file-bitflip", _bank_file(flip_data_bit), BankError, "integrity", setup=_bank, watch=("model",))
case(
    "bank-file-old",
    _bank_file(previous_version),
    BankError,
    "allow_unverified",
    setup=_bank,
    watch=("model",),
)
_bad_alpha = with_config(
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
