"""The host's egress proxy (protocol.md §10.3): CONNECT to allowed targets only,
bounded before any work, and the unix endpoint that stands for vsock in tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from ephemeralml.common._errors import ConfigError
from ephemeralml.host import _egress
from ephemeralml.host._egress import EgressConfig, EgressProxy, kms_target
from ephemeralml.runtime._transport import Endpoint

TARGET = kms_target("eu-west-1")


async def _with_proxy(
    upstream_port: int, body: Callable[[EgressProxy], Awaitable[Any]], listen: Endpoint | None = None
) -> Any:
    proxy = EgressProxy(
        EgressConfig(
            listen or Endpoint.parse("127.0.0.1:0"), frozenset({TARGET}),
            resolve={TARGET: Endpoint.tcp("127.0.0.1", upstream_port)},
        )
    )  # fmt: skip
    await proxy.start()
    try:
        return await body(proxy)
    finally:
        await proxy.close()


async def _echo_server() -> asyncio.Server:
    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(1024):
            w.write(b"echo:" + data)
            await w.drain()
        w.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


async def _exchange(proxy: EgressProxy, request: bytes, then: bytes = b"") -> bytes:
    assert proxy.bound is not None
    if proxy.bound.kind == "unix":
        r, w = await asyncio.open_unix_connection(proxy.bound.path)
    else:
        r, w = await asyncio.open_connection("127.0.0.1", proxy.bound.port)
    w.write(request)
    await w.drain()
    out = await asyncio.wait_for(r.read(4096), 10)
    if then:
        w.write(then)
        await w.drain()
        while not out.endswith(b"echo:" + then):
            more = await asyncio.wait_for(r.read(4096), 10)
            if not more:
                break
            out += more
    w.close()
    return out


def _run(body: Callable[[EgressProxy], Awaitable[Any]], listen: Endpoint | None = None) -> Any:
    async def main() -> Any:
        server = await _echo_server()
        try:
            return await _with_proxy(server.sockets[0].getsockname()[1], body, listen)
        finally:
            server.close()

    return asyncio.run(asyncio.wait_for(main(), 30))


def _refusal(status: int, reason: str) -> bytes:
    body = f"egress refused: {reason}\n".encode()
    return (
        f"HTTP/1.1 {status} Refused\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )


def test_an_allowed_target_is_tunnelled_byte_for_byte(tmp_path: Path) -> None:
    async def body(proxy: EgressProxy) -> tuple[bytes, int]:
        head = f"CONNECT {TARGET} HTTP/1.1\r\nHost: {TARGET}\r\n\r\n".encode()
        # Bytes sent right behind the head reach the target too (a TLS ClientHello).
        got = await _exchange(proxy, head + b"hello", then=b"again")
        return got, proxy.tunnels

    for listen in (None, Endpoint.unix(str(tmp_path / "egress.sock"))):
        got, tunnels = _run(body, listen)
        assert got == b"HTTP/1.1 200 Connection established\r\n\r\necho:helloecho:again"
        assert tunnels == 1


@pytest.mark.parametrize(
    ("request_bytes", "status", "reason"),
    [
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 403, "example.com:443 is not on the allowlist"),
        # The same name on another port, or another region's KMS: not the allowed target.
        (b"CONNECT kms.eu-west-1.amazonaws.com:80 HTTP/1.1\r\nHost: x\r\n\r\n", 403, "kms.eu-west-1.amazonaws.com:80 is not on the allowlist"),
        (b"CONNECT kms.us-east-1.amazonaws.com:443 HTTP/1.1\r\nHost: x\r\n\r\n", 403, "kms.us-east-1.amazonaws.com:443 is not on the allowlist"),
        (b"GET http://kms.eu-west-1.amazonaws.com/ HTTP/1.1\r\nHost: x\r\n\r\n", 405, "only CONNECT is proxied, not GET"),
        (b"CONNECT kms HTTP/1.1\r\nHost: x\r\n\r\n", 400, "the CONNECT target is not HOST:PORT"),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40 + b"\r\n\r\n", 400, None),
    ],
)
def test_everything_else_is_refused_with_a_reason(request_bytes: bytes, status: int, reason: str | None) -> None:
    async def body(proxy: EgressProxy) -> tuple[bytes, int, int]:
        return await _exchange(proxy, request_bytes), proxy.tunnels, proxy.refused

    got, tunnels, refused = _run(body)
    if reason is None:
        assert got.startswith(b"HTTP/1.1 400 Refused\r\n") and b"egress refused: not an HTTP request" in got
    else:
        assert got == _refusal(status, reason)
    assert (tunnels, refused) == (0, 1)


def test_a_head_that_never_ends_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_egress, "HEAD_TIMEOUT_S", 0.3)

    async def body(proxy: EgressProxy) -> bytes:
        return await _exchange(proxy, b"CONNECT kms.eu-west-1.amazonaws.com:443 HTTP/1.1\r\n")

    assert _run(body) == _refusal(408, "no CONNECT request within the deadline")


def test_an_oversized_head_is_refused() -> None:
    async def body(proxy: EgressProxy) -> bytes:
        big = b"CONNECT " + TARGET.encode() + b" HTTP/1.1\r\nX: " + b"a" * (2 * _egress.MAX_HEAD_BYTES)
        return await _exchange(proxy, big)

    got = _run(body)
    assert got.startswith(b"HTTP/1.1 400 Refused\r\n") and b"egress refused: not an HTTP request" in got


def test_an_unreachable_allowed_target_is_a_502() -> None:
    async def main() -> bytes:
        head = f"CONNECT {TARGET} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        got: bytes = await _with_proxy(1, lambda p: _exchange(p, head))
        return got

    assert asyncio.run(main()) == _refusal(
        502, f"cannot reach {TARGET} at tcp:127.0.0.1:1: connection refused"
    )


@pytest.mark.parametrize(
    ("allow", "resolve", "message"),
    [
        (frozenset(), {}, "the egress proxy needs at least one allowed target"),
        (frozenset({"kms"}), {}, "egress target 'kms' is not HOST:PORT"),
        (frozenset({TARGET}), {"other.example:443": Endpoint.tcp("h", 1)}, "egress resolve entries for targets not allowed: ['other.example:443']"),
    ],
)
def test_config_is_checked(allow: frozenset[str], resolve: dict[str, Endpoint], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        EgressConfig(Endpoint.parse("127.0.0.1:0"), allow, resolve=resolve)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("unix:relative/path", "bad endpoint 'unix:relative/path': unix endpoint path must be absolute, got 'relative/path'"),
        ("unix:", "bad endpoint 'unix:': unix endpoint path must be absolute, got ''"),
        ("unix:/" + "a" * 120, f"bad endpoint 'unix:/{'a' * 120}': unix endpoint path is over 107 bytes"),
    ],
)
def test_unix_endpoints(text: str, message: str) -> None:
    assert str(Endpoint.parse("unix:/run/ephemeralml/egress.sock")) == "unix:/run/ephemeralml/egress.sock"
    with pytest.raises(ConfigError) as info:
        Endpoint.parse(text)
    assert str(info.value) == message


def test_the_nitro_host_gives_the_enclave_only_its_regions_kms(tmp_path: Path) -> None:
    import contextlib

    from ephemeralml.host import _cli

    args = _cli._parser().parse_args(
        ["--listen", "127.0.0.1:0", "--enclave-cid", "16", "--services-listen", "127.0.0.1:0",
         "--kms-listen", "127.0.0.1:0", "--region", "eu-west-1", "--store", str(tmp_path)]
    )  # fmt: skip
    config = _cli.build_config(args, {})
    assert config.profile.name == "nitro"

    async def main() -> tuple[list[str], dict[str, object], bytes]:
        async with contextlib.AsyncExitStack() as stack:
            lines, ready, _egress_proxy = await _cli._start_services(config, stack)
            host, port = str(ready["kms"]).removeprefix("tcp:").rsplit(":", 1)
            r, w = await asyncio.open_connection(host, int(port))
            w.write(b"CONNECT s3.eu-west-1.amazonaws.com:443 HTTP/1.1\r\nHost: x\r\n\r\n")
            await w.drain()
            refused = await asyncio.wait_for(r.read(4096), 10)
            w.close()
            return lines, ready, refused

    lines, ready, refused = asyncio.run(asyncio.wait_for(main(), 30))
    assert ready["kms_upstream"] == "kms.eu-west-1.amazonaws.com:443"
    assert lines[-1] == f"egress proxy {ready['kms']} -> CONNECT to kms.eu-west-1.amazonaws.com:443 only"
    assert refused == _refusal(403, "s3.eu-west-1.amazonaws.com:443 is not on the allowlist")


class _Imds:
    """IMDSv2 on loopback: a session token by PUT, then metadata only with that token."""

    TOKEN = "AQAEAtoken"

    def __init__(self) -> None:
        import http.server
        import threading

        imds = self
        self.seen: list[tuple[str, str, bool]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:
                ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
                imds.seen.append(("PUT", self.path, ttl is not None))
                self._reply(200 if self.path == "/latest/api/token" and ttl else 400, imds.TOKEN.encode())

            def do_GET(self) -> None:
                ok = self.headers.get("X-aws-ec2-metadata-token") == imds.TOKEN
                imds.seen.append(("GET", self.path, ok))
                if not ok:
                    self._reply(401, b"")
                elif self.path == "/latest/meta-data/placement/availability-zone/":
                    self._reply(200, b"eu-central-1b")
                else:
                    self._reply(404, b"")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_on_ec2_the_region_comes_from_imdsv2(monkeypatch: pytest.MonkeyPatch) -> None:
    from ephemeralml.host import _cli

    imds = _Imds()
    try:
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
        for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
            monkeypatch.delenv(name, raising=False)
        config = _cli.build_config(_cli._parser().parse_args(["--enclave-cid", "16"]), {})
    finally:
        imds.close()
    assert config.region == "eu-central-1"
    # IMDSv2: a token first, and the metadata read with it.
    assert imds.seen == [
        ("PUT", "/latest/api/token", True),
        ("GET", "/latest/meta-data/placement/availability-zone/", True),
    ]


def test_off_ec2_without_a_region_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from ephemeralml.host import _cli

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # bound, never listening: connection refused
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", f"http://127.0.0.1:{closed}/")
        monkeypatch.setenv("AWS_METADATA_SERVICE_TIMEOUT", "1")
        for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
            monkeypatch.delenv(name, raising=False)
        with pytest.raises(ConfigError) as info:
            _cli.build_config(_cli._parser().parse_args(["--enclave-cid", "16"]), {})
    assert str(info.value) == (
        "no AWS region: give --region, set AWS_REGION, or run on EC2 with IMDSv2 reachable"
    )
