"""AWS Nitro attestation documents: parse, and verify against a trust policy.

A Nitro attestation document is an untagged (or tag-18) COSE_Sign1 (RFC 9052 §4.2)
signed with ES384 by a leaf certificate that travels inside the signed payload,
together with the chain (``cabundle``, root first) up to the AWS Nitro Enclaves root.

:func:`verify_attestation` runs the numbered checks of protocol.md §3 in order, A1 to
A10, and either returns a :class:`VerifiedAttestation` or raises. Every error message
starts with the check id ("A4 chain: ..."), and every foreign exception (cbor2,
cryptography, ``KeyError``...) is translated into :class:`AttestationError` (or
:class:`PolicyError` for A9) with ``raise ... from e``. Nothing reaches the policy
(A9) before the signature (A3) and the chain (A4, A5) have passed.

Sans-IO: no files, sockets, clocks or environment. The caller passes the root
certificate bytes and ``now``. What is trusted (:class:`TrustedRoot`, the
:class:`Measurements` policies) is :mod:`._trust`, re-exported here.

Longer than our usual 600 lines on purpose: the whole A1-A10 sequence, the document
model it produces and the chain cache that shortcuts A4/A5 are read together, top to
bottom, in the order the checks run.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import ExtensionOID

from ._cbor import decode_strict, encode
from ._cose import encode_sign1
from ._errors import AttestationError, ConfigError, Error
from ._trust import (
    AWS_NITRO_ROOT_SHA256,
    MAX_PCRS,
    PCR_BYTES,
    Measurements,
    PcrAllowlist,
    TrustedRoot,
    UnsafeAnyMeasurements,
    basic_constraints,
    key_usage,
)

__all__ = [
    "AWS_NITRO_ROOT_SHA256",
    "MAX_ATTESTATION_AGE_S",
    "MAX_ATTESTATION_BYTES",
    "MAX_CABUNDLE_CERTS",
    "MAX_CLOCK_SKEW_S",
    "MAX_OPTIONAL_FIELD_BYTES",
    "MAX_PCRS",
    "PCR_BYTES",
    "AttestationDocument",
    "AttestationPolicy",
    "ChainCache",
    "Measurements",
    "PcrAllowlist",
    "TrustedRoot",
    "UnsafeAnyMeasurements",
    "VerifiedAttestation",
    "parse_unverified",
    "verify_attestation",
]

#: Oldest document a live verifier accepts, in seconds. AWS KMS does not check the
#: freshness of a Recipient document at all (a replayed one is accepted), so the
#: client must: 5 minutes covers a slow enclave start plus a handshake, and is far
#: below the leaf certificate's ~3 h lifetime, which would otherwise be the only bound.
MAX_ATTESTATION_AGE_S: float = 300.0

#: How far in the future of ``now`` a document's timestamp may be, in seconds: the
#: enclave's clock and the verifier's are not the same clock. One minute tolerates
#: ordinary NTP drift without letting a pre-dated document live much longer.
MAX_CLOCK_SKEW_S: float = 60.0

#: Upper bound of each of ``public_key``, ``user_data`` and ``nonce``, in bytes. AWS's
#: documents disagree between 512 and 1024; the stricter bound is the safe one
#: (FACTS.md), and every field we put there (an HPKE key, a 32-byte nonce, a hash)
#: is far smaller.
MAX_OPTIONAL_FIELD_BYTES = 512

#: Whole COSE_Sign1 size limit, in bytes. Real documents are 4.4 to 4.7 KiB (four
#: P-384 certificates and 16 PCRs); 16 KiB leaves room for three full optional fields
#: and bounds what an untrusted peer can make us parse.
MAX_ATTESTATION_BYTES = 16 * 1024

#: Most certificates in ``cabundle``. AWS sends 4 (root and three intermediates).
MAX_CABUNDLE_CERTS = 8

#: Largest timestamp a ``datetime`` can hold (9999-12-31T23:59:59.999Z), in ms.
_MAX_TIMESTAMP_MS = 253_402_300_799_999

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: COSE header parameter 1 (alg) = -35 (ES384), the one protected header AWS sends.
_PROTECTED_ES384 = encode({1: -35})

#: RFC 9052 §4.2: the one tag a COSE_Sign1 may carry.
_COSE_SIGN1_TAGS = frozenset({18})

#: ES384 signature: r and s as 48-byte big-endian integers (RFC 9053 §2.1), not DER.
_ES384_SIGNATURE_BYTES = 96

_PAYLOAD_KEYS = (
    "module_id",
    "digest",
    "timestamp",
    "pcrs",
    "certificate",
    "cabundle",
    "public_key",
    "user_data",
    "nonce",
)
_REQUIRED_KEYS = frozenset(_PAYLOAD_KEYS[:6])
_OPTIONAL_KEYS = frozenset(_PAYLOAD_KEYS[6:])


# ---------------------------------------------------------------------------
# The parsed document
# ---------------------------------------------------------------------------


def _a2(message: str) -> AttestationError:
    return AttestationError(f"A2 payload: {message}")


def _check_optional(name: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, bytes):
        raise _a2(f"{name} must be bytes or null, got {type(value).__name__}")
    if len(value) > MAX_OPTIONAL_FIELD_BYTES:
        raise _a2(f"{name} is {len(value)} bytes; the limit is {MAX_OPTIONAL_FIELD_BYTES}")


@dataclass(frozen=True)
class AttestationDocument:
    """The payload of a Nitro attestation document (protocol.md §3 A2).

    Building one checks the payload's shape (A2) and nothing else: it is produced by
    :func:`verify_attestation` (inside a :class:`VerifiedAttestation`, after every
    check) or by :func:`parse_unverified` (for display; proves nothing).
    """

    module_id: str
    digest: str
    timestamp_ms: int
    pcrs: Mapping[int, bytes]
    certificate: bytes
    cabundle: tuple[bytes, ...]
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None
    raw: bytes = field(repr=False)

    def __post_init__(self) -> None:
        # protocol.md §3 A2: field types and bounds.
        if not isinstance(self.module_id, str) or not self.module_id:
            raise _a2("module_id must be non-empty text")
        if self.digest != "SHA384":
            raise _a2(f"digest must be 'SHA384', got {self.digest!r}")
        if type(self.timestamp_ms) is not int or not 0 < self.timestamp_ms <= _MAX_TIMESTAMP_MS:
            raise _a2(f"timestamp must be a positive integer of ms, got {self.timestamp_ms!r}")
        if not isinstance(self.pcrs, Mapping) or not 1 <= len(self.pcrs) <= MAX_PCRS:
            raise _a2(f"pcrs must be a map of 1 to {MAX_PCRS} entries")
        pcrs: dict[int, bytes] = {}
        for index, value in sorted(self.pcrs.items(), key=_pcr_sort_key):
            if type(index) is not int or not 0 <= index < MAX_PCRS:
                raise _a2(f"PCR index {index!r} is not an integer in 0..{MAX_PCRS - 1}")
            if not isinstance(value, bytes) or len(value) != PCR_BYTES:
                raise _a2(f"PCR{index} must be {PCR_BYTES} bytes (SHA-384)")
            pcrs[index] = value
        # Every NSM reports PCR0 (the image); is_debug and allowlists rely on it.
        if 0 not in pcrs:
            raise _a2("PCR0 is missing")
        object.__setattr__(self, "pcrs", MappingProxyType(pcrs))
        if not isinstance(self.certificate, bytes) or not self.certificate:
            raise _a2("certificate must be non-empty bytes")
        if (
            not isinstance(self.cabundle, tuple)
            or not 1 <= len(self.cabundle) <= MAX_CABUNDLE_CERTS
        ):
            raise _a2(f"cabundle must hold 1 to {MAX_CABUNDLE_CERTS} certificates")
        for i, der in enumerate(self.cabundle):
            if not isinstance(der, bytes) or not der:
                raise _a2(f"cabundle[{i}] must be non-empty bytes")
        _check_optional("public_key", self.public_key)
        _check_optional("user_data", self.user_data)
        _check_optional("nonce", self.nonce)
        if not isinstance(self.raw, bytes):
            raise _a2("raw must be bytes")

    @property
    def sha256(self) -> bytes:
        """SHA-256 of the whole COSE_Sign1 as received."""
        return hashlib.sha256(self.raw).digest()

    @property
    def sha256_hex(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def timestamp(self) -> datetime:
        """The document's timestamp, exact to the millisecond, in UTC."""
        return _EPOCH + timedelta(milliseconds=self.timestamp_ms)

    @property
    def is_debug(self) -> bool:
        """True for a debug-mode enclave: PCR0 is all zero (``--debug-mode``)."""
        return not any(self.pcrs[0])


