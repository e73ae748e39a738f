"""The client library: ``connect(...)`` → :class:`Session` with ``.embed(texts)``.

A blocking socket drives the sans-IO :class:`~ephemeralml.common._session.ClientSession`.
Nothing but the hello (a random nonce) is sent before the enclave's attestation has
verified under the policy; every response's receipt is verified, and recorded in the
audit log (:mod:`._audit`), before its result is returned; a request the enclave
refuses is recorded there too (its code), before its error is raised.
"""

from __future__ import annotations

import contextlib
import errno
import re
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType

import numpy as np

from ephemeralml.common._attestation import ChainCache, VerifiedAttestation
from ephemeralml.common._binding import EnclaveBinding
from ephemeralml.common._config import positive_seconds
from ephemeralml.common._errors import (
    ConfigError,
    Error,
    LocalProtocolError,
    RemoteError,
    RemoteProtocolError,
    TransportError,
    TruncatedError,
    error_from_code,
)
from ephemeralml.common._messages import (
    ChatMessage,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
)
from ephemeralml.common._receipt import VerifiedReceipt
from ephemeralml.common._session import (
    Attested,
    ChunkReceived,
    ClientSession,
    RequestFailed,
    ResponseReceived,
    StreamEnded,
)
from ephemeralml.runtime._transport import Endpoint

from ._audit import AuditChoice, audit_log
from ._inputs import check_texts
from ._policy import ClientPolicy

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_MODEL",
    "DEFAULT_TIMEOUT_S",
    "MAX_TEXTS_PER_REQUEST",
    "EmbedIncomplete",
    "Embeddings",
    "EnclaveRefusal",
    "Generation",
    "PeerReportedError",
    "Session",
    "TextStream",
    "connect",
    "is_refusal",
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
#: Tokens a generation may make unless the caller says otherwise.
DEFAULT_MAX_TOKENS = 256

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
    #: The list-wide index of this request's first text (requests carry ≤ 64 texts).
    first: int = 0

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def truncated(self) -> tuple[int, ...]:
        """List-wide indices of the texts the enclave cut to the token limit, as its
        verified receipt records them (only when ``embed(..., truncate=True)``)."""
        return tuple(self.first + i for i in self.receipt.receipt.truncated)


@dataclass(frozen=True)
class Generation:
    """A whole streamed answer, with the verified receipt that covers its every chunk."""

    model: str
    text: str
    #: ``"stop"`` (a stop token or sequence), ``"length"`` (max_tokens or the model's
    #: context) or ``"cancelled"``.
    finish: str
    prompt_tokens: int
    completion_tokens: int
    #: Where the model ran (ONNX Runtime's execution provider), as the enclave signed it.
    device: str
    receipt: VerifiedReceipt
    request_cbor: bytes  # the exact bytes whose hash is the receipt's request_hash
    response_cbor: bytes  # the exact bytes whose hash is the receipt's response_hash


