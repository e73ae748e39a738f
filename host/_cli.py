"""``ephemeral-host``: the untrusted host's command line.

Thin by design (STYLE.md §15): parse flags, build a frozen config, run the relay,
turn our errors into one line and an exit code (2 for configuration, 1 for any other
:class:`~ephemeralml.common._errors.Error`; traceback only with ``-v``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

from ephemeralml.common._errors import ConfigError, Error

from ._relay import IDLE_TIMEOUT_S, MAX_CONNECTIONS, Relay, RelayConfig
from ._transport import Endpoint

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


@dataclass(frozen=True)
class HostConfig:
    """Everything the host program runs with, built from flags and environment.

    Only the relay exists today; serving encrypted model blobs and forwarding the
    enclave's KMS traffic will add their own fields here.
    """

    relay: RelayConfig
    mock: bool = False
    verbosity: int = 0


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
    return HostConfig(
        relay=RelayConfig(
            listen=listen,
            upstreams=upstreams,
            max_connections=args.max_connections,
            idle_timeout_s=args.idle_timeout,
        ),
        mock=args.mock,
        verbosity=args.verbose,
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
    try:
        relay = Relay(config.relay)
        await relay.start()
        try:
            print(f"{PROG}: {_describe(config, relay.bound)}", file=sys.stderr, flush=True)
            await stop.wait()
        finally:
            await relay.close()
        stats = relay.stats
        print(
            f"{PROG}: stopped ({', '.join(received) or 'closed'}) after {stats.total} "
            f"connections, {stats.refused} refused, {stats.upstream_failures} upstream failures",
            file=sys.stderr,
            flush=True,
        )
        return 0
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


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
