"""Dynamic batching across sessions.

Every session's requests go into one queue. A single batcher task takes the first
waiting request, adds whatever else is already queued (and, if ``max_wait_ms`` > 0,
what arrives within that time) up to ``max_batch`` texts, and runs ONNX Runtime on
the lot in one worker thread; :meth:`Embedder.embed` sorts the texts by length and
pads per length bucket. Each request gets back exactly its rows.

The default wait is 0: with one batch running at a time on all the enclave's cores,
requests that arrive during a batch queue up and form the next one by themselves
("continuous batching"), so waiting adds latency and buys nothing under load; a
deployment with many small, simultaneous clients may still set a wait. Nothing here
blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ephemeralml.common._errors import ConfigError, Error, LimitError

from ._model import Embedder

__all__ = ["DEFAULT_MAX_BATCH", "DEFAULT_MAX_WAIT_MS", "BatchConfig", "Batcher"]

log = logging.getLogger("ephemeralml.enclave.batcher")

#: Texts per batch. ONNX Runtime's throughput on MiniLM flattens out past ~32 short
#: sentences on a few cores, while a bigger batch makes its first request wait longer.
DEFAULT_MAX_BATCH = 32
#: See the module docstring: 0 = take what is queued, never wait for more.
DEFAULT_MAX_WAIT_MS = 0.0
#: Requests waiting at once across sessions; past this, new ones are refused rather
#: than queued without bound (64 per session × many sessions could exhaust memory).
MAX_QUEUED_REQUESTS = 4096


@dataclass(frozen=True)
class BatchConfig:
    max_batch: int = DEFAULT_MAX_BATCH
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch <= 1024:
            raise ConfigError(f"batch size must be 1..1024, not {self.max_batch}")
        if not 0 <= self.max_wait_ms <= 1000:
            raise ConfigError(f"batch wait must be 0..1000 ms, not {self.max_wait_ms}")


#: A request's embeddings, and the indices of its inputs that were cut (truncation).
Embedded = tuple[npt.NDArray[np.float32], tuple[int, ...]]


@dataclass
class _Item:
    texts: Sequence[str]
    truncate: bool
    future: asyncio.Future[Embedded]


class Batcher:
    """One queue and one batching task per model."""

    def __init__(self, embedder: Embedder, executor: Executor, config: BatchConfig) -> None:
        self.embedder = embedder
        self.config = config
        self._executor = executor
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(MAX_QUEUED_REQUESTS)
        self._task: asyncio.Task[None] | None = None
        #: ONNX Runtime batches run, the requests and the texts they held.
        self.batches = 0
        self.requests = 0
        self.texts = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.cancel()

    async def embed(self, texts: Sequence[str], *, truncate: bool = False) -> Embedded:
        """The embeddings of ``texts``, computed in a batch with other sessions'
        requests, and which of them were cut (only if ``truncate``)."""
        future: asyncio.Future[Embedded] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Item(texts, truncate, future))
        except asyncio.QueueFull:
            raise LimitError(
                f"the enclave is busy: {MAX_QUEUED_REQUESTS} requests are queued"
            ) from None
        return await future

    async def _next_batch(self) -> list[_Item]:
        loop = asyncio.get_running_loop()
        first = await self._queue.get()
        items, n = [first], len(first.texts)
        deadline = loop.time() + self.config.max_wait_ms / 1000
        while n < self.config.max_batch:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            items.append(item)
            n += len(item.texts)
        return items

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [i for i in await self._next_batch() if not i.future.done()]
            if not items:
                continue
            self.batches += 1
            self.requests += len(items)
            texts = [t for i in items for t in i.texts]
            self.texts += len(texts)
            flags = [i.truncate for i in items for _ in i.texts]
            try:
                vectors, cut = await loop.run_in_executor(
                    self._executor, self.embedder.run, texts, flags
                )
            except Error:
                # Some request in the batch is bad (empty, too long...): run each on
                # its own so the error reaches its sender and only its sender.
                await self._one_by_one(items)
                continue
            except Exception as e:  # a bug must not kill the batcher
                log.exception("batch of %d requests failed", len(items))
                for i in items:
                    if not i.future.done():
                        i.future.set_exception(Error(f"inference failed: {type(e).__name__}"))
                continue
            start = 0
            for i in items:
                end = start + len(i.texts)
                if not i.future.done():
                    i.future.set_result((vectors[start:end], _indices(cut[start:end])))
                start = end

    async def _one_by_one(self, items: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        for i in items:
            try:
                v, cut = await loop.run_in_executor(
                    self._executor, self.embedder.run, i.texts, [i.truncate] * len(i.texts)
                )
            except Error as e:
                if not i.future.done():
                    i.future.set_exception(e)
            except Exception as e:
                if not i.future.done():
                    i.future.set_exception(Error(f"inference failed: {type(e).__name__}"))
            else:
                if not i.future.done():
                    i.future.set_result((v, _indices(cut)))


def _indices(cut: npt.NDArray[np.bool_]) -> tuple[int, ...]:
    return tuple(int(j) for j in np.flatnonzero(cut))