def _pcr_sort_key(item: tuple[Any, Any]) -> tuple[int, int]:
    # Sort ints first by value; anything else is rejected right after.
    k = item[0]
    return (0, k) if type(k) is int else (1, 0)


# ---------------------------------------------------------------------------
# Policy and result
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AttestationPolicy:
    """What a document must satisfy beyond being well-formed and signed."""

    root: TrustedRoot
    measurements: Measurements
    max_age_s: float = MAX_ATTESTATION_AGE_S

    def __post_init__(self) -> None:
        if not isinstance(self.root, TrustedRoot):
            raise ConfigError("attestation policy: root must be a TrustedRoot")
        if not isinstance(self.measurements, Measurements):
            raise ConfigError("attestation policy: measurements must be a Measurements")
        age = self.max_age_s
        if isinstance(age, bool) or not isinstance(age, int | float):
            raise ConfigError("attestation policy: max_age_s must be a number of seconds")
        if not math.isfinite(age) or age <= 0:
            raise ConfigError(f"attestation policy: max_age_s must be positive, got {age}")


@dataclass(frozen=True)
class VerifiedAttestation:
    """A document that passed every check of protocol.md §3 under ``root`` at ``verified_at``.

    What it does not say: anything about ``public_key`` and ``user_data`` (A8, the
    session layer binds those), or whether a mock root (``root.is_mock``) was trusted.
    """

    document: AttestationDocument
    root: TrustedRoot
    verified_at: datetime

    def __bool__(self) -> bool:
        raise TypeError("VerifiedAttestation has no truth value; use its fields")


