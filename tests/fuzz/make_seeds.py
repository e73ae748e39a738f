"""Make the fixed fuzz world and the seed corpus (run once; the output is committed).

    .venv/bin/python -m tests.fuzz.make_seeds [--world]

``--world`` also re-makes ``tests/fuzz/world/`` (a new mock CA and documents); without
it the committed world is kept and only the seeds are written. Seeds are small valid
inputs of each target, named ``seed-*``; the fuzzer adds and minimises the rest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from pathlib import Path

import cbor2
from asn1crypto import cms
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ephemeralml.client._policy import policy_signer_kid, sign_policy
from ephemeralml.common._attestation import parse_unverified
from ephemeralml.common._binding import EnclaveBinding
from ephemeralml.common._bundle import BundleFile, Manifest, owner_key_id, sign_manifest
from ephemeralml.common._cbor import encode
from ephemeralml.common._cms import spki_key_id
from ephemeralml.common._frame import encode_frame
from ephemeralml.common._messages import (
    ClientHello,
    EmbedRequest,
    EmbedResult,
    ErrorFrame,
    RequestError,
    SealedRequest,
    SealedResponse,
    ServerAttest,
    SessionOpen,
    encode_response_body,
)
from ephemeralml.common._proof import CACHED_SESSION_ID, SessionProof
from ephemeralml.common._receipt import RECEIPT_PCRS, Receipt, sign_receipt
from ephemeralml.mock._nsm import MockNsm, mock_measurements
from tests.fuzz import world as w


def _write(target: str, name: str, data: bytes) -> None:
    d = w.CORPUS_DIR / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data)


def _binding(session_id: bytes) -> EnclaveBinding:
    return EnclaveBinding(
        protocol_version=1,
        session_id=session_id,
        receipt_key=w.raw_public(w.RECEIPT_KEY),
        models={w.MODEL: w.MODEL_DIGEST},
        key_releases={w.MODEL: w.KEY_RELEASE},
        policy_version=7,
        mode="mock",
    )


def make_world() -> None:
    w.WORLD_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pcrs = mock_measurements(
            code_digest=hashlib.sha384(b"fuzz code").digest(),
            model_digest=w.MODEL_DIGEST,
            runtime_id="fuzz",
        )
        nsm = MockNsm.load_or_create(Path(tmp), pcrs)
        session_key = X25519PrivateKey.from_private_bytes(hashlib.sha256(b"fuzz x25519").digest())
        fresh = nsm.get_attestation_doc(
            public_key=session_key.public_key().public_bytes_raw(),
            user_data=_binding(w.SESSION_ID).to_cbor(),
            nonce=w.NONCE,
        )
        cached = nsm.get_attestation_doc(
            public_key=None, user_data=_binding(CACHED_SESSION_ID).to_cbor(), nonce=None
        )
        (w.WORLD_DIR / "mock_root.der").write_bytes(nsm.root_certificate_der)
    (w.WORLD_DIR / "attestation_fresh.cbor").write_bytes(fresh)
    (w.WORLD_DIR / "attestation_cached.cbor").write_bytes(cached)


def _receipt(doc: bytes, session_id: bytes, nonce: bytes) -> bytes:
    parsed = parse_unverified(doc)
    r = Receipt(
        receipt_id=bytes(range(16)),
        session_id=session_id,
        seq=3,
        model_id=w.MODEL,
        model_digest=w.MODEL_DIGEST,
        key_release=w.KEY_RELEASE,
        request_hash=hashlib.sha256(b"request").digest(),
        response_hash=hashlib.sha256(b"response").digest(),
        attestation_hash=hashlib.sha256(doc).digest(),
        pcrs={i: parsed.pcrs[i] for i in RECEIPT_PCRS},
        policy_version=7,
        mode="mock",
        time_ms=parsed.timestamp_ms + 1000,
        duration_us=1234,
        client_nonce=nonce,
        transcript_hash=hashlib.sha256(b"transcript").digest(),
    )
    return sign_receipt(r, w.RECEIPT_KEY)


def _manifest() -> bytes:
    data = b"weights" * 100
    m = Manifest(
        model_id=w.MODEL,
        version="1",
        files=(BundleFile("model.safetensors", len(data), hashlib.sha256(data).digest()),),
        plaintext_size=len(data),
        plaintext_sha256=hashlib.sha256(data).digest(),
        ciphertext_size=len(data) + 16,
        ciphertext_sha256=hashlib.sha256(b"ciphertext").digest(),
        chunk_size=4096,
        bundle_id=bytes(16),
        salt=bytes(range(32)),
        kms_key_id="arn:aws:kms:us-east-1:111122223333:key/fuzz",
        wrapped_key_sha256=hashlib.sha256(b"wrapped").digest(),
        created="2026-12-01T00:00:00Z",
        owner=owner_key_id(w.raw_public(w.OWNER_KEY)),
    )
    return sign_manifest(m, w.OWNER_KEY)


def cms_envelope(key: rsa.RSAPrivateKey, plaintext: bytes = bytes(range(32))) -> bytes:
    """A DER CiphertextForRecipient in KMS's profile for ``key``."""
    cek, iv = os.urandom(32), os.urandom(16)
    wrapped = key.public_key().encrypt(
        cek, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    )
    padder = sym_padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    enc = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    sha256 = {"algorithm": "sha256"}
    ktri = {
        "version": "v2",
        "rid": cms.RecipientIdentifier(
            name="subject_key_identifier", value=spki_key_id(key.public_key())
        ),
        "key_encryption_algorithm": {
            "algorithm": "rsaes_oaep",
            "parameters": {
                "hash_algorithm": sha256,
                "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": sha256},
                "p_source_algorithm": {"algorithm": "p_specified", "parameters": b""},
            },
        },
        "encrypted_key": wrapped,
    }
    enveloped = {
        "version": "v2",
        "recipient_infos": [cms.RecipientInfo(name="ktri", value=ktri)],
        "encrypted_content_info": {
            "content_type": "data",
            "content_encryption_algorithm": {"algorithm": "aes256_cbc", "parameters": iv},
            "encrypted_content": enc.update(padded) + enc.finalize(),
        },
    }
    der: bytes = cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump()
    return der


