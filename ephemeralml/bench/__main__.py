"""``python -m ephemeralml.bench``: the same as ``scripts/bench.py``."""

from ._bench import main

if __name__ == "__main__":
    raise SystemExit(main())
