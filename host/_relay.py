"""The blind relay: client TCP in, enclave vsock out, ciphertext only.

The host is untrusted (ARCHITECTURE.md, "Who trusts whom"): everything it relays is
already sealed by the client's HPKE session with the enclave, and a relay that drops,
reorders or flips bytes is caught by the endpoints. So the relay's job is narrow:
move bytes both ways, fast, with bounded memory, and never let one bad peer hurt the
others. It never parses, logs or keeps payload bytes; its logs carry connection ids,
endpoints, byte counts and durations only.

Failure modes designed against (FACTS.md, "vsock and relays"), and where:

* no timeouts: a connection with no bytes either way for ``idle_timeout_s`` is
  closed (:meth:`Relay._pump_both`); dialling the enclave is bounded by
  ``connect_timeout_s``.
* teardown of both directions on one side's EOF: each direction forwards EOF
  (``write_eof``) on its own and the other keeps flowing until it ends too.
* a crash when the upstream is unreachable: that client is closed, the failure is
  counted and logged in one line, the relay keeps serving.
* unbounded connections: past ``max_connections`` new connections are accepted and
  closed at once (counted as refused), so the accept queue never backs up.
* one slow handshake blocking accepts: every connection, its dial included, runs in
  its own task; accepting never waits on a dial.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from typing import Any

from ephemeralml.common._errors import ConfigError, TransportError

from ._transport import Endpoint, open_connection, server_endpoint, set_nodelay, start_server

__all__ = [
    "CHUNK_BYTES",
    "CLOSE_GRACE_S",
    "CONNECT_TIMEOUT_S",
    "IDLE_TIMEOUT_S",
    "MAX_CONNECTIONS",
    "Relay",
    "RelayConfig",
    "RelayStats",
]

_log = logging.getLogger("ephemeralml.host")

#: Concurrent relayed connections. Each holds two sockets in this process and, per
#: stalled direction, at most about 0.5 MiB of buffers (see CHUNK_BYTES). A client
#: can stall only the direction towards itself, so 4096 keeps a hostile crowd of
#: clients within 8192 file descriptors and about 2 GiB, far above what a few
#: enclaves serve at once.
MAX_CONNECTIONS = 4096
#: Seconds without a byte in either direction before a connection is closed. Peers
#: that vanish without FIN or RST (a crashed client, a dropped NAT entry) would
#: otherwise pin a connection slot forever. Five minutes lets an interactive session
#: think between requests.
IDLE_TIMEOUT_S = 300.0
#: Seconds to establish the connection to the enclave. Over vsock on one instance a
#: healthy enclave answers in microseconds; five seconds only covers a loaded host.
CONNECT_TIMEOUT_S = 5.0
#: Largest read per direction per step, and the stream readers' limit. Reads are
#: written and drained before the next read (the write buffer stops at asyncio's
#: 64 KiB high-water mark plus one chunk), and a reader stops taking bytes from the
#: kernel past twice this much unread (plus at most one 256 KiB recv), so a stalled
#: peer costs well under 1 MiB per direction, whatever the other side sends.
CHUNK_BYTES = 64 * 1024
#: Seconds an orderly close may take to flush what is left before the connection is
#: aborted instead (a peer that sent FIN but stopped reading would pin it forever).
CLOSE_GRACE_S = 5.0
#: File descriptors kept free beyond two per connection (listening socket, logs, ...).
_FD_HEADROOM = 64


@dataclass(frozen=True)
class RelayConfig:
    """What the relay listens on, where it relays to, and its limits.

    ``upstreams`` are one or more enclaves; new client connections go round robin
    over them. Built at the edge (the CLI); checked when built.
    """

    listen: Endpoint
    upstreams: tuple[Endpoint, ...]
    max_connections: int = MAX_CONNECTIONS
    idle_timeout_s: float = IDLE_TIMEOUT_S
    connect_timeout_s: float = CONNECT_TIMEOUT_S

    def __post_init__(self) -> None:
        if not isinstance(self.listen, Endpoint):
            raise ConfigError(f"listen must be an Endpoint, got {self.listen!r}")
        if not isinstance(self.upstreams, tuple) or not all(
            isinstance(u, Endpoint) for u in self.upstreams
        ):
            raise ConfigError(f"upstreams must be a tuple of Endpoint, got {self.upstreams!r}")
        if not self.upstreams:
            raise ConfigError("the relay needs at least one enclave to relay to")
        if isinstance(self.max_connections, bool) or not isinstance(self.max_connections, int):
            raise ConfigError(f"max connections must be an integer, got {self.max_connections!r}")
        if self.max_connections < 1:
            raise ConfigError(f"max connections must be at least 1, got {self.max_connections}")
        for name, value in (
            ("idle timeout", self.idle_timeout_s),
            ("connect timeout", self.connect_timeout_s),
        ):
            # NaN fails "> 0" too, which is what we want.
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
            if value == float("inf"):
                raise ConfigError(f"{name} must be finite, got {value!r}")


@dataclass(frozen=True)
class RelayStats:
    """A snapshot of the relay's counters.

    ``total`` counts connections taken on (refused ones are in ``refused`` instead);
    ``bytes_up`` is client to enclave, ``bytes_down`` enclave to client;
    ``upstream_failures`` counts connections closed because the enclave could not
    be reached.
    """

    active: int
    total: int
    bytes_up: int
    bytes_down: int
    refused: int
    upstream_failures: int


class _Link:
    """Per-connection bookkeeping: no payload, only counts and a clock."""

    __slots__ = ("bytes_down", "bytes_up", "conn_id", "last_activity")

    def __init__(self, conn_id: int, now: float) -> None:
        self.conn_id = conn_id
        self.last_activity = now
        self.bytes_up = 0
        self.bytes_down = 0


class Relay:
    """Relays every accepted connection to the next upstream, bytes untouched.

    Use ``await start()`` then ``await serve_forever()`` (returns after
    :meth:`close`), or ``async with Relay(config) as relay:``.
    """

    def __init__(self, config: RelayConfig) -> None:
        self._config = config
        self._server: asyncio.Server | None = None
        self._bound: Endpoint | None = None
        self._closing = False
        self._closed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._next_upstream = 0
        self._active = 0
        self._total = 0
        self._bytes_up = 0
        self._bytes_down = 0
        self._refused = 0
        self._upstream_failures = 0
        self._last_refusal_log = float("-inf")

    @property
    def config(self) -> RelayConfig:
        return self._config

    @property
    def bound(self) -> Endpoint:
        """The endpoint actually listened on (port 0 resolved). Set by :meth:`start`."""
        if self._bound is None:
            raise RuntimeError("Relay.bound is only known after start()")
        return self._bound

    @property
    def stats(self) -> RelayStats:
        return RelayStats(
            active=self._active,
            total=self._total,
            bytes_up=self._bytes_up,
            bytes_down=self._bytes_down,
            refused=self._refused,
            upstream_failures=self._upstream_failures,
        )

    async def start(self) -> None:
        """Bind and start accepting. Raises :class:`TransportError` if it cannot bind."""
        if self._server is not None or self._closing:
            raise RuntimeError("Relay.start() may be called once, before close()")
        _warn_if_fd_limit_low(self._config.max_connections)
        server = await start_server(self._config.listen, self._accept, limit=CHUNK_BYTES)
        self._server = server
        self._bound = server_endpoint(server, self._config.listen)
        _log.info(
            "relay listening on %s, upstreams %s",
            self._bound,
            ", ".join(str(u) for u in self._config.upstreams),
        )

    async def serve_forever(self) -> None:
        """Serve until :meth:`close` is called (starting first if needed)."""
        if self._server is None and not self._closing:
            await self.start()
        await self._closed.wait()

    async def close(self) -> None:
        """Stop accepting, abort every relayed connection, wait for their tasks."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            if self._server is not None:
                self._server.close()
            tasks = set(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                # Cancelled connections abort their sockets without awaiting
                # anything, so this returns at once; the bound guards against a bug.
                _, pending = await asyncio.wait(tasks, timeout=CLOSE_GRACE_S)
                if pending:
                    _log.warning("%d connection tasks did not stop in time", len(pending))
            if self._server is not None:
                try:
                    await asyncio.wait_for(self._server.wait_closed(), CLOSE_GRACE_S)
                except TimeoutError:
                    _log.warning("listening socket did not close in time")
            _log.info("relay closed: %s", self.stats)
        finally:
            self._closed.set()

    async def __aenter__(self) -> Relay:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- per connection ---------------------------------------------------------

    def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        # Called by the accept loop for every connection; returns at once, so nothing
        # a peer does (a slow dial, a stalled reader) can hold up accepting.
        if self._closing or self._active >= self._config.max_connections:
            self._refuse(client_w)
            return
        self._total += 1
        self._active += 1
        # Our own task rather than the one asyncio.start_server would make: ours can
        # be cancelled by close() (Python 3.11 reports a cancelled handler task of
        # start_server as "Exception in callback").
        task = asyncio.create_task(self._serve(self._total, client_r, client_w))
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._served, client_w))

    def _served(self, client_w: asyncio.StreamWriter, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._active -= 1
        if task.cancelled():
            # A task cancelled before its first step never ran its cleanup.
            client_w.transport.abort()

    async def _serve(
        self, conn_id: int, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        link = _Link(conn_id, loop.time())
        started = link.last_activity
        up_w: asyncio.StreamWriter | None = None
        outcome = "cancelled"
        try:
            set_nodelay(client_w)
            upstream = self._pick_upstream()
            try:
                up_r, up_w = await open_connection(
                    upstream, timeout=self._config.connect_timeout_s, limit=CHUNK_BYTES
                )
            except TransportError as e:
                self._upstream_failures += 1
                outcome = "upstream unreachable"
                _log.warning("conn %d: upstream %s unreachable (%s)", link.conn_id, upstream, e)
                return
            _log.debug(
                "conn %d: %s -> %s",
                link.conn_id,
                _peer(client_w),
                upstream,
            )
            outcome = await self._pump_both(link, client_r, client_w, up_r, up_w)
        except Exception as e:
            # Whatever went wrong, it ends this connection only.
            outcome = f"error ({type(e).__name__})"
        finally:
            try:
                if outcome in ("done", "idle", "upstream unreachable"):
                    await _close_gracefully(client_w, up_w)
                else:
                    _abort(client_w, up_w)
            except BaseException:
                _abort(client_w, up_w)
                raise
            finally:
                _log.info(
                    "conn %d closed (%s): %d B up, %d B down, %.3f s",
                    link.conn_id,
                    outcome,
                    link.bytes_up,
                    link.bytes_down,
                    loop.time() - started,
                )

    def _refuse(self, client_w: asyncio.StreamWriter) -> None:
        self._refused += 1
        client_w.close()
        # Rate-limited: a flood of refusals must not become a flood of log lines.
        now = asyncio.get_running_loop().time()
        if now - self._last_refusal_log >= 10.0:
            self._last_refusal_log = now
            _log.warning(
                "refusing connections: %s (%d refused so far)",
                "relay closing"
                if self._closing
                else f"limit of {self._config.max_connections} reached",
                self._refused,
            )

    def _pick_upstream(self) -> Endpoint:
        upstreams = self._config.upstreams
        ep = upstreams[self._next_upstream % len(upstreams)]
        self._next_upstream += 1
        return ep

    async def _pump_both(
        self,
        link: _Link,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        up_r: asyncio.StreamReader,
        up_w: asyncio.StreamWriter,
    ) -> str:
        """Both directions at once until both end ("done"), one fails, or idle."""
        loop = asyncio.get_running_loop()
        idle_timeout = self._config.idle_timeout_s
        pending: set[asyncio.Task[None]] = {
            asyncio.create_task(self._pump(link, client_r, up_w, up=True)),
            asyncio.create_task(self._pump(link, up_r, client_w, up=False)),
        }
        try:
            while pending:
                # One timer per wake-up, not per chunk: the pumps only stamp
                # last_activity, and this loop checks it when the timer fires.
                remaining = link.last_activity + idle_timeout - loop.time()
                if remaining <= 0:
                    return "idle"
                done, pending = await asyncio.wait(
                    pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                failures = [t.exception() for t in done]
                for exc in failures:
                    if exc is not None:
                        return f"error ({type(exc).__name__})"
            return "done"
        finally:
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending)

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        up: bool,
    ) -> None:
        """One direction: read a chunk, write it, drain before reading again."""
        now = asyncio.get_running_loop().time
        while True:
            data = await reader.read(CHUNK_BYTES)
            if not data:
                break
            link.last_activity = now()
            n = len(data)
            if up:
                link.bytes_up += n
                self._bytes_up += n
            else:
                link.bytes_down += n
                self._bytes_down += n
            writer.write(data)
            del data
            # Backpressure: a slow reader on the far side stops us reading here,
            # so the kernel buffers fill and the fast writer is throttled by TCP.
            await writer.drain()
            link.last_activity = now()
        # Half-close: pass the EOF on, keep the other direction running.
        if writer.can_write_eof():
            writer.write_eof()
        else:
            # No half-close on this transport; closing is the only way to say EOF.
            writer.close()


async def _close_gracefully(*writers: asyncio.StreamWriter | None) -> None:
    """FIN both sides, let them flush for up to CLOSE_GRACE_S, then abort."""
    live = [w for w in writers if w is not None]
    for w in live:
        w.close()

    async def wait(w: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(w.wait_closed(), CLOSE_GRACE_S)
        except (TimeoutError, OSError):
            w.transport.abort()

    await asyncio.gather(*(wait(w) for w in live))


def _abort(*writers: asyncio.StreamWriter | None) -> None:
    """Drop both sides now: buffered bytes are discarded, peers see a reset."""
    for w in writers:
        if w is not None:
            w.transport.abort()


def _peer(writer: asyncio.StreamWriter) -> str:
    name = writer.get_extra_info("peername")
    if isinstance(name, tuple) and len(name) >= 2:
        host = str(name[0])
        return f"tcp:[{host}]:{name[1]}" if ":" in host else f"tcp:{host}:{name[1]}"
    return str(name)


def _warn_if_fd_limit_low(max_connections: int) -> None:
    try:
        import resource
    except ImportError:  # not on Unix; nothing to check
        return
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * max_connections + _FD_HEADROOM
    if soft != resource.RLIM_INFINITY and soft < need:
        _log.warning(
            "open-file limit %d is below the %d that %d connections need; "
            "raise it (ulimit -n) or lower --max-connections",
            soft,
            need,
            max_connections,
        )
