"""The blind relay: client TCP in, enclave vsock out, ciphertext only.

The host is untrusted (ARCHITECTURE.md, "Who trusts whom"): everything it relays is
already sealed by the client's HPKE session with the enclave, and a relay that drops,
reorders or flips bytes is caught by the endpoints. So the relay's job is narrow:
move bytes both ways, fast, with bounded memory, and never let one bad peer hurt the
others. It never parses, logs or keeps payload bytes; its logs carry connection ids,
endpoints, byte counts and durations only. In framed mode (the default, for client
traffic) it reads the 4-byte length prefixes, which are not secret, to know where
frames start and end (protocol.md §7.1); the enclave's KMS forwarder relays CONNECT
and TLS and runs in stream mode.

Failure modes designed against (FACTS.md, "vsock and relays"), and where:

* no timeouts: a connection with no bytes either way for ``idle_timeout_s`` is
  closed (:meth:`Relay._pump_both`); dialling the enclave is bounded by
  ``connect_timeout_s``; in framed mode the handshake (hello to open) has
  ``handshake_timeout_s`` from accept and every frame ``frame_timeout_s`` from its
  first byte (L1, L2), so a peer dripping one byte a second is cut.
* teardown of both directions on one side's EOF: each direction forwards EOF
  (``write_eof``) on its own and the other keeps flowing until it ends too.
* a crash when the upstream is unreachable: that client is closed, the failure is
  counted and logged in one line, the relay keeps serving.
* unbounded connections: past ``max_connections`` established ones, past
  ``max_per_source`` from one address, or past ``max_pending_per_source``
  handshakes from one address, new connections are accepted and closed at once
  (counted as refused, L4), so the accept queue never backs up. Connections that
  have not finished their handshake sit in a separate pool of ``max_pending``; when
  it is full the oldest is evicted (L3), so they can never starve established
  sessions, and a fresh legitimate handshake always finds room.
* one slow handshake blocking accepts: every connection, its dial included, runs in
  its own task; accepting never waits on a dial. In framed mode the enclave is
  dialled only once the client has sent a byte.

About 770 lines on purpose: one class whose accept path, pumps, pools and counters
share per-connection state; each limit above is enforced where that state changes,
and splitting the class would scatter L1-L4 across modules that must agree.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ephemeralml.common._config import positive_count, positive_seconds
from ephemeralml.common._errors import ConfigError, TransportError
from ephemeralml.common._frame import FrameClock, encode_frame
from ephemeralml.common._messages import ErrorFrame

from ._transport import (
    Endpoint,
    open_connection,
    server_endpoint,
    set_nodelay,
    start_server,
)

__all__ = [
    "CHUNK_BYTES",
    "CLOSE_GRACE_S",
    "CONNECT_TIMEOUT_S",
    "FRAME_TIMEOUT_S",
    "HANDSHAKE_TIMEOUT_S",
    "IDLE_TIMEOUT_S",
    "MAX_CONNECTIONS",
    "MAX_PENDING",
    "MAX_PENDING_PER_SOURCE",
    "MAX_PER_SOURCE",
    "Relay",
    "RelayConfig",
    "RelayStats",
]

_log = logging.getLogger("ephemeralml.host")

#: Concurrent established connections (past their handshake, L3). Each holds two
#: sockets in this process and, per stalled direction, at most about 0.5 MiB of
#: buffers (see CHUNK_BYTES). A client can stall only the direction towards itself,
#: so 4096 keeps a hostile crowd of clients within 8192 file descriptors and about
#: 2 GiB, far above what a few enclaves serve at once.
MAX_CONNECTIONS = 4096
#: Connections that have not finished their handshake (L3), in a pool of their own
#: so that they never take an established session's place. A legitimate handshake
#: takes one round trip and one attestation (milliseconds), so 512 at once is far
#: more than an enclave attests; each costs one socket, plus one towards the
#: enclave once it has sent a byte. When the pool is full the oldest is evicted:
#: a flood must then open 512 connections within one legitimate handshake's time to
#: push a legitimate client out.
MAX_PENDING = 512
#: Connections from one source address, established or not (L4). A client machine
#: (or a NAT) with many sessions stays well below it (the benchmark opens 64); one
#: address cannot take more than a sixteenth of MAX_CONNECTIONS.
MAX_PER_SOURCE = 256
#: Handshakes in progress from one source address (L4): a single address can hold
#: at most an eighth of the pending pool, so evictions fall on the flood, not on
#: the other addresses' handshakes.
MAX_PENDING_PER_SOURCE = 64
#: Seconds from accept until the handshake's frames (hello, attest, open) have
#: passed (L1). One round trip and one attestation take milliseconds (tens on a
#: Nitro NSM); ten seconds covers a loaded enclave and a slow link, and is how long
#: a peer that never finishes its handshake can hold a pending slot.
HANDSHAKE_TIMEOUT_S = 10.0
#: Seconds from a frame's first byte until its last byte has been relayed, in
#: either direction (L2). The largest frame (MAX_FRAME_BYTES, 2 MiB) crosses a
#: 1 Mbit/s link in about 17 s; a peer that drips a frame, or stops reading one,
#: is cut after this long.
FRAME_TIMEOUT_S = 30.0
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
#: Seconds between two warnings about refused connections: a flood of refusals
#: must not become a flood of log lines.
_REFUSAL_LOG_INTERVAL_S = 10.0
#: File descriptors kept free beyond two per connection (listening socket, logs, ...).
_FD_HEADROOM = 64


@dataclass(frozen=True)
class RelayConfig:
    """What the relay listens on, where it relays to, and its limits.

    ``upstreams`` are one or more enclaves; new client connections go round robin
    over them. ``framed``: the traffic is protocol frames (client to enclave), so
    the handshake and per-frame deadlines and the pending pool apply; off for
    opaque streams (the enclave's KMS forwarder: CONNECT, then TLS). Built at the
    edge (the CLI); checked when built.
    """

    listen: Endpoint
    upstreams: tuple[Endpoint, ...]
    max_connections: int = MAX_CONNECTIONS
    idle_timeout_s: float = IDLE_TIMEOUT_S
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    framed: bool = True
    max_pending: int = MAX_PENDING
    max_per_source: int = MAX_PER_SOURCE
    max_pending_per_source: int = MAX_PENDING_PER_SOURCE
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
    frame_timeout_s: float = FRAME_TIMEOUT_S

    def __post_init__(self) -> None:
        if not isinstance(self.listen, Endpoint):
            raise ConfigError(f"listen must be an Endpoint, got {self.listen!r}")
        if not isinstance(self.upstreams, tuple) or not all(
            isinstance(u, Endpoint) for u in self.upstreams
        ):
            raise ConfigError(f"upstreams must be a tuple of Endpoint, got {self.upstreams!r}")
        if not self.upstreams:
            raise ConfigError("the relay needs at least one enclave to relay to")
        if not isinstance(self.framed, bool):
            raise ConfigError(f"framed must be true or false, got {self.framed!r}")
        for name, count in (
            ("max connections", self.max_connections),
            ("max pending", self.max_pending),
            ("max per source", self.max_per_source),
            ("max pending per source", self.max_pending_per_source),
        ):
            positive_count(name, count)
        for name, value in (
            ("idle timeout", self.idle_timeout_s),
            ("connect timeout", self.connect_timeout_s),
            ("handshake timeout", self.handshake_timeout_s),
            ("frame timeout", self.frame_timeout_s),
        ):
            positive_seconds(name, value)


@dataclass(frozen=True)
class RelayStats:
    """A snapshot of the relay's counters.

    ``active`` counts open connections, ``pending`` those of them still in their
    handshake; ``total`` counts connections taken on (refused ones are in
    ``refused`` instead); ``bytes_up`` is client to enclave, ``bytes_down`` enclave
    to client; ``upstream_failures`` counts connections closed because the enclave
    could not be reached; ``evicted`` handshakes pushed out of a full pending pool;
    ``deadline_cuts`` connections cut by a handshake or frame deadline; ``sessions``
    connections whose handshake frames passed (framed mode); ``session_frames_up``
    the frames clients sent after their handshake (one per request; sealed: counted,
    never read).
    """

    active: int
    total: int
    bytes_up: int
    bytes_down: int
    refused: int
    upstream_failures: int
    pending: int = 0
    evicted: int = 0
    deadline_cuts: int = 0
    sessions: int = 0
    session_frames_up: int = 0


class _Cut(Exception):
    """A limit ends this connection; ``reason`` is the one line the client gets."""

    def __init__(self, reason: str, *, deadline: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.deadline = deadline


class _Source:
    """Connections from one address: all of them, and those still in their handshake."""

    __slots__ = ("pending", "total")

    def __init__(self) -> None:
        self.total = 0
        self.pending = 0


class _Link:
    """Per-connection bookkeeping: no payload, only counts, clocks and a state."""

    __slots__ = (
        "accepted",
        "bytes_down",
        "bytes_up",
        "conn_id",
        "cut",
        "down_busy",
        "down_clock",
        "last_activity",
        "source",
        "state",
        "up_busy",
        "up_clock",
    )

    def __init__(self, conn_id: int, source: str, now: float, *, framed: bool) -> None:
        self.conn_id = conn_id
        self.source = source
        self.accepted = now
        self.last_activity = now
        self.bytes_up = 0
        self.bytes_down = 0
        #: "pending" (handshake not done), "established", or "gone".
        self.state = "pending" if framed else "established"
        #: Why the relay ended it from outside its task (eviction), if it did.
        self.cut: _Cut | None = None
        self.up_clock = FrameClock() if framed else None
        self.down_clock = FrameClock() if framed else None
        #: Since when a direction holds a frame not yet wholly relayed (L2).
        self.up_busy: float | None = None
        self.down_busy: float | None = None


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
        #: Handshakes in progress, oldest first (L3).
        self._pending: dict[_Link, asyncio.Task[None]] = {}
        self._sources: dict[str, _Source] = {}
        self._next_upstream = 0
        self._active = 0
        self._established = 0
        self._total = 0
        self._bytes_up = 0
        self._bytes_down = 0
        self._refused = 0
        self._upstream_failures = 0
        self._evicted = 0
        self._deadline_cuts = 0
        self._sessions = 0
        self._session_frames_up = 0
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
            pending=len(self._pending),
            evicted=self._evicted,
            deadline_cuts=self._deadline_cuts,
            sessions=self._sessions,
            session_frames_up=self._session_frames_up,
        )

    async def start(self) -> None:
        """Bind and start accepting. Raises :class:`TransportError` if it cannot bind."""
        if self._server is not None or self._closing:
            raise RuntimeError("Relay.start() may be called once, before close()")
        cfg = self._config
        _warn_if_fd_limit_low(cfg.max_connections, cfg.max_pending if cfg.framed else 0)
        server = await start_server(cfg.listen, self._accept, limit=CHUNK_BYTES)
        self._server = server
        self._bound = server_endpoint(server, cfg.listen)
        _log.info(
            "relay listening on %s, upstreams %s",
            self._bound,
            ", ".join(str(u) for u in cfg.upstreams),
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

    # -- admission (L3, L4) -------------------------------------------------------

    def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        # Called by the accept loop for every connection; returns at once, so nothing
        # a peer does (a slow dial, a stalled reader) can hold up accepting.
        cfg = self._config
        if self._closing:
            self._refuse(client_w, "relay closing")
            return
        source = _source(client_w)
        src = self._sources.get(source)
        if src is not None and src.total >= cfg.max_per_source:
            # L4: one address cannot take more than its share.
            self._refuse(
                client_w,
                f"L4 per-source limit: {src.total} connections from {source}, "
                f"the limit is {cfg.max_per_source}",
            )
            return
        if cfg.framed and src is not None and src.pending >= cfg.max_pending_per_source:
            self._refuse(
                client_w,
                f"L4 per-source limit: {src.pending} handshakes in progress from {source}, "
                f"the limit is {cfg.max_pending_per_source}",
            )
            return
        if self._established >= cfg.max_connections:
            self._refuse(
                client_w, f"L3 connection limit: {cfg.max_connections} connections established"
            )
            return
        if cfg.framed and len(self._pending) >= cfg.max_pending:
            # L3: the oldest handshake makes room. A legitimate one takes
            # milliseconds; the oldest is the likeliest to be a peer that stalls.
            self._evict_oldest()
        if src is None:
            src = self._sources[source] = _Source()
        src.total += 1
        self._total += 1
        self._active += 1
        link = _Link(self._total, source, asyncio.get_running_loop().time(), framed=cfg.framed)
        # Our own task rather than the one asyncio.start_server would make: ours can
        # be cancelled by close() (Python 3.11 reports a cancelled handler task of
        # start_server as "Exception in callback").
        task = asyncio.create_task(self._serve(link, client_r, client_w))
        self._tasks.add(task)
        if link.state == "pending":
            src.pending += 1
            self._pending[link] = task
        else:
            self._established += 1
        task.add_done_callback(functools.partial(self._served, link, client_w))

    def _evict_oldest(self) -> None:
        link, task = next(iter(self._pending.items()))
        self._leave_pending(link)
        link.state = "gone"
        self._evicted += 1
        link.cut = _Cut(
            f"L3 pending pool full: {self._config.max_pending} connections in their "
            "handshake; the oldest is evicted",
        )
        task.cancel()

    def _leave_pending(self, link: _Link) -> None:
        del self._pending[link]
        self._sources[link.source].pending -= 1

    def _promote(self, link: _Link) -> None:
        """The handshake's frames have passed (L1): move to the established pool."""
        if self._established >= self._config.max_connections:
            raise _Cut(
                f"L3 connection limit: {self._config.max_connections} connections established"
            )
        self._leave_pending(link)
        link.state = "established"
        self._established += 1
        self._sessions += 1
        # Frames up past the handshake's two (hello, open), if the client sent any early.
        assert link.up_clock is not None
        self._session_frames_up += link.up_clock.frames - 2

    def _served(
        self, link: _Link, client_w: asyncio.StreamWriter, task: asyncio.Task[None]
    ) -> None:
        self._tasks.discard(task)
        self._active -= 1
        if link.state == "pending":
            self._leave_pending(link)
        elif link.state == "established":
            self._established -= 1
        link.state = "gone"
        src = self._sources[link.source]
        src.total -= 1
        if src.total == 0:
            del self._sources[link.source]
        if task.cancelled():
            # A task cancelled before its first step never ran its cleanup.
            client_w.transport.abort()

    def _refuse(self, client_w: asyncio.StreamWriter, reason: str) -> None:
        self._refused += 1
        _say_and_close(client_w, reason if self._config.framed else None)
        now = asyncio.get_running_loop().time()
        if now - self._last_refusal_log >= _REFUSAL_LOG_INTERVAL_S:
            self._last_refusal_log = now
            _log.warning("refusing connections: %s (%d refused so far)", reason, self._refused)

    def _pick_upstream(self) -> Endpoint:
        upstreams = self._config.upstreams
        ep = upstreams[self._next_upstream % len(upstreams)]
        self._next_upstream += 1
        return ep

    # -- per connection -----------------------------------------------------------

    async def _serve(
        self, link: _Link, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        cfg = self._config
        up_w: asyncio.StreamWriter | None = None
        outcome = "cancelled"
        cut: _Cut | None = None
        try:
            set_nodelay(client_w)
            first = b""
            if cfg.framed:
                # Dial only once the client has said something: a connection that
                # never speaks costs the enclave nothing. Bounded by L1.
                left = link.accepted + cfg.handshake_timeout_s - loop.time()
                try:
                    first = await asyncio.wait_for(client_r.read(CHUNK_BYTES), left)
                except TimeoutError:
                    raise self._handshake_cut() from None
                if not first:
                    outcome = "done"
                    return
            upstream = self._pick_upstream()
            try:
                up_r, up_w = await open_connection(
                    upstream, timeout=cfg.connect_timeout_s, limit=CHUNK_BYTES
                )
            except TransportError as e:
                self._upstream_failures += 1
                outcome = "upstream unreachable"
                _log.warning("conn %d: upstream %s unreachable (%s)", link.conn_id, upstream, e)
                return
            _log.debug("conn %d: %s -> %s", link.conn_id, _peer(client_w), upstream)
            outcome = await self._pump_both(link, client_r, client_w, up_r, up_w, first)
        except _Cut as e:
            cut = e
        except asyncio.CancelledError:
            if link.cut is None:
                raise
            # Evicted (L3): our own cancellation, not the relay closing.
            cut = link.cut
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        except Exception as e:
            # Whatever went wrong, it ends this connection only.
            outcome = f"error ({type(e).__name__})"
        finally:
            try:
                if cut is not None:
                    outcome = cut.reason
                    if cut.deadline:
                        self._deadline_cuts += 1
                    # The client hears why, in an error frame, when the enclave is
                    # not in the middle of a frame towards it.
                    clock = link.down_clock
                    _say_and_close(
                        client_w, cut.reason if clock is not None and not clock.in_frame else None
                    )
                    _abort(up_w)
                elif outcome in ("done", "idle", "upstream unreachable"):
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
                    loop.time() - link.accepted,
                )

    def _handshake_cut(self) -> _Cut:
        return _Cut(
            f"L1 handshake deadline of {self._config.handshake_timeout_s:g} s passed "
            "(hello to open)",
            deadline=True,
        )

    def _frame_cut(self, up: bool) -> _Cut:
        return _Cut(
            f"L2 frame deadline of {self._config.frame_timeout_s:g} s passed "
            f"(a frame {'from the client' if up else 'to the client'} started but not finished)",
            deadline=True,
        )

    async def _pump_both(
        self,
        link: _Link,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        up_r: asyncio.StreamReader,
        up_w: asyncio.StreamWriter,
        first: bytes,
    ) -> str:
        """Both directions at once until both end ("done"), one fails, or idle.

        Raises :class:`_Cut` when the handshake or a frame runs past its deadline.
        """
        loop = asyncio.get_running_loop()
        cfg = self._config
        pumps = (
            asyncio.create_task(self._pump(link, client_r, up_w, up=True, first=first)),
            asyncio.create_task(self._pump(link, up_r, client_w, up=False)),
        )
        pending: set[asyncio.Task[None]] = set(pumps)
        try:
            while pending:
                # One timer per wake-up, not per chunk: the pumps only stamp their
                # clocks, and this loop checks them when the timer fires. A frame
                # that starts while we sleep has its deadline at least
                # frame_timeout_s away, so waking that often is enough.
                now = loop.time()
                wake = link.last_activity + cfg.idle_timeout_s
                if wake <= now:
                    return "idle"
                if cfg.framed:
                    if link.state == "pending":
                        if link.accepted + cfg.handshake_timeout_s <= now:
                            raise self._handshake_cut()
                        wake = min(wake, link.accepted + cfg.handshake_timeout_s)
                    for up, busy in ((True, link.up_busy), (False, link.down_busy)):
                        if busy is not None:
                            if busy + cfg.frame_timeout_s <= now:
                                raise self._frame_cut(up)
                            wake = min(wake, busy + cfg.frame_timeout_s)
                    wake = min(wake, now + cfg.frame_timeout_s)
                done, pending = await asyncio.wait(
                    pending, timeout=wake - now, return_when=asyncio.FIRST_COMPLETED
                )
                failures = [e for t in done if (e := t.exception()) is not None]
                for exc in failures:
                    if isinstance(exc, _Cut):
                        raise exc
                if failures:
                    return f"error ({type(failures[0]).__name__})"
            return "done"
        finally:
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending)
            for t in pumps:
                # Every pump's exception is retrieved: a second failure while the
                # first ends the connection is expected, not worth a traceback.
                if t.done() and not t.cancelled():
                    t.exception()

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        up: bool,
        first: bytes = b"",
    ) -> None:
        """One direction: read a chunk, write it, drain before reading again."""
        now = asyncio.get_running_loop().time
        clock = link.up_clock if up else link.down_clock
        set_busy: Callable[[float | None], None] = functools.partial(_set_busy, link, up)
        data = first
        while True:
            if not data:
                data = await reader.read(CHUNK_BYTES)
                if not data:
                    break
            t = now()
            link.last_activity = t
            n = len(data)
            if up:
                link.bytes_up += n
                self._bytes_up += n
            else:
                link.bytes_down += n
                self._bytes_down += n
            if clock is not None:
                # L2: from the first byte of the oldest frame in this chunk until
                # the chunk has drained towards the peer.
                set_busy(clock.started_at if clock.in_frame else t)
                frames, established = clock.frames, link.state == "established"
                clock.feed(data, t)
                if link.state == "pending" and _handshake_done(link):
                    self._promote(link)
                elif up and established:
                    self._session_frames_up += clock.frames - frames
            writer.write(data)
            data = b""
            # Backpressure: a slow reader on the far side stops us reading here,
            # so the kernel buffers fill and the fast writer is throttled by TCP.
            await writer.drain()
            link.last_activity = now()
            if clock is not None:
                set_busy(clock.started_at)
        # Half-close: pass the EOF on, keep the other direction running.
        if writer.can_write_eof():
            writer.write_eof()
        else:
            # No half-close on this transport; closing is the only way to say EOF.
            writer.close()


