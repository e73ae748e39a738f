"""Where the real-world vectors live: tests/vectors/real (PROVENANCE.md beside them).

Copied into the repository so that a clone alone runs every test.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_VECTORS = REPO_ROOT / "tests" / "vectors" / "real"
