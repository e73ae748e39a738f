"""Limits before authentication (protocol.md §7.1, L1-L6; issue 7 findings 2 and 3).

Real loopback sockets: the real :class:`EnclaveServer` (mock NSM, a stand-in model),
the real :class:`Relay` in framed mode in front of a stand-in enclave, and the real
blocking client. Limits are configured short so each test runs in about a second;
every test is bounded by an asyncio timeout and stops everything it started.
Hostile connections come from 127.0.0.2 and up (all of 127/8 is loopback on Linux),
the legitimate client from 127.0.0.1, so per-source limits (L4) can tell them apart.

Longer than 600 lines on purpose: one test per check or attack, each asserting its exact
error, reads better in one file than spread over several.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import resource
import socket
import struct
import threading
from collections.abc import AsyncIterator, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import numpy as np
import pytest

from ephemeralml.client._api import Session, connect
from ephemeralml.client._policy import ClientPolicy
from ephemeralml.common._cbor import encode
from ephemeralml.common._errors import ConfigError, InferenceError, TransportError
from ephemeralml.common._frame import FrameClock, FrameDecoder, encode_frame
from ephemeralml.common._messages import EmbedRequest, ErrorFrame, decode_message
from ephemeralml.common._session import ClientSession, ResponseReceived
from ephemeralml.enclave._loader import LoadedModel
from ephemeralml.enclave._server import EnclaveServer, ServerConfig
from ephemeralml.host import _cli
from ephemeralml.mock._profiles import host_profile
from ephemeralml.runtime import Endpoint, Relay, RelayConfig
from tests.pair import KEY_RELEASE, MODEL, MODEL_DIGEST, MockWorld

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Every test is bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture(autouse=True, scope="module")
def _enough_file_descriptors() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> MockWorld:
    return MockWorld.create(tmp_path_factory.mktemp("nsm"))


# -- helpers ---------------------------------------------------------------------


class StallingEmbedder:
    """A stand-in model: 4-dim vectors; blocks while ``gate`` is clear."""

    model_id = MODEL

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.gate.wait(20)
        return np.ones((len(texts), 4), dtype=np.float32) / 2

    def run(self, texts: Sequence[str], truncate: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
        return self.embed(texts), np.zeros(len(texts), dtype=np.bool_)


def loaded(embedder: StallingEmbedder) -> LoadedModel:
    return LoadedModel(
        model_id=MODEL,
        manifest_digest=MODEL_DIGEST,
        key_release_digest=KEY_RELEASE,
        embedder=cast(Any, embedder),
        timings=cast(Any, None),
    )


@contextlib.asynccontextmanager
async def enclave(
    world: MockWorld, embedder: StallingEmbedder | None = None, **limits: Any
) -> AsyncIterator[EnclaveServer]:
    server = EnclaveServer(
        ServerConfig(Endpoint.parse("127.0.0.1:0"), **limits),
        nsm=world.nsm,
        identity=world.identity,
        models={MODEL: loaded(embedder or StallingEmbedder())},
    )
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def dial(port: int, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, Any]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def error_frame_then_close(r: asyncio.StreamReader) -> ErrorFrame:
    """The one error frame the peer sends before it closes (bounded wait)."""
    decoder = FrameDecoder()
    received = bytearray()
    async with asyncio.timeout(10):
        with contextlib.suppress(ConnectionError):
            while data := await r.read(65536):
                received += data
    decoder.receive_data(bytes(received))
    body = decoder.next_frame()
    assert body is not None, f"no whole frame before close: {bytes(received)!r}"
    msg = decode_message(body)
    assert isinstance(msg, ErrorFrame)
    assert decoder.next_frame() is None
    return msg


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def hello_frame(world: MockWorld) -> bytes:
    return ClientSession(world.policy).hello()


def policy(world: MockWorld) -> ClientPolicy:
    return ClientPolicy(world.policy)


# -- the frame clock ---------------------------------------------------------------


def test_frame_clock_finds_frame_boundaries_in_any_chunking() -> None:
    frames = [encode_frame(b"\xa0" * n) for n in (1, 300, 70_000)]
    stream = b"".join(frames) + b"\x00\x00"  # and the start of a fourth header
    for step in (1, 3, 4, 5, 999, len(stream)):
        clock = FrameClock()
        seen = []
        for i in range(0, len(stream), step):
            clock.feed(stream[i : i + step], float(i))
            seen.append(clock.frames)
        assert clock.frames == 3
        assert clock.in_frame and clock.partial == 2
        # The fourth frame started with the byte at offset len(stream) - 2.
        assert clock.started_at == float((len(stream) - 2) // step * step)
    clock = FrameClock()
    clock.feed(struct.pack(">I", 0), 1.0)  # an empty frame is a whole frame here (F2 is not ours)
    assert (clock.frames, clock.in_frame, clock.partial) == (1, False, 0)


# -- the enclave ------------------------------------------------------------------


def test_enclave_idle_connections_do_not_lock_out_a_client(world: MockWorld) -> None:
    # Before the fix, max_sessions (here 8) counted connections from accept: eight
    # silent connections locked everyone out. Now they wait in the pending pool
    # (L3), where the oldest is evicted to make room.
    async def scenario() -> None:
        async with enclave(world, max_sessions=8, max_pending=16) as server:
            assert server.bound is not None
            port = server.bound.port
            idle = [await dial(port, "127.0.0.2") for _ in range(200)]
            await wait_until(lambda: server.stats["evicted"] >= 200 - 16)
            session = await asyncio.to_thread(
                connect, f"127.0.0.1:{port}", policy=policy(world), timeout=10
            )
            try:
                [out] = await asyncio.to_thread(session.embed, ["hello"], model=MODEL)
                assert out.vectors.shape == (1, 4)
                assert out.receipt.receipt.seq == 0
            finally:
                session.close()
            assert server.stats["established"] <= 1
            # The evicted hear why (L3), in an error frame.
            msg = await error_frame_then_close(idle[0][0])
            assert (msg.code, msg.message) == (
                "limit",
                "L3 pending pool full: 16 connections in their handshake; the oldest is evicted",
            )
            for _, w in idle:
                w.transport.abort()

    run(scenario())


def test_enclave_cuts_a_dripping_peer_at_the_handshake_deadline(world: MockWorld) -> None:
    # Before the fix every byte restarted the idle timer: one byte every 0.1 s kept
    # the slot for ever. Now the handshake has one deadline from accept (L1).
    async def scenario() -> None:
        async with enclave(world, handshake_timeout_s=0.5, frame_timeout_s=30) as server:
            assert server.bound is not None
            r, w = await dial(server.bound.port)
            hello = hello_frame(world)

            async def drip() -> None:
                with contextlib.suppress(ConnectionError):
                    for b in hello:
                        w.write(bytes([b]))
                        await w.drain()
                        await asyncio.sleep(0.1)

            dripper = asyncio.create_task(drip())
            msg = await error_frame_then_close(r)
            assert (msg.code, msg.message) == (
                "limit",
                "L1 handshake deadline of 0.5 s passed (hello to open)",
            )
            assert not dripper.done()  # cut long before the hello was complete
            dripper.cancel()
            w.transport.abort()
            assert server.stats["deadline_cuts"] == 1

    run(scenario())


def test_enclave_cuts_a_frame_started_but_not_finished(world: MockWorld) -> None:
    async def scenario() -> None:
        async with enclave(world, handshake_timeout_s=30, frame_timeout_s=0.3) as server:
            assert server.bound is not None
            r, w = await dial(server.bound.port)
            hello = hello_frame(world)
            w.write(hello[:10])  # header and six bytes of the body, then nothing
            msg = await error_frame_then_close(r)
            assert (msg.code, msg.message) == (
                "limit",
                "L2 frame deadline of 0.3 s passed (a frame started but not finished)",
            )
            w.transport.abort()

    run(scenario())


def test_enclave_stops_reading_a_session_past_its_memory_bound(world: MockWorld) -> None:
    # L5: twenty pipelined requests of ~16 KiB each, a bound of 64 KiB. Before the
    # fix all twenty were taken in at once (up to 64 outstanding of 2 MiB each).
    embedder = StallingEmbedder()
    embedder.gate.clear()

    async def scenario() -> None:
        async with enclave(world, embedder, max_session_bytes=64 * 1024) as server:
            assert server.bound is not None
            session = await asyncio.to_thread(
                connect, f"127.0.0.1:{server.bound.port}", policy=policy(world), timeout=10
            )
            try:
                await asyncio.to_thread(pipeline, session, 20, embedder, server)
            finally:
                session.close()

    def pipeline(
        session: Session, n: int, embedder: StallingEmbedder, server: EnclaveServer
    ) -> None:
        proto = session._proto
        sock = session._sock
        sock.settimeout(10)
        frames = b"".join(
            proto.send_request(EmbedRequest(MODEL, (chr(0x61 + i) * 16_000,)))[1] for i in range(n)
        )
        sender = threading.Thread(target=sock.sendall, args=(frames,), daemon=True)
        sender.start()
        # Give the enclave time to take in what it will take in (it cannot answer).
        threading.Event().wait(0.5)
        taken = server.stats["requests"]
        # 64 KiB of texts is three of these requests; the check comes before each
        # read of up to 64 KiB (four more at most), never all twenty.
        assert 1 <= taken <= 8, taken
        embedder.gate.set()
        got: set[int] = set()
        while len(got) < n:
            event = proto.next_event(now=datetime.now(UTC))
            if event is None:
                proto.receive_data(sock.recv(65536))
                continue
            assert isinstance(event, ResponseReceived)
            got.add(event.seq)
        assert got == set(range(n))
        assert server.stats["requests"] == n
        sender.join(5)

    run(scenario())


def test_enclave_limits_are_checked_when_built() -> None:
    ep = Endpoint.parse("127.0.0.1:0")
    for field, bad, message in (
        ("max_pending", 0, "max pending must be an integer of at least 1, got 0"),
        ("max_session_bytes", True, "max session bytes must be an integer of at least 1, got True"),
        ("handshake_timeout_s", math.nan, "handshake timeout must be a positive, finite number of seconds, got nan"),
        ("frame_timeout_s", math.inf, "frame timeout must be a positive, finite number of seconds, got inf"),
        ("idle_timeout_s", -1.0, "idle timeout must be a positive, finite number of seconds, got -1.0"),
    ):
        wrong: dict[str, Any] = {field: bad}  # deliberately invalid values
        with pytest.raises(ConfigError) as info:
            ServerConfig(ep, **wrong)
        assert str(info.value) == message


# -- the relay, framed --------------------------------------------------------------


async def fake_enclave(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Answers the first frame (hello) with one frame (attest), takes the second
    (open) silently, then echoes every later frame: what the relay sees of a session."""
    decoder = FrameDecoder()
    n = 0
    with contextlib.suppress(ConnectionError):
        while data := await r.read(65536):
            decoder.receive_data(data)
            while (body := decoder.next_frame()) is not None:
                n += 1
                if n == 1:
                    w.write(encode_frame(encode({"t": "attest"})))
                elif n > 2:
                    w.write(encode_frame(body))
            await w.drain()
    w.transport.abort()


