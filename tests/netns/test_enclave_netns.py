"""Enclave boot as on Nitro, replayed in a network namespace (issue 9, protocol.md §10.3).

The child runs in ``unshare -n``: loopback down, no route, no resolver, like a Nitro
enclave. Its only way out is a Unix socket, standing for vsock, to the host's egress
proxy. It brings ``lo`` up, seeds the RNG from the (mock) NSM, and releases a data
key from a KMS that speaks TLS under a test CA, with boto3 going through its
``https_proxy`` on loopback and the proxy's ``CONNECT`` tunnel: TLS and SigV4 end in
the enclave. A ``CONNECT`` anywhere else is refused by the host.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ephemeralml.common._attestation import TrustedRoot
from ephemeralml.host._egress import EgressConfig, EgressProxy, kms_target
from ephemeralml.mock._kms import ENCLAVE, MODEL_OWNER, MockKmsServer
from ephemeralml.mock._nsm import MockNsm, mock_measurements
from ephemeralml.mock._provision import enclave_key_policy
from ephemeralml.runtime._transport import Endpoint
from tests.netns import unshare_unavailable
from tests.vectors_path import REPO_ROOT

REGION = "us-east-1"
PCRS = mock_measurements(code_digest=b"c" * 48, model_digest=b"m" * 32, runtime_id="netns")


_NO_NETNS = unshare_unavailable()
pytestmark = pytest.mark.skipif(_NO_NETNS is not None, reason=str(_NO_NETNS))


def _tls_files(tmp: Path) -> tuple[Path, Path, Path]:
    """A test CA, and a certificate for the region's KMS name signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ephemeralml test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    name = f"kms.{REGION}.amazonaws.com"
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    (tmp / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp / "kms.pem").write_bytes(cert.public_bytes(pem))
    (tmp / "kms.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return tmp / "ca.pem", tmp / "kms.pem", tmp / "kms.key"


class HostSide:
    """In the test's own namespace: the local KMS behind TLS (what AWS KMS is), and
    the host's egress proxy on a Unix socket, its event loop in a thread."""

    def __init__(self, tmp: Path, kms_port: int, cert: Path, key: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.kms_port, self.cert, self.key = kms_port, cert, key
        self.sock = tmp / "egress.sock"
        self.proxy: EgressProxy | None = None
        self.tls: asyncio.Server | None = None

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(20)

    async def _start(self) -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)

        async def terminate(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            kr, kw = await asyncio.open_connection("127.0.0.1", self.kms_port)

            async def pump(a: asyncio.StreamReader, b: asyncio.StreamWriter) -> None:
                while data := await a.read(65536):
                    b.write(data)
                    await b.drain()
                b.close()

            await asyncio.gather(pump(r, kw), pump(kr, w), return_exceptions=True)

        self.tls = await asyncio.start_server(terminate, "127.0.0.1", 0, ssl=ctx)
        tls_port = self.tls.sockets[0].getsockname()[1]
        target = kms_target(REGION)
        self.proxy = EgressProxy(
            EgressConfig(
                Endpoint.unix(str(self.sock)), frozenset({target}),
                resolve={target: Endpoint.tcp("127.0.0.1", tls_port)},
            )
        )  # fmt: skip
        await self.proxy.start()

    async def _stop(self) -> None:
        if self.proxy is not None:
            await self.proxy.close()
        if self.tls is not None:
            self.tls.close()

    def __enter__(self) -> HostSide:
        self.thread.start()
        self.call(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[HostSide, dict[str, Any], bytes]]:
    nsm = MockNsm.load_or_create(tmp_path / "nsm", PCRS)
    ca, cert, key = _tls_files(tmp_path)
    root = TrustedRoot.unsafe_mock(nsm.root_certificate_der)
    with MockKmsServer(tmp_path / "kms", trusted_root=root, region=REGION) as kms:
        owner = boto3.client(
            "kms", region_name=REGION, endpoint_url=kms.url,
            **kms.credentials(MODEL_OWNER).boto3_kwargs(),
        )  # fmt: skip
        key_id = owner.create_key(Policy=enclave_key_policy(PCRS))["KeyMetadata"]["KeyId"]
        dk = owner.generate_data_key(KeyId=key_id, KeySpec="AES_256")
        with HostSide(tmp_path, kms.address[1], cert, key) as host:
            arg = {
                "egress": f"unix:{host.sock}",
                "nsm_state": str(tmp_path / "nsm"),
                "pcrs": {str(i): v.hex() for i, v in PCRS.items()},
                "ca_bundle": str(ca),
                "credentials": kms.credentials(ENCLAVE).boto3_kwargs(),
                "key_id": key_id,
                "wrapped": dk["CiphertextBlob"].hex(),
                "region": REGION,
            }
            yield host, arg, dk["Plaintext"]


def test_key_release_from_an_enclave_like_namespace(
    deployment: tuple[HostSide, dict[str, Any], bytes],
) -> None:
    host, arg, data_key = deployment
    done = subprocess.run(
        ["unshare", "-n", sys.executable, "-m", "tests.netns._child", json.dumps(arg)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    # The namespace is an enclave's: loopback down and no resolver until boot.
    assert out["before_lo"] == "Network is unreachable"
    assert out["dns"] == "gaierror"
    assert out["lo_brought_up"] is True
    assert out["after_lo"] == "Connection refused"
    assert out["seeded"] == 256
    # TLS to "KMS" through CONNECT over the Unix socket: the data key came back.
    assert out["data_key_sha256"] == hashlib.sha256(data_key).hexdigest()
    # The same way out, anywhere else: refused, with the reason.
    assert out["other_target"] == "egress refused: example.com:443 is not on the allowlist"
    assert host.proxy is not None
    assert (host.proxy.tunnels, host.proxy.refused) == (1, 1)
