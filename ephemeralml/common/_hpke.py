"""Session encryption (protocol.md §4).

Requests are sealed with HPKE (RFC 9180) in base mode with the suite
DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / ChaCha20-Poly1305, to the X25519 key that
the enclave's attestation document carries in ``public_key``. The HPKE ``info``
binds the SHA-256 of that attestation document, so a context set up against any
other document (a swapped key, a replayed attestation) cannot open anything.

Responses are sealed with ChaCha20-Poly1305 under a key and base nonce *exported*
from the same HPKE context (RFC 9180 §5.3), with the per-response nonce computed
like HPKE's own (base_nonce XOR seq), so responses may be sent in any order while
every (key, nonce) pair is used once.

The chunks of a streamed answer (§2.8) are sealed the same way under a second exported
key, with the nonce ``base XOR (u64be(seq) ‖ u32be(k))``: chunk ``k`` of the answer to
request ``seq`` has a nonce of its own, so a chunk opens only in its own place.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKeyPair

from ._errors import CiphertextError, LocalProtocolError, RemoteProtocolError

__all__ = [
    "HPKE_SUITE",
    "PUBLIC_KEY_BYTES",
    "ClientChannel",
    "EnclaveChannel",
    "EnclaveSessionKey",
    "session_info",
]

HPKE_SUITE = CipherSuite.new(
    KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.CHACHA20_POLY1305
)

#: X25519 public keys are 32 bytes (RFC 9180 §7.1: Npk = 32).
PUBLIC_KEY_BYTES = 32

_INFO_LABEL = b"ephemeralml/1 session\x00"
_RESPONSE_KEY_LABEL = b"ephemeralml/1 response key"
_RESPONSE_NONCE_LABEL = b"ephemeralml/1 response nonce"
_CHUNK_KEY_LABEL = b"ephemeralml/1 chunk key"
_CHUNK_NONCE_LABEL = b"ephemeralml/1 chunk nonce"
_NONCE_BYTES = 12
#: RFC 9180 §5.2: a context must not seal more than 2^96-1 messages; we stop far
#: earlier, and a session this long is a bug or an attack.
MAX_SEQ = 2**32
#: Chunks one streamed answer may have: their number takes the last 4 nonce bytes.
MAX_CHUNKS = 2**32


def session_info(attestation_sha256: bytes) -> bytes:
    """HPKE ``info`` for a session: a fixed label and the attestation document's hash."""
    if len(attestation_sha256) != 32:
        raise LocalProtocolError("attestation hash must be 32 bytes")
    return _INFO_LABEL + attestation_sha256


def _response_nonce(base: bytes, seq: int) -> bytes:
    if not 0 <= seq < MAX_SEQ:
        raise LocalProtocolError(f"sequence number {seq} out of range")
    return bytes(a ^ b for a, b in zip(base, seq.to_bytes(_NONCE_BYTES, "big"), strict=True))


def _chunk_nonce(base: bytes, seq: int, k: int) -> bytes:
    if not 0 <= seq < MAX_SEQ or not 0 <= k < MAX_CHUNKS:
        raise LocalProtocolError(f"chunk {k} of answer {seq} out of range")
    where = seq.to_bytes(8, "big") + k.to_bytes(4, "big")
    return bytes(a ^ b for a, b in zip(base, where, strict=True))


class EnclaveSessionKey:
    """A fresh X25519 key pair made by the enclave for one session."""

    def __init__(self, ikm: bytes) -> None:
        if len(ikm) < 32:
            raise LocalProtocolError("session key seed must be at least 32 bytes")
        self._pair: KEMKeyPair = HPKE_SUITE.kem.derive_key_pair(ikm)
        self.public_bytes: bytes = self._pair.public_key.to_public_bytes()

    def open_channel(self, enc: bytes, attestation_sha256: bytes) -> EnclaveChannel:
        try:
            ctx = HPKE_SUITE.create_recipient_context(
                enc, self._pair.private_key, info=session_info(attestation_sha256)
            )
        except Exception as e:  # pyhpke raises its own types on a bad enc
            raise RemoteProtocolError("open: the encapsulated key is not valid") from e
        return EnclaveChannel(ctx)


