"""The mock KMS, driven by boto3 over real HTTP on loopback, and its CMS envelopes.

Every server here binds 127.0.0.1 on a free port and is closed by its fixture; every
boto3 client has short timeouts and no retries, every raw HTTP connection a timeout,
every subprocess a deadline: no test can hang.

Longer than 600 lines on purpose: one test per check or attack, each asserting its exact
error, reads better in one file than spread over several.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import logging
import os
import queue
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from asn1crypto import cms
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ephemeralml.common._attestation import TrustedRoot
from ephemeralml.common._errors import ConfigError, KeyReleaseError
from ephemeralml.mock import _kms as _mock_kms
from ephemeralml.mock import _kms_server as _mock_kms_server
from ephemeralml.mock._cms_build import CONTENT_CHUNK_BYTES, build_recipient_envelope
from ephemeralml.mock._kms import (
    BLOB_VERSION,
    ENCLAVE,
    HOST,
    MODEL_OWNER,
    PRINCIPALS,
    Decision,
    MalformedPolicyError,
    MockCredentials,
    MockKmsServer,
    evaluate_policy,
    load_or_create_credentials,
    policy_decision,
    validate_policy,
)
from ephemeralml.mock._nsm import MockNsm

START = datetime(2030, 1, 1, 8, 0, 0, tzinfo=UTC)
PCR0 = hashlib.sha384(b"enclave image").digest()
PCR1 = hashlib.sha384(b"kernel").digest()
PCR2 = hashlib.sha384(b"application").digest()
PCR8 = hashlib.sha384(b"signing certificate").digest()
PCRS = {0: PCR0, 1: PCR1, 2: PCR2, 8: PCR8}
OTHER_PCR0 = hashlib.sha384(b"another image").digest()
ACCOUNT_ROOT = "arn:aws:iam::111122223333:root"
ENCLAVE_ROLE = PRINCIPALS[ENCLAVE].arn
RECIPIENT_KEYS = ("kms:RecipientAttestation:ImageSha384", "kms:RecipientAttestation:PCR0")


class Clock:
    def __init__(self, t: datetime = START) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


# ---------------------------------------------------------------------------
# A small independent reader of CiphertextForRecipient (asn1crypto + cryptography)
# ---------------------------------------------------------------------------


def spki_of(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def open_envelope(ber: bytes, private_key: rsa.RSAPrivateKey) -> bytes:
    """Open a KMS CiphertextForRecipient, checking the algorithm profile on the way."""
    info = cms.ContentInfo.load(ber, strict=True)
    assert info["content_type"].native == "enveloped_data"
    env = info["content"]
    assert env["version"].native == "v2"
    (ri,) = list(env["recipient_infos"])
    assert ri.name == "ktri"
    ktri = ri.chosen
    assert ktri["version"].native == "v2"
    assert ktri["rid"].name == "subject_key_identifier"
    assert ktri["rid"].chosen.native == hashlib.sha256(spki_of(private_key)).digest()
    kea = ktri["key_encryption_algorithm"]
    assert kea["algorithm"].native == "rsaes_oaep"
    params = kea["parameters"]
    assert params["hash_algorithm"]["algorithm"].native == "sha256"
    assert params["mask_gen_algorithm"]["algorithm"].native == "mgf1"
    assert params["mask_gen_algorithm"]["parameters"]["algorithm"].native == "sha256"
    assert params["p_source_algorithm"]["parameters"].native == b""  # empty label
    cek = private_key.decrypt(
        ktri["encrypted_key"].native,
        OAEP(mgf=MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
    )
    eci = env["encrypted_content_info"]
    assert eci["content_type"].native == "data"
    cea = eci["content_encryption_algorithm"]
    assert cea["algorithm"].native == "aes256_cbc"
    iv = cea["parameters"].native
    assert len(iv) == 16 and len(cek) == 32
    decryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).decryptor()
    padded = decryptor.update(eci["encrypted_content"].native) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def tlv_skeleton(ber: bytes) -> list[tuple[int, int, bool]]:
    """(offset, identifier octet, indefinite?) for every TLV, walking constructed ones."""
    out: list[tuple[int, int, bool]] = []

    def walk(start: int, end: int | None) -> int:
        i = start
        while end is None or i < end:
            ident, first = ber[i], ber[i + 1]
            if ident == 0 and first == 0:
                out.append((i, 0, False))
                return i + 2
            if first == 0x80:
                out.append((i, ident, True))
                i = walk(i + 2, None)
                continue
            if first < 0x80:
                length, hl = first, 2
            else:
                n = first & 0x7F
                length, hl = int.from_bytes(ber[i + 2 : i + 2 + n], "big"), 2 + n
            out.append((i, ident, False))
            if ident & 0x20:
                walk(i + hl, i + hl + length)
            i += hl + length
            if end is None and i >= len(ber):
                return i
        return i

    walk(0, len(ber))
    return out


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # boto3 honours proxy variables; loopback traffic must never leave the machine.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def nsm_dir(tmp_path: Path) -> Path:
    return tmp_path / "nsm"


@pytest.fixture
def nsm(nsm_dir: Path, clock: Clock) -> MockNsm:
    return MockNsm.load_or_create(nsm_dir, PCRS, clock=clock)


@pytest.fixture
def root(nsm: MockNsm) -> TrustedRoot:
    return TrustedRoot.unsafe_mock(nsm.root_certificate_der)


@pytest.fixture
def server(tmp_path: Path, root: TrustedRoot, clock: Clock) -> Iterator[MockKmsServer]:
    with MockKmsServer(tmp_path / "kms", trusted_root=root, clock=clock) as s:
        yield s


def client_with(url: str, creds: MockCredentials, region: str = "us-east-1") -> Any:
    return boto3.client(
        "kms",
        region_name=region,
        endpoint_url=url,
        **creds.boto3_kwargs(),
        config=Config(
            connect_timeout=5, read_timeout=15, retries={"max_attempts": 1, "mode": "standard"}
        ),
    )


def client_for(server: MockKmsServer, principal: str = MODEL_OWNER) -> Any:
    return client_with(server.url, server.credentials(principal))


@pytest.fixture
def kms(server: MockKmsServer) -> Any:
    """The model owner's client (its IAM policy allows kms:*)."""
    return client_for(server)


@pytest.fixture
def enclave_kms(server: MockKmsServer) -> Any:
    """The enclave role's client (what the host hands the enclave, and so holds too)."""
    return client_for(server, ENCLAVE)


@pytest.fixture
def host_kms(server: MockKmsServer) -> Any:
    return client_for(server, HOST)


