"""Streamed answers in the session state machines (protocol.md §2.8, checks S1-S4),
driven in memory through a relay that drops, repeats, reorders and alters chunks."""

from __future__ import annotations

import hashlib

import pytest

from ephemeralml.common._cbor import decode_deterministic, encode
from ephemeralml.common._errors import (
    CiphertextError,
    LimitError,
    LocalProtocolError,
    RemoteProtocolError,
)
from ephemeralml.common._frame import encode_frame
from ephemeralml.common._messages import (
    MAX_MESSAGES,
    MAX_PROMPT_BYTES,
    CancelRequest,
    ChatMessage,
    EmbedRequest,
    GenerateRequest,
    GenerateResult,
    decode_chunk_body,
    decode_request,
    encode_chunk_body,
)
from ephemeralml.common._session import (
    CancelReceived,
    ChunkReceived,
    ClientState,
    RequestFailed,
    RequestReceived,
    StreamEnded,
    chunk_link,
)
from tests.pair import MODEL, MODEL_DIGEST, MockWorld, SessionPair, now, now_ms

CHAT = GenerateRequest(MODEL, 16, messages=(ChatMessage("user", "hello"),))
PIECES = ("The", " capital", " is", " Paris", ".")


def _open(p: SessionPair, request: GenerateRequest = CHAT) -> RequestReceived:
    p.handshake()
    _, frame = p.client.send_request(request)
    p.to_enclave(frame)
    ev = p.enclave.next_event()
    assert isinstance(ev, RequestReceived) and ev.request == request
    return ev


def _end(p: SessionPair, ev: RequestReceived, finish: str = "stop") -> bytes:
    return p.enclave.end_stream(
        ev,
        model_digest=MODEL_DIGEST,
        finish=finish,
        prompt_tokens=7,
        completion_tokens=len(PIECES) + 1,
        device="CPUExecutionProvider",
        time_ms=now_ms(),
        duration_us=456,
    )


def _receive(p: SessionPair, frame: bytes) -> object:
    p.to_client(frame)
    return p.client.next_event(now=now())


def test_a_stream_arrives_in_order_and_its_receipt_covers_every_chunk(world: MockWorld) -> None:
    p = SessionPair(world)
    ev = _open(p)
    got = [_receive(p, p.enclave.chunk(ev, text)) for text in PIECES]
    assert got == [ChunkReceived(0, k, text) for k, text in enumerate(PIECES)]
    end = _receive(p, _end(p, ev))
    assert isinstance(end, StreamEnded)
    # The rule of §2.8: SHA-256 over u32be(len) ‖ plaintext of every chunk, in order.
    expected = hashlib.sha256(
        b"".join(chunk_link(encode_chunk_body(t)) for t in PIECES)
    ).digest()
    assert end.result == GenerateResult(
        MODEL, "stop", len(PIECES), expected, 7, len(PIECES) + 1, "CPUExecutionProvider"
    )
    receipt = end.receipt.receipt
    assert receipt.response_hash == hashlib.sha256(end.result.to_cbor()).digest()
    assert receipt.request_hash == hashlib.sha256(CHAT.to_cbor()).digest()
    assert (receipt.seq, receipt.model_id, receipt.truncate, receipt.truncated) == (
        0,
        MODEL,
        False,
        (),
    )
    assert p.client.in_flight == 0
    # The session goes on: an embedding after the stream.
    assert p.request(("after",)).seq == 1


def test_the_link_is_the_length_then_the_bytes() -> None:
    body = encode({"text": "hi"})
    assert chunk_link(body) == b"\x00\x00\x00\x09" + bytes.fromhex("a164746578746268 69".replace(" ", ""))


def test_a_stream_with_no_chunks_ends_with_the_hash_of_nothing(world: MockWorld) -> None:
    p = SessionPair(world)
    ev = _open(p)
    end = _receive(p, _end(p, ev, "length"))
    assert isinstance(end, StreamEnded)
    assert end.result.chunks == 0 and end.result.stream == hashlib.sha256(b"").digest()


