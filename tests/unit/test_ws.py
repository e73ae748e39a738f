"""The host's WebSocket door (host/_ws.py): a whole session over it, one frame a message,
through the real relay to the real enclave server; and what it refuses."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from ephemeralml.common._messages import EmbedRequest
from ephemeralml.common._session import Attested, ClientSession, ResponseReceived
from ephemeralml.host._ws import WsBridge, WsConfig
from ephemeralml.runtime import Endpoint, Relay, RelayConfig
from tests.pair import MODEL, MockWorld
from tests.unit.test_client_session import LiveEnclave


@pytest.fixture
def live(world: MockWorld) -> Iterator[LiveEnclave]:
    with LiveEnclave(world) as e:
        yield e


def _door(live: LiveEnclave, upstream: Endpoint | None = None, **limits: Any) -> tuple[WsBridge, Relay]:
    """A relay in front of the enclave and the bridge in front of the relay, both on
    the enclave's event loop."""

    async def start() -> tuple[WsBridge, Relay]:
        relay = Relay(RelayConfig(Endpoint.parse("127.0.0.1:0"), (Endpoint.parse(live.address),)))
        await relay.start()
        bridge = WsBridge(WsConfig(Endpoint.parse("127.0.0.1:0"), upstream or relay.bound, **limits))
        await bridge.start()
        return bridge, relay

    bridge, relay = live.call(start())
    return bridge, relay


def _stop(live: LiveEnclave, bridge: WsBridge, relay: Relay) -> None:
    live.call(bridge.close())
    live.call(relay.close())


def _url(bridge: WsBridge) -> str:
    assert bridge.bound is not None
    return f"ws://127.0.0.1:{bridge.bound.port}"


def _one_frame(message: bytes | str) -> bytes:
    assert isinstance(message, bytes)
    assert len(message) == 4 + int.from_bytes(message[:4], "big")  # exactly one whole frame
    return message


def test_a_whole_session_over_the_websocket(live: LiveEnclave, world: MockWorld) -> None:
    bridge, relay = _door(live)
    try:
        proto = ClientSession(world.policy)
        with connect(_url(bridge), compression=None) as ws:
            ws.send(proto.hello())
            proto.receive_data(_one_frame(ws.recv(10)))
            assert isinstance(proto.next_event(now=datetime.now(UTC)), Attested)
            ws.send(proto.data_to_send())  # open
            for i, text in enumerate(("first", "second")):
                _seq, frame = proto.send_request(EmbedRequest(MODEL, (text,)))
                ws.send(frame)
                proto.receive_data(_one_frame(ws.recv(10)))
                event = proto.next_event(now=datetime.now(UTC))
                assert isinstance(event, ResponseReceived) and event.seq == i
        # The page's bytes went through the relay, counted like any client's.
        stats = relay.stats
        assert (stats.total, stats.sessions, stats.session_frames_up) == (1, 1, 2)
        assert (bridge.connections, bridge.refused) == (1, 0)
    finally:
        _stop(live, bridge, relay)


def _closed(ws: ClientConnection) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as e:
        ws.recv(10)
    assert e.value.rcvd is not None
    return e.value.rcvd.code, e.value.rcvd.reason


def test_a_text_message_closes_the_websocket_saying_why(live: LiveEnclave) -> None:
    bridge, relay = _door(live)
    try:
        with connect(_url(bridge)) as ws:
            ws.send("hello")
            assert _closed(ws) == (1003, "binary messages only: one frame each")
    finally:
        _stop(live, bridge, relay)


def test_more_than_the_limit_from_one_address_is_refused(live: LiveEnclave) -> None:
    bridge, relay = _door(live, max_per_source=1)
    try:
        with connect(_url(bridge)) as first, connect(_url(bridge)) as second:
            assert _closed(second) == (1008, "limit: 1 connections from 127.0.0.1")
            first.send(b"\x00\x00\x00\x00")  # the first is still joined to the relay
        assert (bridge.connections, bridge.refused) == (1, 1)
    finally:
        _stop(live, bridge, relay)


def test_a_relay_that_cannot_be_reached_closes_with_the_reason(live: LiveEnclave) -> None:
    dead = Endpoint.parse("127.0.0.1:9")
    bridge, relay = _door(live, upstream=dead)
    try:
        with connect(_url(bridge)) as ws:
            code, reason = _closed(ws)
        assert (code, reason) == (1011, "cannot reach relay at tcp:127.0.0.1:9: connection refused")
    finally:
        _stop(live, bridge, relay)


def test_a_message_over_one_frame_is_refused_by_size(live: LiveEnclave) -> None:
    bridge, relay = _door(live)
    try:
        with connect(_url(bridge), max_size=None) as ws:
            ws.send(b"\x00" * (4 + 2 * 1024 * 1024 + 1))
            assert _closed(ws)[0] == 1009
    finally:
        _stop(live, bridge, relay)


def test_the_door_listens_on_tcp_only() -> None:
    from ephemeralml.common._errors import ConfigError

    with pytest.raises(ConfigError, match="^--ws-listen unix:/tmp/x: pages connect over TCP$"):
        WsConfig(Endpoint.parse("unix:/tmp/x"), Endpoint.parse("127.0.0.1:1"))
