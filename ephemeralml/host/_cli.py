"""``ephemeral-host``: the untrusted host's command line.

Thin by design (STYLE.md §15): parse flags, build a frozen config, run the relay,
turn our errors into one line and an exit code (2 for configuration, 1 for any other
:class:`~ephemeralml.common._errors.Error`; traceback only with ``-v``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from ephemeralml.common._errors import ConfigError, Error
from ephemeralml.common._store import AwsCredentials
from ephemeralml.runtime._home import default_home
from ephemeralml.runtime._relay import (
    FRAME_TIMEOUT_S,
    HANDSHAKE_TIMEOUT_S,
    IDLE_TIMEOUT_S,
    MAX_CONNECTIONS,
    MAX_PENDING,
    MAX_PENDING_PER_SOURCE,
    MAX_PER_SOURCE,
    Relay,
    RelayConfig,
)
from ephemeralml.runtime._transport import Endpoint

from ._store import StoreService, instance_credentials, store_from_url

__all__ = ["HostConfig", "build_config", "main"]

PROG = "ephemeral-host"

#: Environment variables that supply defaults for --listen and --enclave
#: (EPHEMERAL_ENCLAVE may list several endpoints, separated by commas).
ENV_LISTEN = "EPHEMERAL_HOST_LISTEN"
ENV_ENCLAVE = "EPHEMERAL_ENCLAVE"

#: Production, on the parent instance: clients from the network, enclave over vsock
#: (CID 16 is the first CID nitro-cli hands out when none is asked for).
PRODUCTION_LISTEN = "tcp:0.0.0.0:5000"
PRODUCTION_ENCLAVE = "vsock:16:5005"
#: Mock mode: everything on loopback; 5005 is the mock enclave's default port.
MOCK_LISTEN = "tcp:127.0.0.1:5000"
MOCK_ENCLAVE = "tcp:127.0.0.1:5005"

#: Where the enclave reaches the host's services (model store and credentials) and
#: its KMS forwarder. Production: vsock ports on the parent (the enclave dials CID 3).
PRODUCTION_SERVICES = "vsock:any:5006"
PRODUCTION_KMS = "vsock:any:5007"
MOCK_SERVICES = "tcp:127.0.0.1:5006"
MOCK_KMS = "tcp:127.0.0.1:5007"
#: The local KMS-compatible server that --mock starts (model owners package against it).
MOCK_KMS_SERVER = "127.0.0.1:5009"
#: Production store of encrypted bundles when --store is not given.
PRODUCTION_STORE = "/var/lib/ephemeralml/store"


@dataclass(frozen=True)
class HostConfig:
    """Everything the host program runs with, built from flags and environment.

    Only the relay exists today; serving encrypted model blobs and forwarding the
    enclave's KMS traffic will add their own fields here.
    """

    relay: RelayConfig
    mock: bool = False
    verbosity: int = 0
    home: Path = Path(".")
    services_listen: Endpoint | None = None
    kms_listen: Endpoint | None = None
    #: Production: the one KMS endpoint the forwarder may reach (allowlist of one).
    kms_upstream: Endpoint | None = None
    mock_kms_listen: Endpoint | None = None
    store: str = PRODUCTION_STORE
    region: str = "us-east-1"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints usage and exits; we want one line and an exit code from main().
        raise ConfigError(message)


def _parser() -> _Parser:
    p = _Parser(
        prog=PROG,
        description="Blind relay between clients and enclaves: it only ever sees ciphertext.",
    )
    p.add_argument(
        "--mock",
        action="store_true",
        help=f"relay over loopback TCP instead of vsock (defaults {MOCK_LISTEN} -> {MOCK_ENCLAVE})",
    )
    p.add_argument(
        "--listen",
        metavar="EP",
        help=f"where clients connect: [tcp:]HOST:PORT (default ${ENV_LISTEN}, else "
        f"{PRODUCTION_LISTEN}, or {MOCK_LISTEN} with --mock)",
    )
    p.add_argument(
        "--enclave",
        metavar="EP",
        action="append",
        help=f"enclave to relay to: vsock:CID:PORT or [tcp:]HOST:PORT; repeat for round robin "
        f"(default ${ENV_ENCLAVE}, else {PRODUCTION_ENCLAVE}, or {MOCK_ENCLAVE} with --mock)",
    )
    p.add_argument(
        "--max-connections",
        metavar="N",
        type=int,
        default=MAX_CONNECTIONS,
        help=f"concurrent connections; more are closed at once (default {MAX_CONNECTIONS})",
    )
    p.add_argument(
        "--idle-timeout",
        metavar="SECONDS",
        type=float,
        default=IDLE_TIMEOUT_S,
        help=f"close a connection silent both ways this long (default {IDLE_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--max-pending",
        metavar="N",
        type=int,
        default=MAX_PENDING,
        help="connections still in their handshake; when full the oldest is evicted "
        f"(default {MAX_PENDING})",
    )
    p.add_argument(
        "--max-per-source",
        metavar="N",
        type=int,
        default=MAX_PER_SOURCE,
        help=f"connections from one address (default {MAX_PER_SOURCE})",
    )
    p.add_argument(
        "--max-pending-per-source",
        metavar="N",
        type=int,
        default=MAX_PENDING_PER_SOURCE,
        help=f"handshakes in progress from one address (default {MAX_PENDING_PER_SOURCE})",
    )
    p.add_argument(
        "--handshake-timeout",
        metavar="SECONDS",
        type=float,
        default=HANDSHAKE_TIMEOUT_S,
        help=f"from accept until hello, attest and open have passed (default {HANDSHAKE_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--frame-timeout",
        metavar="SECONDS",
        type=float,
        default=FRAME_TIMEOUT_S,
        help=f"from a frame's first byte until it has passed (default {FRAME_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--services-listen",
        metavar="EP",
        help=f"model store and credentials for the enclave (default {PRODUCTION_SERVICES}, or {MOCK_SERVICES} with --mock)",
    )
    p.add_argument(
        "--kms-listen",
        metavar="EP",
        help=f"the enclave's KMS forwarder (default {PRODUCTION_KMS}, or {MOCK_KMS} with --mock)",
    )
    p.add_argument(
        "--region",
        default=os.environ.get("AWS_REGION", "us-east-1"),
        help="AWS region: the forwarder reaches only kms.REGION.amazonaws.com:443",
    )
    p.add_argument(
        "--store",
        help=f"encrypted model store: a folder or s3://bucket/prefix (default {PRODUCTION_STORE}, or $EPHEMERALML_HOME/store with --mock)",
    )
    p.add_argument(
        "--home", type=Path, help="state folder (default $EPHEMERALML_HOME or ~/.ephemeralml)"
    )
    p.add_argument(
        "--mock-kms-listen",
        metavar="HOST:PORT",
        help=f"with --mock: the local KMS server (default {MOCK_KMS_SERVER})",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log each connection (-vv: more); print tracebacks on errors",
    )
    return p


def build_config(args: argparse.Namespace, env: Mapping[str, str]) -> HostConfig:
    """Flags first, then the environment, then the mode's defaults."""
    default_listen = MOCK_LISTEN if args.mock else PRODUCTION_LISTEN
    listen_text = args.listen or env.get(ENV_LISTEN) or default_listen
    if args.enclave:
        enclave_texts: Sequence[str] = args.enclave
    elif env.get(ENV_ENCLAVE, "").strip():
        enclave_texts = [t for t in env[ENV_ENCLAVE].split(",") if t.strip()]
    else:
        enclave_texts = [MOCK_ENCLAVE if args.mock else PRODUCTION_ENCLAVE]
    listen = Endpoint.parse(listen_text)
    upstreams = tuple(Endpoint.parse(t) for t in enclave_texts)
    if args.mock:
        # The transport is the one seam where mock differs; a vsock endpoint under
        # --mock means the flags and the environment disagree about the mode.
        for ep in (listen, *upstreams):
            if ep.kind != "tcp":
                raise ConfigError(f"--mock relays over loopback TCP, but {ep} is a vsock endpoint")
    services = Endpoint.parse(
        args.services_listen or (MOCK_SERVICES if args.mock else PRODUCTION_SERVICES)
    )
    kms = Endpoint.parse(args.kms_listen or (MOCK_KMS if args.mock else PRODUCTION_KMS))
    home = args.home or default_home()
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", args.region):
        raise ConfigError(f"--region {args.region!r} is not an AWS region name")
    mock_kms = None
    if args.mock:
        mock_kms = Endpoint.parse(args.mock_kms_listen or MOCK_KMS_SERVER)
        for ep in (services, kms, mock_kms):
            if ep.kind != "tcp":
                raise ConfigError(f"--mock serves over loopback TCP, but {ep} is a vsock endpoint")
    return HostConfig(
        relay=RelayConfig(
            listen=listen,
            upstreams=upstreams,
            max_connections=args.max_connections,
            idle_timeout_s=args.idle_timeout,
            max_pending=args.max_pending,
            max_per_source=args.max_per_source,
            max_pending_per_source=args.max_pending_per_source,
            handshake_timeout_s=args.handshake_timeout,
            frame_timeout_s=args.frame_timeout,
        ),
        mock=args.mock,
        verbosity=args.verbose,
        home=home,
        services_listen=services,
        kms_listen=kms,
        # Never chosen by the enclave: one endpoint, fixed by the region.
        kms_upstream=None
        if args.mock
        else Endpoint.parse(f"tcp:kms.{args.region}.amazonaws.com:443"),
        mock_kms_listen=mock_kms,
        store=args.store or (str(home / "store") if args.mock else PRODUCTION_STORE),
        region=args.region,
    )