# ---------------------------------------------------------------------------
# Parsing (A1, A2)
# ---------------------------------------------------------------------------


def _a1(message: str) -> AttestationError:
    return AttestationError(f"A1 envelope: {message}")


@dataclass(frozen=True)
class _Envelope:
    protected: bytes
    payload: bytes
    signature: bytes


def _parse_envelope(raw: object) -> tuple[bytes, _Envelope]:
    # protocol.md §3 A1: size, strict CBOR, COSE_Sign1 shape, ES384 only.
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise _a1(f"expected bytes, got {type(raw).__name__}")
    data = bytes(raw)
    if len(data) > MAX_ATTESTATION_BYTES:
        raise _a1(f"document is {len(data)} bytes; the limit is {MAX_ATTESTATION_BYTES}")
    try:
        # RFC 9052 §4.2: COSE_Sign1 is tagged 18 or untagged; every other tag,
        # outside or inside, is refused before any decoding work (protocol.md §1.2 D2).
        obj = decode_strict(data, what="attestation document", top_tags=_COSE_SIGN1_TAGS)
    except Error as e:
        raise _a1(str(e)) from e
    tagged = isinstance(obj, cbor2.CBORTag)
    if tagged:
        obj = obj.value
    if not isinstance(obj, list | tuple) or len(obj) != 4:
        raise _a1("not a COSE_Sign1 array of 4 elements")
    protected, unprotected, payload, signature = obj
    if not isinstance(protected, bytes) or protected != _PROTECTED_ES384:
        shown = protected.hex() if isinstance(protected, bytes) else type(protected).__name__
        raise _a1(f"protected header must be exactly {{1: -35}} (ES384), got {shown}")
    if not isinstance(unprotected, dict) or len(unprotected) != 0:
        raise _a1("unprotected header must be an empty map")
    if not isinstance(payload, bytes):
        raise _a1("payload must be a byte string")
    if not isinstance(signature, bytes) or len(signature) != _ES384_SIGNATURE_BYTES:
        raise _a1(f"signature must be {_ES384_SIGNATURE_BYTES} bytes (ES384 r||s)")
    # protocol.md §1.2 D3: the envelope in its shortest heads. AWS sends it untagged
    # and RFC 9052 allows tag 18, so both stay accepted (two spellings, told apart
    # by their first byte); a longer head is a third that nothing produces.
    if encode_sign1(protected, payload, signature, tagged=tagged) != data:
        raise _a1(
            "attestation document is not in its one encoding (RFC 8949 §4.2.1 shortest heads)"
        )
    return data, _Envelope(protected=protected, payload=payload, signature=signature)