def _run_with(p: SessionPair, order: list[int]) -> list[bytes]:
    """Seal PIECES, then deliver the frames in ``order`` (indices may repeat or be
    missing); returns the frames as sealed."""
    ev = _open(p)
    frames = [p.enclave.chunk(ev, t) for t in PIECES]
    for i in order:
        _receive(p, frames[i])
    return frames


@pytest.mark.parametrize(
    ("order", "bad_k", "expected_k"),
    [([0, 2], 2, 1), ([0, 1, 1], 1, 2), ([1], 1, 0), ([0, 2, 1], 2, 1)],
    ids=["dropped", "repeated", "first-dropped", "reordered"],
)
def test_a_dropped_repeated_or_reordered_chunk_ends_the_session_s1(
    world: MockWorld, order: list[int], bad_k: int, expected_k: int
) -> None:
    p = SessionPair(world)
    with pytest.raises(CiphertextError) as info:
        _run_with(p, order)
    assert info.value.message == (
        f"S1 chunk {bad_k} of answer 0 out of order: expected chunk {expected_k}"
        " (dropped, repeated or reordered)"
    )
    assert p.client.state is ClientState.ERROR


def test_a_renumbered_chunk_does_not_open_s2(world: MockWorld) -> None:
    """A relay that drops chunk 1 and renumbers chunk 2 as 1: the number is in the
    nonce and the aad, so it fails authentication."""
    p = SessionPair(world)
    ev = _open(p)
    frames = [p.enclave.chunk(ev, t) for t in PIECES]
    _receive(p, frames[0])
    m = decode_deterministic(frames[2][4:])
    m["k"] = 1
    with pytest.raises(CiphertextError, match="^S2 chunk 1 of answer 0 failed authentication$"):
        _receive(p, encode_frame(encode(m)))


@pytest.mark.parametrize("where", ["ciphertext", "seq"])
def test_an_altered_chunk_does_not_open_s2(world: MockWorld, where: str) -> None:
    p = SessionPair(world)
    p.handshake()
    # Two streams in flight, so that a chunk moved to the other one has a place there.
    _, f0 = p.client.send_request(CHAT)
    _, f1 = p.client.send_request(CHAT)
    p.to_enclave(f0 + f1)
    ev0 = p.enclave.next_event()
    assert isinstance(ev0, RequestReceived)
    frame = p.enclave.chunk(ev0, "secret")
    m = decode_deterministic(frame[4:])
    if where == "ciphertext":
        m["ct"] = bytes([m["ct"][0] ^ 1]) + m["ct"][1:]
        expected = "S2 chunk 0 of answer 0 failed authentication"
    else:
        m["seq"] = 1
        expected = "S2 chunk 0 of answer 1 failed authentication"
    with pytest.raises(CiphertextError) as info:
        _receive(p, encode_frame(encode(m)))
    assert info.value.message == expected


def test_a_chunk_for_no_stream_is_refused_s1(world: MockWorld) -> None:
    p = SessionPair(world)
    p.handshake()
    _, frame = p.client.send_request(EmbedRequest(MODEL, ("x",)))
    p.to_enclave(frame)
    ev = p.enclave.next_event()
    assert isinstance(ev, RequestReceived)
    with pytest.raises(LocalProtocolError, match="^request 0 is no stream in progress$"):
        p.enclave.chunk(ev, "x")
    forged = encode_frame(encode({"t": "chunk", "seq": 0, "k": 0, "ct": bytes(32)}))
    with pytest.raises(CiphertextError, match="^S1 chunk for answer 0, which is no stream"):
        _receive(p, forged)


def test_a_last_chunk_dropped_is_caught_at_the_end_s3(world: MockWorld) -> None:
    p = SessionPair(world)
    frames = _run_with(p, [0, 1, 2, 3])  # chunk 4 never arrives
    assert len(frames) == 5
    ev_end = _end(p, p_event(p))
    with pytest.raises(CiphertextError) as info:
        _receive(p, ev_end)
    assert info.value.message == (
        "S3 the end of answer 0 covers 5 chunk(s); 4 arrived, or not the same (dropped or altered)"
    )