class TextStream:
    """The answer to a generate request, as it arrives (protocol.md §2.8).

    Iterate for the pieces of text, each opened in its place (S1, S2); when the
    iteration ends, :attr:`result` is the :class:`Generation`, its receipt verified
    against the chunks (S3) and recorded in the audit log. A stream cut short raises
    :class:`TruncatedError` (S4): what arrived is never passed off as the answer.
    :meth:`cancel` asks the enclave to stop; the stream then ends ``"cancelled"``
    with a receipt for what was sent. Each wait for the next chunk has the session's
    timeout.
    """

    def __init__(self, session: Session, request: GenerateRequest, seq: int) -> None:
        self._session = session
        self.request = request
        self.seq = seq
        self._pieces: list[str] = []
        self._cancelled = False
        self.result: Generation | None = None

    @property
    def text(self) -> str:
        """The text so far (all of it, once :attr:`result` is set)."""
        return "".join(self._pieces)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        if self.result is not None:
            raise StopIteration
        s = self._session
        doing = f"no next chunk from {s.address}"
        try:
            event = s._next_event(_Deadline("stream", s.timeout), doing)
        except (TransportError, RemoteError) as e:
            s._stream = None
            raise TruncatedError(
                f"answer {self.seq} cut short after {len(self._pieces)} chunk(s), without"
                f" the enclave's end and receipt: {e.message}"
            ) from e
        except Error:
            s._stream = None
            raise
        if isinstance(event, ChunkReceived) and event.seq == self.seq:
            self._pieces.append(event.text)
            return event.text
        s._stream = None
        if isinstance(event, RequestFailed) and event.seq == self.seq:
            s._refused(event)
        if not isinstance(event, StreamEnded) or event.seq != self.seq:
            raise RemoteProtocolError(f"unexpected {type(event).__name__} in a stream")
        s.audit.record(event.receipt)
        r: GenerateResult = event.result
        self.result = Generation(
            model=r.model,
            text=self.text,
            finish=r.finish,
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
            device=r.device,
            receipt=event.receipt,
            request_cbor=event.request.to_cbor(),
            response_cbor=r.to_cbor(),
        )
        raise StopIteration

    def cancel(self) -> None:
        """Ask the enclave to stop (once); keep iterating for the end and receipt."""
        if self.result is None and not self._cancelled:
            self._cancelled = True
            s = self._session
            s._send(s._proto.cancel(self.seq), _Deadline("request", s.timeout))

    def finish(self) -> Generation:
        """Read the rest of the stream; the whole :class:`Generation`."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result


class EnclaveRefusal(Exception):
    """The cause of the error raised for the enclave's sealed refusal of one request
    (its §6 code and its own line): the session is sound after it, unlike after any
    other error. Never raised alone; :func:`is_refusal` asks for it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def is_refusal(e: BaseException) -> bool:
    """Whether ``e`` is the enclave's refusal of one request (the session goes on)."""
    if isinstance(e, EmbedIncomplete):
        return is_refusal(e.error)
    return isinstance(e.__cause__, EnclaveRefusal)


class EmbedIncomplete(Error):
    """:meth:`Session.embed` stopped part-way through a list of several requests.

    Raised only when something was embedded (a failure in the first request raises
    its own error: nothing is lost). What was done is kept:

    * ``completed``: the :class:`Embeddings` of every request answered before the
      failure, in order, each with its verified receipt (already in the audit log);
      they cover texts ``0 .. failed.start - 1`` of the list;
    * ``failed``: the list-wide indices of the texts of the request that failed; the
      texts after it were not sent;
    * ``error``: why (also ``__cause__``); ``code`` is its code, so the CLI's
      one-line error and JSON error object read as the cause's.
    """

    def __init__(
        self, error: Error, *, completed: Sequence[Embeddings], failed: range, total: int
    ) -> None:
        super().__init__(
            f"texts 0..{failed.start - 1} of {total} embedded, then texts "
            f"{failed.start}..{failed.stop - 1} failed: {error.message}"
        )
        self.code = error.code
        self.error = error
        self.completed = tuple(completed)
        self.failed = failed
        self.total = total


class PeerReportedError(RemoteError):
    """An error frame, attributed as far as the client can tell.

    Error frames are not authenticated (protocol.md §6): any hop can send or forge
    one. The host relay marks its own (``host relay: ``, the L1–L4 limits), so
    those read ``the host relay reported limit: …``; any other frame came from the
    enclave or from something between us, and reads ``the peer reported …``.
    """

    def __init__(self, remote_code: str, message: str, *, sender: str) -> None:
        Error.__init__(self, f"{sender} reported {remote_code}: {message}")
        self.remote_code = remote_code
        self.sender = sender
        self.remote_message = message

    @classmethod
    def attribute(cls, e: RemoteError) -> PeerReportedError:
        # RemoteError keeps the peer's line only inside its own message.
        message = e.message.removeprefix(f"enclave reported {e.remote_code}: ")
        if message.startswith(_RELAY_PREFIX):
            return cls(e.remote_code, message.removeprefix(_RELAY_PREFIX), sender="the host relay")
        return cls(e.remote_code, message, sender="the peer")


#: How the host relay starts the line of every error frame it sends (runtime/_relay.py).
_RELAY_PREFIX = "host relay: "
#: An enclave's per-request refusal that names one of the request's texts.
_INPUT_INDEX = re.compile(r"^input (\d+)\b")
#: What a peer that hangs up does to a blocking socket: EOF, or one of these.
_HANG_UPS = frozenset({errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE})