def _parse_payload(payload: bytes, raw: bytes) -> AttestationDocument:
    # protocol.md §3 A2: exactly the AWS keys, each of its type. The payload is
    # decoded before its signature is checked only because the signing key travels
    # inside it; nothing decoded here is trusted until A3 to A5 have passed.
    try:
        body = decode_strict(payload, what="payload")
    except Error as e:
        raise _a2(str(e)) from e
    if not isinstance(body, Mapping):
        raise _a2("payload is not a map")
    keys = set(body.keys())
    missing = _REQUIRED_KEYS - keys
    if missing:
        raise _a2(f"missing {', '.join(sorted(missing))}")
    extra = keys - _REQUIRED_KEYS - _OPTIONAL_KEYS
    if extra:
        raise _a2(f"unexpected keys {sorted(map(repr, extra))}")
    pcrs = body["pcrs"]
    if not isinstance(pcrs, Mapping):
        raise _a2("pcrs is not a map")
    cabundle = body["cabundle"]
    if not isinstance(cabundle, list | tuple):
        raise _a2("cabundle is not an array")
    return AttestationDocument(
        module_id=body["module_id"],
        digest=body["digest"],
        timestamp_ms=body["timestamp"],
        pcrs=pcrs,
        certificate=body["certificate"],
        cabundle=tuple(cabundle),
        public_key=body.get("public_key"),
        user_data=body.get("user_data"),
        nonce=body.get("nonce"),
        raw=raw,
    )


def parse_unverified(raw: bytes) -> AttestationDocument:
    """Parse a document for display or debugging. **Verifies nothing.**

    Runs only A1 (envelope) and A2 (payload format): no signature, chain, time,
    nonce or measurement is checked, so nothing in the result may be trusted.
    """
    try:
        data, env = _parse_envelope(raw)
        return _parse_payload(env.payload, data)
    except Error:
        raise
    except Exception as e:
        raise AttestationError(
            f"A1-A2: attestation document could not be parsed ({type(e).__name__}: {e})"
        ) from e


# ---------------------------------------------------------------------------
# Verification (A3 to A10)
# ---------------------------------------------------------------------------


def _load_der(der: bytes, *, check: str, what: str) -> x509.Certificate:
    try:
        cert = x509.load_der_x509_certificate(der)
        # cryptography parses extensions lazily: read them now, so that a malformed
        # one fails here with our error and not later inside a library call.
        _ = cert.extensions
    except Exception as e:
        # cryptography raises its own types for malformed certificates
        # (x509.InvalidVersion, DuplicateExtension, ...), not only ValueError.
        raise AttestationError(
            f"{check}: {what} is not a DER X.509 certificate ({type(e).__name__}: {e})"
        ) from e
    return cert


#: The extensions A4 processes. RFC 5280 §4.2: "A certificate-using system MUST reject
#: the certificate if it encounters a critical extension it does not recognize or a
#: critical extension that contains information that it cannot process."
_PROCESSED_EXTENSIONS = frozenset({ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE})


