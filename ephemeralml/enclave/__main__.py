"""``python -m ephemeralml.enclave``: the enclave program, as the image runs it."""

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
