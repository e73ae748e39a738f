"""Framing and deterministic CBOR (protocol.md §1)."""

from __future__ import annotations

import random

import cbor2
import pytest

from ephemeralml.common._cbor import MAX_CBOR_DEPTH, decode_deterministic, decode_strict, encode
from ephemeralml.common._errors import (
    DecodeError,
    LimitError,
    LocalProtocolError,
    RemoteProtocolError,
)
from ephemeralml.common._frame import MAX_FRAME_BYTES, FrameDecoder, encode_frame


def test_frames_reassemble_from_any_chunking() -> None:
    rng = random.Random(7)
    bodies = [rng.randbytes(rng.randint(1, 5000)) for _ in range(50)]
    stream = b"".join(encode_frame(b) for b in bodies)
    d = FrameDecoder()
    out = []
    i = 0
    while i < len(stream):
        n = rng.randint(1, 700)
        d.receive_data(stream[i : i + n])
        i += n
        while (f := d.next_frame()) is not None:
            out.append(f)
    assert out == bodies
    assert d.buffered == 0


def test_frame_layout_is_big_endian_length_then_body() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"


def test_oversized_frame_rejected_from_its_header_alone() -> None:
    d = FrameDecoder()
    d.receive_data((MAX_FRAME_BYTES + 1).to_bytes(4, "big"))
    with pytest.raises(LimitError, match=f"frame of {MAX_FRAME_BYTES + 1} bytes is over the limit of {MAX_FRAME_BYTES}"):
        d.next_frame()


def test_empty_frame_rejected() -> None:
    d = FrameDecoder()
    d.receive_data(b"\x00\x00\x00\x00")
    with pytest.raises(RemoteProtocolError, match="empty frame"):
        d.next_frame()


def test_refuses_to_build_oversized_or_empty_frames() -> None:
    with pytest.raises(LocalProtocolError, match="is over the limit"):
        encode_frame(b"x" * 11, max_bytes=10)
    with pytest.raises(LocalProtocolError, match="empty frame"):
        encode_frame(b"")


def test_encode_is_rfc8949_core_deterministic() -> None:
    # Keys sorted by their encodings: 1 (0x01), "a" (0x6161), "bb" (0x626262).
    assert encode({"bb": 1, "a": 2, 1: 3}).hex() == "a3010361610262626201"
    assert encode(1000000) == bytes.fromhex("1a000f4240")


@pytest.mark.parametrize(
    ("hexdata", "message"),
    [
        ("a2616202616101", "not deterministically encoded"),  # keys out of order
        ("1817", "not deterministically encoded"),  # 23 in a 2-byte head
        ("9f01ff", "not well-formed CBOR"),  # indefinite array
        ("a2616101616102", "not well-formed CBOR"),  # duplicate key
        ("0101", "1 trailing bytes"),
        ("1a00", "not well-formed CBOR"),  # truncated
        ("", "is empty"),
    ],
)
def test_decode_deterministic_rejects(hexdata: str, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_deterministic(bytes.fromhex(hexdata))


def test_depth_is_bounded() -> None:
    deep = b"\x81" * (MAX_CBOR_DEPTH + 5) + b"\x01"
    with pytest.raises(DecodeError, match=r"^CBOR is nested too deeply \(limit 16\)$"):
        decode_strict(deep)


def test_size_limit_named() -> None:
    with pytest.raises(LimitError, match="request is 5 bytes; the limit is 4"):
        decode_strict(cbor2.dumps("abcd"), what="request", max_bytes=4)


def test_strict_accepts_non_canonical_order() -> None:
    data = cbor2.dumps({"module_id": "x", "digest": "SHA384"})
    assert list(decode_strict(data)) == ["module_id", "digest"]