def _check_critical_extensions(name: str, cert: x509.Certificate) -> None:
    # protocol.md §3 A4 (critical extensions).
    for ext in cert.extensions:
        if ext.critical and ext.oid not in _PROCESSED_EXTENSIONS:
            raise AttestationError(
                f"A4 chain: {name} has a critical extension this verifier does not process "
                f"({ext.oid.dotted_string}); refused (RFC 5280 §4.2)"
            )


def _fmt(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _leaf_key(leaf: x509.Certificate) -> ec.EllipticCurvePublicKey:
    try:
        key = leaf.public_key()
    except Exception as e:  # ValueError, UnsupportedAlgorithm, ...
        raise AttestationError(f"A3 signature: leaf public key cannot be read ({e})") from e
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise AttestationError("A3 signature: leaf key is not EC P-384 (ES384)")
    return key


def _verify_signature(env: _Envelope, leaf: x509.Certificate) -> None:
    _verify_signature_with(env, _leaf_key(leaf))


def _verify_signature_with(env: _Envelope, key: ec.EllipticCurvePublicKey) -> None:
    # protocol.md §3 A3: ES384 over Sig_structure (RFC 9052 §4.4), built from the
    # protected header and payload bytes exactly as received. The ECDSA check is
    # cryptography's (OpenSSL), not pycose's: pycose 1.1 runs ES384 on the pure-Python
    # `ecdsa` package, about 4 ms a verify, over the whole budget of a cold verify.
    # The tests check that pycose agrees on every real vector and on mutations.
    to_be_signed = encode(["Signature1", env.protected, b"", env.payload])
    half = _ES384_SIGNATURE_BYTES // 2
    r = int.from_bytes(env.signature[:half], "big")
    s = int.from_bytes(env.signature[half:], "big")
    try:
        key.verify(encode_dss_signature(r, s), to_be_signed, ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError) as e:
        raise AttestationError("A3 signature: COSE ES384 signature does not verify") from e


def _verify_chain(
    doc: AttestationDocument, leaf: x509.Certificate, root: TrustedRoot
) -> list[tuple[str, x509.Certificate]]:
    # protocol.md §3 A4: cabundle is root first; the first entry must be the pinned
    # root byte for byte (a different root, even one with the same name, fails here).
    if not hmac.compare_digest(doc.cabundle[0], root.certificate_der):
        got = hashlib.sha256(doc.cabundle[0]).hexdigest()
        raise AttestationError(
            f"A4 chain: cabundle[0] is not the pinned root {root.name!r} "
            f"(fingerprint {got}, expected {root.fingerprint})"
        )
    chain: list[tuple[str, x509.Certificate]] = [
        (f"cabundle[{i}]", _load_der(der, check="A4 chain", what=f"cabundle[{i}]"))
        for i, der in enumerate(doc.cabundle)
    ]
    chain.append(("leaf", leaf))
    n_ca = len(doc.cabundle)
    for i, (name, cert) in enumerate(chain):
        try:
            bc = basic_constraints(cert)
            ku = key_usage(cert)
        except Exception as e:
            raise AttestationError(
                f"A4 chain: {name} has malformed extensions ({type(e).__name__}: {e})"
            ) from e
        _check_critical_extensions(name, cert)
        if i < n_ca:
            # Every cabundle entry issues the next: it must be a CA allowed to sign
            # certificates, with room below it for the intermediates that follow.
            if bc is None or not bc.ca:
                raise AttestationError(f"A4 chain: {name} is not a CA (basicConstraints)")
            below = n_ca - 1 - i  # intermediates under this one, the leaf not counted
            if bc.path_length is not None and below > bc.path_length:
                raise AttestationError(
                    f"A4 chain: {name} allows path length {bc.path_length}, "
                    f"but {below} CAs follow it"
                )
            if ku is not None and not ku.key_cert_sign:
                raise AttestationError(f"A4 chain: {name} may not sign certificates (keyUsage)")
        else:
            if bc is not None and bc.ca:
                raise AttestationError("A4 chain: leaf is a CA (basicConstraints)")
            if ku is not None and not ku.digital_signature:
                raise AttestationError("A4 chain: leaf may not sign (keyUsage digitalSignature)")
        if i == 0:
            continue  # the root is pinned by its bytes above
        issuer_name, issuer = chain[i - 1]
        try:
            cert.verify_directly_issued_by(issuer)
        except Exception as e:  # InvalidSignature, ValueError, UnsupportedAlgorithm, ...
            raise AttestationError(f"A4 chain: {name} is not issued by {issuer_name}") from e
    return chain


def _verify_validity(
    chain: list[tuple[str, x509.Certificate]], *, doc_time: datetime, now: datetime
) -> None:
    # protocol.md §3 A5: every certificate is valid both when the document was
    # signed and now. Compared as datetimes to the microsecond: the document time
    # keeps its milliseconds (doc #1 is signed 100 ms after its leaf's notBefore).
    for name, cert in chain:
        nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
        for label, t in (("the document timestamp", doc_time), ("now", now)):
            if not nb <= t <= na:
                raise AttestationError(
                    f"A5 validity: {name} is not valid at {label} {_fmt(t)} "
                    f"(valid {_fmt(nb)} to {_fmt(na)})"
                )


def _verify_freshness(doc_time: datetime, *, now: datetime, max_age_s: float) -> None:
    # protocol.md §3 A6: not from the future (beyond clock skew), not too old.
    ahead = (doc_time - now).total_seconds()
    if ahead > MAX_CLOCK_SKEW_S:
        raise AttestationError(
            f"A6 freshness: document timestamp {_fmt(doc_time)} is {ahead:.3f} s in the "
            f"future (limit {MAX_CLOCK_SKEW_S:g} s)"
        )
    age = (now - doc_time).total_seconds()
    if age > max_age_s:
        raise AttestationError(f"A6 freshness: document is {age:.3f} s old (limit {max_age_s:g} s)")


@dataclass(frozen=True)
class _CachedChain:
    leaf_key: ec.EllipticCurvePublicKey
    not_before: datetime  # the latest notBefore of the chain
    not_after: datetime  # the earliest notAfter of the chain


class ChainCache:
    """Certificate chains that passed A3-A5, so a known chain costs one signature check.

    Keyed by the SHA-256 of the pinned root, every ``cabundle`` entry and the leaf,
    length-prefixed, so a cached result applies only to exactly those bytes under
    that root. An entry is used only while both ``now`` and the document's time lie
    inside the window where every certificate of the chain is valid, and dropped once
    ``now`` passes the earliest notAfter. Bounded (least recently used goes first).
    Safe to share between threads: a race costs at most a repeated full verify.
    """

    #: Chains to keep; a client talks to a handful of enclaves, each with one chain
    #: per leaf (AWS mints a leaf every few hours).
    MAX_ENTRIES = 64

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._entries: OrderedDict[bytes, _CachedChain] = OrderedDict()
        self._max = max_entries
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(root: TrustedRoot, doc: AttestationDocument) -> bytes:
        h = hashlib.sha256(b"ephemeralml/1 chain\x00")
        for der in (root.certificate_der, *doc.cabundle, doc.certificate):
            h.update(len(der).to_bytes(4, "big"))
            h.update(der)
        return h.digest()

    def get(self, key: bytes, doc_time: datetime, now: datetime) -> _CachedChain | None:
        entry = self._entries.get(key)
        if entry is not None and now > entry.not_after:
            self._entries.pop(key, None)
            entry = None
        if entry is None or not (
            entry.not_before <= doc_time <= entry.not_after
            and entry.not_before <= now <= entry.not_after
        ):
            self.misses += 1
            return None
        with contextlib.suppress(KeyError):  # another thread may have evicted it
            self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: bytes, chain: list[tuple[str, x509.Certificate]]) -> None:
        certs = [c for _, c in chain]
        self._entries[key] = _CachedChain(
            leaf_key=_leaf_key(certs[-1]),
            not_before=max(c.not_valid_before_utc for c in certs),
            not_after=min(c.not_valid_after_utc for c in certs),
        )
        with contextlib.suppress(KeyError):
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def _check_now(now: object) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise ConfigError("verify_attestation: now must be a timezone-aware datetime")
    return now.astimezone(UTC)