class _Channel:
    def __init__(self, ctx: object) -> None:
        self._ctx = ctx
        self._resp = ChaCha20Poly1305(ctx.export(_RESPONSE_KEY_LABEL, 32))  # type: ignore[attr-defined]
        self._resp_base = ctx.export(_RESPONSE_NONCE_LABEL, _NONCE_BYTES)  # type: ignore[attr-defined]
        self._chunk = ChaCha20Poly1305(ctx.export(_CHUNK_KEY_LABEL, 32))  # type: ignore[attr-defined]
        self._chunk_base = ctx.export(_CHUNK_NONCE_LABEL, _NONCE_BYTES)  # type: ignore[attr-defined]


class ClientChannel(_Channel):
    """The client's half: seals requests, opens responses."""

    def __init__(
        self,
        enclave_public_key: bytes,
        attestation_sha256: bytes,
        *,
        ephemeral_ikm: bytes | None = None,
    ) -> None:
        """``ephemeral_ikm``: for reproducible test vectors only, the seed of the
        ephemeral key pair (RFC 9180 DeriveKeyPair); in use HPKE draws a fresh one."""
        if len(enclave_public_key) != PUBLIC_KEY_BYTES:
            raise CiphertextError(
                f"attested public_key is {len(enclave_public_key)} bytes, not an X25519 key"
            )
        try:
            pk = HPKE_SUITE.kem.deserialize_public_key(enclave_public_key)
            # RFC 9180 §7.1.4: DH with a low-order point gives the all-zero secret, and
            # cryptography refuses it with a bare ValueError (issue 7, finding 5).
            eks = None if ephemeral_ikm is None else HPKE_SUITE.kem.derive_key_pair(ephemeral_ikm)
            self.enc, ctx = HPKE_SUITE.create_sender_context(
                pk, info=session_info(attestation_sha256), eks=eks
            )
        except Exception as e:
            raise CiphertextError(
                f"attested public_key is not a usable X25519 key ({type(e).__name__}: {e})"
            ) from e
        super().__init__(ctx)
        self._next_seal = 0

    def seal_request(self, seq: int, plaintext: bytes, aad: bytes) -> bytes:
        # HPKE contexts number their messages; ours must agree (§4 check H2).
        if seq != self._next_seal:
            raise LocalProtocolError(
                f"requests must be sealed in order (expected {self._next_seal})"
            )
        self._next_seal += 1
        return self._ctx.seal(plaintext, aad=aad)  # type: ignore[attr-defined,no-any-return]

    def open_response(self, seq: int, ciphertext: bytes, aad: bytes) -> bytes:
        try:
            return self._resp.decrypt(_response_nonce(self._resp_base, seq), ciphertext, aad)
        except InvalidTag as e:
            # §4 check H3.
            raise CiphertextError(f"response {seq} failed authentication") from e

    def open_chunk(self, seq: int, k: int, ciphertext: bytes, aad: bytes) -> bytes:
        try:
            return self._chunk.decrypt(_chunk_nonce(self._chunk_base, seq, k), ciphertext, aad)
        except InvalidTag as e:
            # §2.8 check S2.
            raise CiphertextError(f"S2 chunk {k} of answer {seq} failed authentication") from e


class EnclaveChannel(_Channel):
    """The enclave's half: opens requests, seals responses."""

    def __init__(self, ctx: object) -> None:
        super().__init__(ctx)
        self._next_open = 0

    def open_request(self, seq: int, ciphertext: bytes, aad: bytes) -> bytes:
        # §4 check H2: requests are opened strictly in order; a replayed, dropped or
        # reordered request cannot open under the HPKE sequence.
        if seq != self._next_open:
            raise CiphertextError(f"request {seq} out of order (expected {self._next_open})")
        try:
            pt = self._ctx.open(ciphertext, aad=aad)  # type: ignore[attr-defined]
        except Exception as e:  # pyhpke wraps InvalidTag in its own OpenError
            raise CiphertextError(f"request {seq} failed authentication") from e
        self._next_open += 1
        return pt  # type: ignore[no-any-return]

    def seal_response(self, seq: int, plaintext: bytes, aad: bytes) -> bytes:
        return self._resp.encrypt(_response_nonce(self._resp_base, seq), plaintext, aad)

    def seal_chunk(self, seq: int, k: int, plaintext: bytes, aad: bytes) -> bytes:
        return self._chunk.encrypt(_chunk_nonce(self._chunk_base, seq, k), plaintext, aad)
