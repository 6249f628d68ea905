"""Serving many adapters from one base model.

- :mod:`.routing`: ``Routing`` and the four strategies that send each sample of a batch
  through its own adapter slot;
- :mod:`.batched`: ``BatchedLoRALinear``, a different LoRA adapter per sample in one batch;
- :mod:`.slots`: reading one adapter and checking it against a model's batched layers;
- :mod:`.bank`: ``AdapterBank``, named adapter slots loaded from checkpoints;
- :mod:`.cache`: ``EmbeddingCache``, an LRU cache of per-sample outputs.
"""
