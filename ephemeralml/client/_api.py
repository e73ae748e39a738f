"""The client library: ``connect(...)`` → :class:`Session` with ``.embed(texts)``.

A blocking socket drives the sans-IO :class:`~ephemeralml.common._session.ClientSession`.
Nothing but the hello (a random nonce) is sent before the enclave's attestation has
verified under the policy; every response's receipt is verified before its result
is returned.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType

import numpy as np

from ephemeralml.common._attestation import ChainCache, VerifiedAttestation
from ephemeralml.common._binding import EnclaveBinding
from ephemeralml.common._config import positive_seconds
from ephemeralml.common._errors import (
    ConfigError,
    InferenceError,
    LocalProtocolError,
    RemoteProtocolError,
    TransportError,
    error_from_code,
)
from ephemeralml.common._messages import EmbedRequest, EmbedResult
from ephemeralml.common._receipt import VerifiedReceipt
from ephemeralml.common._session import (
    Attested,
    ClientSession,
    RequestFailed,
    ResponseReceived,
)

from ._policy import ClientPolicy

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_MODEL",
    "DEFAULT_TIMEOUT_S",
    "MAX_TEXTS_PER_REQUEST",
    "Embeddings",
    "Session",
    "connect",
]

DEFAULT_ADDRESS = "127.0.0.1:5000"
DEFAULT_MODEL = "all-MiniLM-L6-v2"
#: The deadline of a connect (dial, hello, attestation verified, open sent) and of
#: each request (sent until its answer is verified), whatever the peer does byte by
#: byte: a relay that drips one byte a second cannot keep a caller waiting longer
#: (protocol.md §7.1 L6). A first request may include model warm-up, so this is
#: generous. Past it the session ends with a TransportError.
DEFAULT_TIMEOUT_S = 30.0
#: Texts per sealed request; more are split into several requests (one receipt each).
MAX_TEXTS_PER_REQUEST = 64

_READ_BYTES = 64 * 1024

#: Chains this process has verified: a known chain costs one signature check
#: (protocol.md §3, "chain cache"). Keyed by the exact bytes and the pinned root.
_CHAIN_CACHE = ChainCache()


@dataclass(frozen=True)
class Embeddings:
    """Embeddings of one request, with the verified receipt that covers them."""

    model: str
    vectors: np.ndarray  # float32 [n, dim], L2-normalised
    receipt: VerifiedReceipt
    request_cbor: bytes  # the exact bytes whose hash is the receipt's request_hash
    response_cbor: bytes  # the exact bytes whose hash is the receipt's response_hash

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def _parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("tcp:").strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"address {address!r} is not HOST:PORT")
    return host, int(port)


def _check_timeout(timeout: float) -> float:
    # A zero, NaN or infinite deadline is no deadline at all (L6).
    return positive_seconds("timeout", timeout)


class _Deadline:
    """One deadline (L6) over every read and write of one connect or one request."""

    __slots__ = ("at", "seconds", "what")

    def __init__(self, what: str, seconds: float) -> None:
        self.what = what
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def left(self, doing: str) -> float:
        """Seconds left, or the TransportError that says this deadline passed."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise self.passed(doing)
        return left

    def passed(self, doing: str) -> TransportError:
        return TransportError(f"{self.what} deadline of {self.seconds:g} s passed ({doing})")