def p_event(p: SessionPair) -> RequestReceived:
    """The enclave's event for request 0 (kept by the session's pending set)."""
    return RequestReceived(0, CHAT, hashlib.sha256(CHAT.to_cbor()).digest())


def test_an_end_before_any_chunk_arrived_is_caught_s3(world: MockWorld) -> None:
    p = SessionPair(world)
    ev = _open(p)
    p.enclave.chunk(ev, "lost")
    with pytest.raises(CiphertextError, match=r"^S3 the end of answer 0 covers 1 chunk\(s\); 0"):
        _receive(p, _end(p, ev))


def test_a_cancel_is_sealed_in_order_and_has_no_answer(world: MockWorld) -> None:
    p = SessionPair(world)
    ev = _open(p)
    first = _receive(p, p.enclave.chunk(ev, "one"))
    assert first == ChunkReceived(0, 0, "one")
    p.to_enclave(p.client.cancel(0))
    assert p.enclave.next_event() == CancelReceived(1, 0)
    end = _receive(p, _end(p, ev, "cancelled"))
    assert isinstance(end, StreamEnded) and end.result.finish == "cancelled"
    assert end.result.chunks == 1
    # The cancel took seq 1; the next request is 2 and is answered.
    assert p.request(("next",)).seq == 2
    with pytest.raises(LocalProtocolError, match="^request 0 is no stream in flight$"):
        p.client.cancel(0)


def test_a_refused_stream_ends_with_a_sealed_error(world: MockWorld) -> None:
    from ephemeralml.common._errors import InferenceError

    p = SessionPair(world)
    ev = _open(p)
    _receive(p, p.enclave.chunk(ev, "partial"))
    out = _receive(p, p.enclave.respond_error(ev, InferenceError("the model failed to run")))
    assert out == RequestFailed(0, "inference", "the model failed to run")
    with pytest.raises(LocalProtocolError):
        p.enclave.chunk(ev, "more")


def test_an_end_signed_for_other_chunks_does_not_verify(world: MockWorld) -> None:
    """The enclave's end covers what it sealed: an end with another stream hash (as a
    host splicing two streams would need) fails S3 before the receipt is looked at."""
    p = SessionPair(world)
    ev = _open(p)
    _receive(p, p.enclave.chunk(ev, "a"))
    p.enclave._streams[0].hash.update(b"x")  # the enclave's own account differs
    with pytest.raises(CiphertextError, match="^S3 the end of answer 0 covers 1 chunk"):
        _receive(p, _end(p, ev))


# ---------------------------------------------------------------- request bodies


def test_generate_request_bytes_and_one_encoding() -> None:
    r = GenerateRequest(MODEL, 8, prompt="hi", temperature=0.5, seed=1, stop=("\n",))
    assert r.to_map() == {
        "op": "generate",
        "model": MODEL,
        "max_tokens": 8,
        "prompt": "hi",
        "temperature": 0.5,
        "seed": 1,
        "stop": ["\n"],
    }
    assert decode_request(r.to_cbor()) == r
    # Defaults are left out; present with their default value they are refused.
    for key, value in (("temperature", 0.0), ("top_p", 1.0), ("top_k", 0), ("stop", [])):
        m = {**GenerateRequest(MODEL, 8, prompt="hi").to_map(), key: value}
        with pytest.raises(RemoteProtocolError, match="carries a default value"):
            decode_request(encode(m))
    # An integer where a float is meant is another encoding: refused.
    with pytest.raises(RemoteProtocolError, match="'temperature' is not float"):
        decode_request(encode({**r.to_map(), "temperature": 1}))


