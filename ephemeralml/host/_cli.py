"""``ephemeral-host``: the untrusted host's command line.

Thin by design (STYLE.md §15): parse flags, build a frozen config, run the relay. The
error policy, exit codes, ``-v`` and logging are the shared runner's
(:mod:`ephemeralml.runtime._runner`). Once it serves, it prints one readiness line:
``ephemeral-host: ready {"relay": EP, "enclaves": [EP...], "services": EP, "kms": EP,
"kms_upstream": EP, "health": EP, "profile": NAME}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import re
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ephemeralml.common._errors import ConfigError
from ephemeralml.runtime._home import default_home
from ephemeralml.runtime._logstream import LogCollector
from ephemeralml.runtime._ports import DEFAULT_BASE_PORT, ENV_BASE_PORT, Ports
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
from ephemeralml.runtime._runner import Parser, ready_line, run_main
from ephemeralml.runtime._transport import Endpoint

from ._egress import EgressConfig, EgressProxy
from ._health import HealthServer
from ._profile import (
    PRODUCTION_STORE,
    HostProfile,
    KmsRequest,
    nitro_profile,
)
from ._store import StoreService, store_from_url
from ._ws import WsBridge, WsConfig

__all__ = ["HostConfig", "build_config", "main"]

PROG = "ephemeral-host"

#: Environment variables that supply defaults for --listen and --enclave
#: (EPHEMERAL_ENCLAVE may list several endpoints, separated by commas).
ENV_LISTEN = "EPHEMERAL_HOST_LISTEN"
ENV_ENCLAVE = "EPHEMERAL_ENCLAVE"

#: The edge's way to hand in the mock profile: (home, ports) -> profile.
MockProfile = Callable[[Path, Ports], HostProfile]


@dataclass(frozen=True)
class HostConfig:
    """Everything the host program runs with, built from flags and environment.

    Only the relay exists today; serving encrypted model blobs and forwarding the
    enclave's KMS traffic will add their own fields here.
    """

    relay: RelayConfig
    profile: HostProfile
    services_listen: Endpoint
    kms_listen: Endpoint
    health_listen: Endpoint
    store: str
    #: The enclave's log stream, written to our stderr (None: not collected).
    logs_listen: Endpoint | None = None
    #: The WebSocket door for pages (None: none).
    ws_listen: Endpoint | None = None
    verbosity: int = 0
    home: Path = Path(".")
    region: str = "us-east-1"


def _parser() -> Parser:
    p = Parser(
        prog=PROG,
        description="Blind relay between clients and enclaves: it only ever sees ciphertext.",
        version=True,
    )
    p.add_argument(
        "--mock",
        action="store_true",
        help="mock mode: loopback TCP instead of vsock, a local KMS server and provisioning",
    )
    p.add_argument(
        "--base-port",
        type=int,
        help="moves every port: clients on BASE, the enclave on BASE+5, services on BASE+6, "
        f"the KMS egress proxy on BASE+7, the mock KMS on BASE+9 (default ${ENV_BASE_PORT}, "
        f"else {DEFAULT_BASE_PORT})",
    )
    p.add_argument(
        "--listen",
        metavar="EP",
        help=f"where clients connect: [tcp:]HOST:PORT (default ${ENV_LISTEN}, else "
        "tcp:0.0.0.0:BASE, or tcp:127.0.0.1:BASE with --mock)",
    )
    p.add_argument(
        "--enclave",
        metavar="EP",
        action="append",
        help=f"enclave to relay to: vsock:CID:PORT or [tcp:]HOST:PORT; repeat for round robin "
        f"(default ${ENV_ENCLAVE}, or tcp:127.0.0.1:BASE+5 with --mock; on Nitro required: the CID given to nitro-cli run-enclave --enclave-cid)",
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
        help="model store and credentials for the enclave (default vsock:any:BASE+6, or tcp:127.0.0.1:BASE+6 with --mock)",
    )
    p.add_argument(
        "--kms-listen",
        metavar="EP",
        help="the enclave's KMS egress proxy (default vsock:any:BASE+7, or tcp:127.0.0.1:BASE+7 with --mock)",
    )
    p.add_argument(
        "--health-listen",
        metavar="EP",
        help="/healthz, /readyz (the enclave answers a hello) and /metrics "
        "(default tcp:0.0.0.0:BASE+8, or tcp:127.0.0.1:BASE+8 with --mock)",
    )
    p.add_argument(
        "--logs-listen",
        metavar="EP",
        help="collect the enclave's log lines and exit status here and write them to "
        "stderr (default vsock:any:BASE+4; with --mock only if given)",
    )
    p.add_argument(
        "--ws-listen",
        metavar="HOST:PORT",
        help="also take pages' WebSockets here, one frame a message, joined to the relay "
        "(default: none)",
    )
    p.add_argument(
        "--enclave-cid",
        metavar="CID",
        type=int,
        action="append",
        help="enclave CID (as given to nitro-cli run-enclave --enclave-cid); repeat for "
        "round robin; the same as --enclave vsock:CID:BASE+5",
    )
    p.add_argument(
        "--region",
        help="AWS region: the egress proxy allows only kms.REGION.amazonaws.com:443 "
        "(default $AWS_REGION, $AWS_DEFAULT_REGION, else the instance's, from IMDSv2)",
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
        help="with --mock: the local KMS server (default 127.0.0.1:BASE+9)",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log each connection (-vv: more); print tracebacks on errors",
    )
    return p


def build_config(
    args: argparse.Namespace, env: Mapping[str, str], mock_profile: MockProfile | None = None
) -> HostConfig:
    """Flags first, then the environment, then the profile's defaults."""
    home = args.home or default_home()
    ports = Ports.choose(args.base_port, env)
    if args.mock:
        if mock_profile is None:
            raise ConfigError(
                "this installation has no mock mode (start it as ephemeral-host --mock)"
            )
        profile = mock_profile(home, ports)
    else:
        profile = nitro_profile(ports)
    listen_text = args.listen or env.get(ENV_LISTEN)
    listen = Endpoint.parse(listen_text) if listen_text else profile.listen
    if args.enclave and args.enclave_cid:
        raise ConfigError("give --enclave or --enclave-cid, not both")
    if args.enclave:
        enclave_texts: Sequence[str] = args.enclave
    elif args.enclave_cid:
        enclave_texts = [f"vsock:{cid}:{ports.enclave}" for cid in args.enclave_cid]
    elif env.get(ENV_ENCLAVE, "").strip():
        enclave_texts = [t for t in env[ENV_ENCLAVE].split(",") if t.strip()]
    else:
        enclave_texts = []
    upstreams = tuple(Endpoint.parse(t) for t in enclave_texts)
    if not upstreams:
        if profile.enclave is None:
            raise ConfigError(
                "which enclave? give --enclave-cid CID (as passed to nitro-cli run-enclave "
                f"--enclave-cid), --enclave vsock:CID:PORT or ${ENV_ENCLAVE}"
            )
        upstreams = (profile.enclave,)
    services = (
        Endpoint.parse(args.services_listen) if args.services_listen else profile.services_listen
    )
    kms = Endpoint.parse(args.kms_listen) if args.kms_listen else profile.kms_listen
    health = Endpoint.parse(args.health_listen) if args.health_listen else profile.health_listen
    if args.mock_kms_listen:
        if profile.local_kms is None:
            raise ConfigError(f"--mock-kms-listen: the {profile.name} profile has no local KMS")
        profile = dataclasses.replace(profile, local_kms=Endpoint.parse(args.mock_kms_listen))
    # The transport is the one seam where mock differs; a vsock endpoint under --mock
    # means the flags and the environment disagree about the mode.
    for flag, ep in (
        ("--listen", listen),
        *(("--enclave", u) for u in upstreams),
        ("--services-listen", services),
        ("--kms-listen", kms),
        ("--health-listen", health),
        *((("--mock-kms-listen", profile.local_kms),) if profile.local_kms else ()),
    ):
        profile.check_endpoint(flag, ep)
    region = (
        args.region
        or env.get("AWS_REGION")
        or env.get("AWS_DEFAULT_REGION")
        or profile.default_region()
    )
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", region):
        raise ConfigError(f"region {region!r} is not an AWS region name")
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
        profile=profile,
        services_listen=services,
        kms_listen=kms,
        health_listen=health,
        logs_listen=Endpoint.parse(args.logs_listen) if args.logs_listen else profile.logs_listen,
        ws_listen=Endpoint.parse(args.ws_listen) if args.ws_listen else None,
        store=args.store or profile.store,
        verbosity=args.verbose,
        home=home,
        region=region,
    )


