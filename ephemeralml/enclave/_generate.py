"""Text generation with a decoder-only ONNX model and its KV cache.

The model is an optimum ``text-generation-with-past`` export (SmolLM2's, or the tests'
tiny decoder): inputs ``input_ids`` [batch, seq], ``attention_mask`` [batch, past +
seq], ``position_ids`` [batch, seq] (optional), ``past_key_values.{i}.key`` and
``.value`` [batch, kv_heads, past, head_dim]; outputs ``logits`` [batch, seq, vocab]
and ``present.{i}.key`` / ``.value``. :class:`DecoderModel` checks that interface when
it is built and runs one step; :func:`generate` is the loop: prefill of the prompt,
then one step per token with the cache fed back (``present.*`` -> ``past_key_values.*``).

:func:`generate` yields a :class:`Token` per generated token, then one
:class:`Finished`: the concatenation of every ``Token.text`` and ``Finished.text`` is
the answer, so a streaming layer can seal each event as it comes. The loop takes
token ids (the chat template and tokenization are the caller's) and a ``decode``
callable (``tokenizers.Tokenizer.decode``) for the text and the stop sequences.

Sampling rule (:func:`sample_token`), stated so that a client holding the logits can
reproduce a sampled stream from its ``seed``:

1. ``temperature == 0``: the token is ``argmax(logits)``, the lowest id on a tie;
   no random number is drawn.
2. Otherwise ``z = float64(logits) / temperature``; the candidates are all ids in
   descending ``z``, ties by ascending id (a stable sort of ``-z``).
3. ``top_k > 0`` keeps the first ``top_k`` candidates.
4. ``p = exp(z - z_max)`` normalised over the candidates; ``top_p < 1`` keeps the
   shortest prefix whose cumulative ``p`` reaches ``top_p`` (at least one).
5. One draw ``u = rng.random()`` per token, from ``numpy.random.Generator(PCG64(seed))``
   created once per stream; the token is the first candidate whose cumulative ``p``
   exceeds ``u * sum(p)`` (``searchsorted(..., side="right")``).

So ``top_k == 1`` gives the greedy stream, and a stream with a seed is reproducible
for the same model, prompt and parameters. Without a seed, the generator is seeded
from the operating system.

:func:`generate` runs one stream alone; :class:`StreamState` is that stream's state
apart from its cache, so that the enclave's scheduler can decode several streams in
one ONNX Runtime run (:meth:`DecoderModel.step_batch` over a :class:`BatchCache`,
rows joining and leaving between steps). Not done here: I/O binding (the cache
returns to host memory every step), chat templates (:mod:`._chat`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from ephemeralml.common._errors import ConfigError, InferenceError, LimitError
from ephemeralml.common._modelfiles import is_int

from ._model import load_session

__all__ = [
    "MAX_SEED",
    "MAX_STOP_BYTES",
    "MAX_STOP_SEQUENCES",
    "MAX_STOP_TOKEN_IDS",
    "MAX_TEMPERATURE",
    "BatchCache",
    "DecoderModel",
    "FinishReason",
    "Finished",
    "GenerationParams",
    "KVCache",
    "StreamState",
    "Token",
    "generate",
    "sample_token",
    "start_stream",
]

#: Stop sequences per request: the OpenAI API's limit, which the proxy mirrors.
MAX_STOP_SEQUENCES = 4
#: UTF-8 bytes per stop sequence. Text that may be the start of a stop sequence is
#: held back from the stream until it cannot be, so this bounds how long a client
#: waits for text it is owed; any real stop marker is far shorter.
MAX_STOP_BYTES = 128
#: Extra stop token ids per request (besides the model's end-of-sequence ids): each
#: generated token is looked up in them.
MAX_STOP_TOKEN_IDS = 16
#: The OpenAI API's range for temperature; past 2 the output is noise.
MAX_TEMPERATURE = 2.0
#: Seeds are unsigned 64-bit, so that they travel as a CBOR uint and PCG64 takes them.
MAX_SEED = 2**64 - 1
#: Prompt tokens decoded before the first generated one, so that its text comes out
#: as it would in context (a leading space, a merge): vLLM's choice.
_DECODE_CONTEXT = 5

FinishReason = Literal["stop", "length", "cancelled"]

_KV_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


@dataclass(frozen=True)
class GenerationParams:
    """What a request asks of the loop; checked when built.

    The defaults are greedy decoding (``temperature`` 0). ``top_k`` 0 means no
    limit; ``top_p`` 1 means none. ``stop`` is matched on the decoded text of the
    generated tokens; ``stop_token_ids`` add to the model's end-of-sequence ids.
    :class:`InferenceError` for a bad value, :class:`LimitError` for too many or too
    long stops.
    """

    max_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not is_int(self.max_tokens) or self.max_tokens < 1:
            raise InferenceError(
                f"max_tokens must be an integer of at least 1, not {self.max_tokens!r}"
            )
        if not _is_number(self.temperature) or not 0 <= self.temperature <= MAX_TEMPERATURE:
            raise InferenceError(
                f"temperature must be a number from 0 to {MAX_TEMPERATURE:g},"
                f" not {self.temperature!r}"
            )
        if not is_int(self.top_k) or self.top_k < 0:
            raise InferenceError(
                f"top_k must be an integer of at least 0 (0: no limit), not {self.top_k!r}"
            )
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise InferenceError(f"top_p must be a number in (0, 1], not {self.top_p!r}")
        if self.seed is not None and (not is_int(self.seed) or not 0 <= self.seed <= MAX_SEED):
            raise InferenceError(f"seed must be an integer from 0 to 2**64 - 1, not {self.seed!r}")
        ids = self.stop_token_ids
        if not isinstance(ids, list | tuple) or not all(is_int(i) and i >= 0 for i in ids):
            raise InferenceError("stop_token_ids must be a list of non-negative integers")
        if len(ids) > MAX_STOP_TOKEN_IDS:
            raise LimitError(f"{len(ids)} stop token ids; the limit is {MAX_STOP_TOKEN_IDS}")
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, list | tuple) or not all(isinstance(s, str) and s for s in stop):
            raise InferenceError("stop must be a non-empty string or a list of them")
        if len(stop) > MAX_STOP_SEQUENCES:
            raise LimitError(f"{len(stop)} stop sequences; the limit is {MAX_STOP_SEQUENCES}")
        for i, s in enumerate(stop):
            if len(s.encode("utf-8", "surrogatepass")) > MAX_STOP_BYTES:
                raise LimitError(f"stop sequence {i} is over {MAX_STOP_BYTES} bytes")
        object.__setattr__(self, "stop_token_ids", tuple(ids))
        object.__setattr__(self, "stop", tuple(stop))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Token:
    """One generated token and the text it releases (possibly ``""``: text that may
    still turn out to be a stop sequence, or an incomplete UTF-8 character, is held
    back until it is known)."""

    id: int
    text: str


@dataclass(frozen=True)
class Finished:
    """The end of a stream. ``text`` is what was still held back and is released now
    (``""`` after a stop sequence or a cancellation). ``completion_tokens`` counts
    every token the model produced, a stop token id included (as usage counts do);
    ``stop`` is the stop token id or stop sequence that ended it, else ``None``."""

    reason: FinishReason
    text: str
    prompt_tokens: int
    completion_tokens: int
    stop: int | str | None = None


def _dims(t: Any) -> tuple[int, ...]:
    """A tensor's shape: a numpy array's, or an ONNX Runtime OrtValue's (I/O binding)."""
    return tuple(t.shape() if isinstance(t, ort.OrtValue) else t.shape)


