"""What a verifier trusts: the root certificate and the measurements (protocol.md §3).

:class:`TrustedRoot` is the certificate attestation chains must end at (A4): AWS's
Nitro root, or, only when asked for by name, a mock root. :class:`Measurements` is
what the enclave must be running, checked at A9 after the document has verified:
a :class:`PcrAllowlist`, or :class:`UnsafeAnyMeasurements`. Parsing and verifying
documents is :mod:`._attestation`, which re-exports these names.
"""

from __future__ import annotations

import hashlib
import hmac
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from ._errors import ConfigError, PolicyError

if TYPE_CHECKING:
    from ._attestation import AttestationDocument

__all__ = [
    "AWS_NITRO_ROOT_SHA256",
    "MAX_PCRS",
    "PCR_BYTES",
    "Measurements",
    "PcrAllowlist",
    "TrustedRoot",
    "UnsafeAnyMeasurements",
    "basic_constraints",
    "key_usage",
]

#: SHA-256 of the DER of "AWS Nitro Enclaves Root-G1" (CN=aws.nitro-enclaves), as
#: published by AWS in the Nitro Enclaves user guide ("Verifying the root of trust").
AWS_NITRO_ROOT_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"

#: Most PCR entries: the NSM has 32 PCRs (AWS documents carry 16 of them).
MAX_PCRS = 32

#: Size of one PCR value: SHA-384, the only ``digest`` the NSM reports.
PCR_BYTES = 48


# ---------------------------------------------------------------------------
# Trusted roots
# ---------------------------------------------------------------------------


def _load_certificate(data: bytes, *, what: str) -> x509.Certificate:
    """Parse one certificate given as PEM or DER, for configuration (ConfigError)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ConfigError(f"{what}: expected certificate bytes, got {type(data).__name__}")
    data = bytes(data)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            certs = x509.load_pem_x509_certificates(data)
            if len(certs) != 1:
                raise ConfigError(f"{what}: expected exactly one PEM certificate, got {len(certs)}")
            return certs[0]
        return x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise ConfigError(f"{what}: not a PEM or DER X.509 certificate ({e})") from e


def basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


def key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


@dataclass(frozen=True)
class TrustedRoot:
    """A root certificate that documents must chain to (``cabundle[0]``, byte for byte).

    Build it with :meth:`aws_nitro` (pinned by fingerprint), :meth:`from_pem_or_der`
    (a root the user names explicitly) or :meth:`unsafe_mock` (the development mock's
    root; ``is_mock`` is then true and callers warn every time it is used).
    """

    name: str
    certificate_der: bytes
    is_mock: bool

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("trusted root: name must be a non-empty string")
        if not isinstance(self.certificate_der, bytes):
            raise ConfigError("trusted root: certificate_der must be bytes")
        cert = _load_certificate(self.certificate_der, what=f"trusted root {self.name!r}")
        if cert.public_bytes(serialization.Encoding.DER) != self.certificate_der:
            raise ConfigError(f"trusted root {self.name!r}: certificate_der is not plain DER")
        try:
            bc = basic_constraints(cert)
        except ValueError as e:
            raise ConfigError(f"trusted root {self.name!r}: malformed extensions ({e})") from e
        if bc is None or not bc.ca:
            raise ConfigError(f"trusted root {self.name!r}: certificate is not a CA")
        try:
            cert.verify_directly_issued_by(cert)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as e:
            raise ConfigError(f"trusted root {self.name!r}: certificate is not self-signed") from e

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate's DER, lowercase hex."""
        return hashlib.sha256(self.certificate_der).hexdigest()

    @classmethod
    def aws_nitro(cls, certificate: bytes) -> TrustedRoot:
        """The AWS Nitro Enclaves root (PEM or DER), refused unless its SHA-256 is
        :data:`AWS_NITRO_ROOT_SHA256`."""
        der = _load_certificate(certificate, what="AWS Nitro root").public_bytes(
            serialization.Encoding.DER
        )
        got = hashlib.sha256(der).hexdigest()
        if not hmac.compare_digest(got, AWS_NITRO_ROOT_SHA256):
            raise ConfigError(
                f"AWS Nitro root: certificate fingerprint {got} is not the AWS Nitro "
                f"Enclaves Root-G1 ({AWS_NITRO_ROOT_SHA256})"
            )
        return cls(name="aws-nitro-root-g1", certificate_der=der, is_mock=False)

    @classmethod
    def unsafe_mock(cls, certificate: bytes) -> TrustedRoot:
        """The development mock's root (PEM or DER). Proves nothing about hardware."""
        der = _load_certificate(certificate, what="mock root").public_bytes(
            serialization.Encoding.DER
        )
        return cls(name="UNSAFE-mock-root", certificate_der=der, is_mock=True)

    @classmethod
    def from_pem_or_der(cls, certificate: bytes, *, name: str = "custom") -> TrustedRoot:
        """A root named explicitly by the user (``--root PEM``); not a mock."""
        der = _load_certificate(certificate, what=f"root {name!r}").public_bytes(
            serialization.Encoding.DER
        )
        return cls(name=name, certificate_der=der, is_mock=False)


