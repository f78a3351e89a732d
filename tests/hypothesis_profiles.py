"""Hypothesis settings of the property tests (tests/test_properties.py), by profile.

    MEDLLM_HYPOTHESIS_PROFILE=ci       1,000 examples per property (the default; CI)
    MEDLLM_HYPOTHESIS_PROFILE=nightly  10,000 examples per property (the nightly / --slow run)
    MEDLLM_HYPOTHESIS_PROFILE=dev      100 examples, for a quick local run

Tests apply `PROPERTY_SETTINGS` as a decorator; the global Hypothesis profile is left alone, so the
other modules' own settings (tests/test_parsing.py, tests/test_alignment.py) do not change.
No deadline per example (the machine is shared; a slow example is not a failure) and no health
check for slow or large data (100,000-character documents are the point).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE_ENV = "MEDLLM_HYPOTHESIS_PROFILE"
EXAMPLES = {"ci": 1_000, "nightly": 10_000, "dev": 100}

_quiet = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
for _name, _examples in EXAMPLES.items():
    settings.register_profile(
        f"medllm-{_name}",
        max_examples=_examples,
        deadline=None,
        suppress_health_check=_quiet,
        print_blob=True,
    )

PROFILE = os.environ.get(PROFILE_ENV, "ci")
if PROFILE not in EXAMPLES:
    raise ValueError(f"{PROFILE_ENV} must be one of {', '.join(EXAMPLES)}, got {PROFILE!r}")
PROPERTY_SETTINGS = settings.get_profile(f"medllm-{PROFILE}")
MIN_EXAMPLES = EXAMPLES[PROFILE]
