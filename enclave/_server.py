"""The enclave's server loop: moves bytes between a socket and an EnclaveSession.

Everything the protocol decides lives in :mod:`ephemeralml.common._session`; this
module only reads, writes, asks the NSM for documents and runs the model. One
session failing (bad bytes, a peer that vanishes, a tampered frame) ends that
connection only; every other session goes on.

The socket is AF_VSOCK in production and loopback TCP in mock mode: the same code
above :mod:`ephemeralml.host._transport`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ephemeralml.common._attestation import parse_unverified
from ephemeralml.common._errors import Error, InferenceError
from ephemeralml.common._messages import EmbedResult
from ephemeralml.common._session import (
    EnclaveIdentity,
    EnclaveSession,
    HelloReceived,
    RequestReceived,
)
from ephemeralml.host._transport import Endpoint, server_endpoint, set_nodelay, start_server

from ._batcher import BatchConfig, Batcher
from ._loader import LoadedModel
from ._nsm import Nsm

__all__ = ["IDLE_TIMEOUT_S", "MAX_SESSIONS", "EnclaveServer", "ServerConfig"]

log = logging.getLogger("ephemeralml.enclave")

#: Concurrent sessions one enclave serves. Each holds an X25519 key and a few
#: buffers; the bound keeps a flood of hellos from exhausting enclave memory.
MAX_SESSIONS = 1024

#: How often the cached-mode document is re-made. Well under the clients' default
#: maximum attestation age (300 s), so a cached document is always acceptable, and
#: rare enough that the NSM's cost (tens of ms on hardware) is paid once a minute.
CACHED_DOC_REFRESH_S = 60.0

#: A session with no bytes in this many seconds is closed: an idle or half-open
#: peer must not pin enclave memory forever.
IDLE_TIMEOUT_S = 300.0

_READ_BYTES = 64 * 1024


@dataclass(frozen=True)
class ServerConfig:
    listen: Endpoint
    max_sessions: int = MAX_SESSIONS
    idle_timeout_s: float = IDLE_TIMEOUT_S
    batch: BatchConfig = field(default_factory=BatchConfig)


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
        self.bound: Endpoint | None = None
        self._batchers: dict[str, Batcher] = {}
        self._cached: tuple[bytes, int, float] | None = None
        self._cache_lock = asyncio.Lock()

    async def start(self) -> None:
        for model_id, model in self.models.items():
            batcher = Batcher(model.embedder, self._infer, self.config.batch)
            batcher.start()
            self._batchers[model_id] = batcher
        self._server = await start_server(self.config.listen, self._on_connection)
        self.bound = server_endpoint(self._server, self.config.listen)

    async def serve_forever(self) -> None:
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._sessions):
            t.cancel()
        if self._sessions:
            await asyncio.gather(*self._sessions, return_exceptions=True)
        for b in self._batchers.values():
            await b.close()
        self._infer.shutdown(wait=False, cancel_futures=True)
        self._nsm_pool.shutdown(wait=False, cancel_futures=True)

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._sessions) >= self.config.max_sessions:
            log.warning("refusing a session: %d sessions open", len(self._sessions))
            writer.close()
            return
        self._sessions.add(task)
        set_nodelay(writer)
        try:
            await self._serve(reader, writer)
        finally:
            self._sessions.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = EnclaveSession(self.identity)
        sid = session.session_id.hex()[:8]
        inflight: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    data = await asyncio.wait_for(
                        reader.read(_READ_BYTES), timeout=self.config.idle_timeout_s
                    )
                except TimeoutError:
                    log.info(
                        "session %s: idle for %.0f s, closing", sid, self.config.idle_timeout_s
                    )
                    return
                if not data:
                    return  # the client (or the host) closed
                session.receive_data(data)
                while (event := session.next_event()) is not None:
                    if isinstance(event, HelloReceived):
                        writer.write(await self._attest(session, event))
                    else:
                        t = asyncio.create_task(self._answer(session, event, writer))
                        inflight.add(t)
                        t.add_done_callback(inflight.discard)
                await writer.drain()
        except Error as e:
            # Anything the peer (or a tampering host) did wrong ends this session
            # only, with a typed error frame it can read.
            log.info("session %s: %s: %s", sid, e.code, e.message)
            with contextlib.suppress(Exception):
                writer.write(session.fail(e))
                await writer.drain()
        except (ConnectionError, OSError) as e:
            log.info("session %s: connection lost: %s", sid, type(e).__name__)
        finally:
            if inflight:
                await asyncio.gather(*inflight, return_exceptions=True)

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
        self, session: EnclaveSession, event: RequestReceived, writer: asyncio.StreamWriter
    ) -> None:
        try:
            if event.error is not None:
                frame = session.respond_error(event, event.error)
            else:
                assert event.request is not None
                model = self.models.get(event.request.model)
                if model is None:
                    why = self.failed.get(event.request.model)
                    err = InferenceError(
                        f"model {event.request.model!r} failed to load: {why}"
                        if why is not None
                        else f"unknown model {event.request.model!r}; this enclave serves "
                        f"{sorted(self.models)}"
                    )
                    frame = session.respond_error(event, err)
                else:
                    frame = await self._embed(session, event, model)
            if not writer.is_closing():
                writer.write(frame)
                await writer.drain()
        except Error as e:
            # The session cannot answer (e.g. it outlived MAX_SESSION_S): end it with
            # an error frame rather than leave the client waiting.
            log.info(
                "session %s: request %d failed: %s", session.session_id.hex()[:8], event.seq, e
            )
            with contextlib.suppress(Exception):
                writer.write(session.fail(e))
                await writer.drain()
                writer.close()
        except (ConnectionError, OSError):
            pass

    async def _embed(
        self, session: EnclaveSession, event: RequestReceived, model: LoadedModel
    ) -> bytes:
        assert event.request is not None
        embedder = model.embedder
        texts = event.request.inputs
        t0 = time.perf_counter()
        try:
            # Batched with other sessions' requests. embed() checks every input
            # (count, size, emptiness, token count) before any compute and raises our
            # typed errors: refused, not crashed, and only this request.
            vectors: np.ndarray = await self._batchers[model.model_id].embed(texts)
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
        )
