"""The enclave's server loop: moves bytes between a socket and an EnclaveSession.

Everything the protocol decides lives in :mod:`ephemeralml.common._session`; this
module only reads, writes, asks the NSM for documents and runs the model. One
session failing (bad bytes, a peer that vanishes, a tampered frame) ends that
connection only; every other session goes on.

The socket is AF_VSOCK in production and loopback TCP in mock mode: the same code
above :mod:`ephemeralml.runtime._transport`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ephemeralml.common._attestation import parse_unverified
from ephemeralml.common._config import positive_count, positive_seconds
from ephemeralml.common._errors import Error, InferenceError, LimitError
from ephemeralml.common._frame import FrameClock, encode_frame
from ephemeralml.common._messages import EmbedRequest, EmbedResult, ErrorFrame, GenerateRequest
from ephemeralml.common._session import (
    CancelReceived,
    EnclaveIdentity,
    EnclaveSession,
    EnclaveState,
    HelloReceived,
    RequestReceived,
)
from ephemeralml.runtime._transport import (
    Endpoint,
    server_endpoint,
    set_nodelay,
    start_server,
)

from ._batcher import BatchConfig, Batcher
from ._generate import Finished
from ._loader import LoadedModel
from ._nsm import Nsm
from ._streams import StreamHandle, StreamLimits, Streams

__all__ = [
    "FRAME_TIMEOUT_S",
    "HANDSHAKE_TIMEOUT_S",
    "IDLE_TIMEOUT_S",
    "MAX_PENDING_SESSIONS",
    "MAX_SESSIONS",
    "MAX_SESSION_BYTES",
    "EnclaveServer",
    "ServerConfig",
]

log = logging.getLogger("ephemeralml.enclave")

#: Concurrent established sessions (past their handshake, L3) one enclave serves.
#: Each holds an HPKE context and at most MAX_SESSION_BYTES of requests; the bound
#: keeps a flood of sessions from exhausting enclave memory.
MAX_SESSIONS = 1024

#: Connections that have not finished their handshake (hello to open, L3), in a
#: pool of their own so they never take an established session's place. Twice the
#: relay's pool (host MAX_PENDING, 512): one relay can never fill it, and a hostile
#: host that does only evicts its own oldest handshakes. Each costs an X25519 key
#: and a socket.
MAX_PENDING_SESSIONS = 1024

#: Seconds from accept until the client's open has arrived (L1). One round trip
#: and one attestation take milliseconds (tens on a Nitro NSM); the host relay cuts
#: at the same deadline from its own accept, which comes first.
HANDSHAKE_TIMEOUT_S = 10.0

#: Seconds from a frame's first byte until its last (L2), and for one response
#: to drain towards the host. The largest frame (2 MiB) crosses a 1 Mbit/s link
#: in about 17 s; a peer that drips a frame, or stops reading, is cut after this.
FRAME_TIMEOUT_S = 30.0

#: Bytes one session may hold (L5): the frame being received plus the requests in
#: flight (their texts, as Python holds them). Past it the enclave stops reading
#: from that session until answers go out, so a pipelining peer is slowed, not
#: served out of everyone's memory: without it, 64 outstanding requests of 1 MiB
#: of text each would hold 64 MiB per session. 16 MiB is 16 maximal requests.
MAX_SESSION_BYTES = 16 * 1024 * 1024

#: What a request in flight costs beyond its texts (the event, the task, a batch
#: slot, the result): charged so that tiny requests are not free (L5).
_REQUEST_OVERHEAD_BYTES = 4096

#: How often the cached-mode document is re-made. Well under the clients' default
#: maximum attestation age (300 s), so a cached document is always acceptable, and
#: rare enough that the NSM's cost (tens of ms on hardware) is paid once a minute.
CACHED_DOC_REFRESH_S = 60.0

#: A session with no bytes in this many seconds is closed: an idle or half-open
#: peer must not pin enclave memory forever.
IDLE_TIMEOUT_S = 300.0

_READ_BYTES = 64 * 1024
#: Seconds between two warnings about refused sessions (a flood of refusals must not
#: become a flood of log lines).
_REFUSAL_LOG_INTERVAL_S = 10.0


#: Streams one session may have generating or waiting at once: a session cannot take
#: every place in a model's queue (the others' streams would all be refused).
MAX_STREAMS_PER_SESSION = 4


def _request_bytes(event: RequestReceived) -> int:
    """What a request in flight holds, for L5: its texts as Python holds them."""
    r = event.request
    if isinstance(r, GenerateRequest):
        texts: tuple[str, ...] = (
            (r.prompt,) if r.prompt is not None else tuple(m.content for m in r.messages or ())
        )
    else:
        texts = r.inputs if r is not None else ()
    return _REQUEST_OVERHEAD_BYTES + sum(sys.getsizeof(t) for t in texts)


def _held(inflight: dict[asyncio.Task[None], int], clock: FrameClock) -> int:
    """L5: the bytes one session holds, its frame in progress and requests in flight."""
    return clock.partial + sum(inflight.values())


def _discard(inflight: dict[asyncio.Task[None], int], task: asyncio.Task[None]) -> None:
    inflight.pop(task, None)


@dataclass(frozen=True)
class ServerConfig:
    """Where the enclave listens and its limits (protocol.md §7.1); checked when built."""

    listen: Endpoint
    max_sessions: int = MAX_SESSIONS
    idle_timeout_s: float = IDLE_TIMEOUT_S
    batch: BatchConfig = field(default_factory=BatchConfig)
    streams: StreamLimits = field(default_factory=StreamLimits)
    max_pending: int = MAX_PENDING_SESSIONS
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
    frame_timeout_s: float = FRAME_TIMEOUT_S
    max_session_bytes: int = MAX_SESSION_BYTES

    def __post_init__(self) -> None:
        for name, count in (
            ("max sessions", self.max_sessions),
            ("max pending", self.max_pending),
            ("max session bytes", self.max_session_bytes),
        ):
            positive_count(name, count)
        for name, value in (
            ("idle timeout", self.idle_timeout_s),
            ("handshake timeout", self.handshake_timeout_s),
            ("frame timeout", self.frame_timeout_s),
        ):
            positive_seconds(name, value)


class _Conn:
    """One connection's place in the pools (L3)."""

    __slots__ = ("evicted", "state", "task")

    def __init__(self, task: asyncio.Task[None]) -> None:
        self.task = task
        #: "pending" (handshake not done), "established", or "gone".
        self.state = "pending"
        self.evicted: str | None = None


