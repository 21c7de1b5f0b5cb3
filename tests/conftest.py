"""Hypothesis profiles, chosen with NUMPYLLM_HYPOTHESIS_PROFILE (default "ci").

ci   derandomized and sized so the whole suite runs in a few minutes on 2 cores.
dev  more examples, random seeds: for local runs hunting for counterexamples.
"""
import os

import pytest
from hypothesis import HealthCheck, Phase, settings

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


@pytest.fixture
def no_shrinking():
    """Hypothesis searches inside the test stop at the first failure, keeping the rest of
    the current profile: for tests where finding a failure is the point and shrinking
    it would cost seconds (numpyllm.testing's own tests)."""
    current = settings.get_current_profile_name()
    settings.register_profile("no-shrink", parent=settings.get_profile(current),
                              phases=(Phase.explicit, Phase.reuse, Phase.generate))
    settings.load_profile("no-shrink")
    yield
    settings.load_profile(current)
