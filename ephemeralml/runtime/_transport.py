"""The transport seam: where a program listens and what it dials.

Production speaks AF_VSOCK between the parent instance and its enclaves; mock mode
(laptops, tests, CI) speaks TCP on loopback. Everything above this module takes an
:class:`Endpoint` and gets asyncio streams back, so relay, enclave and tests run the
same code over either (ARCHITECTURE.md, "The seams").

This module moves no payload and knows no protocol. Failures to listen or to dial
are :class:`~ephemeralml.common._errors.TransportError` with a one-line message;
malformed endpoint text is :class:`~ephemeralml.common._errors.ConfigError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from ephemeralml.common._errors import ConfigError, TransportError

__all__ = [
    "MAX_TCP_PORT",
    "MAX_VSOCK_CID",
    "MAX_VSOCK_PORT",
    "STREAM_LIMIT_BYTES",
    "TLS_HANDSHAKE_TIMEOUT_S",
    "VSOCK_CID_ANY",
    "ConnectionHandler",
    "Endpoint",
    "open_connection",
    "server_endpoint",
    "set_nodelay",
    "start_server",
]

#: TCP ports are 16-bit.
MAX_TCP_PORT = 0xFFFF
#: vsock CIDs and ports are 32-bit (linux/vm_sockets.h, ``struct sockaddr_vm``).
MAX_VSOCK_CID = 0xFFFFFFFF
MAX_VSOCK_PORT = 0xFFFFFFFF
#: ``VMADDR_CID_ANY``: listen on every CID of this machine. Spelled ``any`` in
#: endpoint text. Hard-coded so that parsing works where ``socket`` lacks AF_VSOCK.
VSOCK_CID_ANY = 0xFFFFFFFF
#: ``VMADDR_PORT_ANY``: let the kernel pick the port (what port 0 means for TCP).
_VSOCK_PORT_ANY = 0xFFFFFFFF

#: Seconds a TLS listener gives a client to finish its handshake.
TLS_HANDSHAKE_TIMEOUT_S = 10.0
#: asyncio's default stream reader limit, named: a reader stops taking bytes from
#: the kernel once twice this much is unread, which is what bounds its memory.
STREAM_LIMIT_BYTES = 64 * 1024

#: What :func:`start_server` calls for every accepted connection: a coroutine
#: function (run as its own task) or a plain function that must return at once.
#: sun_path holds 108 bytes with its terminating NUL (unix(7)).
_MAX_UNIX_PATH_BYTES = 107

ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]


@dataclass(frozen=True)
class Endpoint:
    """Where something listens, or where to dial.

    Text forms (:meth:`parse`): ``127.0.0.1:5005`` and ``tcp:127.0.0.1:5005`` (TCP;
    an IPv6 host goes in brackets, ``tcp:[::1]:5005``), ``vsock:16:5005``
    (``vsock:CID:PORT``; ``vsock:any:5005`` listens on every CID), ``unix:/abs/path``
    (a Unix socket: what stands for vsock in tests, since it crosses network
    namespaces as vsock crosses the enclave boundary). Port 0 means "let the kernel
    pick" when listening. ``str()`` gives back text that :meth:`parse` accepts.
    """

    kind: Literal["tcp", "vsock", "unix"]
    host: str | None
    port: int
    cid: int | None
    path: str | None = None

    def __post_init__(self) -> None:
        # No half-valid endpoint exists (STYLE.md §6): the constructor checks what
        # parse() checks, so Endpoint("tcp", None, 5, None) fails too.
        if self.kind == "unix":
            if self.host is not None or self.cid is not None or self.port != 0:
                raise ConfigError(f"unix endpoint needs only a path, got {self!r}")
            if not self.path or not self.path.startswith("/") or "\0" in self.path:
                raise ConfigError(f"unix endpoint path must be absolute, got {self.path!r}")
            if len(self.path.encode()) > _MAX_UNIX_PATH_BYTES:
                raise ConfigError(f"unix endpoint path is over {_MAX_UNIX_PATH_BYTES} bytes")
            return
        if self.path is not None:
            raise ConfigError(f"only a unix endpoint has a path, got {self!r}")
        if self.kind == "tcp":
            if not self.host or self.cid is not None:
                raise ConfigError(f"tcp endpoint needs a host and no cid, got {self!r}")
            if any(c.isspace() for c in self.host) or "/" in self.host:
                raise ConfigError(f"tcp endpoint host {self.host!r} is not a host name or address")
            _check_range("port", self.port, MAX_TCP_PORT)
        elif self.kind == "vsock":
            if self.host is not None or self.cid is None:
                raise ConfigError(f"vsock endpoint needs a cid and no host, got {self!r}")
            _check_range("cid", self.cid, MAX_VSOCK_CID)
            _check_range("port", self.port, MAX_VSOCK_PORT)
        else:
            raise ConfigError(f"endpoint kind must be tcp, vsock or unix, got {self.kind!r}")

    @classmethod
    def tcp(cls, host: str, port: int) -> Endpoint:
        return cls("tcp", host, port, None)

    @classmethod
    def vsock(cls, cid: int, port: int) -> Endpoint:
        return cls("vsock", None, port, cid)

    @classmethod
    def unix(cls, path: str) -> Endpoint:
        return cls("unix", None, 0, None, path)

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """``[tcp:]HOST:PORT`` or ``vsock:CID:PORT``; :class:`ConfigError` otherwise."""
        raw = text
        text = text.strip()
        if text.startswith("unix:"):
            path = text[len("unix:") :]
            return _wrap(raw, lambda: cls.unix(path))
        if text.startswith("vsock:"):
            parts = text[len("vsock:") :].split(":")
            if len(parts) != 2:
                raise _bad(raw, "expected vsock:CID:PORT")
            cid_text, port_text = parts
            cid = VSOCK_CID_ANY if cid_text == "any" else _parse_int(raw, "cid", cid_text)
            return _wrap(raw, lambda: cls.vsock(cid, _parse_int(raw, "port", port_text)))
        if text.startswith("tcp:"):
            text = text[len("tcp:") :]
        if text.startswith("["):
            # [IPv6]:PORT
            close = text.find("]")
            if close < 0 or text[close + 1 : close + 2] != ":":
                raise _bad(raw, "expected [IPV6]:PORT")
            host, port_text = text[1:close], text[close + 2 :]
            if ":" not in host:
                raise _bad(raw, "brackets are only for IPv6 addresses")
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep:
                raise _bad(raw, "expected HOST:PORT, tcp:HOST:PORT, vsock:CID:PORT or unix:PATH")
            if ":" in host:
                kind = host.partition(":")[0]
                if kind.isalpha() and not all(c in "0123456789abcdefABCDEF" for c in kind):
                    raise _bad(raw, f"unknown endpoint kind {kind!r} (tcp, vsock or unix)")
                raise _bad(raw, "an IPv6 host goes in brackets: tcp:[::1]:5005")
        if not host:
            raise _bad(raw, "the host is missing (for all interfaces say 0.0.0.0)")
        port = _parse_int(raw, "port", port_text)
        return _wrap(raw, lambda: cls.tcp(host, port))

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "vsock":
            cid = "any" if self.cid == VSOCK_CID_ANY else str(self.cid)
            return f"vsock:{cid}:{self.port}"
        host = self.host or ""
        if ":" in host:
            host = f"[{host}]"
        return f"tcp:{host}:{self.port}"


def _bad(text: str, why: str) -> ConfigError:
    return ConfigError(f"bad endpoint {text!r}: {why}")


def _parse_int(text: str, what: str, digits: str) -> int:
    # int() would also take " 5", "+5", "5_000" and "٥"; an endpoint takes ASCII digits.
    if not (digits.isascii() and digits.isdigit()):
        raise _bad(text, f"{what} {digits!r} is not a decimal number")
    return int(digits)


def _wrap(text: str, build: Callable[[], Endpoint]) -> Endpoint:
    try:
        return build()
    except ConfigError as e:
        raise _bad(text, e.message) from e


def _check_range(what: str, value: int, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise ConfigError(f"{what} must be an integer from 0 to {maximum}, got {value!r}")


def set_nodelay(writer: asyncio.StreamWriter) -> None:
    """Turn off Nagle on a TCP stream: small request/response frames must not wait.

    asyncio already does this for TCP transports since 3.7; doing it here states the
    requirement instead of relying on it. vsock has no Nagle; nothing to do there.
    """
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # the peer is already gone; the next read or write will say so


async def open_connection(
    ep: Endpoint, *, timeout: float, peer: str = "enclave", limit: int = STREAM_LIMIT_BYTES
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Dial ``ep`` within ``timeout`` seconds.

    Raises :class:`TransportError` ("cannot reach enclave at vsock:16:5005: ...") on
    any failure, including the timeout; no raw ``OSError`` escapes. ``peer`` names
    what is dialled, for the message (the enclave dials the host, not an enclave).
    ``limit`` is the stream reader's buffer limit (it stops reading from the
    kernel at twice that much unread).
    """
    try:
        async with asyncio.timeout(timeout):
            if ep.kind == "tcp":
                reader, writer = await asyncio.open_connection(ep.host, ep.port, limit=limit)
            elif ep.kind == "unix":
                reader, writer = await asyncio.open_unix_connection(ep.path, limit=limit)
            else:
                reader, writer = await _open_vsock(ep, limit)
    except TimeoutError as e:
        raise TransportError(f"cannot reach {peer} at {ep}: no answer within {timeout:g} s") from e
    except OSError as e:
        raise TransportError(f"cannot reach {peer} at {ep}: {_reason(e)}") from e
    set_nodelay(writer)
    return reader, writer


