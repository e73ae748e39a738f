"""The mock KMS on HTTP: the request handler, the threaded server, :class:`MockKmsServer`.

:class:`_Handler` speaks the KMS JSON 1.1 protocol over HTTP/1.1 (keep-alive, bounded
bodies, an idle timeout): it reads the body, has the service authenticate the caller
and run the operation named by ``X-Amz-Target``, and answers JSON with an
``x-amzn-RequestId``, errors as ``{"__type", "message"}``. :class:`MockKmsServer`
serves it on a loopback port from a background thread, over the keys and credentials
in a state folder.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import re
import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ..common._attestation import TrustedRoot
from ..common._errors import ConfigError
from ._kms_keys import _KeyStore
from ._kms_principals import PRINCIPALS, REGION, MockCredentials, load_or_create_credentials
from ._kms_requests import _Body, _KmsError, _load_json, _serialization
from ._kms_service import _Kms, utc_now

__all__ = ["IDLE_TIMEOUT_S", "MAX_REQUEST_BYTES", "MockKmsServer"]


log = logging.getLogger("ephemeralml.host.mock_kms")


#: Largest request body, in bytes. The largest KMS field the mock takes is an
#: AttestationDocument (at most 262,144 bytes in the KMS API model, about 350 KiB in
#: base64); 1 MiB bounds what one request can make us buffer, with room to spare.
MAX_REQUEST_BYTES = 1024 * 1024

#: How long an idle or stalled connection is kept, in seconds: boto3 keeps
#: connections alive between calls, and a stalled peer must not pin a thread forever.
IDLE_TIMEOUT_S = 30.0


_JSON_CONTENT_TYPE = "application/x-amz-json-1.1"
_TARGET_PREFIX = "TrentService."


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer
    protocol_version = "HTTP/1.1"  # keep-alive, as boto3 expects
    server_version = "ephemeralml-mock-kms"
    timeout = IDLE_TIMEOUT_S

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        # http.server's access log goes to debug; the request log is in do_POST.
        log.debug("http: " + format, *args)

    def _send(self, status: int, payload: Mapping[str, Any] | None, request_id: str) -> None:
        body = b"" if payload is None else json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", _JSON_CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", request_id)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise _KmsError("ValidationException", "Chunked request bodies are not supported")
        raw_length = self.headers.get("Content-Length")
        try:
            length = int(raw_length) if raw_length is not None else -1
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise _KmsError("ValidationException", "Content-Length is required")
        if length > MAX_REQUEST_BYTES:
            self.close_connection = True  # the body is left unread
            raise _KmsError(
                "ValidationException",
                f"The request body is {length} bytes; the limit is {MAX_REQUEST_BYTES}",
            )
        try:
            data = self.rfile.read(length)
        except OSError as e:  # a stalled peer: the socket timed out (IDLE_TIMEOUT_S)
            self.close_connection = True
            raise _serialization("The request body could not be read") from e
        if len(data) != length:
            self.close_connection = True
            raise _serialization("The request body is shorter than its Content-Length")
        return data

    def do_POST(self) -> None:
        request_id = str(uuid.uuid4())
        target = self.headers.get("X-Amz-Target", "")
        op = target[len(_TARGET_PREFIX) :] if target.startswith(_TARGET_PREFIX) else ""
        try:
            raw = self._read_body()
            # Who is calling, before anything else is looked at (the body is read first,
            # bounded, because the signature covers its hash).
            caller = self.server.service.authenticate(self.command, self.path, self.headers, raw)
            handler = self.server.service.operations.get(op)
            if handler is None:
                raise _KmsError(
                    "UnknownOperationException",
                    f"The mock KMS does not implement {target or 'this request (no X-Amz-Target)'}",
                )
            try:
                data = _load_json(raw) if raw.strip() else {}
            except (ValueError, UnicodeDecodeError) as e:
                raise _serialization(f"The request body is not valid JSON: {e}") from e
            if not isinstance(data, dict):
                raise _serialization("The request body must be a JSON object")
            result = handler(_Body(data), caller)
        except _KmsError as e:
            log.info("request %s %s failed: %s", request_id, op or target or "-", e.code)
            self._send(e.status, {"__type": e.code, "message": e.message}, request_id)
            return
        except Exception:
            # Never echo an exception: it might hold request data. The traceback is for
            # the operator, and names no key material (nothing here formats secrets).
            log.exception("request %s %s: internal error", request_id, op)
            self._send(
                500,
                {"__type": "KMSInternalException", "message": "An internal error occurred"},
                request_id,
            )
            return
        key = result.get("KeyId") or result.get("KeyMetadata", {}).get("KeyId") or "-"
        log.info("request %s %s ok key=%s caller=%s", request_id, op, key, caller.name)
        self._send(200, result or None, request_id)

    def _not_post(self) -> None:
        request_id = str(uuid.uuid4())
        self.close_connection = True
        self._send(
            400,
            {"__type": "UnknownOperationException", "message": "KMS takes POST / only"},
            request_id,
        )

    do_GET = do_PUT = do_DELETE = do_PATCH = _not_post


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], service: _Kms) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.service = service
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, conn: socket.socket, *, add: bool) -> None:
        with self._connections_lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A peer that resets or times out is routine; no traceback on stderr.
        log.debug("connection from %s ended with an error", client_address, exc_info=True)

    def drop_connections(self) -> None:
        with self._connections_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


def _check_loopback(host: str) -> None:
    # Its credentials are files on this machine and its documents are signed by a
    # mock CA whose key is on this machine too: it is a development server.
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"mock KMS: refusing to listen on {host!r}: its credentials and its mock "
            "root's key are on this machine, so it listens on loopback only"
        )


class MockKmsServer:
    """The mock KMS on a loopback HTTP port, served from a background thread.

    ``state_dir`` holds the keys and the principals' credentials (loaded or made now,
    at construction; a corrupt file is a :class:`ConfigError`). ``trusted_root`` is
    the root Recipient documents must chain to; ``clock`` gives *now* for their
    certificate validity; ``signing_clock`` the *now* SigV4 dates are held to
    (:data:`MAX_CLOCK_SKEW_S`). ``region`` is the region credential scopes must name
    and key ARNs carry. Use as a context manager, or call :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        trusted_root: TrustedRoot,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        clock: Callable[[], datetime] = utc_now,
        signing_clock: Callable[[], datetime] = utc_now,
        region: str = REGION,
    ) -> None:
        if not isinstance(trusted_root, TrustedRoot):
            raise ConfigError("mock KMS: trusted_root must be a TrustedRoot")
        host, port = listen
        _check_loopback(host)
        if type(port) is not int or not 0 <= port <= 65535:
            raise ConfigError(f"mock KMS: port {port!r} is not in 0..65535")
        if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", region):
            raise ConfigError(f"mock KMS: {region!r} is not an AWS region name")
        self._listen = (host, port)
        store = _KeyStore(Path(state_dir), region)
        self._credentials = load_or_create_credentials(Path(state_dir))
        self._service = _Kms(
            store,
            trusted_root,
            clock,
            credentials=self._credentials,
            signing_clock=signing_clock,
        )
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def region(self) -> str:
        return self._service.region

    def credentials(self, principal: str) -> MockCredentials:
        """The credentials of :data:`MODEL_OWNER`, :data:`HOST` or :data:`ENCLAVE`."""
        try:
            return self._credentials[principal]
        except KeyError:
            raise ConfigError(
                f"mock KMS: no principal {principal!r} ({', '.join(sorted(PRINCIPALS))})"
            ) from None

    def start(self) -> MockKmsServer:
        if self._httpd is not None:
            raise ConfigError("mock KMS: already started")
        try:
            httpd = _HttpServer(self._listen, self._service)
        except OSError as e:
            raise ConfigError(
                f"mock KMS: cannot listen on {self._listen[0]}:{self._listen[1]}: {e}"
            ) from e
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="mock-kms", daemon=True
        )
        self._thread.start()
        log.info("mock KMS listening on %s", self.url)
        return self

    @property
    def address(self) -> tuple[str, int]:
        if self._httpd is None:
            raise ConfigError("mock KMS: not started")
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def close(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        httpd.drop_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> MockKmsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
