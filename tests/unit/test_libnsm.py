"""NitroNsm (the ctypes binding to libnsm.so) against a fake libnsm with the same ABI.

tests/native/fake_nsm.c documents what the fake does; every expected value below is
computed from that description, so the tests pin exactly what crosses the C boundary.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ephemeralml.common._errors import (
    ConfigError,
    Error,
    LimitError,
    LocalProtocolError,
    TransportError,
)
from ephemeralml.enclave._libnsm import (
    _ERROR_CLASS,
    DEFAULT_LIBNSM,
    MAX_ATTESTATION_DOC_BYTES,
    MAX_GET_RANDOM_CALLS,
    NitroNsm,
    NsmErrorCode,
)
from ephemeralml.enclave._nsm import Nsm

pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None,
    reason="gcc not found: cannot build the fake libnsm.so from tests/native/fake_nsm.c",
)

FAKE_SOURCE = Path(__file__).resolve().parents[1] / "native" / "fake_nsm.c"
NULL = b"\xff\xff\xff\xff"  # how the fake encodes a NULL field


@pytest.fixture(scope="module")
def libnsm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fake-libnsm") / "libnsm.so"
    cmd = ["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(out), str(FAKE_SOURCE)]
    built = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if built.returncode != 0:
        pytest.fail(f"building the fake libnsm failed:\n{built.stderr}")
    return out


@pytest.fixture
def fake(libnsm: Path) -> ctypes.CDLL:
    """The fake's own test counters (same loaded library, same state)."""
    return ctypes.CDLL(str(libnsm))


@pytest.fixture
def nsm(libnsm: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NitroNsm]:
    monkeypatch.delenv("FAKE_NSM_FAIL_INIT", raising=False)
    monkeypatch.delenv("FAKE_NSM_RANDOM_CHUNK", raising=False)
    with NitroNsm.open(libnsm) as opened:
        yield opened


def fake_doc(user_data: bytes | None, nonce: bytes | None, public_key: bytes | None) -> bytes:
    out = b"FAKE"
    for value in (user_data, nonce, public_key):  # C argument order
        out += NULL if value is None else len(value).to_bytes(4, "big") + value
    return out


def initial_pcr(index: int) -> bytes:
    return bytes([index]) * 48 if index < 16 else bytes(48)


def mixed(old: bytes, data: bytes) -> bytes:
    # The fake's stand-in for extend: new[j] = old[j] ^ data[j % len] ^ j.
    return bytes(o ^ (data[j % len(data)] if data else 0) ^ j for j, o in enumerate(old))


# -- open / close -------------------------------------------------------------


def test_is_an_nsm(nsm: NitroNsm) -> None:
    assert isinstance(nsm, Nsm)
    assert nsm.mode == "nitro"
    assert DEFAULT_LIBNSM == "libnsm.so"
    assert MAX_ATTESTATION_DOC_BYTES == 16 * 1024


