"""Where the shared real-world vectors live: ../shared/vectors beside the repository root."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_VECTORS = REPO_ROOT.parent / "shared" / "vectors"
