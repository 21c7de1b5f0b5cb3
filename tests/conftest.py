"""Hypothesis profiles, chosen with NUMPYLLM_HYPOTHESIS_PROFILE (default "ci").

ci   derandomized and sized so the whole suite runs in a few minutes on 2 cores.
dev  more examples, random seeds: for local runs hunting for counterexamples.
"""
import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=40,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    max_examples=200,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("NUMPYLLM_HYPOTHESIS_PROFILE", "ci"))
