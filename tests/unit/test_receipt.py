"""Receipts (protocol.md §5): every check, each with the field an attacker would change."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ephemeralml.common._attestation import (
    AttestationPolicy,
    PcrAllowlist,
    TrustedRoot,
    VerifiedAttestation,
    verify_attestation,
)
from ephemeralml.common._cose import sign_eddsa
from ephemeralml.common._errors import Error, ReceiptError
from ephemeralml.common._receipt import (
    MAX_SESSION_S,
    Receipt,
    ReceiptExpectations,
    receipt_attestation_hash,
    sign_receipt,
    verify_receipt,
)
from tests.pair import MockWorld, SessionPair


@pytest.fixture(scope="module")
def session(world: MockWorld) -> tuple[SessionPair, bytes, Receipt, VerifiedAttestation]:
    p = SessionPair(world)
    p.handshake()
    ev = p.request(("receipt me",))
    assert p.client.attestation is not None
    return p, ev.receipt.raw, ev.receipt.receipt, p.client.attestation


def _resign(world: MockWorld, r: Receipt, **changes: Any) -> bytes:
    """Sign a changed payload with the real key, keeping the real kid (so R2 passes)."""
    changed = dataclasses.replace(r, **changes)
    return sign_eddsa(changed.to_cbor(), world.identity.receipt_key, kid=r.attestation_hash)


def test_valid_receipt_verifies_offline(session, world: MockWorld) -> None:  # type: ignore[no-untyped-def]
    _p, raw, r, att = session
    # Offline: re-verify the document at its own time, then the receipt.
    doc = att.document
    offline = verify_attestation(doc.raw, world.policy, now=doc.timestamp)
    v = verify_receipt(raw, offline)
    assert v.receipt == r
    assert receipt_attestation_hash(raw) == doc.sha256
    with pytest.raises(TypeError):
        bool(v)


def test_receipt_payload_is_deterministic_cbor_with_exact_fields(session) -> None:  # type: ignore[no-untyped-def]
    _, raw, r, _ = session
    tag = cbor2.loads(raw)
    assert tag.tag == 18
    protected, unprotected, payload, sig = tag.value
    assert cbor2.loads(protected) == {1: -8, 4: r.attestation_hash}
    assert unprotected == {} and len(sig) == 64
    assert payload == r.to_cbor()
    assert sorted(cbor2.loads(payload)) == sorted(
        [
            "v", "receipt_id", "session_id", "seq", "model_id", "model_digest", "key_release",
            "request_hash", "response_hash", "attestation_hash", "pcrs", "policy_version",
            "mode", "time_ms", "duration_us", "client_nonce", "transcript_hash",
            "truncate", "truncated",
        ]
    )  # fmt: skip
    assert (r.version, r.truncate, r.truncated) == (2, False, ())


# -- truncation (receipt version 2) and version 1 receipts -------------------------------


def test_truncation_is_recorded_and_checked_against_the_request(world: MockWorld) -> None:
    p = SessionPair(world)
    p.handshake()
    ev = p.request(("a", "b", "c"), truncate=True, truncated=(0, 2))
    r = ev.receipt.receipt
    assert (r.version, r.truncate, r.truncated) == (2, True, (0, 2))
    payload = cbor2.loads(r.to_cbor())
    assert (payload["truncate"], payload["truncated"]) == (True, [0, 2])
    # The client checks the receipt against what it asked (R11).
    with pytest.raises(ReceiptError) as info:
        p.request(("a",), truncate=False, truncated=(0,))
    assert str(info.value) == "R5 payload: inputs were truncated without truncate"
    q = SessionPair(world)
    q.handshake()
    with pytest.raises(ReceiptError) as info:
        q.request(("a", "b"), truncate=True, truncated=(2,))
    assert str(info.value) == "R11 truncation: input 2 was truncated, the request had 2"


def test_a_receipt_that_lies_about_the_choice_is_refused(session, world) -> None:  # type: ignore[no-untyped-def]
    _, _, r, att = session
    forged = _resign(world, r, truncate=True)
    expect = ReceiptExpectations(truncate=False, inputs=1)
    with pytest.raises(ReceiptError) as info:
        verify_receipt(forged, att, expect=expect)
    assert str(info.value) == (
        "R11 truncation: the receipt says truncate=true, the request asked truncate=false"
    )


def test_version_1_receipts_still_verify(session, world) -> None:  # type: ignore[no-untyped-def]
    """A receipt kept from before truncation existed (version 1, without the two
    fields) verifies offline as before; it cannot claim truncation."""
    _, _, r, att = session
    v1 = dataclasses.replace(r, version=1)
    assert "truncate" not in cbor2.loads(v1.to_cbor())
    raw = sign_receipt(v1, world.identity.receipt_key)
    assert verify_receipt(raw, att).receipt == v1
    with pytest.raises(ReceiptError) as info:
        verify_receipt(raw, att, expect=ReceiptExpectations(truncate=True))
    assert str(info.value) == "R11 truncation: a version 1 receipt cannot record truncation"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"v": 1}, "R5 payload: wrong fields for receipt version 1"),
        ({"truncate": 1}, "R5 payload: truncate must be a boolean, truncated a list"),
        ({"truncate": True, "truncated": [2, 1]}, "R5 payload: truncated must be ascending input indices"),
        ({"truncate": True, "truncated": [1, 1]}, "R5 payload: truncated must be ascending input indices"),
        ({"truncate": True, "truncated": [-1]}, "R5 payload: truncated must be ascending input indices"),
        ({"truncated": [0]}, "R5 payload: inputs were truncated without truncate"),
        ({"v": 3}, "R5 payload: unknown receipt version 3"),
    ],
)
def test_truncation_fields_are_checked(session, world, change, message) -> None:  # type: ignore[no-untyped-def]
    from ephemeralml.common._cbor import encode

    _, _, r, att = session
    payload = {**r.to_map(), **change}
    raw = sign_eddsa(encode(payload), world.identity.receipt_key, kid=r.attestation_hash)
    with pytest.raises(ReceiptError) as info:
        verify_receipt(raw, att)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("attestation_hash", b"\x00" * 32, "R6 session: attestation_hash does not match"),
        ("session_id", b"\x01" * 16, "R6 session: session_id does not match"),
        ("client_nonce", b"\x02" * 32, "R6 session: client_nonce does not match"),
        ("mode", "nitro", "R8 mode: the receipt's mode differs"),
        ("model_id", "other-model", "R9 model: 'other-model' with this digest is not attested"),
        ("model_digest", b"\x03" * 32, "R9 model: 'test-model' with this digest is not attested"),
        ("policy_version", 8, "R9 policy: policy_version differs"),
        ("key_release", b"\x04" * 32, "R9 model: key_release for 'test-model' is not the attested one"),
        ("time_ms", 0, "R10 time: receipt time is outside"),
    ],
)
def test_each_signed_field_is_checked(session, world, field, value, message) -> None:  # type: ignore[no-untyped-def]
    _, _, r, att = session
    forged = _resign(world, r, **{field: value})
    with pytest.raises(ReceiptError, match="^" + message):
        verify_receipt(forged, att)


def test_pcr_changed(session, world) -> None:  # type: ignore[no-untyped-def]
    _, _, r, att = session
    pcrs = dict(r.pcrs)
    pcrs[2] = b"\x09" * 48
    with pytest.raises(ReceiptError, match="^R7 pcrs: PCR2 differs from the attestation"):
        verify_receipt(_resign(world, r, pcrs=pcrs), att)


def test_receipt_after_session_lifetime(session, world) -> None:  # type: ignore[no-untyped-def]
    _, _, r, att = session
    late = att.document.timestamp_ms + MAX_SESSION_S * 1000 + 1
    with pytest.raises(ReceiptError, match="^R10 time"):
        verify_receipt(_resign(world, r, time_ms=late), att)


@pytest.mark.parametrize(
    ("expect", "message"),
    [
        (ReceiptExpectations(seq=5), "R11 sequence: receipt seq 0, expected 5"),
        (ReceiptExpectations(transcript_hash=b"\x00" * 32), "R11 transcript"),
        (ReceiptExpectations(request_hash=b"\x00" * 32), "R11 request"),
        (ReceiptExpectations(response_hash=b"\x00" * 32), "R11 response"),
        (ReceiptExpectations(model_id="x"), "R11 model: receipt is for 'test-model', expected 'x'"),
    ],
)
def test_expectations(session, expect, message) -> None:  # type: ignore[no-untyped-def]
    _, raw, _, att = session
    with pytest.raises(ReceiptError, match="^" + message):
        verify_receipt(raw, att, expect=expect)


def test_signature_by_another_key(session) -> None:  # type: ignore[no-untyped-def]
    _, _, r, att = session
    forged = sign_receipt(r, Ed25519PrivateKey.generate())
    with pytest.raises(ReceiptError, match="^R4 signature: the receipt signature does not verify"):
        verify_receipt(forged, att)


def test_every_byte_flip_is_rejected(session) -> None:  # type: ignore[no-untyped-def]
    _, raw, _, att = session
    for i in range(len(raw)):
        b = bytearray(raw)
        b[i] ^= 0x01
        with pytest.raises(ReceiptError):
            verify_receipt(bytes(b), att)


def test_receipt_for_another_attestation(session, world) -> None:  # type: ignore[no-untyped-def]
    _, raw, _, _ = session
    other = SessionPair(world)
    other.handshake()
    assert other.client.attestation is not None
    with pytest.raises(ReceiptError, match="^R2 attestation: the receipt refers to a different"):
        verify_receipt(raw, other.client.attestation)


def test_mock_receipt_refused_under_a_non_mock_root(session, world) -> None:  # type: ignore[no-untyped-def]
    _, raw, _, att = session
    # Trust the same certificate, but not as a mock: a mock receipt must not pass.
    root = TrustedRoot.from_pem_or_der(world.nsm.root_certificate_der, name="pretend-production")
    policy = AttestationPolicy(root, PcrAllowlist.from_document(att.document))
    doc = att.document
    v = verify_attestation(doc.raw, policy, now=doc.timestamp)
    with pytest.raises(
        ReceiptError, match="^R8 mode: a mock receipt verified under a non-mock root"
    ):
        verify_receipt(raw, v)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: cbor2.CBORTag(19, t.value), "R1 envelope: receipt has CBOR tag 19 at byte 0, which is not accepted"),
        (
            lambda t: cbor2.CBORTag(18, [cbor2.dumps({1: -7, 4: t.value[0][-32:]}), *t.value[1:]]),
            "R1 envelope: protected header must be exactly",
        ),
        (
            lambda t: cbor2.CBORTag(18, [t.value[0], {4: b"x"}, *t.value[2:]]),
            "R1 envelope: receipt: unprotected header must be an empty map",
        ),
        (
            lambda t: cbor2.CBORTag(18, [*t.value[:3], t.value[3][:63]]),
            "R1 envelope: an Ed25519 signature is 64 bytes",
        ),
        (lambda t: cbor2.CBORTag(18, t.value[:3]), "R1 envelope: .*4-element"),
    ],
)
def test_envelope_checks(session, mutate, message) -> None:  # type: ignore[no-untyped-def]
    _, raw, _, att = session
    bad = cbor2.dumps(mutate(cbor2.loads(raw)))
    with pytest.raises(ReceiptError, match="^" + message):
        verify_receipt(bad, att)


def test_untagged_receipt_is_refused(session) -> None:  # type: ignore[no-untyped-def]
    # protocol.md §1.2 D3: receipts are always signed tagged; an untagged copy would be
    # a second valid encoding (with another hash) of the same receipt.
    _, raw, r, att = session
    assert verify_receipt(raw, att).receipt == r
    with pytest.raises(ReceiptError) as info:
        verify_receipt(cbor2.dumps(cbor2.loads(raw).value), att)
    assert str(info.value) == "R1 envelope: receipt is not tagged COSE_Sign1 (18)"


def test_receipt_fields_checked_at_construction(session) -> None:  # type: ignore[no-untyped-def]
    _, _, r, _ = session
    with pytest.raises(ReceiptError, match="R5 payload: request_hash is not 32 bytes"):
        dataclasses.replace(r, request_hash=b"short")
    with pytest.raises(ReceiptError, match=r"R5 payload: pcrs must be \[0, 1, 2, 8\]"):
        dataclasses.replace(r, pcrs={0: b"\x00" * 48})


def test_garbage_raises_only_our_errors(session) -> None:  # type: ignore[no-untyped-def]
    _, raw, _, att = session
    for cut in range(0, len(raw), 7):
        with pytest.raises(Error):
            verify_receipt(raw[:cut], att)


def test_receipt_json_view(session) -> None:  # type: ignore[no-untyped-def]
    _, _, r, _ = session
    j = r.to_json()
    # Bytes become hex, PCR indices text keys, integers and text stay as they are.
    expected = {k: v.hex() if isinstance(v, bytes) else v for k, v in r.to_map().items()}
    expected["pcrs"] = {str(i): p.hex() for i, p in sorted(r.pcrs.items())}
    assert j == expected
    assert json.loads(json.dumps(j)) == j


def test_pycose_agrees_with_our_cose(session, world) -> None:  # type: ignore[no-untyped-def]
    from pycose.keys.curves import Ed25519
    from pycose.keys.okp import OKPKey
    from pycose.messages.sign1message import Sign1Message

    from ephemeralml.common._cose import decode_sign1, verify_eddsa

    def verify_eddsa_pycose(env, public_key: bytes) -> bool:  # type: ignore[no-untyped-def]
        msg = Sign1Message.from_cose_obj([env.protected, env.unprotected, env.payload, env.signature], True)
        msg.key = OKPKey(crv=Ed25519, x=public_key)
        return bool(msg.verify_signature())

    _, raw, _, _ = session
    key = world.identity.receipt_key.public_key().public_bytes_raw()
    env = decode_sign1(raw, what="receipt", max_bytes=8192)
    assert verify_eddsa(env, key) is True and verify_eddsa_pycose(env, key) is True
    flipped = decode_sign1(raw[:-1] + bytes([raw[-1] ^ 1]), what="receipt", max_bytes=8192)
    assert verify_eddsa(flipped, key) is False and verify_eddsa_pycose(flipped, key) is False