def _parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``tcp:HOST:PORT`` (the one endpoint syntax, runtime/_transport)."""
    try:
        ep = Endpoint.parse(address)
    except ConfigError as e:
        raise ConfigError(f"address {address!r} is not HOST:PORT") from e
    if ep.kind != "tcp" or ep.host is None or ep.port == 0:
        raise ConfigError(f"address {address!r} is not HOST:PORT")
    return ep.host, ep.port


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
    answer (L6). ``audit``: where each verified receipt is recorded (:func:`connect`).
    """

    def __init__(
        self,
        sock: socket.socket,
        proto: ClientSession,
        policy: ClientPolicy,
        address: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        audit: AuditChoice = True,
    ):
        self._sock = sock
        self._proto = proto
        self.policy = policy
        self.address = address
        self.timeout = _check_timeout(timeout)
        self.audit = audit_log(audit)
        self._closed = False
        #: A stream not read to its end: finished (cancelled) before the next request.
        self._stream: TextStream | None = None

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

    def embed(
        self, texts: Sequence[str], *, model: str = DEFAULT_MODEL, truncate: bool = False
    ) -> list[Embeddings]:
        """Embed ``texts``; one :class:`Embeddings` per request of ≤ 64 texts, in order.

        ``truncate``: a text over the model's token limit is cut to it (its first
        tokens) instead of refused; the choice and the texts cut are in each receipt
        (:attr:`Embeddings.truncated`), and the client checks that the receipt records
        the choice it made (R11).

        Before anything is sent: the model against the policy (P1), and every text
        against the checks the enclave runs without a tokenizer, so a bad text fails
        at once as ``input N`` with N its index in ``texts``. Each answer's receipt is
        verified and recorded in the audit log before the next request goes out.
        Errors name list-wide indices. If a request fails after others were answered,
        :class:`EmbedIncomplete` carries their results; if the first fails, its own
        error is raised.
        """
        texts = check_texts(texts)
        self.policy.check_model(self.binding, model)
        self._end_stream()
        out: list[Embeddings] = []
        for start in range(0, len(texts), MAX_TEXTS_PER_REQUEST):
            chunk = tuple(texts[start : start + MAX_TEXTS_PER_REQUEST])
            try:
                e = self._request(EmbedRequest(model, chunk, truncate), offset=start)
                self.audit.record(e.receipt)
            except Error as err:
                if not out:
                    raise
                failed = range(start, start + len(chunk))
                raise EmbedIncomplete(err, completed=out, failed=failed, total=len(texts)) from err
            out.append(e)
        return out

    def generate(
        self,
        messages: Sequence[ChatMessage | tuple[str, str]] | None = None,
        *,
        model: str,
        prompt: str | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: Sequence[str] = (),
    ) -> TextStream:
        """Ask ``model`` to answer a chat (``messages``: (role, content) pairs) or to
        continue ``prompt``; returns the :class:`TextStream` of its answer.

        Greedy decoding unless ``temperature`` > 0 (then ``top_p``, ``top_k`` and
        ``seed``, by the enclave's stated sampling rule). The enclave checks the
        values and refuses a bad one (:class:`InferenceError`, before any work).
        The model is checked against the policy (P1) before anything is sent.
        """
        self.policy.check_model(self.binding, model)
        self._end_stream()
        chat = None
        if messages is not None:
            chat = tuple(
                m if isinstance(m, ChatMessage) else ChatMessage(m[0], m[1]) for m in messages
            )
        request = GenerateRequest(
            model=model,
            max_tokens=max_tokens,
            messages=chat,
            prompt=prompt,
            temperature=float(temperature),
            top_p=float(top_p),
            top_k=top_k,
            seed=seed,
            stop=tuple(stop),
        )
        seq, frame = self._proto.send_request(request)
        self._send(frame, _Deadline("request", self.timeout))
        self._stream = TextStream(self, request, seq)
        return self._stream

    def _end_stream(self) -> None:
        """A stream left unread is cancelled and read to its end (its receipt is
        recorded) before the session is used again."""
        stream, self._stream = self._stream, None
        if stream is not None and stream.result is None:
            stream.cancel()
            stream.finish()

    def _refused(self, event: RequestFailed, offset: int = 0, count: int = 0) -> None:
        """Record a refusal (its code) in the audit log, then raise it."""
        why = _list_wide(event.message, offset, count)
        refused = error_from_code(event.code)(f"enclave refused the request: {why}")
        # protocol.md §12.1: the refusal accounts for its seq in the audit log (its
        # code only), before the caller hears of it.
        assert self._proto.session_id is not None
        self.audit.record_refusal(self.attestation, self._proto.session_id, event.seq, event.code)
        raise refused from EnclaveRefusal(event.code, event.message)

    def _request(self, request: EmbedRequest, *, offset: int = 0) -> Embeddings:
        """One request; ``offset``: the list-wide index of its first text."""
        deadline = _Deadline("request", self.timeout)
        seq, frame = self._proto.send_request(request)
        self._send(frame, deadline)
        while True:
            event = self._next_event(deadline, "no verified answer from " + self.address)
            if isinstance(event, RequestFailed):
                self._refused(event, offset, len(request.inputs))
            if isinstance(event, ResponseReceived):
                if event.seq != seq:  # pragma: no cover - one request in flight
                    raise LocalProtocolError("response for another request")
                return _embeddings(event, first=offset)
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
            if e.errno in _HANG_UPS:
                raise self._hung_up() from e
            raise TransportError(
                f"connection to {self.address} lost while sending: {_why(e)}"
            ) from e

    def _next_event(
        self, deadline: _Deadline, doing: str
    ) -> Attested | ResponseReceived | RequestFailed | ChunkReceived | StreamEnded:
        while True:
            try:
                event = self._proto.next_event(now=datetime.now(UTC))
            except RemoteError as e:
                raise PeerReportedError.attribute(e) from e
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
                if e.errno in _HANG_UPS:
                    raise self._hung_up() from e
                raise TransportError(f"connection to {self.address} lost: {_why(e)}") from e
            if not data:
                raise self._hung_up()
            self._proto.receive_data(data)

    def _hung_up(self) -> TransportError:
        """The peer closed (or reset) the connection. Through a host this is what a
        relay does when it cannot reach the enclave, or when the enclave goes away."""
        if self._proto.attestation is None:  # still connecting: no attestation yet
            return TransportError(
                f"{self.address} closed the connection before the enclave answered "
                "(is the enclave behind the host running?)"
            )
        return TransportError(
            f"{self.address} closed the connection mid-session "
            "(is the enclave behind the host running?)"
        )

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


