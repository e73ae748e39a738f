"""Streams of one chat model share its decoding thread, a step each in turn.

One thread per chat model runs the generation loops of every admitted stream, one
decoding step of each in turn (round robin), so a long answer does not hold up a
short one: each stream waits at most one step of every other stream between two of
its own. Embeddings run on their own thread and are not held up by generation.

Bounds (protocol.md §7, limits before work), checked when a stream is submitted:

* ``max_active`` streams decode at once; the rest wait, in order, at most
  ``max_waiting`` of them (past that a stream is refused: :class:`LimitError`);
* every stream reserves KV-cache room for its prompt plus the tokens it may still
  make (``max_tokens``, cut to the model's context), and the reservations of the
  streams decoding never exceed ``kv_tokens``; a stream that could never fit is
  refused at once, one that could waits for room.

A stream's events (:class:`~._generate.Token`, :class:`~._generate.Finished`, or the
:class:`~ephemeralml.common._errors.Error` that ended it) go to an asyncio queue on
the event loop that submitted it. :meth:`StreamHandle.cancel` is seen before the
stream's next step: a client that goes away stops its generation within one step.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from ephemeralml.common._config import positive_count
from ephemeralml.common._errors import Error, InferenceError, LimitError

from ._chat import ChatModel
from ._generate import Finished, GenerationParams, Token

__all__ = ["KV_TOKENS", "MAX_ACTIVE_STREAMS", "MAX_WAITING_STREAMS", "StreamHandle", "Streams"]

log = logging.getLogger("ephemeralml.enclave.streams")

#: Streams decoding at once per model: each step of each stream is one ONNX Runtime
#: run, so more streams share the same thread more thinly.
MAX_ACTIVE_STREAMS = 8
#: Streams waiting for a place; past this a stream is refused rather than queued.
MAX_WAITING_STREAMS = 64
#: KV-cache tokens reserved by the streams decoding at once. For SmolLM2-135M a token
#: holds 30 layers x 2 x 3 heads x 64 x 4 bytes = 46 KB, so 16384 tokens are ~750 MB.
KV_TOKENS = 16384

Event = Token | Finished | Error


@dataclass(frozen=True)
class StreamLimits:
    max_active: int = MAX_ACTIVE_STREAMS
    max_waiting: int = MAX_WAITING_STREAMS
    kv_tokens: int = KV_TOKENS

    def __post_init__(self) -> None:
        positive_count("max streams", self.max_active)
        positive_count("max waiting streams", self.max_waiting)
        positive_count("kv tokens", self.kv_tokens)


class StreamHandle:
    """One submitted stream: its events arrive on :attr:`events`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        steps: Iterator[Token | Finished],
        reserve: int,
        cancelled: threading.Event,
    ) -> None:
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = cancelled
        self.reserve = reserve
        self._loop = loop
        self._steps = steps

    def cancel(self) -> None:
        """Stop before the next step (the stream then ends ``"cancelled"``)."""
        self.cancelled.set()

    def _emit(self, event: Event) -> None:
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop has closed: nobody is listening
            self.cancelled.set()


class Streams:
    """The decoding thread of one chat model and its admission (module docstring)."""

    def __init__(self, model: ChatModel, limits: StreamLimits | None = None) -> None:
        self.model = model
        self.limits = limits or StreamLimits()
        self._cond = threading.Condition()
        self._waiting: collections.deque[StreamHandle] = collections.deque()
        self._active: list[StreamHandle] = []
        self._reserved = 0
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, name=f"generate-{model.model_id}", daemon=True
        )
        #: Counters for the stop line: streams finished, tokens made, decoding rounds.
        self.streams = self.tokens = self.rounds = 0

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for h in (*self._waiting, *self._active):
                h.cancel()
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def submit(self, prompt: list[int], params: GenerationParams) -> StreamHandle:
        """Admit a stream, or refuse it now (:class:`LimitError`, :class:`InferenceError`)."""
        room = self.model.context_limit - len(prompt)
        cancelled = threading.Event()
        # The loop's own checks (prompt ids, the context bound), before any work.
        steps = self.model.stream(prompt, params, cancelled)
        reserve = len(prompt) + min(params.max_tokens, max(room, 0))
        if reserve > self.limits.kv_tokens:
            raise LimitError(
                f"the stream needs {reserve} tokens of KV cache (prompt and max_tokens);"
                f" this enclave holds {self.limits.kv_tokens} for all streams"
            )
        handle = StreamHandle(asyncio.get_running_loop(), steps, reserve, cancelled)
        with self._cond:
            if self._closed:
                raise InferenceError("the enclave is stopping")
            if len(self._waiting) >= self.limits.max_waiting:
                raise LimitError(
                    f"{self.limits.max_active} streams are generating and"
                    f" {len(self._waiting)} waiting; try again later"
                )
            self._waiting.append(handle)
            self._cond.notify()
        return handle

    def _admit(self) -> None:
        # In order: the first waiting stream that does not fit holds the others back,
        # so a long request is not passed over for ever by short ones.
        while self._waiting and len(self._active) < self.limits.max_active:
            head = self._waiting[0]
            if head.cancelled.is_set():
                self._waiting.popleft()
                self._active.append(head)  # it ends "cancelled" at its first step
                self._reserved += head.reserve
                continue
            if self._reserved + head.reserve > self.limits.kv_tokens:
                return
            self._waiting.popleft()
            self._active.append(head)
            self._reserved += head.reserve

    def _run(self) -> None:
        while True:
            with self._cond:
                self._admit()
                while not self._active and not self._closed:
                    self._cond.wait()
                    self._admit()
                if self._closed and not self._active:
                    return
                active = list(self._active)
            self.rounds += 1
            done = [h for h in active if self._step(h)]
            if done:
                with self._cond:
                    for h in done:
                        self._active.remove(h)
                        self._reserved -= h.reserve
                    self.streams += len(done)

    def _step(self, handle: StreamHandle) -> bool:
        """One step of one stream; True when it has ended."""
        try:
            event: Event = next(handle._steps)
        except Error as e:
            handle._emit(e)
            return True
        except Exception as e:  # pragma: no cover - generate raises only our errors
            log.exception("generation failed")
            handle._emit(InferenceError(f"generation failed: {type(e).__name__}"))
            return True
        if isinstance(event, Token):
            self.tokens += 1
        handle._emit(event)
        return isinstance(event, Finished)
