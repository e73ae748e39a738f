"""Encrypted model bundles (protocol.md §9): manifest checks M1-M5, stream checks M6-M9."""

from __future__ import annotations

import hashlib
import os
import random

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from ephemeralml.common._bundle import (
    MAX_RELEASE,
    BundleDecryptor,
    BundleEncryptor,
    BundleFile,
    Manifest,
    VerifiedManifest,
    owner_key_id,
    sign_manifest,
    verify_manifest,
)
from ephemeralml.common._cose import sign_eddsa
from ephemeralml.common._errors import LocalProtocolError, ManifestError

CHUNK = 4096


def make_bundle(
    files: dict[str, bytes],
    *,
    key: bytes,
    owner: Ed25519PrivateKey,
    chunk: int = CHUNK,
    model_id: str = "m",
    feed: int = 1000,
    release: int = 0,
) -> tuple[bytes, bytes, Manifest]:
    bundle_id, salt = os.urandom(16), os.urandom(32)
    enc = BundleEncryptor(key, chunk_size=chunk, bundle_id=bundle_id, salt=salt)
    out = bytearray()
    for data in files.values():
        for i in range(0, len(data), feed):
            out += enc.update(data[i : i + feed])
    out += enc.finish()
    m = Manifest(
        model_id=model_id,
        version="1",
        files=tuple(BundleFile(n, len(d), hashlib.sha256(d).digest()) for n, d in files.items()),
        plaintext_size=enc.plaintext_size,
        plaintext_sha256=enc.plaintext_sha256,
        ciphertext_size=enc.ciphertext_size,
        ciphertext_sha256=enc.ciphertext_sha256,
        chunk_size=chunk,
        bundle_id=bundle_id,
        salt=salt,
        kms_key_id="arn:aws:kms:us-east-1:111122223333:key/test",
        wrapped_key_sha256=hashlib.sha256(b"wrapped").digest(),
        created="2026-11-21T00:00:00Z",
        owner=owner_key_id(owner.public_key().public_bytes_raw()),
        release=release,
    )
    return sign_manifest(m, owner), bytes(out), m


@pytest.fixture(scope="module")
def owner() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def keys(owner: Ed25519PrivateKey) -> dict[bytes, bytes]:
    pub = owner.public_key().public_bytes_raw()
    return {owner_key_id(pub): pub}


def decrypt(raw: bytes, enc: bytes, keys: dict[bytes, bytes], key: bytes, step: int = 777) -> dict[str, bytes]:
    v = verify_manifest(raw, keys)
    d = BundleDecryptor(v, key)
    for i in range(0, len(enc), step):
        d.update(enc[i : i + step])
    return {k: bytes(v) for k, v in d.finish().items()}


@pytest.mark.parametrize("size", [1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17])
def test_round_trip_at_chunk_edges(size: int, owner, keys) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(size)
    files = {"model.onnx": rng.randbytes(size), "tokenizer.json": b'{"t": 1}', "model.json": b"{}"}
    key = os.urandom(32)
    raw, enc, m = make_bundle(files, key=key, owner=owner)
    assert len(enc) == m.ciphertext_size == m.plaintext_size + 16 * m.chunk_count
    for step in (1 + size // 3, 5000, len(enc)):
        assert decrypt(raw, enc, keys, key, step) == files


def test_manifest_digest_is_of_its_deterministic_cbor(owner) -> None:  # type: ignore[no-untyped-def]
    raw, _, m = make_bundle({"a": b"x" * 10}, key=os.urandom(32), owner=owner)
    assert m.digest == hashlib.sha256(m.to_cbor()).digest()
    assert cbor2.loads(cbor2.loads(raw).value[2])["model_id"] == "m"
    assert Manifest.from_cbor(m.to_cbor()) == m


@pytest.fixture
def bundle(owner):  # type: ignore[no-untyped-def]
    key = os.urandom(32)
    files = {"model.onnx": random.Random(1).randbytes(3 * CHUNK + 100)}
    raw, enc, m = make_bundle(files, key=key, owner=owner)
    return raw, enc, m, key


def _expect(prefix: str, raw: bytes, enc: bytes, keys, key: bytes) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ManifestError) as info:
        decrypt(raw, enc, keys, key)
    assert str(info.value).startswith(prefix), str(info.value)


