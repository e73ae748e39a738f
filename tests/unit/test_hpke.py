"""HPKE (protocol.md §4): the RFC 9180 vectors of our suite, and how sessions bind it."""

from __future__ import annotations

import json

import pytest

from ephemeralml.common._errors import CiphertextError, LocalProtocolError
from ephemeralml.common._hpke import (
    HPKE_SUITE,
    ClientChannel,
    EnclaveSessionKey,
    session_info,
)
from tests.vectors_path import REAL_VECTORS

# Our suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305, base mode.
_OURS = {"mode": 0, "kem_id": 0x20, "kdf_id": 1, "aead_id": 3}


def _vector() -> dict:  # type: ignore[type-arg]
    vectors = json.loads((REAL_VECTORS / "hpke_vectors.json").read_text())
    (v,) = [v for v in vectors if all(v[k] == want for k, want in _OURS.items())]
    return v  # type: ignore[no-any-return]


def test_rfc9180_vector_of_our_suite() -> None:
    v = _vector()
    h = bytes.fromhex
    recipient = HPKE_SUITE.kem.derive_key_pair(h(v["ikmR"]))
    ephemeral = HPKE_SUITE.kem.derive_key_pair(h(v["ikmE"]))
    assert recipient.public_key.to_public_bytes() == h(v["pkRm"])
    assert ephemeral.public_key.to_public_bytes() == h(v["pkEm"])
    enc, sender = HPKE_SUITE.create_sender_context(
        recipient.public_key, info=h(v["info"]), eks=ephemeral
    )
    assert enc == h(v["enc"])
    receiver = HPKE_SUITE.create_recipient_context(enc, recipient.private_key, info=h(v["info"]))
    assert len(v["encryptions"]) == 257
    for e in v["encryptions"]:
        ct = sender.seal(h(e["pt"]), aad=h(e["aad"]))
        assert ct == h(e["ct"])
        assert receiver.open(ct, aad=h(e["aad"])) == h(e["pt"])
    for x in v["exports"]:
        assert sender.export(h(x["exporter_context"]), x["L"]) == h(x["exported_value"])
        assert receiver.export(h(x["exporter_context"]), x["L"]) == h(x["exported_value"])


ATT = bytes(range(32))


def _pair(att_client: bytes = ATT, att_enclave: bytes = ATT):  # type: ignore[no-untyped-def]
    key = EnclaveSessionKey(b"k" * 32)
    client = ClientChannel(key.public_bytes, att_client)
    enclave = key.open_channel(client.enc, att_enclave)
    return client, enclave


def test_request_and_response_round_trip() -> None:
    client, enclave = _pair()
    for seq in range(3):
        ct = client.seal_request(seq, b"req %d" % seq, b"aad")
        assert enclave.open_request(seq, ct, b"aad") == b"req %d" % seq
    # Responses in any order, each under its own nonce.
    cts = {seq: enclave.seal_response(seq, b"resp %d" % seq, b"a") for seq in (2, 0, 1)}
    assert len(set(cts.values())) == 3
    for seq in (1, 2, 0):
        assert client.open_response(seq, cts[seq], b"a") == b"resp %d" % seq


def test_info_binds_the_attestation_hash() -> None:
    client, enclave = _pair(att_enclave=bytes(32))
    ct = client.seal_request(0, b"secret", b"aad")
    with pytest.raises(CiphertextError, match="request 0 failed authentication"):
        enclave.open_request(0, ct, b"aad")


def test_info_layout() -> None:
    assert session_info(ATT) == b"ephemeralml/1 session\x00" + ATT
    with pytest.raises(LocalProtocolError, match="attestation hash must be 32 bytes"):
        session_info(b"short")


def test_aad_is_authenticated() -> None:
    client, enclave = _pair()
    ct = client.seal_request(0, b"x", b"aad")
    with pytest.raises(CiphertextError, match="request 0 failed authentication"):
        enclave.open_request(0, ct, b"other aad")


def test_response_under_wrong_seq_fails() -> None:
    client, enclave = _pair()
    ct = enclave.seal_response(4, b"x", b"a")
    with pytest.raises(CiphertextError, match="response 5 failed authentication"):
        client.open_response(5, ct, b"a")


def test_flipped_response_bit_fails() -> None:
    client, enclave = _pair()
    ct = bytearray(enclave.seal_response(0, b"payload", b"a"))
    ct[3] ^= 0x10
    with pytest.raises(CiphertextError, match="response 0 failed authentication"):
        client.open_response(0, bytes(ct), b"a")


def test_requests_must_be_sealed_in_order() -> None:
    client, _ = _pair()
    with pytest.raises(LocalProtocolError, match=r"requests must be sealed in order \(expected 0\)"):
        client.seal_request(1, b"x", b"")


def test_client_rejects_a_key_that_is_not_x25519() -> None:
    with pytest.raises(CiphertextError, match="attested public_key is 33 bytes, not an X25519 key"):
        ClientChannel(b"\x04" * 33, ATT)


def test_the_test_vector_seam_fixes_the_ephemeral_key_and_nothing_else() -> None:
    """``ephemeral_ikm`` (conformance vectors only) gives the RFC 9180 DeriveKeyPair
    key as ``enc``; without it every channel draws a fresh one."""
    from ephemeralml.common._hpke import HPKE_SUITE

    key = EnclaveSessionKey(b"k" * 32)
    fixed = [ClientChannel(key.public_bytes, ATT, ephemeral_ikm=b"e" * 32) for _ in range(2)]
    expected = HPKE_SUITE.kem.derive_key_pair(b"e" * 32).public_key.to_public_bytes()
    assert fixed[0].enc == fixed[1].enc == expected
    assert ClientChannel(key.public_bytes, ATT).enc != ClientChannel(key.public_bytes, ATT).enc
    # The fixed channel still opens only under its own attestation.
    enclave = key.open_channel(fixed[0].enc, ATT)
    assert enclave.open_request(0, fixed[0].seal_request(0, b"x", b"a"), b"a") == b"x"