# ---------------------------------------------------------------------------
# Measurement policies (A9)
# ---------------------------------------------------------------------------


class Measurements(ABC):
    """What the enclave must be running: checked after the document has verified."""

    @abstractmethod
    def check(self, doc: AttestationDocument) -> None:
        """Return if ``doc``'s measurements are acceptable, else raise :class:`PolicyError`."""


class PcrAllowlist(Measurements):
    """Accept a document whose PCRs equal every value of at least one allowed entry.

    Each entry maps PCR index to expected 48-byte value. An empty allowlist, or an
    entry that names no PCR, is a configuration error: never allow-all. Debug-mode
    documents (PCR0 all zero: anyone can run any code there) are refused unless
    ``allow_debug`` is set.
    """

    def __init__(
        self, allowed: Sequence[Mapping[int, bytes]], *, allow_debug: bool = False
    ) -> None:
        if isinstance(allowed, Mapping) or not isinstance(allowed, Sequence):
            raise ConfigError("PCR allowlist: expected a sequence of {index: value} entries")
        if not allowed:
            raise ConfigError("PCR allowlist is empty; it would allow nothing (never allow-all)")
        entries: list[Mapping[int, bytes]] = []
        for n, entry in enumerate(allowed):
            if not isinstance(entry, Mapping) or not entry:
                raise ConfigError(f"PCR allowlist entry {n} names no PCR (never allow-all)")
            checked: dict[int, bytes] = {}
            for index, value in entry.items():
                if type(index) is not int or not 0 <= index < MAX_PCRS:
                    raise ConfigError(f"PCR allowlist entry {n}: index {index!r} not in 0..31")
                if not isinstance(value, bytes) or len(value) != PCR_BYTES:
                    raise ConfigError(
                        f"PCR allowlist entry {n}: PCR{index} must be {PCR_BYTES} bytes"
                    )
                checked[index] = value
            entries.append(MappingProxyType(dict(sorted(checked.items()))))
        self._allowed: tuple[Mapping[int, bytes], ...] = tuple(entries)
        self._allow_debug = bool(allow_debug)

    @property
    def allowed(self) -> tuple[Mapping[int, bytes], ...]:
        return self._allowed

    @property
    def allow_debug(self) -> bool:
        return self._allow_debug

    @classmethod
    def from_document(cls, doc: AttestationDocument) -> PcrAllowlist:
        """The document's own PCRs 0, 1, 2, 3, 4 and 8 (those present), debug allowed.

        For archived documents in tests and for pinning what a first run reported.
        """
        entry = {i: doc.pcrs[i] for i in (0, 1, 2, 3, 4, 8) if i in doc.pcrs}
        return cls([entry], allow_debug=True)

    def check(self, doc: AttestationDocument) -> None:
        # protocol.md §3 A9: a debug-mode enclave's PCRs say nothing about its code.
        if doc.is_debug and not self._allow_debug:
            raise PolicyError(
                "A9 measurements: debug-mode enclave (PCR0 all zero) refused; "
                "allow_debug is not set"
            )
        reasons: list[str] = []
        for n, entry in enumerate(self._allowed):
            mismatch = next(
                (
                    i
                    for i, want in entry.items()
                    if not hmac.compare_digest(doc.pcrs.get(i, b""), want)
                ),
                None,
            )
            if mismatch is None:
                return
            got = doc.pcrs.get(mismatch)
            reasons.append(
                f"entry {n} differs at PCR{mismatch} (got {got.hex()[:16] if got else 'none'}...)"
            )
        raise PolicyError(
            f"A9 measurements: PCRs match none of the {len(self._allowed)} allowed entries: "
            + "; ".join(reasons)
        )


class UnsafeAnyMeasurements(Measurements):
    """Accepts any measurements. Only for inspecting a document without a policy."""

    def check(self, doc: AttestationDocument) -> None:
        return None