def recipient(doc: bytes, algorithm: str = "RSAES_OAEP_SHA_256") -> dict[str, Any]:
    return {"AttestationDocument": doc, "KeyEncryptionAlgorithm": algorithm}


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def policy(*statements: Mapping[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


#: What the key's owner (the host's account) may do: manage the key, encrypt and make
#: data keys, but never Decrypt.
ADMIN = {
    "Sid": "admin",
    "Effect": "Allow",
    "Principal": {"AWS": ACCOUNT_ROOT},
    "Action": ["kms:Create*", "kms:Describe*", "kms:Get*", "kms:Put*", "kms:Encrypt"],
    "Resource": "*",
}


def enclave_statement(
    condition: Mapping[str, Any], actions: tuple[str, ...] = ("kms:Decrypt",)
) -> dict[str, Any]:
    return {
        "Sid": "enclave",
        "Effect": "Allow",
        "Principal": {"AWS": ENCLAVE_ROLE},
        "Action": list(actions),
        "Resource": "*",
        "Condition": condition,
    }


def key_with_policy(kms: Any, text: str) -> str:
    key_id: str = kms.create_key(Policy=text)["KeyMetadata"]["KeyId"]
    return key_id


# ===========================================================================
# CiphertextForRecipient: the CMS envelope
# ===========================================================================


def test_reader_opens_the_real_kms_vectors(att_vectors_dir: Path) -> None:
    # The test reader itself is checked against envelopes AWS KMS produced.
    manifest = json.loads((att_vectors_dir / "kms_cfr_vectors.json").read_text())
    opened = 0
    for case in manifest["cases"]:
        if not case.get("private_key_file"):
            continue
        raw = (att_vectors_dir / case["private_key_file"]).read_bytes()
        if raw.startswith(b"-----"):
            key = serialization.load_pem_private_key(raw, password=None)
        else:
            key = serialization.load_der_private_key(raw, password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        ber = (att_vectors_dir / case["blob_file"]).read_bytes()
        assert open_envelope(ber, key).hex() == case["expected_plaintext_hex"]
        opened += 1
    assert opened == 3


def test_envelope_is_byte_for_byte_the_real_layout(
    rsa_key: rsa.RSAPrivateKey, att_vectors_dir: Path
) -> None:
    # kms_cfr_1.ber is a real 32-byte data key for a 2048-bit recipient: ours must have
    # the same 493 bytes except the four values that are random or key-dependent
    # (offsets from `openssl asn1parse` of the vector).
    real = (att_vectors_dir / "kms_cfr_1.ber").read_bytes()
    ours = build_recipient_envelope(os.urandom(32), spki_of(rsa_key))
    assert len(ours) == len(real) == 493
    variable = {
        "subjectKeyIdentifier": (33, 65),
        "encryptedKey": (131, 387),
        "IV": (415, 431),
        "encryptedContent chunk": (435, 483),
    }
    mask = bytearray(len(real))
    for lo, hi in variable.values():
        mask[lo:hi] = b"\x01" * (hi - lo)
    for i, (a, b) in enumerate(zip(real, ours, strict=True)):
        if not mask[i]:
            assert a == b, f"byte {i} differs: real {a:#04x}, ours {b:#04x}"
    assert tlv_skeleton(ours) == tlv_skeleton(real)
    # The indefinite-length nodes are exactly those of the real envelope.
    indefinite = [(off, ident) for off, ident, indef in tlv_skeleton(ours) if indef]
    assert indefinite == [(0, 0x30), (13, 0xA0), (15, 0x30), (387, 0x30), (431, 0xA0)]
    assert ours[33:65] == hashlib.sha256(spki_of(rsa_key)).digest()


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 32, 999, 1000, 1001, 2500, 4096])
def test_envelope_round_trips_and_chunks(rsa_key: rsa.RSAPrivateKey, size: int) -> None:
    plaintext = os.urandom(size)
    ber = build_recipient_envelope(plaintext, spki_of(rsa_key))
    assert open_envelope(ber, rsa_key) == plaintext
    # encryptedContent: constructed [0] of OCTET STRING chunks of at most 1000 bytes.
    skeleton = tlv_skeleton(ber)
    start = next(
        i for i, (_off, ident, indef) in enumerate(skeleton) if ident == 0xA0 and indef and i > 3
    )
    chunks = []
    for off, ident, _indef in skeleton[start + 1 :]:
        if ident == 0:
            break
        assert ident == 0x04
        chunks.append(off)
    padded = (size // 16 + 1) * 16
    assert len(chunks) == -(-padded // CONTENT_CHUNK_BYTES)


def test_envelopes_are_fresh_each_time(rsa_key: rsa.RSAPrivateKey) -> None:
    a = build_recipient_envelope(b"same data key", spki_of(rsa_key))
    b = build_recipient_envelope(b"same data key", spki_of(rsa_key))
    assert a != b
    assert a[415:431] != b[415:431]  # IV
    assert a[131:387] != b[131:387]  # wrapped CEK (fresh CEK, OAEP randomness)


def test_envelope_is_only_for_its_recipient(
    rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    ber = build_recipient_envelope(b"secret", spki_of(rsa_key))
    with pytest.raises(AssertionError):  # the reader checks the subjectKeyIdentifier first
        open_envelope(ber, other_rsa_key)


def test_envelope_opens_with_openssl_cms(rsa_key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    # A second, independent opinion: OpenSSL's own CMS implementation.
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl binary")
    plaintext = os.urandom(2500)
    (tmp_path / "env.ber").write_bytes(build_recipient_envelope(plaintext, spki_of(rsa_key)))
    (tmp_path / "key.pem").write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    done = subprocess.run(
        [openssl, "cms", "-decrypt", "-inform", "DER", "-in", str(tmp_path / "env.ber"),
         "-inkey", str(tmp_path / "key.pem"), "-out", str(tmp_path / "out.bin")],
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.bin").read_bytes() == plaintext


def test_envelope_through_the_production_parser(rsa_key: rsa.RSAPrivateKey) -> None:
    cms_mod = pytest.importorskip("ephemeralml.common._cms")
    plaintext = os.urandom(32)
    ber = build_recipient_envelope(plaintext, spki_of(rsa_key))
    assert cms_mod.open_recipient_envelope(ber, rsa_key) == plaintext


def test_envelope_refuses_keys_it_cannot_use() -> None:
    ec_spki = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    small = spki_of(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    for bad, message in (
        (ec_spki, "not an RSA key"),
        (small, "1024 bits"),
        (b"\x30\x03\x02\x01\x00", "not a SubjectPublicKeyInfo"),
    ):
        with pytest.raises(KeyReleaseError, match=message):
            build_recipient_envelope(b"x", bad)


# ===========================================================================
# Key policy evaluation (pure)
# ===========================================================================


def one(
    condition: Mapping[str, Any] | None = None,
    *,
    effect: str = "Allow",
    action: Any = "kms:Decrypt",
    resource: Any = "*",
) -> dict[str, Any]:
    st: dict[str, Any] = {
        "Effect": effect,
        "Principal": "*",
        "Action": action,
        "Resource": resource,
    }
    if condition is not None:
        st["Condition"] = condition
    return {"Version": "2012-10-17", "Statement": [st]}


HEX0 = PCR0.hex()
WITH_DOC = {"kms:RecipientAttestation:PCR0": HEX0, "kms:RecipientAttestation:ImageSha384": HEX0}


@pytest.mark.parametrize(
    ("operator", "absent", "present_match", "present_other"),
    [
        # AWS: an absent key fails a condition, except that a negated operator then
        # holds, and ...IfExists holds (IAM JSON reference, "Condition operators").
        ("StringEquals", False, True, False),
        ("StringEqualsIgnoreCase", False, True, False),
        ("StringNotEquals", True, False, True),
        ("StringNotEqualsIgnoreCase", True, False, True),
        ("StringEqualsIfExists", True, True, False),
        ("StringEqualsIgnoreCaseIfExists", True, True, False),
        ("StringNotEqualsIfExists", True, False, True),
        ("StringLike", False, True, False),
        ("StringNotLike", True, False, True),
    ],
)
def test_policy_operators_and_absent_keys(
    operator: str, absent: bool, present_match: bool, present_other: bool
) -> None:
    p = one({operator: {"kms:RecipientAttestation:PCR0": HEX0}})
    assert evaluate_policy(p, "kms:Decrypt", {}) is absent
    assert evaluate_policy(p, "kms:Decrypt", WITH_DOC) is present_match
    other = {"kms:RecipientAttestation:PCR0": OTHER_PCR0.hex()}
    assert evaluate_policy(p, "kms:Decrypt", other) is present_other


def test_policy_case_rules() -> None:
    upper = HEX0.upper()
    assert not evaluate_policy(
        one({"StringEquals": {"kms:RecipientAttestation:PCR0": upper}}), "kms:Decrypt", WITH_DOC
    )
    assert evaluate_policy(
        one({"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": upper}}),
        "kms:Decrypt",
        WITH_DOC,
    )
    assert not evaluate_policy(
        one({"StringNotEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": upper}}),
        "kms:Decrypt",
        WITH_DOC,
    )
    # Condition key names and action names are case-insensitive; values are not.
    assert evaluate_policy(
        one({"StringEquals": {"KMS:recipientattestation:pcr0": HEX0}}), "kms:Decrypt", WITH_DOC
    )
    assert evaluate_policy(one(action="KMS:DECRYPT"), "kms:Decrypt", {})
    assert evaluate_policy(one(), "kms:decrypt", {})


def test_policy_value_lists_are_any_of() -> None:
    listed = [OTHER_PCR0.hex(), HEX0]
    assert evaluate_policy(
        one({"StringEquals": {"kms:RecipientAttestation:PCR0": listed}}), "kms:Decrypt", WITH_DOC
    )
    assert not evaluate_policy(
        one({"StringEquals": {"kms:RecipientAttestation:PCR0": [OTHER_PCR0.hex()]}}),
        "kms:Decrypt",
        WITH_DOC,
    )
    # A negated operator holds only when the value matches none of the list.
    assert not evaluate_policy(
        one({"StringNotEquals": {"kms:RecipientAttestation:PCR0": listed}}), "kms:Decrypt", WITH_DOC
    )


def test_policy_conditions_are_all_of() -> None:
    both = {
        "StringEqualsIgnoreCase": {
            "kms:RecipientAttestation:ImageSha384": HEX0,
            "kms:RecipientAttestation:PCR8": PCR8.hex(),
        }
    }
    ctx = {**WITH_DOC, "kms:RecipientAttestation:PCR8": PCR8.hex()}
    assert evaluate_policy(one(both), "kms:Decrypt", ctx)
    assert not evaluate_policy(one(both), "kms:Decrypt", WITH_DOC)  # PCR8 absent
    two_ops = {
        "StringEquals": {"kms:RecipientAttestation:PCR0": HEX0},
        "StringNotEquals": {"kms:RecipientAttestation:PCR8": "00" * 48},
    }
    assert evaluate_policy(one(two_ops), "kms:Decrypt", ctx)
    assert not evaluate_policy(
        one(two_ops), "kms:Decrypt", {**ctx, "kms:RecipientAttestation:PCR8": "00" * 48}
    )


def test_policy_actions_and_resources() -> None:
    assert evaluate_policy(one(action="kms:*"), "kms:GenerateDataKey", {})
    assert evaluate_policy(one(action="*"), "kms:GenerateDataKey", {})
    assert evaluate_policy(one(action="kms:Generate*"), "kms:GenerateDataKey", {})
    assert evaluate_policy(one(action="kms:GenerateDataKe?"), "kms:GenerateDataKey", {})
    assert evaluate_policy(one(action=["kms:Encrypt", "kms:Decrypt"]), "kms:Decrypt", {})
    assert not evaluate_policy(one(action="kms:Encrypt"), "kms:Decrypt", {})
    assert not evaluate_policy(one(action="kms:Decrypt*"), "kms:Encrypt", {})
    assert not evaluate_policy(one(action="s3:*"), "kms:Decrypt", {})
    arn = "arn:aws:kms:us-east-1:111122223333:key/" + str(uuid.uuid4())
    assert evaluate_policy(one(resource=arn), "kms:Decrypt", {}, resource=arn)
    assert evaluate_policy(
        one(resource="arn:aws:kms:us-east-1:111122223333:key/*"), "kms:Decrypt", {}, resource=arn
    )
    assert not evaluate_policy(one(resource=arn + "0"), "kms:Decrypt", {}, resource=arn)


def test_policy_explicit_deny_wins() -> None:
    p = {
        "Statement": [
            {"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"},
            {
                "Effect": "Deny",
                "Principal": "*",
                "Action": "kms:Decrypt",
                "Resource": "*",
                "Condition": {"StringNotEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": HEX0}},
            },
        ]
    }
    assert policy_decision(p, "kms:Decrypt", WITH_DOC) is Decision.ALLOW
    # No document: the negated condition holds on the absent key, so the Deny applies.
    assert policy_decision(p, "kms:Decrypt", {}) is Decision.EXPLICIT_DENY
    assert (
        policy_decision(p, "kms:Decrypt", {"kms:RecipientAttestation:PCR0": OTHER_PCR0.hex()})
        is Decision.EXPLICIT_DENY
    )
    assert policy_decision(p, "kms:Encrypt", {}) is Decision.ALLOW
    assert policy_decision(one(action="kms:Encrypt"), "kms:Decrypt", {}) is Decision.IMPLICIT_DENY


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"Statement": []},
        {"Version": "2099-01-01", "Statement": one()["Statement"]},
        {"Statement": one()["Statement"], "Extra": 1},
        one({"NumericEquals": {"kms:RecipientAttestation:PCR0": "1"}}),
        one({"ForAnyValue:StringEquals": {"kms:RecipientAttestation:PCR0": "1"}}),
        one({"Bool": {"aws:SecureTransport": "true"}}),
        one({"StringEquals": {"kms:RecipientAttestation:PCR0": []}}),
        one({"StringEquals": {"kms:RecipientAttestation:PCR0": 5}}),
        one({"StringEquals": {}}),
        one(action=[]),
        one(action="Decrypt"),
        one(effect="Maybe"),
        {"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*"}]},
        {"Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]},
        {
            "Statement": [
                {"Effect": "Allow", "Principal": "*", "NotAction": "kms:Decrypt", "Resource": "*"}
            ]
        },
        {
            "Statement": [
                {"Effect": "Allow", "Principal": {"Robot": "x"}, "Action": "kms:*", "Resource": "*"}
            ]
        },
    ],
)
def test_policy_malformed(bad: Any) -> None:
    with pytest.raises(MalformedPolicyError):
        validate_policy(bad)
    with pytest.raises(MalformedPolicyError):
        evaluate_policy(bad, "kms:Decrypt", {})


