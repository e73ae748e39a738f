"""``ephemeral proxy``: the OpenAI API on a loopback port, attested and sealed underneath.

Point an OpenAI SDK at ``http://127.0.0.1:8080/v1`` and every request goes through
a pooled session (:mod:`._proxy_pool`) that verified the enclave's attestation
against the user's policy, is sealed to the enclave, and comes back with a verified
receipt that the library has already put in the audit log. Served (Starlette on
uvicorn, both maintained ASGI parts):

* ``GET /v1/models``, ``GET /v1/models/{id}``: what the verified enclave serves;
* ``POST /v1/embeddings``: the OpenAI request and response JSON (``input`` a string
  or a list of strings; ``encoding_format`` ``float`` or ``base64``, little-endian
  float32 as OpenAI sends it). The receipts come back in the ``x-ephemeralml-receipt-id``
  header (their ids, comma-separated) and in an ``ephemeralml`` field of the body
  (each receipt's COSE bytes in base64 and its hashes; the attestation document they
  refer to, in base64, and its measurements).
* ``POST /v1/chat/completions``, ``POST /v1/completions``: OpenAI's chat and legacy
  completion objects, whole or streamed (``stream: true``: server-sent events of
  ``chat.completion.chunk`` / ``text_completion`` objects, then ``data: [DONE]``).
  One answer per request (``n`` 1), text only (no tools, no logprobs). The receipt
  covers the whole answer, so a stream carries it in its last chunk (the one with
  ``finish_reason``) and a whole answer in the header and body as embeddings do. A
  stream that fails after it started (cut short, a chunk that does not open, a
  refusal) ends with an ``error`` event and no ``[DONE]``: the SDK raises, and what
  arrived is never passed off as the answer. A client that hangs up mid-answer
  cancels the generation in the enclave.

Errors are OpenAI's error object (``{"error": {"message", "type", "param",
"code"}}``) with its status codes: 400 a bad request (or one the enclave refused),
404 an unknown model or path, 413 a body over :data:`MAX_BODY_BYTES`, 429 every
session busy, and 502 when the enclave does not verify or cannot be reached (the
message says which check failed). Embeddings' token counts are not known outside the
enclave: their ``usage`` reports 0; a generation's ``usage`` is the enclave's own
count, covered by its receipt.

Plain HTTP on loopback only: what the SDK sends is plaintext until it reaches this
process. Nothing here logs a text or a vector.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import secrets
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ephemeralml.common._errors import (
    BusyError,
    ConfigError,
    Error,
    InferenceError,
    LimitError,
    PolicyError,
    TransportError,
    TruncatedError,
    VerificationError,
)
from ephemeralml.common._messages import CHAT_ROLES, MAX_MESSAGES, MAX_PROMPT_BYTES
from ephemeralml.common._receipt import VerifiedReceipt

from ._api import (
    DEFAULT_MAX_TOKENS,
    Embeddings,
    EmbedIncomplete,
    EnclaveRefusal,
    Generation,
    Session,
    TextStream,
    is_refusal,
)
from ._proxy_pool import PoolBusyError, SessionPool

__all__ = [
    "COMPLETIONS_MAX_TOKENS",
    "MAX_BODY_BYTES",
    "MAX_GENERATION_THREADS",
    "MAX_INPUTS",
    "MAX_STOP",
    "ProxyError",
    "ProxyServer",
    "build_app",
    "ends_session",
    "serve_on",
]

#: Largest request body: 2048 inputs (OpenAI's cap) of a few KiB each.
MAX_BODY_BYTES = 8 * 1024 * 1024
#: Most inputs in one request (OpenAI's own limit for embeddings).
MAX_INPUTS = 2048
#: Most stop sequences in one request (OpenAI's limit, and the enclave's).
MAX_STOP = 4
#: ``max_tokens`` of a legacy completion that names none (OpenAI's default); a chat
#: that names none gets the client library's default (``DEFAULT_MAX_TOKENS``).
COMPLETIONS_MAX_TOKENS = 16
#: Threads that run generations (each holds one for its whole stream, or while it
#: waits for a session): as many as the server takes connections (serve_on). They
#: live on between streams, as the library's per-thread audit log connections do.
MAX_GENERATION_THREADS = 256
RECEIPT_HEADER = "x-ephemeralml-receipt-id"


class ProxyError(Exception):
    """An answer in OpenAI's error shape."""

    def __init__(
        self, status: int, message: str, kind: str, *, code: str | None = None,
        param: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = (
            status, message, kind, code, param,
        )  # fmt: skip

    def body(self) -> dict[str, Any]:
        return {
            "error": {"message": self.message, "type": self.kind, "param": self.param,
                      "code": self.code},
        }  # fmt: skip

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def _bad(message: str, *, param: str | None = None, code: str | None = None) -> ProxyError:
    return ProxyError(400, message, "invalid_request_error", param=param, code=code)


def ends_session(e: BaseException) -> bool:
    """Whether an error raised while a pooled session served a request leaves that
    session unfit for the next one (the pool then closes it; see
    :class:`SessionPool`). Sound after: the enclave's refusal of the request, the
    library's own checks before anything is sent (policy, texts), and the proxy's
    answers. Anything else (a lost connection, a stream cut short, a chunk or receipt
    that does not verify, an error frame, an unknown failure) may have left the
    session's protocol in its terminal error state."""
    if isinstance(e, ProxyError | PolicyError | ConfigError):
        return False
    return not is_refusal(e)


#: Parameters an enclave's refusal may start with (``temperature must be ...``): the
#: ``param`` of the error object.
_REFUSAL_PARAMS = frozenset({"model", "max_tokens", "temperature", "top_p", "top_k", "seed"})


def _refusal_param(e: Error, default: str) -> str:
    """The request field an enclave's refusal names by its first word, else ``default``."""
    why = e.__cause__.message if isinstance(e.__cause__, EnclaveRefusal) else e.message
    word = why.split(" ", 1)[0]
    if word in _REFUSAL_PARAMS:
        return word
    if word == "stop" or " stop sequences;" in why:
        return "stop"
    if word == "message":
        return "messages"
    return default


def _from_error(e: Error, *, param: str = "input") -> ProxyError:
    """What the caller sees for a library error: its one line, and the check it names.
    ``param``: the request's field that an unspecific refusal is about."""
    if isinstance(e, VerificationError):
        return ProxyError(
            502, f"the enclave did not verify: {e.message}", "ephemeralml_verification_error",
            code=e.code,
        )  # fmt: skip
    if isinstance(e, TransportError):
        return ProxyError(502, f"enclave unreachable: {e.message}", "server_error", code=e.code)
    if isinstance(e, PoolBusyError | BusyError):
        # The proxy's sessions, or the enclave's queue, are full: try again later.
        return ProxyError(429, e.message, "rate_limit_error", code=e.code)
    if isinstance(e, InferenceError | ConfigError) or (isinstance(e, LimitError) and is_refusal(e)):
        return _bad(e.message, param=_refusal_param(e, param), code=e.code)
    if isinstance(e, TruncatedError):
        return ProxyError(502, e.message, "server_error", code=e.code)
    return ProxyError(
        502, f"the enclave failed the request: {e.message}", "server_error", code=e.code
    )


async def _read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object, refused before it is read whole if it is too big."""
    too_big = ProxyError(
        413, f"the request body is over {MAX_BODY_BYTES} bytes", "invalid_request_error"
    )
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_big
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad(f"the request body is not JSON ({e})") from e
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    return body


def _inputs(body: dict[str, Any]) -> list[str]:
    raw = body.get("input")
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, list) or not raw:
        raise _bad("'input' must be a string or a non-empty list of strings", param="input")
    if not all(isinstance(t, str) for t in raw):
        raise _bad(
            "'input' must be text: token arrays are not supported (the enclave tokenizes)",
            param="input",
        )
    if len(raw) > MAX_INPUTS:
        raise _bad(f"'input' has {len(raw)} items; at most {MAX_INPUTS}", param="input")
    return raw


def _encoding(body: dict[str, Any]) -> str:
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise _bad("'encoding_format' must be 'float' or 'base64'", param="encoding_format")
    return str(fmt)


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("you must provide a model parameter", param="model")
    return model


def _no_model(model: str) -> ProxyError:
    return ProxyError(
        404, f"The model `{model}` does not exist or is not served by this enclave",
        "invalid_request_error", param="model", code="model_not_found",
    )  # fmt: skip


def _vector(row: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in row]


def _receipt(r: VerifiedReceipt) -> dict[str, Any]:
    rc = r.receipt
    return {
        "receipt_id": rc.receipt_id.hex(),
        "session_id": rc.session_id.hex(),
        "seq": rc.seq,
        "request_sha256": rc.request_hash.hex(),
        "response_sha256": rc.response_hash.hex(),
        "attestation_sha256": rc.attestation_hash.hex(),
        "cose": base64.b64encode(r.raw).decode("ascii"),
    }


def _provenance(receipts: list[dict[str, Any]], verified: VerifiedReceipt) -> dict[str, Any]:
    """The ``ephemeralml`` field of an answer: its receipts, and the attestation
    document they name (all receipts of one answer come from one session)."""
    doc = verified.attestation.document
    return {
        "receipts": receipts,
        "enclave": {
            # The document the receipts name (attestation_sha256): with it, each
            # receipt verifies offline (``ephemeral verify --attestation``).
            "attestation": base64.b64encode(doc.raw).decode("ascii"),
            "module_id": doc.module_id,
            "mode": verified.receipt.mode,
            "pcrs": {str(i): p.hex() for i, p in sorted(doc.pcrs.items())},
        },
    }


# -- generation: the OpenAI request, mapped ---------------------------------------------

#: Fields of OpenAI's chat and completion requests that this proxy cannot honour,
#: refused rather than ignored (an answer must not look as if they had been applied),
#: with why. A field that is absent, null, false, empty or at its default is fine.
_UNSUPPORTED = {
    "tools": "this enclave's models do not call tools",
    "tool_choice": "this enclave's models do not call tools",
    "functions": "this enclave's models do not call tools",
    "function_call": "this enclave's models do not call tools",
    "logprobs": "the enclave does not return token probabilities",
    "top_logprobs": "the enclave does not return token probabilities",
    "logit_bias": "the enclave samples by temperature, top_p and top_k only",
    "presence_penalty": "the enclave samples by temperature, top_p and top_k only",
    "frequency_penalty": "the enclave samples by temperature, top_p and top_k only",
    "response_format": "the enclave does not constrain its output",
    "audio": "the enclave's models make text only",
    "prediction": "the enclave does not take predicted outputs",
    "echo": "the answer does not repeat the prompt",
    "suffix": "the enclave does not insert between a prefix and a suffix",
    "best_of": "the enclave makes one answer per request",
}
#: The harmless value of each field above (besides absent, null and false).
_HARMLESS: dict[str, Any] = {
    "tools": [], "functions": [], "tool_choice": "none", "logit_bias": {},
    "presence_penalty": 0, "frequency_penalty": 0, "response_format": {"type": "text"},
    "best_of": 1,
}  # fmt: skip


@dataclass(frozen=True)
class _Ask:
    """One generate request, as the OpenAI body asked for it (checked for shape; the
    enclave checks the values)."""

    model: str
    messages: tuple[tuple[str, str], ...] | None
    prompt: str | None
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool

    def start(self, s: Session) -> TextStream:
        if self.model not in s.models:
            raise _no_model(self.model)
        return s.generate(
            list(self.messages) if self.messages is not None else None, model=self.model,
            prompt=self.prompt, max_tokens=self.max_tokens, temperature=self.temperature,
            top_p=self.top_p, top_k=self.top_k, seed=self.seed, stop=self.stop,
        )  # fmt: skip


def _absent(body: dict[str, Any], key: str) -> bool:
    value = body.get(key)
    return value is None or value is False or value == _HARMLESS.get(key, None)


def _number(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _bad(f"'{key}' must be a number", param=key)
    return float(value)


def _integer(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(f"'{key}' must be an integer", param=key)
    return value


def _text(value: str, what: str, param: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _bad(f"{what} is not valid Unicode (a lone surrogate)", param=param) from e
    return value


def _content(raw: Any, where: str) -> str:
    """A message's text: a string, or a list of text parts (joined by newlines)."""
    if isinstance(raw, str):
        return _text(raw, where, "messages")
    if not isinstance(raw, list):
        raise _bad(f"{where}.content must be a string or a list of text parts", param="messages")
    texts = []
    for j, part in enumerate(raw):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            raise _bad(
                f"{where}.content[{j}] is not a text part ({{'type': 'text', 'text': ...}}):"
                f" the enclave's models read text only", param="messages",
            )  # fmt: skip
        texts.append(_text(part["text"], where, "messages"))
    return "\n".join(texts)


def _messages(body: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _bad("'messages' must be a non-empty list of messages", param="messages")
    if len(raw) > MAX_MESSAGES:
        raise _bad(f"'messages' has {len(raw)} items; at most {MAX_MESSAGES}", param="messages")
    out = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"{where} must be an object with 'role' and 'content'", param="messages")
        role = "system" if m.get("role") == "developer" else m.get("role")
        if role in ("tool", "function") or m.get("tool_calls") or m.get("function_call"):
            raise _bad(
                f"{where}: tool calls are not supported: this enclave's models do not call"
                " tools", param="messages",
            )  # fmt: skip
        if role not in CHAT_ROLES:
            raise _bad(
                f"{where}.role must be 'system', 'developer', 'user' or 'assistant', not"
                f" {m.get('role')!r}", param="messages",
            )  # fmt: skip
        out.append((str(role), _content(m.get("content"), where)))
    return tuple(out)


def _prompt(body: dict[str, Any]) -> str:
    raw = body.get("prompt")
    if isinstance(raw, list):
        raise _bad(
            "'prompt' must be one string: a list of prompts (or of token ids) is not supported",
            param="prompt",
        )  # fmt: skip
    if not isinstance(raw, str):
        raise _bad("'prompt' must be a string", param="prompt")
    return _text(raw, "'prompt'", "prompt")


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    raw = body.get("stop")
    if raw is None:
        return ()
    stop = [raw] if isinstance(raw, str) else raw
    if (
        not isinstance(stop, list)
        or len(stop) > MAX_STOP
        or not all(isinstance(x, str) for x in stop)
    ):
        raise _bad(f"'stop' must be a string or a list of at most {MAX_STOP} strings", param="stop")
    return tuple(_text(x, "'stop'", "stop") for x in stop)


def _ask(body: dict[str, Any], *, chat: bool) -> _Ask:
    """The generate request for an OpenAI chat (``chat``) or completion body."""
    model = _model(body)
    for key, why in _UNSUPPORTED.items():
        if not _absent(body, key):
            raise _bad(f"'{key}' is not supported: {why}", param=key)
    if body.get("n") not in (None, 1):
        raise _bad("'n' must be 1: the enclave makes one answer per request", param="n")
    stream = body.get("stream")
    if stream not in (None, True, False):
        raise _bad("'stream' must be true or false", param="stream")
    options = body.get("stream_options")
    if options is not None and not stream:
        raise _bad("'stream_options' is only allowed when 'stream' is true", param="stream_options")
    if options is not None and not isinstance(options, dict):
        raise _bad("'stream_options' must be an object", param="stream_options")
    include_usage = (options or {}).get("include_usage")
    if include_usage not in (None, True, False):
        raise _bad("'stream_options.include_usage' must be true or false", param="stream_options")
    messages = _messages(body) if chat else None
    prompt = None if chat else _prompt(body)
    size = sum(len(t.encode()) for _, t in messages) if messages else len((prompt or "").encode())
    if size > MAX_PROMPT_BYTES:
        raise _bad(
            f"the {'messages are' if chat else 'prompt is'} {size} bytes of text; the limit"
            f" is {MAX_PROMPT_BYTES}", param="messages" if chat else "prompt",
        )  # fmt: skip
    max_tokens = _integer(body, "max_completion_tokens") if chat else None
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens")
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS if chat else COMPLETIONS_MAX_TOKENS
    return _Ask(
        model=model, messages=messages, prompt=prompt, max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0.0), top_p=_number(body, "top_p", 1.0),
        top_k=_integer(body, "top_k") or 0, seed=_integer(body, "seed"), stop=_stop(body),
        stream=bool(stream), include_usage=bool(include_usage),
    )  # fmt: skip


