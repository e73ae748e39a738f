"""The session state machines, driven in memory through a relay that can tamper."""

from __future__ import annotations

import hashlib

import pytest

from ephemeralml.common._cbor import decode_deterministic, encode
from ephemeralml.common._errors import (
    AttestationError,
    CiphertextError,
    DecodeError,
    Error,
    LimitError,
    LocalProtocolError,
    ReceiptError,
    RemoteError,
    RemoteProtocolError,
)
from ephemeralml.common._frame import encode_frame
from ephemeralml.common._messages import (
    ClientHello,
    EmbedRequest,
    ErrorFrame,
    SealedRequest,
)
from ephemeralml.common._session import (
    ClientSession,
    ClientState,
    EnclaveSession,
    EnclaveState,
    HelloReceived,
    RequestFailed,
    RequestReceived,
)
from tests.pair import MODEL, MockWorld, SessionPair, now


def _reframe(data: bytes, edit) -> bytes:  # type: ignore[no-untyped-def]
    """Decode one frame's map, edit it, re-encode it deterministically."""
    m = decode_deterministic(data[4:])
    edit(m)
    return encode_frame(encode(m))


def test_full_session_two_requests(world: MockWorld) -> None:
    p = SessionPair(world)
    att = p.handshake()
    assert att.binding.models == {MODEL: world.identity.models[MODEL]}
    assert att.attestation.document.nonce == p.client.nonce
    r0 = p.request(("a", "b"))
    r1 = p.request(("c",))
    assert (r0.seq, r1.seq) == (0, 1)
    assert r0.result.count == 2 and r1.result.count == 1
    rc = r1.receipt.receipt
    assert rc.session_id == p.enclave.session_id
    assert rc.client_nonce == p.client.nonce
    assert rc.transcript_hash == p.client.transcript_hash == p.enclave.transcript_hash
    assert rc.request_hash == hashlib.sha256(EmbedRequest(MODEL, ("c",)).to_cbor()).digest()
    assert rc.response_hash == hashlib.sha256(r1.result.to_cbor()).digest()
    assert rc.policy_version == 7 and rc.mode == "mock"


def test_second_session_has_new_nonce_key_and_id(world: MockWorld) -> None:
    a, b = SessionPair(world), SessionPair(world)
    da = a.handshake().attestation.document
    db = b.handshake().attestation.document
    assert da.nonce != db.nonce
    assert da.public_key != db.public_key
    assert a.enclave.session_id != b.enclave.session_id
    assert a.client.transcript_hash != b.client.transcript_hash


def test_responses_may_arrive_out_of_order(world: MockWorld) -> None:
    p = SessionPair(world)
    p.handshake()
    frames = []
    for text in ("one", "two"):
        _, f = p.client.send_request(EmbedRequest(MODEL, (text,)))
        frames.append(f)
    events = []
    for f in frames:
        p.to_enclave(f)
        ev = p.enclave.next_event()
        assert isinstance(ev, RequestReceived)
        events.append(ev)
    for ev in reversed(events):
        p.to_client(p.answer(ev))
        out = p.client.next_event(now=now())
        assert out is not None and out.seq == ev.seq  # type: ignore[union-attr]


def test_attestation_for_another_nonce_is_rejected(world: MockWorld) -> None:
    """A relay that answers with a document made for another session (replay)."""
    other = SessionPair(world)
    other.to_enclave(other.client.hello())
    other.enclave.next_event()
    p = SessionPair(world)
    p.to_enclave(p.client.hello())
    p.enclave.next_event()
    stale = world.nsm.get_attestation_doc(
        public_key=other.enclave.public_key,
        user_data=other.enclave.binding.to_cbor(),
        nonce=other.client.nonce,
    )
    p.to_client(p.enclave.attest(stale, timestamp_ms=0))
    with pytest.raises(AttestationError, match=r"^A7 nonce"):
        p.client.next_event(now=now())
    assert p.client.state is ClientState.ERROR
    with pytest.raises(LocalProtocolError):
        p.client.next_event(now=now())


