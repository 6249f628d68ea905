"""Test-suite settings: hypothesis profiles that keep property tests fast and, in CI, reproducible."""

import os

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
