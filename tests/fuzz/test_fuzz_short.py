"""A few seconds of coverage-guided fuzzing per target (scripts/fuzz.sh), in CI.

The long runs (ten minutes a target) are recorded in docs/security.md; this only
checks that every target still starts, runs its committed corpus and finds nothing
quickly, and that the runner does report a finding.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

ROOT = Path(__file__).resolve().parents[2]
#: Seconds of fuzzing per target: 8 targets stay under ~40 s with start-up.
SHORT_S = 2
#: Wall-clock bound on one run (start-up, corpus, fuzzing, exit).
RUN_TIMEOUT_S = 120


def _fuzz(target: str, tmp: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / "scripts" / "fuzz.sh"), target, str(SHORT_S)],
        cwd=ROOT,
        env={**os.environ, "FUZZ_OUT": str(tmp), **env},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_target_runs_without_finding(target: str, tmp_path: Path) -> None:
    proc = _fuzz(target, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert f"{target}: no finding in {SHORT_S}s" in proc.stdout
    assert list((tmp_path / target / "findings").iterdir()) == []


def test_a_planted_bug_is_reported(tmp_path: Path) -> None:
    proc = _fuzz("selftest", tmp_path, EPHEMERALML_FUZZ_SELFTEST="1")
    assert proc.returncode == 1
    assert "selftest: FINDING" in proc.stderr
    found = list((tmp_path / "selftest" / "findings").iterdir())
    assert len(found) == 1 and found[0].read_bytes()[:1] == b"F"
    assert "KeyError: 'planted'" in proc.stderr


def test_without_arguments_it_lists_the_targets() -> None:
    proc = subprocess.run(
        [str(ROOT / "scripts" / "fuzz.sh")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=True,
    )
    assert proc.stdout.strip() == "targets: " + " ".join(TARGETS)


def test_committed_corpus_is_small_and_holds_no_real_vectors() -> None:
    """Real vectors live in tests/vectors/real; the corpus holds no second copy of them."""
    from tests.fuzz.corpus_filter import copies_shared, shared_windows

    windows = shared_windows()
    files = [f for t in TARGETS for f in (ROOT / "tests" / "fuzz" / "corpus" / t).iterdir()]
    assert [f for f in files if copies_shared(f.read_bytes(), windows)] == []
    assert sum(f.stat().st_size for f in files) < 2 * 1024 * 1024
