"""The mock enclave measures every project file it runs, and the model floors its image carries."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

import ephemeralml.enclave._measure as enclave_cli
from ephemeralml.common._cbor import encode
from ephemeralml.common._errors import ConfigError
from ephemeralml.enclave._measure import (
    image_config_digest,
    load_model_floors,
    model_floors_digest,
    owner_keys_digest,
)
from ephemeralml.mock._nsm import mock_enclave_measurements
from tests.vectors_path import REPO_ROOT


def test_code_digest_covers_what_the_image_carries(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[Path]] = []

    def code_digest(dirs: Sequence[Path]) -> bytes:
        seen.append(list(dirs))
        return b"x" * 48

    monkeypatch.setattr(enclave_cli, "code_digest", code_digest)
    enclave_cli.enclave_code_digest()
    top = REPO_ROOT / "ephemeralml"
    assert seen == [[top / "__init__.py", top / "common", top / "runtime", top / "enclave"]]


def test_the_enclave_program_loads_only_what_the_image_carries() -> None:
    """Every project module the enclave program imports (its whole CLI, production
    path) lies under a measured root, and nothing of the host, client or mock does."""
    code = (
        "import sys, ephemeralml.enclave._cli, ephemeralml.enclave.__main__\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('ephemeralml'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    ).stdout.split()
    allowed = ("ephemeralml", *(f"ephemeralml.{p}" for p in enclave_cli.ENCLAVE_IMAGE_PACKAGES))
    outside = [m for m in out if not any(m == a or m.startswith(a + ".") for a in allowed)]
    assert outside == []
    assert "ephemeralml.enclave._cli" in out and "ephemeralml.runtime._relay" in out


# ---------------------------------------------------------------- model floors (M11)

OWNER = bytes(range(32))


def test_floors_change_pcr0_and_nothing_else() -> None:
    none = mock_enclave_measurements([OWNER])
    assert mock_enclave_measurements([OWNER], {}) == none  # no floors: measured as before floors
    three = mock_enclave_measurements([OWNER], {"m": 3})
    four = mock_enclave_measurements([OWNER], {"m": 4})
    other = mock_enclave_measurements([OWNER], {"m": 3, "n": 1})
    assert len({none[0], three[0], four[0], other[0]}) == 4  # a host cannot lower a floor unseen
    for pcrs in (three, four, other):
        assert {i: pcrs[i] for i in (1, 2, 8)} == {i: none[i] for i in (1, 2, 8)}
    # The order floors are listed in does not count; the owner keys still do.
    assert mock_enclave_measurements([OWNER], {"n": 1, "m": 3}) == other
    assert mock_enclave_measurements([bytes(32)], {"m": 3})[0] != three[0]


def test_image_config_digest_is_domain_separated() -> None:
    keys = owner_keys_digest([OWNER])
    assert image_config_digest([OWNER], {}) == keys
    floors = hashlib.sha384(b"ephemeralml/1 model floors\x00" + encode({"m": 3})).digest()
    assert model_floors_digest({"m": 3}) == floors
    assert image_config_digest([OWNER], {"m": 3}) == hashlib.sha384(b"ephemeralml/1 image config\x00" + keys + floors).digest()


def test_floors_file(tmp_path: Path) -> None:
    assert load_model_floors(tmp_path / "absent.txt") == {}  # absent: no floors
    p = tmp_path / "floors.txt"
    p.write_text("# model floors\n\nall-MiniLM-L6-v2 3   # since the tokenizer fix\nother\t12\n")
    assert load_model_floors(p) == {"all-MiniLM-L6-v2": 3, "other": 12}
    p.write_text("")
    assert load_model_floors(p) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("m\n", "{p}:1: a floor is MODEL_ID MIN_RELEASE (decimal)"),
        ("m 3 4\n", "{p}:1: a floor is MODEL_ID MIN_RELEASE (decimal)"),
        ("m -3\n", "{p}:1: a floor is MODEL_ID MIN_RELEASE (decimal)"),
        ("m 0x10\n", "{p}:1: a floor is MODEL_ID MIN_RELEASE (decimal)"),
        ("# c\nm 0\n", "{p}:2: a floor is 1..9223372036854775807"),
        (f"m {2**63}\n", "{p}:1: a floor is 1..9223372036854775807"),
        ("m 3\nm 4\n", "{p}:2: m has a floor already"),
        ("x" * 257 + " 1\n", "{p}:1: a floor is MODEL_ID MIN_RELEASE (decimal)"),
        ("".join(f"m{i} 1\n" for i in range(65)), "{p} lists more than 64 model floors"),
        ("m\u00e9 1\n", "{p}: model floors must be ASCII text"),
        ("# pad\n" * 20000, "{p} is over 65536 bytes"),
    ],
)
def test_a_bad_floors_file_is_an_error_never_empty(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "floors.txt"
    p.write_bytes(text.encode())
    with pytest.raises(ConfigError) as info:
        load_model_floors(p)
    assert str(info.value) == message.format(p=p)


def test_an_unreadable_floors_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_model_floors(tmp_path)  # a folder
    assert str(info.value) == f"cannot read model floors at {tmp_path}: Is a directory"
