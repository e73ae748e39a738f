"""The host's health and metrics endpoint: ``/healthz``, ``/readyz``, ``/metrics``.

For a load balancer and an operator, never for payloads:

* ``GET /healthz``: 200 ``ok`` while the host's event loop answers (the process is
  alive and not wedged);
* ``GET /readyz``: 200 ``ready`` if every enclave answers a cached-mode hello with an
  ``attest`` frame within :data:`READY_TIMEOUT_S`, else 503 naming the first that did
  not. A cached-mode hello costs the enclave no NSM call (protocol.md §2.2.1); the
  answer is not verified here (the host is not a verifier), only recognised;
* ``GET /metrics``: Prometheus text (prometheus_client): the relay's counters
  (connections taken, active, pending, refused, evicted, cut by a deadline, upstream
  failures, bytes each way, sessions, requests), the egress proxy's (tunnels,
  refusals) and, from the enclave's log stream, its starts, exits, restarts and last
  exit status. Counts and bytes only: nothing the host relays is read.

HTTP/1.1 is parsed by h11; a request head must arrive within :data:`HEAD_TIMEOUT_S`
and fit in :data:`MAX_HEAD_BYTES`. One request per connection.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Sequence

import h11
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ephemeralml.common._errors import DecodeError, LimitError, RemoteProtocolError, TransportError
from ephemeralml.common._frame import FrameDecoder, encode_frame
from ephemeralml.common._messages import (
    NONCE_BYTES,
    PROTOCOL_VERSION,
    ClientHello,
    ServerAttest,
    decode_message,
)
from ephemeralml.runtime._logstream import LogCollector
from ephemeralml.runtime._relay import Relay
from ephemeralml.runtime._transport import Endpoint, Listener, open_connection

from ._egress import EgressProxy
from ._http import read_request
from ._ws import WsBridge

__all__ = ["HEAD_TIMEOUT_S", "MAX_HEAD_BYTES", "READY_TIMEOUT_S", "HealthServer", "probe_enclave"]

log = logging.getLogger("ephemeralml.host.health")

MAX_HEAD_BYTES = 8 * 1024
HEAD_TIMEOUT_S = 5.0
#: How long an enclave has to answer the readiness hello.
READY_TIMEOUT_S = 3.0
#: The most an attest frame may be before it is recognised (a document is ~5 KiB).
_MAX_ATTEST_FRAME = 64 * 1024


async def probe_enclave(enclave: Endpoint, *, timeout_s: float = READY_TIMEOUT_S) -> str | None:
    """None if ``enclave`` answers a cached-mode hello with an attest frame in time,
    else why not (one line)."""
    hello = ClientHello(PROTOCOL_VERSION, secrets.token_bytes(NONCE_BYTES), "cached")
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await open_connection(enclave, timeout=timeout_s)
            try:
                writer.write(encode_frame(hello.to_cbor()))
                await writer.drain()
                dec = FrameDecoder(max_bytes=_MAX_ATTEST_FRAME)
                while (frame := dec.next_frame()) is None:
                    data = await reader.read(65536)
                    if not data:
                        return f"{enclave} closed the connection without an answer"
                    dec.receive_data(data)
            finally:
                writer.close()
    except TimeoutError:
        return f"{enclave} did not answer within {timeout_s:g} s"
    except (TransportError, LimitError) as e:
        return e.message
    try:
        message = decode_message(frame)
    except (DecodeError, RemoteProtocolError) as e:
        return f"{enclave} answered something else: {e.message}"
    if not isinstance(message, ServerAttest):
        return f"{enclave} answered {type(message).__name__}, not attest"
    return None


class _Collector(Collector):
    def __init__(
        self,
        relay: Callable[[], Relay | None],
        egress: Callable[[], EgressProxy | None],
        logs: Callable[[], LogCollector | None],
        ws: Callable[[], WsBridge | None],
    ) -> None:
        self._relay = relay
        self._egress = egress
        self._logs = logs
        self._ws = ws

    def collect(self) -> list[Metric]:
        out: list[Metric] = []
        relay = self._relay()
        if relay is not None:
            s = relay.stats
            for name, value, doc in (
                ("connections", s.total, "client connections taken on"),
                ("refused", s.refused, "connections refused at once (limits L4)"),
                ("evicted", s.evicted, "handshakes evicted from a full pending pool (L3)"),
                ("deadline_cuts", s.deadline_cuts, "connections cut by a deadline (L1, L2)"),
                ("upstream_failures", s.upstream_failures, "connections the enclave did not take"),
                ("bytes_up", s.bytes_up, "bytes relayed client to enclave"),
                ("bytes_down", s.bytes_down, "bytes relayed enclave to client"),
                ("sessions", s.sessions, "sessions whose handshake frames passed"),
                ("requests", s.session_frames_up, "frames clients sent in sessions (sealed)"),
            ):
                out.append(CounterMetricFamily(f"ephemeralml_relay_{name}", doc, value=value))
            # The same refusals by the code a client reads in its one-line error, for
            # dashboards that sum over codes (the host reads no enclave error: sealed).
            errors = CounterMetricFamily(
                "ephemeralml_relay_errors", "connections the relay ended, by code", labels=["code"]
            )
            for code, value in (
                ("L1_L2_deadline", s.deadline_cuts),
                ("L3_evicted", s.evicted),
                ("L4_refused", s.refused),
                ("upstream", s.upstream_failures),
            ):
                errors.add_metric([code], value)
            out.append(errors)
            for name, value, doc in (
                ("active", s.active, "open connections"),
                ("pending", s.pending, "connections in their handshake"),
            ):
                out.append(GaugeMetricFamily(f"ephemeralml_relay_{name}", doc, value=value))
        logs = self._logs()
        if logs is not None:
            for name, value, doc in (
                ("starts", logs.starts, "enclave runs that began (their log stream said so)"),
                ("exits", logs.exits, "enclave runs that ended (their log stream said so)"),
                ("restarts", logs.restarts, "enclave starts after the first one seen"),
            ):
                out.append(CounterMetricFamily(f"ephemeralml_enclave_{name}", doc, value=value))
            if logs.last_exit is not None:
                out.append(GaugeMetricFamily(
                    "ephemeralml_enclave_last_exit_code", "exit status of the last enclave run",
                    value=logs.last_exit,
                ))  # fmt: skip
        bridge = self._ws()
        if bridge is not None:
            for name, value, doc in (
                ("connections", bridge.connections, "WebSockets joined to the relay"),
                ("refused", bridge.refused, "WebSockets refused by a limit"),
            ):
                out.append(CounterMetricFamily(f"ephemeralml_ws_{name}", doc, value=value))
        egress = self._egress()
        if egress is not None:
            out.append(CounterMetricFamily(
                "ephemeralml_egress_tunnels", "CONNECT tunnels opened", value=egress.tunnels
            ))  # fmt: skip
            out.append(CounterMetricFamily(
                "ephemeralml_egress_refused", "CONNECT requests refused", value=egress.refused
            ))  # fmt: skip
        return out


class HealthServer:
    """Serves the three paths on ``listen`` (TCP on the parent instance)."""

    def __init__(
        self,
        listen: Endpoint,
        enclaves: Sequence[Endpoint],
        *,
        relay: Callable[[], Relay | None] = lambda: None,
        egress: Callable[[], EgressProxy | None] = lambda: None,
        logs: Callable[[], LogCollector | None] = lambda: None,
        ws: Callable[[], WsBridge | None] = lambda: None,
        ready_timeout_s: float = READY_TIMEOUT_S,
    ) -> None:
        self.listen = listen
        self.enclaves = tuple(enclaves)
        self.ready_timeout_s = ready_timeout_s
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(relay, egress, logs, ws))
        self._listener = Listener(listen, self._serve)
        self.bound: Endpoint | None = None

    async def start(self) -> None:
        self.bound = await self._listener.start()

    async def close(self) -> None:
        await self._listener.close()

    async def _answer(self, path: str) -> tuple[int, bytes, bytes]:
        if path == "/healthz":
            return 200, b"text/plain; charset=utf-8", b"ok\n"
        if path == "/readyz":
            for enclave in self.enclaves:
                why = await probe_enclave(enclave, timeout_s=self.ready_timeout_s)
                if why is not None:
                    return 503, b"text/plain; charset=utf-8", f"not ready: {why}\n".encode()
            return 200, b"text/plain; charset=utf-8", b"ready\n"
        if path == "/metrics":
            return 200, b"text/plain; version=0.0.4; charset=utf-8", generate_latest(self.registry)
        return 404, b"text/plain; charset=utf-8", b"not found\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        try:
            async with asyncio.timeout(HEAD_TIMEOUT_S):
                event = await read_request(conn, reader, chunk=MAX_HEAD_BYTES)
            if event is None:
                return
            if event.method != b"GET":
                status, ctype, body = 405, b"text/plain; charset=utf-8", b"GET only\n"
            else:
                status, ctype, body = await self._answer(event.target.decode("ascii", "replace"))
            headers = [
                (b"content-type", ctype),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ]
            writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
            writer.write(conn.send(h11.Data(data=body)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
        except (TimeoutError, h11.ProtocolError, ConnectionError, OSError):
            pass
        finally:
            writer.close()
