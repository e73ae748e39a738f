"""Issue 7, findings 1, 5 and 6: hostile bytes get a typed error, never a crash.

Every CBOR amplification feature is refused before any work proportional to what it
would expand to (protocol.md §1.2 D2); signed objects have one encoding (D3); foreign
exceptions leave the state machines in ERROR with one of our errors.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import cbor2
import pytest

from ephemeralml.common import _cbor
from ephemeralml.common._cbor import MAX_CBOR_ITEMS, decode_deterministic, decode_strict
from ephemeralml.common._cose import decode_sign1
from ephemeralml.common._errors import (
    CiphertextError,
    DecodeError,
    LimitError,
    LocalProtocolError,
    ReceiptError,
    RemoteProtocolError,
)
from ephemeralml.common._frame import FrameDecoder, encode_frame
from ephemeralml.common._hpke import ClientChannel
from ephemeralml.common._receipt import verify_receipt
from ephemeralml.common._session import (
    MAX_ATTEST_FRAME_BYTES,
    MAX_HANDSHAKE_FRAME_BYTES,
    ClientState,
    EnclaveSession,
    EnclaveState,
)
from tests.pair import MockWorld, SessionPair
from tests.pair import now as pair_now
from tests.pair import now_ms as pair_now_ms

# -- each amplification feature, as the smallest input that uses it ------------

SHARED = bytes.fromhex("82d81c43616263d81d00")  # [28(h'616263'), 29(0)]
STRINGREF = bytes.fromhex("d901008263616263d81900")  # 256(["abc", 25(0)])
SELF_DESCRIBED = bytes.fromhex("d9d9f7a0")  # 55799({})
BIGNUM = bytes.fromhex("c24101")  # 2(h'01')
NESTED_TAG = bytes.fromhex("81c074323031332d30332d32315432303a30343a30305a")  # [0("2013-...")]


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("value sharing 28/29", SHARED, "x has CBOR tag 28 at byte 1, which is not accepted"),
        ("string reference 256/25", STRINGREF, "x has CBOR tag 256 at byte 0, which is not accepted"),
        ("self-described 55799", SELF_DESCRIBED, "x has CBOR tag 55799 at byte 0, which is not accepted"),
        ("bignum 2", BIGNUM, "x has CBOR tag 2 at byte 0, which is not accepted"),
        ("date 0 inside", NESTED_TAG, "x has CBOR tag 0 at byte 1, which is not accepted"),
        ("indefinite array", bytes.fromhex("9f01ff"), "x is not well-formed CBOR: indefinite length at byte 0"),
        ("indefinite string", bytes.fromhex("5f4101ff"), "x is not well-formed CBOR: indefinite length at byte 0"),
        ("reserved head", bytes.fromhex("1c"), "x is not well-formed CBOR: reserved head 0x1c at byte 0"),
        (
            "array declaring 2^64-1 items",
            bytes.fromhex("9bffffffffffffffff00"),
            "x is not well-formed CBOR: 18446744073709551615 items declared at byte 0 but 1 bytes remain",
        ),
        (
            "map declaring 2^32-1 pairs",
            bytes.fromhex("baffffffff0000"),
            "x is not well-formed CBOR: 8589934590 items declared at byte 0 but 2 bytes remain",
        ),
        (
            "string declaring 4 GiB",
            bytes.fromhex("5affffffff00"),
            "x is not well-formed CBOR: a string of 4294967295 bytes at byte 0 runs past the end",
        ),
        ("array as map key", bytes.fromhex("a18101f6"), "x: map key at byte 1 is not an integer or a string"),
        ("float as map key", bytes.fromhex("a1f93c00f6"), "x: map key at byte 1 is not an integer or a string"),
        ("deep nesting", b"\x81" * 17 + b"\x00", "x is nested too deeply (limit 16)"),
        ("truncated head", bytes.fromhex("1a0000"), "x is not well-formed CBOR: a head is cut short"),
        ("ends inside an array", bytes.fromhex("828101"), "x is not well-formed CBOR: it ends inside an item"),
        ("trailing bytes", bytes.fromhex("0000"), "x has 1 trailing bytes"),
    ],
)
def test_each_amplification_feature_is_refused_before_decoding(
    name: str, data: bytes, message: str
) -> None:
    for decode in (decode_strict, decode_deterministic):
        with pytest.raises(DecodeError) as info:
            decode(data, what="x")
        assert type(info.value) is DecodeError, name
        assert str(info.value) == message, name


def test_item_count_is_bounded() -> None:
    many = cbor2.dumps([0] * (MAX_CBOR_ITEMS + 1))
    with pytest.raises(LimitError) as info:
        decode_strict(many, what="x")
    assert str(info.value) == f"x holds more than {MAX_CBOR_ITEMS} CBOR items"
    assert decode_strict(cbor2.dumps([0] * (MAX_CBOR_ITEMS - 1)), what="x") == [0] * (
        MAX_CBOR_ITEMS - 1
    )


@pytest.mark.parametrize(
    ("data", "tag"), [(SHARED, 28), (STRINGREF, 25), (SELF_DESCRIBED, 55799), (BIGNUM, 2)]
)
def test_cbor2_tag_table_refuses_without_the_walk(
    data: bytes, tag: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The second line: even if the head walk let a tag through, cbor2 is given a
    # semantic-decoder table that refuses every tag before resolving references.
    monkeypatch.setattr(_cbor, "_prescan", lambda *a: None)
    with pytest.raises(DecodeError) as info:
        decode_strict(data, what="x")
    assert str(info.value) == f"x has CBOR tag {tag}, which is not accepted"


def test_top_level_tag_only_where_named() -> None:
    sign1 = cbor2.dumps(cbor2.CBORTag(18, [b"", {}, b"", b""]))
    assert decode_strict(sign1, what="x", top_tags=frozenset({18})) == cbor2.CBORTag(
        18, [b"", {}, b"", b""]
    )
    with pytest.raises(DecodeError, match=r"^x has CBOR tag 18 at byte 0, which is not accepted$"):
        decode_strict(sign1, what="x")
    with pytest.raises(DecodeError, match=r"^x has CBOR tag 18 at byte 1, which is not accepted$"):
        decode_strict(b"\xd2" + sign1, what="x", top_tags=frozenset({18}))


# -- finding 1: the frame that aborted the enclave ------------------------------


def _amplifying_frame(copies: int, size: int) -> bytes:
    """[28(big), 29(0), 29(0), ...]: ~size bytes that expand to copies * size."""
    items = [cbor2.CBORTag(28, bytes(size))] + [cbor2.CBORTag(29, 0)] * copies
    body = bytearray(cbor2.dumps(items, value_sharing=False))
    return encode_frame(bytes(body), max_bytes=4 * 1024 * 1024)


def test_amplifying_frame_is_refused_in_a_bounded_process() -> None:
    # Before the fix this decoded, then the canonical re-encode asked for ~20 GB and
    # cbor2's encoder aborted the whole process (SIGABRT). Run in a child with a
    # 1.5 GiB address-space limit, against both ends' state machines.
    code = textwrap.dedent(
        """
        import resource, sys, cbor2
        resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))
        from ephemeralml.common._errors import Error
        from ephemeralml.common._frame import encode_frame
        from ephemeralml.common._messages import decode_message
        items = [cbor2.CBORTag(28, bytes(1 << 20))] + [cbor2.CBORTag(29, 0)] * 20000
        body = cbor2.dumps(items, value_sharing=False)
        try:
            decode_message(body)
        except Error as e:
            print(type(e).__name__, e)
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "DecodeError frame has CBOR tag 28 at byte 3, which is not accepted"