@dataclass(frozen=True)
class KVCache:
    """The key and value tensors of every layer, in ``past_key_values`` input order:
    numpy arrays, or OrtValues where they live (on the GPU with I/O binding)."""

    tensors: tuple[Any, ...]

    @property
    def length(self) -> int:
        """Tokens held (the ``past`` dimension)."""
        return int(_dims(self.tensors[0])[2])


class DecoderModel:
    """An ONNX Runtime session of a decoder-only model with a KV cache, its interface
    checked when built (:class:`ConfigError` otherwise).

    ``context_limit`` is the model's context in tokens (its ``max_position_embeddings``;
    an ONNX export does not record it): a stream's prompt plus generated tokens never
    exceed it, which also bounds its KV cache. Not safe for concurrent calls of
    :meth:`step` from several threads on one instance's caches; the session is.
    """

    session: Any
    context_limit: int
    vocab_size: int
    num_layers: int
    kv_heads: int
    head_dim: int
    device: str

    @classmethod
    def from_bytes(
        cls,
        onnx: bytes,
        *,
        context_limit: int,
        intra_op_threads: int | None = None,
        device: str = "cpu",
        io_binding: bool | None = None,
    ) -> DecoderModel:
        """Load from bytes, never a path (the weights may exist only in memory), with
        the session options of the embedding model (:mod:`._model`)."""
        if intra_op_threads is not None and (not is_int(intra_op_threads) or intra_op_threads < 1):
            raise ConfigError(
                f"intra_op_threads must be a positive integer, not {intra_op_threads!r}"
            )
        return cls(
            load_session(onnx, intra_op_threads, device),
            context_limit=context_limit,
            device=device,
            io_binding=io_binding,
        )

    def __init__(
        self,
        session: ort.InferenceSession,
        *,
        context_limit: int,
        device: str = "cpu",
        io_binding: bool | None = None,
    ) -> None:
        if not is_int(context_limit) or context_limit < 2:
            raise ConfigError(
                f"the context limit must be an integer of at least 2, not {context_limit!r}"
            )
        self.session, self.context_limit, self.device = session, context_limit, device
        #: With I/O binding the KV cache stays where the model runs (the GPU's memory
        #: with ``device="cuda"``): each step's ``present`` is the next step's ``past``
        #: without a trip through host memory; only the logits come back. The default
        #: on CUDA; on CPU it can be asked for (the same path, tested without a GPU).
        self.io_binding = device == "cuda" if io_binding is None else io_binding
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = {o.name: o for o in session.get_outputs()}
        past = sorted(n for n in inputs if n.startswith("past_key_values."))
        self.num_layers = len(past) // 2
        self._past_names = [
            f"past_key_values.{i}.{kind}"
            for i in range(self.num_layers)
            for kind in ("key", "value")
        ]
        self._present_names = [
            f"present.{i}.{kind}" for i in range(self.num_layers) for kind in ("key", "value")
        ]
        self._with_positions = "position_ids" in inputs
        expected_in = {"input_ids", "attention_mask", *self._past_names}
        if self.num_layers < 1 or set(inputs) - {"position_ids"} != expected_in:
            raise ConfigError(
                "a decoder model must take input_ids, attention_mask, [position_ids,]"
                f" past_key_values.{{i}}.key/value, not {sorted(inputs)}"
            )
        if not {"logits", *self._present_names} <= set(outputs):
            raise ConfigError(
                "a decoder model must return logits and present.{i}.key/value,"
                f" not {sorted(outputs)}"
            )
        shapes = {tuple(inputs[n].shape) for n in self._past_names}
        types = {inputs[n].type for n in self._past_names}
        shape = next(iter(shapes))
        if len(shapes) != 1 or len(shape) != 4 or not all(is_int(d) and d > 0 for d in shape[1::2]):
            raise ConfigError(
                "past_key_values must all be [batch, kv_heads, past, head_dim],"
                f" not {sorted(map(str, shapes))}"
            )
        if len(types) != 1 or next(iter(types)) not in _KV_DTYPES:
            raise ConfigError(f"past_key_values must be float32 or float16, not {sorted(types)}")
        self.kv_heads, self.head_dim = int(shape[1]), int(shape[3])
        self._kv_dtype = _KV_DTYPES[next(iter(types))]
        logits_shape = list(outputs["logits"].shape)
        vocab = logits_shape[-1] if len(logits_shape) == 3 else None
        if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1:
            raise ConfigError(
                f"logits must be [batch, seq, vocab] with a fixed vocab, not {logits_shape}"
            )
        self.vocab_size = vocab

    def empty_cache(self) -> KVCache:
        empty = np.zeros((1, self.kv_heads, 0, self.head_dim), dtype=self._kv_dtype)
        return KVCache(tuple(empty for _ in self._past_names))

    def step(self, ids: Sequence[int], cache: KVCache) -> tuple[npt.NDArray[np.float32], KVCache]:
        """Run ``ids`` after ``cache`` (one sequence): the last position's logits
        (float32 [vocab]) and the cache with ``ids`` appended. The caller keeps
        ``cache.length + len(ids)`` within :attr:`context_limit`."""
        n, past = len(ids), cache.length
        feed: dict[str, npt.NDArray[Any]] = {
            "input_ids": np.asarray([ids], dtype=np.int64),
            "attention_mask": np.ones((1, past + n), dtype=np.int64),
        }
        if self._with_positions:
            feed["position_ids"] = np.arange(past, past + n, dtype=np.int64)[None, :]
        feed.update(zip(self._past_names, cache.tensors, strict=True))
        logits, present = self._run(feed)
        if logits.shape != (1, n, self.vocab_size) or any(
            _dims(p) != (1, self.kv_heads, past + n, self.head_dim) for p in present
        ):
            raise InferenceError(
                f"the model returned logits of shape {logits.shape} or a cache of another length"
            )
        last: npt.NDArray[np.float32] = np.asarray(logits[0, -1], dtype=np.float32)
        _check_finite(last)
        return last, KVCache(tuple(present))

    def step_batch(
        self, tokens: Sequence[int], batch: BatchCache
    ) -> tuple[npt.NDArray[np.float32], BatchCache]:
        """One token after each row of ``batch``: the logits of each row (float32
        [rows, vocab]) and the batch with one more token in every row. Padding is
        masked out and each row's positions are its own, so a row's logits are those
        of its stream run alone (to float rounding)."""
        rows, width = len(tokens), batch.width
        mask = np.zeros((rows, width + 1), dtype=np.int64)
        for i, n in enumerate(batch.lengths):
            mask[i, width - n :] = 1
        feed: dict[str, npt.NDArray[Any]] = {
            "input_ids": np.asarray(tokens, dtype=np.int64)[:, None],
            "attention_mask": mask,
        }
        if self._with_positions:
            feed["position_ids"] = np.asarray(batch.lengths, dtype=np.int64)[:, None]
        feed.update(zip(self._past_names, batch.tensors, strict=True))
        logits, present = self._run(feed)
        shape = (rows, self.kv_heads, width + 1, self.head_dim)
        if logits.shape != (rows, 1, self.vocab_size) or any(_dims(p) != shape for p in present):
            raise InferenceError(
                f"the model returned logits of shape {logits.shape} or a cache of another shape"
            )
        last: npt.NDArray[np.float32] = np.asarray(logits[:, -1], dtype=np.float32)
        _check_finite(last)
        return last, BatchCache(tuple(present), tuple(n + 1 for n in batch.lengths))

    def join(self, batch: BatchCache | None, cache: KVCache) -> BatchCache:
        """``batch`` with ``cache`` as a new last row (all rows left-padded to the
        longest): a stream that has run its prefill joins the decoding batch."""
        rows = [] if batch is None else [batch]
        width = max([cache.length, *([batch.width] if batch else [])])

        def pad(t: Any) -> npt.NDArray[Any]:
            t = _host(t)
            extra = width - t.shape[2]
            return t if extra == 0 else np.pad(t, ((0, 0), (0, 0), (extra, 0), (0, 0)))

        # Joining and leaving are rare next to steps: with I/O binding they take the
        # cache through host memory, and it goes back to the device for the next step.
        tensors = tuple(
            self._placed(
                np.concatenate([pad(r.tensors[i]) for r in rows] + [pad(cache.tensors[i])], axis=0)
            )
            for i in range(len(self._past_names))
        )
        lengths = (*(batch.lengths if batch else ()), cache.length)
        return BatchCache(tensors, lengths)

    def leave(self, batch: BatchCache, rows: Sequence[int]) -> BatchCache | None:
        """``batch`` without ``rows`` (streams that ended), its common left padding
        cut; ``None`` when no row is left."""
        keep = [i for i in range(len(batch.lengths)) if i not in set(rows)]
        if not keep:
            return None
        lengths = tuple(batch.lengths[i] for i in keep)
        cut = batch.width - max(lengths)
        return BatchCache(
            self._sliced(batch.tensors, (keep, slice(None), slice(cut, None))), lengths
        )

    def row(self, batch: BatchCache, i: int) -> KVCache:
        """Row ``i`` of ``batch`` as a cache of its own (its padding cut)."""
        cut = batch.width - batch.lengths[i]
        return KVCache(
            self._sliced(batch.tensors, (slice(i, i + 1), slice(None), slice(cut, None)))
        )

    def head(self, cache: KVCache, n: int) -> KVCache:
        """The first ``n`` positions of ``cache`` (a cached prefix of a prompt)."""
        return KVCache(self._sliced(cache.tensors, (slice(None), slice(None), slice(0, n))))

    def _sliced(self, tensors: tuple[Any, ...], index: tuple[Any, ...]) -> tuple[Any, ...]:
        """Each cache tensor cut by ``index`` (rows, heads, positions), as a new tensor
        where the model keeps its cache."""
        return tuple(self._placed(np.ascontiguousarray(_host(t)[index])) for t in tensors)

    def _placed(self, array: npt.NDArray[Any]) -> Any:
        """A cache tensor where the model keeps its cache: on its device with I/O
        binding, else the host array itself."""
        if not self.io_binding:
            return array
        return ort.OrtValue.ortvalue_from_numpy(array, _ORT_DEVICE[self.device], 0)

    def _run(self, feed: dict[str, Any]) -> tuple[npt.NDArray[Any], list[Any]]:
        try:
            if not self.io_binding:
                logits, *present = self.session.run(["logits", *self._present_names], feed)
                return logits, present
            binding = self.session.io_binding()
            for name, value in feed.items():
                if isinstance(value, ort.OrtValue):
                    binding.bind_ortvalue_input(name, value)
                else:
                    binding.bind_cpu_input(name, np.ascontiguousarray(value))
            binding.bind_output("logits", "cpu")
            for name in self._present_names:
                binding.bind_output(name, _ORT_DEVICE[self.device])
            self.session.run_with_iobinding(binding)
            logits_value, *present = binding.get_outputs()
            return logits_value.numpy(), present
        except Exception as e:  # onnxruntime's errors share no public base class
            raise InferenceError(f"the model failed to run: {e}") from e


