"""What differs between the host on a Nitro parent and the mock: one frozen profile.

The host never branches on the mode: its profile gives the default endpoints and
store, and starts whatever stands behind the enclave's KMS egress proxy. The Nitro
profile is built here; the mock profile (local KMS server and provisioning) comes
from :mod:`ephemeralml.mock`, handed in at the edge (:mod:`ephemeralml._edge`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ephemeralml.common._errors import ConfigError
from ephemeralml.common._store import AwsCredentials
from ephemeralml.runtime._ports import Ports
from ephemeralml.runtime._transport import Endpoint

from ._egress import kms_target
from ._store import instance_credentials

__all__ = [
    "PRODUCTION_STORE",
    "HostProfile",
    "KmsAccess",
    "instance_region",
    "nitro_profile",
]

#: Production store of encrypted bundles when --store is not given.
PRODUCTION_STORE = "/var/lib/ephemeralml/store"


@dataclass(frozen=True)
class KmsAccess:
    """Where the enclave's KMS traffic may go, and the credentials it is handed.

    The host runs its egress proxy (:mod:`._egress`) on the KMS endpoint, and the
    enclave may ``CONNECT`` only to the ``allow`` targets (its region's KMS). On Nitro
    the host's DNS resolves them; ``resolve`` dials a target somewhere else instead
    (mock: the TLS front of the local KMS server, :mod:`ephemeralml.mock._kms_tls`).
    """

    credentials: Callable[[], AwsCredentials]
    allow: tuple[str, ...]
    resolve: Mapping[str, Endpoint] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    #: More fields for the readiness line (mock: where the local KMS and its TLS are).
    ready: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class KmsRequest:
    home: Path
    store: str
    region: str
    #: The profile's local KMS server, if it has one (mock).
    local_kms: Endpoint | None


#: Starts what stands behind the KMS egress proxy; what it starts is closed by the stack.
KmsStarter = Callable[[KmsRequest, contextlib.AsyncExitStack], Awaitable[KmsAccess]]


@dataclass(frozen=True)
class HostProfile:
    #: "nitro" or "mock".
    name: str
    listen: Endpoint
    #: The enclave to relay to when none is given; None: it must be given (Nitro: the
    #: CID passed to ``nitro-cli run-enclave --enclave-cid``, never a guess).
    enclave: Endpoint | None
    services_listen: Endpoint
    kms_listen: Endpoint
    #: /healthz, /readyz and /metrics (TCP: for the load balancer and Prometheus).
    health_listen: Endpoint
    store: str
    start_kms: KmsStarter
    #: Endpoint kinds this profile may listen and dial on.
    kinds: frozenset[str]
    #: A local KMS server (mock only; --mock-kms-listen moves it).
    local_kms: Endpoint | None = None
    #: Where the enclave's log stream is collected (Nitro); None: not collected.
    logs_listen: Endpoint | None = None
    #: What the start line says about the mode, if anything.
    note: str | None = None
    #: The AWS region when neither --region nor the environment names one.
    default_region: Callable[[], str] = lambda: "us-east-1"

    def check_endpoint(self, flag: str, endpoint: Endpoint) -> None:
        if endpoint.kind not in self.kinds:
            raise ConfigError(
                f"{flag} {endpoint}: the {self.name} profile uses {' or '.join(sorted(self.kinds))}"
            )


async def _aws_kms(request: KmsRequest, stack: contextlib.AsyncExitStack) -> KmsAccess:
    # Never chosen by the enclave: one target, fixed by the region.
    return KmsAccess(instance_credentials(request.region), allow=(kms_target(request.region),))


def nitro_profile(ports: Ports) -> HostProfile:
    """On the parent instance: clients from the network, the enclave over vsock."""
    return HostProfile(
        name="nitro",
        listen=Endpoint.parse(f"tcp:0.0.0.0:{ports.client}"),
        enclave=None,
        services_listen=Endpoint.parse(f"vsock:any:{ports.services}"),
        kms_listen=Endpoint.parse(f"vsock:any:{ports.kms}"),
        health_listen=Endpoint.parse(f"tcp:0.0.0.0:{ports.health}"),
        store=PRODUCTION_STORE,
        start_kms=_aws_kms,
        kinds=frozenset({"vsock", "tcp"}),
        default_region=instance_region,
        logs_listen=Endpoint.parse(f"vsock:any:{ports.logs}"),
    )


def instance_region() -> str:
    """The instance's region from IMDSv2, as botocore finds it on EC2 (a session token
    first, then the availability zone; endpoint, timeout and attempts from botocore's
    configuration, e.g. ``AWS_EC2_METADATA_SERVICE_ENDPOINT``). A one-line
    ConfigError off EC2 or when IMDS does not answer in time."""
    import botocore.session
    from botocore.utils import IMDSRegionProvider

    region = IMDSRegionProvider(botocore.session.get_session()).provide()
    if not region:
        raise ConfigError(
            "no AWS region: give --region, set AWS_REGION, or run on EC2 with IMDSv2 reachable"
        )
    return str(region)
