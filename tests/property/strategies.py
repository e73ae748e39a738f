"""Hypothesis generators: CBOR values, raw CBOR items with tags, amplification inputs,
and byte mutations of valid vectors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

# ----------------------------------------------------------- values we encode

_scalars = (
    st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=20)
    | st.booleans()
    | st.none()
    | st.floats(allow_nan=False)
)
_keys = st.integers(min_value=-(2**64), max_value=2**64 - 1) | st.text(max_size=10)

#: Values in our data model: what ``encode`` accepts and ``decode_deterministic`` must
#: give back unchanged (lists, not tuples; no tags).
cbor_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=25,
)

# ------------------------------------------------------- raw items, with tags


def head(major: int, arg: int, *, wide: int = 0) -> bytes:
    """An RFC 8949 §3 head; ``wide`` forces a longer argument than needed (0: shortest)."""
    sizes = [(24, 0), (0x100, 1), (0x10000, 2), (0x100000000, 4), (2**64, 8)]
    options = [(limit, n) for limit, n in sizes if arg < limit]
    _, n = options[min(wide, len(options) - 1)]
    if n == 0:
        return bytes([major << 5 | arg])
    ai = {1: 24, 2: 25, 4: 26, 8: 27}[n]
    return bytes([major << 5 | ai]) + arg.to_bytes(n, "big")


@dataclass(frozen=True)
class Item:
    """A raw CBOR item and, if it holds a tag, the byte offset of its first one."""

    data: bytes
    first_tag: tuple[int, int] | None  # (tag number, offset)


def _shift(tag: tuple[int, int] | None, by: int) -> tuple[int, int] | None:
    return None if tag is None else (tag[0], tag[1] + by)


def _join(prefix: bytes, parts: list[Item]) -> Item:
    out, first = bytearray(prefix), None
    for p in parts:
        if first is None and p.first_tag is not None:
            first = _shift(p.first_tag, len(out))
        out += p.data
    return Item(bytes(out), first)


_raw_scalars = st.one_of(
    st.integers(0, 2**64 - 1).map(lambda n: Item(head(0, n), None)),
    st.integers(0, 2**64 - 1).map(lambda n: Item(head(1, n), None)),
    st.binary(max_size=20).map(lambda b: Item(head(2, len(b)) + b, None)),
    st.text(max_size=10).map(lambda s: Item(head(3, len(s.encode())) + s.encode(), None)),
    st.sampled_from([b"\xf4", b"\xf5", b"\xf6", b"\xf7", b"\xf9\x3c\x00"]).map(
        lambda b: Item(b, None)
    ),
)

#: Tags worth naming (RFC 8949 §3.4, IANA): value sharing 28/29, string references
#: 25/256, self-described 55799, COSE_Sign1 18, big numbers 2/3, dates 0/1, embedded
#: CBOR 24, and any other number.
TAGS = st.sampled_from([0, 1, 2, 3, 4, 5, 18, 21, 24, 25, 28, 29, 30, 32, 256, 258, 55799]) | (
    st.integers(0, 2**64 - 1)
)


def _raw_key() -> st.SearchStrategy[tuple[Any, Item]]:
    return st.one_of(
        st.integers(0, 2**32).map(lambda n: (("u", n), Item(head(0, n), None))),
        st.text(max_size=6).map(
            lambda s: (("t", s), Item(head(3, len(s.encode())) + s.encode(), None))
        ),
    )


def _containers(inner: st.SearchStrategy[Item]) -> st.SearchStrategy[Item]:
    arrays = st.lists(inner, max_size=4).map(lambda xs: _join(head(4, len(xs)), xs))
    maps = st.lists(st.tuples(_raw_key(), inner), max_size=4, unique_by=lambda kv: kv[0][0]).map(
        lambda kvs: _join(head(5, len(kvs)), [p for (_, k), v in kvs for p in (k, v)])
    )
    tagged = st.tuples(TAGS, inner).map(lambda tv: Item(head(6, tv[0]) + tv[1].data, (tv[0], 0)))
    return arrays | maps | tagged


#: Well-formed definite-length items whose map keys are unique integers or texts;
#: tags may appear anywhere except as map keys. Depth stays under MAX_CBOR_DEPTH.
raw_items = st.recursive(_raw_scalars, _containers, max_leaves=20)

# ------------------------------------------------------------------- amplification


@dataclass(frozen=True)
class Bomb:
    """A small input that expands when a decoder honours its references."""

    name: str
    data: bytes
    expands_to: int  # bytes, roughly, if every reference were copied
    expected: str  # the exact error a strict decoder gives


def shared_bomb(base: int, width: int, levels: int) -> Bomb:
    """Value sharing (tag 28 marks, tag 29 refers): level k is an array holding the
    shareable level k-1 and ``width - 1`` references to it; level 0 is a byte string."""
    data = head(6, 28) + head(2, base) + b"A" * base
    for k in range(levels):
        data = head(6, 28) + head(4, width) + data + (head(6, 29) + head(0, k)) * (width - 1)
    return Bomb(
        f"shared(base={base}, width={width}, levels={levels})",
        data,
        base * width**levels,
        "CBOR has CBOR tag 28 at byte 0, which is not accepted",
    )


def flat_shared_bomb(base: int, count: int) -> Bomb:
    """One shareable byte string and ``count - 1`` references to it in one array: no
    container repeats, so only the size of the expansion can stop a decoder."""
    data = head(4, count) + head(6, 28) + head(2, base) + b"A" * base
    data += (head(6, 29) + head(0, 0)) * (count - 1)
    return Bomb(
        f"flat shared(base={base}, count={count})",
        data,
        base * count,
        f"CBOR has CBOR tag 28 at byte {len(head(4, count))}, which is not accepted",
    )


def stringref_bomb(length: int, count: int) -> Bomb:
    """String references (tag 256 namespace, tag 25 reference): one string, ``count`` uses."""
    s = b"B" * length
    body = head(4, count) + head(2, length) + s + (head(6, 25) + head(0, 0)) * (count - 1)
    return Bomb(
        f"stringref(length={length}, count={count})",
        head(6, 256) + body,
        length * count,
        "CBOR has CBOR tag 256 at byte 0, which is not accepted",
    )


def lying_length_bomb(major: int, declared: int) -> Bomb:
    """A head declaring far more than the input holds (a decoder that pre-allocates dies)."""
    data = head(major, declared) + b"\x00"
    what = {2: "string", 3: "string", 4: "array", 5: "map"}[major]
    if what == "string":
        expected = f"CBOR is not well-formed CBOR: a string of {declared} bytes at byte 0 runs past the end"
    else:
        count = declared * 2 if major == 5 else declared
        expected = (
            f"CBOR is not well-formed CBOR: {count} items declared at byte 0 but 1 bytes remain"
        )
    return Bomb(f"lying {what}({declared})", data, declared, expected)


bombs = st.one_of(
    st.builds(
        shared_bomb,
        st.integers(1, 4096),
        st.integers(2, 200),
        st.integers(1, 12),
    ),
    st.builds(flat_shared_bomb, st.integers(1, 8192), st.integers(2, 300_000)),
    st.builds(stringref_bomb, st.integers(1, 4096), st.integers(2, 5000)),
    st.builds(
        lying_length_bomb,
        st.sampled_from([2, 3, 4, 5]),
        st.integers(2, 2**64 - 1),
    ),
)

# ----------------------------------------------------------------------- mutations

_ops = st.tuples(
    st.sampled_from(["flip", "set", "insert", "delete", "truncate", "duplicate"]),
    st.integers(0, 2**32),
    st.integers(0, 255),
)


def apply_mutations(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, value in ops:
        if not out:
            out.append(value)
            continue
        i = where % len(out)
        if kind == "flip":
            out[i] ^= 1 << (value % 8)
        elif kind == "set":
            out[i] = value
        elif kind == "insert":
            out.insert(i, value)
        elif kind == "delete":
            del out[i]
        elif kind == "truncate":
            del out[i:]
        else:
            out[i:i] = out[i : i + 1 + value % 16]
    return bytes(out)


#: One to four mutations (as a list; apply with :func:`apply_mutations`).
mutation_ops = st.lists(_ops, min_size=1, max_size=4)
