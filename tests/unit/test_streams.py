"""The chat model and its decoding thread (enclave/_chat.py, enclave/_streams.py), on
the tiny chat model: templates and refusals, round-robin steps, cancellation within
one step, and the KV-cache and queue bounds."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest

from ephemeralml.common._errors import BusyError, ConfigError, InferenceError, LimitError
from ephemeralml.common._messages import ChatMessage, GenerateRequest
from ephemeralml.common._modelfiles import ChatModelFiles, model_files_from_bundle
from ephemeralml.enclave._chat import ChatModel, render_chatml
from ephemeralml.enclave._generate import Finished, GenerationParams, KVCache, Token
from ephemeralml.enclave._streams import PrefixCache, StreamHandle, StreamLimits, Streams
from tests.models.tiny_chat import MODEL_ID, chat_prompt_ids, reference_answer, write_tiny_chat

ASK = [("user", "the cat sat")]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = write_tiny_chat(Path(tmp_path_factory.mktemp("tiny-chat")))
    return {n: (d / n).read_bytes() for n in ("model.json", "tokenizer.json", "model.onnx")}


@pytest.fixture
def chat(files: dict[str, bytes]) -> ChatModel:
    return ChatModel(_chat_files(files))


def _chat_files(files: dict[str, bytes]) -> ChatModelFiles:
    f = model_files_from_bundle(files, model_id=MODEL_ID, where="tiny")
    assert isinstance(f, ChatModelFiles)
    return f


def _request(messages: list[tuple[str, str]] = ASK, **kw: Any) -> GenerateRequest:
    return GenerateRequest(
        MODEL_ID, kw.pop("max_tokens", 8), messages=tuple(ChatMessage(*m) for m in messages), **kw
    )


def test_chatml_is_rendered_as_smollm2_writes_it() -> None:
    msgs = (ChatMessage("user", "hi"),)
    assert render_chatml(msgs, "Be brief.") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    own = (ChatMessage("system", "S"), ChatMessage("user", "hi"))
    assert render_chatml(own, "Be brief.").startswith("<|im_start|>system\nS<|im_end|>\n<|im_s")
    assert render_chatml(msgs, None) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_prompt_ids_and_the_greedy_answer(chat: ChatModel) -> None:
    ids = chat.prompt_ids(_request())
    assert ids == chat_prompt_ids(ASK)
    events = list(chat.stream(ids, chat.params(_request())))
    text, finish, n = reference_answer(ids, 8)
    end = events[-1]
    assert isinstance(end, Finished) and (end.reason, end.completion_tokens) == (finish, n)
    assert "".join(e.text for e in events) == text


@pytest.mark.parametrize("marker", ["<|im_start|>", "<|im_end|>", "<eos>"])
def test_a_message_cannot_write_a_template_marker(chat: ChatModel, marker: str) -> None:
    with pytest.raises(InferenceError) as info:
        chat.prompt_ids(_request([("user", "ok"), ("user", f"x {marker}system y")]))
    assert info.value.message == (
        f"message 1 contains the special token {marker!r}, which only the chat template may write"
    )


def test_a_plain_prompt_is_the_callers_own_text(chat: ChatModel) -> None:
    ids = chat.prompt_ids(GenerateRequest(MODEL_ID, 4, prompt="<|im_start|>user the"))
    assert len(ids) == 3  # the marker is the caller's to write in a plain prompt


def test_a_model_json_that_disagrees_with_the_model_is_refused(files: dict[str, bytes]) -> None:
    bad = files["model.json"].replace(b'"vocab_size": 64', b'"vocab_size": 65')
    f = _chat_files({**files, "model.json": bad})
    with pytest.raises(ConfigError) as info:
        ChatModel(f)
    assert info.value.message == (
        "model tiny-chat: the ONNX model's vocabulary is 64, model.json says 65"
    )


class Gate:
    """An ORT session that runs only when let through, one run per permit."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.permits = threading.Semaphore(0)
        self.runs = 0
        self.entered = threading.Event()
        self.arrivals = threading.Semaphore(0)

    def run(self, *a: Any, **kw: Any) -> Any:
        self.entered.set()
        self.arrivals.release()
        assert self.permits.acquire(timeout=10)
        self.runs += 1
        return self.session.run(*a, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


async def _drain(h: StreamHandle) -> list[Token | Finished]:
    out: list[Token | Finished] = []
    while True:
        e = await asyncio.wait_for(h.events.get(), 10)
        assert not isinstance(e, Exception), e
        out.append(e)
        if isinstance(e, Finished):
            return out


PROMPTS = [
    [("user", "the cat sat")],
    [("user", "the dog ran far and then")],
    [("system", "we saw"), ("user", "it is not")],
    [("user", "a b c")],
]


def test_streams_decode_together_and_answer_as_they_would_alone(chat: ChatModel) -> None:
    """Four streams of different prompt lengths, one joining late: each answer is the
    one its stream gives alone (and the numpy reference's), and the decoding steps
    after the prefills were batched: one ONNX Runtime run per round for all rows."""
    streams = Streams(chat)
    streams.start()
    params = GenerationParams(max_tokens=8)

    async def main() -> list[list[Token | Finished]]:
        ids = [chat_prompt_ids(p) for p in PROMPTS]
        handles = [streams.submit(p, params) for p in ids[:3]]
        first = await asyncio.wait_for(handles[0].events.get(), 10)  # a round has run
        assert isinstance(first, Token)
        late = streams.submit(ids[3], params)
        results = [[first, *await _drain(handles[0])]]
        return results + [await _drain(h) for h in (*handles[1:], late)]

    try:
        results = asyncio.run(main())
    finally:
        streams.close()
    for prompt, events in zip(PROMPTS, results, strict=True):
        ids = chat_prompt_ids(prompt)
        alone = list(chat.stream(ids, params))
        assert events == alone
        text, finish, n = reference_answer(ids, 8)
        end = events[-1]
        assert isinstance(end, Finished) and (end.reason, end.completion_tokens) == (finish, n)
        assert "".join(e.text for e in events) == text
    made = [len(r) - 1 for r in results]
    assert streams.streams == 4 and streams.tokens == sum(made)
    # Each stream's first token comes from its prefill, the rest from batched steps.
    assert streams.rows == sum(made) - 4
    assert streams.rounds < sum(made) - 4  # fewer runs than steps: rows shared them


def test_a_cancelled_stream_stops_before_its_next_step(chat: ChatModel) -> None:
    gate = Gate(chat.decoder.session)
    chat.decoder.session = gate
    streams = Streams(chat)
    streams.start()

    async def main() -> list[Token | Finished]:
        h = streams.submit(chat_prompt_ids(ASK), GenerationParams(max_tokens=8))
        gate.permits.release()  # the prefill
        first = await asyncio.wait_for(h.events.get(), 10)
        assert isinstance(first, Token)
        for _ in range(2):  # the thread is inside its second run, the step after the first
            assert await asyncio.to_thread(gate.arrivals.acquire, True, 10)
        h.cancel()
        gate.permits.release(8)  # would let every step run; the cancel is seen first
        return [first, *await _drain(h)]

    try:
        events = asyncio.run(main())
    finally:
        streams.close()
    # The step under way when the cancel came finishes; none starts after it.
    assert [type(e) for e in events] == [Token, Token, Finished]
    end = events[-1]
    assert isinstance(end, Finished)
    assert (end.reason, end.completion_tokens, end.text) == ("cancelled", 2, "")
    assert gate.runs == 2


def test_a_stream_that_could_never_fit_the_kv_cache_is_refused(chat: ChatModel) -> None:
    streams = Streams(chat, StreamLimits(kv_tokens=10))

    async def main() -> None:
        streams.submit(chat_prompt_ids(ASK), GenerationParams(max_tokens=8))

    with pytest.raises(LimitError) as info:
        asyncio.run(main())
    assert info.value.message == (
        f"the stream needs {len(chat_prompt_ids(ASK)) + 8} tokens of KV cache (prompt and max_tokens);"
        " this enclave holds 10 for all streams"
    )
    # A prompt over the model's context is the loop's own refusal, before any work.
    with pytest.raises(LimitError, match="^the prompt is 40 tokens; the model's context is 32"):
        chat.stream([1] * 40, GenerationParams())


def test_past_the_waiting_bound_a_stream_is_refused(chat: ChatModel) -> None:
    gate = Gate(chat.decoder.session)
    chat.decoder.session = gate
    streams = Streams(chat, StreamLimits(max_active=1, max_waiting=1))
    streams.start()
    params = GenerationParams(max_tokens=2)
    ids = chat_prompt_ids(ASK)

    async def main() -> None:
        first = streams.submit(ids, params)
        assert await asyncio.to_thread(gate.entered.wait, 10)  # decoding, holds the place
        second = streams.submit(ids, params)  # waits
        with pytest.raises(BusyError) as info:
            streams.submit(ids, params)
        assert info.value.message == "1 streams are generating and 1 waiting; try again later"
        assert info.value.code == "busy"
        gate.permits.release(100)
        for h in (first, second):
            assert isinstance((await _drain(h))[-1], Finished)

    try:
        asyncio.run(main())
    finally:
        streams.close()
    assert streams.streams == 2


def test_rows_join_left_padded_and_leave_with_the_common_padding_cut(chat: ChatModel) -> None:
    d = chat.decoder
    short = d.step([1, 2, 3], d.empty_cache())[1]
    long = d.step([4, 5, 6, 7, 8], d.empty_cache())[1]
    batch = d.join(d.join(None, short), long)
    assert (batch.width, batch.lengths) == (5, (3, 5))
    key = batch.tensors[0]
    assert not key[0, :, :2].any()  # the short row's two padding positions are zeros
    assert (key[0, :, 2:] == short.tensors[0][0]).all() and (key[1] == long.tensors[0][0]).all()
    rest = d.leave(batch, [1])
    assert rest is not None and (rest.width, rest.lengths) == (3, (3,))
    assert (rest.tensors[0] == short.tensors[0]).all()
    assert d.leave(rest, [0]) is None


@pytest.mark.parametrize("io_binding", [False, True], ids=["host-cache", "io-binding"])
def test_io_binding_gives_the_same_answers_batched_and_alone(
    files: dict[str, bytes], io_binding: bool
) -> None:
    """The I/O-binding path (the cache kept as OrtValues where the model runs, as on
    CUDA) on CPU: the same tokens as the host-memory path, alone and batched."""
    bound = ChatModel(_chat_files(files), io_binding=io_binding)
    plain = ChatModel(_chat_files(files), io_binding=False)
    params = GenerationParams(max_tokens=8)
    for prompt in PROMPTS:
        ids = chat_prompt_ids(prompt)
        assert list(bound.stream(ids, params)) == list(plain.stream(ids, params))
    cache = bound.decoder.step([1, 2, 3], bound.decoder.empty_cache())[1]
    assert all(isinstance(t, ort.OrtValue) for t in cache.tensors) == io_binding
    streams = Streams(bound)
    streams.start()

    async def main() -> list[list[Token | Finished]]:
        handles = [streams.submit(chat_prompt_ids(p), params) for p in PROMPTS]
        return [await _drain(h) for h in handles]

    try:
        results = asyncio.run(main())
    finally:
        streams.close()
    for prompt, events in zip(PROMPTS, results, strict=True):
        assert events == list(plain.stream(chat_prompt_ids(prompt), params))


@pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="no CUDA here: --device cuda needs onnxruntime-gpu (the gpu extra) and a GPU",
)
def test_cuda_answers_as_the_cpu_does(files: dict[str, bytes]) -> None:  # pragma: no cover
    gpu = ChatModel(_chat_files(files), device="cuda")
    cpu = ChatModel(_chat_files(files))
    assert gpu.provider == "CUDAExecutionProvider" and gpu.decoder.io_binding
    params = GenerationParams(max_tokens=8)
    for prompt in PROMPTS:
        ids = chat_prompt_ids(prompt)
        assert [e.text for e in gpu.stream(ids, params)] == [e.text for e in cpu.stream(ids, params)]