def test_policy_statement_may_be_a_single_object() -> None:
    p = {
        "Statement": {
            "Effect": "Allow",
            "Principal": {"AWS": [ACCOUNT_ROOT]},
            "Action": "kms:*",
            "Resource": "*",
        }
    }
    assert evaluate_policy(p, "kms:Decrypt", {})


# ===========================================================================
# The server through boto3: operations
# ===========================================================================


def test_create_and_describe_key(kms: Any) -> None:
    meta = kms.create_key(
        Description="model key", KeySpec="SYMMETRIC_DEFAULT", KeyUsage="ENCRYPT_DECRYPT"
    )["KeyMetadata"]
    key_id = meta["KeyId"]
    assert str(uuid.UUID(key_id)) == key_id
    assert meta["Arn"] == f"arn:aws:kms:us-east-1:111122223333:key/{key_id}"
    assert meta["Description"] == "model key"
    assert meta["KeyState"] == "Enabled" and meta["Enabled"] is True
    assert meta["KeySpec"] == "SYMMETRIC_DEFAULT" and meta["KeyUsage"] == "ENCRYPT_DECRYPT"
    assert isinstance(meta["CreationDate"], datetime)
    for name in (key_id, meta["Arn"]):
        described = kms.describe_key(KeyId=name)["KeyMetadata"]
        assert described["KeyId"] == key_id and described["Arn"] == meta["Arn"]