def test_enclave_session_refuses_amplification_before_the_handshake(world: MockWorld) -> None:
    session = EnclaveSession(world.identity)
    frame = _amplifying_frame(copies=200, size=64)
    session.receive_data(frame)
    with pytest.raises(DecodeError) as info:
        session.next_event()
    assert str(info.value) == "frame has CBOR tag 28 at byte 2, which is not accepted"
    assert session.state is EnclaveState.ERROR


def test_enclave_handshake_frames_are_small(world: MockWorld) -> None:
    # Limits before work: a peer that has not opened a session cannot make the enclave
    # buffer a 2 MiB frame; the limit rises once the session is open.
    session = EnclaveSession(world.identity)
    session.receive_data((MAX_HANDSHAKE_FRAME_BYTES + 1).to_bytes(4, "big"))
    with pytest.raises(LimitError) as info:
        session.next_event()
    assert str(info.value) == (
        f"frame of {MAX_HANDSHAKE_FRAME_BYTES + 1} bytes is over the limit of "
        f"{MAX_HANDSHAKE_FRAME_BYTES}"
    )
    pair = SessionPair(world)
    pair.handshake()
    pair.request(("x" * 8000,))  # a request frame larger than any handshake frame
    assert pair.enclave.state is EnclaveState.READY


def test_client_refuses_a_big_frame_before_attestation(world: MockWorld) -> None:
    pair = SessionPair(world)
    pair.client.hello()
    pair.client.receive_data((MAX_ATTEST_FRAME_BYTES + 1).to_bytes(4, "big"))
    with pytest.raises(LimitError) as info:
        pair.client.next_event(now=pair_now())
    assert str(info.value) == (
        f"frame of {MAX_ATTEST_FRAME_BYTES + 1} bytes is over the limit of {MAX_ATTEST_FRAME_BYTES}"
    )
    assert pair.client.state is ClientState.ERROR