# -- generation: a stream on a pooled session, in a thread ------------------------------

#: What a generation's thread hands the event loop: ``("piece", str)``,
#: ``("end", Generation)`` or ``("error", BaseException)``.
_Item = tuple[str, Any]


class _Generation:
    """One generation on a pooled session, run by a thread of ``threads``: sessions
    are blocking, and one stream holds its session from the request to the receipt.

    The thread passes each piece to the event loop as it arrives; :meth:`stop` (the
    client hung up) makes it cancel the stream at the next piece and read it to its
    end (the enclave stops; the receipt of what was sent is recorded), so the session
    goes back to the pool sound. The end or the error is handed over only once the
    session is back in the pool.
    """

    def __init__(
        self, pool: SessionPool[Session], ask: _Ask, threads: concurrent.futures.Executor
    ) -> None:
        self._pool = pool
        self._ask = ask
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._stop = threading.Event()
        threads.submit(self._run)

    def stop(self) -> None:
        self._stop.set()

    async def next(self) -> _Item:
        return await self._queue.get()

    def _put(self, item: _Item) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop is gone: nobody listens
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _run(self) -> None:
        try:
            item: _Item = ("end", self._generate())
        except BaseException as e:  # handed to the event loop, which answers with it
            item = ("error", e)
        self._put(item)

    def _generate(self) -> Generation | None:
        for attempt in (1, 2):
            forwarded = 0
            try:
                with self._pool.session() as s:
                    if self._stop.is_set():  # the client left while we waited for a session
                        return None
                    stream = self._ask.start(s)
                    for piece in stream:
                        if self._stop.is_set():
                            stream.cancel()
                            stream.finish()
                            return None
                        forwarded += 1
                        self._put(("piece", piece))
                    return stream.result
            except (TransportError, TruncatedError) as e:
                # One retry on a fresh session, as for embeddings, only while nothing
                # was passed on: a pooled connection closed meanwhile shows as a send
                # that fails or as a stream cut short before its first chunk.
                lost = isinstance(e, TransportError) or isinstance(e.__cause__, TransportError)
                if attempt == 2 or forwarded or not lost or self._stop.is_set():
                    raise
        raise AssertionError("unreachable")


