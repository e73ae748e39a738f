"""Property tests of the streamed-answer bodies (protocol.md §2.8): generate and
cancel requests, chunk plaintexts and stream results parse back to what was encoded,
in one encoding, and anything else (arbitrary bytes, mutated valid bodies) raises
only our errors."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ephemeralml.common._cbor import decode_deterministic, encode
from ephemeralml.common._messages import (
    CHAT_ROLES,
    CHUNK_PAD_BYTES,
    CancelRequest,
    ChatMessage,
    GenerateRequest,
    GenerateResult,
    decode_chunk_body,
    decode_request,
    encode_chunk_body,
)
from tests.fuzz import targets
from tests.property.strategies import apply_mutations, mutation_ops

_text = st.text(max_size=40)
_floats = st.floats(min_value=0.0, max_value=4.0, allow_nan=False)
_messages = st.lists(
    st.builds(ChatMessage, st.sampled_from(sorted(CHAT_ROLES)), _text), min_size=1, max_size=4
).map(tuple)


@st.composite
def generate_requests(draw: st.DrawFn) -> GenerateRequest:
    chat = draw(st.booleans())
    return GenerateRequest(
        model=draw(_text),
        max_tokens=draw(st.integers(-5, 2**40)),
        messages=draw(_messages) if chat else None,
        prompt=None if chat else draw(_text),
        temperature=draw(_floats),
        top_p=draw(_floats),
        top_k=draw(st.integers(0, 2**20)),
        seed=draw(st.none() | st.integers(0, 2**64 - 1)),
        stop=tuple(draw(st.lists(_text, max_size=5))),
    )


@given(generate_requests())
def test_a_generate_request_round_trips_in_one_encoding(r: GenerateRequest) -> None:
    body = r.to_cbor()
    back = decode_request(body)
    assert back == r and back.to_cbor() == body
    # Defaults are never on the wire (one encoding), whatever the values.
    m = decode_deterministic(body)
    assert ("temperature" in m) == (r.temperature != 0.0)
    assert ("stop" in m) == bool(r.stop)


@given(st.integers(0, 2**63))
def test_a_cancel_round_trips(seq: int) -> None:
    assert decode_request(CancelRequest(seq).to_cbor()) == CancelRequest(seq)


@given(st.text(min_size=1, max_size=300))
def test_a_chunk_round_trips_padded(text: str) -> None:
    body = encode_chunk_body(text)
    assert len(body) % CHUNK_PAD_BYTES == 0
    # The shortest run that fits: under two pad units (a head growing at 24 bytes can
    # push one length past a multiple, and the next one is taken).
    assert len(body) - len(encode({"pad": b"", "text": text})) < 2 * CHUNK_PAD_BYTES
    assert decode_chunk_body(body) == text


@given(generate_requests(), mutation_ops)
def test_a_mutated_generate_request_raises_only_our_errors(r: GenerateRequest, ops) -> None:  # type: ignore[no-untyped-def]
    body = apply_mutations(r.to_cbor(), ops)
    back = targets.errors_only(lambda: decode_request(body))
    if back is not None:  # what parses is in its one encoding
        assert back.to_cbor() == body


@given(st.text(min_size=1, max_size=80), mutation_ops)
def test_a_mutated_chunk_raises_only_our_errors(text: str, ops) -> None:  # type: ignore[no-untyped-def]
    body = apply_mutations(encode_chunk_body(text), ops)
    back = targets.errors_only(lambda: decode_chunk_body(body))
    if back is not None:
        assert encode_chunk_body(back) == body


@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_our_errors(data: bytes) -> None:
    targets.errors_only(lambda: decode_request(data))
    targets.errors_only(lambda: decode_chunk_body(data))
    targets.errors_only(lambda: GenerateResult.from_map(decode_deterministic(data)))
