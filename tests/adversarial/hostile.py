"""A drop-in hostile relay: frame-aware tampering between two real programs.

:class:`HostileRelay` listens on loopback and relays every accepted connection to an
upstream port (the host's client port, or the enclave's port). It parses only frame
boundaries (the 4-byte big-endian length prefix of protocol.md §1.1, never a body) and
applies a script of :class:`Action` per direction and per frame index: flip a bit,
drop, duplicate, swap with the next frame (reorder), delay, truncate (cut the
connection mid-frame), drip (one byte at a time), replace (replay or splice a frame
recorded elsewhere), inject frames before this one, or run a hook (kill a process).

It records every byte it received from either side and every byte it sent, so a test
can assert that no plaintext crossed it. It is bounded: sockets poll with short
timeouts, each connection lives at most ``lifetime_s``, and :meth:`close` stops
everything within a second or two.

``raw=True`` relays chunks instead of frames (for HTTP, e.g. the KMS egress proxy); the
script's indices then count chunks, and only :class:`Delay` and :class:`Hook` apply.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "Action",
    "Delay",
    "Drip",
    "Drop",
    "Duplicate",
    "Flip",
    "Hook",
    "HostileRelay",
    "Inject",
    "Replace",
    "Rewrite",
    "SwapWithNext",
    "Truncate",
    "frame",
]

Direction = Literal["up", "down"]

#: A frame longer than this is not buffered: the relay switches that direction to
#: passing bytes through as they come (a declared 4 GiB frame, say).
MAX_PARSED_FRAME_BYTES = 8 * 1024 * 1024
#: Poll interval of every blocking call, so close() is seen quickly.
_POLL_S = 0.2
_READ_BYTES = 64 * 1024
_LEN = struct.Struct(">I")


def frame(body: bytes) -> bytes:
    """``body`` with its length prefix (no limit check: hostile frames are allowed)."""
    return _LEN.pack(len(body)) + body


class Action:
    """One scripted step, applied to one frame."""


@dataclass(frozen=True)
class Flip(Action):
    """Flip bit ``bit`` of body byte ``offset`` (negative counts from the end)."""

    offset: int = -1
    bit: int = 0


@dataclass(frozen=True)
class Drop(Action):
    """Do not forward this frame."""


@dataclass(frozen=True)
class Duplicate(Action):
    """Forward this frame twice, in one write."""


@dataclass(frozen=True)
class SwapWithNext(Action):
    """Hold this frame and forward it right after the next one (in one write)."""


@dataclass(frozen=True)
class Delay(Action):
    """Wait ``seconds`` before forwarding."""

    seconds: float


@dataclass(frozen=True)
class Truncate(Action):
    """Forward the first ``keep`` bytes of the framed frame, then cut both connections."""

    keep: int


@dataclass(frozen=True)
class Drip(Action):
    """Forward this frame one byte every ``interval_s`` (stops when the relay closes)."""

    interval_s: float


@dataclass(frozen=True)
class Replace(Action):
    """Forward ``body(connection)`` instead of this frame: a frame body recorded on this
    connection (a replay) or elsewhere (a splice)."""

    body: Callable[[Connection], bytes]


@dataclass(frozen=True)
class Rewrite(Action):
    """Forward ``fn(body)`` instead of this frame's body (a crafted variant of it)."""

    fn: Callable[[bytes], bytes]


@dataclass(frozen=True)
class Inject(Action):
    """Send these raw bytes (already framed, or not) before this frame."""

    data: bytes
    #: Also drop the frame itself (inject *instead of*).
    instead: bool = False


@dataclass(frozen=True)
class Hook(Action):
    """Call ``fn()`` before forwarding this frame (``then_forward=False``: drop it), or
    just after it is sent (``after=True``)."""

    fn: Callable[[], None]
    then_forward: bool = True
    after: bool = False


Script = Mapping[tuple[Direction, int], Action]


@dataclass
class Connection:
    """What one relayed connection carried."""

    received: dict[str, bytearray] = field(
        default_factory=lambda: {"up": bytearray(), "down": bytearray()}
    )
    sent: dict[str, bytearray] = field(
        default_factory=lambda: {"up": bytearray(), "down": bytearray()}
    )
    #: Complete frame bodies as received, per direction, in order.
    frames: dict[str, list[bytes]] = field(default_factory=lambda: {"up": [], "down": []})
    #: Set when a direction saw EOF or an error.
    ended: dict[str, threading.Event] = field(
        default_factory=lambda: {"up": threading.Event(), "down": threading.Event()}
    )


class _Cut(Exception):
    """A Truncate action ends the connection."""


