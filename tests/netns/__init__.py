"""Tests in a network namespace that looks like a Nitro enclave's (``unshare -n``)."""

from __future__ import annotations

import shutil
import subprocess


def unshare_unavailable() -> str | None:
    """Why no network namespace can be made here, or None if one can."""
    if shutil.which("unshare") is None:
        return "no unshare(1) on this machine"
    done = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        return f"cannot make a network namespace here: {done.stderr.strip()}"
    return None
