"""The enclave's only way out: an HTTP ``CONNECT`` proxy with an allowlist (protocol.md §10.3).

A Nitro enclave has no network: no route, no DNS, loopback down until it brings it
up. Its boto3 client speaks HTTPS to ``kms.REGION.amazonaws.com`` through an
``https_proxy`` on its own loopback, which is a byte relay over vsock to this proxy
on the parent instance. The enclave sends ``CONNECT kms.REGION.amazonaws.com:443``;
this proxy checks the target against its allowlist (exact ``host:port``, nothing
else), resolves and dials it on the host's network, answers ``200``, and from then
on moves bytes both ways without reading them. TLS and SigV4 end inside the enclave:
the host sees ciphertext and the target's name, as any HTTPS proxy does.

Bounded before any work: the request head must arrive within
:data:`HEAD_TIMEOUT_S` and fit in :data:`MAX_HEAD_BYTES`; a tunnel with no bytes
either way for ``idle_timeout_s`` is closed. Anything but a ``CONNECT`` to an allowed
target gets a one-line ``4xx`` and is closed; the refusal is logged with the target,
never with payload. The request head is parsed by h11 (a maintained HTTP/1.1 parser),
not by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import h11

from ephemeralml.common._config import positive_seconds
from ephemeralml.common._errors import ConfigError, TransportError
from ephemeralml.runtime._transport import Endpoint, Listener, open_connection

from ._http import read_request

__all__ = [
    "HEAD_TIMEOUT_S",
    "IDLE_TIMEOUT_S",
    "MAX_HEAD_BYTES",
    "EgressConfig",
    "EgressProxy",
    "kms_target",
    "pump_both",
]

log = logging.getLogger("ephemeralml.host.egress")

#: A CONNECT request head is one line and a few headers: 8 KiB is generous.
MAX_HEAD_BYTES = 8 * 1024
#: From accept until the request head has arrived.
HEAD_TIMEOUT_S = 10.0
#: Dialling the allowed target.
DIAL_TIMEOUT_S = 10.0
#: A tunnel silent both ways this long is closed (a KMS call is seconds).
IDLE_TIMEOUT_S = 120.0
_CHUNK = 64 * 1024


def kms_target(region: str) -> str:
    """The one target a production enclave may reach: its region's KMS over TLS."""
    return f"kms.{region}.amazonaws.com:443"


def _check_target(target: str) -> str:
    """``host:port`` in one spelling (lower-case host), read by the one endpoint parser."""
    try:
        ep = Endpoint.parse(target)
    except ConfigError as e:
        raise ConfigError(f"egress target {target!r} is not HOST:PORT") from e
    if ep.kind != "tcp" or ep.host is None or ep.port == 0 or target.startswith("tcp:"):
        raise ConfigError(f"egress target {target!r} is not HOST:PORT")
    host = ep.host.lower()
    return f"[{host}]:{ep.port}" if ":" in host else f"{host}:{ep.port}"


@dataclass(frozen=True)
class EgressConfig:
    listen: Endpoint
    #: Exact ``host:port`` targets the enclave may reach.
    allow: frozenset[str]
    #: Where to dial an allowed target instead of resolving its name (tests and the
    #: mock stand-in for AWS; production leaves it empty and the host's DNS decides).
    resolve: Mapping[str, Endpoint] = field(default_factory=dict)
    idle_timeout_s: float = IDLE_TIMEOUT_S

    def __post_init__(self) -> None:
        allow = frozenset(_check_target(t) for t in self.allow)
        if not allow:
            raise ConfigError("the egress proxy needs at least one allowed target")
        object.__setattr__(self, "allow", allow)
        resolve = {_check_target(t): ep for t, ep in self.resolve.items()}
        unknown = sorted(set(resolve) - allow)
        if unknown:
            raise ConfigError(f"egress resolve entries for targets not allowed: {unknown}")
        object.__setattr__(self, "resolve", resolve)
        positive_seconds("egress idle timeout", self.idle_timeout_s)


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class EgressProxy:
    """Serves :class:`EgressConfig` until closed; counts tunnels and refusals."""

    def __init__(self, config: EgressConfig) -> None:
        self.config = config
        self._listener = Listener(config.listen, self._serve)
        self.bound: Endpoint | None = None
        self.tunnels = 0
        self.refused = 0

    async def start(self) -> None:
        self.bound = await self._listener.start()

    async def close(self) -> None:
        await self._listener.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        up_w: asyncio.StreamWriter | None = None
        try:
            try:
                target, rest = await asyncio.wait_for(_read_connect(conn, reader), HEAD_TIMEOUT_S)
            except TimeoutError as e:
                raise _Refused(408, "no CONNECT request within the deadline") from e
            if target not in self.config.allow:
                raise _Refused(403, f"{target} is not on the allowlist")
            dial = self.config.resolve.get(target) or Endpoint.parse(target)
            try:
                up_r, up_w = await open_connection(dial, timeout=DIAL_TIMEOUT_S, peer=target)
            except TransportError as e:
                raise _Refused(502, e.message) from e
            writer.write(
                conn.send(
                    h11.Response(status_code=200, headers=[], reason=b"Connection established")
                )
                or b""
            )
            if rest:
                up_w.write(rest)
            await writer.drain()
            self.tunnels += 1
            log.info("tunnel to %s", target)
            await pump_both(reader, writer, up_r, up_w, self.config.idle_timeout_s)
        except _Refused as r:
            self.refused += 1
            log.warning("refused egress: %s", r.reason)
            with contextlib.suppress(Exception):
                body = f"egress refused: {r.reason}\n".encode()
                writer.write(
                    f"HTTP/1.1 {r.status} Refused\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            for w in (writer, up_w):
                if w is not None:
                    w.close()


async def _read_connect(conn: h11.Connection, reader: asyncio.StreamReader) -> tuple[str, bytes]:
    """The target of the CONNECT request, and any bytes after its head."""
    try:
        event = await read_request(conn, reader, chunk=MAX_HEAD_BYTES)
    except h11.RemoteProtocolError as e:
        raise _Refused(400, f"not an HTTP request ({e})") from e
    if event is None:
        raise _Refused(400, "the connection closed before a request")
    if event.method != b"CONNECT":
        raise _Refused(405, f"only CONNECT is proxied, not {event.method.decode()}")
    try:
        target = _check_target(event.target.decode("ascii"))
    except (UnicodeDecodeError, ConfigError) as e:
        raise _Refused(400, "the CONNECT target is not HOST:PORT") from e
    rest, _closed = conn.trailing_data
    return target, bytes(rest)


async def pump_both(
    client_r: asyncio.StreamReader,
    client_w: asyncio.StreamWriter,
    up_r: asyncio.StreamReader,
    up_w: asyncio.StreamWriter,
    idle_timeout_s: float,
) -> None:
    """Move bytes both ways, unread, until both sides have ended, either fails, or
    nothing moved either way for ``idle_timeout_s``."""
    loop = asyncio.get_running_loop()
    last = [loop.time()]

    async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(_CHUNK):
            last[0] = loop.time()
            w.write(data)
            await w.drain()
        if w.can_write_eof():
            w.write_eof()

    tasks = {asyncio.create_task(pump(client_r, up_w)), asyncio.create_task(pump(up_r, client_w))}
    try:
        while tasks:
            wake = last[0] + idle_timeout_s - loop.time()
            if wake <= 0:
                return
            done, tasks = await asyncio.wait(
                tasks, timeout=wake, return_when=asyncio.FIRST_COMPLETED
            )
            if any(t.exception() is not None for t in done if not t.cancelled()):
                return
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
