"""A short soak (scripts/soak.py with tiny parameters): the real host and enclave, a
few legitimate sessions, every kind of hostile connection and one enclave kill.

About 20 s: the programs start (a few seconds), 10 s of load, checks, stop. The full
run and its figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SOAK = Path(__file__).resolve().parents[2] / "scripts" / "soak.py"


def test_short_soak_passes_every_check() -> None:
    r = subprocess.run(
        [sys.executable, str(SOAK), "--duration", "10", "--sessions", "2", "--idle", "60",
         "--drip", "4", "--garbage", "3", "--oversize", "3", "--churn-rate", "5",
         "--reconnect-after", "1", "--warmup", "2", "--kill-enclave",
         "--host-arg=--handshake-timeout=2", "--enclave-arg=--handshake-timeout=3"],
        capture_output=True, text=True, timeout=170, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith('{"soak"')]
    assert len(lines) == 1, r.stdout + r.stderr
    soak = json.loads(lines[0])["soak"]
    assert r.returncode == 0, r.stdout
    assert soak["ok"] is True
    assert all(soak["checks"].values()), soak["checks"]
    assert soak["verified"] > 0 and soak["faults"] == 1
    assert soak["verified"] + soak["request_errors"] == soak["requests"]
    assert soak["bad_sequences"] == 0 and soak["unclear"] == []
    hostile = soak["hostile"]
    # The deadlines cut the idle and dripping peers (L1), and they came back.
    assert hostile["idle_closed_by_peer"] > 0, hostile
    assert hostile["drip_closed_by_peer"] > 0, hostile
    assert hostile["garbage_closed_by_peer"] > 0 and hostile["oversize_closed_by_peer"] > 0