class EnclaveServer:
    """Serves sessions for the loaded models."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        nsm: Nsm,
        identity: EnclaveIdentity,
        models: Mapping[str, LoadedModel],
        failed: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.nsm = nsm
        self.identity = identity
        self.models = dict(models)
        #: Models that did not load, and why: told to a client that asks for one.
        self.failed = dict(failed or {})
        # ONNX Runtime uses every core for one batch already; one inference thread
        # keeps batches from fighting over cores. Hashing, sealing and signing stay
        # on the event loop (microseconds each).
        self._infer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer")
        self._nsm_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="nsm")
        self._server: asyncio.AbstractServer | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        #: Handshakes in progress, oldest first (L3), and established sessions.
        self._pending: dict[_Conn, None] = {}
        self._established = 0
        self._refused = 0
        self._evicted = 0
        self._deadline_cuts = 0
        self._requests = 0
        self._last_refusal_log = float("-inf")
        self.bound: Endpoint | None = None
        self._batchers: dict[str, Batcher] = {}
        self._streams: dict[str, Streams] = {}
        self._cached: tuple[bytes, int, float] | None = None
        self._cache_lock = asyncio.Lock()

    async def start(self) -> None:
        for model_id, model in self.models.items():
            if model.chat is not None:
                streams = Streams(model.chat, self.config.streams)
                streams.start()
                self._streams[model_id] = streams
                continue
            assert model.embedder is not None
            batcher = Batcher(model.embedder, self._infer, self.config.batch)
            batcher.start()
            self._batchers[model_id] = batcher
        self._server = await start_server(self.config.listen, self._on_connection)
        self.bound = server_endpoint(self._server, self.config.listen)

    async def serve_forever(self) -> None:
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    def batch_stats(self) -> dict[str, tuple[int, int, int]]:
        """Per model: ONNX Runtime batches run, and the requests and texts they held."""
        return {m: (b.batches, b.requests, b.texts) for m, b in self._batchers.items()}

    def stream_stats(self) -> dict[str, tuple[int, int, int, int, int]]:
        """Per chat model: streams ended, tokens made, decoding rounds run, rows of the
        batched steps, and prompt tokens served from the sessions' prefix caches."""
        return {
            m: (s.streams, s.tokens, s.rounds, s.rows, s.prefixes.reused)
            for m, s in self._streams.items()
        }

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._sessions):
            t.cancel()
        if self._sessions:
            await asyncio.gather(*self._sessions, return_exceptions=True)
        for b in self._batchers.values():
            await b.close()
        for s in self._streams.values():
            await asyncio.get_running_loop().run_in_executor(None, s.close)
        self._infer.shutdown(wait=False, cancel_futures=True)
        self._nsm_pool.shutdown(wait=False, cancel_futures=True)

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._established >= self.config.max_sessions:
            # L3: no room for another session even after its handshake.
            self._refuse(
                writer, f"L3 session limit: {self.config.max_sessions} sessions established"
            )
            return
        if len(self._pending) >= self.config.max_pending:
            # L3: the oldest handshake makes room; a legitimate one takes milliseconds.
            oldest = next(iter(self._pending))
            self._leave_pending(oldest)
            oldest.evicted = (
                f"L3 pending pool full: {self.config.max_pending} connections in their "
                "handshake; the oldest is evicted"
            )
            self._evicted += 1
            oldest.task.cancel()
        conn = _Conn(task)
        self._pending[conn] = None
        self._sessions.add(task)
        set_nodelay(writer)
        try:
            await self._serve(conn, reader, writer)
        finally:
            self._sessions.discard(task)
            if conn.state == "pending":
                self._leave_pending(conn)
            elif conn.state == "established":
                self._established -= 1
            conn.state = "gone"
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _leave_pending(self, conn: _Conn) -> None:
        del self._pending[conn]
        conn.state = "gone"

    def _refuse(self, writer: asyncio.StreamWriter, reason: str) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._last_refusal_log >= _REFUSAL_LOG_INTERVAL_S:
            self._last_refusal_log = now
            log.warning("refusing sessions: %s (%d refused so far)", reason, self._refused)
        writer.write(encode_frame(ErrorFrame(LimitError.code, reason).to_cbor()))
        if writer.transport.get_write_buffer_size():
            writer.transport.abort()
        else:
            writer.close()

    @property
    def stats(self) -> dict[str, int]:
        """Counters: sessions established and pending now; refusals, evictions,
        deadline cuts and requests received so far (nothing here is secret)."""
        return {
            "established": self._established,
            "pending": len(self._pending),
            "refused": self._refused,
            "evicted": self._evicted,
            "deadline_cuts": self._deadline_cuts,
            "requests": self._requests,
        }

    async def _serve(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        session = EnclaveSession(self.identity)
        sid = session.session_id.hex()[:8]
        inflight: dict[asyncio.Task[None], int] = {}
        #: This session's streams in progress, by request seq (for cancels, §2.8).
        streams: dict[int, StreamHandle] = {}
        clock = FrameClock()
        accepted = last_activity = loop.time()
        try:
            while True:
                # L5: past the session's memory bound, read nothing more until
                # answers go out; the peer is throttled by TCP, not served out of
                # everyone's memory. A frame in progress does not age meanwhile.
                while inflight and _held(inflight, clock) > cfg.max_session_bytes:
                    paused = loop.time()
                    await asyncio.wait(set(inflight), return_when=asyncio.FIRST_COMPLETED)
                    if clock.started_at is not None:
                        clock.started_at += loop.time() - paused
                    last_activity = loop.time()
                now = loop.time()
                deadline, why = last_activity + cfg.idle_timeout_s, "idle"
                if conn.state == "pending" and accepted + cfg.handshake_timeout_s < deadline:
                    deadline, why = accepted + cfg.handshake_timeout_s, "handshake"
                if clock.started_at is not None and (
                    clock.started_at + cfg.frame_timeout_s < deadline
                ):
                    deadline, why = clock.started_at + cfg.frame_timeout_s, "frame"
                try:
                    if deadline <= now:
                        raise TimeoutError
                    data = await asyncio.wait_for(reader.read(_READ_BYTES), deadline - now)
                except TimeoutError:
                    if why == "idle":
                        log.info("session %s: idle for %.0f s, closing", sid, cfg.idle_timeout_s)
                        return
                    self._deadline_cuts += 1
                    raise self._deadline_error(why) from None
                if not data:
                    return  # the client (or the host) closed
                last_activity = loop.time()
                clock.feed(data, last_activity)
                session.receive_data(data)
                while (event := session.next_event()) is not None:
                    if isinstance(event, HelloReceived):
                        writer.write(await self._attest(session, event))
                    elif isinstance(event, CancelReceived):
                        # §2.8: stop before the next step; the stream still ends
                        # with its receipt. A stream already ended needs nothing.
                        if (handle := streams.get(event.target)) is not None:
                            handle.cancel()
                    else:
                        self._requests += 1
                        t = asyncio.create_task(self._answer(session, event, writer, streams))
                        inflight[t] = _request_bytes(event)
                        t.add_done_callback(functools.partial(_discard, inflight))
                if conn.state == "pending" and session.state is EnclaveState.READY:
                    # L1 met: the open has arrived. Into the established pool (L3).
                    if self._established >= cfg.max_sessions:
                        raise LimitError(
                            f"L3 session limit: {cfg.max_sessions} sessions established"
                        )
                    self._leave_pending(conn)
                    conn.state = "established"
                    self._established += 1
                try:
                    await asyncio.wait_for(writer.drain(), cfg.frame_timeout_s)
                except TimeoutError:
                    self._deadline_cuts += 1
                    raise self._deadline_error("drain") from None
        except asyncio.CancelledError:
            if conn.evicted is None:
                raise
            # Evicted from a full pending pool (L3): our own cancellation.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            log.info("session %s: %s", sid, conn.evicted)
            with contextlib.suppress(Exception):
                writer.write(session.fail(LimitError(conn.evicted)))
        except Error as e:
            # Anything the peer (or a tampering host) did wrong ends this session
            # only, with a typed error frame it can read.
            log.info("session %s: %s: %s", sid, e.code, e.message)
            with contextlib.suppress(Exception):
                writer.write(session.fail(e))
                if writer.transport.get_write_buffer_size():
                    writer.transport.abort()  # a peer that does not read hears nothing
                else:
                    await asyncio.wait_for(writer.drain(), cfg.frame_timeout_s)
        except (ConnectionError, OSError) as e:
            log.info("session %s: connection lost: %s", sid, type(e).__name__)
        finally:
            # A client that went away stops its generations within one step each, and
            # its cached prefixes go.
            for handle in streams.values():
                handle.cancel()
            if inflight:
                await asyncio.gather(*inflight, return_exceptions=True)
            for streamer in self._streams.values():  # after: none can put one back
                streamer.prefixes.forget(session)

    def _deadline_error(self, why: str) -> LimitError:
        cfg = self.config
        if why == "handshake":
            return LimitError(
                f"L1 handshake deadline of {cfg.handshake_timeout_s:g} s passed (hello to open)"
            )
        if why == "frame":
            return LimitError(
                f"L2 frame deadline of {cfg.frame_timeout_s:g} s passed "
                "(a frame started but not finished)"
            )
        return LimitError(
            f"L2 frame deadline of {cfg.frame_timeout_s:g} s passed (the peer does not read)"
        )

    async def _cached_document(self) -> tuple[bytes, int]:
        """The cached-mode document (§2.2.1), re-made every CACHED_DOC_REFRESH_S."""
        async with self._cache_lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[2] > CACHED_DOC_REFRESH_S:
                loop = asyncio.get_running_loop()
                binding = EnclaveSession.cached_binding(self.identity).to_cbor()
                doc = await loop.run_in_executor(
                    self._nsm_pool,
                    lambda: self.nsm.get_attestation_doc(
                        public_key=None, user_data=binding, nonce=None
                    ),
                )
                self._cached = (doc, parse_unverified(doc).timestamp_ms, now)
            return self._cached[0], self._cached[1]

    async def _attest(self, session: EnclaveSession, event: HelloReceived) -> bytes:
        if event.mode == "cached":
            doc, ts = await self._cached_document()
            return session.attest_cached(doc, timestamp_ms=ts)
        loop = asyncio.get_running_loop()
        doc = await loop.run_in_executor(
            self._nsm_pool,
            lambda: self.nsm.get_attestation_doc(
                public_key=session.public_key,
                user_data=session.binding.to_cbor(),
                nonce=event.nonce,
            ),
        )
        # Our own NSM made it; we read its timestamp to bound the session's life.
        return session.attest(doc, timestamp_ms=parse_unverified(doc).timestamp_ms)

    async def _answer(
        self,
        session: EnclaveSession,
        event: RequestReceived,
        writer: asyncio.StreamWriter,
        streams: dict[int, StreamHandle],
    ) -> None:
        try:
            if event.error is not None:
                frame = session.respond_error(event, event.error)
            else:
                assert event.request is not None
                model = self.models.get(event.request.model)
                kind_error = _kind_error(event.request, model)
                if model is None:
                    why = self.failed.get(event.request.model)
                    err = InferenceError(
                        f"model {event.request.model!r} failed to load: {why}"
                        if why is not None
                        else f"unknown model {event.request.model!r}; this enclave serves "
                        f"{sorted(self.models)}"
                    )
                    frame = session.respond_error(event, err)
                elif kind_error is not None:
                    frame = session.respond_error(event, kind_error)
                elif isinstance(event.request, GenerateRequest):
                    await self._generate(session, event, model, writer, streams)
                    return
                else:
                    frame = await self._embed(session, event, model)
            await self._send(session, writer, frame)
        except Error as e:
            # The session cannot answer (e.g. it outlived MAX_SESSION_S): end it with
            # an error frame rather than leave the client waiting.
            log.info(
                "session %s: request %d failed: %s", session.session_id.hex()[:8], event.seq, e
            )
            with contextlib.suppress(Exception):
                writer.write(session.fail(e))
                await asyncio.wait_for(writer.drain(), self.config.frame_timeout_s)
                writer.close()
        except (ConnectionError, OSError):
            pass

    async def _send(
        self, session: EnclaveSession, writer: asyncio.StreamWriter, frame: bytes
    ) -> bool:
        """Write one frame and wait for it to drain; False when the connection is gone."""
        if writer.is_closing():
            return False
        writer.write(frame)
        try:
            await asyncio.wait_for(writer.drain(), self.config.frame_timeout_s)
        except TimeoutError:
            # L2: a host (or client) that stops reading cannot pin this answer, or
            # the session's memory, for ever.
            self._deadline_cuts += 1
            log.info("session %s: %s", session.session_id.hex()[:8], self._deadline_error("drain"))
            writer.transport.abort()
            return False
        return True

    async def _generate(
        self,
        session: EnclaveSession,
        event: RequestReceived,
        model: LoadedModel,
        writer: asyncio.StreamWriter,
        streams: dict[int, StreamHandle],
    ) -> None:
        """One streamed answer (§2.8): a sealed chunk per piece of text as the model
        makes it, then the end with its receipt; a refusal before any work."""
        assert isinstance(event.request, GenerateRequest) and model.chat is not None
        chat = model.chat
        t0 = time.perf_counter()
        try:
            if len(streams) >= MAX_STREAMS_PER_SESSION:
                raise LimitError(
                    f"{MAX_STREAMS_PER_SESSION} streams of this session are in progress"
                )
            prompt = chat.prompt_ids(event.request)
            streamer = self._streams[model.model_id]
            # The session's own cached prefix (enclave/_streams.py), never another's.
            prefix = streamer.prefixes.get(session)
            handle = streamer.submit(prompt, chat.params(event.request), prefix)
        except Error as e:
            await self._send(session, writer, session.respond_error(event, e))
            return
        streams[event.seq] = handle
        try:
            while True:
                step = await handle.events.get()
                if isinstance(step, Error):
                    await self._send(session, writer, session.respond_error(event, step))
                    return
                if step.text and not await self._send(
                    session, writer, session.chunk(event, step.text)
                ):
                    handle.cancel()  # nobody to send to: stop within a step
                if isinstance(step, Finished):
                    if handle.final is not None:  # set only for "stop" and "length"
                        streamer.prefixes.put(session, handle.final)
                    frame = session.end_stream(
                        event,
                        model_digest=model.manifest_digest,
                        finish=step.reason,
                        prompt_tokens=step.prompt_tokens,
                        completion_tokens=step.completion_tokens,
                        device=chat.provider,
                        time_ms=int(time.time() * 1000),
                        duration_us=int((time.perf_counter() - t0) * 1e6),
                    )
                    await self._send(session, writer, frame)
                    return
        finally:
            handle.cancel()  # a no-op once ended; stops it if this task was cancelled
            streams.pop(event.seq, None)

    async def _embed(
        self, session: EnclaveSession, event: RequestReceived, model: LoadedModel
    ) -> bytes:
        assert isinstance(event.request, EmbedRequest) and model.embedder is not None
        embedder = model.embedder
        texts = event.request.inputs
        t0 = time.perf_counter()
        try:
            # Batched with other sessions' requests. embed() checks every input
            # (count, size, emptiness, token count) before any compute and raises our
            # typed errors: refused, not crashed, and only this request.
            vectors, truncated = await self._batchers[model.model_id].embed(
                texts, truncate=event.request.truncate
            )
        except Error as e:
            return session.respond_error(event, e)
        duration_us = int((time.perf_counter() - t0) * 1e6)
        result = EmbedResult(
            model=embedder.model_id,
            dim=int(vectors.shape[1]),
            count=int(vectors.shape[0]),
            vectors=np.ascontiguousarray(vectors, dtype="<f4").tobytes(),
        )
        return session.respond(
            event,
            result,
            model_digest=model.manifest_digest,
            time_ms=int(time.time() * 1000),
            duration_us=duration_us,
            truncated=truncated,
        )


def _kind_error(request: EmbedRequest | GenerateRequest, model: LoadedModel | None) -> Error | None:
    """A request for a model of the other kind is refused, naming what the model does."""
    if model is None:
        return None
    if isinstance(request, GenerateRequest) and model.chat is None:
        return InferenceError(f"model {model.model_id!r} makes embeddings; it does not generate")
    if isinstance(request, EmbedRequest) and model.embedder is None:
        return InferenceError(f"model {model.model_id!r} is a chat model; it does not embed")
    return None
