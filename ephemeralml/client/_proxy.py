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

Errors are OpenAI's error object (``{"error": {"message", "type", "param",
"code"}}``) with its status codes: 400 a bad request, 404 an unknown model or path,
413 a body over :data:`MAX_BODY_BYTES`, 429 every session busy, and 502 when the
enclave does not verify or cannot be reached (the message says which check failed).
Token counts are not known outside the enclave: ``usage`` reports 0.

Plain HTTP on loopback only: what the SDK sends is plaintext until it reaches this
process. Nothing here logs a text or a vector.
"""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import socket
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ephemeralml.common._errors import (
    ConfigError,
    Error,
    InferenceError,
    TransportError,
    VerificationError,
)

from ._api import Embeddings, EmbedIncomplete, Session
from ._proxy_pool import PoolBusyError, SessionPool

__all__ = ["MAX_BODY_BYTES", "MAX_INPUTS", "ProxyError", "ProxyServer", "build_app", "serve_on"]

#: Largest request body: 2048 inputs (OpenAI's cap) of a few KiB each.
MAX_BODY_BYTES = 8 * 1024 * 1024
#: Most inputs in one request (OpenAI's own limit for embeddings).
MAX_INPUTS = 2048
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

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)


def _bad(message: str, *, param: str | None = None, code: str | None = None) -> ProxyError:
    return ProxyError(400, message, "invalid_request_error", param=param, code=code)


def _from_error(e: Error) -> ProxyError:
    """What the caller sees for a library error: its one line, and the check it names."""
    if isinstance(e, VerificationError):
        return ProxyError(
            502, f"the enclave did not verify: {e.message}", "ephemeralml_verification_error",
            code=e.code,
        )  # fmt: skip
    if isinstance(e, TransportError):
        return ProxyError(502, f"enclave unreachable: {e.message}", "server_error", code=e.code)
    if isinstance(e, PoolBusyError):
        return ProxyError(429, e.message, "rate_limit_error", code=e.code)
    if isinstance(e, InferenceError | ConfigError):
        return _bad(e.message, param="input", code=e.code)
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


def _receipts(results: list[Embeddings]) -> list[dict[str, Any]]:
    out = []
    for r in results:
        rc = r.receipt.receipt
        out.append({
            "receipt_id": rc.receipt_id.hex(),
            "session_id": rc.session_id.hex(),
            "seq": rc.seq,
            "first_input": r.first,
            "request_sha256": rc.request_hash.hex(),
            "response_sha256": rc.response_hash.hex(),
            "attestation_sha256": rc.attestation_hash.hex(),
            "cose": base64.b64encode(r.receipt.raw).decode("ascii"),
        })  # fmt: skip
    return out


def build_app(pool: SessionPool[Session]) -> Starlette:
    """The ASGI app over ``pool`` (its sessions are ``connect()`` sessions)."""

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
        doc = results[0].receipt.attestation.document
        receipts = _receipts(results)
        content = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _vector(row, encoding)}
                for i, row in enumerate(vectors)
            ],
            "model": name,
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
            "ephemeralml": {
                "receipts": receipts,
                "enclave": {
                    # The document the receipts name (attestation_sha256): with it, each
                    # receipt verifies offline (``ephemeral verify --attestation``).
                    "attestation": base64.b64encode(doc.raw).decode("ascii"),
                    "module_id": doc.module_id,
                    "mode": results[0].receipt.receipt.mode,
                    "pcrs": {str(i): p.hex() for i, p in sorted(doc.pcrs.items())},
                },
            },
        }
        headers = {RECEIPT_HEADER: ",".join(r["receipt_id"] for r in receipts)}
        return JSONResponse(content, headers=headers)

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