def test_missing_library(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "libnsm.so"
    with pytest.raises(ConfigError) as e:
        NitroNsm.open(path)
    assert str(e.value) == (
        f"NSM: cannot load {path}: {path}: cannot open shared object file: No such file or directory"
    )
    assert isinstance(e.value.__cause__, OSError)


@pytest.mark.skipif(ctypes.util.find_library("nsm") is not None, reason="a libnsm is installed")
def test_missing_default_library() -> None:
    with pytest.raises(ConfigError) as e:
        NitroNsm.open()
    assert str(e.value) == (
        "NSM: cannot load libnsm.so: libnsm.so: cannot open shared object file: "
        "No such file or directory"
    )


def test_library_without_the_abi() -> None:
    with pytest.raises(ConfigError) as e:
        NitroNsm.open("libc.so.6")
    assert str(e.value) == "NSM: libc.so.6 is not libnsm: it has no nsm_lib_init"


def test_library_argument_type() -> None:
    with pytest.raises(ConfigError) as e:
        NitroNsm.open(42)  # type: ignore[arg-type]
    assert str(e.value) == "NSM: library must be a name or a path, got 42"


def test_init_failure(libnsm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_NSM_FAIL_INIT", "1")
    with pytest.raises(ConfigError) as e:
        NitroNsm.open(libnsm)
    assert str(e.value) == (
        "NSM: cannot open /dev/nsm (nsm_lib_init returned -1); "
        "the NSM exists only inside a Nitro Enclave"
    )


def test_close_is_idempotent(libnsm: Path, fake: ctypes.CDLL) -> None:
    opened = NitroNsm.open(libnsm)
    opened.close()
    opened.close()
    assert fake.fake_nsm_exit_calls() == 1
    with pytest.raises(LocalProtocolError) as e:
        opened.describe_pcr(0)
    assert str(e.value) == "NSM: nsm_describe_pcr(0) called after close"
    with pytest.raises(LocalProtocolError, match=r"^NSM: nsm_get_random called after close$"):
        opened.get_random(1)


def test_context_manager_closes(libnsm: Path, fake: ctypes.CDLL) -> None:
    with NitroNsm.open(libnsm) as opened:
        assert opened.describe_pcr(1) == initial_pcr(1)
    assert fake.fake_nsm_exit_calls() == 1
    opened.close()
    assert fake.fake_nsm_exit_calls() == 1


# -- attestation documents ----------------------------------------------------


@pytest.mark.parametrize(
    ("public_key", "user_data", "nonce"),
    [
        (None, None, None),
        (b"", b"", b""),
        (b"ppp", b"u", b"nn"),
        (None, b"", b"n"),
        (b"\x00key\x00", None, b"\x00"),  # NUL bytes are data, not terminators
        (bytes(range(256)) * 2, b"\xff" * 512, b"\x00" * 512),  # each at the limit
    ],
    ids=["all-null", "all-empty", "all-set", "mixed", "nul-bytes", "at-limit"],
)
def test_attestation_round_trip(
    nsm: NitroNsm, public_key: bytes | None, user_data: bytes | None, nonce: bytes | None
) -> None:
    doc = nsm.get_attestation_doc(public_key=public_key, user_data=user_data, nonce=nonce)
    assert doc == fake_doc(user_data, nonce, public_key)


def test_attestation_exact_bytes(nsm: NitroNsm) -> None:
    doc = nsm.get_attestation_doc(public_key=b"K", user_data=None, nonce=b"")
    assert doc == b"FAKE" + b"\xff\xff\xff\xff" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x01K"


@pytest.mark.parametrize("field", ["public_key", "user_data", "nonce"])
def test_attestation_field_checks(nsm: NitroNsm, field: str) -> None:
    fields: dict[str, bytes | None] = {"public_key": None, "user_data": None, "nonce": None}
    fields[field] = b"x" * 513
    with pytest.raises(LimitError) as limit:
        nsm.get_attestation_doc(**fields)
    assert str(limit.value) == f"NSM: {field} is 513 bytes; the limit is 512"
    fields[field] = "text"  # type: ignore[assignment]
    with pytest.raises(LocalProtocolError) as wrong:
        nsm.get_attestation_doc(**fields)
    assert type(wrong.value) is LocalProtocolError
    assert str(wrong.value) == f"NSM: {field} must be bytes or None"


def test_attestation_buffer_too_small(nsm: NitroNsm) -> None:
    # The fake's "BIG" document is 20000 bytes, over our 16 KiB buffer.
    with pytest.raises(LimitError) as e:
        nsm.get_attestation_doc(public_key=None, user_data=b"BIG", nonce=None)
    assert str(e.value) == "NSM: nsm_get_attestation_doc failed: BufferTooSmall"


# -- error codes ----------------------------------------------------------------


def test_error_code_values() -> None:
    assert [(c.name, c.value) for c in NsmErrorCode] == [
        ("Success", 0),
        ("InvalidArgument", 1),
        ("InvalidIndex", 2),
        ("InvalidResponse", 3),
        ("ReadOnlyIndex", 4),
        ("InvalidOperation", 5),
        ("BufferTooSmall", 6),
        ("InputTooLarge", 7),
        ("InternalError", 8),
    ]
    assert set(_ERROR_CLASS) == set(NsmErrorCode) - {NsmErrorCode.Success}


@pytest.mark.parametrize(
    ("code", "cls", "text"),
    [
        (1, LocalProtocolError, "InvalidArgument"),
        (2, LocalProtocolError, "InvalidIndex"),
        (3, TransportError, "InvalidResponse"),
        (4, LocalProtocolError, "ReadOnlyIndex"),
        (5, TransportError, "InvalidOperation"),
        (6, LimitError, "BufferTooSmall"),
        (7, LocalProtocolError, "InputTooLarge"),
        (8, TransportError, "InternalError"),
        (9, TransportError, "unknown error code 9"),
        (42, TransportError, "unknown error code 42"),
    ],
)
def test_error_code_mapping(nsm: NitroNsm, code: int, cls: type[Error], text: str) -> None:
    with pytest.raises(Error) as e:
        nsm.get_attestation_doc(public_key=None, user_data=f"ERR:{code}".encode(), nonce=None)
    assert type(e.value) is cls
    assert str(e.value) == f"NSM: nsm_get_attestation_doc failed: {text}"


# -- PCRs -----------------------------------------------------------------------


def test_describe_pcr(nsm: NitroNsm) -> None:
    for index in range(32):
        value, locked = nsm.describe_pcr_locked(index)
        assert value == initial_pcr(index)
        assert locked is (index < 16 or index == 31)
        assert nsm.describe_pcr(index) == value


def test_extend_pcr(nsm: NitroNsm) -> None:
    expected = initial_pcr(16)
    for data in (b"abc", b"", b"\x00" * 5, bytes(range(100)), b"z" * 1024):
        expected = mixed(expected, data)
        assert nsm.extend_pcr(16, data) == expected
        assert nsm.describe_pcr_locked(16) == (expected, False)
    assert nsm.describe_pcr(17) == bytes(48)


def test_extend_read_only(nsm: NitroNsm) -> None:
    for index in (0, 15, 31):
        with pytest.raises(LocalProtocolError) as e:
            nsm.extend_pcr(index, b"x")
        assert str(e.value) == f"NSM: nsm_extend_pcr({index}) failed: ReadOnlyIndex"
        assert nsm.describe_pcr(index) == initial_pcr(index)


def test_extend_data_checks(nsm: NitroNsm) -> None:
    with pytest.raises(LimitError) as limit:
        nsm.extend_pcr(16, b"x" * 1025)
    assert str(limit.value) == "NSM: extend_pcr data is 1025 bytes; the limit is 1024"
    with pytest.raises(LocalProtocolError) as wrong:
        nsm.extend_pcr(16, "x")  # type: ignore[arg-type]
    assert str(wrong.value) == "NSM: extend_pcr data must be bytes"
    assert nsm.describe_pcr(16) == bytes(48)


@pytest.mark.parametrize("index", [-1, 32, 65536, True, 1.0, "1", None])
def test_invalid_index_refused_before_the_call(nsm: NitroNsm, index: object) -> None:
    message = f"NSM: PCR index {index!r} not in 0..31"
    with pytest.raises(LocalProtocolError) as e:
        nsm.describe_pcr(index)  # type: ignore[arg-type]
    assert str(e.value) == message
    with pytest.raises(LocalProtocolError) as e:
        nsm.describe_pcr_locked(index)  # type: ignore[arg-type]
    assert str(e.value) == message
    with pytest.raises(LocalProtocolError) as e:
        nsm.extend_pcr(index, b"x")  # type: ignore[arg-type]
    assert str(e.value) == message


def test_invalid_index_from_the_device(nsm: NitroNsm) -> None:
    # Past the Python check, the device's own InvalidIndex comes back typed.
    with pytest.raises(LocalProtocolError) as e:
        nsm._describe_pcr(32)
    assert str(e.value) == "NSM: nsm_describe_pcr(32) failed: InvalidIndex"


# -- random -----------------------------------------------------------------------


def test_get_random_loops(nsm: NitroNsm, fake: ctypes.CDLL) -> None:
    # The fake hands out at most 100 bytes a call, from a byte counter.
    assert nsm.get_random(256) == bytes(range(256))
    assert fake.fake_nsm_random_calls() == 3
    assert nsm.get_random(10) == bytes(range(10))
    assert fake.fake_nsm_random_calls() == 4


def test_get_random_one_byte_a_call(
    libnsm: Path, fake: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NSM_RANDOM_CHUNK", "1")
    with NitroNsm.open(libnsm) as opened:
        assert opened.get_random(MAX_GET_RANDOM_CALLS) == bytes(range(MAX_GET_RANDOM_CALLS))
        with pytest.raises(TransportError) as e:
            opened.get_random(256)
    assert str(e.value) == "NSM: nsm_get_random gave 16 of 256 bytes in 16 calls"
    assert fake.fake_nsm_random_calls() == 2 * MAX_GET_RANDOM_CALLS


def test_get_random_nothing_returned(libnsm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_NSM_RANDOM_CHUNK", "0")
    with NitroNsm.open(libnsm) as opened, pytest.raises(TransportError) as e:
        opened.get_random(5)
    assert str(e.value) == "NSM: nsm_get_random returned 0 bytes for 5 asked"


@pytest.mark.parametrize("length", [0, -1, 257, 1000, True, 1.5, None])
def test_get_random_length_checks(nsm: NitroNsm, fake: ctypes.CDLL, length: object) -> None:
    with pytest.raises(LocalProtocolError) as e:
        nsm.get_random(length)  # type: ignore[arg-type]
    assert str(e.value) == f"NSM: get_random length must be 1..256, got {length!r}"
    assert fake.fake_nsm_random_calls() == 0


# -- threads ----------------------------------------------------------------------


def _hammer(nsm: NitroNsm, worker: int) -> None:
    for i in range(25):
        user_data = f"{worker}:{i}".encode()
        doc = nsm.get_attestation_doc(public_key=None, user_data=user_data, nonce=b"n")
        assert doc == fake_doc(user_data, b"n", None)
        assert nsm.describe_pcr(worker) == initial_pcr(worker)
        assert len(nsm.get_random(64)) == 64


def test_threads_share_one_device(nsm: NitroNsm, fake: ctypes.CDLL) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(_hammer, nsm, worker) for worker in range(8)]
        for future in futures:
            future.result(timeout=60)
    assert fake.fake_nsm_overlaps() == 0
    assert fake.fake_nsm_random_calls() == 8 * 25


def test_overlap_detector_works(nsm: NitroNsm, fake: ctypes.CDLL) -> None:
    # Without the lock, ctypes (which releases the GIL) lets calls overlap in the
    # fake: proof that the test above would notice a missing lock.
    # (Overlapping calls share the fake's document buffer: results are not checked.)
    nsm._lock = contextlib.nullcontext()  # type: ignore[assignment]

    def call() -> None:
        for _ in range(25):
            nsm.get_attestation_doc(public_key=None, user_data=None, nonce=None)

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(call) for _ in range(8)]
        for future in futures:
            future.result(timeout=60)
    assert fake.fake_nsm_overlaps() > 0