def make_seeds() -> None:
    world = w.load()
    fresh, cached = world.fresh_doc, world.cached_doc
    # cbor: small values of every major type, and our own documents.
    for i, v in enumerate(
        [0, -1, 2**64 - 1, b"\x00", "t", [1, [2]], {"a": 1, 1: b""}, 1.5, None, True]
    ):
        _write("cbor", f"value-{i}", encode(v))
    _write("cbor", "tag2", cbor2.dumps(2**70))
    _write("cbor", "shared", cbor2.dumps([[1, 2]] * 2, value_sharing=True))
    _write("cbor", "stringref", cbor2.dumps(["abcd"] * 3, string_referencing=True))
    # frame: one message of each type, framed; and a pair of frames.
    hello = encode_frame(ClientHello(1, w.NONCE, "fresh").to_cbor())
    frames = {
        "hello": hello,
        "attest": encode_frame(ServerAttest(1, cached, b"p" * 10).to_cbor()),
        "open": encode_frame(SessionOpen(bytes(32)).to_cbor()),
        "req": encode_frame(SealedRequest(0, b"c" * 40).to_cbor()),
        "resp": encode_frame(SealedResponse(1, b"c" * 40).to_cbor()),
        "error": encode_frame(ErrorFrame("decode", "bad").to_cbor()),
        "body-request": encode_frame(EmbedRequest(w.MODEL, ("a", "b")).to_cbor()),
        "body-response": encode_frame(
            encode_response_body(EmbedResult(w.MODEL, 1, 1, bytes(4)), b"r", None)
        ),
        "body-error": encode_frame(encode_response_body(None, None, RequestError("x", "y"))),
        "two": hello + encode_frame(SessionOpen(bytes(32)).to_cbor()),
    }
    for name, f in frames.items():
        _write("frame", name, f)
    # cose: proof, binding, signed policy, generic Sign1.
    proof = SessionProof(
        w.NONCE, bytes(range(32)), w.SESSION_ID, hashlib.sha256(cached).digest()
    ).sign(w.RECEIPT_KEY)
    _write("cose", "proof", proof)
    _write("cose", "binding", _binding(w.SESSION_ID).to_cbor())
    body = {"version": 5, "root": "mock", "measurements": [{"PCR0": "00" * 48}]}
    signed_policy, _ = sign_policy(json.dumps(body).encode(), w.POLICY_KEY, where="seed")
    assert policy_signer_kid(w.raw_public(w.POLICY_KEY))
    _write("cose", "policy", signed_policy)
    _write("cose", "policy-json", json.dumps(body).encode())
    # receipt: one for each document.
    _write("receipt", "fresh", _receipt(fresh, w.SESSION_ID, w.NONCE))
    _write("receipt", "cached", _receipt(cached, bytes(range(1, 17)), os.urandom(32)))
    # attestation: the two mock documents (real AWS ones are added at run time from
    # tests/vectors/real).
    _write("attestation", "fresh", fresh)
    _write("attestation", "cached", cached)
    _write("bundle", "manifest", _manifest())
    _write("cms", "envelope", cms_envelope(rsa.generate_private_key(65537, 2048)))
    # session: a few scripts (stage, mode, mutation, payload), see targets.session.
    for i, script in enumerate(
        [b"\x00\x00\x00", b"\x01\x00\x01\x05\x01", b"\x02\x01\x02\x00", b"\x03\x00\x03\x10\x01",
         b"\x04\x01\x01\x40\x80", b"\x03\x00\x04", b"\x04\x00\x05\x07"]
    ):  # fmt: skip
        _write("session", f"script-{i}", script)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--world", action="store_true", help="also re-make tests/fuzz/world/")
    args = ap.parse_args()
    if args.world:
        make_world()
        w.load.cache_clear()
    make_seeds()


if __name__ == "__main__":
    main()