def test_client_refuses_amplification_from_a_hostile_host(world: MockWorld) -> None:
    pair = SessionPair(world)
    pair.client.hello()
    pair.client.receive_data(_amplifying_frame(copies=200, size=64))
    with pytest.raises(DecodeError, match=r"^frame has CBOR tag 28 at byte 2, which is not accepted$"):
        pair.client.next_event(now=pair_now())
    assert pair.client.state is ClientState.ERROR


def test_frame_limit_cannot_be_raised_past_the_maximum() -> None:
    d = FrameDecoder(max_bytes=16)
    d.max_bytes = 32
    assert d.max_bytes == 32
    with pytest.raises(LocalProtocolError, match=r"^frame limit 0 is not in 1\.\.2097152$"):
        d.max_bytes = 0


# -- finding 6: one signed object, one encoding --------------------------------


SIGN1 = cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({1: -8}), {}, b"p", bytes(64)]))
UNTAGGED = cbor2.dumps([cbor2.dumps({1: -8}), {}, b"p", bytes(64)])


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        (b"\xd9\xd9\xf7" + SIGN1, "m has CBOR tag 55799 at byte 0, which is not accepted"),
        (b"\xd9\xd9\xf7" + UNTAGGED, "m has CBOR tag 55799 at byte 0, which is not accepted"),
        (b"\xd2" + SIGN1, "m has CBOR tag 18 at byte 1, which is not accepted"),
        # Found by the property tests: untagged, and lengths in longer heads, were
        # further valid spellings of one signed object.
        (UNTAGGED, "m is not tagged COSE_Sign1 (18)"),
        (b"\xd2\x98\x04" + SIGN1[2:], "m is not in its one encoding (RFC 8949 §4.2.1 shortest heads)"),
        (
            SIGN1.replace(b"\x41p", b"\x58\x01p"),
            "m is not in its one encoding (RFC 8949 §4.2.1 shortest heads)",
        ),
        (
            cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({1: -8}), [], b"p", bytes(64)])),
            "m: unprotected header must be an empty map",
        ),
        (
            cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({1: -8}), {4: b"k"}, b"p", bytes(64)])),
            "m: unprotected header must be an empty map",
        ),
    ],
)
def test_sign1_has_one_encoding(variant: bytes, message: str) -> None:
    assert decode_sign1(SIGN1, what="m", max_bytes=1024).payload == b"p"
    with pytest.raises(DecodeError) as info:
        decode_sign1(variant, what="m", max_bytes=1024)
    assert str(info.value) == message