def test_unknown_keys_are_not_found(kms: Any) -> None:
    for name in (
        str(uuid.uuid4()),
        f"arn:aws:kms:us-east-1:111122223333:key/{uuid.uuid4()}",
        "not-a-key-id",
        "alias/model",
        f"arn:aws:kms:eu-west-1:111122223333:key/{uuid.uuid4()}",
    ):
        with pytest.raises(ClientError) as e:
            kms.describe_key(KeyId=name)
        assert error_code(e) == "NotFoundException"
        with pytest.raises(ClientError) as e:
            kms.generate_data_key(KeyId=name, KeySpec="AES_256")
        assert error_code(e) == "NotFoundException"


def test_create_key_refuses_what_the_mock_does_not_make(kms: Any) -> None:
    with pytest.raises(ClientError) as e:
        kms.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")
    assert error_code(e) == "UnsupportedOperationException"
    with pytest.raises(ClientError) as e:
        kms.create_key(KeySpec="AES_512")
    assert error_code(e) == "ValidationException"
    assert "enum value set" in str(e.value)


def test_generate_data_key_and_decrypt(kms: Any) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    arn = kms.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    for args, length in (
        ({"KeySpec": "AES_256"}, 32),
        ({"KeySpec": "AES_128"}, 16),
        ({"NumberOfBytes": 64}, 64),
    ):
        made = kms.generate_data_key(KeyId=key_id, **args)
        assert len(made["Plaintext"]) == length
        assert made["KeyId"] == arn
        assert "CiphertextForRecipient" not in made
        blob = made["CiphertextBlob"]
        assert blob[0] == BLOB_VERSION and blob[1:17] == uuid.UUID(key_id).bytes
        for named in ({}, {"KeyId": key_id}, {"KeyId": arn}):
            out = kms.decrypt(CiphertextBlob=blob, EncryptionAlgorithm="SYMMETRIC_DEFAULT", **named)
            assert out["Plaintext"] == made["Plaintext"]
            assert out["KeyId"] == arn and out["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    for bad in ({}, {"KeySpec": "AES_256", "NumberOfBytes": 32}):
        with pytest.raises(ClientError) as e:
            kms.generate_data_key(KeyId=key_id, **bad)
        assert error_code(e) == "ValidationException"


def test_encrypt_decrypt_and_encryption_context(kms: Any) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    ctx = {"model": "minilm", "version": "1"}
    out = kms.encrypt(KeyId=key_id, Plaintext=b"model key bytes", EncryptionContext=ctx)
    assert out["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    blob = out["CiphertextBlob"]
    assert (
        kms.decrypt(CiphertextBlob=blob, EncryptionContext=dict(reversed(list(ctx.items()))))[
            "Plaintext"
        ]
        == b"model key bytes"
    )
    for wrong in ({}, {"model": "minilm"}, {**ctx, "version": "2"}):
        with pytest.raises(ClientError) as e:
            kms.decrypt(CiphertextBlob=blob, EncryptionContext=wrong)
        assert error_code(e) == "InvalidCiphertextException"
    with pytest.raises(ClientError) as e:
        kms.encrypt(KeyId=key_id, Plaintext=b"x", EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    assert error_code(e) == "InvalidKeyUsageException"


def test_decrypt_with_another_key_id_is_incorrect_key(kms: Any) -> None:
    a = kms.create_key()["KeyMetadata"]["KeyId"]
    b = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=a, Plaintext=b"data")["CiphertextBlob"]
    with pytest.raises(ClientError) as e:
        kms.decrypt(CiphertextBlob=blob, KeyId=b)
    assert error_code(e) == "IncorrectKeyException"


@pytest.mark.parametrize("where", [0, 1, 16, 17, 28, 29, -1])
def test_tampered_blob_is_invalid_ciphertext(kms: Any, where: int) -> None:
    # Version byte, key id (first and last byte), nonce (first and last), ciphertext, tag.
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = bytearray(kms.encrypt(KeyId=key_id, Plaintext=b"secret data")["CiphertextBlob"])
    blob[where] ^= 0x01
    with pytest.raises(ClientError) as e:
        kms.decrypt(CiphertextBlob=bytes(blob))
    assert error_code(e) == "InvalidCiphertextException"


def test_short_and_foreign_blobs_are_invalid_ciphertext(
    kms: Any, tmp_path: Path, root: TrustedRoot, clock: Clock
) -> None:
    kms.create_key()
    with MockKmsServer(tmp_path / "elsewhere", trusted_root=root, clock=clock) as other:
        other_kms = client_for(other)
        foreign = other_kms.encrypt(
            KeyId=other_kms.create_key()["KeyMetadata"]["KeyId"], Plaintext=b"x"
        )["CiphertextBlob"]
    for blob in (foreign, b"\x01", b"\x01" + bytes(44), b"\x02" + foreign[1:]):
        with pytest.raises(ClientError) as e:
            kms.decrypt(CiphertextBlob=blob)
        assert error_code(e) == "InvalidCiphertextException"


def test_dry_run(kms: Any) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    with pytest.raises(ClientError) as e:
        kms.generate_data_key(KeyId=key_id, KeySpec="AES_256", DryRun=True)
    assert error_code(e) == "DryRunOperationException"


def test_key_policies_get_put_and_default(kms: Any) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    got = kms.get_key_policy(KeyId=key_id, PolicyName="default")
    assert got["PolicyName"] == "default"
    default = json.loads(got["Policy"])
    assert default["Statement"][0]["Action"] == "kms:*"
    assert default["Statement"][0]["Principal"] == {"AWS": ACCOUNT_ROOT}
    new = policy(
        ADMIN,
        enclave_statement({"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": HEX0}}),
    )
    kms.put_key_policy(KeyId=key_id, PolicyName="default", Policy=new)
    assert kms.get_key_policy(KeyId=key_id)["Policy"] == new
    with pytest.raises(ClientError) as e:
        kms.put_key_policy(KeyId=key_id, PolicyName="AWS_RAM", Policy=new)
    assert error_code(e) == "ValidationException"
    with pytest.raises(ClientError) as e:
        kms.get_key_policy(KeyId=key_id, PolicyName="AWS_RAM")
    assert error_code(e) == "NotFoundException"


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        '{"Statement": [], "Statement": []}',
        policy(ADMIN, enclave_statement({"NumericEquals": {"kms:RecipientAttestation:PCR0": "1"}})),
        policy({**ADMIN, "Effect": "Perhaps"}),
    ],
)
def test_malformed_policies_are_refused(kms: Any, text: str) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    with pytest.raises(ClientError) as e:
        kms.put_key_policy(KeyId=key_id, PolicyName="default", Policy=text)
    assert error_code(e) == "MalformedPolicyDocumentException"
    with pytest.raises(ClientError) as e:
        kms.create_key(Policy=text)
    assert error_code(e) == "MalformedPolicyDocumentException"


