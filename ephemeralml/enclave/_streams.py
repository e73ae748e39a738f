"""Continuous batching: the streams of one chat model share its decoding steps.

One thread per chat model decodes every admitted stream together: each round, the
streams already decoding take one step *in one ONNX Runtime run* (one token each,
their KV caches held as one left-padded batch, :class:`~._generate.BatchCache`),
then streams that were admitted since run their prompt (prefill) and join the batch,
and streams that ended leave it. Joining and leaving happen between steps, so a
stream never waits for another to finish; a long prompt's prefill delays one round.
Embeddings run on their own thread and are not held up by generation.

Bounds (protocol.md §7, limits before work), checked when a stream is submitted:

* ``max_active`` streams decode at once; the rest wait, in order, at most
  ``max_waiting`` of them (past that a stream is refused for now: :class:`BusyError`);
* every stream reserves KV-cache room for its prompt plus the tokens it may still
  make (``max_tokens``, cut to the model's context). The batch holds every row as
  long as its longest, so what the streams decoding may hold together is their
  number times the largest reservation among them, and that never exceeds
  ``kv_tokens``: a stream that could never fit is refused at once, one that could
  waits for room.

Prefix cache, per session: when a stream ends (``stop`` or ``length``), the KV cache of
what it ran (its prompt and answer) is kept for its session, and the session's next
prompt runs only from where it departs from those ids (a chat sends the whole
conversation each turn; only the new turn is prefilled). A session's prompts are only
ever matched against its own earlier ones, and its entry goes when the session ends,
so what the cache saves tells nothing across sessions. The entries of all sessions
hold at most ``prefix_tokens`` tokens together, the least recently used evicted
first: another session's activity can cost yours its entry (it shows there is load,
never what was asked).

A stream's events (:class:`~._generate.Token`, :class:`~._generate.Finished`, or the
:class:`~ephemeralml.common._errors.Error` that ended it) go to an asyncio queue on
the event loop that submitted it. :meth:`StreamHandle.cancel` is seen before the
stream's next step: a client that goes away stops its generation within one step.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ephemeralml.common._config import positive_count
from ephemeralml.common._errors import BusyError, ConfigError, Error, InferenceError, LimitError

from ._chat import ChatModel
from ._generate import BatchCache, Finished, GenerationParams, KVCache, StreamState, Token

#: A session's cached prefix: the ids its KV cache holds, and the cache.
Prefix = tuple[list[int], KVCache]

__all__ = [
    "KV_TOKENS",
    "MAX_ACTIVE_STREAMS",
    "MAX_WAITING_STREAMS",
    "PREFIX_TOKENS",
    "PrefixCache",
    "StreamHandle",
    "StreamLimits",
    "Streams",
]

log = logging.getLogger("ephemeralml.enclave.streams")

#: Streams decoding at once per model: the rows of one batched step.
MAX_ACTIVE_STREAMS = 8
#: Streams waiting for a place; past this a stream is refused rather than queued.
MAX_WAITING_STREAMS = 64
#: KV-cache tokens the decoding batch may hold. For SmolLM2-135M a token holds
#: 30 layers x 2 x 3 heads x 64 x 4 bytes = 46 KB, so 16384 tokens are ~750 MB.
KV_TOKENS = 16384
#: Tokens the sessions' cached prefixes hold together (~190 MB for SmolLM2).
PREFIX_TOKENS = 4096
#: Fewer cached ids than this are not worth a copy of the cache.
_MIN_REUSE = 8

Event = Token | Finished | Error


@dataclass(frozen=True)
class StreamLimits:
    max_active: int = MAX_ACTIVE_STREAMS
    max_waiting: int = MAX_WAITING_STREAMS
    kv_tokens: int = KV_TOKENS
    #: 0: no prefix cache.
    prefix_tokens: int = PREFIX_TOKENS

    def __post_init__(self) -> None:
        positive_count("max streams", self.max_active)
        positive_count("max waiting streams", self.max_waiting)
        positive_count("kv tokens", self.kv_tokens)
        if not isinstance(self.prefix_tokens, int) or self.prefix_tokens < 0:
            raise ConfigError(
                f"prefix cache tokens must be an integer of at least 0, not {self.prefix_tokens!r}"
            )


class PrefixCache:
    """Each session's last prefix (module docstring), least recently used evicted
    first past ``limit`` tokens in all. Used from the event loop only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._entries: collections.OrderedDict[object, Prefix] = collections.OrderedDict()
        self.tokens = 0
        #: Prompt ids served from the cache, and prompts that used it (stop line).
        self.reused = self.hits = 0

    def get(self, owner: object) -> Prefix | None:
        """The session's entry (now the most recently used); a stream starting from
        it copies what it uses, so the entry stays as it is."""
        entry = self._entries.get(owner)
        if entry is not None:
            self._entries.move_to_end(owner)
        return entry

    def put(self, owner: object, entry: Prefix) -> None:
        """Replace the session's entry, evicting others as the bound needs."""
        self.forget(owner)
        if len(entry[0]) > self.limit:
            return
        while self.tokens + len(entry[0]) > self.limit:
            _, old = self._entries.popitem(last=False)
            self.tokens -= len(old[0])
        self._entries[owner] = entry
        self.tokens += len(entry[0])

    def forget(self, owner: object) -> None:
        entry = self._entries.pop(owner, None)
        if entry is not None:
            self.tokens -= len(entry[0])


