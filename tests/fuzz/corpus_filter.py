"""Keep real-world vectors out of the committed corpus.

    python -m tests.fuzz.corpus_filter SRC DST

Copies the files of SRC to DST, leaving out any that shares a 96-byte run with a file in
tests/vectors/real: those vectors are seeded into every run from there, and an input the
fuzzer derived from one is mostly a second copy of it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from tests.vectors_path import REAL_VECTORS

#: Length of a run of bytes that counts as copied from a real vector.
WINDOW = 96
#: A run with fewer distinct bytes (zero PCRs, padding) is not distinctive of a vector.
MIN_DISTINCT = 32
SHARED = REAL_VECTORS


def shared_windows(root: Path = SHARED) -> set[bytes]:
    out: set[bytes] = set()
    if not root.is_dir():
        return out
    for f in root.iterdir():
        if f.is_file() and f.suffix in (".cbor", ".ber", ".der", ".pem"):
            data = f.read_bytes()
            for i in range(0, len(data) - WINDOW + 1, WINDOW):
                if len(set(data[i : i + WINDOW])) >= MIN_DISTINCT:
                    out.add(data[i : i + WINDOW])
    return out


def copies_shared(data: bytes, windows: set[bytes]) -> bool:
    return any(data[i : i + WINDOW] in windows for i in range(len(data) - WINDOW + 1))


def main() -> None:
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    dst.mkdir(parents=True, exist_ok=True)
    windows = shared_windows()
    kept = left = 0
    for f in sorted(src.iterdir()):
        if copies_shared(f.read_bytes(), windows):
            left += 1
            continue
        shutil.copy(f, dst / f.name)
        kept += 1
    print(f"corpus filter: kept {kept}, left out {left} derived from tests/vectors/real")


if __name__ == "__main__":
    main()
