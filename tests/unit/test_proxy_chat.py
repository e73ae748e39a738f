"""The proxy's chat and completions (client/_proxy.py) driven as ASGI, over the real
session pool of scripted sessions: how an OpenAI body maps to ``generate()``, each
refusal's exact status and error object, the server-sent events of a stream and how
a failing one ends, and a client that hangs up (the stream is cancelled and drained,
the session goes back sound)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import MutableMapping
from types import SimpleNamespace
from typing import Any

import pytest

from ephemeralml.client._api import EnclaveRefusal, Generation
from ephemeralml.client._proxy import ProxyError, build_app, ends_session
from ephemeralml.client._proxy_pool import PoolBusyError, SessionPool
from ephemeralml.common._errors import (
    AttestationError,
    CiphertextError,
    ConfigError,
    Error,
    InferenceError,
    LimitError,
    PolicyError,
    ReceiptError,
    RemoteError,
    TransportError,
    TruncatedError,
)

CHAT = "tiny-chat"
NOW = 1_700_000_000
REFUSED = "enclave refused the request: "


def refused(cls: type[Error], why: str) -> Error:
    """The error the client library raises for the enclave's sealed refusal: its
    line, and the refusal as its cause (what tells the proxy the session is sound)."""
    e = cls(REFUSED + why)
    e.__cause__ = EnclaveRefusal(cls.code, why)
    return e


RECEIPT_ID = bytes(range(16))


def _receipt() -> Any:
    doc = SimpleNamespace(raw=b"attestation-doc", module_id="i-0abc-enc0", pcrs={0: b"\x01" * 48})
    rc = SimpleNamespace(
        receipt_id=RECEIPT_ID, session_id=b"\x02" * 16, seq=1, request_hash=b"\x03" * 32,
        response_hash=b"\x04" * 32, attestation_hash=b"\x05" * 32, mode="mock",
    )  # fmt: skip
    return SimpleNamespace(
        receipt=rc, raw=b"cose-receipt", attestation=SimpleNamespace(document=doc)
    )


EPHEMERALML = {
    "receipts": [{
        "receipt_id": RECEIPT_ID.hex(), "session_id": "02" * 16, "seq": 1,
        "request_sha256": "03" * 32, "response_sha256": "04" * 32, "attestation_sha256": "05" * 32,
        "cose": base64.b64encode(b"cose-receipt").decode(),
    }],
    "enclave": {
        "attestation": base64.b64encode(b"attestation-doc").decode(), "module_id": "i-0abc-enc0",
        "mode": "mock", "pcrs": {"0": "01" * 48},
    },
    "device": "CPUExecutionProvider",
}  # fmt: skip


def _generation(text: str, finish: str = "stop", completion_tokens: int = 3) -> Generation:
    return Generation(
        model=CHAT, text=text, finish=finish, prompt_tokens=7, completion_tokens=completion_tokens,
        device="CPUExecutionProvider", receipt=_receipt(), request_cbor=b"", response_cbor=b"",
    )  # fmt: skip


class FakeStream:
    """A TextStream's behaviour: ``pieces``, then ``end`` (the result, or the error
    raised in its place); ``endless``: pieces until cancelled."""

    def __init__(
        self, pieces: list[str], end: Generation | Error, *, endless: bool = False
    ) -> None:
        self.pieces, self.end, self.endless = list(pieces), end, endless
        self.result: Generation | None = None
        self.cancelled = False
        self.sent: list[str] = []

    def __iter__(self) -> FakeStream:
        return self

    def __next__(self) -> str:
        if self.result is not None:
            raise StopIteration
        if self.cancelled:
            self.result = _generation("".join(self.sent), "cancelled")
            raise StopIteration
        if self.endless:
            time.sleep(0.005)
            self.sent.append("x")
            return "x"
        if self.pieces:
            self.sent.append(self.pieces.pop(0))
            return self.sent[-1]
        if isinstance(self.end, Error):
            raise self.end
        self.result = self.end
        raise StopIteration

    def cancel(self) -> None:
        self.cancelled = True

    def finish(self) -> Generation:
        for _ in self:
            pass
        assert self.result is not None
        return self.result


class FakeSession:
    def __init__(self, script: list[FakeStream | Error]) -> None:
        self.script = script
        self.models = {CHAT: b"\x00" * 32, "all-MiniLM-L6-v2": b"\x01" * 32}
        self.asked: list[dict[str, Any]] = []
        self.closed = False

    def generate(self, messages: Any = None, **kw: Any) -> FakeStream:
        self.asked.append({"messages": messages, **kw})
        step = self.script.pop(0)
        if isinstance(step, Error):
            raise step
        return step

    def close(self) -> None:
        self.closed = True


class Harness:
    """The app over a real :class:`SessionPool` whose sessions follow one script."""

    def __init__(self, *script: FakeStream | Error, open_error: Error | None = None) -> None:
        self.script = list(script)
        self.sessions: list[FakeSession] = []
        self.open_error = open_error

        def open_session() -> FakeSession:
            if self.open_error is not None:
                raise self.open_error
            self.sessions.append(FakeSession(self.script))
            return self.sessions[-1]

        self.pool: SessionPool[FakeSession] = SessionPool(
            open_session, size=1, max_age_s=300.0, wait_s=0.2, ends_session=ends_session
        )
        self.app = build_app(self.pool, clock=lambda: NOW + 0.5)  # type: ignore[arg-type]

    def asked(self) -> dict[str, Any]:
        return self.sessions[-1].asked[-1]

    def settled(self) -> Any:
        """The pool's stats once the generation's thread gave its session back."""
        deadline = time.monotonic() + 5
        while self.pool.stats.busy and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.pool.stats

    def call(
        self, path: str, body: dict[str, Any] | bytes, *, hang_up_after: int | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One request: status, headers, body. ``hang_up_after``: the client goes away
        once that many body messages came (0: while it waits for the answer)."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(raw)).encode())],
            "scheme": "http", "server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 50000),
        }  # fmt: skip
        sent: list[MutableMapping[str, Any]] = []

        async def run() -> None:
            gone = asyncio.Event()
            incoming = [{"type": "http.request", "body": raw, "more_body": False}]
            if hang_up_after == 0:
                gone.set()

            async def receive() -> dict[str, Any]:
                if incoming:
                    return incoming.pop(0)
                await gone.wait()  # the answer is complete, or the client went away
                return {"type": "http.disconnect"}

            async def send(message: MutableMapping[str, Any]) -> None:
                sent.append(message)
                bodies = [m for m in sent if m["type"] == "http.response.body"]
                if not message.get("more_body", False) and bodies:
                    gone.set()
                if hang_up_after is not None and len(bodies) >= hang_up_after:
                    gone.set()

            await self.app(scope, receive, send)

        asyncio.run(run())
        headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
        return sent[0]["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])

    def json(self, path: str, body: dict[str, Any] | bytes) -> tuple[int, Any]:
        status, _, raw = self.call(path, body)
        return status, json.loads(raw)


def _error(message: str, param: str | None, code: str | None = None,
           kind: str = "invalid_request_error") -> dict[str, Any]:  # fmt: skip
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _events(raw: bytes) -> list[str]:
    """The SSE stream as its events; each must be one ``data:`` line (or an
    ``event: error`` and its data line), and the stream must end with a blank line."""
    text = raw.decode()
    assert text.endswith("\n\n"), text
    return text.removesuffix("\n\n").split("\n\n")


def _data(event: str) -> Any:
    assert event.startswith("data: ") and "\n" not in event, event
    return json.loads(event.removeprefix("data: "))


USER = [{"role": "user", "content": "the cat sat"}]


# -- the request, mapped -------------------------------------------------------------


def test_a_chat_body_maps_to_generate() -> None:
    h = Harness(FakeStream(["hi"], _generation("hi")))
    body = {
        "model": CHAT, "max_completion_tokens": 9, "max_tokens": 100, "temperature": 0.5,
        "top_p": 0.9, "seed": 7, "stop": "END", "n": 1, "logprobs": False, "tools": [],
        "tool_choice": "none", "presence_penalty": 0, "user": "someone",
        "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "the cat"},
                                         {"type": "text", "text": "sat"}]},
            {"role": "assistant", "content": "ok", "name": "bot"},
            {"role": "user", "content": ""},
        ],
    }  # fmt: skip
    assert h.json("/v1/chat/completions", body)[0] == 200
    assert h.asked() == {
        "messages": [("system", "be brief"), ("user", "the cat\nsat"), ("assistant", "ok"),
                     ("user", "")],
        "model": CHAT, "prompt": None, "max_tokens": 9, "temperature": 0.5, "top_p": 0.9,
        "top_k": 0, "seed": 7, "stop": ("END",),
    }  # fmt: skip


def test_defaults_and_a_completion_body() -> None:
    h = Harness(FakeStream([], _generation("")), FakeStream([], _generation("")))
    assert h.json("/v1/chat/completions", {"model": CHAT, "messages": USER})[0] == 200
    assert h.asked() == {
        "messages": [("user", "the cat sat")], "model": CHAT, "prompt": None, "max_tokens": 256,
        "temperature": 0.0, "top_p": 1.0, "top_k": 0, "seed": None, "stop": (),
    }  # fmt: skip
    body = {"model": CHAT, "prompt": "the cat", "stop": ["a", "b"], "top_k": 5, "temperature": 1}
    assert h.json("/v1/completions", body)[0] == 200
    # OpenAI's default for a legacy completion is 16 tokens.
    assert h.asked() == {
        "messages": None, "model": CHAT, "prompt": "the cat", "max_tokens": 16,
        "temperature": 1.0, "top_p": 1.0, "top_k": 5, "seed": None, "stop": ("a", "b"),
    }  # fmt: skip


def _refused_field(key: str, why: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return {key: {"tools": [{}], "functions": [{}]}.get(key, True)}, _error(
        f"'{key}' is not supported: {why}", key
    )


NO_TOOLS = "this enclave's models do not call tools"
NO_LOGPROBS = "the enclave does not return token probabilities"


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"model": None}, _error("you must provide a model parameter", "model")),
        ({"n": 2}, _error("'n' must be 1: the enclave makes one answer per request", "n")),
        _refused_field("tools", NO_TOOLS),
        _refused_field("functions", NO_TOOLS),
        ({"tool_choice": "auto"}, _error(f"'tool_choice' is not supported: {NO_TOOLS}", "tool_choice")),
        _refused_field("logprobs", NO_LOGPROBS),
        ({"top_logprobs": 2}, _error(f"'top_logprobs' is not supported: {NO_LOGPROBS}", "top_logprobs")),
        ({"response_format": {"type": "json_object"}},
         _error("'response_format' is not supported: the enclave does not constrain its output",
                "response_format")),
        ({"frequency_penalty": 0.5},
         _error("'frequency_penalty' is not supported: the enclave samples by temperature, top_p "
                "and top_k only", "frequency_penalty")),
        ({"stop": ["a", "b", "c", "d", "e"]},
         _error("'stop' must be a string or a list of at most 4 strings", "stop")),
        ({"stop": [1]}, _error("'stop' must be a string or a list of at most 4 strings", "stop")),
        ({"temperature": "hot"}, _error("'temperature' must be a number", "temperature")),
        ({"top_p": True}, _error("'top_p' must be a number", "top_p")),
        ({"max_tokens": 1.5}, _error("'max_tokens' must be an integer", "max_tokens")),
        ({"seed": "7"}, _error("'seed' must be an integer", "seed")),
        ({"stream": "yes"}, _error("'stream' must be true or false", "stream")),
        ({"stream_options": {"include_usage": True}},
         _error("'stream_options' is only allowed when 'stream' is true", "stream_options")),
        ({"messages": []}, _error("'messages' must be a non-empty list of messages", "messages")),
        ({"messages": "hi"}, _error("'messages' must be a non-empty list of messages", "messages")),
        ({"messages": ["hi"]},
         _error("messages[0] must be an object with 'role' and 'content'", "messages")),
        ({"messages": [{"role": "robot", "content": "x"}]},
         _error("messages[0].role must be 'system', 'developer', 'user' or 'assistant', not "
                "'robot'", "messages")),
        ({"messages": [*USER, {"role": "tool", "content": "42", "tool_call_id": "c1"}]},
         _error(f"messages[1]: tool calls are not supported: {NO_TOOLS}", "messages")),
        ({"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]}]},
         _error(f"messages[0]: tool calls are not supported: {NO_TOOLS}", "messages")),
        ({"messages": [{"role": "user", "content": None}]},
         _error("messages[0].content must be a string or a list of text parts", "messages")),
        ({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
         _error("messages[0].content[1] is not a text part ({'type': 'text', 'text': ...}): the "
                "enclave's models read text only", "messages")),
        ({"messages": [{"role": "user", "content": "\ud800"}]},
         _error("messages[0] is not valid Unicode (a lone surrogate)", "messages")),
        ({"messages": [{"role": "user", "content": "x" * (256 * 1024 + 1)}]},
         _error("the messages are 262145 bytes of text; the limit is 262144", "messages")),
        ({"messages": USER * 257}, _error("'messages' has 257 items; at most 256", "messages")),
    ],
)  # fmt: skip
def test_each_bad_chat_request_is_refused_before_any_session(
    extra: dict[str, Any], error: dict[str, Any]
) -> None:
    h = Harness()
    body = {"model": CHAT, "messages": USER, **extra}
    assert h.json("/v1/chat/completions", body) == (400, error)
    assert h.sessions == []


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"prompt": ["one", "two"]},
         _error("'prompt' must be one string: a list of prompts (or of token ids) is not supported",
                "prompt")),
        ({"prompt": [1, 2, 3]},
         _error("'prompt' must be one string: a list of prompts (or of token ids) is not supported",
                "prompt")),
        ({"prompt": None}, _error("'prompt' must be a string", "prompt")),
        ({"echo": True}, _error("'echo' is not supported: the answer does not repeat the prompt", "echo")),
        ({"best_of": 3}, _error("'best_of' is not supported: the enclave makes one answer per request",
                                "best_of")),
        ({"suffix": "end"}, _error("'suffix' is not supported: the enclave does not insert between "
                                   "a prefix and a suffix", "suffix")),
        ({"logprobs": 2}, _error(f"'logprobs' is not supported: {NO_LOGPROBS}", "logprobs")),
    ],
)  # fmt: skip
def test_each_bad_completion_request_is_refused(
    extra: dict[str, Any], error: dict[str, Any]
) -> None:
    h = Harness()
    assert h.json("/v1/completions", {"model": CHAT, "prompt": "the cat", **extra}) == (400, error)


def test_not_json_and_unknown_model() -> None:
    h = Harness()
    status, body = h.json("/v1/chat/completions", b"{nope")
    assert status == 400 and body["error"]["message"].startswith("the request body is not JSON (")
    assert h.json("/v1/completions", {"model": "gpt-nothing", "prompt": "x"}) == (404, _error(
        "The model `gpt-nothing` does not exist or is not served by this enclave", "model",
        "model_not_found",
    ))  # fmt: skip
    assert h.settled().retired_broken == 0


# -- whole answers ---------------------------------------------------------------------


def test_a_whole_chat_answer() -> None:
    h = Harness(FakeStream(["the", " cat"], _generation("the cat", "length", 2)))
    status, headers, raw = h.call("/v1/chat/completions", {"model": CHAT, "messages": USER})
    body = json.loads(raw)
    assert (status, headers["x-ephemeralml-receipt-id"]) == (200, RECEIPT_ID.hex())
    assert body.pop("id").startswith("chatcmpl-")
    assert body == {
        "object": "chat.completion", "created": NOW, "model": CHAT, "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "the cat",
                                             "refusal": None},
                     "logprobs": None, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
        "ephemeralml": EPHEMERALML,
    }  # fmt: skip


def test_a_whole_completion() -> None:
    h = Harness(FakeStream([" on"], _generation(" on the mat")))
    status, headers, raw = h.call("/v1/completions", {"model": CHAT, "prompt": "the cat sat"})
    body = json.loads(raw)
    assert (status, headers["x-ephemeralml-receipt-id"]) == (200, RECEIPT_ID.hex())
    assert body.pop("id").startswith("cmpl-")
    assert body == {
        "object": "text_completion", "created": NOW, "model": CHAT, "system_fingerprint": None,
        "choices": [{"text": " on the mat", "index": 0, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        "ephemeralml": EPHEMERALML,
    }  # fmt: skip


# -- streams ---------------------------------------------------------------------------


def test_a_streamed_chat_is_openais_chunks_then_done() -> None:
    h = Harness(FakeStream(["the", " cat", " sat"], _generation("the cat sat")))
    body = {
        "model": CHAT,
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    status, headers, raw = h.call("/v1/chat/completions", body)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert RECEIPT_ID.hex() not in headers.values()  # only known at the end: in the last chunk
    *chunks, done = _events(raw)
    assert done == "data: [DONE]"
    objs = [_data(e) for e in chunks]
    (cid,) = {o.pop("id") for o in objs}
    assert cid.startswith("chatcmpl-")
    head = {"object": "chat.completion.chunk", "created": NOW, "model": CHAT,
            "system_fingerprint": None}  # fmt: skip

    def choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    assert objs == [
        {**head, "choices": [choice({"role": "assistant", "content": ""})], "usage": None},
        {**head, "choices": [choice({"content": "the"})], "usage": None},
        {**head, "choices": [choice({"content": " cat"})], "usage": None},
        {**head, "choices": [choice({"content": " sat"})], "usage": None},
        {**head, "choices": [choice({}, "stop")], "ephemeralml": EPHEMERALML, "usage": None},
        {**head, "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3,
                                          "total_tokens": 10}},
    ]  # fmt: skip
    assert h.settled().idle == 1


def test_a_streamed_completion_without_usage() -> None:
    h = Harness(FakeStream([" on"], _generation(" on", "length", 1)))
    status, _, raw = h.call("/v1/completions", {"model": CHAT, "prompt": "the cat", "stream": True})
    *chunks, done = _events(raw)
    assert (status, done) == (200, "data: [DONE]")
    objs = [_data(e) for e in chunks]
    assert [o["object"] for o in objs] == ["text_completion"] * 2
    assert [o["choices"] for o in objs] == [
        [{"text": " on", "index": 0, "logprobs": None, "finish_reason": None}],
        [{"text": "", "index": 0, "logprobs": None, "finish_reason": "length"}],
    ]
    assert all("usage" not in o for o in objs) and "ephemeralml" in objs[-1]


@pytest.mark.parametrize(
    ("error", "event", "broken"),
    [
        (TruncatedError("answer 1 cut short after 2 chunk(s), without the enclave's end and "
                        "receipt: connection lost"),
         _error("answer 1 cut short after 2 chunk(s), without the enclave's end and receipt: "
                "connection lost", None, "truncated", "server_error"), 1),
        (CiphertextError("S2 chunk 2: does not open"),
         _error("the enclave did not verify: S2 chunk 2: does not open", None, "ciphertext",
                "ephemeralml_verification_error"), 1),
        (ReceiptError("S3 receipt: the chunks' hash does not match"),
         _error("the enclave did not verify: S3 receipt: the chunks' hash does not match", None,
                "receipt", "ephemeralml_verification_error"), 1),
        # The enclave's refusal after chunks: the session stays sound.
        (refused(InferenceError, "generation failed: RuntimeError"),
         _error(REFUSED + "generation failed: RuntimeError", "messages", "inference"), 0),
    ],
)  # fmt: skip
def test_a_stream_that_fails_midway_ends_in_an_error_event_without_done(
    error: Error, event: dict[str, Any], broken: int
) -> None:
    h = Harness(FakeStream(["the", " cat"], error))
    status, _, raw = h.call(
        "/v1/chat/completions", {"model": CHAT, "messages": USER, "stream": True}
    )
    events = _events(raw)
    assert status == 200 and len(events) == 4
    assert [_data(e)["choices"][0]["delta"] for e in events[:3]] == [
        {"role": "assistant", "content": ""},
        {"content": "the"},
        {"content": " cat"},
    ]
    # OpenAI's streaming error (the SDK raises it), and no [DONE].
    assert events[3] == "event: error\ndata: " + json.dumps(event, separators=(",", ":"))
    assert "[DONE]" not in raw.decode()
    stats = h.settled()
    assert (stats.retired_broken, stats.idle) == (broken, 1 - broken)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("error", "status", "body"),
    [
        (refused(InferenceError, "temperature must be a number from 0 to 2, not 5.0"), 400,
         _error(REFUSED + "temperature must be a number from 0 to 2, not 5.0", "temperature",
                "inference")),
        (refused(InferenceError, "model 'all-MiniLM-L6-v2' makes embeddings; it does not generate"),
         400, _error(REFUSED + "model 'all-MiniLM-L6-v2' makes embeddings; it does not generate",
                     "model", "inference")),
        (refused(LimitError, "the prompt is 40 tokens; the model's context is 32 tokens, prompt "
                    "and answer together"), 400,
         _error(REFUSED + "the prompt is 40 tokens; the model's context is 32 tokens, prompt and "
                "answer together", "messages", "limit")),
        (refused(LimitError, "5 stop sequences; the limit is 4"), 400,
         _error(REFUSED + "5 stop sequences; the limit is 4", "stop", "limit")),
        (RemoteError("internal", "model crashed"), 502,
         _error("the enclave failed the request: enclave reported internal: model crashed", None,
                "remote", "server_error")),
    ],
)  # fmt: skip
def test_errors_before_the_first_chunk_are_http_errors(
    stream: bool, error: Error, status: int, body: dict[str, Any]
) -> None:
    h = Harness(FakeStream([], error))
    request = {"model": CHAT, "messages": USER, "stream": stream}
    assert h.json("/v1/chat/completions", request) == (status, body)


def test_a_lost_pooled_connection_is_retried_once_on_a_fresh_session() -> None:
    cut = TruncatedError(
        "answer 1 cut short after 0 chunk(s), without the enclave's end and receipt"
    )
    cut.__cause__ = TransportError("127.0.0.1:5000 closed the connection mid-session")
    h = Harness(FakeStream([], cut), FakeStream(["hi"], _generation("hi")))
    status, body = h.json("/v1/chat/completions", {"model": CHAT, "messages": USER})
    assert (status, body["choices"][0]["message"]["content"]) == (200, "hi")
    stats = h.settled()
    assert (stats.opened, stats.retired_broken, stats.idle) == (2, 1, 1)


@pytest.mark.parametrize(
    ("open_error", "status", "body"),
    [
        (AttestationError("A3 signature: the document's signature does not verify"), 502,
         _error("the enclave did not verify: A3 signature: the document's signature does not verify",
                None, "attestation", "ephemeralml_verification_error")),
        (PoolBusyError("all 4 enclave sessions stayed busy for 30 s"), 429,
         _error("all 4 enclave sessions stayed busy for 30 s", None, "busy", "rate_limit_error")),
    ],
)  # fmt: skip
def test_no_session_is_an_http_error(open_error: Error, status: int, body: dict[str, Any]) -> None:
    h = Harness(open_error=open_error)
    request = {"model": CHAT, "messages": USER, "stream": True}
    assert h.json("/v1/chat/completions", request) == (status, body)


# -- clients that hang up --------------------------------------------------------------


@pytest.mark.parametrize(("stream", "hang_up_after"), [(True, 3), (True, 0), (False, 0)])
def test_a_client_that_hangs_up_cancels_the_generation(stream: bool, hang_up_after: int) -> None:
    endless = FakeStream([], _generation(""), endless=True)
    h = Harness(endless, FakeStream(["ok"], _generation("ok")))
    request = {"model": CHAT, "messages": USER, "stream": stream}
    h.call("/v1/chat/completions", request, hang_up_after=hang_up_after)
    stats = h.settled()
    # Cancelled, then read to its end (the enclave's receipt of what it sent).
    assert endless.cancelled and endless.result is not None
    assert endless.result.finish == "cancelled"
    assert (stats.busy, stats.idle, stats.retired_broken) == (0, 1, 0)
    # The same session serves the next request.
    assert h.json("/v1/chat/completions", {"model": CHAT, "messages": USER})[0] == 200
    assert h.pool.stats.opened == 1


# -- which errors end a pooled session ----------------------------------------------------


@pytest.mark.parametrize(
    ("error", "ends"),
    [
        (TransportError("lost"), True),
        (TruncatedError("cut short"), True),
        (CiphertextError("S2"), True),
        (ReceiptError("R1"), True),
        (RemoteError("internal", "crash"), True),
        (LimitError("frame over the limit"), True),
        (ValueError("a bug"), True),
        (refused(InferenceError, "temperature must be ..."), False),
        (refused(LimitError, "the prompt is 40 tokens"), False),
        (PolicyError("P1 model: not allowed"), False),
        (ConfigError("input 0: empty"), False),
        (ProxyError(404, "no such model", "invalid_request_error"), False),
    ],
)  # fmt: skip
def test_which_errors_end_a_session(error: BaseException, ends: bool) -> None:
    assert ends_session(error) is ends


def test_threads_are_not_left_running() -> None:
    before = {t.name for t in threading.enumerate()}
    h = Harness(FakeStream(["a"], _generation("a")))
    h.call("/v1/chat/completions", {"model": CHAT, "messages": USER, "stream": True})
    h.settled()
    # Generation threads are kept for the next stream (their audit log connections
    # live on), never one per request.
    names = [t.name for t in threading.enumerate() if t.name not in before]
    assert all(n.startswith("ephemeral-proxy-generate") for n in names) and len(names) <= 1
