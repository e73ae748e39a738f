"""Attested key release end to end: mock NSM → boto3 → local KMS server (real HTTP) → CMS.

Also KMS faults at enclave boot against real loopback servers: down (nothing listens),
slow (accepts, never answers), failing on its side (HTTP 500), refusing (policy,
signature, credentials). Every server binds 127.0.0.1, every client has short
timeouts, sleeps are recorded instead of slept and time is an injected counter: every
test stops by itself within a few seconds.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from ephemeralml.common._attestation import TrustedRoot
from ephemeralml.common._errors import ConfigError, KeyReleaseError
from ephemeralml.enclave._keyrelease import (
    KMS_ATTEMPTS,
    KMS_BACKOFF_S,
    KMS_CONNECT_TIMEOUT_S,
    KMS_DEADLINE_S,
    KMS_READ_TIMEOUT_S,
    KmsKeyRelease,
    kms_client_config,
)
from ephemeralml.mock._kms import ENCLAVE, HOST, MODEL_OWNER, PRINCIPALS, MockKmsServer
from ephemeralml.mock._nsm import MockNsm, mock_measurements
from tests.integration.conftest import free_port

PCRS = mock_measurements(code_digest=b"c" * 48, model_digest=b"m" * 32, runtime_id="build-1")
OTHER_BUILD = mock_measurements(code_digest=b"X" * 48, model_digest=b"m" * 32, runtime_id="build-1")


def kms_client(url: str, creds: dict[str, str] | None = None, *, read_timeout: float = 10) -> Any:
    creds = creds or {"aws_access_key_id": "ASIANOBODYNOBODY1234", "aws_secret_access_key": "x"}
    return boto3.client(
        "kms", region_name="us-east-1", endpoint_url=url, **creds,
        # The enclave's own config (one HTTP request per try), with shorter timeouts.
        config=kms_client_config().merge(Config(connect_timeout=2, read_timeout=read_timeout)),
    )  # fmt: skip


class Clock:
    """Monotonic seconds that advance only when the code under test sleeps."""

    def __init__(self) -> None:
        self.t = 0.0
        self.slept: list[float] = []

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s

    def __call__(self) -> float:
        return self.t


def enclave_only_policy(pcr0: bytes) -> str:
    """The production shape: admins may manage and wrap, only the enclave may Decrypt."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Sid": "admin", "Effect": "Allow", "Principal": {"AWS": PRINCIPALS[MODEL_OWNER].arn},
                 "Action": ["kms:DescribeKey", "kms:GetKeyPolicy", "kms:PutKeyPolicy", "kms:GenerateDataKey", "kms:Encrypt"],
                 "Resource": "*"},
                {"Sid": "enclave", "Effect": "Allow", "Principal": {"AWS": PRINCIPALS[ENCLAVE].arn},
                 "Action": "kms:Decrypt", "Resource": "*",
                 "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": pcr0.hex()}}},
            ],
        }
    )  # fmt: skip


@pytest.fixture(scope="module")
def kms_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MockKmsServer, MockNsm, Path]]:
    tmp = tmp_path_factory.mktemp("kr")
    nsm = MockNsm.load_or_create(tmp / "nsm", PCRS)
    with MockKmsServer(tmp / "kms", trusted_root=TrustedRoot.unsafe_mock(nsm.root_certificate_der)) as server:
        yield server, nsm, tmp / "nsm"


def client_as(server: MockKmsServer, principal: str) -> Any:
    return kms_client(server.url, server.credentials(principal).boto3_kwargs())


@pytest.fixture(scope="module")
def world(kms_server: tuple[MockKmsServer, MockNsm, Path]) -> tuple[MockNsm, Any, str, bytes, bytes, Path]:
    """(nsm, the enclave's KMS client, key id, data key, wrapped data key, nsm state)."""
    server, nsm, state = kms_server
    owner = client_as(server, MODEL_OWNER)
    key_id = owner.create_key(Policy=enclave_only_policy(PCRS[0]))["KeyMetadata"]["KeyId"]
    dk = owner.generate_data_key(KeyId=key_id, KeySpec="AES_256")
    return nsm, client_as(server, ENCLAVE), key_id, dk["Plaintext"], dk["CiphertextBlob"], state


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


def test_host_calling_decrypt_without_recipient_is_denied(world, kms_server) -> None:  # type: ignore[no-untyped-def]
    _, kms, key_id, _, wrapped, _ = world
    # With the enclave's credentials (the host hands them over, so it has them) and its own.
    for client in (kms, client_as(kms_server[0], HOST)):
        with pytest.raises(ClientError) as info:
            client.decrypt(CiphertextBlob=wrapped, KeyId=key_id)
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


