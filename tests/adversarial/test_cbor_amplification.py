"""Every CBOR amplification feature, at every place a peer's frame is decoded.

Issue 7, finding 1: value sharing (tags 28/29) and string references (25/256) let a
small frame decode into gigabytes on re-encode, and cbor2's encoder then aborts the
process. Each feature below is sent:

* ``enclave-pre-auth``: as the first frame of a connection to the enclave, through the
  host, at the largest size the enclave accepts before the handshake;
* ``enclave-session``: in place of the first request of an open session (a hostile
  host can do that), at the largest frame size;
* ``client-pre-attest``: from a hostile host to a client, in place of the
  attestation, at the largest size the client accepts before attestation;
* ``client-session``: in place of the first response, at the largest frame size.

Each must be refused with the decoder's exact typed error; the enclave and the client
process must not die, and a legitimate client is served afterwards. The client runs
as a memory-limited process of its own (``_client_worker``), the enclave under
ENCLAVE_MEMORY_LIMIT_BYTES: an input that got past the decoders ends that process
quickly instead of taking the machine's memory, and the test fails.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ephemeralml.common._cbor import MAX_CBOR_DEPTH, MAX_CBOR_ITEMS
from ephemeralml.common._errors import (
    DecodeError,
    Error,
    LimitError,
    RemoteError,
    RemoteProtocolError,
)
from ephemeralml.common._frame import MAX_FRAME_BYTES
from ephemeralml.common._messages import ErrorFrame, decode_message
from ephemeralml.common._session import MAX_ATTEST_FRAME_BYTES, MAX_HANDSHAKE_FRAME_BYTES
from tests.integration.conftest import Stack

from .conftest import (
    CLIENT_MEMORY_LIMIT_BYTES,
    assert_no_plaintext,
    assert_no_traceback,
    assert_serving,
    limited,
    policy,
    read_until_closed,
)
from .hostile import HostileRelay, Inject, Replace, frame

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

#: {"t": "hello", "x": ITEM}: the hostile item sits inside an ordinary-looking map.
_PREFIX = b"\xa2\x61t\x65hello\x61x"


def _head(major: int, n: int) -> bytes:
    """The shortest CBOR head (RFC 8949 §3) of major type ``major`` and argument ``n``."""
    if n < 24:
        return bytes([major << 5 | n])
    for ai, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | ai]) + n.to_bytes(size, "big")
    raise ValueError(n)


@dataclass(frozen=True)
class Attack:
    """A frame body of about ``size`` bytes, and the exact error it must earn."""

    body: bytes
    error: type[Error]
    message: str


def shared_values(size: int) -> Attack:
    # [28(h'00'*k), 29(0), 29(0), ...]: every 3-byte 29(0) is the k-byte string again.
    k = size // 4
    value = _head(6, 28) + _head(2, k) + bytes(k)
    refs = (size - len(_PREFIX) - len(value) - 9) // 3
    item = _head(4, 1 + refs) + value + (_head(6, 29) + b"\x00") * refs
    at = len(_PREFIX) + len(_head(4, 1 + refs))
    return Attack(_PREFIX + item, DecodeError,
                  f"frame has CBOR tag 28 at byte {at}, which is not accepted")  # fmt: skip


def string_references(size: int) -> Attack:
    # 256([h'00'*k, 25(0), 25(0), ...]): every 25(0) is the first string again.
    k = size // 4
    refs = (size - len(_PREFIX) - k - 16) // 3
    item = _head(6, 256) + _head(4, 1 + refs) + _head(2, k) + bytes(k)
    item += (_head(6, 25) + b"\x00") * refs
    return Attack(_PREFIX + item, DecodeError,
                  f"frame has CBOR tag 256 at byte {len(_PREFIX)}, which is not accepted")  # fmt: skip


def deep_nesting(size: int) -> Attack:
    # [[[[...0...]]]]: one byte per level, as deep as the frame allows.
    depth = size - len(_PREFIX) - 1
    return Attack(_PREFIX + b"\x81" * depth + b"\x00", DecodeError,
                  f"frame is nested too deeply (limit {MAX_CBOR_DEPTH})")  # fmt: skip


def _huge(major: int, what: Callable[[int, int], str]) -> Callable[[int], Attack]:
    def build(size: int) -> Attack:
        n = 2**64 - 1
        pad = bytes(max(0, size - len(_PREFIX) - 9))
        body = _PREFIX + _head(major, n) + pad
        return Attack(body, DecodeError,
                      "frame is not well-formed CBOR: " + what(len(_PREFIX), len(pad)))  # fmt: skip

    return build


huge_byte_string = _huge(
    2, lambda at, rest: f"a string of {2**64 - 1} bytes at byte {at} runs past the end"
)
huge_text_string = _huge(
    3, lambda at, rest: f"a string of {2**64 - 1} bytes at byte {at} runs past the end"
)
huge_array = _huge(
    4, lambda at, rest: f"{2**64 - 1} items declared at byte {at} but {rest} bytes remain"
)
huge_map = _huge(
    5, lambda at, rest: f"{2 * (2**64 - 1)} items declared at byte {at} but {rest} bytes remain"
)


def many_items(size: int) -> Attack:
    # A flat array of one-byte items: each costs a Python object, the input one byte.
    # Below MAX_CBOR_ITEMS (the enclave's 4 KiB handshake frames cannot reach it) the
    # frame decodes, and the message check refuses it.
    n = size - len(_PREFIX) - 9
    body = _PREFIX + _head(4, n) + bytes(n)
    if n + 4 <= MAX_CBOR_ITEMS:
        return Attack(body, RemoteProtocolError,
                      "hello has unexpected fields ['x'] or lacks ['mode', 'nonce', 'v']")  # fmt: skip
    return Attack(body, LimitError, f"frame holds more than {MAX_CBOR_ITEMS} CBOR items")


def self_described(size: int) -> Attack:
    # 55799(hello): cbor2 used to strip the tag, a second encoding of one value.
    hello = b"\xa4\x61t\x65hello\x61v\x01\x64mode\x65fresh\x65nonce\x58\x20" + bytes(32)
    return Attack(_head(6, 55799) + hello, DecodeError,
                  "frame has CBOR tag 55799 at byte 0, which is not accepted")  # fmt: skip


def _indefinite(start: bytes, element: bytes) -> Callable[[int], Attack]:
    def build(size: int) -> Attack:
        n = max(1, (size - len(_PREFIX) - 2) // len(element))
        return Attack(_PREFIX + start + element * n + b"\xff", DecodeError,
                      f"frame is not well-formed CBOR: indefinite length at byte {len(_PREFIX)}")  # fmt: skip

    return build


indefinite_array = _indefinite(b"\x9f", b"\x00")
indefinite_map = _indefinite(b"\xbf", b"\x00\x00")
indefinite_byte_string = _indefinite(b"\x5f", b"\x41\x00")
indefinite_text_string = _indefinite(b"\x7f", b"\x61a")


def big_number(size: int) -> Attack:
    # 2(h'ff...'): a bignum as large as the frame (decoding it is quadratic work).
    k = size - len(_PREFIX) - 9
    return Attack(_PREFIX + _head(6, 2) + _head(2, k) + b"\xff" * k, DecodeError,
                  f"frame has CBOR tag 2 at byte {len(_PREFIX)}, which is not accepted")  # fmt: skip


FEATURES: dict[str, Callable[[int], Attack]] = {
    "shared_values": shared_values,
    "string_references": string_references,
    "deep_nesting": deep_nesting,
    "huge_byte_string": huge_byte_string,
    "huge_text_string": huge_text_string,
    "huge_array": huge_array,
    "huge_map": huge_map,
    "many_items": many_items,
    "tag_55799": self_described,
    "indefinite_array": indefinite_array,
    "indefinite_map": indefinite_map,
    "indefinite_byte_string": indefinite_byte_string,
    "indefinite_text_string": indefinite_text_string,
    "big_number": big_number,
}

#: Sizes at each place: the most that place accepts, less a margin for the frame's
#: own growth (no builder overshoots by more than 16 bytes).
ENCLAVE_PRE_AUTH = MAX_HANDSHAKE_FRAME_BYTES - 16
CLIENT_PRE_ATTEST = MAX_ATTEST_FRAME_BYTES - 16
IN_SESSION = MAX_FRAME_BYTES - 64


def test_builders_fit_their_places() -> None:
    for build in FEATURES.values():
        for size in (ENCLAVE_PRE_AUTH, CLIENT_PRE_ATTEST, IN_SESSION):
            assert len(build(size).body) <= size + 16


# ---------------------------------------------------------------- the client side

ClientResults = dict[tuple[str, str], dict[str, str]]


@pytest.fixture(scope="module")
def client_results(stack: Stack) -> Iterator[ClientResults]:
    """Every feature, to a client (one memory-limited process), before and after
    attestation; what that client reported for each."""
    relays: dict[str, tuple[str, str]] = {}
    opened: list[HostileRelay] = []
    try:
        for name, build in FEATURES.items():
            for place, index, size in (("client-pre-attest", 0, CLIENT_PRE_ATTEST),
                                       ("client-session", 1, IN_SESSION)):  # fmt: skip
                attack = build(size)
                r = HostileRelay(
                    stack.host_port,
                    {("down", index): Inject(frame(attack.body), instead=True)},
                    max_connections=1,
                    lifetime_s=60,
                )
                opened.append(r)
                relays[r.address] = (name, place)
        proc = subprocess.run(
            limited([sys.executable, "-m", "tests.adversarial._client_worker", *relays],
                    CLIENT_MEMORY_LIMIT_BYTES),
            env=stack.env, cwd=ROOT, capture_output=True, text=True, timeout=120,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    finally:
        for r in opened:
            r.close()
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    done = {relays[x["address"]]: x for x in lines}
    if proc.returncode != 0 or len(done) != len(relays):
        killer = next(v for a, v in relays.items() if v not in done)
        pytest.fail(
            f"the client process ended with {proc.returncode} at {killer}: "
            f"{proc.stderr.strip().splitlines()[-1:]}"
        )
    yield done


# ---------------------------------------------------------------- the enclave side


def _to_enclave_pre_auth(stack: Stack, body: bytes, *, send: int | None = None) -> ErrorFrame:
    """``body`` as the first frame of a connection, through the host; the answer.

    ``send``: send only that many bytes of the frame (the answer must not need more).
    """
    with socket.create_connection(("127.0.0.1", stack.host_port), timeout=10) as sock:
        sock.sendall(frame(body)[:send])
        data = read_until_closed(sock)
    msg = decode_message(data[4:])
    assert isinstance(msg, ErrorFrame), msg
    return msg


def _to_enclave_in_session(stack: Stack, body: bytes, secret_vector: bytes) -> RemoteError:
    from ephemeralml.client._api import connect

    text = "amplification victim: SECRET text"
    with HostileRelay(stack.host_port, {("up", 2): Replace(lambda _: body)}) as relay:
        with connect(relay.address, policy=policy(stack), timeout=30) as s:
            with pytest.raises(RemoteError) as ei:
                s.embed([text])
    assert_no_plaintext(relay, secret_vector, text)
    return ei.value


@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_cbor_amplification(
    stack: Stack, secret_vector: bytes, client_results: ClientResults, feature: str
) -> None:
    build = FEATURES[feature]
    # The enclave, pre-auth, through the host.
    a = build(ENCLAVE_PRE_AUTH)
    msg = _to_enclave_pre_auth(stack, a.body)
    assert (msg.code, msg.message) == (a.error.code, a.message)
    # The enclave, in an open session.
    a = build(IN_SESSION)
    err = _to_enclave_in_session(stack, a.body, secret_vector)
    assert (err.remote_code, str(err)) == (
        a.error.code,
        f"the peer reported {a.error.code}: {a.message}",
    )
    # The client, before and after attestation: its own process survived (the fixture
    # checks) and reported exactly the decoder's error.
    for place, size in (("client-pre-attest", CLIENT_PRE_ATTEST), ("client-session", IN_SESSION)):
        got = client_results[(feature, place)]
        a = build(size)
        assert (got["type"], got["message"]) == (a.error.__name__, a.message), place
    assert_serving(stack)


def test_oversized_first_frame_is_refused_before_decoding(stack: Stack) -> None:
    # The same amplification at 1 MiB, pre-auth: refused by its length alone (F1).
    a = shared_values(1024 * 1024)
    msg = _to_enclave_pre_auth(stack, a.body, send=MAX_HANDSHAKE_FRAME_BYTES)
    assert (msg.code, msg.message) == (
        "limit",
        f"frame of {len(a.body)} bytes is over the limit of {MAX_HANDSHAKE_FRAME_BYTES}",
    )
    assert_serving(stack)


def test_no_traceback_in_any_log(stack: Stack) -> None:
    # Last in this module: nothing any test above sent escaped as a foreign exception
    # into the host's or the enclave's log.
    assert_no_traceback(stack)
