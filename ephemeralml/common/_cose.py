"""COSE_Sign1 with EdDSA (RFC 9052 §4.2 and §4.4, RFC 9053 §2.2).

Used for receipts, manifests, session proofs and signed policies. We decode the
envelope strictly ourselves, check the headers we insist on, and sign and verify the
RFC 9052 §4.4 Sig_structure over the bytes received with cryptography's Ed25519.
pycose (1.1 cannot decode cbor2 6's tagged values, see FACTS.md, and costs ~140 µs a
message) is the tests' second opinion, not a runtime dependency.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ._cbor import decode_strict, encode
from ._errors import DecodeError

__all__ = [
    "Sign1",
    "decode_sign1",
    "eddsa_kid",
    "encode_sign1",
    "sign_eddsa",
    "verify_eddsa",
]

_COSE_SIGN1_TAG = 18
#: RFC 9052 §4.2: COSE_Sign1 is tag 18 or untagged; no other tag is accepted.
_TOP_TAGS = frozenset({_COSE_SIGN1_TAG})
_ALG_EDDSA = -8


@dataclass(frozen=True)
class Sign1:
    """A decoded, *unverified* COSE_Sign1 envelope."""

    protected: bytes
    protected_map: dict[Any, Any]
    unprotected: dict[Any, Any]
    payload: bytes
    signature: bytes


def decode_sign1(data: bytes, *, what: str, max_bytes: int) -> Sign1:
    """Strictly decode one of our COSE_Sign1 objects; verifies nothing.

    One object, one encoding (protocol.md §1.2 D3): tag 18 (what :func:`sign_eddsa`
    writes; no 55799 or other wrapper, not untagged), an unprotected header that is an
    empty CBOR map (everything we sign carries its headers protected), and the
    shortest heads. Anything keyed by the hash of
    the bytes (audit log, stored receipts) then sees a single valid copy.
    """
    obj = decode_strict(data, what=what, max_bytes=max_bytes, top_tags=_TOP_TAGS)
    if not isinstance(obj, cbor2.CBORTag):
        # Everything we sign is tagged (sign_eddsa): an untagged copy is a second
        # encoding of the same object.
        raise DecodeError(f"{what} is not tagged COSE_Sign1 (18)")
    obj = obj.value
    if not isinstance(obj, list | tuple) or len(obj) != 4:
        raise DecodeError(f"{what} is not a 4-element COSE_Sign1 array")
    protected, unprotected, payload, signature = obj
    if not isinstance(protected, bytes) or not isinstance(payload, bytes):
        raise DecodeError(f"{what}: protected header and payload must be byte strings")
    if not isinstance(signature, bytes):
        raise DecodeError(f"{what}: signature must be a byte string")
    if not isinstance(unprotected, dict) or unprotected:
        raise DecodeError(f"{what}: unprotected header must be an empty map")
    # The signature covers the header and payload values, not how the envelope spells
    # their lengths: only the preferred (shortest-head) spelling is accepted. The
    # re-encode is never longer than the input.
    if encode_sign1(protected, payload, signature) != bytes(data):
        raise DecodeError(f"{what} is not in its one encoding (RFC 8949 §4.2.1 shortest heads)")
    pmap = decode_strict(protected, what=f"{what} protected header") if protected else {}
    if not isinstance(pmap, dict):
        raise DecodeError(f"{what}: protected header is not a map")
    return Sign1(protected, dict(pmap), {}, payload, signature)


def encode_sign1(
    protected: bytes, payload: bytes, signature: bytes, *, tagged: bool = True
) -> bytes:
    """The one encoding of a COSE_Sign1 with an empty unprotected header (D3)."""
    body = [protected, {}, payload, signature]
    return encode(cbor2.CBORTag(_COSE_SIGN1_TAG, body) if tagged else body)


def _sig_structure(protected: bytes, payload: bytes) -> bytes:
    # RFC 9052 §4.4: Sig_structure = ["Signature1", body_protected, external_aad, payload].
    return encode(["Signature1", protected, b"", payload])


def sign_eddsa(payload: bytes, key: Ed25519PrivateKey, *, kid: bytes) -> bytes:
    """A tagged COSE_Sign1 with protected header exactly ``{1: -8, 4: kid}``.

    Built directly (deterministic CBOR for the headers and the RFC 9052 §4.4
    Sig_structure, Ed25519 from cryptography): pycose's Sign1Message costs about
    140 µs a message where the signature itself is 21 µs, and receipts are signed on
    every request. The tests check that pycose verifies what this produces.
    """
    protected = encode({1: _ALG_EDDSA, 4: kid})
    signature = key.sign(_sig_structure(protected, payload))
    return encode_sign1(protected, payload, signature)


def eddsa_kid(env: Sign1) -> bytes:
    """The kid of one of our EdDSA envelopes, whose protected header is exactly
    ``{1: -8, 4: kid}`` (kid: 32 bytes) with a 64-byte Ed25519 signature; raises
    :class:`DecodeError` naming what is wrong. Receipts (R1), manifests (M1), signed
    policies (P3) and session proofs (A11) all use it; verifies nothing."""
    if set(env.protected_map) != {1, 4} or env.protected_map[1] != _ALG_EDDSA:
        raise DecodeError("protected header must be exactly {alg: EdDSA, kid}")
    kid = env.protected_map[4]
    if not isinstance(kid, bytes) or len(kid) != 32:
        raise DecodeError("kid must be 32 bytes")
    if len(env.signature) != 64:
        raise DecodeError("an Ed25519 signature is 64 bytes")
    return kid


def verify_eddsa(env: Sign1, public_key: bytes) -> bool:
    """Check ``env``'s EdDSA signature with a raw Ed25519 public key, over the bytes received.

    Raises only our errors for malformed input. (The same check as pycose's, without
    its per-message overhead; the tests compare the two.)
    """
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError as e:
        raise DecodeError(f"signature could not be checked: {e}") from e
    try:
        key.verify(env.signature, _sig_structure(env.protected, env.payload))
    except InvalidSignature:
        return False
    return True


ALG_EDDSA = _ALG_EDDSA