async def _disconnected(receive: Receive) -> None:
    """Returns when the client hangs up (the request body was already read whole)."""
    while (await receive())["type"] != "http.disconnect":
        pass


# -- generation: the OpenAI answer ------------------------------------------------------


def _finish(g: Generation) -> str:
    # "cancelled" only follows a cancel, which only a client that hung up asks for.
    return g.finish if g.finish in ("stop", "length") else "stop"


def _usage(g: Generation) -> dict[str, int]:
    return {
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.completion_tokens,
        "total_tokens": g.prompt_tokens + g.completion_tokens,
    }


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class _Answer:
    """The OpenAI objects of one answer: chat (``chat.completion`` and its chunks) or
    legacy completion (``text_completion``)."""

    def __init__(self, ask: _Ask, *, chat: bool, created: int) -> None:
        self.ask, self.chat = ask, chat
        self.head = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(12)}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": ask.model,
            "system_fingerprint": None,
        }

    def _chunk(self, choice: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
        out = {**self.head, "choices": [] if choice is None else [choice], **extra}
        if self.ask.include_usage and "usage" not in extra:
            out["usage"] = None
        return out

    def _piece(self, text: str, finish: str | None = None) -> dict[str, Any]:
        if self.chat:
            delta = {"content": text} if finish is None else {}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}

    def whole(self, g: Generation) -> dict[str, Any]:
        if self.chat:
            choice = {
                "index": 0, "message": {"role": "assistant", "content": g.text, "refusal": None},
                "logprobs": None, "finish_reason": _finish(g),
            }  # fmt: skip
        else:
            choice = {"text": g.text, "index": 0, "logprobs": None, "finish_reason": _finish(g)}
        obj = "chat.completion" if self.chat else "text_completion"
        return {
            **self.head, "object": obj, "choices": [choice], "usage": _usage(g),
            "ephemeralml": _ephemeralml(g),
        }  # fmt: skip

    async def events(self, first: _Item, run: _Generation) -> AsyncIterator[bytes]:
        """The server-sent events, from the first item on: the stream ends with
        ``[DONE]`` only after the enclave's verified end."""
        if self.chat:
            role = {"role": "assistant", "content": ""}
            yield _sse(self._chunk({"index": 0, "delta": role, "logprobs": None,
                                    "finish_reason": None}))  # fmt: skip
        kind, value = first
        while kind == "piece":
            yield _sse(self._chunk(self._piece(value)))
            kind, value = await run.next()
        if kind == "error":
            error = value if isinstance(value, ProxyError) else _answer_error(value, self.chat)
            # OpenAI's streaming error: the SDK raises it; no [DONE], so no client
            # takes what came before for the whole answer.
            yield b"event: error\n" + _sse(error.body())
            return
        g: Generation = value
        yield _sse(self._chunk(self._piece("", _finish(g)), ephemeralml=_ephemeralml(g)))
        if self.ask.include_usage:
            yield _sse(self._chunk(None, usage=_usage(g)))
        yield b"data: [DONE]\n\n"


