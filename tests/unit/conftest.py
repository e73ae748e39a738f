"""Fixtures for the unit tier: peers in memory, no sockets."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pair import MockWorld


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> MockWorld:
    """A mock NSM with its CA, an enclave identity and a client policy trusting both."""
    return MockWorld.create(Path(tmp_path_factory.mktemp("mock-world")))
