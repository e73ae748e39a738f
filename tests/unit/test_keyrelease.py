"""Attested key release end to end: mock NSM → boto3 → local KMS server (real HTTP) → CMS."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from ephemeralml.common._attestation import TrustedRoot
from ephemeralml.common._errors import KeyReleaseError
from ephemeralml.enclave._keyrelease import KmsKeyRelease
from ephemeralml.enclave._nsm import MockNsm, mock_measurements
from ephemeralml.host._mock_kms import MockKmsServer
from tests.integration.conftest import free_port

PCRS = mock_measurements(code_digest=b"c" * 48, model_digest=b"m" * 32, runtime_id="build-1")
OTHER_BUILD = mock_measurements(code_digest=b"X" * 48, model_digest=b"m" * 32, runtime_id="build-1")


def kms_client(url: str) -> Any:
    return boto3.client(
        "kms", region_name="us-east-1", endpoint_url=url, aws_access_key_id="test",
        aws_secret_access_key="test", config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
    )  # fmt: skip


def enclave_only_policy(pcr0: bytes) -> str:
    """The production shape: admins may manage and wrap, only the enclave may Decrypt."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Sid": "admin", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
                 "Action": ["kms:DescribeKey", "kms:GetKeyPolicy", "kms:PutKeyPolicy", "kms:GenerateDataKey", "kms:Encrypt"],
                 "Resource": "*"},
                {"Sid": "enclave", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:role/enclave"},
                 "Action": "kms:Decrypt", "Resource": "*",
                 "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": pcr0.hex()}}},
            ],
        }
    )  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MockNsm, Any, str, bytes, bytes, Path]]:
    tmp = tmp_path_factory.mktemp("kr")
    nsm = MockNsm.load_or_create(tmp / "nsm", PCRS)
    with MockKmsServer(tmp / "kms", trusted_root=TrustedRoot.unsafe_mock(nsm.root_certificate_der)) as server:
        kms = kms_client(server.url)
        key_id = kms.create_key(Policy=enclave_only_policy(PCRS[0]))["KeyMetadata"]["KeyId"]
        dk = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256")
        yield nsm, kms, key_id, dk["Plaintext"], dk["CiphertextBlob"], tmp / "nsm"


def test_enclave_gets_the_data_key(world) -> None:  # type: ignore[no-untyped-def]
    nsm, kms, key_id, plaintext, wrapped, _ = world
    released = KmsKeyRelease(nsm, kms).release(wrapped, kms_key_id=key_id, what="model m")
    assert bytes(released.data_key) == plaintext
    ev = released.evidence
    assert ev.kms_key_id.endswith(key_id) and len(ev.kms_request_id) == 36
    assert ev.attestation_sha256 == hashlib.sha256(released.attestation).digest()
    assert len(ev.digest) == 32
    released.wipe()
    assert released.data_key == bytearray(32)


def test_host_calling_decrypt_without_recipient_is_denied(world) -> None:  # type: ignore[no-untyped-def]
    _, kms, key_id, _, wrapped, _ = world
    with pytest.raises(ClientError) as info:
        kms.decrypt(CiphertextBlob=wrapped, KeyId=key_id)
    assert info.value.response["Error"]["Code"] == "AccessDeniedException"


@pytest.mark.parametrize("pcrs", [OTHER_BUILD, {0: bytes(48), 1: bytes(48), 2: bytes(48)}], ids=["other-build", "debug-mode"])
def test_another_measurement_is_refused(world, tmp_path: Path, pcrs) -> None:  # type: ignore[no-untyped-def]
    nsm, kms, key_id, _, wrapped, state = world
    # The same mock CA (so a genuine document), other measurements.
    other = MockNsm.load_or_create(state, pcrs)
    assert other.root_certificate_der == nsm.root_certificate_der
    with pytest.raises(KeyReleaseError, match=r"^KMS refused to release the key for model m: AccessDeniedException: "):
        KmsKeyRelease(other, kms).release(wrapped, kms_key_id=key_id, what="model m")


def test_document_from_another_root_is_refused(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, kms, key_id, _, wrapped, _ = world
    stranger = MockNsm.load_or_create(tmp_path, PCRS)  # same PCRs, its own CA
    with pytest.raises(KeyReleaseError, match=r"^KMS refused to release the key for model m: ValidationException: .*A4 chain"):
        KmsKeyRelease(stranger, kms).release(wrapped, kms_key_id=key_id, what="model m")


def test_kms_unreachable_retries_then_fails(world) -> None:  # type: ignore[no-untyped-def]
    nsm, _, key_id, _, wrapped, _ = world
    slept: list[float] = []
    dead = kms_client(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(KeyReleaseError, match=r"^KMS unreachable for model m after 3 attempts \(last: EndpointConnectionError\)$"):
        KmsKeyRelease(nsm, dead, attempts=3, sleep=slept.append).release(wrapped, kms_key_id=key_id, what="model m")
    assert slept == [0.5, 1.0]