def test_flipped_byte_in_an_early_chunk(bundle, keys) -> None:  # type: ignore[no-untyped-def]
    raw, enc, _, key = bundle
    b = bytearray(enc)
    b[10] ^= 1
    _expect("M9 content: chunk 0 of model.enc fails authentication", raw, bytes(b), keys, key)


def test_flipped_byte_in_the_last_chunk(bundle, keys) -> None:  # type: ignore[no-untyped-def]
    raw, enc, _, key = bundle
    b = bytearray(enc)
    b[-3] ^= 1
    _expect("M7 ciphertext: model.enc does not match", raw, bytes(b), keys, key)


def test_truncated_and_extended(bundle, keys) -> None:  # type: ignore[no-untyped-def]
    raw, enc, _m, key = bundle
    _expect(f"M6 size: model.enc is {len(enc) - 1} bytes; the manifest says {len(enc)}", raw, enc[:-1], keys, key)
    _expect(f"M6 size: model.enc is {len(enc) - (CHUNK + 16)} bytes", raw, enc[: -(CHUNK + 16)], keys, key)
    _expect("M6 size: model.enc is longer than the manifest says", raw, enc + b"\x00", keys, key)


def test_swapped_chunks(bundle, keys) -> None:  # type: ignore[no-untyped-def]
    raw, enc, _, key = bundle
    s = CHUNK + 16
    swapped = enc[s : 2 * s] + enc[:s] + enc[2 * s :]
    _expect("M9 content: chunk 0 of model.enc fails authentication", raw, swapped, keys, key)


def test_model_swapped_for_another_with_the_same_name(bundle, owner, keys) -> None:  # type: ignore[no-untyped-def]
    raw, _enc, _m, key = bundle
    _other_raw, other_enc, _ = make_bundle({"model.onnx": b"y" * (3 * CHUNK + 100)}, key=key, owner=owner)
    # The host serves the other bundle's model.enc under this manifest.
    _expect("M9 content: chunk 0", raw, other_enc, keys, key)


def test_wrong_data_key(bundle, keys) -> None:  # type: ignore[no-untyped-def]
    raw, enc, _, _ = bundle
    _expect("M9 content: chunk 0 of model.enc fails authentication", raw, enc, keys, os.urandom(32))


def test_manifest_signed_by_an_unknown_key(bundle) -> None:  # type: ignore[no-untyped-def]
    raw, _, _, _ = bundle
    stranger = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    with pytest.raises(ManifestError, match=r"^M2 owner: signed by an unknown key"):
        verify_manifest(raw, {owner_key_id(stranger): stranger})


def test_manifest_forged_with_another_key_under_the_owner_kid(bundle, keys) -> None:  # type: ignore[no-untyped-def]
    _raw, _, m, _ = bundle
    forged = sign_eddsa(m.to_cbor(), Ed25519PrivateKey.generate(), kid=m.owner)
    with pytest.raises(ManifestError, match=r"^M3 signature: the manifest signature does not verify"):
        verify_manifest(forged, keys)


def test_every_manifest_byte_flip_is_rejected(bundle, keys) -> None:  # type: ignore[no-untyped-def]
    raw, _, _, _ = bundle
    for i in range(len(raw)):
        b = bytearray(raw)
        b[i] ^= 0x04
        with pytest.raises(ManifestError):
            verify_manifest(bytes(b), keys)


def test_truncated_manifest(bundle, keys) -> None:  # type: ignore[no-untyped-def]
    raw, _, _, _ = bundle
    with pytest.raises(ManifestError, match=r"^M1 envelope"):
        verify_manifest(raw[:-5], keys)


def test_manifest_for_another_model(bundle, keys) -> None:  # type: ignore[no-untyped-def]
    raw, _, _, _ = bundle
    with pytest.raises(ManifestError, match=r"^M5 model: manifest is for 'm', not 'all-MiniLM-L6-v2'"):
        verify_manifest(raw, keys, model_id="all-MiniLM-L6-v2")


def test_manifest_fields_are_checked_when_built(bundle) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    _, _, m, _ = bundle
    with pytest.raises(ManifestError, match="M4 format: file sizes do not add up"):
        dataclasses.replace(m, plaintext_size=m.plaintext_size + 1)
    with pytest.raises(ManifestError, match="M4 format: chunk_size 100 outside"):
        dataclasses.replace(m, chunk_size=100)
    with pytest.raises(ManifestError, match="M4 format: bad file name '../etc/passwd'"):
        BundleFile("../etc/passwd", 1, b"\x00" * 32)
    with pytest.raises(ManifestError, match="M4 format: ciphertext_size does not match"):
        dataclasses.replace(m, ciphertext_size=m.ciphertext_size - 16)


