"""Log lines and the exit status of a program with no console, streamed to its parent.

A production Nitro enclave has no console: what it prints is lost unless it leaves
over vsock. :class:`LogStream` tees the program's stderr: every line still goes to the
original stderr (a terminal in mock mode, the debug console if there is one) and is
also queued for the parent, to which a thread sends newline-delimited JSON records:
``{"t": "start"}`` first, then ``{"t": "log", "line": TEXT}`` and, last,
``{"t": "exit", "code": N}``. :class:`LogCollector` is the parent's side: it writes
each record as one line to its own stderr, ``PREFIX: TEXT`` (journald keeps it), and
counts starts, exits and restarts for the host's metrics.

Bounded everywhere: a line is at most :data:`MAX_LINE_CHARS` characters (a longer one
is cut and marked); the queue holds :data:`MAX_QUEUED` lines and drops the oldest when
the parent is slow or absent (how many were dropped is said in the stream); the
collector reads at most :data:`MAX_RECORD_BYTES` per record. The programs log no
payloads (their own rule); this stream adds nothing to what they print.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
import threading
from typing import Any, TextIO

from ._transport import Endpoint, Listener, connect_blocking

__all__ = ["MAX_LINE_CHARS", "MAX_QUEUED", "MAX_RECORD_BYTES", "LogCollector", "LogStream"]

#: Characters of one log line that travel; the rest is cut.
MAX_LINE_CHARS = 4000
#: Lines waiting for the parent; past this the oldest are dropped.
MAX_QUEUED = 2000
#: Bytes of one record the collector reads (a JSON-escaped line of MAX_LINE_CHARS).
MAX_RECORD_BYTES = 6 * MAX_LINE_CHARS + 64
#: How long the stream keeps trying to reach the parent, per attempt, and in total at exit.
_CONNECT_TIMEOUT_S = 2.0
_FLUSH_AT_EXIT_S = 3.0


class _Tee:
    """A text stream that writes through to ``inner`` and hands whole lines on."""

    def __init__(self, inner: TextIO, on_line: Any) -> None:
        self._inner = inner
        self._on_line = on_line
        self._partial = ""

    def write(self, text: str) -> int:
        n = self._inner.write(text)
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._on_line(line)
        return n

    def flush(self) -> None:
        self._inner.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class LogStream:
    """Tees ``sys.stderr`` to ``endpoint`` until :meth:`close` sends the exit code."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._queue: collections.deque[str] = collections.deque()
        self._dropped = 0
        self._cond = threading.Condition()
        self._closing: int | None = None
        #: The start record is still to be sent (one per program run).
        self._starting = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._send, name="log-stream", daemon=True)
        self._saved: TextIO | None = None

    def install(self) -> LogStream:
        self._saved = sys.stderr
        with self._cond:
            self._starting = True
        sys.stderr = _Tee(sys.stderr, self._enqueue)
        self._thread.start()
        return self

    def _enqueue(self, line: str) -> None:
        if len(line) > MAX_LINE_CHARS:
            line = line[:MAX_LINE_CHARS] + " [cut]"
        with self._cond:
            if len(self._queue) >= MAX_QUEUED:
                self._queue.popleft()
                self._dropped += 1
            self._queue.append(line)
            self._cond.notify()

    def close(self, exit_code: int) -> None:
        """Send what is queued and the exit code (bounded), and restore stderr."""
        if self._saved is not None:
            sys.stderr.flush()
            sys.stderr = self._saved
        with self._cond:
            self._closing = exit_code
            self._cond.notify()
        self._done.wait(_FLUSH_AT_EXIT_S)

    def _records(self) -> list[bytes]:
        """Wait for lines (or the close), then take them as records."""
        with self._cond:
            while not self._queue and self._closing is None and not self._starting:
                self._cond.wait(1.0)
            out: list[dict[str, object]] = []
            if self._starting:
                out.append({"t": "start"})
                self._starting = False
            if self._dropped:
                out.append({"t": "log", "line": f"[{self._dropped} log lines dropped]"})
                self._dropped = 0
            out.extend({"t": "log", "line": line} for line in self._queue)
            self._queue.clear()
            if self._closing is not None:
                out.append({"t": "exit", "code": self._closing})
        return [json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in out]

    def _send(self) -> None:
        sock = None
        try:
            while True:
                records = self._records()
                while sock is None:
                    try:
                        sock = connect_blocking(self.endpoint, timeout=_CONNECT_TIMEOUT_S)
                    except OSError:
                        if self._closing is not None:
                            return  # nobody listens, and we are leaving
                        with self._cond:
                            self._cond.wait(_CONNECT_TIMEOUT_S)
                try:
                    sock.sendall(b"".join(records))
                except OSError:
                    sock.close()
                    sock = None
                    continue
                if records and records[-1].startswith(b'{"t":"exit"'):
                    return
        finally:
            if sock is not None:
                sock.close()
            self._done.set()


class LogCollector:
    """The parent's side: one line on our stderr per record, ``PREFIX: TEXT``; and the
    counts: ``starts`` (program runs begun), ``exits`` and the ``last_exit`` status."""

    def __init__(self, listen: Endpoint, prefix: str) -> None:
        self.listen = listen
        self.prefix = prefix
        self.starts = 0
        self.exits = 0
        self.last_exit: int | None = None
        self._listener = Listener(listen, self._serve, limit=MAX_RECORD_BYTES)
        self.bound: Endpoint | None = None

    @property
    def restarts(self) -> int:
        """Starts after the first this collector saw (the enclave service restarted it)."""
        return max(self.starts - 1, 0)

    async def start(self) -> None:
        self.bound = await self._listener.start()

    async def close(self) -> None:
        await self._listener.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while raw := await reader.readline():
                self._say(raw)
        except (ValueError, ConnectionError, OSError):
            self._say(b'{"t":"log","line":"[log stream: a record over the limit; closed]"}')
        finally:
            writer.close()

    def _say(self, raw: bytes) -> None:
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        kind = record.get("t") if isinstance(record, dict) else None
        if kind == "log" and isinstance(record.get("line"), str):
            text = record["line"][:MAX_LINE_CHARS].replace("\r", " ")
        elif kind == "start" and len(record) == 1:
            self.starts += 1
            text = "started" if self.starts == 1 else f"started again (restart {self.restarts})"
        elif kind == "exit" and type(record.get("code")) is int:
            self.exits += 1
            self.last_exit = record["code"]
            text = f"exited with status {record['code']}"
        else:
            text = "[log stream: a malformed record]"
        print(f"{self.prefix}: {text}", file=sys.stderr, flush=True)
