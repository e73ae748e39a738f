"""The transport seam: endpoint parsing, dialling and listening on TCP and vsock.

vsock can be created and bound on development machines but not connected (no
loopback transport), so vsock is tested up to bind/listen, and the dial is only
checked to fail with our error, never a raw OSError.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from ephemeralml.common._errors import ConfigError, TransportError
from ephemeralml.runtime import Endpoint, open_connection, server_endpoint, start_server
from ephemeralml.runtime._transport import VSOCK_CID_ANY

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
    """Every test is bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


# -- Endpoint.parse ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "canonical"),
    [
        ("127.0.0.1:5005", Endpoint("tcp", "127.0.0.1", 5005, None), "tcp:127.0.0.1:5005"),
        ("tcp:127.0.0.1:5005", Endpoint("tcp", "127.0.0.1", 5005, None), "tcp:127.0.0.1:5005"),
        ("tcp:0.0.0.0:0", Endpoint("tcp", "0.0.0.0", 0, None), "tcp:0.0.0.0:0"),
        ("localhost:65535", Endpoint("tcp", "localhost", 65535, None), "tcp:localhost:65535"),
        ("tcp:[::1]:5005", Endpoint("tcp", "::1", 5005, None), "tcp:[::1]:5005"),
        ("[::]:80", Endpoint("tcp", "::", 80, None), "tcp:[::]:80"),
        ("vsock:16:5005", Endpoint("vsock", None, 5005, 16), "vsock:16:5005"),
        ("vsock:3:8000", Endpoint("vsock", None, 8000, 3), "vsock:3:8000"),
        ("vsock:any:5005", Endpoint("vsock", None, 5005, VSOCK_CID_ANY), "vsock:any:5005"),
        (
            "vsock:4294967295:4294967295",
            Endpoint.vsock(VSOCK_CID_ANY, 0xFFFFFFFF),
            "vsock:any:4294967295",
        ),
        ("  tcp:127.0.0.1:1 ", Endpoint.tcp("127.0.0.1", 1), "tcp:127.0.0.1:1"),
    ],
)
def test_parse_accepts_and_round_trips(text: str, expected: Endpoint, canonical: str) -> None:
    ep = Endpoint.parse(text)
    assert ep == expected
    assert str(ep) == canonical
    assert Endpoint.parse(str(ep)) == ep


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "expected HOST:PORT"),
        ("nonsense", "expected HOST:PORT"),
        ("5005", "expected HOST:PORT"),
        (":5005", "the host is missing"),
        ("tcp::5005", "the host is missing"),
        ("tcp:5005", "expected HOST:PORT"),
        ("127.0.0.1:", "port '' is not a decimal number"),
        ("127.0.0.1:abc", "port 'abc' is not a decimal number"),
        ("127.0.0.1:-1", "port '-1' is not a decimal number"),
        ("127.0.0.1:+5", "port '+5' is not a decimal number"),
        ("127.0.0.1:5_0", "port '5_0' is not a decimal number"),
        ("127.0.0.1:65536", "port must be an integer from 0 to 65535"),
        ("::1:5005", "an IPv6 host goes in brackets"),
        ("tcp:[::1:5005", "expected [IPV6]:PORT"),
        ("[::1]5005", "expected [IPV6]:PORT"),
        ("[127.0.0.1]:5", "brackets are only for IPv6"),
        ("udp:1.2.3.4:5", "unknown endpoint kind 'udp' (tcp, vsock or unix)"),
        ("VSOCK:16:5005", "unknown endpoint kind 'VSOCK'"),
        ("fe80::1:5005", "an IPv6 host goes in brackets"),
        ("my host:5", "is not a host name or address"),
        ("vsock:16", "expected vsock:CID:PORT"),
        ("vsock:16:5005:7", "expected vsock:CID:PORT"),
        ("vsock:x:5005", "cid 'x' is not a decimal number"),
        ("vsock:16:", "port '' is not a decimal number"),
        ("vsock:4294967296:1", "cid must be an integer from 0 to 4294967295"),
        ("vsock:16:4294967296", "port must be an integer from 0 to 4294967295"),
    ],
)
def test_parse_rejects_with_one_line(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        Endpoint.parse(text)
    message = str(info.value)
    assert message.startswith(f"bad endpoint {text!r}: ")
    assert why in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "args",
    [
        ("tcp", None, 5, None),  # TCP needs a host
        ("tcp", "", 5, None),
        ("tcp", "h", 5, 3),  # and no cid
        ("tcp", "h", 70000, None),
        ("tcp", "h", True, None),  # a bool is not a port
        ("vsock", None, 5, None),  # vsock needs a cid
        ("vsock", "h", 5, 3),  # and no host
        ("vsock", None, -1, 3),
        ("udp", "h", 5, None),
    ],
)
def test_constructor_keeps_the_same_invariants(args: tuple[Any, ...]) -> None:
    with pytest.raises(ConfigError):
        Endpoint(*args)


