"""The proxy's session pool: reuse, re-attestation by age, idle and broken sessions
retired, a bounded wait when every session is busy, and close."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from ephemeralml.client._proxy_pool import PoolBusyError, PoolStats, SessionPool
from ephemeralml.common._errors import ConfigError, InferenceError, TransportError


class FakeSession:
    def __init__(self, n: int) -> None:
        self.n = n
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool(size: int = 2, **kw: Any) -> tuple[SessionPool[FakeSession], list[FakeSession], Clock]:
    made: list[FakeSession] = []
    clock = Clock()

    def open_session() -> FakeSession:
        made.append(FakeSession(len(made)))
        return made[-1]

    kw.setdefault("max_age_s", 300.0)
    return SessionPool(open_session, size=size, clock=clock, **kw), made, clock


def test_a_session_is_reused_until_it_is_idle_too_long() -> None:
    p, made, clock = pool(max_age_s=3600.0, idle_s=120.0)
    with p.session() as s:
        assert s.n == 0
    clock.now += 100
    with p.session() as s:
        assert s.n == 0  # reused
    clock.now += 119
    with p.session() as s:
        assert s.n == 0  # idle 119 s: still fine
    clock.now += 120
    with p.session() as s:
        assert s.n == 1  # idle 120 s: retired, a fresh (re-attested) one
    assert made[0].closed
    assert p.stats == PoolStats(opened=2, reused=2, retired_age=0, retired_idle=1,
                                retired_broken=0, idle=1, busy=0)  # fmt: skip


def test_a_session_past_the_policys_attestation_age_is_attested_again() -> None:
    p, made, clock = pool(max_age_s=300.0, idle_s=120.0)
    for _ in range(4):  # used every 100 s: never idle, but 300 s old at the fourth
        with p.session() as s:
            pass
        clock.now += 100
    assert s.n == 1 and made[0].closed and not made[1].closed
    assert p.stats == PoolStats(opened=2, reused=2, retired_age=1, retired_idle=0,
                                retired_broken=0, idle=1, busy=0)  # fmt: skip


def test_a_transport_failure_retires_the_session_other_errors_do_not() -> None:
    p, made, _ = pool()
    with pytest.raises(InferenceError), p.session():
        raise InferenceError("the enclave refused this one request")
    with p.session() as s:
        assert s.n == 0 and not made[0].closed
    with pytest.raises(TransportError), p.session():
        raise TransportError("connection lost")
    assert made[0].closed
    with p.session() as s:
        assert s.n == 1
    assert p.stats.retired_broken == 1


def test_every_session_busy_waits_then_refuses() -> None:
    p, made, _ = pool(size=1, wait_s=0.2)
    with p.session():
        with pytest.raises(PoolBusyError) as e, p.session():
            pass
    assert e.value.message == "all 1 enclave sessions stayed busy for 0.2 s"
    assert e.value.code == "busy"
    assert len(made) == 1


def test_a_waiting_request_gets_the_session_given_back() -> None:
    p, made, _ = pool(size=1, wait_s=10.0)
    got: list[int] = []
    release = threading.Event()

    def holder() -> None:
        with p.session():
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    while p.stats.busy == 0:
        threading.Event().wait(0.01)

    def waiter() -> None:
        with p.session() as s:
            got.append(s.n)

    w = threading.Thread(target=waiter)
    w.start()
    release.set()
    t.join(10)
    w.join(10)
    assert got == [0] and len(made) == 1


def test_a_failed_open_frees_its_place() -> None:
    calls = 0

    def open_session() -> FakeSession:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TransportError("cannot reach the host")
        return FakeSession(calls)

    p: SessionPool[FakeSession] = SessionPool(open_session, size=1, max_age_s=300.0, wait_s=0.1)
    with pytest.raises(TransportError), p.session():
        pass
    with p.session() as s:  # the one place was given back: no PoolBusyError
        assert s.n == 2


def test_close_closes_idle_sessions_now_and_busy_ones_when_they_return() -> None:
    p, made, _ = pool()
    with p.session():
        with p.session():
            pass
        p.close()
        assert made[1].closed and not made[0].closed
    assert made[0].closed
    with pytest.raises(ConfigError, match="^the session pool is closed$"), p.session():
        pass
    with pytest.raises(ConfigError, match="^the session pool needs at least 1 session, not 0$"):
        SessionPool(lambda: FakeSession(0), size=0, max_age_s=1.0)