def verify_attestation(
    raw: bytes,
    policy: AttestationPolicy,
    *,
    now: datetime,
    nonce: bytes | None = None,
    chain_cache: ChainCache | None = None,
) -> VerifiedAttestation:
    """Verify a Nitro attestation document; return it verified or raise.

    With ``chain_cache``, a chain (root, cabundle and leaf, byte for byte) verified
    before is not verified again while ``now`` and the document's time fall inside
    every certificate's validity: A3 is then one signature check with the cached
    leaf key, and A4/A5 are the cached result. Anything else takes the full path.

    Runs protocol.md §3 A1 to A10 in order (see the module docstring); raises
    :class:`AttestationError` (A1 to A7) or :class:`PolicyError` (A9), each message
    starting with the check id.

    Not checked here: ``public_key`` and ``user_data`` are returned, not interpreted
    (A8: the session layer binds them to its handshake); revocation (AWS publishes
    none for this chain); whether a mock root is acceptable (A10: the caller decides
    and warns when ``policy.root.is_mock``).
    """
    now = _check_now(now)
    if not isinstance(policy, AttestationPolicy):
        raise ConfigError("verify_attestation: policy must be an AttestationPolicy")
    if nonce is not None and not isinstance(nonce, bytes):
        raise ConfigError("verify_attestation: nonce must be bytes or None")

    try:
        return _verify(raw, policy, now=now, nonce=nonce, chain_cache=chain_cache)
    except Error:
        raise
    except Exception as e:
        # Style rule 3, issue 7 finding 5: whatever a library raises on a hostile
        # document leaves as an AttestationError (the stage is in the cause).
        raise AttestationError(
            f"A1-A9: attestation document could not be processed ({type(e).__name__}: {e})"
        ) from e


