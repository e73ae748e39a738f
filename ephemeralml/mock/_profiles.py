"""The mock profiles of the programs: loopback TCP (or Unix sockets), the mock NSM, the local KMS.

Built once at the edge (:mod:`ephemeralml._edge`) when a program is started with
``--mock``, and handed to the program, which never imports this package.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from ephemeralml.common._attestation import TrustedRoot
from ephemeralml.common._store import AwsCredentials
from ephemeralml.enclave._nsm import Nsm
from ephemeralml.enclave._profile import EnclaveProfile
from ephemeralml.host._egress import kms_target
from ephemeralml.host._profile import HostProfile, KmsAccess, KmsRequest
from ephemeralml.runtime._home import (
    MOCK_FLOORS,
    MOCK_KMS_STATE,
    MOCK_KMS_TLS_CA,
    MOCK_MEASUREMENTS,
    MOCK_NSM_STATE,
    MOCK_OWNERS,
    MOCK_ROOT,
    MOCK_STORE,
    write_atomic,
)
from ephemeralml.runtime._ports import Ports
from ephemeralml.runtime._transport import Endpoint

from ._kms import ENCLAVE, MODEL_OWNER, MockKmsServer
from ._kms_tls import KmsTlsFront
from ._nsm import MockNsm, mock_enclave_measurements
from ._provision import ensure_mock_root, provision_mock

__all__ = ["enclave_profile", "host_profile", "publish_mock"]

LOOPBACK = "127.0.0.1"


def _loopback(port: int) -> Endpoint:
    return Endpoint.parse(f"tcp:{LOOPBACK}:{port}")


def publish_mock(home: Path, nsm: MockNsm) -> None:
    """Publish what a client on this machine needs to trust the mock (as an EIF build
    publishes its PCRs): the mock root and the measurements. Called only once the
    enclave serves, each file written atomically: an enclave that fails to start
    (a taken port, no host, no model) never replaces what a healthy one published."""
    nsm.publish_root(home / MOCK_ROOT)
    measurements = {
        "mode": "mock",
        "note": "mock enclave measurements: NOT a real Nitro enclave",
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
        "pcrs": {str(i): nsm.describe_pcr(i).hex() for i in (0, 1, 2, 8)},
    }
    write_atomic(home / MOCK_MEASUREMENTS, (json.dumps(measurements, indent=2) + "\n").encode())


def enclave_profile(home: Path, ports: Ports) -> EnclaveProfile:
    """The enclave on a laptop: loopback TCP, a mock NSM whose CA and measurements
    live in ``home``, boto3 to KMS over TLS through the host's egress proxy as on
    Nitro, trusting the mock KMS's TLS CA instead of an image's CA bundle."""

    def make_nsm(keys: Mapping[bytes, bytes], floors: Mapping[str, int]) -> Nsm:
        pcrs = mock_enclave_measurements(keys.values(), floors)
        return MockNsm.load_or_create(home / MOCK_NSM_STATE, pcrs)

    def on_serving(nsm: Nsm) -> None:
        assert isinstance(nsm, MockNsm)
        publish_mock(home, nsm)

    return EnclaveProfile(
        name="mock",
        listen=_loopback(ports.enclave),
        services=_loopback(ports.services),
        kms=_loopback(ports.kms),
        owner_keys=home / MOCK_OWNERS,
        floors=home / MOCK_FLOORS,
        make_nsm=make_nsm,
        kms_ca_bundle=home / MOCK_KMS_TLS_CA,
        on_serving=on_serving,
        banner="MOCK mode: loopback TCP, mock NSM, NOT a real enclave",
        kinds=frozenset({"tcp", "unix"}),
    )


async def _local_kms(request: KmsRequest, stack: contextlib.AsyncExitStack) -> KmsAccess:
    """The local KMS-compatible server, and the provisioning a model owner would do
    against it (:mod:`._provision`); the host's egress proxy reaches it, behind its
    TLS front (:mod:`._kms_tls`), where AWS KMS would be."""
    import boto3

    local = request.local_kms
    assert local is not None and local.host is not None
    root = await asyncio.to_thread(ensure_mock_root, request.home)
    server = MockKmsServer(
        request.home / MOCK_KMS_STATE,
        trusted_root=TrustedRoot.unsafe_mock(root),
        listen=(local.host, local.port),
        region=request.region,
    )
    await asyncio.to_thread(server.start)
    stack.callback(server.close)
    kms = boto3.client(
        "kms", region_name=request.region, endpoint_url=server.url,
        **server.credentials(MODEL_OWNER).boto3_kwargs(),  # provisioning is the owner's job
    )  # fmt: skip
    p = await asyncio.to_thread(provision_mock, request.home, kms, store=Path(request.store))
    # The enclave gets its role's credentials (on AWS: the instance role's), which the
    # key policy lets decrypt only with a matching Recipient attestation.
    role = server.credentials(ENCLAVE)
    creds = AwsCredentials(
        role.access_key_id, role.secret_access_key, role.session_token, request.region
    )
    served = Endpoint.parse(server.url[len("http://") :])
    front = KmsTlsFront(request.home, request.region, served)
    await front.start()
    stack.push_async_callback(front.close)
    target = kms_target(request.region)
    assert front.bound is not None
    return KmsAccess(
        lambda: creds,
        allow=(target,),
        resolve={target: front.bound},
        ready={"mock_kms": str(served), "mock_kms_tls": str(front.bound)},
        notes=(
            f"mock KMS at {server.url} (key {p.kms_key_id}; "
            f"policy: Decrypt only for PCR0 {p.pcrs[0].hex()[:16]}…), "
            f"as {target} over TLS at {front.bound} (mock CA {request.home / MOCK_KMS_TLS_CA})",
        ),
    )


def host_profile(home: Path, ports: Ports) -> HostProfile:
    """The host on a laptop: loopback TCP, a local store, a local KMS server."""
    return HostProfile(
        name="mock",
        listen=_loopback(ports.client),
        enclave=_loopback(ports.enclave),
        services_listen=_loopback(ports.services),
        kms_listen=_loopback(ports.kms),
        health_listen=_loopback(ports.health),
        store=str(home / MOCK_STORE),
        start_kms=_local_kms,
        kinds=frozenset({"tcp", "unix"}),
        local_kms=_loopback(ports.mock_kms),
        note="mock mode: loopback TCP instead of vsock",
    )