def main(argv: Sequence[str] | None = None, *, mock_profile: MockProfile | None = None) -> int:
    """``ephemeral-host``; returns the exit code. ``mock_profile`` is what ``--mock``
    runs with, handed in by :mod:`ephemeralml._edge`."""

    def body(args: argparse.Namespace) -> int:
        return asyncio.run(_run(build_config(args, os.environ, mock_profile)))

    return run_main(PROG, _parser(), argv, body)


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
            services, ready, egress = await _start_services(config, stack)
            relay = Relay(config.relay)
            await relay.start()
            collector: LogCollector | None = None
            if config.logs_listen is not None:
                collector = LogCollector(config.logs_listen, "enclave")
                await collector.start()
                stack.push_async_callback(collector.close)
                ready["logs"] = str(collector.bound)
            bridge: WsBridge | None = None
            if config.ws_listen is not None:
                bridge = WsBridge(WsConfig(config.ws_listen, relay.bound))
                await bridge.start()
                stack.push_async_callback(bridge.close)
                ready["ws"] = str(bridge.bound)
            health = HealthServer(
                config.health_listen, config.relay.upstreams,
                relay=lambda: relay, egress=lambda: egress, logs=lambda: collector,
                ws=lambda: bridge,
            )  # fmt: skip
            await health.start()
            stack.push_async_callback(health.close)
            stack.push_async_callback(relay.close)
            for line in services:
                print(f"{PROG}: {line}", file=sys.stderr, flush=True)
            print(f"{PROG}: {_describe(config, relay.bound)}", file=sys.stderr, flush=True)
            ready["relay"] = str(relay.bound)
            ready["health"] = str(health.bound)
            ready["enclaves"] = [str(u) for u in config.relay.upstreams]
            print(ready_line(PROG, **ready), file=sys.stderr, flush=True)
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