def connect_blocking(ep: Endpoint, *, timeout: float) -> socket.socket:
    """A blocking socket connected to ``ep`` (for threads, e.g. the log stream);
    ``OSError`` if it cannot be reached in ``timeout`` seconds."""
    if ep.kind == "tcp":
        assert ep.host is not None
        return socket.create_connection((ep.host, ep.port), timeout=timeout)
    if ep.kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: Any = ep.path
    else:
        sock = _vsock_socket()
        address = (ep.cid, ep.port)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
        return sock
    except BaseException:
        sock.close()
        raise


async def _open_vsock(
    ep: Endpoint, limit: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert ep.cid is not None
    sock = _vsock_socket()
    try:
        sock.setblocking(False)
        # sock_connect, not sock.connect: a blocking connect would stall the event
        # loop (every other connection) for as long as the enclave takes to answer.
        await asyncio.get_running_loop().sock_connect(sock, (ep.cid, ep.port))
        return await asyncio.open_connection(sock=sock, limit=limit)
    except BaseException:
        sock.close()
        raise


def _vsock_socket() -> socket.socket:
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        raise OSError("AF_VSOCK is not supported on this platform")
    return socket.socket(family, socket.SOCK_STREAM)


async def start_server(
    ep: Endpoint,
    handler: ConnectionHandler,
    *,
    backlog: int = 1024,
    limit: int = STREAM_LIMIT_BYTES,
    ssl: ssl_module.SSLContext | None = None,
) -> asyncio.Server:
    """Listen on ``ep`` and call ``handler`` for each accepted connection.

    Raises :class:`TransportError` ("cannot listen on tcp:0.0.0.0:5000: address
    already in use") when the address cannot be bound. Use :func:`server_endpoint`
    for the address actually bound (port 0 resolved). ``limit`` is as for
    :func:`open_connection`; with ``ssl``, connections are TLS.
    """
    tls: dict[str, Any] = (
        {"ssl": ssl, "ssl_handshake_timeout": TLS_HANDSHAKE_TIMEOUT_S} if ssl else {}
    )
    try:
        if ep.kind == "tcp":
            return await asyncio.start_server(
                handler, ep.host, ep.port, backlog=backlog, limit=limit, **tls
            )
        if ep.kind == "unix":
            return await asyncio.start_unix_server(
                handler, ep.path, backlog=backlog, limit=limit, **tls
            )
        assert ep.cid is not None
        sock = _vsock_socket()
        try:
            port = _VSOCK_PORT_ANY if ep.port == 0 else ep.port
            sock.bind((ep.cid, port))
            sock.setblocking(False)
            # start_server calls listen(backlog) on a socket it is given.
            return await asyncio.start_server(
                handler, sock=sock, backlog=backlog, limit=limit, **tls
            )
        except BaseException:
            sock.close()
            raise
    except OSError as e:
        raise TransportError(f"cannot listen on {ep}: {_reason(e)}") from e


def server_endpoint(server: asyncio.Server, requested: Endpoint) -> Endpoint:
    """The endpoint ``server`` is bound to: ``requested`` with port 0 resolved.

    The host (or CID) is kept as requested ("localhost" stays "localhost").
    """
    sockets = server.sockets
    if not sockets:
        raise TransportError(f"server for {requested} has no listening socket")
    if requested.kind == "unix":
        return requested
    name = sockets[0].getsockname()
    if requested.kind == "tcp":
        assert requested.host is not None
        return Endpoint.tcp(requested.host, int(name[1]))
    assert requested.cid is not None
    return Endpoint.vsock(requested.cid, int(name[1]))


class Listener:
    """One listening endpoint for a service: :meth:`start` binds it (``bound`` then has
    port 0 resolved), :meth:`close` stops accepting and ends the connections still
    being served (their handlers are cancelled and awaited; safe to call twice). With
    ``ssl``, connections are TLS (handshake within :data:`TLS_HANDSHAKE_TIMEOUT_S`).
    The services of the programs hold one instead of repeating this."""

    def __init__(
        self,
        listen: Endpoint,
        handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]],
        *,
        limit: int = STREAM_LIMIT_BYTES,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        self.listen = listen
        self._handler = handler
        self._limit = limit
        self._ssl = ssl
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.bound: Endpoint | None = None

    async def start(self) -> Endpoint:
        server = await start_server(self.listen, self._accept, limit=self._limit, ssl=self._ssl)
        self._server = server
        self.bound = server_endpoint(server, self.listen)
        return self.bound

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._handler(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _reason(e: OSError) -> str:
    # "[Errno 111] Connect call failed ('127.0.0.1', 5005)" says less than
    # "connection refused", and the endpoint is already in the message.
    # asyncio rewraps bind errors as "error while attempting to bind on address
    # ('127.0.0.1', 5000): address already in use"; the errno says it shorter.
    # Name-resolution errors carry EAI_* codes, not errno values.
    if e.errno and not isinstance(e, socket.gaierror):
        return os.strerror(e.errno).lower()
    if e.strerror:
        return e.strerror.lower()
    return str(e) or type(e).__name__