# -- TCP -------------------------------------------------------------------------


def test_tcp_listen_dial_exchange_and_nodelay() -> None:
    async def scenario() -> None:
        async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(await r.read(100))
            await w.drain()
            w.close()

        server = await start_server(Endpoint.parse("127.0.0.1:0"), echo)
        try:
            bound = server_endpoint(server, Endpoint.parse("127.0.0.1:0"))
            assert bound.kind == "tcp" and bound.host == "127.0.0.1" and bound.port != 0
            r, w = await open_connection(bound, timeout=2.0)
            sock = w.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            w.write(b"ping")
            assert await r.read() == b"ping"
            w.close()
            await w.wait_closed()
        finally:
            server.close()
            await server.wait_closed()

    run(scenario())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_tcp_dial_refused_is_transport_error() -> None:
    port = _free_port()
    with pytest.raises(TransportError) as info:
        run(open_connection(Endpoint.tcp("127.0.0.1", port), timeout=2.0))
    assert str(info.value) == f"cannot reach enclave at tcp:127.0.0.1:{port}: connection refused"


def test_tcp_dial_timeout_is_transport_error() -> None:
    # A listener whose accept queue is full drops SYNs, so connect() hangs: the
    # shape of an enclave that is up but not answering.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        ep = Endpoint.tcp("127.0.0.1", listener.getsockname()[1])
        fillers = [socket.socket() for _ in range(3)]
        try:
            for f in fillers:
                f.setblocking(False)
                f.connect_ex(("127.0.0.1", ep.port))
            with pytest.raises(TransportError) as info:
                run(open_connection(ep, timeout=0.3, peer="host"))
            assert str(info.value) == f"cannot reach host at {ep}: no answer within 0.3 s"
        finally:
            for f in fillers:
                f.close()


def test_listen_on_a_port_in_use_is_transport_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def noop(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.close()

        with pytest.raises(TransportError) as info:
            run(start_server(Endpoint.tcp("127.0.0.1", port), noop))
    assert str(info.value) == f"cannot listen on tcp:127.0.0.1:{port}: address already in use"


# -- vsock -------------------------------------------------------------------------


def _vsock_or_skip() -> None:
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        pytest.skip("this Python has no socket.AF_VSOCK")
    try:
        socket.socket(family, socket.SOCK_STREAM).close()
    except OSError as e:
        pytest.skip(f"AF_VSOCK sockets cannot be created here: {e}")


def test_vsock_listen_binds_any_cid_and_resolves_port() -> None:
    _vsock_or_skip()

    async def scenario() -> None:
        async def noop(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.close()

        requested = Endpoint.parse("vsock:any:0")
        server = await start_server(requested, noop)
        try:
            (sock,) = server.sockets
            assert sock.family == socket.AF_VSOCK
            cid, port = sock.getsockname()
            assert cid == socket.VMADDR_CID_ANY
            bound = server_endpoint(server, requested)
            # Port 0 means "kernel picks" for vsock as for TCP (VMADDR_PORT_ANY).
            assert bound == Endpoint.vsock(VSOCK_CID_ANY, port)
            assert port not in (0, socket.VMADDR_PORT_ANY)
        finally:
            server.close()
            await server.wait_closed()

    run(scenario())


def test_vsock_dial_failure_is_transport_error_never_oserror() -> None:
    # No vsock peer exists here (none on CID 0x7ffffff0 anywhere): whatever the
    # kernel says (no such device, timeout, reset...) it must arrive as our error.
    ep = Endpoint.parse("vsock:2147483632:5005")
    with pytest.raises(TransportError) as info:
        run(open_connection(ep, timeout=0.5))
    assert str(info.value).startswith(f"cannot reach enclave at {ep}: ")