def test_verified_manifest_has_no_truth_value(bundle, keys) -> None:  # type: ignore[no-untyped-def]
    raw, _, _, _ = bundle
    v = verify_manifest(raw, keys)
    assert isinstance(v, VerifiedManifest)
    with pytest.raises(TypeError):
        bool(v)


def test_encryptor_misuse() -> None:
    e = BundleEncryptor(os.urandom(32), chunk_size=CHUNK, bundle_id=os.urandom(16), salt=os.urandom(32))
    with pytest.raises(LocalProtocolError, match="refusing to encrypt an empty bundle"):
        e.finish()
    with pytest.raises(LocalProtocolError, match="chunk size must be"):
        BundleEncryptor(os.urandom(32), chunk_size=10, bundle_id=os.urandom(16), salt=os.urandom(32))
    with pytest.raises(LocalProtocolError, match="bundle data key must be 32 bytes"):
        BundleEncryptor(b"short", chunk_size=CHUNK, bundle_id=os.urandom(16), salt=os.urandom(32))


# ---------------------------------------------------------------- releases (M4, M11)


def _signed_map(owner: Ed25519PrivateKey, m: dict[str, object]) -> bytes:
    """A manifest map exactly as given, signed by the owner (for M4 cases builders refuse)."""
    return sign_eddsa(cbor2.dumps(m, canonical=True), owner, kid=owner_key_id(owner.public_key().public_bytes_raw()))


def test_release_zero_is_written_as_a_v1_manifest(owner) -> None:  # type: ignore[no-untyped-def]
    # A manifest signed before releases existed keeps its bytes and its digest.
    _, _, m = make_bundle({"a": b"x"}, key=os.urandom(32), owner=owner)
    assert m.release == 0
    payload = cbor2.loads(m.to_cbor())
    assert payload["v"] == 1 and "release" not in payload
    assert Manifest.from_cbor(m.to_cbor()) == m


def test_a_release_makes_a_v2_manifest(owner, keys) -> None:  # type: ignore[no-untyped-def]
    raw, _, m = make_bundle({"a": b"x"}, key=os.urandom(32), owner=owner, release=7)
    payload = cbor2.loads(m.to_cbor())
    assert payload["v"] == 2 and payload["release"] == 7
    v = verify_manifest(raw, keys)
    assert v.manifest.release == 7 and v.manifest == m
    assert m.digest == hashlib.sha256(cbor2.loads(raw).value[2]).digest()


def test_the_same_bundle_at_another_release_has_another_digest(owner) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    _, _, m = make_bundle({"a": b"x"}, key=os.urandom(32), owner=owner, release=1)
    assert len({m.digest, dataclasses.replace(m, release=2).digest, dataclasses.replace(m, release=0).digest}) == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"v": 2}, "M4 format: not a version 2 manifest (wrong fields)"),  # v2 without a release
        ({"release": 3}, "M4 format: not a version 1 manifest (wrong fields)"),  # v1 with one
        ({"v": 2, "release": 0}, "M4 format: a version 2 manifest has a release of 1 or more"),
        ({"v": 2, "release": -1}, "M4 format: a version 2 manifest has a release of 1 or more"),
        ({"v": 2, "release": True}, "M4 format: a version 2 manifest has a release of 1 or more"),
        ({"v": 2, "release": 2.0}, "M4 format: a version 2 manifest has a release of 1 or more"),
        ({"v": 2, "release": "3"}, "M4 format: a version 2 manifest has a release of 1 or more"),
        ({"v": 2, "release": MAX_RELEASE + 1}, f"M4 format: release must be an integer 0..{MAX_RELEASE}"),
        ({"v": 3, "release": 3}, "M4 format: not a version 1 or 2 manifest"),
        ({"v": True}, "M4 format: not a version 1 or 2 manifest"),
        ({"v": 1.0}, "M4 format: not a version 1 or 2 manifest"),
    ],
)
def test_bad_release_fields_are_m4(owner, keys, change: dict[str, object], message: str) -> None:  # type: ignore[no-untyped-def]
    _, _, m = make_bundle({"a": b"x"}, key=os.urandom(32), owner=owner)
    raw = _signed_map(owner, {**m.to_map(), **change})
    with pytest.raises(ManifestError) as info:
        verify_manifest(raw, keys)
    assert str(info.value) == message


