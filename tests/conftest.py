"""Shared fixtures. Attestation fixtures are prefixed ``att_``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

#: Real-world vectors, copied into the repository (tests/vectors/real/PROVENANCE.md).
ATT_VECTORS_DIR = Path(__file__).resolve().parent / "vectors" / "real"


@pytest.fixture(scope="session")
def att_vectors_dir() -> Path:
    if not (ATT_VECTORS_DIR / "nitro_vectors.json").is_file():
        pytest.fail(f"real-world vectors not found at {ATT_VECTORS_DIR}")
    return ATT_VECTORS_DIR


@pytest.fixture(scope="session")
def att_nitro_vectors(att_vectors_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((att_vectors_dir / "nitro_vectors.json").read_text())
    return data


@pytest.fixture(scope="session")
def att_aws_root_pem(att_vectors_dir: Path) -> bytes:
    return (att_vectors_dir / "aws_nitro_root_g1.pem").read_bytes()


@pytest.fixture(scope="session")
def att_other_root_pem() -> bytes:
    """A freshly generated self-signed P-384 root that imitates the AWS one by name."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Amazon"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "AWS"),
            x509.NameAttribute(NameOID.COMMON_NAME, "aws.nitro-enclaves"),
        ]
    )
    start = datetime(2019, 10, 28, tzinfo=UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=30 * 365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA384())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(autouse=True)
def _private_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's ~/.ephemeralml (policy versions, mock state)."""
    monkeypatch.setenv("EPHEMERALML_HOME", str(tmp_path_factory.mktemp("home")))