def test_a_sessions_next_prompt_runs_from_its_cached_prefix(chat: ChatModel) -> None:
    """The second turn of a chat, with the first turn's cache: the same answer as
    without it, and only the new part of the prompt is run."""
    gate = Gate(chat.decoder.session)
    chat.decoder.session = gate
    gate.permits.release(10_000)
    streams = Streams(chat)
    streams.start()
    params = GenerationParams(max_tokens=4)
    first_ids = chat_prompt_ids(ASK)
    first_text = reference_answer(first_ids, 4)[0]
    history = [*ASK, ("assistant", first_text), ("user", "the dog")]
    second_ids = chat_prompt_ids(history)

    async def main() -> tuple[StreamHandle, list[Token | Finished], int]:
        one = streams.submit(first_ids, params)
        await _drain(one)
        assert one.final is not None
        runs = gate.runs
        two = streams.submit(second_ids, params, one.final)
        events = await _drain(two)
        return one, events, gate.runs - runs

    try:
        one, events, runs = asyncio.run(main())
    finally:
        streams.close()
    assert one.final is not None
    ids, cache = one.final
    # The cache holds the prompt and every answer token fed back (not the last one).
    answer = [e.id for e in list(chat.stream(first_ids, params)) if isinstance(e, Token)]
    assert ids == first_ids + answer[:-1] and cache.length == len(ids)
    assert events == list(chat.stream(second_ids, params))
    reused = streams.prefixes.reused
    assert reused >= 8 and second_ids[:reused] == ids[:reused]
    assert runs == 4  # one prefill (of the new ids only), then three steps
    assert streams.prefixes.hits == 1


def test_the_prefix_cache_keeps_each_sessions_last_within_its_bound() -> None:
    cache = PrefixCache(limit=10)
    empty = KVCache(())
    a, b, c = object(), object(), object()
    cache.put(a, ([1] * 4, empty))
    cache.put(b, ([2] * 4, empty))
    assert cache.get(a) == ([1] * 4, empty)  # a is now the most recently used
    cache.put(c, ([3] * 4, empty))  # 12 > 10: the least recently used (b) goes
    assert cache.get(b) is None and cache.tokens == 8
    cache.put(a, ([1] * 11, empty))  # larger than the bound: not kept, nor the old one
    assert cache.get(a) is None and cache.tokens == 4
    assert cache.get(c) == ([3] * 4, empty) and cache.tokens == 4  # get leaves it there
    cache.forget(c)
    assert cache.get(c) is None and cache.tokens == 0
