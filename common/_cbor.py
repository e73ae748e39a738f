"""One canonical CBOR encoding, and strict decoders of untrusted bytes.

Everything this project hashes or signs is encoded by :func:`encode`: RFC 8949
§4.2.1 core deterministic encoding (preferred, shortest heads; definite lengths;
map keys sorted by the bytewise order of their encodings). cbor2's ``canonical``
mode implements exactly that ordering.

Two decoders:

* :func:`decode_deterministic` for our own messages, receipts and payloads: the
  input must be the one deterministic encoding of what it decodes to (protocol.md
  §1.2). A single flipped bit therefore either changes the value or is rejected.
* :func:`decode_strict` for documents other people produce (AWS attestation
  documents are not deterministically ordered): well-formed, definite lengths only,
  no duplicate map keys, bounded depth, no trailing bytes.
"""

from __future__ import annotations

import io
from typing import Any

import cbor2

from ._errors import DecodeError, LimitError

__all__ = ["MAX_CBOR_DEPTH", "decode_deterministic", "decode_strict", "encode"]

#: Nesting limit for untrusted CBOR. Our deepest structure (a receipt inside a
#: response inside a frame) is 5 levels; AWS attestation payloads are 3. 16 leaves
#: room and stops stack-exhaustion inputs long before Python's recursion limit.
MAX_CBOR_DEPTH = 16


def encode(value: Any) -> bytes:
    """RFC 8949 §4.2.1 deterministic encoding of ``value``."""
    try:
        return cbor2.dumps(value, canonical=True)
    except (cbor2.CBOREncodeError, TypeError, ValueError) as e:
        raise DecodeError(f"value cannot be encoded as CBOR: {e}") from e


def decode_strict(data: bytes, *, what: str = "CBOR", max_bytes: int | None = None) -> Any:
    """Decode one well-formed CBOR item that spans all of ``data``.

    Rejects: indefinite lengths, duplicate map keys, nesting deeper than
    :data:`MAX_CBOR_DEPTH`, trailing bytes, and inputs over ``max_bytes``.
    Does *not* require deterministic encoding (see :func:`decode_deterministic`).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"{what}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if max_bytes is not None and len(data) > max_bytes:
        raise LimitError(f"{what} is {len(data)} bytes; the limit is {max_bytes}")
    if not data:
        raise DecodeError(f"{what} is empty")
    fp = io.BytesIO(data)
    try:
        decoder = cbor2.CBORDecoder(
            fp,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            max_depth=MAX_CBOR_DEPTH,
        )
        value = decoder.decode()
    except RecursionError as e:  # pragma: no cover - max_depth stops this first
        raise DecodeError(f"{what} is nested too deeply") from e
    except (cbor2.CBORError, ValueError, TypeError, EOFError, OverflowError) as e:
        raise DecodeError(f"{what} is not well-formed CBOR: {e}") from e
    if fp.tell() != len(data):
        raise DecodeError(f"{what} has {len(data) - fp.tell()} trailing bytes")
    return value


def decode_deterministic(data: bytes, *, what: str = "CBOR", max_bytes: int | None = None) -> Any:
    """Decode ``data`` and require that it is the deterministic encoding of its value."""
    value = decode_strict(data, what=what, max_bytes=max_bytes)
    try:
        again = cbor2.dumps(value, canonical=True)
    except (cbor2.CBOREncodeError, TypeError, ValueError) as e:
        raise DecodeError(f"{what} holds a value we do not accept: {e}") from e
    if again != bytes(data):
        raise DecodeError(f"{what} is not deterministically encoded (RFC 8949 §4.2.1)")
    return value