async def _start_services(
    config: HostConfig, stack: contextlib.AsyncExitStack
) -> tuple[list[str], dict[str, object], EgressProxy]:
    """The enclave's model store, credentials and KMS egress proxy, and whatever the
    profile puts behind the proxy (AWS KMS; in mock mode a local KMS server with
    the provisioning a model owner would do)."""
    request = KmsRequest(config.home, config.store, config.region, config.profile.local_kms)
    access = await config.profile.start_kms(request, stack)
    lines = list(access.notes)
    service = StoreService(
        store_from_url(config.store), config.services_listen, credentials=access.credentials
    )
    await service.start()
    stack.push_async_callback(service.close)
    lines.append(f"model store {config.store} and credentials for the enclave on {service.bound}")
    # The enclave's only way out: a CONNECT proxy to the allowed targets (TLS and
    # SigV4 end in the enclave, in mock mode as on Nitro).
    egress = EgressProxy(
        EgressConfig(config.kms_listen, frozenset(access.allow), resolve=access.resolve)
    )
    await egress.start()
    stack.push_async_callback(egress.close)
    bound, where = egress.bound, " ".join(sorted(access.allow))
    lines.append(f"egress proxy {bound} -> CONNECT to {where} only")
    ready: dict[str, object] = {
        "profile": config.profile.name,
        "services": str(service.bound),
        "kms": str(bound),
        "kms_upstream": where,
        **access.ready,
    }
    return lines, ready, egress


def _describe(config: HostConfig, bound: Endpoint) -> str:
    upstreams = config.relay.upstreams
    notes = []
    if len(upstreams) > 1:
        notes.append("round robin")
    if config.profile.note:
        notes.append(config.profile.note)
    text = f"relaying {bound} -> {', '.join(str(u) for u in upstreams)}"
    return f"{text} ({'; '.join(notes)})" if notes else text


if __name__ == "__main__":
    sys.exit(main())
