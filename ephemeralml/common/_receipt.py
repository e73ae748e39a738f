"""Attested Execution Receipts (protocol.md §5).

A receipt is a COSE_Sign1 (EdDSA, Ed25519) whose protected header is exactly
``{1: -8, 4: kid}`` with ``kid`` = SHA-256 of the attestation document of the
session, and whose payload is the deterministic CBOR of :class:`Receipt`. The
receipt key is bound into that attestation document's ``user_data``, so anyone
holding the receipt and the document can verify it offline, years later, without
the plaintext: the document is checked at its own timestamp (its chain was valid
then), the receipt's time must fall inside the session's lifetime.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ._binding import MODES, EnclaveBinding
from ._cbor import decode_deterministic, encode
from ._cose import decode_sign1, eddsa_kid, sign_eddsa, verify_eddsa
from ._errors import DecodeError, Error, ReceiptError, RemoteProtocolError
from ._messages import NONCE_BYTES, SESSION_ID_BYTES
from ._proof import CACHED_SESSION_ID

if TYPE_CHECKING:
    from ._attestation import VerifiedAttestation

__all__ = [
    "MAX_RECEIPT_BYTES",
    "MAX_SESSION_S",
    "RECEIPT_PCRS",
    "RECEIPT_VERSION",
    "Receipt",
    "ReceiptExpectations",
    "VerifiedReceipt",
    "sign_receipt",
    "verify_receipt",
]

#: Version 2 added ``truncate`` and ``truncated``; version 1 receipts (without them)
#: still verify, so that a receipt stays checkable for as long as it is kept.
RECEIPT_VERSION = 2
RECEIPT_VERSIONS = (1, 2)

#: A receipt is about 700 bytes; 8 KiB bounds what a verifier will parse.
MAX_RECEIPT_BYTES = 8 * 1024

#: The longest a session may live, in seconds. The enclave ends sessions older
#: than this, so a receipt dated later than its attestation plus this is forged or
#: misfiled (check R10).
MAX_SESSION_S = 3600

#: The PCRs a receipt copies from the attestation: image, kernel, application,
#: EIF signing certificate.
RECEIPT_PCRS = (0, 1, 2, 8)

_HASH = 32
_KEYS = {
    "v",
    "receipt_id",
    "session_id",
    "seq",
    "model_id",
    "model_digest",
    "key_release",
    "request_hash",
    "response_hash",
    "attestation_hash",
    "pcrs",
    "policy_version",
    "mode",
    "time_ms",
    "duration_us",
    "client_nonce",
    "transcript_hash",
}
_KEYS_V2 = _KEYS | {"truncate", "truncated"}


def _uint(m: Mapping[str, Any], key: str) -> int:
    v = m[key]
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ReceiptError(f"R5 payload: {key} is not an unsigned integer")
    return v


def _bytes(m: Mapping[str, Any], key: str, length: int) -> bytes:
    v = m[key]
    if not isinstance(v, bytes) or len(v) != length:
        raise ReceiptError(f"R5 payload: {key} is not {length} bytes")
    return v


@dataclass(frozen=True)
class Receipt:
    """The signed content of a receipt. Every field is checked when built."""

    receipt_id: bytes
    session_id: bytes
    seq: int
    model_id: str
    model_digest: bytes
    key_release: bytes
    request_hash: bytes
    response_hash: bytes
    attestation_hash: bytes
    pcrs: Mapping[int, bytes]
    policy_version: int
    mode: str
    time_ms: int
    duration_us: int
    client_nonce: bytes
    transcript_hash: bytes
    #: The client asked that inputs over the model's token limit be cut (v2).
    truncate: bool = False
    #: The indices, in the request, of the inputs that were cut (v2; ascending).
    truncated: tuple[int, ...] = ()
    version: int = RECEIPT_VERSION

    def __post_init__(self) -> None:
        for name, n in (
            ("receipt_id", 16),
            ("session_id", SESSION_ID_BYTES),
            ("model_digest", _HASH),
            ("key_release", _HASH),
            ("request_hash", _HASH),
            ("response_hash", _HASH),
            ("attestation_hash", _HASH),
            ("client_nonce", NONCE_BYTES),
            ("transcript_hash", _HASH),
        ):
            v = getattr(self, name)
            if not isinstance(v, bytes) or len(v) != n:
                raise ReceiptError(f"R5 payload: {name} is not {n} bytes")
        if self.version not in RECEIPT_VERSIONS:
            raise ReceiptError(f"R5 payload: unknown receipt version {self.version}")
        if not isinstance(self.truncate, bool) or not isinstance(self.truncated, tuple):
            raise ReceiptError("R5 payload: truncate must be a boolean, truncated a list")
        if self.version == 1 and (self.truncate or self.truncated):
            raise ReceiptError("R5 payload: a version 1 receipt has no truncation")
        if self.truncated and not self.truncate:
            raise ReceiptError("R5 payload: inputs were truncated without truncate")
        if any(
            not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in self.truncated
        ) or list(self.truncated) != sorted(set(self.truncated)):
            raise ReceiptError("R5 payload: truncated must be ascending input indices")
        if self.mode not in MODES:
            raise ReceiptError(f"R5 payload: unknown mode {self.mode!r}")
        if not self.model_id:
            raise ReceiptError("R5 payload: empty model_id")
        if set(self.pcrs) != set(RECEIPT_PCRS) or any(
            not isinstance(v, bytes) or len(v) != 48 for v in self.pcrs.values()
        ):
            raise ReceiptError(f"R5 payload: pcrs must be {list(RECEIPT_PCRS)} of 48 bytes each")
        for name in ("seq", "policy_version", "time_ms", "duration_us"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ReceiptError(f"R5 payload: {name} is not an unsigned integer")
        object.__setattr__(self, "pcrs", MappingProxyType(dict(self.pcrs)))

    @property
    def receipt_id_hex(self) -> str:
        return self.receipt_id.hex()

    def to_map(self) -> dict[str, Any]:
        return {
            "v": self.version,
            "receipt_id": self.receipt_id,
            "session_id": self.session_id,
            "seq": self.seq,
            "model_id": self.model_id,
            "model_digest": self.model_digest,
            "key_release": self.key_release,
            "request_hash": self.request_hash,
            "response_hash": self.response_hash,
            "attestation_hash": self.attestation_hash,
            "pcrs": dict(self.pcrs),
            "policy_version": self.policy_version,
            "mode": self.mode,
            "time_ms": self.time_ms,
            "duration_us": self.duration_us,
            "client_nonce": self.client_nonce,
            "transcript_hash": self.transcript_hash,
            **(
                {"truncate": self.truncate, "truncated": list(self.truncated)}
                if self.version >= 2
                else {}
            ),
        }

    def to_cbor(self) -> bytes:
        return encode(self.to_map())

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly view (bytes as hex) for CLIs and audit logs."""
        out: dict[str, Any] = {}
        for k, v in self.to_map().items():
            if isinstance(v, bytes):
                out[k] = v.hex()
            elif k == "pcrs":
                out[k] = {str(i): p.hex() for i, p in sorted(v.items())}
            else:
                out[k] = v
        return out

    @classmethod
    def from_cbor(cls, data: bytes) -> Receipt:
        try:
            m = decode_deterministic(data, what="receipt payload", max_bytes=MAX_RECEIPT_BYTES)
        except RemoteProtocolError as e:  # DecodeError or LimitError
            raise ReceiptError(f"R5 payload: {e}") from e
        if not isinstance(m, dict) or set(m) not in (_KEYS, _KEYS_V2):
            raise ReceiptError("R5 payload: not a receipt (wrong fields)")
        version = _uint(m, "v")
        if (set(m) == _KEYS_V2) != (version >= 2):
            raise ReceiptError(f"R5 payload: wrong fields for receipt version {version}")
        truncate, truncated = m.get("truncate", False), m.get("truncated", [])
        if not isinstance(truncate, bool) or not isinstance(truncated, list):
            raise ReceiptError("R5 payload: truncate must be a boolean, truncated a list")
        pcrs = m["pcrs"]
        if not isinstance(pcrs, dict) or not all(
            isinstance(k, int) and not isinstance(k, bool) for k in pcrs
        ):
            raise ReceiptError("R5 payload: pcrs is not a map of integers to bytes")
        if not isinstance(m["model_id"], str) or not isinstance(m["mode"], str):
            raise ReceiptError("R5 payload: model_id and mode must be text")
        return cls(
            version=version,
            truncate=truncate,
            truncated=tuple(truncated),
            receipt_id=_bytes(m, "receipt_id", 16),
            session_id=_bytes(m, "session_id", SESSION_ID_BYTES),
            seq=_uint(m, "seq"),
            model_id=m["model_id"],
            model_digest=_bytes(m, "model_digest", _HASH),
            key_release=_bytes(m, "key_release", _HASH),
            request_hash=_bytes(m, "request_hash", _HASH),
            response_hash=_bytes(m, "response_hash", _HASH),
            attestation_hash=_bytes(m, "attestation_hash", _HASH),
            pcrs=pcrs,
            policy_version=_uint(m, "policy_version"),
            mode=m["mode"],
            time_ms=_uint(m, "time_ms"),
            duration_us=_uint(m, "duration_us"),
            client_nonce=_bytes(m, "client_nonce", NONCE_BYTES),
            transcript_hash=_bytes(m, "transcript_hash", _HASH),
        )


