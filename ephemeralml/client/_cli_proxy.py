"""``ephemeral proxy``: serve the OpenAI API on loopback over verified enclave sessions.

It verifies the enclave before it listens (a proxy that cannot verify the enclave
refuses to start, in one line), prints what it verified, then one readiness line,
``ephemeral: ready {"listen": EP, "enclave": ADDR, "models": [...], "sessions": N}``,
and serves until SIGINT or SIGTERM (exit 0). The server is uvicorn (see
:mod:`._proxy`); it needs the ``proxy`` extra, which the base install leaves out.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys

from ephemeralml.common._config import positive_seconds
from ephemeralml.common._errors import ConfigError, TransportError
from ephemeralml.runtime._home import default_home
from ephemeralml.runtime._runner import ready_line
from ephemeralml.runtime._transport import Endpoint

from ._api import Session, connect
from ._audit import AuditLog
from ._cli_common import PROG, trust_from_args
from ._proxy_pool import SessionPool

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_SESSIONS",
    "bind_loopback",
    "cmd_proxy",
    "loopback_endpoint",
    "url_host",
]

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_SESSIONS = 4


def loopback_endpoint(listen: str, *, what: str = "the SDK") -> Endpoint:
    """``--listen``, refused unless it is a loopback address: what is served there is
    plaintext (``what`` names whose)."""
    ep = Endpoint.parse(listen)
    ok = ep.kind == "tcp" and ep.host is not None
    if ok:
        assert ep.host is not None
        try:
            ok = ep.host == "localhost" or ipaddress.ip_address(ep.host).is_loopback
        except ValueError:
            ok = False
    if not ok:
        raise ConfigError(
            f"--listen {listen}: this serves plaintext to {what}, so it listens on "
            "loopback only (127.0.0.1, ::1 or localhost)"
        )
    return ep


def bind_loopback(ep: Endpoint) -> socket.socket:
    assert ep.host is not None
    family = socket.AF_INET6 if ":" in ep.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((ep.host, ep.port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise TransportError(f"cannot listen on {ep}: {(e.strerror or str(e)).lower()}") from e
    return sock


def cmd_proxy(args: argparse.Namespace) -> int:
    try:
        from ._proxy import build_app, ends_session, serve_on
    except ImportError as e:
        raise ConfigError(
            f"ephemeral proxy needs its web server ({e.name} is not installed): "
            "pip install 'ephemeralml[proxy]'"
        ) from e
    listen = loopback_endpoint(args.listen)
    timeout = positive_seconds("--timeout", args.timeout)
    if args.sessions < 1:
        raise ConfigError(f"--sessions must be at least 1, not {args.sessions}")
    policy = trust_from_args(args, offline=False)
    audit = AuditLog.in_home(args.home or default_home())

    def open_session() -> Session:
        return connect(
            args.host, policy=policy, timeout=timeout, session_mode=args.session_mode, audit=audit
        )

    pool: SessionPool[Session] = SessionPool(
        open_session, size=args.sessions, max_age_s=policy.attestation.max_age_s,
        ends_session=ends_session,
    )  # fmt: skip
    try:
        # Verified before anything listens: no SDK request ever meets an unverified enclave.
        with pool.session() as s:
            models, doc = sorted(s.models), s.attestation.document
        print(
            f"{PROG}: proxy: verified the enclave at {args.host} (module {doc.module_id}, "
            f"PCR0 {doc.pcrs[0].hex()[:16]}…); models: {', '.join(models)}",
            file=sys.stderr, flush=True,
        )  # fmt: skip
        sock = bind_loopback(listen)
        bound = Endpoint.tcp(listen.host or "127.0.0.1", sock.getsockname()[1])
        print(
            f"{PROG}: proxy: OpenAI API at http://{url_host(bound)}/v1 -> the enclave at "
            f"{args.host}; receipts in {audit.path}",
            file=sys.stderr, flush=True,
        )  # fmt: skip
        print(
            ready_line(PROG, listen=str(bound), enclave=args.host, models=models,
                       sessions=args.sessions),
            file=sys.stderr, flush=True,
        )  # fmt: skip
        received = serve_on(build_app(pool), sock, limit_concurrency=256)
    finally:
        pool.close()
    stats = pool.stats
    print(
        f"{PROG}: proxy: stopped ({', '.join(received) or 'closed'}); sessions opened "
        f"{stats.opened}, reused {stats.reused}, retired {stats.retired_age} by age, "
        f"{stats.retired_idle} idle, {stats.retired_broken} broken",
        file=sys.stderr, flush=True,
    )  # fmt: skip
    return 0


def url_host(ep: Endpoint) -> str:
    assert ep.host is not None
    return f"[{ep.host}]:{ep.port}" if ":" in ep.host else f"{ep.host}:{ep.port}"