def _verify(
    raw: bytes,
    policy: AttestationPolicy,
    *,
    now: datetime,
    nonce: bytes | None,
    chain_cache: ChainCache | None,
) -> VerifiedAttestation:
    # A1 envelope, A2 payload format.
    data, env = _parse_envelope(raw)
    doc = _parse_payload(env.payload, data)

    doc_time = doc.timestamp
    key = chain_cache.key(policy.root, doc) if chain_cache is not None else b""
    cached = chain_cache.get(key, doc_time, now) if chain_cache is not None else None
    if cached is not None:
        # protocol.md §3 A3 with the cached leaf key; A4 and A5 hold for this exact
        # chain at both times (checked inside get()).
        _verify_signature_with(env, cached.leaf_key)
    else:
        # protocol.md §3 A3 signature: the leaf's key signs the COSE_Sign1.
        leaf = _load_der(doc.certificate, check="A3 signature", what="leaf certificate")
        _verify_signature(env, leaf)

        # protocol.md §3 A4 chain: pinned root -> intermediates -> leaf.
        chain = _verify_chain(doc, leaf, policy.root)

        # protocol.md §3 A5 validity, at the document's time and at now.
        _verify_validity(chain, doc_time=doc_time, now=now)
        if chain_cache is not None:
            chain_cache.put(key, chain)

    # protocol.md §3 A6 freshness.
    _verify_freshness(doc_time, now=now, max_age_s=float(policy.max_age_s))

    # protocol.md §3 A7 nonce: the document answers our challenge.
    if nonce is not None and (doc.nonce is None or not hmac.compare_digest(doc.nonce, nonce)):
        raise AttestationError(
            "A7 nonce: document nonce "
            + ("is absent" if doc.nonce is None else "does not match the challenge")
        )

    # protocol.md §3 A8: public_key and user_data are not interpreted here.

    # protocol.md §3 A9 measurements: only now, with signature and chain verified.
    policy.measurements.check(doc)

    # protocol.md §3 A10 root kind: a mock root verifies; the caller warns.
    return VerifiedAttestation(document=doc, root=policy.root, verified_at=now)
