"""Property tests of framing (protocol.md §1.1) and message parsing (§2)."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ephemeralml.common._cbor import encode
from ephemeralml.common._errors import Error, LimitError, RemoteProtocolError
from ephemeralml.common._frame import MAX_FRAME_BYTES, FrameDecoder, encode_frame
from ephemeralml.common._messages import (
    MAX_ERROR_MESSAGE_CHARS,
    ClientHello,
    EmbedRequest,
    EmbedResult,
    ErrorFrame,
    Message,
    RequestError,
    SealedRequest,
    SealedResponse,
    ServerAttest,
    SessionOpen,
    decode_message,
    decode_response_body,
    encode_response_body,
)
from tests.fuzz import targets
from tests.property.strategies import apply_mutations, mutation_ops

_uint = st.integers(0, 2**63)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        ClientHello,
        _uint,
        st.binary(min_size=32, max_size=32),
        st.sampled_from(["fresh", "cached"]),
    ),
    st.builds(ServerAttest, _uint, st.binary(max_size=64), st.none() | st.binary(max_size=64)),
    st.builds(SessionOpen, st.binary(min_size=32, max_size=32)),
    st.builds(SealedRequest, _uint, st.binary(max_size=64)),
    st.builds(SealedResponse, _uint, st.binary(max_size=64)),
    st.builds(ErrorFrame, st.text(max_size=40), st.text(max_size=20)),
)


@given(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=6), st.data())
def test_any_chunking_gives_the_same_frames(bodies: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(b) for b in bodies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    dec, got = FrameDecoder(), []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        dec.receive_data(stream[a:b])
        while (f := dec.next_frame()) is not None:
            got.append(f)
    assert got == bodies
    assert dec.buffered == 0


@given(st.integers(1, 2**32 - 1), st.integers(1, 4096))
def test_a_length_over_the_limit_is_refused_before_its_body(n: int, limit: int) -> None:
    dec = FrameDecoder(max_bytes=limit)
    dec.receive_data(n.to_bytes(4, "big"))  # the length alone, no body
    if n > limit:
        with pytest.raises(LimitError) as e:
            dec.next_frame()
        assert str(e.value) == f"frame of {n} bytes is over the limit of {limit}"
    else:
        assert dec.next_frame() is None


def test_empty_frame_is_refused() -> None:
    dec = FrameDecoder()
    dec.receive_data(bytes(4))
    with pytest.raises(RemoteProtocolError) as e:
        dec.next_frame()
    assert str(e.value) == "empty frame"


@given(st.binary(max_size=600))
def test_frame_target_on_any_bytes(data: bytes) -> None:
    """The fuzz target's invariants: chunking-independent, only our errors."""
    targets.frame(data)


@given(messages)
def test_message_round_trip(msg: Message) -> None:
    data = msg.to_cbor()
    back = decode_message(data)
    assert back == msg
    assert back.to_cbor() == data
    assert len(encode_frame(data)) <= MAX_FRAME_BYTES


@given(messages, mutation_ops)
def test_a_mutated_message_is_refused_or_is_what_it_encodes(msg: Message, ops) -> None:  # type: ignore[no-untyped-def]
    data = apply_mutations(msg.to_cbor(), ops)
    try:
        back = decode_message(data)
    except Error as e:
        assert isinstance(e, RemoteProtocolError), repr(e)
        return
    assert back.to_cbor() == data


@given(st.text(max_size=20), st.lists(st.text(max_size=20), max_size=5), st.booleans())
def test_request_body_round_trip(model: str, inputs: list[str], truncate: bool) -> None:
    r = EmbedRequest(model, tuple(inputs), truncate)
    assert EmbedRequest.from_cbor(r.to_cbor()) == r
    # One encoding: the truncate key is there exactly when it is true.
    assert ("truncate" in cbor2.loads(r.to_cbor())) is truncate


def test_request_truncate_false_on_the_wire_is_refused() -> None:
    body = encode({"op": "embed", "model": "m", "inputs": ["a"], "truncate": False})
    with pytest.raises(RemoteProtocolError) as info:
        EmbedRequest.from_cbor(body)
    assert str(info.value) == "request truncate must be true when present"
    body = encode({"op": "embed", "model": "m", "inputs": ["a"], "cut": True})
    with pytest.raises(RemoteProtocolError) as info:
        EmbedRequest.from_cbor(body)
    assert str(info.value) == "request has unexpected fields ['cut'] or lacks []"


@given(
    st.text(max_size=10),
    st.integers(1, 8),
    st.integers(1, 8),
    st.binary(max_size=40),
    st.data(),
)
def test_response_body_round_trip(
    model: str, dim: int, n: int, receipt: bytes, data: st.DataObject
) -> None:
    vectors = data.draw(st.binary(min_size=dim * n * 4, max_size=dim * n * 4))
    result = EmbedResult(model, dim, n, vectors)
    assert decode_response_body(encode_response_body(result, receipt, None)) == (result, receipt)
    err = RequestError(
        data.draw(st.text(max_size=40)), data.draw(st.text(max_size=MAX_ERROR_MESSAGE_CHARS))
    )
    assert decode_response_body(encode_response_body(None, None, err)) == err