def test_policy_lockout_safety_check(kms: Any) -> None:
    only_decrypt = policy(
        enclave_statement({"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": HEX0}})
    )
    with pytest.raises(ClientError) as e:
        kms.create_key(Policy=only_decrypt)
    assert error_code(e) == "MalformedPolicyDocumentException"
    assert "will not allow you to update the key policy" in str(e.value)
    key_id = kms.create_key(Policy=only_decrypt, BypassPolicyLockoutSafetyCheck=True)[
        "KeyMetadata"
    ]["KeyId"]
    with pytest.raises(ClientError) as e:
        kms.describe_key(KeyId=key_id)
    assert error_code(e) == "AccessDeniedException"


def test_every_key_operation_is_authorized_by_the_policy(kms: Any) -> None:
    key_id = key_with_policy(
        kms, policy({**ADMIN, "Action": ["kms:PutKeyPolicy", "kms:GetKeyPolicy"]})
    )
    calls: tuple[Callable[[], object], ...] = (
        lambda: kms.describe_key(KeyId=key_id),
        lambda: kms.encrypt(KeyId=key_id, Plaintext=b"x"),
        lambda: kms.generate_data_key(KeyId=key_id, KeySpec="AES_256"),
    )
    for call in calls:
        with pytest.raises(ClientError) as e:
            call()
        assert error_code(e) == "AccessDeniedException"
    kms.get_key_policy(KeyId=key_id)


def test_restart_keeps_keys_and_policies(tmp_path: Path, root: TrustedRoot, clock: Clock) -> None:
    state = tmp_path / "kms-state"
    with MockKmsServer(state, trusted_root=root, clock=clock) as first:
        kms = client_for(first)
        key_id = kms.create_key(Description="persisted")["KeyMetadata"]["KeyId"]
        made = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256")
        new_policy = policy(
            {"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"}
        )
        kms.put_key_policy(KeyId=key_id, PolicyName="default", Policy=new_policy)
    keys_dir = state / "keys"
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    files = sorted(keys_dir.iterdir())
    assert [f.name for f in files] == [f"{key_id}.json"]
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert base64.b64encode(made["Plaintext"]) not in files[0].read_bytes()
    with MockKmsServer(state, trusted_root=root, clock=clock) as second:
        kms = client_for(second)
        assert kms.decrypt(CiphertextBlob=made["CiphertextBlob"])["Plaintext"] == made["Plaintext"]
        assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["Description"] == "persisted"
        assert kms.get_key_policy(KeyId=key_id)["Policy"] == new_policy


def test_corrupt_key_file_stops_the_start(tmp_path: Path, root: TrustedRoot) -> None:
    keys = tmp_path / "kms" / "keys"
    keys.mkdir(parents=True)
    (keys / f"{uuid.uuid4()}.json").write_text("{}")
    with pytest.raises(ConfigError, match="corrupt"):
        MockKmsServer(tmp_path / "kms", trusted_root=root)


def test_server_listens_on_loopback_only(tmp_path: Path, root: TrustedRoot) -> None:
    for host in ("0.0.0.0", "192.0.2.1", "example.com"):
        with pytest.raises(ConfigError, match="loopback"):
            MockKmsServer(tmp_path / "kms", trusted_root=root, listen=(host, 0))


# ===========================================================================
# Recipient: attested key release
# ===========================================================================


def test_decrypt_for_recipient_returns_the_same_key_sealed(
    kms: Any, nsm: MockNsm, rsa_key: rsa.RSAPrivateKey
) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    made = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256")
    doc = nsm.get_attestation_doc(public_key=spki_of(rsa_key), user_data=None, nonce=None)
    out = kms.decrypt(CiphertextBlob=made["CiphertextBlob"], Recipient=recipient(doc))
    assert "Plaintext" not in out
    assert out["KeyId"].endswith(key_id)
    assert open_envelope(out["CiphertextForRecipient"], rsa_key) == made["Plaintext"]