class Session:
    """One attested, encrypted session with an enclave (through the host).

    ``timeout`` is the deadline of each request, from sending it to its verified
    answer (L6).
    """

    def __init__(
        self,
        sock: socket.socket,
        proto: ClientSession,
        policy: ClientPolicy,
        address: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
    ):
        self._sock = sock
        self._proto = proto
        self.policy = policy
        self.address = address
        self.timeout = _check_timeout(timeout)
        self._closed = False

    @property
    def attestation(self) -> VerifiedAttestation:
        assert self._proto.attestation is not None
        return self._proto.attestation

    @property
    def binding(self) -> EnclaveBinding:
        assert self._proto.binding is not None
        return self._proto.binding

    @property
    def models(self) -> dict[str, bytes]:
        return dict(self.binding.models)

    def embed(self, texts: Sequence[str], *, model: str = DEFAULT_MODEL) -> list[Embeddings]:
        """Embed ``texts``; one :class:`Embeddings` per request of ≤ 64 texts."""
        if isinstance(texts, str):
            raise InferenceError("embed() takes a list of texts, not one string")
        texts = list(texts)
        if not texts:
            raise InferenceError("no input texts")
        self.policy.check_model(self.binding, model)
        out: list[Embeddings] = []
        for i in range(0, len(texts), MAX_TEXTS_PER_REQUEST):
            out.append(
                self._request(EmbedRequest(model, tuple(texts[i : i + MAX_TEXTS_PER_REQUEST])))
            )
        return out

    def _request(self, request: EmbedRequest) -> Embeddings:
        deadline = _Deadline("request", self.timeout)
        seq, frame = self._proto.send_request(request)
        self._send(frame, deadline)
        while True:
            event = self._next_event(deadline, "no verified answer from " + self.address)
            if isinstance(event, RequestFailed):
                raise error_from_code(event.code)(f"enclave refused the request: {event.message}")
            if isinstance(event, ResponseReceived):
                if event.seq != seq:  # pragma: no cover - one request in flight
                    raise LocalProtocolError("response for another request")
                return _embeddings(event)
            raise RemoteProtocolError(f"unexpected {type(event).__name__}")

    def _send(self, data: bytes, deadline: _Deadline) -> None:
        doing = f"{self.address} does not take what we send"
        try:
            # sendall's timeout bounds the whole call, however the peer reads.
            self._sock.settimeout(deadline.left(doing))
            self._sock.sendall(data)
        except TimeoutError as e:
            raise deadline.passed(doing) from e
        except OSError as e:
            raise TransportError(
                f"connection to {self.address} lost while sending: {_why(e)}"
            ) from e

    def _next_event(
        self, deadline: _Deadline, doing: str
    ) -> Attested | ResponseReceived | RequestFailed:
        while True:
            event = self._proto.next_event(now=datetime.now(UTC))
            if event is not None:
                return event
            try:
                # L6: every read gets only what is left of the one deadline, so a
                # peer that drips a byte at a time cannot stretch it.
                self._sock.settimeout(deadline.left(doing))
                data = self._sock.recv(_READ_BYTES)
            except TimeoutError as e:
                raise deadline.passed(doing) from e
            except OSError as e:
                raise TransportError(f"connection to {self.address} lost: {_why(e)}") from e
            if not data:
                raise TransportError(
                    f"{self.address} closed the connection mid-session "
                    "(is the enclave behind the host running?)"
                )
            self._proto.receive_data(data)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(OSError):
                self._sock.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _why(e: OSError) -> str:
    return e.strerror or type(e).__name__


def _embeddings(event: ResponseReceived) -> Embeddings:
    r: EmbedResult = event.result
    vectors = np.frombuffer(r.vectors, dtype="<f4").reshape(r.count, r.dim)
    return Embeddings(
        model=r.model,
        vectors=vectors,
        receipt=event.receipt,
        request_cbor=event.request.to_cbor(),
        response_cbor=r.to_cbor(),
    )


def connect(
    address: str = DEFAULT_ADDRESS,
    *,
    policy: ClientPolicy,
    timeout: float = DEFAULT_TIMEOUT_S,
    nonce: bytes | None = None,
    session_mode: str | None = None,
) -> Session:
    """Open a session: send a nonce, verify the attestation, set up HPKE.

    ``timeout`` is the deadline of the whole connect (dial, hello, attestation,
    open) and then of each request (L6). Raises :class:`TransportError` if nothing
    answers in time, :class:`AttestationError` / :class:`PolicyError` if the enclave
    does not verify. Nothing but the hello has been sent when those are raised.
    """
    timeout = _check_timeout(timeout)
    host, port = _parse_address(address)
    deadline = _Deadline("connect", timeout)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError as e:
        raise deadline.passed(f"cannot reach {address}") from e
    except OSError as e:
        raise TransportError(
            f"cannot reach {address}: {_why(e)} (is ephemeral-host running?)"
        ) from e
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    mode = session_mode or policy.session_mode
    proto = ClientSession(policy.attestation, nonce=nonce, chain_cache=_CHAIN_CACHE, mode=mode)
    session = Session(sock, proto, policy, address, timeout=timeout)
    try:
        session._send(proto.hello(), deadline)
        event = session._next_event(deadline, f"no attestation from {address}")
        if not isinstance(event, Attested):  # pragma: no cover - state table forbids it
            raise RemoteProtocolError("expected an attestation")
        policy.check_binding(event.binding)  # P1 models, P2 enclave policy version
        # Only now, with the attestation verified, does the HPKE "open" go out.
        session._send(proto.data_to_send(), deadline)
        return session
    except BaseException:
        session.close()
        raise