class HostileRelay:
    """Relays loopback TCP connections to ``upstream_port``, applying ``script``."""

    def __init__(
        self,
        upstream_port: int,
        script: Script | None = None,
        *,
        raw: bool = False,
        lifetime_s: float = 30.0,
        max_connections: int = 4,
    ) -> None:
        self.upstream = upstream_port
        self.script: dict[tuple[Direction, int], Action] = dict(script or {})
        self.raw = raw
        self.lifetime_s = lifetime_s
        self.max_connections = max_connections
        self.connections: list[Connection] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._srv = socket.create_server(("127.0.0.1", 0))
        self._srv.settimeout(_POLL_S)
        self.port = int(self._srv.getsockname()[1])
        self._spawn(self._accept_loop)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- what was carried --------------------------------------------------------

    def carried(self) -> bytes:
        """Every byte received from, or sent to, either side on every connection."""
        with self._lock:
            out = bytearray()
            for c in self.connections:
                for d in ("up", "down"):
                    out += c.received[d] + c.sent[d]
            return bytes(out)

    def frames(self, direction: Direction, conn: int = 0) -> list[bytes]:
        with self._lock:
            return list(self.connections[conn].frames[direction])

    def wait_ended(self, direction: Direction, conn: int = 0, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.connections) > conn:
                    ev = self.connections[conn].ended[direction]
                    break
            time.sleep(0.05)
        else:
            return False
        return ev.wait(max(0.0, deadline - time.monotonic()))

    # -- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._srv.close()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            _kill(s)
        for t in list(self._threads):
            t.join(timeout=5)

    def __enter__(self) -> HostileRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self, fn: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept_loop(self) -> None:
        accepted = 0
        while not self._stop.is_set() and accepted < self.max_connections:
            try:
                client, _ = self._srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted += 1
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                _kill(client)
                continue
            conn = Connection()
            with self._lock:
                self.connections.append(conn)
                self._socks += [client, upstream]
            deadline = time.monotonic() + self.lifetime_s
            for src, dst, d in ((client, upstream, "up"), (upstream, client, "down")):
                self._spawn(self._pump, conn, src, dst, d, deadline)

    # -- one direction -------------------------------------------------------------

    def _pump(
        self,
        conn: Connection,
        src: socket.socket,
        dst: socket.socket,
        direction: Direction,
        deadline: float,
    ) -> None:
        src.settimeout(_POLL_S)
        buf = bytearray()
        index = 0
        held: bytes | None = None  # a frame held by SwapWithNext
        passthrough = self.raw
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    chunk = src.recv(_READ_BYTES)
                except TimeoutError:
                    continue
                if not chunk:
                    if held is not None:
                        self._send(conn, dst, direction, held, deadline)
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    break
                with self._lock:
                    conn.received[direction] += chunk
                if passthrough:
                    action = self.script.get((direction, index)) if self.raw else None
                    index += 1
                    if isinstance(action, Delay):
                        self._sleep(action.seconds, deadline)
                    elif isinstance(action, Hook) and not action.after:
                        action.fn()
                        if not action.then_forward:
                            continue
                    self._send(conn, dst, direction, chunk, deadline)
                    if isinstance(action, Hook) and action.after:
                        action.fn()
                    continue
                buf += chunk
                while len(buf) >= 4:
                    (n,) = _LEN.unpack_from(buf, 0)
                    if n > MAX_PARSED_FRAME_BYTES:
                        # Not buffered: from here on this direction is passed through.
                        passthrough = True
                        rest, buf = bytes(buf), bytearray()
                        self._send(conn, dst, direction, rest, deadline)
                        break
                    if len(buf) < 4 + n:
                        break
                    body = bytes(buf[4 : 4 + n])
                    del buf[: 4 + n]
                    with self._lock:
                        conn.frames[direction].append(body)
                    out, held = self._apply(conn, dst, direction, index, body, held, deadline)
                    index += 1
                    if out:
                        self._send(conn, dst, direction, out, deadline)
        except _Cut:
            _kill(src)
            _kill(dst)
        except OSError:
            _kill(src)
            _kill(dst)
        finally:
            conn.ended[direction].set()
            if time.monotonic() >= deadline or self._stop.is_set():
                _kill(src)
                _kill(dst)

    def _apply(
        self,
        conn: Connection,
        dst: socket.socket,
        direction: Direction,
        index: int,
        body: bytes,
        held: bytes | None,
        deadline: float,
    ) -> tuple[bytes, bytes | None]:
        """What to send for frame ``index``, and the frame now held (if any)."""
        action = self.script.get((direction, index))
        framed = frame(body)
        out = b""
        if isinstance(action, Flip):
            b = bytearray(body)
            b[action.offset] ^= 1 << action.bit
            out = frame(bytes(b))
        elif isinstance(action, Drop):
            out = b""
        elif isinstance(action, Duplicate):
            out = framed + framed
        elif isinstance(action, SwapWithNext):
            return b"", framed
        elif isinstance(action, Delay):
            self._sleep(action.seconds, deadline)
            out = framed
        elif isinstance(action, Truncate):
            self._send(conn, dst, direction, framed[: action.keep], deadline)
            raise _Cut
        elif isinstance(action, Drip):
            for i in range(len(framed)):
                self._send(conn, dst, direction, framed[i : i + 1], deadline)
                if not self._sleep(action.interval_s, deadline):
                    raise _Cut
            out = b""
        elif isinstance(action, Replace):
            out = frame(action.body(conn))
        elif isinstance(action, Rewrite):
            out = frame(action.fn(body))
        elif isinstance(action, Inject):
            out = action.data + (b"" if action.instead else framed)
        elif isinstance(action, Hook):
            if action.after:
                self._send(conn, dst, direction, framed, deadline)
                action.fn()
            else:
                action.fn()
                out = framed if action.then_forward else b""
        else:
            out = framed
        if held is not None:
            # The held frame goes right after this one: the two are swapped.
            out, held = out + held, None
        return out, held

    def _sleep(self, seconds: float, deadline: float) -> bool:
        """Sleep unless the relay closes or the connection's lifetime ends first."""
        end = min(time.monotonic() + seconds, deadline)
        while time.monotonic() < end:
            if self._stop.wait(min(_POLL_S, max(0.0, end - time.monotonic()))):
                return False
        return time.monotonic() < deadline

    def _send(
        self,
        conn: Connection,
        dst: socket.socket,
        direction: Direction,
        data: bytes,
        deadline: float,
    ) -> None:
        if not data:
            return
        dst.settimeout(max(0.1, deadline - time.monotonic()))
        dst.sendall(data)
        with self._lock:
            conn.sent[direction] += data


def _kill(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()
