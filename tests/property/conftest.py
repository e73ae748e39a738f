"""Hypothesis profiles and fixtures for the property tests.

"ci" (the default) runs few examples so the suite stays short; "long" runs many, for
a local soak: ``HYPOTHESIS_PROFILE=long ./scripts/test.sh tests/property -q``.
Deadlines are off in both: a slow shared machine is not a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.pair import MockWorld

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True, suppress_health_check=_SLOW_OK
)
settings.register_profile("long", max_examples=2000, deadline=None, suppress_health_check=_SLOW_OK)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> MockWorld:
    """A mock NSM with its CA, an enclave identity and a client policy trusting both."""
    return MockWorld.create(Path(tmp_path_factory.mktemp("property-world")))