#: ONNX Runtime's device names for I/O binding, by ``--device``.
_ORT_DEVICE = {"cpu": "cpu", "cuda": "cuda"}


def _host(t: Any) -> npt.NDArray[Any]:
    """A cache tensor in host memory (a copy from the device for an OrtValue)."""
    array: npt.NDArray[Any] = t.numpy() if isinstance(t, ort.OrtValue) else t
    return array


def _check_finite(logits: npt.NDArray[np.float32]) -> None:
    # NaN or +inf would make every sampling rule meaningless; -inf (a banned id) is fine.
    if np.isnan(logits).any() or np.isposinf(logits).any() or not np.isfinite(logits.max(-1)).all():
        raise InferenceError("the model returned logits that are not finite")


def sample_token(
    logits: npt.NDArray[np.floating[Any]], params: GenerationParams, rng: np.random.Generator
) -> int:
    """The next token from one position's logits, by the rule in the module docstring."""
    if params.temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / params.temperature
    order = np.argsort(-z, kind="stable")
    if params.top_k:
        order = order[: params.top_k]
    p = np.exp(z[order] - z[order[0]])
    if params.top_p < 1:
        keep = int(np.searchsorted(np.cumsum(p) / p.sum(), params.top_p, side="left")) + 1
        order, p = order[:keep], p[:keep]
    cdf = np.cumsum(p)
    at = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return int(order[min(at, len(order) - 1)])