@pytest.mark.parametrize(
    ("edit", "error", "message"),
    [
        (lambda m: m.pop("max_tokens"), RemoteProtocolError, "lacks ['max_tokens']"),
        (lambda m: m.update(prompt="x"), RemoteProtocolError, "unexpected fields ['prompt']"),
        (lambda m: m.update(messages=[]), RemoteProtocolError, "a chat needs at least one message"),
        (
            lambda m: m.update(messages=[{"role": "tool", "content": "x"}]),
            RemoteProtocolError,
            "message role 'tool' is not one of ['assistant', 'system', 'user']",
        ),
        (
            lambda m: m.update(messages=[{"role": "user"}]),
            RemoteProtocolError,
            "message 0 has unexpected fields [] or lacks ['content']",
        ),
        (
            lambda m: m.update(messages=[{"role": "user", "content": "x"}] * (MAX_MESSAGES + 1)),
            LimitError,
            f"{MAX_MESSAGES + 1} messages; the limit is {MAX_MESSAGES}",
        ),
        (
            lambda m: m.update(messages=[{"role": "user", "content": "x" * (MAX_PROMPT_BYTES + 1)}]),
            LimitError,
            f"the prompt is {MAX_PROMPT_BYTES + 1} bytes; the limit is {MAX_PROMPT_BYTES}",
        ),
    ],
    ids=["no-max-tokens", "both", "empty-chat", "role", "content", "messages", "bytes"],
)
def test_bad_generate_requests_are_refused(edit, error, message) -> None:  # type: ignore[no-untyped-def]
    m = CHAT.to_map()
    edit(m)
    with pytest.raises(error) as info:
        decode_request(encode(m))
    assert message in info.value.message


def test_a_bad_generate_body_is_a_sealed_refusal_and_the_session_goes_on(
    world: MockWorld,
) -> None:
    p = SessionPair(world)
    p.handshake()
    _, frame = p.client.send_request(EmbedRequest(MODEL, ("x",)))
    # Re-seal a bad body under the client's own context, as a buggy client would.
    bad = encode({"op": "generate", "model": MODEL, "max_tokens": 1})
    _, bad_frame, _ = p.client._seal(bad)
    p.to_enclave(frame + bad_frame)
    assert isinstance(p.enclave.next_event(), RequestReceived)
    ev = p.enclave.next_event()
    assert isinstance(ev, RequestReceived) and ev.request is None and ev.error is not None
    assert ev.error.message.startswith("bad request: generate request has unexpected fields")


def test_cancel_body() -> None:
    assert CancelRequest(3).to_cbor() == encode({"op": "cancel", "seq": 3})
    assert decode_request(CancelRequest(3).to_cbor()) == CancelRequest(3)
    with pytest.raises(RemoteProtocolError, match="cancel request seq is negative"):
        decode_request(encode({"op": "cancel", "seq": -1}))


@pytest.mark.parametrize("text", ["a", "x" * 20, "\u00e9" * 30, "y" * 62, "z" * 300])
def test_chunks_are_padded_so_their_size_hides_the_token_length(text: str) -> None:
    body = encode_chunk_body(text)
    assert len(body) % 64 == 0 and len(body) - len(encode({"text": text})) < 64 + 6
    assert decode_chunk_body(body) == text
    m = decode_deterministic(body)
    assert set(m) == {"pad", "text"} and m["pad"] == bytes(len(m["pad"]))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (encode({"text": "a"}), "chunk is not padded to a multiple of 64 bytes"),
        (encode({"pad": bytes(51), "txt": "a"}), "chunk has unexpected fields ['txt']"),
        (encode({"pad": bytes(50 + 64), "text": "a"}), "chunk padding is not the shortest"),
        (encode({"pad": b"\x01" + bytes(49), "text": "a"}), "chunk padding is not the shortest"),
    ],
    ids=["unpadded", "other-key", "longer", "not-zero"],
)
def test_a_chunk_padded_another_way_is_refused(body: bytes, message: str) -> None:
    # The shortest padding of "a": 50 zero bytes, 14 + 50 = 64 (a 2-byte head from 24 bytes).
    assert encode_chunk_body("a") == encode({"pad": bytes(50), "text": "a"})
    with pytest.raises(RemoteProtocolError) as info:
        decode_chunk_body(body)
    assert info.value.message.startswith(message)