def sign_receipt(receipt: Receipt, key: Ed25519PrivateKey) -> bytes:
    """The COSE_Sign1 bytes of ``receipt``, signed by the enclave's receipt key."""
    return sign_eddsa(receipt.to_cbor(), key, kid=receipt.attestation_hash)


def receipt_attestation_hash(data: bytes) -> bytes:
    """The ``kid`` of a receipt: which attestation document it needs (check R1/R2).

    Reads only the protected header; verifies nothing.
    """
    env = _envelope(data)
    return env.protected_map[4]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class ReceiptExpectations:
    """What the party that ran the session knows and checks (R11); all optional."""

    seq: int | None = None
    session_id: bytes | None = None
    client_nonce: bytes | None = None
    transcript_hash: bytes | None = None
    request_hash: bytes | None = None
    response_hash: bytes | None = None
    model_id: str | None = None
    #: Whether the request asked for truncation, and how many inputs it had.
    truncate: bool | None = None
    inputs: int | None = None


@dataclass(frozen=True)
class VerifiedReceipt:
    receipt: Receipt
    raw: bytes
    attestation: VerifiedAttestation
    binding: EnclaveBinding = field(repr=False)

    def __bool__(self) -> bool:
        raise TypeError("a VerifiedReceipt has no truth value; read its fields")


