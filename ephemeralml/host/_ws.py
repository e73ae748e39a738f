"""The host's WebSocket door, for pages: one binary message is one whole frame (protocol.md §7.2).

A page cannot open a TCP connection, so it opens a WebSocket to the host. The bridge
is as blind as the relay and reads nothing it carries:

* page to enclave: each binary message's bytes go on as they are (the page sends
  whole frames, length prefix included; the enclave decodes and checks them);
* enclave to page: the stream is cut where frames end, from the 4-byte length
  prefixes (not secret; the relay reads them too), and each frame goes out as one
  binary message.

Each WebSocket is joined to the host's own relay on loopback, so every limit of the
relay (handshake and frame deadlines, pools, round robin over the enclaves, the
counters in /metrics) applies to pages as to any client. The bridge adds what only it
can see: at most :data:`MAX_CONNECTIONS` WebSockets, :data:`MAX_PER_SOURCE` from one
address (the relay sees the bridge's loopback address for all of them), messages of
at most one frame, binary only, and no compression (permessage-deflate is refused:
ciphertext does not compress, and inflating is a cost a peer could impose). Closes
say why in one line (1003 a text message, 1009 a message over a frame, 1008 a limit,
1011 the relay is unreachable or the stream was cut mid-frame).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from ephemeralml.common._errors import ConfigError, TransportError
from ephemeralml.common._frame import FRAME_HEADER_BYTES, MAX_FRAME_BYTES
from ephemeralml.runtime._transport import Endpoint, open_connection

__all__ = ["MAX_CONNECTIONS", "MAX_PER_SOURCE", "WsBridge", "WsConfig"]

log = logging.getLogger("ephemeralml.host.ws")

#: WebSockets open at once, and from one address.
MAX_CONNECTIONS = 1024
MAX_PER_SOURCE = 64
#: Joining the relay on loopback.
_CONNECT_TIMEOUT_S = 5.0
#: The largest message either way: one frame with its prefix.
MAX_MESSAGE_BYTES = FRAME_HEADER_BYTES + MAX_FRAME_BYTES


@dataclass(frozen=True)
class WsConfig:
    #: Where pages connect (TCP: browsers speak WebSocket over TCP).
    listen: Endpoint
    #: The host's relay, which each WebSocket is joined to.
    relay: Endpoint
    max_connections: int = MAX_CONNECTIONS
    max_per_source: int = MAX_PER_SOURCE

    def __post_init__(self) -> None:
        if self.listen.kind != "tcp":
            raise ConfigError(f"--ws-listen {self.listen}: pages connect over TCP")
        if self.max_connections < 1 or self.max_per_source < 1:
            raise ConfigError("the WebSocket limits must be at least 1")


class WsBridge:
    """Serves :class:`WsConfig` until closed; counts connections and refusals."""

    def __init__(self, config: WsConfig) -> None:
        self.config = config
        self._server: Server | None = None
        self._sources: dict[str, int] = {}
        self.bound: Endpoint | None = None
        self.connections = 0
        self.refused = 0

    async def start(self) -> Endpoint:
        listen = self.config.listen
        try:
            self._server = await serve(
                self._serve, listen.host, listen.port, compression=None,
                max_size=MAX_MESSAGE_BYTES, max_queue=4, server_header=None,
            )  # fmt: skip
        except OSError as e:
            why = (e.strerror or str(e)).lower()
            raise TransportError(f"cannot listen on {listen}: {why}") from e
        port = self._server.sockets[0].getsockname()[1] if self._server.sockets else 0
        assert listen.host is not None
        self.bound = Endpoint.tcp(listen.host, int(port))
        return self.bound

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def _serve(self, ws: ServerConnection) -> None:
        source = str(ws.remote_address[0]) if ws.remote_address else "?"
        active = sum(self._sources.values())
        if active >= self.config.max_connections:
            return await self._refuse(ws, f"{active} WebSocket connections are open")
        if self._sources.get(source, 0) >= self.config.max_per_source:
            return await self._refuse(ws, f"{self.config.max_per_source} connections from {source}")
        self._sources[source] = self._sources.get(source, 0) + 1
        self.connections += 1
        try:
            await self._bridge(ws)
        finally:
            self._sources[source] -= 1
            if not self._sources[source]:
                del self._sources[source]

    async def _refuse(self, ws: ServerConnection, why: str) -> None:
        self.refused += 1
        log.warning("refused a WebSocket: %s", why)
        await ws.close(1008, f"limit: {why}")

    async def _bridge(self, ws: ServerConnection) -> None:
        try:
            reader, writer = await open_connection(
                self.config.relay, timeout=_CONNECT_TIMEOUT_S, peer="relay"
            )
        except TransportError as e:
            await ws.close(1011, e.message[:120])
            return
        why: list[tuple[int, str]] = []

        async def up() -> None:
            async for message in ws:
                if isinstance(message, str):
                    why.append((1003, "binary messages only: one frame each"))
                    return
                writer.write(message)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

        async def down() -> None:
            while True:
                try:
                    head = await reader.readexactly(FRAME_HEADER_BYTES)
                except asyncio.IncompleteReadError as e:
                    if e.partial:
                        why.append((1011, "the stream ended inside a frame"))
                    return
                size = int.from_bytes(head, "big")
                if size > MAX_FRAME_BYTES:  # neither relay nor enclave sends one
                    why.append((1011, f"a frame of {size} bytes is over the limit"))
                    return
                try:
                    body = await reader.readexactly(size)
                except asyncio.IncompleteReadError:
                    why.append((1011, "the stream ended inside a frame"))
                    return
                await ws.send(head + body)

        tasks = {asyncio.create_task(up()), asyncio.create_task(down())}
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            writer.close()
            code, reason = why[0] if why else (1000, "")
            with contextlib.suppress(ConnectionClosed, OSError):
                await ws.close(code, reason)