def test_generate_data_key_for_recipient(
    kms: Any, nsm: MockNsm, rsa_key: rsa.RSAPrivateKey
) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    doc = nsm.get_attestation_doc(public_key=spki_of(rsa_key), user_data=None, nonce=None)
    made = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256", Recipient=recipient(doc))
    assert "Plaintext" not in made
    data_key = open_envelope(made["CiphertextForRecipient"], rsa_key)
    assert len(data_key) == 32
    assert kms.decrypt(CiphertextBlob=made["CiphertextBlob"])["Plaintext"] == data_key


@pytest.fixture
def attested_key(kms: Any) -> str:
    """A key the host may manage and encrypt with, but only an enclave with PCR0 may decrypt."""
    return key_with_policy(
        kms,
        policy(
            ADMIN,
            enclave_statement(
                {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": PCR0.hex().upper()}}
            ),
        ),
    )


def test_pcr0_policy_releases_only_to_the_measured_enclave(
    kms: Any,
    enclave_kms: Any,
    attested_key: str,
    nsm: MockNsm,
    nsm_dir: Path,
    clock: Clock,
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    blob = kms.encrypt(KeyId=attested_key, Plaintext=b"model key")["CiphertextBlob"]
    good = nsm.get_attestation_doc(public_key=spki_of(rsa_key), user_data=None, nonce=None)
    out = enclave_kms.decrypt(CiphertextBlob=blob, KeyId=attested_key, Recipient=recipient(good))
    assert open_envelope(out["CiphertextForRecipient"], rsa_key) == b"model key"

    # The host calling Decrypt itself with the enclave's credentials, no document: denied.
    with pytest.raises(ClientError) as e:
        enclave_kms.decrypt(CiphertextBlob=blob)
    assert error_code(e) == "AccessDeniedException"
    assert str(e.value).endswith(
        "User: arn:aws:sts::111122223333:assumed-role/ephemeralml-enclave/mock is not "
        f"authorized to perform: kms:Decrypt on resource: arn:aws:kms:us-east-1:111122223333:"
        f"key/{attested_key} because no resource-based policy allows the kms:Decrypt action"
    )

    # Same mock root, another image.
    impostor = MockNsm.load_or_create(nsm_dir, {**PCRS, 0: OTHER_PCR0}, clock=clock)
    bad = impostor.get_attestation_doc(public_key=spki_of(rsa_key), user_data=None, nonce=None)
    with pytest.raises(ClientError) as e:
        enclave_kms.decrypt(CiphertextBlob=blob, Recipient=recipient(bad))
    assert error_code(e) == "AccessDeniedException"


def test_debug_mode_document_is_denied(
    kms: Any,
    enclave_kms: Any,
    attested_key: str,
    nsm_dir: Path,
    clock: Clock,
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    blob = kms.encrypt(KeyId=attested_key, Plaintext=b"model key")["CiphertextBlob"]
    debug = MockNsm.load_or_create(nsm_dir, {}, clock=clock)  # every PCR zero
    assert not any(debug.pcrs[0])
    doc = debug.get_attestation_doc(public_key=spki_of(rsa_key), user_data=None, nonce=None)
    with pytest.raises(ClientError) as e:
        enclave_kms.decrypt(CiphertextBlob=blob, Recipient=recipient(doc))
    assert error_code(e) == "AccessDeniedException"


@pytest.mark.parametrize(
    "condition",
    [
        {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": PCR0.hex()}},
        {"StringEquals": {"kms:RecipientAttestation:PCR8": PCR8.hex()}},
        {
            "StringEqualsIgnoreCase": {
                "kms:RecipientAttestation:ImageSha384": PCR0.hex(),
                "kms:RecipientAttestation:PCR1": PCR1.hex(),
                "kms:RecipientAttestation:PCR2": PCR2.hex(),
            }
        },
    ],
    ids=["ImageSha384", "PCR8", "PCR0-1-2"],
)
def test_other_attestation_condition_keys(
    kms: Any,
    enclave_kms: Any,
    nsm: MockNsm,
    nsm_dir: Path,
    clock: Clock,
    rsa_key: rsa.RSAPrivateKey,
    condition: dict[str, Any],
) -> None:
    key_id = key_with_policy(
        kms, policy(ADMIN, enclave_statement(condition, ("kms:Decrypt", "kms:GenerateDataKey")))
    )
    good = nsm.get_attestation_doc(public_key=spki_of(rsa_key), user_data=None, nonce=None)
    made = enclave_kms.generate_data_key(
        KeyId=key_id, KeySpec="AES_256", Recipient=recipient(good)
    )
    out = enclave_kms.decrypt(CiphertextBlob=made["CiphertextBlob"], Recipient=recipient(good))
    assert open_envelope(out["CiphertextForRecipient"], rsa_key) == open_envelope(
        made["CiphertextForRecipient"], rsa_key
    )
    calls: tuple[Callable[[], object], ...] = (
        lambda: enclave_kms.decrypt(CiphertextBlob=made["CiphertextBlob"]),
        lambda: enclave_kms.generate_data_key(KeyId=key_id, KeySpec="AES_256"),
        lambda: kms.decrypt(CiphertextBlob=made["CiphertextBlob"], Recipient=recipient(good)),
    )
    for call in calls:
        with pytest.raises(ClientError) as e:
            call()
        assert error_code(e) == "AccessDeniedException"
    changed = {0: OTHER_PCR0} if "PCR8" not in json.dumps(condition) else {8: bytes(48)}
    other = MockNsm.load_or_create(nsm_dir, {**PCRS, **changed}, clock=clock)
    bad = other.get_attestation_doc(public_key=spki_of(rsa_key), user_data=None, nonce=None)
    with pytest.raises(ClientError) as e:
        enclave_kms.decrypt(CiphertextBlob=made["CiphertextBlob"], Recipient=recipient(bad))
    assert error_code(e) == "AccessDeniedException"


def test_explicit_deny_wins_over_allow(
    kms: Any, nsm: MockNsm, nsm_dir: Path, clock: Clock, rsa_key: rsa.RSAPrivateKey
) -> None:
    deny_unattested = {
        "Sid": "deny-unless-enclave",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "kms:Decrypt",
        "Resource": "*",
        "Condition": {"StringNotEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": PCR0.hex()}},
    }
    allow_all = {
        "Effect": "Allow",
        "Principal": {"AWS": ACCOUNT_ROOT},
        "Action": "kms:*",
        "Resource": "*",
    }
    key_id = key_with_policy(kms, policy(allow_all, deny_unattested))
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"k")["CiphertextBlob"]
    with pytest.raises(ClientError) as e:
        kms.decrypt(CiphertextBlob=blob)
    assert error_code(e) == "AccessDeniedException"
    assert "with an explicit deny in a resource-based policy" in str(e.value)
    good = nsm.get_attestation_doc(public_key=spki_of(rsa_key), user_data=None, nonce=None)
    assert (
        open_envelope(
            kms.decrypt(CiphertextBlob=blob, Recipient=recipient(good))["CiphertextForRecipient"],
            rsa_key,
        )
        == b"k"
    )
    other = MockNsm.load_or_create(nsm_dir, {**PCRS, 0: OTHER_PCR0}, clock=clock)
    bad = other.get_attestation_doc(public_key=spki_of(rsa_key), user_data=None, nonce=None)
    with pytest.raises(ClientError) as e:
        kms.decrypt(CiphertextBlob=blob, Recipient=recipient(bad))
    assert "explicit deny" in str(e.value)


def test_document_from_another_root_is_invalid(
    kms: Any, tmp_path: Path, clock: Clock, rsa_key: rsa.RSAPrivateKey
) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"k")["CiphertextBlob"]
    stranger = MockNsm.load_or_create(tmp_path / "other-nsm", PCRS, clock=clock)
    doc = stranger.get_attestation_doc(public_key=spki_of(rsa_key), user_data=None, nonce=None)
    with pytest.raises(ClientError) as e:
        kms.decrypt(CiphertextBlob=blob, Recipient=recipient(doc))
    assert error_code(e) == "ValidationException"
    assert "attestation document is not valid" in str(e.value)
    assert "A4 chain" in str(e.value)


def test_tampered_document_is_invalid(kms: Any, nsm: MockNsm, rsa_key: rsa.RSAPrivateKey) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    doc = bytearray(
        nsm.get_attestation_doc(public_key=spki_of(rsa_key), user_data=None, nonce=None)
    )
    doc[-1] ^= 0x01  # last signature byte
    for bad in (bytes(doc), b"\xa0", b"not cbor at all"):
        with pytest.raises(ClientError) as e:
            kms.generate_data_key(KeyId=key_id, KeySpec="AES_256", Recipient=recipient(bad))
        assert error_code(e) == "ValidationException"


def test_document_with_an_unparsable_certificate_is_invalid_not_a_500(
    kms: Any, nsm: MockNsm, rsa_key: rsa.RSAPrivateKey
) -> None:
    # Issue 7, finding 5: cryptography's x509.InvalidVersion escaped the verifier and
    # the local KMS server answered 500 (KMSInternalException).
    import cbor2

    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    doc = nsm.get_attestation_doc(public_key=spki_of(rsa_key), user_data=None, nonce=None)
    protected, unprotected, payload, sig = cbor2.loads(doc)
    body = cbor2.loads(payload)
    leaf = bytearray(body["certificate"])
    leaf[leaf.index(b"\xa0\x03\x02\x01\x02") + 4] = 0x07
    body["certificate"] = bytes(leaf)
    bad = cbor2.dumps([protected, unprotected, cbor2.dumps(body), sig])
    with pytest.raises(ClientError) as e:
        kms.generate_data_key(KeyId=key_id, KeySpec="AES_256", Recipient=recipient(bad))
    assert error_code(e) == "ValidationException"
    assert "A3 signature: leaf certificate is not a DER X.509 certificate (InvalidVersion" in str(e.value)


def test_document_freshness_is_not_checked_but_validity_is(
    kms: Any, nsm: MockNsm, clock: Clock, rsa_key: rsa.RSAPrivateKey
) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    doc = nsm.get_attestation_doc(public_key=spki_of(rsa_key), user_data=None, nonce=None)
    # Two hours later the document is far past any client's freshness window, but
    # AWS KMS accepts a replayed document, and so does the mock.
    clock.t = START + timedelta(hours=2)
    made = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256", Recipient=recipient(doc))
    assert len(open_envelope(made["CiphertextForRecipient"], rsa_key)) == 32
    # Past the leaf certificate's 3 hours, the chain is no longer valid now.
    clock.t = START + timedelta(hours=3, minutes=1)
    with pytest.raises(ClientError) as e:
        kms.generate_data_key(KeyId=key_id, KeySpec="AES_256", Recipient=recipient(doc))
    assert error_code(e) == "ValidationException"
    assert "A5 validity" in str(e.value)


def test_recipient_key_must_be_rsa(kms: Any, nsm: MockNsm) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    ec_spki = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    small = spki_of(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    for public_key, message in (
        (ec_spki, "not an RSA key"),
        (small, "1024 bits"),
        (b"\x01" * 32, "not a SubjectPublicKeyInfo"),
        (None, "no public key"),
    ):
        doc = nsm.get_attestation_doc(public_key=public_key, user_data=None, nonce=None)
        with pytest.raises(ClientError) as e:
            kms.generate_data_key(KeyId=key_id, KeySpec="AES_256", Recipient=recipient(doc))
        assert error_code(e) == "ValidationException"
        assert message in str(e.value)


def test_recipient_algorithm_and_fields_are_checked(
    kms: Any, nsm: MockNsm, rsa_key: rsa.RSAPrivateKey
) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    doc = nsm.get_attestation_doc(public_key=spki_of(rsa_key), user_data=None, nonce=None)
    for bad in (
        recipient(doc, "RSAES_OAEP_SHA_1"),
        {"AttestationDocument": doc},
        {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256"},
    ):
        with pytest.raises(ClientError) as e:
            kms.generate_data_key(KeyId=key_id, KeySpec="AES_256", Recipient=bad)
        assert error_code(e) == "ValidationException"


# ===========================================================================
# The wire: raw HTTP
# ===========================================================================


def signed_headers(
    server: MockKmsServer, body: bytes, headers: Mapping[str, str], method: str = "POST"
) -> dict[str, str]:
    """``headers`` plus SigV4 (X-Amz-Date, X-Amz-Security-Token, Authorization), as the owner."""
    creds = server.credentials(MODEL_OWNER)
    request = AWSRequest(method=method, url=server.url + "/", data=body, headers=dict(headers))
    SigV4Auth(
        Credentials(creds.access_key_id, creds.secret_access_key, creds.session_token),
        "kms",
        "us-east-1",
    ).add_auth(request)
    return dict(request.headers.items())


def raw_post(
    server: MockKmsServer,
    body: bytes,
    *,
    target: str | None = "TrentService.DescribeKey",
    method: str = "POST",
    headers: Mapping[str, str] | None = None,
    sign: bool = True,
) -> tuple[int, dict[str, str], bytes]:
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        h = {"Content-Type": "application/x-amz-json-1.1", **(headers or {})}
        if target is not None:
            h["X-Amz-Target"] = target
        if sign:
            h = signed_headers(server, body, h, method)
        conn.request(method, "/", body=body, headers=h)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("body", "target", "code"),
    [
        (b"{not json", "TrentService.DescribeKey", "SerializationException"),
        (b'["a list"]', "TrentService.DescribeKey", "SerializationException"),
        (b'{"KeyId": 5}', "TrentService.DescribeKey", "SerializationException"),
        (b'{"KeyId": "a", "KeyId": "b"}', "TrentService.DescribeKey", "SerializationException"),
        (b'{"CiphertextBlob": "!!not base64!!"}', "TrentService.Decrypt", "SerializationException"),
        (b"{}", "TrentService.DescribeKey", "ValidationException"),
        (b'{"KeyId": ""}', "TrentService.DescribeKey", "ValidationException"),
        (
            b'{"KeyId": "x", "NumberOfBytes": 2048}',
            "TrentService.GenerateDataKey",
            "ValidationException",
        ),
        (b"{}", "TrentService.ScheduleKeyDeletion", "UnknownOperationException"),
        (b"{}", "Other.DescribeKey", "UnknownOperationException"),
        (b"{}", None, "UnknownOperationException"),
    ],
)
def test_malformed_requests(
    server: MockKmsServer, body: bytes, target: str | None, code: str
) -> None:
    status, headers, raw = raw_post(server, body, target=target)
    assert status == 400
    assert headers["content-type"] == "application/x-amz-json-1.1"
    assert str(uuid.UUID(headers["x-amzn-requestid"])) == headers["x-amzn-requestid"]
    err = json.loads(raw)
    assert err["__type"] == code
    assert isinstance(err["message"], str) and err["message"]


def test_malformed_json_through_boto3_is_a_client_error(server: MockKmsServer) -> None:
    # botocore turns the error body into a ClientError with the code we sent.
    kms = client_for(server)

    def corrupt(request: Any, **_: Any) -> None:
        request.data = b"{not json"

    kms.meta.events.register("before-sign.kms.DescribeKey", corrupt)
    with pytest.raises(ClientError) as e:
        kms.describe_key(KeyId=str(uuid.uuid4()))
    assert error_code(e) == "SerializationException"


def test_oversized_and_non_post_requests(server: MockKmsServer) -> None:
    status, headers, raw = raw_post(
        server, b"", headers={"Content-Length": str(_mock_kms.MAX_REQUEST_BYTES + 1)}
    )
    assert status == 400 and json.loads(raw)["__type"] == "ValidationException"
    assert headers.get("connection") == "close"
    status, headers, raw = raw_post(server, b"", method="GET")
    assert status == 400 and "x-amzn-requestid" in headers


def test_every_response_has_a_request_id(kms: Any) -> None:
    ok = kms.create_key()
    assert uuid.UUID(ok["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"])
    with pytest.raises(ClientError) as e:
        kms.describe_key(KeyId=str(uuid.uuid4()))
    assert uuid.UUID(e.value.response["ResponseMetadata"]["RequestId"])


def test_logs_name_operations_but_never_secrets(
    kms: Any, nsm: MockNsm, rsa_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="ephemeralml.host.mock_kms"):
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]
        made = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256")
        kms.decrypt(CiphertextBlob=made["CiphertextBlob"])
        doc = nsm.get_attestation_doc(public_key=spki_of(rsa_key), user_data=None, nonce=None)
        kms.decrypt(CiphertextBlob=made["CiphertextBlob"], Recipient=recipient(doc))
        with pytest.raises(ClientError):
            kms.decrypt(CiphertextBlob=b"\x01" + bytes(60))
    text = caplog.text
    assert "GenerateDataKey ok" in text and key_id in text and "InvalidCiphertextException" in text
    secret = made["Plaintext"]
    for form in (
        secret.hex(),
        base64.b64encode(secret).decode(),
        base64.b64encode(made["CiphertextBlob"]).decode(),
    ):
        assert form not in text


# ===========================================================================
# Standalone: python -m ephemeralml.mock._kms
# ===========================================================================


def _read_line(stream: Any, timeout: float) -> str:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        pytest.fail(f"no line within {timeout} s")


def test_standalone_server_serves_and_stops_on_sigterm(tmp_path: Path, nsm: MockNsm) -> None:
    root_pem = tmp_path / "mock-root.pem"
    nsm.publish_root(root_pem)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ephemeralml.mock._kms", "--state-dir", str(tmp_path / "state"),
         "--root", str(root_pem), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NO_PROXY": "127.0.0.1"},
    )  # fmt: skip
    try:
        line = _read_line(proc.stdout, timeout=30)
        assert line.startswith("mock-kms: listening on http://127.0.0.1:"), line
        url = line.rsplit(" ", 1)[1].strip()
        owner = load_or_create_credentials(tmp_path / "state")[MODEL_OWNER]
        kms = client_with(url, owner)
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert proc.stderr is not None
        assert "MOCK root" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert (tmp_path / "state" / "keys" / f"{key_id}.json").is_file()