def generate(
    model: DecoderModel,
    prompt: Sequence[int],
    params: GenerationParams,
    *,
    decode: Callable[[list[int]], str],
    eos_token_ids: Sequence[int] = (),
    cancelled: Callable[[], bool] | None = None,
) -> Iterator[Token | Finished]:
    """Generate after ``prompt`` (token ids); yields :class:`Token` then one :class:`Finished`.

    Checked now, before any work (the iterator is returned only if they pass):
    the prompt is a non-empty list of ids below the vocabulary size
    (:class:`InferenceError`), and it leaves room for one token in the model's
    context (:class:`LimitError`); stop ids are in the vocabulary. ``max_tokens`` is
    cut to the room left: a stream ends with ``"length"`` when prompt plus generated
    tokens reach :attr:`DecoderModel.context_limit`.

    ``decode`` turns ids into text (``Tokenizer.decode``, special tokens skipped).
    ``cancelled`` is asked before every model run, so a client that goes away stops
    the stream within one step (it ends with ``"cancelled"`` and releases no more text).
    """
    _check(model, prompt, params, eos_token_ids)
    return _stream(model, list(prompt), params, decode, frozenset(eos_token_ids), cancelled)


def _check(
    model: DecoderModel,
    prompt: Sequence[int],
    params: GenerationParams,
    eos_token_ids: Sequence[int],
) -> None:
    """:func:`generate`'s checks, before any work."""
    if not isinstance(prompt, list | tuple) or not all(is_int(t) for t in prompt):
        raise InferenceError("the prompt must be a list of token ids")
    if not prompt:
        raise InferenceError("the prompt has no tokens")
    for where, ids in (("prompt", prompt), ("stop_token_ids", params.stop_token_ids)):
        bad = next((i for i, t in enumerate(ids) if not 0 <= t < model.vocab_size), None)
        if bad is not None:
            raise InferenceError(
                f"{where} token {bad} is {ids[bad]}; the vocabulary has {model.vocab_size} tokens"
            )
    if not all(is_int(t) and 0 <= t < model.vocab_size for t in eos_token_ids):
        raise ConfigError(
            f"end-of-sequence ids {list(eos_token_ids)} are not all in the vocabulary"
        )
    if len(prompt) >= model.context_limit:
        raise LimitError(
            f"the prompt is {len(prompt)} tokens; the model's context is {model.context_limit}"
            " tokens, prompt and answer together"
        )


