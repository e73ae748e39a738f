#!/usr/bin/env python3
"""Benchmark: bare ONNX Runtime vs the full confidential path, side by side.

    .venv/bin/python scripts/bench.py --quick          # about a minute: table
    .venv/bin/python scripts/bench.py --json > b.json  # full run (a few minutes): JSON

The same as ``python -m ephemeralml.bench``; the implementation is the package
``ephemeralml.bench``, its command line ``ephemeralml.bench._cli`` (what is measured and
the targets: docs/benchmarks.md). Run with another Python, this script re-runs itself
with the repository's ``.venv`` if it has one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

try:
    from ephemeralml.bench._cli import main
except ImportError:
    venv_python = ROOT / ".venv" / "bin" / "python"
    if venv_python.exists() and Path(sys.executable).resolve() != venv_python.resolve():
        os.execv(str(venv_python), [str(venv_python), __file__, *sys.argv[1:]])
    raise

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