def test_main_configuration_errors(
    tmp_path: Path, nsm: MockNsm, capsys: pytest.CaptureFixture[str]
) -> None:
    root_pem = tmp_path / "root.pem"
    nsm.publish_root(root_pem)
    base = ["--state-dir", str(tmp_path / "s"), "--root", str(root_pem)]
    assert _mock_kms.main([*base, "--listen", "0.0.0.0:4566"]) == 2
    assert "loopback only" in capsys.readouterr().err
    assert _mock_kms.main([*base, "--listen", "nonsense"]) == 2
    assert (
        _mock_kms.main(
            ["--state-dir", str(tmp_path / "s"), "--root", str(tmp_path / "missing.pem")]
        )
        == 2
    )
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "junk.pem").write_text("not a certificate")
    assert _mock_kms.main([*base[:2], "--root", str(tmp_path / "junk.pem")]) == 2


def test_stalled_request_body_is_dropped(
    server: MockKmsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A peer that promises more body than it sends must not pin a thread forever.
    monkeypatch.setattr(_mock_kms_server._Handler, "timeout", 0.5)
    host, port = server.address
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: TrentService.DescribeKey\r\n"
            b"Content-Length: 100\r\n\r\n{}"
        )
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    assert received.startswith(b"HTTP/1.1 400")
    assert b"SerializationException" in received


def test_nested_validation_messages_name_the_member(
    kms: Any, nsm: MockNsm, rsa_key: rsa.RSAPrivateKey
) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    doc = nsm.get_attestation_doc(public_key=spki_of(rsa_key), user_data=None, nonce=None)
    with pytest.raises(ClientError) as e:
        kms.decrypt(
            CiphertextBlob=kms.encrypt(KeyId=key_id, Plaintext=b"k")["CiphertextBlob"],
            Recipient=recipient(doc, "RSA_PKCS1"),
        )
    assert "at 'recipient.keyEncryptionAlgorithm'" in str(e.value)
