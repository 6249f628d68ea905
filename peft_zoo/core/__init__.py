"""Internal helpers every other room builds on; they import nothing else from the package.

- :mod:`.base`: ``AdapterModule`` (what every adapter layer is), merge / unmerge over a model;
- :mod:`.checks`: argument checks that refuse bad input with a message naming the problem;
- :mod:`.io`: atomic file writes and safe tensor reading (safetensors, ``weights_only``);
- :mod:`.regex`: regular expressions from configs and files, matched with a time bound;
- :mod:`.version`: the package version (its one source).

Not public API: use the names exported by :mod:`peft_zoo`.
"""