def test_swapped_public_key_cannot_open(world: MockWorld) -> None:
    """The host cannot substitute its own key: the key is inside the signed document."""
    p = SessionPair(world)
    p.to_enclave(p.client.hello())
    hello = p.enclave.next_event()
    assert isinstance(hello, HelloReceived)
    attacker = EnclaveSession(world.identity)
    doc = world.nsm.get_attestation_doc(
        public_key=attacker.public_key, user_data=p.enclave.binding.to_cbor(), nonce=hello.nonce
    )
    p.to_client(p.enclave.attest(doc, timestamp_ms=0))
    p.client.next_event(now=now())  # verifies: the document itself is genuine
    p.to_enclave(p.client.data_to_send())
    _, frame = p.client.send_request(EmbedRequest(MODEL, ("x",)))
    p.to_enclave(frame)
    with pytest.raises(CiphertextError, match="request 0 failed authentication"):
        p.enclave.next_event()
    assert p.enclave.state is EnclaveState.ERROR


def test_replayed_request_is_rejected(world: MockWorld) -> None:
    p = SessionPair(world)
    p.handshake()
    _, frame = p.client.send_request(EmbedRequest(MODEL, ("x",)))
    p.to_enclave(frame)
    assert isinstance(p.enclave.next_event(), RequestReceived)
    p.to_enclave(frame)
    with pytest.raises(CiphertextError, match=r"request 0 out of order \(expected 1\)"):
        p.enclave.next_event()


def test_reordered_requests_are_rejected(world: MockWorld) -> None:
    p = SessionPair(world)
    p.handshake()
    _, _f0 = p.client.send_request(EmbedRequest(MODEL, ("x",)))
    _, f1 = p.client.send_request(EmbedRequest(MODEL, ("y",)))
    p.to_enclave(f1)
    with pytest.raises(CiphertextError, match=r"request 1 out of order \(expected 0\)"):
        p.enclave.next_event()


def test_request_with_relabelled_seq_fails_authentication(world: MockWorld) -> None:
    p = SessionPair(world)
    p.handshake()
    _, _f0 = p.client.send_request(EmbedRequest(MODEL, ("x",)))
    _, f1 = p.client.send_request(EmbedRequest(MODEL, ("y",)))

    def relabel(m):  # type: ignore[no-untyped-def]
        m["seq"] = 0

    p.to_enclave(_reframe(f1, relabel))
    with pytest.raises(CiphertextError, match="request 0 failed authentication"):
        p.enclave.next_event()


def test_replayed_response_is_rejected(world: MockWorld) -> None:
    p = SessionPair(world)
    p.handshake()
    _, frame = p.client.send_request(EmbedRequest(MODEL, ("x",)))
    p.to_enclave(frame)
    ev = p.enclave.next_event()
    assert isinstance(ev, RequestReceived)
    resp = p.answer(ev)
    p.to_client(resp)
    p.client.next_event(now=now())
    p.to_client(resp)
    with pytest.raises(CiphertextError, match=r"response 0 answers no request in flight"):
        p.client.next_event(now=now())


def test_response_from_another_session_is_rejected(world: MockWorld) -> None:
    a, b = SessionPair(world), SessionPair(world)
    a.handshake()
    b.handshake()
    _, _fa = a.client.send_request(EmbedRequest(MODEL, ("x",)))
    _, fb = b.client.send_request(EmbedRequest(MODEL, ("x",)))
    b.to_enclave(fb)
    ev = b.enclave.next_event()
    assert isinstance(ev, RequestReceived)
    a.to_client(b.answer(ev))
    with pytest.raises(CiphertextError, match="response 0 failed authentication"):
        a.client.next_event(now=now())


