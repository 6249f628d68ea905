"""Putting method layers into an existing model, and choosing what trains.

- :mod:`.surgery`: the steps every injector shares (check names, resolve and validate the
  targets, replace all or nothing, freeze what is not an adapter) and the trainability helpers;
- :mod:`.targets`: choosing modules by name with Hugging Face PEFT's matching rules;
- :mod:`.inject`: ``inject_lora``, ``inject_lora_recursive``, ``inject_ia3``, ``inject_qlora``,
  ``build_lora_adapter_model``;
- :mod:`.config`: ``LoraConfig`` / ``IA3Config`` and ``adapt_model``, the one entry point.
"""