def _list_wide(message: str, offset: int, count: int) -> str:
    """An enclave's refusal of one request, with the text it names (``input N``,
    N within the request) renamed by its index in the caller's whole list."""
    m = _INPUT_INDEX.match(message)
    if offset and m is not None and int(m.group(1)) < count:
        return f"input {offset + int(m.group(1))}{message[m.end() :]}"
    return message


def _embeddings(event: ResponseReceived, *, first: int = 0) -> Embeddings:
    r: EmbedResult = event.result
    vectors = np.frombuffer(r.vectors, dtype="<f4").reshape(r.count, r.dim)
    return Embeddings(
        model=r.model,
        vectors=vectors,
        receipt=event.receipt,
        request_cbor=event.request.to_cbor(),
        response_cbor=r.to_cbor(),
        first=first,
    )


def connect(
    address: str = DEFAULT_ADDRESS,
    *,
    policy: ClientPolicy,
    timeout: float = DEFAULT_TIMEOUT_S,
    nonce: bytes | None = None,
    session_mode: str | None = None,
    audit: AuditChoice = True,
) -> Session:
    """Open a session: send a nonce, verify the attestation, set up HPKE.

    ``timeout`` is the deadline of the whole connect (dial, hello, attestation,
    open) and then of each request (L6). ``audit``: where every verified receipt
    of the session is recorded: True (the default), ``$EPHEMERALML_HOME/audit.db``;
    a path, that file; an :class:`AuditLog`; False, nowhere. It is checked for
    writing before anything is sent. Raises :class:`TransportError` if nothing
    answers in time, :class:`AttestationError` / :class:`PolicyError` if the enclave
    does not verify. Nothing but the hello has been sent when those are raised.
    """
    timeout = _check_timeout(timeout)
    if policy.offline_only:
        raise ConfigError(
            f"policy {policy.source} is for offline checks only (it skipped P4 rollback "
            "or checks no measurements); a session needs ClientPolicy.from_file or "
            "trust_policy(offline=False)"
        )
    host, port = _parse_address(address)
    log = audit_log(audit)
    log.check()
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
    session = Session(sock, proto, policy, address, timeout=timeout, audit=log)
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