@pytest.mark.parametrize("release", [-1, MAX_RELEASE + 1, True, 1.5, "2"])
def test_a_manifest_is_never_built_with_a_bad_release(owner, release: object) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    _, _, m = make_bundle({"a": b"x"}, key=os.urandom(32), owner=owner)
    with pytest.raises(ManifestError) as info:
        dataclasses.replace(m, release=release)  # type: ignore[arg-type]  # deliberately not an int 0..MAX
    assert str(info.value) == f"M4 format: release must be an integer 0..{MAX_RELEASE}"


@pytest.mark.parametrize(
    ("release", "floor", "accepted"),
    [
        (0, 0, True),  # no floor: anything, as before
        (5, 0, True),
        (0, 1, False),  # a v1 manifest is below any floor
        (9, 10, False),  # integers: 9 < 10 (as text "9" > "10")
        (10, 10, True),  # the floor itself passes
        (11, 10, True),
        (MAX_RELEASE, MAX_RELEASE, True),
        (MAX_RELEASE - 1, MAX_RELEASE, False),
    ],
)
def test_m11_refuses_releases_below_the_floor(owner, keys, release: int, floor: int, accepted: bool) -> None:  # type: ignore[no-untyped-def]
    raw, _, _ = make_bundle({"a": b"x"}, key=os.urandom(32), owner=owner, release=release)
    if accepted:
        assert verify_manifest(raw, keys, model_id="m", min_release=floor).manifest.release == release
        return
    with pytest.raises(ManifestError) as info:
        verify_manifest(raw, keys, model_id="m", min_release=floor)
    assert str(info.value) == f"M11 rollback: m release {release} is below the floor {floor}"


def test_m11_runs_after_the_signature_and_the_model(owner, keys) -> None:  # type: ignore[no-untyped-def]
    raw, _, _ = make_bundle({"a": b"x"}, key=os.urandom(32), owner=owner, release=1)
    with pytest.raises(ManifestError, match=r"^M5 model: manifest is for 'm', not 'other'$"):
        verify_manifest(raw, keys, model_id="other", min_release=2)
    with pytest.raises(ManifestError, match=r"^M2 owner: "):
        verify_manifest(raw, {}, model_id="m", min_release=2)


@pytest.mark.parametrize("floor", [-1, MAX_RELEASE + 1, True, 1.0])
def test_a_bad_floor_is_the_callers_error(owner, keys, floor: object) -> None:  # type: ignore[no-untyped-def]
    raw, _, _ = make_bundle({"a": b"x"}, key=os.urandom(32), owner=owner, release=1)
    with pytest.raises(LocalProtocolError) as info:
        verify_manifest(raw, keys, min_release=floor)  # type: ignore[arg-type]
    assert str(info.value) == f"min_release must be an integer 0..{MAX_RELEASE}"


_FIXED_OWNER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
_FIXED = make_bundle({"a": b"x"}, key=bytes(32), owner=_FIXED_OWNER)[2]
_FIXED_KEYS = {owner_key_id(_FIXED_OWNER.public_key().public_bytes_raw()): _FIXED_OWNER.public_key().public_bytes_raw()}


@settings(max_examples=60, deadline=None)
@given(st.integers(0, MAX_RELEASE), st.integers(0, MAX_RELEASE))
def test_release_order_is_the_integer_order(release: int, floor: int) -> None:
    import dataclasses

    m = dataclasses.replace(_FIXED, release=release)
    assert Manifest.from_cbor(m.to_cbor()) == m
    assert cbor2.loads(m.to_cbor())["v"] == (2 if release else 1)
    raw = sign_manifest(m, _FIXED_OWNER)
    if release >= floor:
        assert verify_manifest(raw, _FIXED_KEYS, min_release=floor).manifest.release == release
    else:
        with pytest.raises(ManifestError, match=f"^M11 rollback: m release {release} is below the floor {floor}$"):
            verify_manifest(raw, _FIXED_KEYS, min_release=floor)
