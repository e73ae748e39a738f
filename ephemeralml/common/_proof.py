"""Cached-mode session proofs (protocol.md §2.2.1, ARCHITECTURE.md flow 2).

On real hardware an NSM attestation costs tens of milliseconds. In cached mode the
enclave attests once every few minutes: a document whose binding carries the
all-zero session id :data:`CACHED_SESSION_ID` (it serves many sessions) and the
long-lived receipt key. Each session then gets only a *proof*: a COSE_Sign1 by that
receipt key over the client's nonce, a fresh X25519 key, a fresh session id and the
document's hash. The client verifies the document (A1-A6, A8, A9; no A7, the document
is not for its nonce) and then the proof (A11), so freshness rests on the signature
over its nonce and the document's age on the policy.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ._binding import EnclaveBinding
from ._cbor import decode_deterministic, encode
from ._cose import decode_sign1, eddsa_kid, sign_eddsa, verify_eddsa
from ._errors import AttestationError, DecodeError, RemoteProtocolError
from ._messages import NONCE_BYTES, SESSION_ID_BYTES

__all__ = ["CACHED_SESSION_ID", "MAX_PROOF_BYTES", "SessionProof", "verify_session_proof"]

#: The session id in the binding of a cached document: it names no one session.
CACHED_SESSION_ID = bytes(SESSION_ID_BYTES)
#: A proof is ~250 bytes.
MAX_PROOF_BYTES = 1024
_KEYS = {"nonce", "pk", "sid", "att"}


@dataclass(frozen=True)
class SessionProof:
    nonce: bytes
    public_key: bytes  # the session's X25519 key
    session_id: bytes
    attestation_sha256: bytes

    def __post_init__(self) -> None:
        if (
            len(self.nonce) != NONCE_BYTES
            or len(self.public_key) != 32
            or len(self.session_id) != SESSION_ID_BYTES
            or self.session_id == CACHED_SESSION_ID
            or len(self.attestation_sha256) != 32
        ):
            raise AttestationError("A11 proof: malformed session proof")

    def to_cbor(self) -> bytes:
        return encode(
            {
                "nonce": self.nonce,
                "pk": self.public_key,
                "sid": self.session_id,
                "att": self.attestation_sha256,
            }
        )

    def sign(self, receipt_key: Ed25519PrivateKey) -> bytes:
        return sign_eddsa(self.to_cbor(), receipt_key, kid=self.attestation_sha256)


def verify_session_proof(
    raw: bytes, binding: EnclaveBinding, *, nonce: bytes, attestation_sha256: bytes
) -> SessionProof:
    """protocol.md §3 A11: the proof is signed by the attested receipt key, for this
    document and this client's nonce. The payload is decoded only after the signature."""
    try:
        env = decode_sign1(raw, what="session proof", max_bytes=MAX_PROOF_BYTES)
    except RemoteProtocolError as e:  # DecodeError or LimitError
        raise AttestationError(f"A11 proof: {e}") from e
    try:
        kid = eddsa_kid(env)
    except DecodeError as e:
        raise AttestationError(f"A11 proof: {e}") from e
    if not hmac.compare_digest(kid, attestation_sha256):
        raise AttestationError("A11 proof: kid must be the document's hash")
    if not verify_eddsa(env, binding.receipt_key):
        raise AttestationError("A11 proof: not signed by the attested receipt key")
    try:
        m = decode_deterministic(env.payload, what="session proof")
    except RemoteProtocolError as e:  # DecodeError or LimitError
        raise AttestationError(f"A11 proof: {e}") from e
    if (
        not isinstance(m, dict)
        or set(m) != _KEYS
        or not all(isinstance(v, bytes) for v in m.values())
    ):
        raise AttestationError("A11 proof: wrong fields")
    proof = SessionProof(m["nonce"], m["pk"], m["sid"], m["att"])
    if not hmac.compare_digest(proof.nonce, nonce):
        raise AttestationError("A11 proof: nonce does not match the challenge")
    if not hmac.compare_digest(proof.attestation_sha256, attestation_sha256):
        raise AttestationError("A11 proof: made for another attestation document")
    return proof