def main(argv: list[str] | None = None) -> int:
    """Console script ``ephemeral-host``. Returns the exit code."""
    verbosity = 0
    try:
        try:
            args = _parser().parse_args(argv)
        except SystemExit as e:  # --help
            return e.code if isinstance(e.code, int) else 0
        verbosity = args.verbose
        config = build_config(args, os.environ)
        _setup_logging(config.verbosity)
        return asyncio.run(_run(config))
    except Error as e:
        if verbosity:
            traceback.print_exc(file=sys.stderr)
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1


async def _run(config: HostConfig) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    # Handlers go in before the socket is bound, so a signal sent as soon as the
    # start line appears is a clean stop, never the default kill.
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    async with contextlib.AsyncExitStack() as stack:
        try:
            services = await _start_services(config, stack)
            relay = Relay(config.relay)
            await relay.start()
            stack.push_async_callback(relay.close)
            for line in services:
                print(f"{PROG}: {line}", file=sys.stderr, flush=True)
            print(f"{PROG}: {_describe(config, relay.bound)}", file=sys.stderr, flush=True)
            await stop.wait()
            stats = relay.stats
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
    print(
        f"{PROG}: stopped ({', '.join(received) or 'closed'}) after {stats.total} "
        f"connections, {stats.refused} refused, {stats.upstream_failures} upstream failures, "
        f"{stats.evicted} evicted, {stats.deadline_cuts} cut by a deadline",
        file=sys.stderr,
        flush=True,
    )
    return 0