class StreamHandle:
    """One submitted stream: its events arrive on :attr:`events`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        state: StreamState,
        reserve: int,
        cancelled: threading.Event,
        start: KVCache | None = None,
    ) -> None:
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = cancelled
        self.reserve = reserve
        self.state = state
        #: The cache the prefill starts from (a session's cached prefix), if any.
        self.start = start
        #: When it ended with "stop" or "length": the ids its cache holds, and the
        #: cache (for its session's prefix cache). Set before its Finished is sent.
        self.final: Prefix | None = None
        self._loop = loop

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
        #: Admitted and not ended, in batch row order (new ones at the end).
        self._active: list[StreamHandle] = []
        self._closed = False
        self.prefixes = PrefixCache(self.limits.prefix_tokens)
        self._thread = threading.Thread(
            target=self._run, name=f"generate-{model.model_id}", daemon=True
        )
        #: For the stop line: streams ended, tokens made, decoding rounds, and the
        #: rows of the batched steps (their mean is how full the batches were).
        self.streams = self.tokens = self.rounds = self.rows = 0

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for h in (*self._waiting, *self._active):
                h.cancel()
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def submit(
        self, prompt: list[int], params: GenerationParams, prefix: Prefix | None = None
    ) -> StreamHandle:
        """Admit a stream, or refuse it now (:class:`LimitError`, :class:`InferenceError`).
        ``prefix``: the session's cached prefix, used for as many of the prompt's first
        ids as it holds (never the last: its logits are the first token's)."""
        cancelled = threading.Event()
        reuse, start = 0, None
        if prefix is not None:
            ids, cache = prefix
            limit = min(len(ids), len(prompt) - 1)
            while reuse < limit and ids[reuse] == prompt[reuse]:
                reuse += 1
            if reuse >= _MIN_REUSE:
                start = self.model.decoder.head(cache, reuse)
                self.prefixes.reused += reuse
                self.prefixes.hits += 1
            else:
                reuse = 0
        # The loop's own checks (prompt ids, the context bound), before any work.
        state = self.model.start(prompt, params, cancelled, reuse)
        room = self.model.context_limit - len(prompt)
        reserve = len(prompt) + min(params.max_tokens, room)
        if reserve > self.limits.kv_tokens:
            raise LimitError(
                f"the stream needs {reserve} tokens of KV cache (prompt and max_tokens);"
                f" this enclave holds {self.limits.kv_tokens} for all streams"
            )
        handle = StreamHandle(asyncio.get_running_loop(), state, reserve, cancelled, start)
        with self._cond:
            if self._closed:
                raise InferenceError("the enclave is stopping")
            if len(self._waiting) >= self.limits.max_waiting:
                raise BusyError(
                    f"{self.limits.max_active} streams are generating and"
                    f" {len(self._waiting)} waiting; try again later"
                )
            self._waiting.append(handle)
            self._cond.notify()
        return handle

    def _fits(self, head: StreamHandle) -> bool:
        rows = len(self._active) + 1
        widest = max([head.reserve, *(h.reserve for h in self._active)])
        return rows * widest <= self.limits.kv_tokens

    def _admit(self) -> list[StreamHandle]:
        """Waiting streams that now have a place, in order: the first that does not
        fit holds the others back, so a long request is not passed over for ever."""
        admitted = []
        while self._waiting and len(self._active) < self.limits.max_active:
            head = self._waiting[0]
            if not head.cancelled.is_set() and not self._fits(head):
                break
            self._waiting.popleft()
            self._active.append(head)
            admitted.append(head)
        return admitted

    def _run(self) -> None:
        batch: BatchCache | None = None
        #: The streams whose caches are the batch's rows, in row order.
        rows: list[StreamHandle] = []
        while True:
            with self._cond:
                new = self._admit()
                while not self._active and not self._closed:
                    self._cond.wait()
                    new = self._admit()
                if self._closed and not self._active:
                    return
            self.rounds += 1
            # Cancelled streams leave before the step; the rest take it together.
            ended = [h for h in rows if self._cancelled(h)]
            batch, rows = self._leave(batch, rows, ended)
            if rows:
                assert batch is not None
                batch, done = self._decode(batch, rows)
                ended += done
                batch, rows = self._leave(batch, rows, done)
            # Streams admitted since the last round run their prompt and join.
            for h in new:
                cache = None if self._cancelled(h) else self._prefill(h)
                if cache is None:
                    ended.append(h)
                else:
                    batch = self.model.decoder.join(batch, cache)
                    rows.append(h)
            if ended:
                with self._cond:
                    for h in ended:
                        self._active.remove(h)
                    self.streams += len(ended)

    def _cancelled(self, h: StreamHandle) -> bool:
        end = h.state.check_cancelled()
        if end is not None:
            h._emit(end)
            return True
        return False

    def _leave(
        self, batch: BatchCache | None, rows: list[StreamHandle], gone: list[StreamHandle]
    ) -> tuple[BatchCache | None, list[StreamHandle]]:
        if not gone:
            return batch, rows
        kept = [h for h in rows if h not in gone]
        if batch is None or not kept:
            return None, kept
        out = [i for i, h in enumerate(rows) if h in gone]
        return self.model.decoder.leave(batch, out), kept

    def _prefill(self, h: StreamHandle) -> KVCache | None:
        """Run a new stream's prompt alone; its cache, or None when it has ended."""
        decoder = self.model.decoder
        try:
            logits, cache = decoder.step(h.state.feed, h.start or decoder.empty_cache())
        except Error as e:
            h._emit(e)
            return None
        h.start = None
        return None if self._emit_all(h, h.state.advance(logits), lambda: cache) else cache

    def _decode(
        self, batch: BatchCache, rows: list[StreamHandle]
    ) -> tuple[BatchCache | None, list[StreamHandle]]:
        """One batched step of every row: the batch after it, and the streams that ended."""
        try:
            logits, stepped = self.model.decoder.step_batch([h.state.feed[-1] for h in rows], batch)
        except Error as e:
            for h in rows:
                h._emit(e)
            return None, list(rows)
        self.rows += len(rows)
        row = functools.partial(self.model.decoder.row, stepped)
        done = [
            h
            for i, h in enumerate(rows)
            if self._emit_all(h, h.state.advance(logits[i]), functools.partial(row, i))
        ]
        return stepped, done

    def _emit_all(
        self, h: StreamHandle, events: list[Token | Finished], cache: Callable[[], KVCache]
    ) -> bool:
        """Send one step's events; True when the stream has ended. An end by ``stop``
        or ``length`` first keeps the stream's ``cache`` for its session's next prompt."""
        if h.state.done and self.limits.prefix_tokens and not h.cancelled.is_set():
            h.final = (list(h.state.fed), cache())
        for e in events:
            if isinstance(e, Token):
                self.tokens += 1
            h._emit(e)
        return h.state.done
