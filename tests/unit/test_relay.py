"""The blind relay, end to end on loopback TCP, and its command line.

Each test runs its own small upstream servers on 127.0.0.1:0 and a relay in front of
them, is bounded by an asyncio timeout, and stops everything it started.

Longer than 600 lines on purpose: one test per check or attack, each asserting its exact
error, reads better in one file than spread over several.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import signal
import socket
import struct
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ephemeralml._edge import host_main
from ephemeralml.common._errors import ConfigError
from ephemeralml.host import _cli
from ephemeralml.mock._profiles import host_profile
from ephemeralml.runtime import Endpoint, Relay, RelayConfig
from ephemeralml.runtime._relay import CHUNK_BYTES

T = TypeVar("T")
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run(coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
    """Every test is bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


# -- helpers ---------------------------------------------------------------------


class Upstream:
    """A stand-in enclave on 127.0.0.1: ``handler`` runs for each connection.

    On exit it stops listening and cancels handlers still running, so no test
    leaves a task behind.
    """

    def __init__(self, handler: Handler, port: int = 0) -> None:
        self._handler = handler
        self._port = port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.connections = 0

    @property
    def endpoint(self) -> Endpoint:
        assert self._server is not None
        return Endpoint.tcp("127.0.0.1", self._server.sockets[0].getsockname()[1])

    async def _run(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handler(r, w)
        except (asyncio.CancelledError, ConnectionError):
            pass  # a test helper ending; Python 3.11 would report a cancelled handler
        finally:
            self._tasks.discard(task)
            w.transport.abort()

    async def __aenter__(self) -> Upstream:
        self._server = await asyncio.start_server(self._run, "127.0.0.1", self._port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.sleep(0)
        await self._server.wait_closed()


async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while data := await r.read(65536):
        w.write(data)
        await w.drain()
    w.write_eof()
    await w.drain()
    await r.read()  # wait for the relay to close


@contextlib.asynccontextmanager
async def relay_to(*upstreams: Endpoint, **limits: Any) -> AsyncIterator[Relay]:
    """A relay in stream mode unless told otherwise: these tests move arbitrary bytes;
    framed mode's deadlines and pools are tested in test_limits.py."""
    limits.setdefault("framed", False)
    config = RelayConfig(Endpoint.parse("127.0.0.1:0"), tuple(upstreams), **limits)
    async with Relay(config) as relay:
        yield relay


async def dial(relay: Relay) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", relay.bound.port)


async def read_until_closed(r: asyncio.StreamReader) -> bytes:
    """Everything up to EOF; a reset also counts as closed."""
    chunks = []
    try:
        while data := await r.read(65536):
            chunks.append(data)
    except ConnectionError:
        pass
    return b"".join(chunks)


async def exchange(relay: Relay, payload: bytes) -> bytes:
    """Send ``payload`` and EOF while reading; return everything read until EOF."""
    r, w = await dial(relay)

    async def send() -> None:
        w.write(payload)
        await w.drain()
        w.write_eof()

    sender = asyncio.create_task(send())
    received = await read_until_closed(r)
    await sender
    w.close()
    return received


async def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


@contextlib.contextmanager
def unanswering_endpoint() -> Iterator[Endpoint]:
    """A TCP endpoint whose accept queue is full: connect() hangs (SYNs are dropped)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        try:
            for f in fillers:
                f.setblocking(False)
                f.connect_ex(("127.0.0.1", port))
            yield Endpoint.tcp("127.0.0.1", port)
        finally:
            for f in fillers:
                f.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- bytes, exactly ------------------------------------------------------------


def test_relays_one_mib_exactly_both_ways_and_logs_no_payload(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="ephemeralml.host")
    marker = b"PLAINTEXT-MARKER-4f1c"
    payload = marker + os.urandom(1024 * 1024 - len(marker))

    async def scenario() -> None:
        async with Upstream(echo) as up, relay_to(up.endpoint) as relay:
            received = await exchange(relay, payload)
            assert len(received) == len(payload)
            assert sha(received) == sha(payload)
            await wait_until(lambda: relay.stats.active == 0)
            stats = relay.stats
            assert (stats.total, stats.bytes_up, stats.bytes_down) == (1, 2**20, 2**20)

    run(scenario())
    assert "conn 1 closed (done): 1048576 B up, 1048576 B down" in caplog.text
    for text in (marker.decode(), payload[len(marker) : len(marker) + 16].hex()):
        assert text not in caplog.text


def test_many_concurrent_connections_each_get_their_own_bytes() -> None:
    n = 200
    payloads = [os.urandom(1024 + 331 * i) for i in range(n)]

    async def scenario() -> None:
        async with Upstream(echo) as up, relay_to(up.endpoint) as relay:
            received = await asyncio.gather(*(exchange(relay, p) for p in payloads))
            assert [sha(r) for r in received] == [sha(p) for p in payloads]
            await wait_until(lambda: relay.stats.active == 0)
            assert relay.stats.total == n
            assert relay.stats.bytes_up == relay.stats.bytes_down == sum(map(len, payloads))

    run(scenario(), timeout=30)


# -- backpressure ----------------------------------------------------------------


def test_backpressure_a_stalled_reader_throttles_the_writer_memory_stays_bounded() -> None:
    # The upstream reads nothing until released. A relay that reads without
    # draining would take in everything the client sends (64 MiB) and hold it;
    # this one stops reading once the kernel buffers are full.
    target = 64 * 2**20
    release = asyncio.Event()
    got: list[str] = []

    async def slow_sink(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await release.wait()
        got.append(sha(await r.read()))

    async def scenario() -> None:
        async with Upstream(slow_sink) as up, relay_to(up.endpoint) as relay:
            _r, w = await dial(relay)
            chunk = os.urandom(CHUNK_BYTES)
            sent = 0
            tracemalloc.start()
            try:
                baseline = tracemalloc.get_traced_memory()[0]
                while sent < target:
                    w.write(chunk)
                    sent += len(chunk)
                    try:
                        await asyncio.wait_for(w.drain(), 0.5)
                    except TimeoutError:
                        break  # throttled: what we wanted to see
                grown = tracemalloc.get_traced_memory()[0] - baseline
            finally:
                tracemalloc.stop()
            assert sent < target, "the client was never throttled"
            # Relay, client and upstream buffers together, all in this process.
            assert grown < 4 * 2**20, f"user-space buffers grew by {grown} bytes"
            first = relay.stats.bytes_up
            await asyncio.sleep(0.2)
            assert relay.stats.bytes_up == first, "the relay kept reading from the client"

            # Released, everything arrives, nothing was dropped.
            release.set()
            await w.drain()
            w.write_eof()
            await wait_until(lambda: bool(got), timeout=10)
            assert got == [sha(chunk * (sent // len(chunk)))]
            w.close()

    run(scenario(), timeout=30)


# -- half-close ---------------------------------------------------------------------


def test_half_close_client_eof_then_upstream_still_replies() -> None:
    async def digest_then_reply(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        data = await r.read()  # until the client's EOF arrives through the relay
        await asyncio.sleep(0.05)
        w.write(f"{len(data)} {sha(data)}".encode())
        await w.drain()
        w.write_eof()
        await r.read()

    payload = os.urandom(300_000)

    async def scenario() -> None:
        async with Upstream(digest_then_reply) as up, relay_to(up.endpoint) as relay:
            r, w = await dial(relay)
            w.write(payload)
            await w.drain()
            w.write_eof()
            reply = await asyncio.wait_for(read_until_closed(r), 5)
            assert reply == f"{len(payload)} {sha(payload)}".encode()
            w.close()
            await wait_until(lambda: relay.stats.active == 0)

    run(scenario())


def test_half_close_upstream_eof_then_client_still_sends() -> None:
    received: asyncio.Future[bytes] | None = None

    async def greet_then_listen(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"hello")
        await w.drain()
        w.write_eof()
        data = await r.read()
        assert received is not None
        received.set_result(data)

    payload = os.urandom(200_000)

    async def scenario() -> None:
        nonlocal received
        received = asyncio.get_running_loop().create_future()
        async with Upstream(greet_then_listen) as up, relay_to(up.endpoint) as relay:
            r, w = await dial(relay)
            assert await asyncio.wait_for(r.read(), 5) == b"hello"  # up to the EOF
            w.write(payload)
            await w.drain()
            w.write_eof()
            assert sha(await asyncio.wait_for(received, 5)) == sha(payload)
            await wait_until(lambda: relay.stats.active == 0)
            assert relay.stats.bytes_up == len(payload)
            w.close()

    run(scenario())


# -- upstream failures -------------------------------------------------------------


def test_unreachable_upstream_closes_client_then_relay_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    upstream = Endpoint.tcp("127.0.0.1", port)

    async def scenario() -> None:
        async with relay_to(upstream) as relay:
            r, w = await dial(relay)
            assert await asyncio.wait_for(read_until_closed(r), 5) == b""
            w.close()
            await wait_until(lambda: relay.stats.active == 0)
            assert relay.stats.upstream_failures == 1

            async with Upstream(echo, port=port):
                assert await exchange(relay, b"again") == b"again"
            stats = relay.stats
            assert (stats.total, stats.upstream_failures) == (2, 1)

    run(scenario())
    lines = [rec.getMessage() for rec in caplog.records if "unreachable" in rec.getMessage()]
    assert len(lines) == 1
    assert lines[0].startswith(f"conn 1: upstream {upstream} unreachable (")


def test_slow_upstream_dial_blocks_neither_accepts_nor_other_connections() -> None:
    async def scenario() -> None:
        with unanswering_endpoint() as stuck:
            async with (
                Upstream(echo) as up,
                relay_to(stuck, up.endpoint, connect_timeout_s=1.0) as relay,
            ):
                r1, w1 = await dial(relay)  # goes to the stuck enclave
                t0 = time.monotonic()
                assert await exchange(relay, b"ping") == b"ping"  # goes to the live one
                assert time.monotonic() - t0 < 0.5
                assert relay.stats.upstream_failures == 0  # the first dial still waits
                assert await asyncio.wait_for(read_until_closed(r1), 5) == b""
                assert time.monotonic() - t0 >= 0.5
                assert relay.stats.upstream_failures == 1
                w1.close()

    run(scenario())


def test_a_reset_ends_that_connection_only() -> None:
    async def reset_after_first_read(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read(1)
        # SO_LINGER 0: close() sends RST instead of FIN, an enclave that crashed.
        w.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        w.transport.abort()

    async def scenario() -> None:
        async with (
            Upstream(echo) as good,
            Upstream(reset_after_first_read) as bad,
            relay_to(good.endpoint, bad.endpoint, good.endpoint) as relay,
        ):
            _r1, w1 = await dial(relay)  # -> echo; the client will reset it
            r2, w2 = await dial(relay)  # -> the upstream that resets
            r3, w3 = await dial(relay)  # -> echo; must not notice anything
            w3.write(b"before")
            assert await r3.readexactly(6) == b"before"

            w1.write(os.urandom(100_000))
            w1.transport.abort()
            w2.write(b"x")
            assert await asyncio.wait_for(read_until_closed(r2), 5) == b""
            await wait_until(lambda: relay.stats.active == 1)

            w3.write(b"after")
            assert await r3.readexactly(5) == b"after"
            w3.write_eof()
            assert await read_until_closed(r3) == b""
            w2.close()
            w3.close()

    run(scenario())


# -- limits ------------------------------------------------------------------------


def test_idle_connection_is_closed_after_idle_timeout() -> None:
    async def scenario() -> None:
        async with Upstream(echo) as up, relay_to(up.endpoint, idle_timeout_s=0.3) as relay:
            r, w = await dial(relay)
            t0 = time.monotonic()
            # Traffic keeps it open well past the timeout...
            for _ in range(8):
                await asyncio.sleep(0.1)
                w.write(b"tick")
                assert await r.readexactly(4) == b"tick"
            last_activity = time.monotonic()
            assert last_activity - t0 > 0.6
            # ...silence closes it.
            assert await asyncio.wait_for(read_until_closed(r), 3) == b""
            assert 0.25 <= time.monotonic() - last_activity < 2.0
            await wait_until(lambda: relay.stats.active == 0)
            w.close()

    run(scenario())


def test_beyond_max_connections_new_ones_are_closed_and_counted() -> None:
    async def scenario() -> None:
        async with Upstream(echo) as up, relay_to(up.endpoint, max_connections=2) as relay:
            held = [await dial(relay) for _ in range(2)]
            for r, w in held:
                w.write(b"hi")
                assert await r.readexactly(2) == b"hi"

            r3, w3 = await dial(relay)  # accepted by the kernel, closed by the relay
            assert await asyncio.wait_for(read_until_closed(r3), 3) == b""
            w3.close()
            stats = relay.stats
            assert (stats.active, stats.total, stats.refused) == (2, 2, 1)
            assert up.connections == 2  # the refused one never reached the enclave

            held[0][1].close()
            await wait_until(lambda: relay.stats.active == 1)
            assert await exchange(relay, b"room again") == b"room again"
            held[1][1].close()

    run(scenario())


def test_round_robin_alternates_between_upstreams() -> None:
    def named(name: bytes) -> Handler:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(name)
            await w.drain()
            w.write_eof()
            await r.read()

        return handler

    async def scenario() -> None:
        async with (
            Upstream(named(b"A")) as a,
            Upstream(named(b"B")) as b,
            relay_to(a.endpoint, b.endpoint) as relay,
        ):
            seen = [await exchange(relay, b"") for _ in range(5)]
            assert seen == [b"A", b"B", b"A", b"B", b"A"]

    run(scenario())


def test_close_stops_everything_promptly() -> None:
    release = asyncio.Event()

    async def stalled(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await release.wait()

    async def scenario() -> None:
        with unanswering_endpoint() as stuck:
            async with Upstream(echo) as live, Upstream(stalled) as sink:
                relay = Relay(
                    RelayConfig(
                        Endpoint.parse("127.0.0.1:0"),
                        (live.endpoint, sink.endpoint, stuck),
                    )
                )
                await relay.start()
                serving = asyncio.create_task(relay.serve_forever())
                idle = await dial(relay)  # -> live, then silent
                idle[1].write(b"x")
                assert await idle[0].readexactly(1) == b"x"
                busy = await dial(relay)  # -> sink, pushing into a full pipe
                busy[1].write(os.urandom(8 * 2**20))
                dialling = await dial(relay)  # -> stuck, dial in progress
                await wait_until(lambda: relay.stats.total == 3)

                t0 = time.monotonic()
                async with asyncio.timeout(2):
                    await relay.close()
                assert time.monotonic() - t0 < 1.0
                for r, w in (idle, busy, dialling):
                    assert await asyncio.wait_for(read_until_closed(r), 2) is not None
                    w.transport.abort()
                assert relay.stats.active == 0
                await asyncio.wait_for(serving, 1)  # serve_forever returns after close
                with pytest.raises(ConnectionRefusedError):
                    await dial(relay)
                release.set()

    run(scenario())


def test_config_is_checked_when_built() -> None:
    ep = Endpoint.parse("127.0.0.1:0")
    with pytest.raises(ConfigError, match="at least one enclave"):
        RelayConfig(ep, ())
    with pytest.raises(ConfigError, match=r"^max connections must be an integer of at least 1, got 0$"):
        RelayConfig(ep, (ep,), max_connections=0)
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="idle timeout"):
            RelayConfig(ep, (ep,), idle_timeout_s=bad)
    with pytest.raises(RuntimeError, match="after start"):
        _ = Relay(RelayConfig(ep, (ep,))).bound


# -- the command line ---------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_cli.ENV_LISTEN, raising=False)
    monkeypatch.delenv(_cli.ENV_ENCLAVE, raising=False)


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--listen", "nonsense"], "bad endpoint 'nonsense': expected HOST:PORT"),
        (["--enclave", "vsock:x:1"], "bad endpoint 'vsock:x:1': cid 'x'"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--enclave-cid", "16", "--region", "eu-west-1", "--max-connections", "0"], "max connections must be an integer of at least 1, got 0"),
        (["--max-connections", "many"], "invalid int value: 'many'"),
        (["--enclave-cid", "16", "--region", "eu-west-1", "--idle-timeout", "-1"], "idle timeout must be a positive, finite number of seconds, got -1.0"),
        ([], "which enclave? give --enclave-cid CID (as passed to nitro-cli run-enclave --enclave-cid), --enclave vsock:CID:PORT or $EPHEMERAL_ENCLAVE"),
        (["--enclave-cid", "16", "--enclave", "vsock:16:5005"], "give --enclave or --enclave-cid, not both"),
        (["--enclave-cid", "16", "--region", "moon-1"], "region 'moon-1' is not an AWS region name"),
        (["--mock", "--enclave", "vsock:16:5005"], "--enclave vsock:16:5005: the mock profile uses tcp or unix"),
        (["--mock", "--kms-listen", "vsock:any:7"], "--kms-listen vsock:any:7: the mock profile uses tcp or unix"),
        (["--enclave-cid", "16", "--mock-kms-listen", "127.0.0.1:0"], "--mock-kms-listen: the nitro profile has no local KMS"),
        (["--base-port", "65530"], "the base port must be from 1 to 65526, not 65530"),
    ],
)
def test_cli_bad_flags_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert host_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("ephemeral-host: error: ")
    assert message in err


@pytest.mark.usefixtures("clean_env")
def test_cli_port_in_use_exits_1_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert host_main(["--mock", "--listen", f"127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"ephemeral-host: transport error: cannot listen on tcp:127.0.0.1:{port}: "
        "address already in use\n"
    )


def test_cli_defaults_come_from_mode_then_environment() -> None:
    def config(argv: list[str], env: dict[str, str]) -> _cli.HostConfig:
        return _cli.build_config(_cli._parser().parse_args(argv), env, host_profile)

    aws = {"AWS_REGION": "eu-west-1"}
    prod = config(["--enclave-cid", "16"], aws)
    assert (str(prod.relay.listen), [str(u) for u in prod.relay.upstreams], prod.region) == (
        "tcp:0.0.0.0:5000",
        ["vsock:16:5005"],
        "eu-west-1",
    )
    # Several enclaves: their CIDs, round robin; the region by flag over environment.
    two = config(["--enclave-cid", "16", "--enclave-cid", "17", "--region", "ap-south-1"], aws)
    assert ([str(u) for u in two.relay.upstreams], two.region) == (
        ["vsock:16:5005", "vsock:17:5005"], "ap-south-1"
    )  # fmt: skip
    mock = config(["--mock"], {})
    assert mock.profile.name == "mock"
    assert (str(mock.relay.listen), [str(u) for u in mock.relay.upstreams]) == (
        "tcp:127.0.0.1:5000",
        ["tcp:127.0.0.1:5005"],
    )
    # One base port moves every port, by flag or environment (flag first).
    for argv, env in ((["--mock", "--base-port", "6100"], {}), (["--mock"], {"EPHEMERALML_BASE_PORT": "6100"})):
        moved = config(argv, env)
        assert [str(e) for e in (moved.relay.listen, *moved.relay.upstreams, moved.services_listen, moved.kms_listen, moved.profile.local_kms)] == [
            "tcp:127.0.0.1:6100", "tcp:127.0.0.1:6105", "tcp:127.0.0.1:6106", "tcp:127.0.0.1:6107", "tcp:127.0.0.1:6109"
        ]  # fmt: skip
    nitro = config(["--base-port", "7000", "--enclave-cid", "16"], aws)
    assert [str(e) for e in (nitro.relay.listen, *nitro.relay.upstreams, nitro.services_listen, nitro.kms_listen)] == [
        "tcp:0.0.0.0:7000", "vsock:16:7005", "vsock:any:7006", "vsock:any:7007"
    ]  # fmt: skip
    with pytest.raises(ConfigError) as info:
        config(["--enclave-cid", "16"], {"EPHEMERALML_BASE_PORT": "50o0", **aws})
    assert str(info.value) == "EPHEMERALML_BASE_PORT='50o0' is not a port number"
    # The program itself, without the edge, has no mock mode.
    with pytest.raises(ConfigError) as info:
        _cli.build_config(_cli._parser().parse_args(["--mock"]), {})
    assert str(info.value) == "this installation has no mock mode (start it as ephemeral-host --mock)"
    env = {_cli.ENV_LISTEN: "127.0.0.1:7000", _cli.ENV_ENCLAVE: "vsock:16:5005, vsock:17:5005", **aws}
    from_env = config([], env).relay
    assert str(from_env.listen) == "tcp:127.0.0.1:7000"
    assert [str(u) for u in from_env.upstreams] == ["vsock:16:5005", "vsock:17:5005"]
    flags = config(["--enclave", "vsock:18:1", "--enclave", "tcp:h:2", "--listen", "h:3"], env)
    assert [str(u) for u in flags.relay.upstreams] == ["vsock:18:1", "tcp:h:2"]
    assert str(flags.relay.listen) == "tcp:h:3"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_as_a_process_relays_then_stops_cleanly_on_signal(
    sig: signal.Signals, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPHEMERAL")}

    async def scenario() -> None:
        async with Upstream(echo) as up:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "ephemeralml._edge",
                "host",
                "--mock",
                "--listen",
                "127.0.0.1:0",
                "--enclave",
                str(up.endpoint),
                # Mock mode also starts the enclave's services and a local KMS:
                # kernel-chosen ports and a private state folder.
                "--home",
                str(tmp_path),
                "--services-listen",
                "127.0.0.1:0",
                "--kms-listen",
                "127.0.0.1:0",
                "--mock-kms-listen",
                "127.0.0.1:0",
                "--health-listen",
                "127.0.0.1:0",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
            try:
                assert proc.stderr is not None
                # The service lines come first; the relay's line is last.
                line = ""
                while "relaying" not in line:
                    line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
                    assert line, "host exited early"
                m = re.fullmatch(
                    r"ephemeral-host: relaying tcp:127\.0\.0\.1:(\d+) -> "
                    + re.escape(str(up.endpoint))
                    + r" \(mock mode: loopback TCP instead of vsock\)\n",
                    line,
                )
                assert m, line
                r, w = await asyncio.open_connection("127.0.0.1", int(m.group(1)))
                w.write(b"through a real process")
                w.write_eof()
                assert await asyncio.wait_for(read_until_closed(r), 5) == (
                    b"through a real process"
                )
                w.close()

                proc.send_signal(sig)
                rest = await asyncio.wait_for(proc.stderr.read(), 5)
                assert await asyncio.wait_for(proc.wait(), 5) == 0
                assert f"stopped ({sig.name})".encode() in rest
                assert b"Traceback" not in rest
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()

    run(scenario(), timeout=30)
