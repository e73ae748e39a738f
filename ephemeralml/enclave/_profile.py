"""What differs between an enclave on Nitro and the mock: one frozen profile, chosen once.

The enclave program never branches on the mode: it asks its profile for the
endpoints, the NSM, the KMS URL boto3 uses and what to do once it serves. The Nitro
profile is built here; the mock profile comes from :mod:`ephemeralml.mock`, which no
module of the enclave imports (the import contract forbids it), handed in at the
edge (:mod:`ephemeralml._edge`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ephemeralml.common._errors import ConfigError
from ephemeralml.runtime._ports import Ports
from ephemeralml.runtime._transport import Endpoint

from ._measure import NITRO_FLOORS
from ._nsm import Nsm

__all__ = ["NITRO_OWNER_KEYS", "PARENT_CID", "EnclaveProfile", "nitro_profile"]

#: Model-owner keys built into the image (measured into its PCRs).
NITRO_OWNER_KEYS = "/etc/ephemeralml/model-owners.txt"
#: The parent instance's vsock CID, as seen from the enclave.
PARENT_CID = 3

#: (owner keys, model floors) -> the NSM seam.
NsmFactory = Callable[[Mapping[bytes, bytes], Mapping[str, int]], Nsm]


@dataclass(frozen=True)
class EnclaveProfile:
    #: "nitro" or "mock"; shown at start.
    name: str
    listen: Endpoint
    services: Endpoint
    kms: Endpoint
    owner_keys: Path
    floors: Path
    make_nsm: NsmFactory
    #: The CA certificates boto3 trusts for KMS's TLS; None: botocore's bundle (in the
    #: image, so measured). The mock trusts its own KMS TLS CA.
    kms_ca_bundle: Path | None
    #: Called once the enclave serves (the mock publishes its root and measurements).
    on_serving: Callable[[Nsm], None]
    #: The words the start line uses for the mode.
    banner: str
    #: Endpoint kinds this profile may listen and dial on.
    kinds: frozenset[str]
    #: Where the enclave streams its stderr and exit status (Nitro: it has no console);
    #: None: nowhere beyond its own stderr.
    logs: Endpoint | None = None

    def check_endpoint(self, flag: str, endpoint: Endpoint) -> None:
        if endpoint.kind not in self.kinds:
            raise ConfigError(
                f"{flag} {endpoint}: the {self.name} profile uses {' or '.join(sorted(self.kinds))}"
            )


def nitro_profile(ports: Ports, nsm_lib: str) -> EnclaveProfile:
    """Inside a Nitro enclave: vsock to the parent, the NSM through libnsm.so."""

    def make_nsm(keys: Mapping[bytes, bytes], floors: Mapping[str, int]) -> Nsm:
        from ._libnsm import NitroNsm

        # Outside a Nitro Enclave this fails with a one-line ConfigError (no /dev/nsm)
        # rather than pretending.
        return NitroNsm.open(nsm_lib)

    return EnclaveProfile(
        name="nitro",
        listen=Endpoint.parse(f"vsock:any:{ports.enclave}"),
        services=Endpoint.parse(f"vsock:{PARENT_CID}:{ports.services}"),
        kms=Endpoint.parse(f"vsock:{PARENT_CID}:{ports.kms}"),
        owner_keys=Path(NITRO_OWNER_KEYS),
        floors=Path(NITRO_FLOORS),
        make_nsm=make_nsm,
        kms_ca_bundle=None,
        on_serving=lambda nsm: None,
        banner="Nitro mode",
        kinds=frozenset({"vsock", "tcp"}),
        logs=Endpoint.parse(f"vsock:{PARENT_CID}:{ports.logs}"),
    )
