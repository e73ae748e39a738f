"""``ephemeral-enclave``: the enclave program.

    ephemeral-enclave --mock                       # loopback TCP, mock NSM
    ephemeral-enclave                              # inside a Nitro enclave (vsock, libnsm)
    python -m ephemeralml.enclave                  # the same, as the image runs it (no mock)

At start it sets up the NSM seam, then loads each model through the host (ARCHITECTURE
flow 1: verified manifest, attested KMS key release, in-memory decryption), and serves
sessions until SIGINT/SIGTERM. Configuration is built from flags (defaults from the
environment) at the edge; the library code takes it as arguments. Errors, exit codes
and logs follow the shared runner (:mod:`ephemeralml.runtime._runner`); once it serves
it prints one readiness line, ``ephemeral-enclave: ready {"listen": EP, "models": [...],
"failed": [...], "profile": NAME}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ephemeralml.common._errors import ConfigError, Error, TransportError
from ephemeralml.common._session import EnclaveIdentity
from ephemeralml.common._store import AwsCredentials
from ephemeralml.enclave._services import fetch_credentials
from ephemeralml.runtime._home import default_home
from ephemeralml.runtime._logstream import LogStream
from ephemeralml.runtime._ports import DEFAULT_BASE_PORT, ENV_BASE_PORT, Ports
from ephemeralml.runtime._relay import Relay, RelayConfig
from ephemeralml.runtime._runner import Parser, ready_line, run_main
from ephemeralml.runtime._transport import Endpoint

from ._batcher import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_MS, BatchConfig
from ._boot import loopback_up, seed_rng
from ._keyrelease import KmsKeyRelease, kms_client_config
from ._libnsm import DEFAULT_LIBNSM
from ._loader import LoadedModel, load_model
from ._measure import NITRO_FLOORS, load_model_floors, load_owner_keys
from ._model import DEVICES
from ._profile import NITRO_OWNER_KEYS, EnclaveProfile, nitro_profile
from ._server import (
    FRAME_TIMEOUT_S,
    HANDSHAKE_TIMEOUT_S,
    IDLE_TIMEOUT_S,
    MAX_PENDING_SESSIONS,
    MAX_SESSION_BYTES,
    MAX_SESSIONS,
    EnclaveServer,
    ServerConfig,
)
from ._streams import KV_TOKENS, MAX_ACTIVE_STREAMS, PREFIX_TOKENS, StreamLimits

__all__ = ["EnclaveConfig", "main"]

log = logging.getLogger("ephemeralml.enclave")

PROG = "ephemeral-enclave"

DEFAULT_MODEL = "all-MiniLM-L6-v2"
#: How long to wait for the host (and, in mock mode, its provisioning) at start:
#: an enclave may boot before its parent's services are up.
HOST_WAIT_S = 120.0
#: PCR indices read at start and copied into receipts and the published measurements.
_PCRS = tuple(range(16))


#: The edge's way to hand in the mock profile: (home, ports) -> profile.
MockProfile = Callable[[Path, Ports], EnclaveProfile]


@dataclass(frozen=True)
class EnclaveConfig:
    profile: EnclaveProfile
    listen: Endpoint
    home: Path
    services: Endpoint
    kms: Endpoint
    owner_keys: Path
    #: Per-model release floors (M11): a file in the image, its content measured (PCR0).
    floors: Path
    models: tuple[str, ...]
    policy_version: int
    max_sessions: int
    idle_timeout_s: float
    host_wait_s: float
    nsm_lib: str = DEFAULT_LIBNSM
    kms_endpoint_url: str | None = None
    #: CA certificates boto3 trusts for KMS (default: botocore's bundle).
    kms_ca_bundle: str | None = None
    #: Where stderr and the exit status are streamed (None: nowhere else).
    logs: Endpoint | None = None
    batch: BatchConfig = field(default_factory=BatchConfig)
    streams: StreamLimits = field(default_factory=StreamLimits)
    device: str = "cpu"
    threads: int | None = None
    #: Limits before authentication (protocol.md §7.1, L1-L5).
    max_pending: int = MAX_PENDING_SESSIONS
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
    frame_timeout_s: float = FRAME_TIMEOUT_S
    max_session_bytes: int = MAX_SESSION_BYTES

    def server_config(self) -> ServerConfig:
        return ServerConfig(
            self.listen,
            self.max_sessions,
            self.idle_timeout_s,
            self.batch,
            streams=self.streams,
            max_pending=self.max_pending,
            handshake_timeout_s=self.handshake_timeout_s,
            frame_timeout_s=self.frame_timeout_s,
            max_session_bytes=self.max_session_bytes,
        )


def _parser() -> Parser:
    p = Parser(
        prog=PROG,
        description="Serve attested, end-to-end encrypted inference (the enclave program).",
        version=True,
    )
    p.add_argument(
        "--mock",
        action="store_true",
        help="mock mode: loopback TCP instead of vsock and a mock NSM (not a real enclave)",
    )
    p.add_argument(
        "--base-port",
        type=int,
        help="moves every port: listen on BASE+5, the host's services on BASE+6 and its KMS "
        f"forwarder on BASE+7 (default ${ENV_BASE_PORT}, else {DEFAULT_BASE_PORT})",
    )
    p.add_argument(
        "--listen",
        help="endpoint (default tcp:127.0.0.1:BASE+5 with --mock, else vsock:any:BASE+5)",
    )
    p.add_argument(
        "--home", type=Path, help="state directory (default $EPHEMERALML_HOME or ~/.ephemeralml)"
    )
    p.add_argument(
        "--host-services",
        help="the host's model store and credentials (default tcp:127.0.0.1:BASE+6 with --mock, else vsock:3:BASE+6)",
    )
    p.add_argument(
        "--host-kms",
        help="the host's KMS egress proxy (default tcp:127.0.0.1:BASE+7 with --mock, else vsock:3:BASE+7)",
    )
    p.add_argument(
        "--owner-keys",
        type=Path,
        help=f"model-owner keys, one hex key a line (default $EPHEMERALML_HOME/published/model-owners.txt with --mock, else {NITRO_OWNER_KEYS})",
    )
    p.add_argument(
        "--model-floors",
        type=Path,
        help=f"model release floors, MODEL_ID MIN_RELEASE a line; measured into PCR0 (default $EPHEMERALML_HOME/published/model-floors.txt with --mock, else {NITRO_FLOORS}; absent: no floors)",
    )
    p.add_argument(
        "--model",
        action="append",
        help=f"model id to load from the store; repeatable (default {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--kms-endpoint",
        help="KMS URL for boto3, reached through the host's egress proxy (default: https://kms.REGION.amazonaws.com)",
    )
    p.add_argument(
        "--log-to",
        metavar="EP",
        help="stream stderr and the exit status to the host's collector here, or 'none' "
        "(default vsock:3:BASE+4 on Nitro, where there is no console; none with --mock)",
    )
    p.add_argument(
        "--kms-ca-bundle",
        help="CA certificates (PEM) boto3 trusts for KMS (default: botocore's bundle; "
        "with --mock, the mock KMS's TLS CA that the host publishes)",
    )
    p.add_argument(
        "--policy-version", type=int, default=1, help="policy version to report in receipts"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_MAX_BATCH,
        help=f"most texts per inference batch across sessions (default {DEFAULT_MAX_BATCH})",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=DEFAULT_MAX_WAIT_MS,
        help="how long a batch waits for more requests (default 0: take what is queued)",
    )
    p.add_argument(
        "--max-streams",
        type=int,
        default=MAX_ACTIVE_STREAMS,
        help=f"chat streams decoding together (one batch) per chat model (default {MAX_ACTIVE_STREAMS})",
    )
    p.add_argument(
        "--kv-tokens",
        type=int,
        default=KV_TOKENS,
        help=f"KV-cache tokens a chat model's decoding batch may hold (default {KV_TOKENS})",
    )
    p.add_argument(
        "--prefix-cache-tokens",
        type=int,
        default=PREFIX_TOKENS,
        help="KV-cache tokens kept for the sessions' next prompts, each session's its own"
        f" (default {PREFIX_TOKENS}; 0: none)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        choices=sorted(DEVICES),
        help="ONNX Runtime execution provider (cuda needs onnxruntime-gpu)",
    )
    p.add_argument(
        "--threads", type=int, help="ONNX Runtime threads (default: the cores given to the enclave)"
    )
    p.add_argument("--max-sessions", type=int, default=MAX_SESSIONS)
    p.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT_S, help="seconds")
    p.add_argument(
        "--max-pending",
        type=int,
        default=MAX_PENDING_SESSIONS,
        help="connections still in their handshake; when full the oldest is evicted",
    )
    p.add_argument(
        "--handshake-timeout",
        type=float,
        default=HANDSHAKE_TIMEOUT_S,
        help="seconds from accept until the client's open has arrived",
    )
    p.add_argument(
        "--frame-timeout",
        type=float,
        default=FRAME_TIMEOUT_S,
        help="seconds from a frame's first byte until its last, and for an answer to drain",
    )
    p.add_argument(
        "--max-session-bytes",
        type=int,
        default=MAX_SESSION_BYTES,
        help="bytes one session may hold (frame in progress and requests in flight)",
    )
    p.add_argument(
        "--host-wait", type=float, default=HOST_WAIT_S, help="seconds to wait for the host at start"
    )
    p.add_argument(
        "--nsm-lib",
        default=os.environ.get("EPHEMERAL_LIBNSM", DEFAULT_LIBNSM),
        help="path of libnsm.so (production only)",
    )
    p.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-vv: debug); show tracebacks"
    )
    return p


def _config(args: argparse.Namespace, mock_profile: MockProfile | None) -> EnclaveConfig:
    home = args.home or default_home()
    ports = Ports.choose(args.base_port, os.environ)
    if args.mock:
        if mock_profile is None:
            raise ConfigError(
                "this installation has no mock mode (start it as ephemeral-enclave --mock)"
            )
        profile = mock_profile(home, ports)
    else:
        profile = nitro_profile(ports, args.nsm_lib)
    listen = Endpoint.parse(args.listen) if args.listen else profile.listen
    services = Endpoint.parse(args.host_services) if args.host_services else profile.services
    kms = Endpoint.parse(args.host_kms) if args.host_kms else profile.kms
    for flag, ep in (("--listen", listen), ("--host-services", services), ("--host-kms", kms)):
        profile.check_endpoint(flag, ep)
    if (
        args.policy_version < 0
        or args.max_sessions < 1
        or args.idle_timeout <= 0
        or args.host_wait < 0
    ):
        raise ConfigError(
            "--policy-version must be ≥ 0, --max-sessions ≥ 1, --idle-timeout > 0, --host-wait ≥ 0"
        )
    if args.threads is not None and args.threads < 1:
        raise ConfigError("--threads must be ≥ 1")
    config = EnclaveConfig(
        profile=profile,
        listen=listen,
        home=home,
        services=services,
        kms=kms,
        owner_keys=args.owner_keys or profile.owner_keys,
        floors=args.model_floors or profile.floors,
        models=tuple(dict.fromkeys(args.model or [DEFAULT_MODEL])),
        policy_version=args.policy_version,
        max_sessions=args.max_sessions,
        idle_timeout_s=args.idle_timeout,
        host_wait_s=args.host_wait,
        nsm_lib=args.nsm_lib,
        kms_endpoint_url=args.kms_endpoint,
        kms_ca_bundle=args.kms_ca_bundle,
        logs=(
            None
            if args.log_to == "none"
            else Endpoint.parse(args.log_to)
            if args.log_to
            else profile.logs
        ),
        batch=BatchConfig(args.batch_size, args.batch_wait_ms),
        streams=StreamLimits(
            max_active=args.max_streams,
            kv_tokens=args.kv_tokens,
            prefix_tokens=args.prefix_cache_tokens,
        ),
        device=args.device,
        threads=args.threads if args.threads is not None else len(os.sched_getaffinity(0)),
        max_pending=args.max_pending,
        handshake_timeout_s=args.handshake_timeout,
        frame_timeout_s=args.frame_timeout,
        max_session_bytes=args.max_session_bytes,
    )
    config.server_config()  # the limits are checked now, not after the models load
    return config


async def _wait_for(what: str, attempt: Any, deadline: float) -> Any:
    """Retry ``attempt`` (a coroutine factory) until it succeeds or the deadline passes."""
    delay, said = 0.2, False
    while True:
        try:
            return await attempt()
        except (TransportError, ConfigError) as e:
            if time.monotonic() + delay > deadline:
                raise
            if not said:
                print(f"ephemeral-enclave: waiting for {what} ({e})", file=sys.stderr, flush=True)
                said = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


def _kms_client(
    creds: AwsCredentials, url: str, *, https_proxy: str | None, ca_bundle: str | None
) -> Any:
    import boto3

    return boto3.client(
        "kms",
        region_name=creds.region,
        endpoint_url=url,
        aws_access_key_id=creds.access_key_id,
        aws_secret_access_key=creds.secret_access_key,
        aws_session_token=creds.session_token,
        # Our own retry loop (with the evidence it keeps) decides; botocore tries once.
        config=kms_client_config(https_proxy),
        verify=ca_bundle or True,
    )


def _ca_bundle(config: EnclaveConfig) -> str | None:
    """The CA bundle boto3 checks KMS's certificate with (None: botocore's own), checked
    to be there now rather than as a TLS error on every try."""
    bundle = config.kms_ca_bundle or config.profile.kms_ca_bundle
    if bundle is None:
        return None
    if not Path(bundle).is_file():
        raise ConfigError(f"KMS CA bundle {bundle} does not exist")
    return str(bundle)


async def _run(config: EnclaveConfig) -> int:
    deadline = time.monotonic() + config.host_wait_s

    async def owner_keys() -> dict[bytes, bytes]:
        return load_owner_keys(config.owner_keys)

    keys = await _wait_for(f"model-owner keys at {config.owner_keys}", owner_keys, deadline)
    # M11 floors: part of the image's measured configuration, like the owner keys.
    floors = load_model_floors(config.floors)
    # Nitro: lo is down at start (no-op where it is up), then the RNG gets the NSM's bytes.
    loopback_up()
    nsm = config.profile.make_nsm(keys, floors)
    seed_rng(nsm)
    async with contextlib.AsyncExitStack() as stack:
        # boto3 in the enclave speaks to a loopback forwarder that relays to the host's
        # egress proxy (vsock in production): TLS and SigV4 stay end to end.
        # An opaque stream (CONNECT, then TLS), not frames: no frame deadlines apply.
        forwarder = Relay(
            RelayConfig(
                listen=Endpoint.parse("tcp:127.0.0.1:0"), upstreams=(config.kms,), framed=False
            )
        )
        await forwarder.start()
        stack.push_async_callback(forwarder.close)
        creds = await _wait_for(
            f"the host's services at {config.services}",
            lambda: fetch_credentials(config.services, timeout=10),
            deadline,
        )
        # No DNS and no route: boto3 names KMS as usual and reaches it through its
        # https_proxy, the forwarder, whose CONNECT the host allows for that one name.
        url = config.kms_endpoint_url or f"https://kms.{creds.region}.amazonaws.com"
        proxy = f"http://127.0.0.1:{forwarder.bound.port}"
        key_release = KmsKeyRelease(
            nsm, _kms_client(creds, url, https_proxy=proxy, ca_bundle=_ca_bundle(config))
        )
        loaded: dict[str, LoadedModel] = {}
        failed: dict[str, str] = {}
        for model_id in config.models:
            try:
                loaded[model_id] = await load_model(
                    model_id,
                    services=config.services,
                    owner_keys=keys,
                    key_release=key_release,
                    intra_op_threads=config.threads,
                    device=config.device,
                    min_release=floors.get(model_id, 0),
                )
            except Error as e:
                # The other models still load and serve (issue: "keeps serving models
                # that did load"); the failure is logged and told to clients.
                failed[model_id] = e.message
                print(
                    f"ephemeral-enclave: error: could not load {model_id}: {e}",
                    file=sys.stderr,
                    flush=True,
                )
        if not loaded:
            raise ConfigError(
                f"no model loaded ({'; '.join(f'{k}: {v}' for k, v in failed.items())})"
            )
        identity = EnclaveIdentity(
            receipt_key=Ed25519PrivateKey.generate(),
            models={m.model_id: m.manifest_digest for m in loaded.values()},
            key_releases={m.model_id: m.key_release_digest for m in loaded.values()},
            policy_version=config.policy_version,
            mode=nsm.mode,
            pcrs={i: nsm.describe_pcr(i) for i in _PCRS},
        )
        server = EnclaveServer(
            config.server_config(),
            nsm=nsm,
            identity=identity,
            models=loaded,
            failed=failed,
        )
        await server.start()
        stack.push_async_callback(server.close)
        config.profile.on_serving(nsm)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        where = config.profile.banner
        for m in loaded.values():
            t = m.timings
            print(
                f"ephemeral-enclave: loaded {m.model_id} release {m.release} "
                f"(manifest {m.manifest_digest.hex()[:16]}): "
                f"key release {1000 * t.key_release_s:.0f} ms, "
                f"{t.bytes / 1e6:.1f} MB fetched and decrypted in {1000 * t.transfer_s:.0f} ms, "
                f"ONNX Runtime load {1000 * t.load_s:.0f} ms",
                file=sys.stderr,
                flush=True,
            )
        print(
            f"ephemeral-enclave: serving {', '.join(loaded)} on {server.bound} ({where})",
            file=sys.stderr,
            flush=True,
        )
        print(
            ready_line(
                PROG,
                listen=str(server.bound),
                models=list(loaded),
                failed=sorted(failed),
                profile=config.profile.name,
            ),
            file=sys.stderr,
            flush=True,
        )
        serve = asyncio.create_task(server.serve_forever())
        await stop.wait()
        serve.cancel()
        served = server.batch_stats()
        streamed = server.stream_stats()
    print(
        f"ephemeral-enclave: stopped ({_describe_batches(served, streamed)})",
        file=sys.stderr,
        flush=True,
    )
    return 0


def _describe_batches(
    stats: Mapping[str, tuple[int, int, int]],
    streams: Mapping[str, tuple[int, int, int, int, int]] | None = None,
) -> str:
    """What the batcher did, per model: how full ONNX Runtime's batches were is what
    its CPU per inference depends on (docs/benchmarks.md); per chat model, the
    streams, tokens and decoding rounds."""
    parts = []
    for model, (batches, requests, texts) in sorted(stats.items()):
        mean = f", {texts / batches:.1f} texts a batch" if batches else ""
        parts.append(
            f"{model}: {requests} request(s), {texts} text(s) in {batches} batch(es){mean}"
        )
    for model, (ended, tokens, rounds, rows, reused) in sorted((streams or {}).items()):
        mean = f", {rows / rounds:.1f} streams a step" if rounds else ""
        parts.append(
            f"{model}: {ended} stream(s), {tokens} token(s) in {rounds} round(s){mean},"
            f" {reused} prompt token(s) from the sessions' prefix caches"
        )
    return "; ".join(parts) or "nothing served"


def main(argv: Sequence[str] | None = None, *, mock_profile: MockProfile | None = None) -> int:
    """``ephemeral-enclave``; ``mock_profile`` is what ``--mock`` runs with (handed in by
    :mod:`ephemeralml._edge`; absent, as under ``python -m ephemeralml.enclave``, the
    program has no mock mode)."""

    streams: list[LogStream] = []

    def body(args: argparse.Namespace) -> int:
        config = _config(args, mock_profile)
        if config.logs is not None:
            streams.append(LogStream(config.logs).install())
        return asyncio.run(_run(config))

    code = run_main(PROG, _parser(), argv, body)
    for stream in streams:
        stream.close(code)  # what is left, then the exit status (bounded)
    return code


if __name__ == "__main__":
    sys.exit(main())