def _envelope(data: bytes) -> Any:
    try:
        env = decode_sign1(data, what="receipt", max_bytes=MAX_RECEIPT_BYTES)
    except RemoteProtocolError as e:  # DecodeError or LimitError
        raise ReceiptError(f"R1 envelope: {e}") from e
    # R1: protected header exactly {alg: EdDSA, kid: 32-byte attestation hash}, a
    # 64-byte signature (decode_sign1 has refused a non-empty unprotected header).
    try:
        eddsa_kid(env)
    except DecodeError as e:
        raise ReceiptError(f"R1 envelope: {e}") from e
    return env


def verify_receipt(
    data: bytes,
    attestation: VerifiedAttestation,
    *,
    expect: ReceiptExpectations | None = None,
) -> VerifiedReceipt:
    """Verify a receipt against the *already verified* attestation of its session.

    Checks R1-R11 of protocol.md §5 in order; the payload is decoded only after
    the signature (R4) has passed. Does not check the attestation itself (the
    caller verified it under a policy) nor whether the model is allowed by a
    policy (the caller's model allowlist).
    """
    env = _envelope(data)
    doc = attestation.document
    # R2: the receipt names this attestation document.
    if not hmac.compare_digest(env.protected_map[4], doc.sha256):
        raise ReceiptError("R2 attestation: the receipt refers to a different attestation document")
    # R3: the attestation binds a receipt key.
    try:
        binding = EnclaveBinding.from_user_data(doc.user_data)
    except Error as e:
        raise ReceiptError(f"R3 binding: {e}") from e
    # R4: signature by that key over the bytes received.
    if not verify_eddsa(env, binding.receipt_key):
        raise ReceiptError("R4 signature: the receipt signature does not verify")
    # R5: payload format (decoded only now).
    r = Receipt.from_cbor(env.payload)
    # R6: same attestation, session and nonce.
    if r.attestation_hash != doc.sha256:
        raise ReceiptError("R6 session: attestation_hash does not match the document")
    if binding.session_id != CACHED_SESSION_ID:
        # Fresh mode: the document itself names the session and the client's nonce.
        if r.session_id != binding.session_id:
            raise ReceiptError("R6 session: session_id does not match the attestation")
        if doc.nonce is None or r.client_nonce != doc.nonce:
            raise ReceiptError("R6 session: client_nonce does not match the attestation nonce")
    # Cached mode (§2.2.1): the document serves many sessions; the receipt key it
    # attests vouches for session_id and client_nonce, which the session's client
    # checks against its proof (R11).
    # R7: PCRs are the attested ones.
    for i in RECEIPT_PCRS:
        if doc.pcrs.get(i) != r.pcrs[i]:
            raise ReceiptError(f"R7 pcrs: PCR{i} differs from the attestation")
    # R8: security mode agrees with the binding and the trusted root.
    if r.mode != binding.mode:
        raise ReceiptError("R8 mode: the receipt's mode differs from the attestation's")
    if (r.mode == "mock") != attestation.root.is_mock:
        raise ReceiptError(
            f"R8 mode: a {r.mode} receipt verified under a "
            f"{'mock' if attestation.root.is_mock else 'non-mock'} root"
        )
    # R9: the model and policy version are the ones the enclave attested.
    if binding.models.get(r.model_id) != r.model_digest:
        raise ReceiptError(f"R9 model: {r.model_id!r} with this digest is not attested")
    if binding.key_releases.get(r.model_id) != r.key_release:
        raise ReceiptError(f"R9 model: key_release for {r.model_id!r} is not the attested one")
    if r.policy_version != binding.policy_version:
        raise ReceiptError("R9 policy: policy_version differs from the attestation")
    # R10: time within the session's lifetime.
    if not doc.timestamp_ms <= r.time_ms <= doc.timestamp_ms + MAX_SESSION_S * 1000:
        raise ReceiptError("R10 time: receipt time is outside its session's lifetime")
    # R11: what the caller knows.
    if expect is not None:
        _check_expectations(r, expect)
    return VerifiedReceipt(receipt=r, raw=bytes(data), attestation=attestation, binding=binding)