def _set_busy(link: _Link, up: bool, since: float | None) -> None:
    if up:
        link.up_busy = since
    else:
        link.down_busy = since


def _handshake_done(link: _Link) -> bool:
    """L1, from frame boundaries only: the client's hello and open and the enclave's
    attest have passed (two whole frames up, one down)."""
    assert link.up_clock is not None and link.down_clock is not None
    return link.up_clock.frames >= 2 and link.down_clock.frames >= 1


def _say_and_close(writer: asyncio.StreamWriter, reason: str | None) -> None:
    """Close, after an error frame (code ``limit``) saying ``reason`` if one is given.

    The frame goes only if the kernel takes it at once; a peer that does not read
    gets a plain abort instead of a slot held until it does.
    """
    if reason is not None and not writer.is_closing():
        writer.write(encode_frame(ErrorFrame("limit", f"host relay: {reason}").to_cbor()))
    if writer.transport.get_write_buffer_size():
        writer.transport.abort()
    else:
        writer.close()


def _source(writer: asyncio.StreamWriter) -> str:
    """The peer's address without its port: what L4 counts by."""
    name = writer.get_extra_info("peername")
    if isinstance(name, tuple) and name:
        return str(name[0])
    return str(name)


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


def _warn_if_fd_limit_low(max_connections: int, max_pending: int) -> None:
    try:
        import resource
    except ImportError:  # not on Unix; nothing to check
        return
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * (max_connections + max_pending) + _FD_HEADROOM
    if soft != resource.RLIM_INFINITY and soft < need:
        _log.warning(
            "open-file limit %d is below the %d that %d connections and %d handshakes need; "
            "raise it (ulimit -n) or lower --max-connections",
            soft,
            need,
            max_connections,
            max_pending,
        )
