"""Attested sessions kept open for the proxy: one request at a time each, re-attested.

A :class:`SessionPool` holds at most ``size`` sessions. A request takes an idle one
(or opens one, which verifies the enclave's attestation as every ``connect()`` does),
uses it alone, and gives it back. A session is closed instead of reused when it is
older than ``max_age_s`` (the policy's attestation age: past it, the next request
gets a freshly attested session), idle longer than ``idle_s`` (before the enclave's
and relay's own idle limits cut it), or when the error it failed with ends it
(``ends_session``; by default a lost connection: one is never handed out again).
Thread-safe: the proxy calls it from a thread pool and from one thread per stream
(a stream holds its session until its end). Nothing here reads a payload.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from ephemeralml.common._errors import ConfigError, LimitError, TransportError

__all__ = ["IDLE_S", "WAIT_S", "PoolBusyError", "PoolStats", "PooledSession", "SessionPool"]

#: A session idle this long is closed rather than reused (the enclave and the relay
#: close idle connections after 300 s).
IDLE_S = 120.0
#: How long a request waits for a session when all of them are busy.
WAIT_S = 30.0


class PoolBusyError(LimitError):
    """Every session stayed busy for the whole wait: the caller may try again later."""

    code = "busy"


def _lost_connection(e: BaseException) -> bool:
    return isinstance(e, TransportError)


class PooledSession(Protocol):
    def close(self) -> None: ...


S = TypeVar("S", bound=PooledSession)


@dataclass
class _Slot(Generic[S]):
    session: S
    opened: float
    last_used: float


@dataclass(frozen=True)
class PoolStats:
    opened: int
    reused: int
    retired_age: int
    retired_idle: int
    retired_broken: int
    idle: int
    busy: int


class SessionPool(Generic[S]):
    def __init__(
        self,
        open_session: Callable[[], S],
        *,
        size: int,
        max_age_s: float,
        idle_s: float = IDLE_S,
        wait_s: float = WAIT_S,
        clock: Callable[[], float] = time.monotonic,
        ends_session: Callable[[BaseException], bool] = _lost_connection,
    ) -> None:
        if size < 1:
            raise ConfigError(f"the session pool needs at least 1 session, not {size}")
        self._open = open_session
        self.size = size
        self.max_age_s = max_age_s
        self.idle_s = idle_s
        self.wait_s = wait_s
        self._clock = clock
        self._ends_session = ends_session
        self._cond = threading.Condition()
        self._idle: list[_Slot[S]] = []
        self._busy = 0
        self._opening = 0
        self._closed = False
        self._opened = self._reused = 0
        self._retired = {"age": 0, "idle": 0, "broken": 0}

    @property
    def stats(self) -> PoolStats:
        with self._cond:
            return PoolStats(
                self._opened, self._reused, self._retired["age"], self._retired["idle"],
                self._retired["broken"], len(self._idle), self._busy,
            )  # fmt: skip

    @contextlib.contextmanager
    def session(self) -> Iterator[S]:
        """A session for one request. An error raised inside that ends the session
        (``ends_session``) retires it; any other gives it back (the session is sound)."""
        slot = self._take()
        broken = False
        try:
            yield slot.session
        except BaseException as e:
            broken = self._ends_session(e)
            raise
        finally:
            self._give_back(slot, broken=broken)

    def close(self) -> None:
        """Close the idle sessions now and the busy ones when they come back."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for slot in idle:
            _quietly_close(slot.session)

    def _take(self) -> _Slot[S]:
        # The wait is real time; ``clock`` measures the sessions' ages (tests move it).
        deadline = time.monotonic() + self.wait_s
        stale: list[_Slot[S]] = []
        try:
            with self._cond:
                while True:
                    if self._closed:
                        raise ConfigError("the session pool is closed")
                    now = self._clock()
                    while self._idle:
                        slot = self._idle.pop()  # the most recently used first
                        why = self._stale(slot, now)
                        if why is None:
                            self._busy += 1
                            self._reused += 1
                            return slot
                        self._retired[why] += 1
                        stale.append(slot)
                    if self._busy + self._opening < self.size:
                        self._opening += 1
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise PoolBusyError(
                            f"all {self.size} enclave sessions stayed busy for {self.wait_s:g} s"
                        )
                    self._cond.wait(left)
        finally:
            for slot in stale:
                _quietly_close(slot.session)
        # Opening verifies the attestation: seconds at worst, so outside the lock.
        try:
            session = self._open()
        except BaseException:
            with self._cond:
                self._opening -= 1
                self._cond.notify()
            raise
        now = self._clock()
        with self._cond:
            self._opening -= 1
            self._busy += 1
            self._opened += 1
        return _Slot(session, opened=now, last_used=now)

    def _stale(self, slot: _Slot[S], now: float) -> str | None:
        if now - slot.opened >= self.max_age_s:
            return "age"
        if now - slot.last_used >= self.idle_s:
            return "idle"
        return None

    def _give_back(self, slot: _Slot[S], *, broken: bool) -> None:
        with self._cond:
            self._busy -= 1
            keep = not broken and not self._closed
            if keep:
                slot.last_used = self._clock()
                self._idle.append(slot)
            elif broken:
                self._retired["broken"] += 1
            self._cond.notify()
        if not keep:
            _quietly_close(slot.session)


def _quietly_close(session: PooledSession) -> None:
    with contextlib.suppress(Exception):
        session.close()