def test_receipt_wrapped_in_self_described_cbor_is_refused(world: MockWorld) -> None:
    pair = SessionPair(world)
    pair.handshake()
    out = pair.request()
    assert pair.attested is not None
    att = pair.attested.attestation
    assert verify_receipt(out.receipt.raw, att).raw == out.receipt.raw
    with pytest.raises(ReceiptError) as info:
        verify_receipt(b"\xd9\xd9\xf7" + out.receipt.raw, att)
    assert str(info.value) == (
        "R1 envelope: receipt has CBOR tag 55799 at byte 0, which is not accepted"
    )
    _, unprot, payload, sig = cbor2.loads(out.receipt.raw).value
    as_array = cbor2.dumps(cbor2.CBORTag(18, [cbor2.loads(out.receipt.raw).value[0], [], payload, sig]))
    assert unprot == {}
    with pytest.raises(ReceiptError, match=r"^R1 envelope: receipt: unprotected header must be an empty map$"):
        verify_receipt(as_array, att)


# -- finding 5: foreign exceptions ---------------------------------------------


# RFC 7748 §5 / libsodium's blocklist: X25519 points of small order.
LOW_ORDER_POINTS = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
]


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_low_order_x25519_key_is_a_ciphertext_error(point: bytes) -> None:
    with pytest.raises(CiphertextError) as info:
        ClientChannel(point, bytes(32))
    assert str(info.value).startswith(
        "attested public_key is not a usable X25519 key (ValueError: "
    )


def test_low_order_key_in_a_signed_document_ends_the_session_in_error(world: MockWorld) -> None:
    # A document signed by the (mock) NSM whose public_key is a low-order point: the
    # client raised a bare ValueError and stayed in AWAIT_ATTEST before the fix.
    pair = SessionPair(world)
    pair.to_enclave(pair.client.hello())
    hello = pair.enclave.next_event()
    assert hello is not None
    doc = world.nsm.get_attestation_doc(
        public_key=bytes(32), user_data=pair.enclave.binding.to_cbor(), nonce=pair.client.nonce
    )
    pair.to_client(pair.enclave.attest(doc, timestamp_ms=pair_now_ms()))
    with pytest.raises(CiphertextError, match=r"^attested public_key is not a usable X25519 key"):
        pair.client.next_event(now=pair_now())
    assert pair.client.state is ClientState.ERROR


def test_foreign_exception_inside_a_session_is_translated(
    world: MockWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The class, not the instance: whatever a library raises while a session handles
    # the peer's bytes leaves as our error with the session in ERROR.
    import ephemeralml.common._session as session_mod

    def boom(_: bytes) -> object:
        raise KeyError("surprise")

    monkeypatch.setattr(session_mod, "decode_message", boom)
    enclave = EnclaveSession(world.identity)
    enclave.receive_data(encode_frame(b"\xa0"))
    with pytest.raises(RemoteProtocolError) as info:
        enclave.next_event()
    assert str(info.value) == "client's frame could not be processed: KeyError: 'surprise'"
    assert enclave.state is EnclaveState.ERROR


def test_receipt_limit_errors_carry_the_check_id(world: MockWorld) -> None:
    # A LimitError (size, item count) is not a DecodeError: it escaped R1 untranslated.
    from ephemeralml.common._receipt import MAX_RECEIPT_BYTES

    pair = SessionPair(world)
    pair.handshake()
    assert pair.attested is not None
    big = b"\x00" * (MAX_RECEIPT_BYTES + 1)
    with pytest.raises(ReceiptError) as info:
        verify_receipt(big, pair.attested.attestation)
    assert str(info.value) == (
        f"R1 envelope: receipt is {MAX_RECEIPT_BYTES + 1} bytes; the limit is {MAX_RECEIPT_BYTES}"
    )
