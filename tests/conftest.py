"""Test-suite settings: hypothesis profiles that keep property tests fast and, in CI, reproducible."""

import gc
import os

import torch  # noqa: F401  (imported before the gc.freeze below)
from hypothesis import HealthCheck, settings

# Bounded work per property; no per-example deadline (shared machines are noisy).
settings.register_profile("dev", deadline=None, max_examples=25)
# CI: the same examples every run, so a red build is reproducible, never flaky.
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=25,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# torch, transformers and hypothesis leave a large, long-lived heap after import; freezing it
# keeps the garbage collector from re-scanning it on every full collection (a few percent of
# the suite's time, and much more in tests that start many pytest sessions in-process).
gc.freeze()