def _stream(
    model: DecoderModel,
    prompt: list[int],
    params: GenerationParams,
    decode: Callable[[list[int]], str],
    eos_ids: frozenset[int],
    cancelled: Callable[[], bool] | None,
) -> Iterator[Token | Finished]:
    state = StreamState(model, prompt, params, decode, eos_ids, cancelled)
    cache = model.empty_cache()
    while True:
        if (end := state.check_cancelled()) is not None:
            yield end
            return
        logits, cache = model.step(state.feed, cache)
        yield from state.advance(logits)
        if state.done:
            return


class StreamState:
    """One stream's decoding state apart from its KV cache: what to feed the model
    next, the sampler, the detokenizer and the stop rules. :func:`generate` runs one
    with a cache of its own; the enclave's scheduler runs several in one batch
    (:class:`BatchCache`). Built by :func:`start_stream`, after generate's checks."""

    def __init__(
        self,
        model: DecoderModel,
        prompt: list[int],
        params: GenerationParams,
        decode: Callable[[list[int]], str],
        eos_ids: frozenset[int],
        cancelled: Callable[[], bool] | None,
        cached: int = 0,
    ) -> None:
        self.params = params
        self.prompt_tokens = len(prompt)
        self._rng = np.random.Generator(np.random.PCG64(params.seed))
        self._stop_ids = eos_ids | frozenset(params.stop_token_ids)
        self._budget = min(params.max_tokens, model.context_limit - len(prompt))
        self._text = _Detokenizer(decode, prompt[-_DECODE_CONTEXT:])
        self._stops = _StopText(params.stop)
        self._cancelled = cancelled
        #: The ids the model runs next: the prompt (prefill; without its first
        #: ``cached`` ids when a cache of them is given), then the last token.
        self.feed: list[int] = prompt[cached:]
        #: The ids the stream's KV cache holds once ``feed`` has run.
        self.fed: list[int] = prompt[:cached]
        self.made = 0
        self.done = False

    def check_cancelled(self) -> Finished | None:
        """Asked before every model run: the stream's end if it was cancelled."""
        if self._cancelled is not None and self._cancelled():
            self.done = True
            return Finished("cancelled", "", self.prompt_tokens, self.made)
        return None

    def advance(self, logits: npt.NDArray[np.float32]) -> list[Token | Finished]:
        """The events of one step, given the logits of the stream's last position."""
        self.fed += self.feed
        token = sample_token(logits, self.params, self._rng)
        self.made += 1
        n = self.prompt_tokens
        if token in self._stop_ids:
            self.done = True
            return [Finished("stop", self._stops.flush(self._text.flush()), n, self.made, token)]
        released, stop = self._stops.push(self._text.push(token))
        events: list[Token | Finished] = [Token(token, released)]
        if stop is not None:
            self.done = True
            events.append(Finished("stop", "", n, self.made, stop))
        elif self.made == self._budget:
            self.done = True
            events.append(Finished("length", self._stops.flush(self._text.flush()), n, self.made))
        else:
            self.feed = [token]
        return events


