"""One canonical CBOR encoding, and strict decoders of untrusted bytes.

Everything this project hashes or signs is encoded by :func:`encode`: cbor2's
``canonical`` mode, which is RFC 8949 deterministic encoding (preferred, shortest
heads; definite lengths) with map keys sorted length-first, then bytewise, by their
encodings (the RFC 7049 §3.9 "canonical" order, RFC 8949 §4.2.3). For every map the
protocol defines (text keys, or small non-negative integer keys) that is the same
order as RFC 8949 §4.2.1's plain bytewise one; the two differ only for maps mixing
key types or with negative or multi-byte integer keys, which no format here has.

Two decoders:

* :func:`decode_deterministic` for our own messages, receipts and payloads: the
  input must be the one deterministic encoding of what it decodes to (protocol.md
  §1.2). A single flipped bit therefore either changes the value or is rejected.
* :func:`decode_strict` for documents other people produce (AWS attestation
  documents are not deterministically ordered): well-formed, definite lengths only,
  no duplicate map keys, bounded depth, no trailing bytes.

Both refuse work that the input's own size does not pay for (protocol.md §1.2, check
D2). Before cbor2 sees a byte, :func:`_prescan` walks the item heads (the
well-formedness walk of RFC 8949 Appendix C, heads only: strings are skipped by their
length) and refuses every semantic tag (value sharing 28/29 and string references
25/256 make a small input expand into gigabytes; 55799 makes a second encoding of
the same object; big numbers, dates and the rest are never in our formats), any
indefinite length, reserved or ill-formed heads, a declared length or count larger
than the bytes that remain, map keys that are not integers or strings (no hashing of
attacker-made tuples or floats), nesting deeper than :data:`MAX_CBOR_DEPTH` and more
than ``max_items`` items. The only tag ever accepted is one the caller names for the
outermost item (COSE_Sign1's 18). cbor2 then decodes with a semantic-tag table that
refuses every tag as well, a second line that does not depend on the walk. Without
tags every decoded item is paid for by input bytes, and the deterministic check
re-encodes at most ``len(data)`` bytes (preferred serialisation is never longer than
the input's). Every foreign exception, ``MemoryError`` and ``RecursionError``
included, leaves as :class:`DecodeError` or :class:`LimitError`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import Any

import cbor2

from ._errors import DecodeError, LimitError

__all__ = ["MAX_CBOR_DEPTH", "MAX_CBOR_ITEMS", "decode_deterministic", "decode_strict", "encode"]

#: Nesting limit for untrusted CBOR. Our deepest structure (a receipt inside a
#: response inside a frame) is 5 levels; AWS attestation payloads are 3. 16 leaves
#: room and stops stack-exhaustion inputs long before Python's recursion limit.
MAX_CBOR_DEPTH = 16

#: Most data items in one decode. Each item costs a Python object (up to ~100 bytes
#: for an empty map) while the input pays one byte for it, so this bounds the
#: memory a 2 MiB frame can make us allocate to well under a megabyte. Our largest
#: structures: an attestation document (~60 items), a request of 64 texts (~80), a
#: manifest of 32 files (~200), a signed policy with a few dozen PCR entries.
MAX_CBOR_ITEMS = 4096

# RFC 8949 §3.1 major types.
_UINT, _NINT, _BYTES, _TEXT, _ARRAY, _MAP, _TAG, _SIMPLE = range(8)
_ARG_BYTES = {24: 1, 25: 2, 26: 4, 27: 8}


def encode(value: Any) -> bytes:
    """RFC 8949 §4.2.1 deterministic encoding of ``value``."""
    try:
        return cbor2.dumps(value, canonical=True)
    except (cbor2.CBOREncodeError, TypeError, ValueError) as e:
        raise DecodeError(f"value cannot be encoded as CBOR: {e}") from e


def _prescan(data: bytes, what: str, max_items: int, top_tags: frozenset[int]) -> None:
    """Walk the heads of one CBOR item spanning ``data`` (see the module docstring).

    Work is at most one step per item, and items are bounded by ``max_items``.
    """
    n = len(data)
    pos = 0
    items = 0
    # One entry per open container: [items still to come, is a map].
    stack: list[list[Any]] = []
    while True:
        if pos >= n:
            raise DecodeError(f"{what} is not well-formed CBOR: it ends inside an item")
        start = pos
        ib = data[pos]
        major, ai = ib >> 5, ib & 0x1F
        pos += 1
        if ai < 24:
            arg = ai
        elif ai in _ARG_BYTES:
            size = _ARG_BYTES[ai]
            if pos + size > n:
                raise DecodeError(f"{what} is not well-formed CBOR: a head is cut short")
            arg = int.from_bytes(data[pos : pos + size], "big")
            pos += size
        elif ai == 31:
            raise DecodeError(
                f"{what} is not well-formed CBOR: indefinite length at byte {start}"
            )
        else:
            raise DecodeError(
                f"{what} is not well-formed CBOR: reserved head 0x{ib:02x} at byte {start}"
            )
        items += 1
        if items > max_items:
            raise LimitError(f"{what} holds more than {max_items} CBOR items")
        if stack and stack[-1][1] and stack[-1][0] % 2 == 0 and major > _TEXT:
            # The item is a map key (even count left in a map, counted before this one).
            raise DecodeError(
                f"{what}: map key at byte {start} is not an integer or a string"
            )
        if stack:
            stack[-1][0] -= 1
        if major in (_BYTES, _TEXT):
            if arg > n - pos:
                raise DecodeError(
                    f"{what} is not well-formed CBOR: a string of {arg} bytes at byte "
                    f"{start} runs past the end"
                )
            pos += arg
        elif major in (_ARRAY, _MAP):
            count = arg * 2 if major == _MAP else arg
            # Each element takes at least one byte: a count the rest cannot hold is a
            # lie told to make the decoder allocate.
            if count > n - pos:
                raise DecodeError(
                    f"{what} is not well-formed CBOR: {count} items declared at byte {start} "
                    f"but {n - pos} bytes remain"
                )
            if count:
                if len(stack) >= MAX_CBOR_DEPTH:
                    raise DecodeError(f"{what} is nested too deeply (limit {MAX_CBOR_DEPTH})")
                stack.append([count, major == _MAP])
                continue
        elif major == _TAG:
            if start == 0 and arg in top_tags:
                continue  # the tagged item follows; it is the whole document
            raise DecodeError(f"{what} has CBOR tag {arg} at byte {start}, which is not accepted")
        while stack and stack[-1][0] == 0:
            stack.pop()
        if not stack:
            break
    if pos != n:
        raise DecodeError(f"{what} has {n - pos} trailing bytes")


class _Refused(Exception):
    def __init__(self, tag: int) -> None:
        super().__init__(tag)
        self.tag = tag


class _TagTable(Mapping[int, Callable[..., Any]]):
    """cbor2's semantic-decoder table, answering every tag: ``top_tags`` are kept as
    :class:`cbor2.CBORTag`, everything else is refused (cbor2 looks a tag up when it
    reads the head; value sharing and string references are never resolved)."""

    def __init__(self, top_tags: frozenset[int]) -> None:
        self._top = top_tags

    def __getitem__(self, tag: int) -> Callable[..., Any]:
        if tag in self._top:
            return lambda value, *_: cbor2.CBORTag(tag, value)

        def refuse(*_: Any) -> Any:
            raise _Refused(tag)

        return refuse

    def __contains__(self, tag: object) -> bool:
        return True

    def __iter__(self) -> Any:
        return iter(())

    def __len__(self) -> int:
        return 0


def _refuse_unknown(*args: Any) -> Any:
    tag = next((a.tag for a in args if isinstance(a, cbor2.CBORTag)), -1)
    raise _Refused(tag)


def decode_strict(
    data: bytes,
    *,
    what: str = "CBOR",
    max_bytes: int | None = None,
    max_items: int = MAX_CBOR_ITEMS,
    top_tags: frozenset[int] = frozenset(),
) -> Any:
    """Decode one well-formed CBOR item that spans all of ``data``.

    Rejects: inputs over ``max_bytes``; every tag except one of ``top_tags`` on the
    outermost item; indefinite lengths; duplicate map keys; map keys other than
    integers and strings; nesting deeper than :data:`MAX_CBOR_DEPTH`; more than
    ``max_items`` items; trailing bytes. Raises only :class:`DecodeError` and
    :class:`LimitError`. Does *not* require deterministic encoding (see
    :func:`decode_deterministic`).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"{what}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if max_bytes is not None and len(data) > max_bytes:
        raise LimitError(f"{what} is {len(data)} bytes; the limit is {max_bytes}")
    if not data:
        raise DecodeError(f"{what} is empty")
    # protocol.md §1.2 D2: limits before work.
    _prescan(data, what, max_items, top_tags)
    fp = io.BytesIO(data)
    try:
        decoder = cbor2.CBORDecoder(
            fp,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            max_depth=MAX_CBOR_DEPTH,
            semantic_decoders=_TagTable(top_tags),
            tag_hook=_refuse_unknown,
        )
        value = decoder.decode()
    except MemoryError as e:
        raise LimitError(f"{what} does not fit in memory") from e
    except RecursionError as e:
        raise DecodeError(f"{what} is nested too deeply") from e
    except Exception as e:
        refused = e if isinstance(e, _Refused) else e.__cause__
        if isinstance(refused, _Refused):
            raise DecodeError(f"{what} has CBOR tag {refused.tag}, which is not accepted") from e
        raise DecodeError(f"{what} is not well-formed CBOR: {e}") from e
    if fp.tell() != len(data):
        raise DecodeError(f"{what} has {len(data) - fp.tell()} trailing bytes")
    return value


def decode_deterministic(
    data: bytes,
    *,
    what: str = "CBOR",
    max_bytes: int | None = None,
    max_items: int = MAX_CBOR_ITEMS,
) -> Any:
    """Decode ``data`` and require that it is the deterministic encoding of its value.

    The re-encode is bounded by ``len(data)``: with no tags, the preferred encoding of
    what was decoded is never longer than the input.
    """
    value = decode_strict(data, what=what, max_bytes=max_bytes, max_items=max_items)
    try:
        again = cbor2.dumps(value, canonical=True)
    except MemoryError as e:  # pragma: no cover - bounded by the input, see above
        raise LimitError(f"{what} does not fit in memory") from e
    except Exception as e:
        raise DecodeError(f"{what} holds a value we do not accept: {e}") from e
    if again != bytes(data):
        raise DecodeError(f"{what} is not deterministically encoded (RFC 8949 §4.2.1)")
    return value
