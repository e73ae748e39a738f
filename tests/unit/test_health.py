"""The host's /healthz, /readyz and /metrics: the enclave probed with a cached-mode
hello (answer recognised, not verified), counters only, bounded HTTP parsed by h11."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ephemeralml.client._api import connect
from ephemeralml.common._frame import encode_frame
from ephemeralml.common._messages import ErrorFrame
from ephemeralml.host._health import HealthServer, probe_enclave
from ephemeralml.runtime import Endpoint, Relay, RelayConfig
from ephemeralml.runtime._logstream import LogCollector
from tests.pair import MODEL, MockWorld
from tests.unit.test_client_session import LiveEnclave, policy


@pytest.fixture
def live(world: MockWorld) -> Iterator[LiveEnclave]:
    """The real enclave server on loopback (``world`` is the unit tier's mock world)."""
    with LiveEnclave(world) as e:
        yield e


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _get(server: HealthServer, request: bytes) -> tuple[int, bytes]:
    assert server.bound is not None
    r, w = await asyncio.open_connection("127.0.0.1", server.bound.port)
    w.write(request)
    await w.drain()
    raw = await asyncio.wait_for(r.read(), 10)
    w.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _serve(enclaves: list[Endpoint], *requests: bytes, relay: bool = False) -> list[tuple[int, bytes]]:
    async def main() -> list[tuple[int, bytes]]:
        rel = Relay(RelayConfig(Endpoint.parse("127.0.0.1:0"), tuple(enclaves))) if relay else None
        if rel is not None:
            await rel.start()
        server = HealthServer(
            Endpoint.parse("127.0.0.1:0"), enclaves, relay=lambda: rel, ready_timeout_s=2
        )
        await server.start()
        try:
            return [await _get(server, req) for req in requests]
        finally:
            await server.close()
            if rel is not None:
                await rel.close()

    return asyncio.run(asyncio.wait_for(main(), 30))


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode()


def test_ready_when_the_enclave_answers_a_hello(live: LiveEnclave) -> None:
    enclave = Endpoint.parse(live.address)
    assert _serve([enclave], get("/healthz"), get("/readyz")) == [(200, b"ok\n"), (200, b"ready\n")]


def test_not_ready_says_why() -> None:
    port = _closed_port()
    [(status, body)] = _serve([Endpoint.tcp("127.0.0.1", port)], get("/readyz"))
    assert (status, body) == (
        503, f"not ready: cannot reach enclave at tcp:127.0.0.1:{port}: connection refused\n".encode()
    )  # fmt: skip


def test_an_answer_that_is_not_attest_is_not_ready() -> None:
    async def main() -> tuple[Endpoint, Endpoint, str | None, str | None]:
        async def wrong(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.read(1024)
            w.write(encode_frame(ErrorFrame("limit", "busy").to_cbor()))
            await w.drain()
            w.close()

        async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await asyncio.sleep(5)

        a = await asyncio.start_server(wrong, "127.0.0.1", 0)
        b = await asyncio.start_server(silent, "127.0.0.1", 0)
        try:
            ep = Endpoint.tcp("127.0.0.1", a.sockets[0].getsockname()[1])
            quiet = Endpoint.tcp("127.0.0.1", b.sockets[0].getsockname()[1])
            wrong_answer = await probe_enclave(ep, timeout_s=2)
            return ep, quiet, wrong_answer, await probe_enclave(quiet, timeout_s=0.3)
        finally:
            a.close()
            b.close()

    ep, quiet, wrong_answer, no_answer = asyncio.run(main())
    assert wrong_answer == f"{ep} answered ErrorFrame, not attest"
    assert no_answer == f"{quiet} did not answer within 0.3 s"


def test_metrics_are_counters_only(live: LiveEnclave) -> None:
    enclave = Endpoint.parse(live.address)
    [(status, body)] = _serve([enclave], get("/metrics"), relay=True)
    assert status == 200
    lines = body.decode().splitlines()
    for line in (
        "ephemeralml_relay_connections_total 0.0",
        "ephemeralml_relay_refused_total 0.0",
        "ephemeralml_relay_bytes_up_total 0.0",
        "ephemeralml_relay_active 0.0",
        "ephemeralml_relay_pending 0.0",
    ):
        assert line in lines


def test_metrics_count_sessions_requests_and_enclave_restarts(live: LiveEnclave) -> None:
    async def main() -> list[str]:
        rel = Relay(RelayConfig(Endpoint.parse("127.0.0.1:0"), (Endpoint.parse(live.address),)))
        await rel.start()
        logs = LogCollector(Endpoint.parse("127.0.0.1:0"), "enclave")
        await logs.start()
        server = HealthServer(
            Endpoint.parse("127.0.0.1:0"), [], relay=lambda: rel, logs=lambda: logs
        )
        await server.start()

        def client() -> None:  # two sessions, three requests
            with connect(f"127.0.0.1:{rel.bound.port}", policy=policy(live.world), timeout=10) as s:
                s.embed(["one"], model=MODEL)
                s.embed(["two", "three"], model=MODEL)
            with connect(f"127.0.0.1:{rel.bound.port}", policy=policy(live.world), timeout=10) as s:
                s.embed(["four"], model=MODEL)

        try:
            await asyncio.to_thread(client)
            # The enclave's log stream: a run that ended with status 3, and the next.
            assert logs.bound is not None
            _r, w = await asyncio.open_connection("127.0.0.1", logs.bound.port)
            w.write(b'{"t":"start"}\n{"t":"exit","code":3}\n{"t":"start"}\n')
            await w.drain()
            w.close()
            for _ in range(200):
                if logs.starts == 2:
                    break
                await asyncio.sleep(0.01)
            _status, body = await _get(server, get("/metrics"))
            return body.decode().splitlines()
        finally:
            await server.close()
            await logs.close()
            await rel.close()

    lines = asyncio.run(asyncio.wait_for(main(), 60))
    for line in (
        "ephemeralml_relay_connections_total 2.0",
        "ephemeralml_relay_sessions_total 2.0",
        "ephemeralml_relay_requests_total 3.0",
        "ephemeralml_enclave_starts_total 2.0",
        "ephemeralml_enclave_exits_total 1.0",
        "ephemeralml_enclave_restarts_total 1.0",
        "ephemeralml_enclave_last_exit_code 3.0",
        'ephemeralml_relay_errors_total{code="L4_refused"} 0.0',
        'ephemeralml_relay_errors_total{code="upstream"} 0.0',
    ):
        assert line in lines, lines


def test_other_requests(tmp_path: Path) -> None:
    port = _closed_port()
    got = _serve(
        [Endpoint.tcp("127.0.0.1", port)],
        get("/nope"),
        b"POST /readyz HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
    )
    assert got == [(404, b"not found\n"), (405, b"GET only\n")]
