"""``python -m ephemeralml.bench``: the same as ``scripts/bench.py``."""

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