def start_stream(
    model: DecoderModel,
    prompt: Sequence[int],
    params: GenerationParams,
    *,
    decode: Callable[[list[int]], str],
    eos_token_ids: Sequence[int] = (),
    cancelled: Callable[[], bool] | None = None,
    cached: int = 0,
) -> StreamState:
    """A :class:`StreamState` for ``prompt``, after :func:`generate`'s checks;
    ``cached``: how many of its first ids a cache the caller holds already covers
    (fewer than all: the last prompt id always runs, for its logits)."""
    _check(model, prompt, params, eos_token_ids)
    if not 0 <= cached < len(prompt):
        raise ConfigError(f"a cache of {cached} ids cannot serve a prompt of {len(prompt)}")
    return StreamState(
        model, list(prompt), params, decode, frozenset(eos_token_ids), cancelled, cached
    )


@dataclass(frozen=True)
class BatchCache:
    """The KV caches of several streams as one batch: row ``i`` holds ``lengths[i]``
    tokens, right-aligned (left padding up to the longest row), so that one step
    feeds one token to every row. Rows join (:meth:`DecoderModel.join`) and leave
    (:meth:`DecoderModel.leave`) between steps."""

    tensors: tuple[Any, ...]
    lengths: tuple[int, ...]

    @property
    def width(self) -> int:
        """Cache positions per row, padding included."""
        return int(_dims(self.tensors[0])[2])


