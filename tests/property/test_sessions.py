"""Property tests of the session state machines (protocol.md §2, §4, §6) and HPKE open."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ephemeralml.common._errors import (
    CiphertextError,
    Error,
    LocalProtocolError,
    RemoteProtocolError,
)
from ephemeralml.common._hpke import ClientChannel, EnclaveSessionKey
from ephemeralml.common._messages import EmbedRequest
from ephemeralml.common._session import (
    ClientSession,
    ClientState,
    EnclaveSession,
    EnclaveState,
    RequestReceived,
    ResponseReceived,
)
from tests.fuzz import targets
from tests.pair import MODEL, MockWorld, SessionPair, now


@given(st.binary(max_size=300))
def test_session_target_on_any_script(data: bytes) -> None:
    """The fuzz target's properties: only our errors, errors are terminal, a changed or
    replayed frame is never accepted at an authenticated stage (tests/fuzz/targets.py)."""
    targets.session(data)


@given(st.integers(0, 4), st.integers(0, 1), st.integers(0, 5), st.binary(max_size=80))
def test_session_target_on_every_stage_and_mutation(
    stage: int, mode: int, how: int, payload: bytes
) -> None:
    targets.session(bytes([stage, mode, how]) + payload)


@given(st.binary(max_size=400))
def test_any_bytes_to_a_fresh_enclave_end_in_error_or_wait(world: MockWorld, data: bytes) -> None:
    enclave = EnclaveSession(world.identity)
    enclave.receive_data(data)
    try:
        while enclave.next_event() is not None:
            pass
    except Error:
        assert enclave.state is EnclaveState.ERROR
        with pytest.raises(LocalProtocolError) as e:
            enclave.next_event()
        assert str(e.value) == "session already failed"


@given(st.binary(max_size=400))
def test_any_bytes_to_a_waiting_client_end_in_error_or_wait(world: MockWorld, data: bytes) -> None:
    client = ClientSession(world.policy)
    client.hello()
    client.receive_data(data)
    try:
        assert client.next_event(now=now()) is None
    except Error:
        assert client.state is ClientState.ERROR
        with pytest.raises(LocalProtocolError) as e:
            client.next_event(now=now())
        assert str(e.value) == "session already failed"


@given(st.permutations(range(4)))
def test_requests_out_of_order_end_the_session(world: MockWorld, order: list[int]) -> None:
    """§4 H2: the enclave opens requests strictly in order; the first one out of order
    is a CiphertextError and the session is over."""
    p = SessionPair(world)
    p.handshake()
    frames = [p.client.send_request(EmbedRequest(MODEL, (str(i),)))[1] for i in range(4)]
    for expected, seq in enumerate(order):
        p.enclave.receive_data(frames[seq])
        if seq != expected:
            with pytest.raises(CiphertextError) as e:
                p.enclave.next_event()
            assert str(e.value) == f"request {seq} out of order (expected {expected})"
            assert p.enclave.state is EnclaveState.ERROR
            return
        ev = p.enclave.next_event()
        assert isinstance(ev, RequestReceived) and ev.seq == seq


@given(st.integers(0, 2**16), st.integers(0, 7))
def test_a_flipped_bit_in_a_response_is_never_accepted(
    world: MockWorld, where: int, bit: int
) -> None:
    p = SessionPair(world)
    p.handshake()
    _, frame = p.client.send_request(EmbedRequest(MODEL, ("x",)))
    p.enclave.receive_data(frame)
    ev = p.enclave.next_event()
    assert isinstance(ev, RequestReceived)
    resp = bytearray(p.answer(ev))
    resp[where % len(resp)] ^= 1 << bit
    p.client.receive_data(bytes(resp))
    try:
        got = p.client.next_event(now=now())
    except Error:
        assert p.client.state is ClientState.ERROR
        return
    assert got is None  # a longer length prefix: the client waits for more bytes


def test_a_replayed_response_is_refused(world: MockWorld) -> None:
    p = SessionPair(world)
    p.handshake()
    _, frame = p.client.send_request(EmbedRequest(MODEL, ("x",)))
    p.enclave.receive_data(frame)
    ev = p.enclave.next_event()
    assert isinstance(ev, RequestReceived)
    resp = p.answer(ev)
    p.client.receive_data(resp + resp)
    assert isinstance(p.client.next_event(now=now()), ResponseReceived)
    with pytest.raises(CiphertextError) as e:
        p.client.next_event(now=now())
    assert str(e.value) == "response 0 answers no request in flight (replay?)"


@given(st.binary(min_size=32, max_size=32), st.binary(max_size=200))
def test_hpke_open_with_garbage(enc: bytes, ciphertext: bytes) -> None:
    """A garbage encapsulated key gives our error or a channel that opens nothing."""
    key = EnclaveSessionKey(bytes(32))
    try:
        channel = key.open_channel(enc, bytes(32))
    except RemoteProtocolError as e:
        assert str(e) == "open: the encapsulated key is not valid"
        return
    with pytest.raises(CiphertextError) as info:
        channel.open_request(0, ciphertext, b"aad")
    assert str(info.value) == "request 0 failed authentication"


@given(st.binary(min_size=32, max_size=32))
def test_hpke_seal_to_garbage_public_key(pk: bytes) -> None:
    try:
        ClientChannel(pk, bytes(32))
    except CiphertextError as e:
        assert str(e).startswith("attested public_key is not a usable X25519 key (")


@pytest.mark.parametrize(
    ("stage", "mode", "event"),
    [
        (0, 0, "HelloReceived"),
        (1, 0, "Attested"),
        (1, 1, "Attested"),
        (3, 0, "RequestReceived"),
        (4, 0, "ResponseReceived"),
        (4, 1, "ResponseReceived"),
    ],
)
def test_session_target_accepts_the_honest_frame(stage: int, mode: int, event: str) -> None:
    """Mutation 2 with nothing after it delivers the honest frame unchanged: the target
    really drives the machines to each stage (else the fuzzing would test less)."""
    events = targets.session(bytes([stage, mode, 2]))
    assert [type(e).__name__ for e in events] == [event]


def test_session_target_refuses_a_replayed_request() -> None:
    events = targets.session(bytes([3, 0, 3]))
    assert [type(e).__name__ if e != "error" else e for e in events] == ["RequestReceived", "error"]


def test_session_target_renews_an_old_cached_document(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (long fuzz run, 18:02): after 300 s the harness's cached document
    failed A6 and the honest drive reported it as a finding."""
    import tests.pair

    world = targets._session_world()
    before = world.cached_doc()
    real = tests.pair.now_ms
    monkeypatch.setattr(tests.pair, "now_ms", lambda: real() + 400_000)
    events = targets.session(bytes([1, 1, 2]))
    assert [type(e).__name__ for e in events] == ["Attested"]
    assert world.cached_doc() != before