@pytest.mark.parametrize("direction", ["up", "down"])
def test_every_single_bit_flip_is_detected(world: MockWorld, direction: str) -> None:
    """Flip each bit position class of every frame in one direction: the session fails."""
    # One clean run to learn the stream length in this direction.
    seen = bytearray()

    def record(d: str, data: bytes) -> bytes:
        if d == direction:
            seen.extend(data)
        return data

    clean = SessionPair(world, tamper=record)
    clean.handshake()
    clean.request(("bit flips",))
    total = len(seen)
    # Every byte offset, one bit each (the bit varies with the offset).
    for offset in range(0, total, max(1, total // 300)):
        pos = 0

        def flip(d: str, data: bytes, offset: int = offset) -> bytes:
            nonlocal pos
            if d != direction:
                return data
            start, pos = pos, pos + len(data)
            if start <= offset < pos:
                b = bytearray(data)
                b[offset - start] ^= 1 << (offset % 8)
                return bytes(b)
            return data

        p = SessionPair(world, tamper=flip)
        with pytest.raises(Error) as info:
            p.handshake()
            p.request(("bit flips",))
        # Never a raw exception, and never a success.
        assert isinstance(info.value, Error), (offset, info.value)


def test_error_frame_from_enclave_raises_remote_error(world: MockWorld) -> None:
    p = SessionPair(world)
    p.to_enclave(p.client.hello())
    p.enclave.next_event()
    p.to_client(p.enclave.fail(LimitError("too big")))
    with pytest.raises(RemoteError, match="enclave reported limit: too big") as info:
        p.client.next_event(now=now())
    assert info.value.remote_code == "limit"


def test_enclave_refuses_wrong_version(world: MockWorld) -> None:
    e = EnclaveSession(world.identity)
    e.receive_data(encode_frame(ClientHello(2, b"n" * 32).to_cbor()))
    with pytest.raises(
        RemoteProtocolError, match="client speaks protocol 2; this enclave speaks 1"
    ):
        e.next_event()


def test_enclave_refuses_request_before_hello(world: MockWorld) -> None:
    e = EnclaveSession(world.identity)
    e.receive_data(encode_frame(SealedRequest(0, b"x").to_cbor()))
    with pytest.raises(RemoteProtocolError, match="unexpected SealedRequest in state await_hello"):
        e.next_event()


def test_non_deterministic_frame_is_rejected(world: MockWorld) -> None:
    e = EnclaveSession(world.identity)
    # {"v":1, "t":"hello", ...} in non-canonical key order.
    import cbor2

    body = cbor2.dumps({"v": 1, "t": "hello", "nonce": b"n" * 32, "mode": "fresh"})
    e.receive_data(encode_frame(body))
    with pytest.raises(DecodeError, match=r"frame is not deterministically encoded"):
        e.next_event()


def test_request_for_an_unattested_model_still_goes_to_the_enclave(world: MockWorld) -> None:
    p = SessionPair(world)
    p.handshake()
    _, frame = p.client.send_request(EmbedRequest("nope", ("x",)))
    p.to_enclave(frame)
    ev = p.enclave.next_event()
    assert isinstance(ev, RequestReceived) and ev.request is not None
    assert ev.request.model == "nope"


def test_bad_request_body_gets_sealed_error_and_session_goes_on(world: MockWorld) -> None:
    p = SessionPair(world)
    p.handshake()
    # Seal a body that authenticates but is not a request (as a buggy client would).
    channel = p.client._channel
    assert channel is not None
    aad = encode({"t": "req", "sid": p.enclave.session_id, "seq": 0})
    ct = channel.seal_request(0, encode({"op": "train"}), aad)
    p.client._next_seq = 1
    p.client._pending[0] = (EmbedRequest(MODEL, ("x",)), b"")
    p.to_enclave(encode_frame(SealedRequest(0, ct).to_cbor()))
    ev = p.enclave.next_event()
    assert isinstance(ev, RequestReceived) and ev.request is None
    assert ev.error is not None and ev.error.message.startswith(
        "bad request: request has unexpected"
    )
    p.to_client(p.enclave.respond_error(ev, ev.error))
    failed = p.client.next_event(now=now())
    assert isinstance(failed, RequestFailed)
    assert (failed.seq, failed.code) == (0, "inference")
    assert p.request(("still works",)).seq == 1


def test_local_misuse_raises_local_protocol_error(world: MockWorld) -> None:
    c = ClientSession(world.policy)
    with pytest.raises(LocalProtocolError, match="cannot do that in state start"):
        c.send_request(EmbedRequest(MODEL, ("x",)))
    c.hello()
    with pytest.raises(LocalProtocolError, match="cannot do that in state await_attest"):
        c.hello()


def test_error_frame_is_one_bounded_line() -> None:
    e = ErrorFrame("x" * 100, "line one\nline two " + "y" * 1000)
    assert "\n" not in e.message and len(e.message) == 300 and len(e.code) == 40


def test_receipt_tampered_inside_enclave_output_is_rejected(world: MockWorld) -> None:
    """An enclave bug that signs the wrong response hash is caught by the client (R11)."""
    p = SessionPair(world)
    p.handshake()
    _, frame = p.client.send_request(EmbedRequest(MODEL, ("x",)))
    p.to_enclave(frame)
    ev = p.enclave.next_event()
    assert isinstance(ev, RequestReceived)
    wrong = RequestReceived(ev.seq, ev.request, hashlib.sha256(b"other").digest())
    p.to_client(p.answer(wrong))
    with pytest.raises(ReceiptError, match=r"^R11 request: request_hash does not match"):
        p.client.next_event(now=now())


def test_enclave_refuses_to_answer_in_a_session_past_its_lifetime(world: MockWorld) -> None:
    from ephemeralml.common._receipt import MAX_SESSION_S
    from tests.pair import MODEL_DIGEST, fake_result

    p = SessionPair(world)
    p.handshake()
    _, frame = p.client.send_request(EmbedRequest(MODEL, ("x",)))
    p.to_enclave(frame)
    ev = p.enclave.next_event()
    assert isinstance(ev, RequestReceived) and ev.request is not None
    assert p.enclave.attestation_time_ms is not None
    late = p.enclave.attestation_time_ms + MAX_SESSION_S * 1000 + 1
    with pytest.raises(LocalProtocolError, match="session is older than its maximum lifetime"):
        p.enclave.respond(ev, fake_result(ev.request), model_digest=MODEL_DIGEST, time_ms=late, duration_us=1)


# ---------------------------------------------------------------- cached mode (§2.2.1)


def test_cached_mode_sessions_share_a_document_not_keys(world: MockWorld) -> None:
    a, b = SessionPair(world, mode="cached"), SessionPair(world, mode="cached")
    da = a.handshake().attestation.document
    db = b.handshake().attestation.document
    assert da.raw == db.raw and da.nonce is None and da.public_key is None
    assert a.client.session_id != b.client.session_id
    ra, rb = a.request(("x",)), b.request(("y",))
    assert ra.receipt.receipt.session_id == a.enclave.session_id
    assert rb.receipt.receipt.client_nonce == b.client.nonce
    assert a.client.transcript_hash != b.client.transcript_hash


def test_cached_proof_for_another_nonce_is_rejected(world: MockWorld) -> None:
    from ephemeralml.common._proof import SessionProof

    p = SessionPair(world, mode="cached")
    p.to_enclave(p.client.hello())
    p.enclave.next_event()
    doc = world.cached_doc()
    digest = hashlib.sha256(doc).digest()
    stale = SessionProof(b"\x07" * 32, p.enclave.public_key, b"\x01" * 16, digest)
    from ephemeralml.common._messages import ServerAttest

    frame = encode_frame(ServerAttest(1, doc, stale.sign(world.identity.receipt_key)).to_cbor())
    p.to_client(frame)
    with pytest.raises(AttestationError, match=r"^A11 proof: nonce does not match the challenge$"):
        p.client.next_event(now=now())


def test_cached_proof_signed_by_another_key_is_rejected(world: MockWorld) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ephemeralml.common._messages import ServerAttest
    from ephemeralml.common._proof import SessionProof

    p = SessionPair(world, mode="cached")
    p.to_enclave(p.client.hello())
    p.enclave.next_event()
    doc = world.cached_doc()
    proof = SessionProof(p.client.nonce, p.enclave.public_key, b"\x01" * 16, hashlib.sha256(doc).digest())
    p.to_client(encode_frame(ServerAttest(1, doc, proof.sign(Ed25519PrivateKey.generate())).to_cbor()))
    with pytest.raises(AttestationError, match=r"^A11 proof: not signed by the attested receipt key$"):
        p.client.next_event(now=now())


def test_cached_proof_for_another_document_is_rejected(world: MockWorld) -> None:
    from ephemeralml.common._messages import ServerAttest
    from ephemeralml.common._proof import SessionProof

    p = SessionPair(world, mode="cached")
    p.to_enclave(p.client.hello())
    p.enclave.next_event()
    doc = world.cached_doc()
    proof = SessionProof(p.client.nonce, p.enclave.public_key, b"\x01" * 16, b"\x02" * 32)
    p.to_client(encode_frame(ServerAttest(1, doc, proof.sign(world.identity.receipt_key)).to_cbor()))
    with pytest.raises(AttestationError, match=r"^A11 proof: kid must be the document's hash$"):
        p.client.next_event(now=now())


def test_fresh_client_refuses_a_cached_answer(world: MockWorld) -> None:
    p = SessionPair(world)  # the client asked for fresh
    p.to_enclave(p.client.hello())
    p.enclave.next_event()
    doc = world.cached_doc()
    p.to_client(p.enclave.attest_cached(doc, timestamp_ms=0))
    with pytest.raises(AttestationError, match=r"^A7 nonce"):
        p.client.next_event(now=now())