@contextlib.asynccontextmanager
async def framed_relay(**limits: Any) -> AsyncIterator[Relay]:
    server = await asyncio.start_server(fake_enclave, "127.0.0.1", 0)
    up = Endpoint.tcp("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        async with Relay(RelayConfig(Endpoint.parse("127.0.0.1:0"), (up,), **limits)) as relay:
            yield relay
    finally:
        server.close()


async def handshake(relay: Relay, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, Any]:
    """hello -> attest, then open: the relay's L1 is met."""
    r, w = await dial(relay.bound.port, source)
    w.write(encode_frame(encode({"t": "hello"})))
    attest = encode_frame(encode({"t": "attest"}))
    assert await asyncio.wait_for(r.readexactly(len(attest)), 5) == attest
    w.write(encode_frame(encode({"t": "open"})))
    await w.drain()
    return r, w


async def request(r: asyncio.StreamReader, w: Any, body: bytes) -> None:
    frame = encode_frame(body)
    w.write(frame)
    assert await asyncio.wait_for(r.readexactly(len(frame)), 5) == frame


def test_relay_a_thousand_idle_connections_from_one_source_do_not_lock_out_a_client() -> None:
    # Before the fix the relay had one pool counted from accept and no per-source
    # limit: with max_connections 64 here, 1000 silent connections from one address
    # took every slot. Now that address gets its share of handshakes (L4) in the
    # pending pool (L3), and the established pool stays free.
    async def scenario() -> None:
        async with framed_relay(
            max_connections=64, max_pending=32, max_pending_per_source=16
        ) as relay:
            hostile = []
            for _ in range(1000):
                hostile.append(await dial(relay.bound.port, "127.0.0.2"))
            await wait_until(lambda: relay.stats.refused == 1000 - 16)
            stats = relay.stats
            assert (stats.pending, stats.total, stats.active) == (16, 16, 16)
            r, w = await handshake(relay)
            await request(r, w, b"\xa1ar\x01")
            assert (relay.stats.pending, relay.stats.active) == (16, 17)
            # A refused connection hears why (L4).
            msg = await error_frame_then_close(hostile[-1][0])
            assert (msg.code, msg.message) == (
                "limit",
                "host relay: L4 per-source limit: 16 handshakes in progress from 127.0.0.2, "
                "the limit is 16",
            )
            w.close()
            for _, hw in hostile:
                hw.transport.abort()

    run(scenario(), timeout=60)


def test_relay_per_source_limits_and_refusal_messages() -> None:
    async def scenario() -> None:
        async with framed_relay(max_per_source=3, max_pending_per_source=2) as relay:
            port = relay.bound.port
            established = [await handshake(relay, "127.0.0.3")]
            pending = [await dial(port, "127.0.0.3") for _ in range(2)]
            await wait_until(lambda: relay.stats.active == 3)
            r, w = await dial(port, "127.0.0.3")
            msg = await error_frame_then_close(r)
            assert msg.message == (
                "host relay: L4 per-source limit: 3 connections from 127.0.0.3, the limit is 3"
            )
            w.close()
            established[0][1].close()
            await wait_until(lambda: relay.stats.active == 2)
            r, w = await dial(port, "127.0.0.3")
            msg = await error_frame_then_close(r)
            assert msg.message == (
                "host relay: L4 per-source limit: 2 handshakes in progress from 127.0.0.3, "
                "the limit is 2"
            )
            w.close()
            # Another address is not affected.
            r, w = await handshake(relay, "127.0.0.4")
            await request(r, w, b"\xa1ar\x02")
            w.close()
            for _, pw in pending:
                pw.close()

    run(scenario())


def test_relay_evicts_the_oldest_handshake_when_the_pending_pool_is_full() -> None:
    async def scenario() -> None:
        async with framed_relay(max_pending=4) as relay:
            port = relay.bound.port
            idle = [await dial(port, f"127.0.0.{10 + i}") for i in range(4)]
            await wait_until(lambda: relay.stats.pending == 4)
            r, w = await handshake(relay)  # evicts the oldest
            msg = await error_frame_then_close(idle[0][0])
            assert msg.message == (
                "host relay: L3 pending pool full: 4 connections in their handshake; "
                "the oldest is evicted"
            )
            await request(r, w, b"\xa1ar\x03")
            await wait_until(lambda: relay.stats.active == 4)
            stats = relay.stats
            assert (stats.evicted, stats.pending, stats.active) == (1, 3, 4)
            w.close()
            for _, iw in idle:
                iw.transport.abort()

    run(scenario())


def test_relay_cuts_a_dripping_peer_at_the_handshake_deadline() -> None:
    async def scenario() -> None:
        async with framed_relay(handshake_timeout_s=0.5) as relay:
            r, w = await dial(relay.bound.port)
            hello = encode_frame(encode({"t": "hello", "pad": "x" * 40}))

            async def drip() -> None:
                with contextlib.suppress(ConnectionError):
                    for b in hello:
                        w.write(bytes([b]))
                        await w.drain()
                        await asyncio.sleep(0.1)

            dripper = asyncio.create_task(drip())
            msg = await error_frame_then_close(r)
            assert (msg.code, msg.message) == (
                "limit",
                "host relay: L1 handshake deadline of 0.5 s passed (hello to open)",
            )
            assert not dripper.done()
            dripper.cancel()
            w.transport.abort()
            assert (relay.stats.deadline_cuts, relay.stats.pending) == (1, 0)

    run(scenario())


def test_relay_handshake_is_done_after_hello_attest_open_then_no_handshake_deadline() -> None:
    async def scenario() -> None:
        async with framed_relay(handshake_timeout_s=0.3) as relay:
            r, w = await handshake(relay)
            await wait_until(lambda: relay.stats.pending == 0)
            await asyncio.sleep(0.6)  # past the handshake deadline: established now
            await request(r, w, b"\xa1ar\x04")
            assert relay.stats.deadline_cuts == 0
            w.close()

    run(scenario())


def test_relay_cuts_a_frame_started_but_not_finished() -> None:
    async def scenario() -> None:
        async with framed_relay(frame_timeout_s=0.3) as relay:
            r, w = await handshake(relay)
            w.write(struct.pack(">I", 100) + b"\xa1" * 10)  # ten of a hundred bytes
            msg = await error_frame_then_close(r)
            assert (msg.code, msg.message) == (
                "limit",
                "host relay: L2 frame deadline of 0.3 s passed "
                "(a frame from the client started but not finished)",
            )
            w.transport.abort()
            assert relay.stats.deadline_cuts == 1

    run(scenario())


def test_relay_cuts_a_client_that_stops_reading_a_frame() -> None:
    # L2 downstream: a client that takes a frame's first bytes and then reads no more
    # would pin the relay's buffers and the enclave's answer; the frame's deadline
    # runs until it has drained towards the client.
    async def scenario() -> None:
        async with framed_relay(frame_timeout_s=0.3) as relay:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", relay.bound.port))
            r, w = await asyncio.open_connection(sock=s)
            w.write(encode_frame(encode({"t": "hello"})))
            attest = encode_frame(encode({"t": "attest"}))
            assert await asyncio.wait_for(r.readexactly(len(attest)), 5) == attest
            w.write(encode_frame(encode({"t": "open"})))
            # Echoed: 8 MB towards a client that does not read (more than the
            # kernel buffers hold), so the relay cannot finish relaying them.
            w.write(encode_frame(b"\xa1" * 2_000_000) * 4)
            await wait_until(lambda: relay.stats.deadline_cuts == 1, timeout=10)
            await wait_until(lambda: relay.stats.active == 0)
            # Mid-frame towards the client: no error frame can be put in; an abort.
            w.transport.abort()

    run(scenario())


def test_relay_stream_mode_has_no_frame_deadlines() -> None:
    # The enclave's KMS forwarder relays CONNECT and TLS: no frames, so no handshake or frame deadline.
    async def scenario() -> None:
        async with framed_relay(
            framed=False, handshake_timeout_s=0.2, frame_timeout_s=0.2
        ) as relay:
            _r, w = await dial(relay.bound.port)
            w.write(struct.pack(">I", 100) + b"\xa1")
            await asyncio.sleep(0.5)
            assert (relay.stats.active, relay.stats.deadline_cuts) == (1, 0)
            w.close()

    run(scenario())


def test_relay_limits_are_checked_when_built() -> None:
    ep = Endpoint.parse("127.0.0.1:0")
    for field, bad, message in (
        ("max_pending", 0, "max pending must be an integer of at least 1, got 0"),
        ("max_per_source", 1.5, "max per source must be an integer of at least 1, got 1.5"),
        ("max_pending_per_source", -1, "max pending per source must be an integer of at least 1, got -1"),
        ("handshake_timeout_s", math.nan, "handshake timeout must be a positive, finite number of seconds, got nan"),
        ("frame_timeout_s", math.inf, "frame timeout must be a positive, finite number of seconds, got inf"),
        ("framed", 1, "framed must be true or false, got 1"),
    ):
        wrong: dict[str, Any] = {field: bad}  # deliberately invalid values
        with pytest.raises(ConfigError) as info:
            RelayConfig(ep, (ep,), **wrong)
        assert str(info.value) == message


def test_host_cli_flags_reach_the_relay_config() -> None:
    args = _cli._parser().parse_args(
        ["--mock", "--max-pending", "7", "--max-per-source", "9", "--max-pending-per-source",
         "3", "--handshake-timeout", "2.5", "--frame-timeout", "4"]
    )  # fmt: skip
    relay = _cli.build_config(args, {}, host_profile).relay
    assert (relay.max_pending, relay.max_per_source, relay.max_pending_per_source) == (7, 9, 3)
    assert (relay.handshake_timeout_s, relay.frame_timeout_s, relay.framed) == (2.5, 4.0, True)
    with pytest.raises(ConfigError, match=r"^frame timeout must be a positive, finite number of seconds, got 0\.0$"):
        _cli.build_config(_cli._parser().parse_args(["--frame-timeout", "0", "--enclave-cid", "16"]), {"AWS_REGION": "eu-west-1"})


# -- the client -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def dripping_relay(target: int, *, drip_after_frames: int) -> AsyncIterator[int]:
    """A hostile relay: passes the client's bytes, and the enclave's first
    ``drip_after_frames`` frames; after that it drips one byte a second."""

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", target)

        async def up() -> None:
            while data := await cr.read(65536):
                uw.write(data)
                await uw.drain()

        async def down() -> None:
            clock = FrameClock()
            while data := await ur.read(65536):
                for i in range(len(data)):
                    if clock.frames < drip_after_frames:
                        cw.write(data[i : i + 1])
                    else:
                        await asyncio.sleep(1.0)
                        cw.write(data[i : i + 1])
                    clock.feed(data[i : i + 1], 0.0)
                    await cw.drain()

        try:
            await asyncio.gather(up(), down())
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            cw.transport.abort()
            uw.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def test_client_request_deadline_fires_against_a_relay_dripping_one_byte_a_second(
    world: MockWorld,
) -> None:
    # Before the fix the timeout applied to each read: a byte a second kept the
    # request waiting for as long as the response took to drip (minutes).
    async def scenario() -> None:
        async with enclave(world) as server:
            assert server.bound is not None
            async with dripping_relay(server.bound.port, drip_after_frames=1) as port:
                address = f"127.0.0.1:{port}"
                session = await asyncio.to_thread(
                    connect, address, policy=policy(world), timeout=2.5
                )
                try:
                    with pytest.raises(TransportError) as info:
                        await asyncio.to_thread(session.embed, ["hello"], model=MODEL)
                finally:
                    session.close()
                assert str(info.value) == (
                    f"request deadline of 2.5 s passed (no verified answer from {address})"
                )

    run(scenario())


def test_client_connect_deadline_fires_against_a_relay_dripping_the_attestation(
    world: MockWorld,
) -> None:
    async def scenario() -> None:
        async with enclave(world, handshake_timeout_s=60) as server:
            assert server.bound is not None
            async with dripping_relay(server.bound.port, drip_after_frames=0) as port:
                address = f"127.0.0.1:{port}"
                with pytest.raises(TransportError) as info:
                    await asyncio.to_thread(connect, address, policy=policy(world), timeout=1.5)
                assert str(info.value) == (
                    f"connect deadline of 1.5 s passed (no attestation from {address})"
                )

    run(scenario())


@pytest.mark.parametrize(
    ("timeout", "message"),
    [
        (0, "timeout must be a positive, finite number of seconds, got 0"),
        (-1.0, "timeout must be a positive, finite number of seconds, got -1.0"),
        (math.nan, "timeout must be a positive, finite number of seconds, got nan"),
        (math.inf, "timeout must be a positive, finite number of seconds, got inf"),
        ("5", "timeout must be a number of seconds, got '5'"),
    ],
)
def test_client_refuses_a_timeout_that_is_no_deadline(
    world: MockWorld, timeout: Any, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        connect("127.0.0.1:1", policy=policy(world), timeout=timeout)
    assert str(info.value) == message


def test_client_request_refused_by_the_enclave_is_one_clear_error(world: MockWorld) -> None:
    # Not a limit: the baseline that the tests above differ from (the same stand-in
    # enclave answers an unknown model with a sealed error, the session goes on).
    async def scenario() -> None:
        async with enclave(world) as server:
            assert server.bound is not None
            session = await asyncio.to_thread(
                connect, f"127.0.0.1:{server.bound.port}", policy=policy(world), timeout=5
            )
            try:
                with pytest.raises(InferenceError) as info:
                    await asyncio.to_thread(session.embed, ["x"], model="nope")
                assert str(info.value).startswith("enclave refused the request: unknown model")
            finally:
                session.close()

    run(scenario())


def test_enclave_cli_flags_reach_the_server_config() -> None:
    from ephemeralml.enclave import _cli as enclave_cli
    from ephemeralml.mock._profiles import enclave_profile as enclave_mock

    args = enclave_cli._parser().parse_args(
        ["--mock", "--max-pending", "5", "--handshake-timeout", "2", "--frame-timeout", "3",
         "--max-session-bytes", "1000"]
    )  # fmt: skip
    server = enclave_cli._config(args, enclave_mock).server_config()
    assert (server.max_pending, server.handshake_timeout_s) == (5, 2.0)
    assert (server.frame_timeout_s, server.max_session_bytes) == (3.0, 1000)
    with pytest.raises(ConfigError) as info:
        enclave_cli._config(
            enclave_cli._parser().parse_args(["--mock", "--frame-timeout", "0"]), enclave_mock
        )
    assert str(info.value) == "frame timeout must be a positive, finite number of seconds, got 0.0"


def test_one_rule_for_every_limit() -> None:
    # common/_config.py: the enclave, the relay and the client share these checks.
    from ephemeralml.common._config import positive_count, positive_seconds

    assert positive_count("n", 3) == 3
    assert positive_seconds("t", 2) == 2.0
    bad: object
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(ConfigError) as info:
            positive_count("n", bad)
        assert str(info.value) == f"n must be an integer of at least 1, got {bad!r}"
    for bad in (0, -1.0, math.nan, math.inf):
        with pytest.raises(ConfigError) as info:
            positive_seconds("t", bad)
        assert str(info.value) == f"t must be a positive, finite number of seconds, got {bad!r}"
    for bad in (True, "5", None):
        with pytest.raises(ConfigError) as info:
            positive_seconds("t", bad)
        assert str(info.value) == f"t must be a number of seconds, got {bad!r}"