def _check_expectations(r: Receipt, e: ReceiptExpectations) -> None:
    if e.seq is not None and r.seq != e.seq:
        raise ReceiptError(f"R11 sequence: receipt seq {r.seq}, expected {e.seq}")
    if e.session_id is not None and r.session_id != e.session_id:
        raise ReceiptError("R11 session: the receipt names another session")
    if e.client_nonce is not None and r.client_nonce != e.client_nonce:
        raise ReceiptError("R11 session: the receipt names another client nonce")
    if e.transcript_hash is not None and r.transcript_hash != e.transcript_hash:
        raise ReceiptError("R11 transcript: the receipt belongs to a different session transcript")
    if e.request_hash is not None and r.request_hash != e.request_hash:
        raise ReceiptError("R11 request: request_hash does not match the request")
    if e.response_hash is not None and r.response_hash != e.response_hash:
        raise ReceiptError("R11 response: response_hash does not match the response")
    if e.model_id is not None and r.model_id != e.model_id:
        raise ReceiptError(f"R11 model: receipt is for {r.model_id!r}, expected {e.model_id!r}")
    if e.truncate is not None and r.version >= 2 and r.truncate != e.truncate:
        raise ReceiptError(
            f"R11 truncation: the receipt says truncate={str(r.truncate).lower()}, "
            f"the request asked truncate={str(e.truncate).lower()}"
        )
    if e.truncate and r.version < 2:
        raise ReceiptError("R11 truncation: a version 1 receipt cannot record truncation")
    if e.inputs is not None and r.truncated and r.truncated[-1] >= e.inputs:
        raise ReceiptError(
            f"R11 truncation: input {r.truncated[-1]} was truncated, the request had {e.inputs}"
        )