def _ephemeralml(g: Generation) -> dict[str, Any]:
    return {**_provenance([_receipt(g.receipt)], g.receipt), "device": g.device}


def _answer_error(e: BaseException, chat: bool) -> ProxyError:
    if isinstance(e, ProxyError):
        return e
    if isinstance(e, Error):
        return _from_error(e, param="messages" if chat else "prompt")
    # Not ours: a bug, said as little as possible (no text of the request in it).
    return ProxyError(500, f"the proxy failed: {type(e).__name__}", "server_error")


class _EventStream(StreamingResponse):
    """Server-sent events whose generation is stopped however the response ends
    (a client that hangs up cancels the sending task at any await)."""

    def __init__(self, content: AsyncIterator[bytes], run: _Generation) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"cache-control": "no-cache"})  # fmt: skip
        self._run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._run.stop()


def build_app(pool: SessionPool[Session], *, clock: Callable[[], float] = time.time) -> Starlette:
    """The ASGI app over ``pool`` (its sessions are ``connect()`` sessions); ``clock``
    dates the answers (``created``)."""
    threads = concurrent.futures.ThreadPoolExecutor(
        MAX_GENERATION_THREADS, thread_name_prefix="ephemeral-proxy-generate"
    )

    def call(fn: Callable[[Session], Any]) -> Any:
        # One retry on a fresh session: a pooled connection the enclave or the relay
        # closed meanwhile must not fail the request (embeddings are idempotent).
        for attempt in (1, 2):
            try:
                with pool.session() as s:
                    return fn(s)
            except TransportError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def run(fn: Callable[[Session], Any]) -> Any:
        try:
            return await run_in_threadpool(call, fn)
        except EmbedIncomplete as e:
            done = len(e.completed)
            raise ProxyError(
                502, f"the enclave stopped after {done} of its requests: {e.message}",
                "server_error", code=e.code,
            ) from e  # fmt: skip
        except Error as e:
            raise _from_error(e) from e

    async def models(request: Request) -> JSONResponse:
        served: dict[str, bytes] = await run(lambda s: s.models)
        return JSONResponse({"object": "list", "data": [_model_object(m) for m in sorted(served)]})

    async def model(request: Request) -> JSONResponse:
        wanted = request.path_params["model"]
        served: dict[str, bytes] = await run(lambda s: s.models)
        if wanted not in served:
            raise _no_model(wanted)
        return JSONResponse(_model_object(wanted))

    async def embeddings(request: Request) -> JSONResponse:
        body = await _read_json(request)
        texts, name, encoding = _inputs(body), _model(body), _encoding(body)
        dims = body.get("dimensions")

        def embed(s: Session) -> list[Embeddings]:
            if name not in s.models:
                raise _no_model(name)
            return s.embed(texts, model=name)

        results: list[Embeddings] = await run(embed)
        vectors = np.concatenate([r.vectors for r in results])
        if dims is not None and dims != vectors.shape[1]:
            raise _bad(
                f"'dimensions' must be {vectors.shape[1]} for {name} (the enclave does not "
                "shorten embeddings)", param="dimensions",
            )  # fmt: skip
        receipts = [{**_receipt(r.receipt), "first_input": r.first} for r in results]
        content = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _vector(row, encoding)}
                for i, row in enumerate(vectors)
            ],
            "model": name,
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
            "ephemeralml": _provenance(receipts, results[0].receipt),
        }
        headers = {RECEIPT_HEADER: ",".join(r["receipt_id"] for r in receipts)}
        return JSONResponse(content, headers=headers)

    async def generate(request: Request, *, chat: bool) -> Response:
        ask = _ask(await _read_json(request), chat=chat)
        answer = _Answer(ask, chat=chat, created=int(clock()))
        generation = _Generation(pool, ask, threads)
        gone = asyncio.ensure_future(_disconnected(request.receive))
        streaming = False
        try:
            while True:
                # Errors before the first piece are plain HTTP errors; a whole answer
                # waits for the end. Either way, a client that hangs up stops it.
                step = asyncio.ensure_future(generation.next())
                await asyncio.wait({step, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    step.cancel()
                    return Response(status_code=499)  # nobody reads it
                item = step.result()
                if item[0] == "error":
                    raise _answer_error(item[1], chat) from item[1]
                if ask.stream:
                    streaming = True
                    return _EventStream(answer.events(item, generation), generation)
                if item[0] == "end":
                    g: Generation = item[1]
                    headers = {RECEIPT_HEADER: g.receipt.receipt.receipt_id.hex()}
                    return JSONResponse(answer.whole(g), headers=headers)
        finally:
            gone.cancel()
            if not streaming:
                generation.stop()

    async def chat_completions(request: Request) -> Response:
        return await generate(request, chat=True)

    async def completions(request: Request) -> Response:
        return await generate(request, chat=False)

    async def on_proxy_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ProxyError)
        return exc.response()

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        kind = "invalid_request_error"
        if exc.status_code == 404:
            return ProxyError(404, f"no such path: {request.url.path}", kind).response()
        return ProxyError(exc.status_code, str(exc.detail), kind).response()

    return Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/models/{model:path}", model, methods=["GET"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
        ],
        exception_handlers={ProxyError: on_proxy_error, HTTPException: on_http_error},
    )


def _model_object(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "ephemeralml-enclave"}


class ProxyServer(uvicorn.Server):
    """uvicorn, stopping cleanly on SIGINT or SIGTERM: the proxy exits 0 and the signal
    is not raised again afterwards (uvicorn's own handling re-raises it, so the process
    would die of it). ``received`` names the signals that stopped it."""

    received: list[str]

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        self.received = []

        def stop(sig: int, _frame: object) -> None:
            self.received.append(signal.Signals(sig).name)
            if self.should_exit:  # a second signal: do not wait for open requests
                self.force_exit = True
            self.should_exit = True

        original = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def serve_on(app: Starlette, sock: socket.socket, *, limit_concurrency: int) -> list[str]:
    """Serve ``app`` on the bound loopback socket until SIGINT or SIGTERM; the signals
    that stopped it. No access log, no lifespan, no server header (both the proxy and
    ``ephemeral web`` serve this way)."""
    server = ProxyServer(
        uvicorn.Config(
            app, lifespan="off", log_config=None, access_log=False, server_header=False,
            timeout_keep_alive=5, limit_concurrency=limit_concurrency,
        )
    )  # fmt: skip
    server.run(sockets=[sock])
    return server.received
