"""X.509 for the mock's certificate authorities: the mock NSM's chain and the mock KMS's TLS.

Every certificate the mock issues is P-384, SHA-384, and named "MOCK ... NOT AWS", so
that none can be mistaken for anything real. Built with ``cryptography``, never by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ephemeralml.common._errors import ConfigError

__all__ = [
    "MOCK_ORG",
    "cert_pem",
    "issue",
    "key_pem",
    "load_pair",
    "mock_name",
    "new_key",
    "whole_seconds",
]

MOCK_ORG = "ephemeralml MOCK - NOT AWS"


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def mock_name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, MOCK_ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def whole_seconds(t: datetime) -> datetime:
    # X.509 times have whole seconds.
    return t.astimezone(UTC).replace(microsecond=0)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def issue(
    *,
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    not_before: datetime,
    lifetime: timedelta,
    ca_path_length: int | None,
    is_ca: bool,
    dns_names: Sequence[str] = (),
) -> x509.Certificate:
    """A certificate; with ``dns_names``, a TLS server certificate for those names."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + lifetime)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=ca_path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not is_ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if is_ca:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    if issuer_key is not key:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    if dns_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA384())


def load_pair(pem: bytes, *, what: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A private key and its certificate from PEM text (either order)."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise ConfigError(f"{what}: unreadable ({e})") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP384R1):
        raise ConfigError(f"{what}: key is not EC P-384")
    if key.public_key() != cert.public_key():
        raise ConfigError(f"{what}: key does not match its certificate")
    return key, cert
