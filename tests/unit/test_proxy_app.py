"""The proxy's ASGI app (client/_proxy.py) driven directly, over sessions that fail in
each way a real one can: what an OpenAI SDK then gets (status, error object), and the
one retry on a fresh session after a lost connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from ephemeralml.client._proxy import build_app
from ephemeralml.client._proxy_pool import PoolBusyError
from ephemeralml.common._errors import (
    AttestationError,
    Error,
    InferenceError,
    RemoteError,
    TransportError,
)

MODEL = "all-MiniLM-L6-v2"


class FakeSession:
    def __init__(self, fail: Error | None) -> None:
        self.fail = fail
        self.models = {MODEL: b"\x00" * 32}

    def embed(self, texts: list[str], model: str) -> Any:
        assert self.fail is not None
        raise self.fail


class FakePool:
    """Hands out sessions; ``failures`` are raised in turn, by opening or by embedding."""

    def __init__(self, *failures: tuple[str, Error]) -> None:
        self.failures = list(failures)
        self.taken = 0

    @contextlib.contextmanager
    def session(self) -> Iterator[FakeSession]:
        self.taken += 1
        where, error = self.failures.pop(0) if self.failures else ("embed", TransportError("gone"))
        if where == "open":
            raise error
        yield FakeSession(error)


def _call(app: Any, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, Any]]:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "scheme": "http", "server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 50000),
    }  # fmt: skip
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = sent[0]["status"]
    return status, json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


def _embed(pool: FakePool) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"model": MODEL, "input": ["x"]}).encode()
    return _call(build_app(pool), "POST", "/v1/embeddings", body)  # type: ignore[arg-type]


def _error(message: str, kind: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@pytest.mark.parametrize(
    ("failures", "status", "body", "taken"),
    [
        # Re-attestation fails (a new session that does not verify): 502, the check named.
        ([("open", AttestationError("A3 signature: the document's signature does not verify"))], 502,
         _error("the enclave did not verify: A3 signature: the document's signature does not verify",
                "ephemeralml_verification_error", "attestation"), 1),
        # A pooled session lost its connection: one retry on a fresh one, which works
        # as far as the enclave's refusal (a 400 passed on as the enclave said it).
        ([("embed", TransportError("connection lost")), ("embed", InferenceError("input 0: too long"))],
         400, _error("input 0: too long", "invalid_request_error", "inference", "input"), 2),
        # Lost twice: the enclave is unreachable.
        ([("embed", TransportError("connection lost")), ("open", TransportError("cannot reach 127.0.0.1:5000"))],
         502, _error("enclave unreachable: cannot reach 127.0.0.1:5000", "server_error", "transport"), 2),
        ([("open", PoolBusyError("all 4 enclave sessions stayed busy for 30 s"))], 429,
         _error("all 4 enclave sessions stayed busy for 30 s", "rate_limit_error", "busy"), 1),
        ([("embed", RemoteError("internal", "model crashed"))], 502,
         _error("the enclave failed the request: enclave reported internal: model crashed", "server_error", "remote"), 1),
    ],
)  # fmt: skip
def test_each_failure_is_openais_error_shape(
    failures: list[tuple[str, Error]], status: int, body: dict[str, Any], taken: int
) -> None:
    pool = FakePool(*failures)
    assert _embed(pool) == (status, body)
    assert pool.taken == taken


def test_unknown_paths_and_methods() -> None:
    app = build_app(FakePool())  # type: ignore[arg-type]
    assert _call(app, "GET", "/v1/chat") == (
        404, _error("no such path: /v1/chat", "invalid_request_error", None)
    )  # fmt: skip
    assert _call(app, "GET", "/v1/embeddings") == (
        405, _error("Method Not Allowed", "invalid_request_error", None)
    )  # fmt: skip