def test_kms_down_at_boot_retries_with_backoff_then_fails(world) -> None:  # type: ignore[no-untyped-def]
    nsm, _, key_id, _, wrapped, _ = world
    clock = Clock()
    dead = kms_client(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(KeyReleaseError) as info:
        KmsKeyRelease(nsm, dead, sleep=clock.sleep, monotonic=clock).release(wrapped, kms_key_id=key_id, what="model m")
    assert str(info.value) == (
        "KMS unreachable for model m after 5 attempts in 7.5 s (last: EndpointConnectionError)"
    )
    assert clock.slept == [0.5, 1.0, 2.0, 4.0] == list(KMS_BACKOFF_S)


def test_retries_stop_at_the_deadline(world) -> None:  # type: ignore[no-untyped-def]
    nsm, _, key_id, _, wrapped, _ = world
    clock = Clock()
    dead = kms_client(f"http://127.0.0.1:{free_port()}")
    release = KmsKeyRelease(nsm, dead, attempts=50, deadline_s=3.0, sleep=clock.sleep, monotonic=clock)
    with pytest.raises(KeyReleaseError) as info:
        release.release(wrapped, kms_key_id=key_id, what="model m")
    # Tries at 0, 0.5 and 1.5 s; the next would start at 3.5 s, past the deadline.
    assert str(info.value) == (
        "KMS unreachable for model m after 3 attempts in 1.5 s (last: EndpointConnectionError)"
    )
    assert clock.slept == [0.5, 1.0]


class _Silent:
    """A loopback TCP server that accepts, reads, and never answers (a stalled KMS)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._changed:
                self.accepted += 1
                self._conns.append(conn)
                self._changed.notify_all()

    def wait_accepted(self, n: int) -> int:
        """The number of connections accepted, once it reaches ``n`` (or after 5 s)."""
        with self._changed:
            self._changed.wait_for(lambda: self.accepted >= n, timeout=5)
            return self.accepted

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._conns:
            conn.close()
        self.sock.close()


def test_kms_slow_at_boot_times_out_each_try_then_fails(world) -> None:  # type: ignore[no-untyped-def]
    nsm, _, key_id, _, wrapped, _ = world
    silent = _Silent()
    try:
        clock = Clock()
        slow = kms_client(f"http://127.0.0.1:{silent.port}", read_timeout=0.3)
        with pytest.raises(KeyReleaseError) as info:
            KmsKeyRelease(nsm, slow, attempts=2, sleep=clock.sleep, monotonic=clock).release(
                wrapped, kms_key_id=key_id, what="model m"
            )
        assert str(info.value) == "KMS unreachable for model m after 2 attempts in 0.5 s (last: ReadTimeoutError)"
        # One TCP connection per try: botocore does not retry underneath (total_max_attempts 1).
        assert clock.slept == [0.5] and silent.wait_accepted(2) == 2
    finally:
        silent.close()


class _Failing(BaseHTTPRequestHandler):
    """KMS failing on its side: HTTP 500 with KMS's own error body, every time."""

    calls = 0

    def do_POST(self) -> None:
        type(self).calls += 1
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = json.dumps({"__type": "KMSInternalException", "message": "internal"}).encode()
        self.send_response(500)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_kms_failing_on_its_side_is_retried_then_fails(world) -> None:  # type: ignore[no-untyped-def]
    nsm, _, key_id, _, wrapped, _ = world
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        _Failing.calls = 0
        clock = Clock()
        kms = kms_client(f"http://127.0.0.1:{httpd.server_address[1]}")
        with pytest.raises(KeyReleaseError) as info:
            KmsKeyRelease(nsm, kms, attempts=3, sleep=clock.sleep, monotonic=clock).release(
                wrapped, kms_key_id=key_id, what="model m"
            )
        assert str(info.value) == "KMS unreachable for model m after 3 attempts in 1.5 s (last: KMSInternalException)"
        assert _Failing.calls == 3 and clock.slept == [0.5, 1.0]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_refusals_are_final_at_once(world, kms_server) -> None:  # type: ignore[no-untyped-def]
    nsm, _, key_id, _, wrapped, _ = world
    server = kms_server[0]
    enclave = server.credentials(ENCLAVE).boto3_kwargs()
    cases = [
        # Not a principal of this KMS.
        (kms_client(server.url), "UnrecognizedClientException: The security token included in the request is invalid."),
        # The enclave's key id with a wrong secret: the signature does not verify.
        (kms_client(server.url, {**enclave, "aws_secret_access_key": "0" * 40}),
         "InvalidSignatureException: The request signature we calculated does not match the signature you provided. "
         "Check your AWS Secret Access Key and signing method. Consult the service documentation for details."),
        # Signed for another region.
        (boto3.client("kms", region_name="eu-west-1", endpoint_url=server.url, **enclave,
                      config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10)),
         # (AWS's message ends in a space; our one-line errors are stripped.)
         "InvalidSignatureException: Credential should be scoped to a valid region, not 'eu-west-1'."),
        # The host's own role: the policy does not name it.
        (client_as(server, HOST), "AccessDeniedException: User: arn:aws:sts::111122223333:assumed-role/"
         f"ephemeralml-host/mock is not authorized to perform: kms:Decrypt on resource: "
         f"arn:aws:kms:us-east-1:111122223333:key/{key_id} because no resource-based policy allows the kms:Decrypt action"),
    ]  # fmt: skip
    for client, detail in cases:
        clock = Clock()
        with pytest.raises(KeyReleaseError) as info:
            KmsKeyRelease(nsm, client, sleep=clock.sleep, monotonic=clock).release(wrapped, kms_key_id=key_id, what="model m")
        assert str(info.value) == f"KMS refused to release the key for model m: {detail}"
        assert clock.slept == []


def test_retry_limits_are_named_and_checked(world) -> None:  # type: ignore[no-untyped-def]
    nsm, kms, *_ = world
    assert (KMS_ATTEMPTS, KMS_DEADLINE_S, KMS_CONNECT_TIMEOUT_S, KMS_READ_TIMEOUT_S) == (5, 60.0, 5.0, 15.0)
    config = kms_client_config()
    assert (config.connect_timeout, config.read_timeout, config.retries["total_max_attempts"]) == (5.0, 15.0, 1)
    for bad in ({"attempts": 0}, {"deadline_s": 0.0}):
        with pytest.raises(ConfigError, match=r"^key release: attempts must be >= 1 and the deadline > 0 s$"):
            KmsKeyRelease(nsm, kms, **bad)