async def _start_services(config: HostConfig, stack: contextlib.AsyncExitStack) -> list[str]:
    """The enclave's model store, credentials and KMS forwarder (and, in mock mode,
    the local KMS server with the provisioning a model owner would do)."""
    assert config.services_listen is not None and config.kms_listen is not None
    lines = []
    kms_upstream = config.kms_upstream
    if config.mock:
        import boto3

        from ephemeralml.common._attestation import TrustedRoot

        from ._mock_kms import ENCLAVE, MODEL_OWNER, MockKmsServer
        from ._provision import ensure_mock_root, provision_mock

        assert config.mock_kms_listen is not None and config.mock_kms_listen.host is not None
        root = await asyncio.to_thread(ensure_mock_root, config.home)
        server = MockKmsServer(
            config.home / "mock-kms",
            trusted_root=TrustedRoot.unsafe_mock(root),
            listen=(config.mock_kms_listen.host, config.mock_kms_listen.port),
            region=config.region,
        )
        await asyncio.to_thread(server.start)
        stack.callback(server.close)
        kms = boto3.client(
            "kms", region_name=config.region, endpoint_url=server.url,
            **server.credentials(MODEL_OWNER).boto3_kwargs(),  # provisioning is the owner's job
        )  # fmt: skip
        p = await asyncio.to_thread(provision_mock, config.home, kms, store=Path(config.store))
        kms_upstream = Endpoint.parse(server.url.removeprefix("http://"))
        lines.append(
            f"mock KMS at {server.url} (key {p.kms_key_id}; policy: Decrypt only for PCR0 {p.pcrs[0].hex()[:16]}…)"
        )
        # The enclave gets its role's credentials (on AWS: the instance role's), which
        # the key policy lets decrypt only with a matching Recipient attestation.
        enclave = server.credentials(ENCLAVE)
        credentials = lambda: AwsCredentials(  # noqa: E731
            enclave.access_key_id, enclave.secret_access_key, enclave.session_token, config.region
        )
    else:
        credentials = instance_credentials(config.region)
    assert kms_upstream is not None
    service = StoreService(
        store_from_url(config.store), config.services_listen, credentials=credentials
    )
    await service.start()
    stack.push_async_callback(service.close)
    # TLS, not frames: stream mode (no handshake or frame deadlines).
    forwarder = Relay(
        RelayConfig(listen=config.kms_listen, upstreams=(kms_upstream,), framed=False)
    )
    await forwarder.start()
    stack.push_async_callback(forwarder.close)
    lines.append(f"model store {config.store} and credentials for the enclave on {service.bound}")
    lines.append(
        f"KMS forwarder {forwarder.bound} -> {kms_upstream} (the only endpoint it reaches)"
    )
    return lines


def _describe(config: HostConfig, bound: Endpoint) -> str:
    upstreams = config.relay.upstreams
    notes = []
    if len(upstreams) > 1:
        notes.append("round robin")
    if config.mock:
        notes.append("mock mode: loopback TCP instead of vsock")
    text = f"relaying {bound} -> {', '.join(str(u) for u in upstreams)}"
    return f"{text} ({'; '.join(notes)})" if notes else text


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(format=f"{PROG}: %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("ephemeralml").setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
