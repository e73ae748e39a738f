"""Property tests of the CBOR decoders (protocol.md §1.2 D1-D3)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import cbor2
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from ephemeralml.common._cbor import MAX_CBOR_ITEMS, decode_deterministic, decode_strict, encode
from ephemeralml.common._errors import DecodeError, Error, LimitError
from tests.property.strategies import (
    Bomb,
    apply_mutations,
    bombs,
    cbor_values,
    flat_shared_bomb,
    head,
    mutation_ops,
    raw_items,
    shared_bomb,
    stringref_bomb,
)

_ERRORS = (DecodeError, LimitError)


@given(st.binary(max_size=400))
def test_any_bytes_give_a_value_or_a_decode_error(data: bytes) -> None:
    for decode in (decode_strict, decode_deterministic):
        try:
            decode(data)
        except Error as e:
            assert type(e) in _ERRORS, repr(e)
            assert "\n" not in str(e)


@given(cbor_values)
def test_round_trip_value_and_bytes(value: object) -> None:
    data = encode(value)
    back = decode_deterministic(data)
    assert back == value
    assert encode(back) == data


@given(cbor_values, st.integers(1, 3))
def test_a_longer_head_is_refused_by_the_deterministic_decoder(value: object, wide: int) -> None:
    """D1: every non-preferred head (same value, longer argument) is refused."""
    data = encode(value)
    first = data[0]
    major, ai = first >> 5, first & 0x1F
    assume(major in (0, 1, 2, 3, 4, 5) and ai < 28)
    arg = ai if ai < 24 else int.from_bytes(data[1 : 1 + {24: 1, 25: 2, 26: 4, 27: 8}[ai]], "big")
    old = len(head(major, arg))
    longer = head(major, arg, wide=wide + (0 if ai < 24 else {24: 1, 25: 2, 26: 3, 27: 4}[ai]))
    assume(len(longer) > old)
    variant = longer + data[old:]
    assert decode_strict(variant) == decode_strict(data)
    with pytest.raises(DecodeError) as e:
        decode_deterministic(variant)
    assert str(e.value) == "CBOR is not deterministically encoded (RFC 8949 §4.2.1)"


@given(raw_items)
def test_every_tag_is_refused_at_its_offset(item) -> None:  # type: ignore[no-untyped-def]
    """D2: a tag anywhere (28/29, 25/256, 55799, 18, 2/3, ...) is refused by the head
    walk, naming the first one; without tags the strict decoder takes the item."""
    if item.first_tag is None:
        decode_strict(item.data)
        return
    tag, at = item.first_tag
    for decode in (decode_strict, decode_deterministic):
        with pytest.raises(DecodeError) as e:
            decode(item.data)
        assert str(e.value) == f"CBOR has CBOR tag {tag} at byte {at}, which is not accepted"


@given(raw_items)
def test_a_named_top_level_tag_is_kept_and_nowhere_else(item) -> None:  # type: ignore[no-untyped-def]
    data = head(6, 18) + item.data
    if item.first_tag is None:
        got = decode_strict(data, top_tags=frozenset({18}))
        assert got == cbor2.CBORTag(18, decode_strict(item.data))
    else:
        tag, at = item.first_tag
        with pytest.raises(DecodeError) as e:
            decode_strict(data, top_tags=frozenset({18}))
        assert str(e.value) == f"CBOR has CBOR tag {tag} at byte {at + 1}, which is not accepted"


@given(cbor_values, mutation_ops)
def test_mutated_encodings_decode_to_their_own_bytes_or_fail(value: object, ops) -> None:  # type: ignore[no-untyped-def]
    data = apply_mutations(encode(value), ops)
    try:
        back = decode_deterministic(data)
    except Error as e:
        assert type(e) in _ERRORS, repr(e)
        return
    assert encode(back) == data


@given(st.integers(MAX_CBOR_ITEMS, MAX_CBOR_ITEMS + 50))
def test_item_count_is_bounded(n: int) -> None:
    data = head(4, n) + b"\x00" * n
    with pytest.raises(LimitError) as e:
        decode_strict(data)
    assert str(e.value) == f"CBOR holds more than {MAX_CBOR_ITEMS} CBOR items"


_DECODE_IN_A_BOX = textwrap.dedent(
    """
    import json, resource, sys
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from ephemeralml.common._cbor import decode_deterministic, decode_strict
    out = []
    for hexdata in json.load(sys.stdin):
        data = bytes.fromhex(hexdata)
        row = []
        for decode in (decode_strict, decode_deterministic):
            try:
                decode(data)
                row.append("accepted")
            except BaseException as e:
                row.append(f"{type(e).__name__}: {e}")
        out.append(row)
    print(json.dumps(out))
    """
)

#: Address space for the decoding child: a decoder that honoured the references would
#: need far more (each bomb expands past this), so it fails here, not on the machine.
_BOX_BYTES = 1024 * 1024 * 1024
#: Wall-clock bound on the child; a strict decoder needs milliseconds.
_BOX_TIMEOUT_S = 120


def _decode_in_a_box(cases: list[Bomb]) -> list[list[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", _DECODE_IN_A_BOX, str(_BOX_BYTES)],
        input=json.dumps([b.data.hex() for b in cases]),
        capture_output=True,
        text=True,
        timeout=_BOX_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows: list[list[str]] = json.loads(proc.stdout)
    return rows


@settings(max_examples=3)
@given(st.lists(bombs, min_size=8, max_size=8))
@example([flat_shared_bomb(8192, 300_000), stringref_bomb(4096, 5000), shared_bomb(4096, 200, 12)])
def test_amplification_is_refused_in_a_memory_bounded_process(cases: list[Bomb]) -> None:
    """D2: value sharing, string references and lying lengths are refused before any
    expansion, by both decoders, in a child with a 1 GiB address space."""
    rows = _decode_in_a_box(cases)
    for bomb, row in zip(cases, rows, strict=True):
        assert row == [f"DecodeError: {bomb.expected}"] * 2, (bomb.name, len(bomb.data), row)
