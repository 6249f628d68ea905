"""Hugging Face PEFT's on-disk adapter format: what the files and tensors are called.

    save_peft(model, "out/")                      # peft_zoo model -> a directory PEFT loads
    peft.PeftModel.from_pretrained(base, "out/")  # ... in PEFT

    peft_model.save_pretrained("out/")            # a PEFT adapter ...
    model, params = load_peft(base, "out/")       # ... -> peft_zoo layers on the plain base model

:mod:`.peft_write` writes the format (:func:`~peft_zoo.save_peft`), :mod:`.peft_read` reads
it (:func:`~peft_zoo.read_peft`, :func:`~peft_zoo.load_peft`, with :mod:`.peft_match`
applying PEFT's rules for which modules an adapter names), :mod:`.peft_config` translates the
config and :mod:`.peft_checks` checks each of its fields. A PEFT adapter directory holds two
files:

- ``adapter_config.json``: the PEFT config (``peft_type`` "LORA" or "IA3", ``r``,
  ``lora_alpha``, ``target_modules``, ``rank_pattern``...). peft_zoo's
  :class:`~peft_zoo.LoraConfig` / :class:`~peft_zoo.IA3Config` carry the same rules under
  their own names; :func:`~peft_zoo.lora_config_from_peft`,
  :func:`~peft_zoo.ia3_config_from_peft` and :func:`~peft_zoo.peft_dict_from_config` translate.
- ``adapter_model.safetensors`` (``adapter_model.bin`` from older PEFT releases): the adapter
  tensors, keyed by the module path in the base model behind PEFT's wrapper prefix
  ``base_model.model.``, with the adapter name removed::

      base_model.model.<module>.lora_A.weight   (r, in)     A
      base_model.model.<module>.lora_B.weight   (out, r)    B        y = W0 x + s B A x
      base_model.model.<module>.lora_magnitude_vector  (out,)  m     DoRA (use_dora): y = m ⊙ V x / ||V||
                                                                     with V = W0 + s B A, row norms
      base_model.model.<module>.ia3_l           (out, 1)    l        y = l ⊙ (W0 x + b)
                                                 (1, in)     (feed-forward modules: y = W0 (l ⊙ x) + b)
      base_model.model.<module>.lora_embedding_A (r, vocab)  LoRA on an nn.Embedding:
      base_model.model.<module>.lora_embedding_B (dim, r)      y = W0[x] + s (A^T[x]) B^T
      base_model.model.<module>.base_layer.weight            (PEFT also saves a targeted embedding's table)
      base_model.model.<module>.lora_A.weight   (r, in, *k)  LoRA on an nn.Conv1d/2d/3d: A convolves,
      base_model.model.<module>.lora_B.weight   (out, r / groups, 1, ...)   B mixes pointwise
      base_model.model.<module>.<param>                      a modules_to_save copy, in full
      base_model.model.<module>.base_layer.bias              a trained bias (bias="lora_only")

LoHa, LoKr, VeRA, OFT and AdaLoRA (``peft_type`` "LOHA", "LOKR", "VERA", "OFT", "ADALORA")
keep each layer's tensors under its PEFT name (``hada_w1_a``, ``lokr_w1``, ``vera_lambda_b``,
``oft_R.weight``, ``lora_E``...; VeRA's shared pair once, as ``base_model.vera_A`` /
``base_model.vera_B``): :mod:`.peft_methods` lists them with their shapes.

The scale ``s`` is ``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with ``use_rslora``), with
per-module exceptions in ``rank_pattern`` / ``alpha_pattern`` (a key is a regex that must
match a dotted suffix of the module name; the first matching key wins): :func:`exact_pattern`
writes a key that matches one module only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from ..core.io import atomic_write
from .checkpoint import CONFIG_NAME, WEIGHTS_NAME
from .peft_config import PeftFormatError

__all__ = ["LEGACY_WEIGHTS_NAME", "PEFT_PREFIX", "exact_pattern", "write_adapter_dir"]

PEFT_PREFIX = "base_model.model."  # PeftModel -> LoraModel / IA3Model -> the base model
LEGACY_WEIGHTS_NAME = "adapter_model.bin"  # older PEFT releases; read with weights_only=True


def exact_pattern(name: str) -> str:
    """A rank/alpha pattern key matching module ``name`` only (PEFT's rule matches dotted suffixes)."""
    return "^" + re.escape(name)


def write_adapter_dir(path: Path, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
    """Write a PEFT adapter directory: ``tensors`` (already under their file keys) into
    ``adapter_model.safetensors``, ``config`` into ``adapter_config.json``, each atomically.
    A ``path`` that is an existing file is refused before anything is written."""
    # Own contiguous CPU copies: safetensors refuses views and shared storage.
    blob = safetensors.torch.save(
        {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()},
        metadata={"format": "pt"},
    )
    if path.exists() and not path.is_dir():
        raise PeftFormatError(f"save_peft: {path} is a file; PEFT adapters are directories")
    path.mkdir(parents=True, exist_ok=True)
    # Weights first: PEFT reads the config first, so a crash in between leaves the old config
    # beside new weights only if the weights' keys still fit it (load_peft checks every key).
    atomic_write(path / WEIGHTS_NAME, blob)
    atomic_write(path / CONFIG_NAME, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
