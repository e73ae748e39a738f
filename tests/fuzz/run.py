"""Coverage-guided runner (atheris/libFuzzer) for one target of ``targets.TARGETS``.

    python -m tests.fuzz.run TARGET [libFuzzer flags] [CORPUS_DIR...]

Normally called by ``scripts/fuzz.sh``. Our modules (and asn1crypto, pure Python, under
the CMS parser) are instrumented with ``atheris.instrument_imports``; cbor2's decoder
and cryptography are C/Rust and give no coverage feedback, only crashes.
"""

from __future__ import annotations

import os
import sys

import atheris

with atheris.instrument_imports(include=["ephemeralml", "asn1crypto", "tests.fuzz"]):
    from tests.fuzz.targets import TARGETS


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        print("targets: " + " ".join(TARGETS), file=sys.stderr)
        sys.exit(2)
    target = TARGETS[sys.argv[1]]
    # Warm the per-process state (world, keys) before libFuzzer starts timing inputs.
    target(b"")
    # libFuzzer's -merge re-runs argv[0] with the same flags: fuzz.sh points it at a
    # small executable that runs this module for the same target.
    argv0 = os.environ.get("EPHEMERALML_FUZZ_ARGV0", sys.argv[0])
    atheris.Setup([argv0, *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