class _Detokenizer:
    """Incremental decoding (vLLM's ``detokenize_incrementally``): decode a short
    window of ids before and after the new token and release the difference, unless
    it ends in U+FFFD (a UTF-8 character split across tokens, completed later)."""

    def __init__(self, decode: Callable[[list[int]], str], context: list[int]) -> None:
        self._decode = decode
        self._ids = list(context)
        self._read = len(self._ids)  # ids[:read] have been released (or are context)

    def _text(self, ids: list[int]) -> str:
        try:
            return str(self._decode(ids))
        except Exception as e:  # tokenizers raises plain Exception subclasses
            raise InferenceError(f"cannot decode the generated tokens: {e}") from e

    def push(self, token: int) -> str:
        self._ids.append(token)
        return self._release(final=False)

    def flush(self) -> str:
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        before = self._text(self._ids[: self._read])
        after = self._text(self._ids)
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return ""
        # Keep the released window as the next one's context, drop what came before.
        self._ids = self._ids[self._read :]
        self._read = len(self._ids)
        return after[len(before) :]


class _StopText:
    """Holds back text that may be the start of a stop sequence; finds the earliest
    stop sequence. Released text never contains a stop sequence or a part of one
    that ends the stream."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._held = ""

    def push(self, text: str) -> tuple[str, str | None]:
        if not self._stops:
            return text, None
        held = self._held + text
        hits = [(at, i) for i, s in enumerate(self._stops) if (at := held.find(s)) >= 0]
        if hits:
            at, i = min(hits)
            self._held = ""
            return held[:at], self._stops[i]
        # The longest end of `held` that is a proper start of some stop sequence.
        keep = max(
            (
                k
                for s in self._stops
                for k in range(1, min(len(s), len(held) + 1))
                if held.endswith(s[:k])
            ),
            default=0,
        )
        self._held = held[len(held) - keep :]
        return held[: len(held) - keep], None

    def flush(self, text: str) -> str:
        released, stop = self.push(text)
        if stop is not None:
            return released
        released, self._held = released + self._held, ""
        return released
