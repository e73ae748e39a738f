"""Limits before authentication (protocol.md §7.1): slow peers are cut, at the host and
at the enclave itself (reached directly, as a compromised host would).

This module's host and enclave run with short handshake and frame deadlines (the
flags are the programs' own), so that each cut costs about two seconds.
"""

from __future__ import annotations

import secrets
import select
import socket
from collections.abc import Iterator

import pytest

from ephemeralml.common._messages import ClientHello, ErrorFrame, decode_message
from tests.integration.conftest import Stack

from .conftest import assert_no_traceback, assert_serving, launch, read_until_closed, stop_stack
from .hostile import frame

pytestmark = pytest.mark.integration

HANDSHAKE_S = "2"
FRAME_S = "1.5"
_LIMITS = ("--handshake-timeout", HANDSHAKE_S, "--frame-timeout", FRAME_S)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = launch(tmp_path_factory.mktemp("preauth-home"), _LIMITS, _LIMITS)
    yield s
    stop_stack(s)


def _hello() -> bytes:
    return frame(ClientHello(1, secrets.token_bytes(32)).to_cbor())


def _last_error_frame(data: bytes) -> ErrorFrame:
    """The error frame that ends ``data`` (frames before it are skipped)."""
    frames = []
    while len(data) >= 4:
        n = int.from_bytes(data[:4], "big")
        frames.append(data[4 : 4 + n])
        data = data[4 + n :]
    msg = decode_message(frames[-1])
    assert isinstance(msg, ErrorFrame), msg
    return msg


#: Where the cut comes from: the host (through its client port) or the enclave.
_WHO = {"host": "host relay: ", "enclave": ""}


def _port(stack: Stack, who: str) -> int:
    return stack.host_port if who == "host" else stack.enclave_port


@pytest.mark.parametrize("who", ["host", "enclave"])
def test_drip_hello_is_cut_by_frame_deadline(stack: Stack, who: str) -> None:
    # One byte of the hello every 0.3 s: each byte is news, only L2 ends it.
    with socket.create_connection(("127.0.0.1", _port(stack, who)), timeout=10) as sock:
        for b in _hello():
            try:
                sock.sendall(bytes([b]))
            except OSError:
                break  # cut while we were still sending
            if select.select([sock], [], [], 0.3)[0]:
                break  # the answer (the cut) is there: stop dripping
        else:
            pytest.fail("the whole hello dripped through without a cut")
        msg = _last_error_frame(read_until_closed(sock))
    what = "a frame from the client" if who == "host" else "a frame"
    assert (msg.code, msg.message) == (
        "limit",
        f"{_WHO[who]}L2 frame deadline of {FRAME_S} s passed ({what} started but not finished)",
    )
    assert_serving(stack)


@pytest.mark.parametrize("who", ["host", "enclave"])
def test_handshake_never_finished_is_cut(stack: Stack, who: str) -> None:
    # A hello, the attestation comes back, and the "open" never does.
    with socket.create_connection(("127.0.0.1", _port(stack, who)), timeout=10) as sock:
        sock.sendall(_hello())
        msg = _last_error_frame(read_until_closed(sock))
    assert (msg.code, msg.message) == (
        "limit",
        f"{_WHO[who]}L1 handshake deadline of {HANDSHAKE_S} s passed (hello to open)",
    )
    assert_serving(stack)


@pytest.mark.parametrize("who", ["host", "enclave"])
def test_silent_connection_is_cut(stack: Stack, who: str) -> None:
    with socket.create_connection(("127.0.0.1", _port(stack, who)), timeout=10) as sock:
        msg = _last_error_frame(read_until_closed(sock))
    assert (msg.code, msg.message) == (
        "limit",
        f"{_WHO[who]}L1 handshake deadline of {HANDSHAKE_S} s passed (hello to open)",
    )
    assert_serving(stack)
    assert_no_traceback(stack)
