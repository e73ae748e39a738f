"""The mock enclave measures every project file it runs."""

from __future__ import annotations

from pathlib import Path

import pytest

import ephemeralml.enclave._measure as enclave_cli
from tests.vectors_path import REPO_ROOT


def test_code_digest_covers_every_folder_the_enclave_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[Path]] = []
    monkeypatch.setattr(enclave_cli, "code_digest", lambda dirs: seen.append(list(dirs)) or b"x" * 48)
    enclave_cli.enclave_code_digest()
    assert sorted(p.name for p in seen[0]) == ["common", "enclave", "ephemeralml", "host"]
    assert all(p.parent == REPO_ROOT for p in seen[0])
