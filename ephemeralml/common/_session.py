"""The session state machines, sans-IO (protocol.md §2).

Each side is an object that takes bytes in (:meth:`receive_data`), yields events
(:meth:`next_event`) and turns what its program decides into bytes to send. The
legal order of messages lives in one table per side; anything out of order, and
any error at all, moves the session to its terminal ``ERROR`` state, after which
every call raises.

    client                         enclave
    hello(nonce)        ───────▶   HelloReceived  (program asks NSM for a document)
    Attested  ◀───────  attest(doc)
    open(enc)           ───────▶   (HPKE recipient context)
    req(seq, ct)        ───────▶   RequestReceived (program runs the model)
    Response  ◀───────  resp(seq, ct{result, receipt})

A generate request (§2.8) is answered by numbered chunks, then the resp that ends the
stream with its receipt:

    req(seq, ct{generate}) ────▶   RequestReceived
    Chunk     ◀───────  chunk(seq, k=0, ct{text}) … chunk(seq, k=n-1, …)
    StreamEnded ◀─────  resp(seq, ct{result: finish, usage, chunks=n, stream hash; receipt})
    req(seq', ct{cancel seq}) ─▶   CancelReceived (the stream ends early, with its receipt)
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ._binding import EnclaveBinding
from ._cbor import encode
from ._errors import (
    AttestationError,
    CiphertextError,
    DecodeError,
    Error,
    InferenceError,
    LocalProtocolError,
    RemoteError,
    RemoteProtocolError,
    foreign_error,
)
from ._frame import MAX_FRAME_BYTES, FrameDecoder, encode_frame
from ._hpke import ClientChannel, EnclaveChannel, EnclaveSessionKey
from ._messages import (
    NONCE_BYTES,
    PROTOCOL_VERSION,
    SESSION_ID_BYTES,
    CancelRequest,
    ClientHello,
    EmbedRequest,
    EmbedResult,
    ErrorFrame,
    GenerateRequest,
    GenerateResult,
    Message,
    RequestError,
    SealedChunk,
    SealedRequest,
    SealedResponse,
    ServerAttest,
    SessionOpen,
    decode_chunk_body,
    decode_message,
    decode_request,
    decode_response_body,
    encode_chunk_body,
    encode_response_body,
)
from ._proof import CACHED_SESSION_ID, SessionProof, verify_session_proof
from ._receipt import (
    MAX_SESSION_S,
    RECEIPT_PCRS,
    Receipt,
    ReceiptExpectations,
    VerifiedReceipt,
    sign_receipt,
    verify_receipt,
)

if TYPE_CHECKING:
    from ._attestation import AttestationPolicy, ChainCache, VerifiedAttestation

__all__ = [
    "MAX_OUTSTANDING_REQUESTS",
    "Attested",
    "CancelReceived",
    "ChunkReceived",
    "ClientSession",
    "ClientState",
    "EnclaveIdentity",
    "EnclaveSession",
    "EnclaveState",
    "HelloReceived",
    "RequestFailed",
    "RequestReceived",
    "ResponseReceived",
    "StreamEnded",
    "chunk_link",
]

#: Requests a client may have in flight in one session; bounds what the enclave
#: queues for one peer.
MAX_OUTSTANDING_REQUESTS = 64

#: Largest frame the enclave accepts before the session is open (§1.1 F1): a hello
#: is ~60 bytes and an open ~50. Limits before work: an unauthenticated peer cannot
#: make the enclave buffer or decode more than this per connection.
MAX_HANDSHAKE_FRAME_BYTES = 4 * 1024

#: Largest frame the client accepts before the enclave's attestation has verified:
#: the document (at most MAX_ATTESTATION_BYTES, 16 KiB) and, in cached mode, a proof
#: and the framing around them fit well inside 64 KiB.
MAX_ATTEST_FRAME_BYTES = 64 * 1024


def _aad(kind: str, session_id: bytes, seq: int) -> bytes:
    # §4 H1: the frame type, session id and sequence number are authenticated.
    return encode({"t": kind, "sid": session_id, "seq": seq})


def _chunk_aad(session_id: bytes, seq: int, k: int) -> bytes:
    # §2.8 S2: a chunk's place (session, answer, number) is authenticated.
    return encode({"k": k, "t": "chunk", "sid": session_id, "seq": seq})


def chunk_link(plaintext: bytes) -> bytes:
    """What one chunk adds to its stream's hash (§2.8): ``u32be(len) ‖ plaintext``."""
    return len(plaintext).to_bytes(4, "big") + plaintext


class _Stream:
    """One streamed answer in progress, on either side: the next chunk number and
    the running SHA-256 of the chunks so far (§2.8)."""

    __slots__ = ("hash", "next_k")

    def __init__(self) -> None:
        self.next_k = 0
        self.hash = hashlib.sha256()


# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class Attested:
    """Client: the enclave's attestation verified; the session is open."""

    attestation: VerifiedAttestation
    binding: EnclaveBinding


@dataclass(frozen=True)
class ResponseReceived:
    """Client: a response opened and its receipt verified against the session."""

    seq: int
    request: EmbedRequest
    result: EmbedResult
    receipt: VerifiedReceipt


@dataclass(frozen=True)
class ChunkReceived:
    """Client: chunk ``k`` of the streamed answer to request ``seq`` opened in its place.
    Its text is not yet covered by a receipt: that comes with :class:`StreamEnded`."""

    seq: int
    k: int
    text: str


@dataclass(frozen=True)
class StreamEnded:
    """Client: a streamed answer ended; its chunks agree with the end, whose receipt
    verified against the session (§2.8 S3)."""

    seq: int
    request: GenerateRequest
    result: GenerateResult
    receipt: VerifiedReceipt


@dataclass(frozen=True)
class RequestFailed:
    """Client: the enclave refused one request; the session goes on."""

    seq: int
    code: str
    message: str


@dataclass(frozen=True)
class HelloReceived:
    """Enclave: a client asked for a session; attest with this nonce.

    ``mode`` "fresh": answer with :meth:`EnclaveSession.attest` and a new document;
    "cached": with :meth:`EnclaveSession.attest_cached` and the cached one.
    """

    nonce: bytes
    mode: str = "fresh"


@dataclass(frozen=True)
class RequestReceived:
    """Enclave: an authenticated request to serve (or to refuse with respond_error)."""

    seq: int
    request: EmbedRequest | GenerateRequest | None
    #: SHA-256 of the request plaintext as received: the receipt's request_hash.
    request_hash: bytes
    #: Set when the request authenticated but its body is not a valid request:
    #: the client's fault, answered with a sealed error, and the session goes on.
    error: Error | None = None


@dataclass(frozen=True)
class CancelReceived:
    """Enclave: the client asks to stop the stream answering request ``target``
    (§2.8). ``target`` may have ended already; then there is nothing to do."""

    seq: int
    target: int


# ---------------------------------------------------------------- client


class ClientState(Enum):
    START = "start"
    AWAIT_ATTEST = "await_attest"
    READY = "ready"
    ERROR = "error"


_CLIENT_ACCEPTS: dict[ClientState, tuple[type[Message], ...]] = {
    ClientState.START: (),
    ClientState.AWAIT_ATTEST: (ServerAttest, ErrorFrame),
    ClientState.READY: (SealedResponse, SealedChunk, ErrorFrame),
    ClientState.ERROR: (),
}


class ClientSession:
    """The client's half of one session."""

    def __init__(
        self,
        policy: AttestationPolicy,
        *,
        nonce: bytes | None = None,
        chain_cache: ChainCache | None = None,
        mode: str = "fresh",
        ephemeral_ikm: bytes | None = None,
    ) -> None:
        """``ephemeral_ikm``: for reproducible test vectors only, the seed of the HPKE
        ephemeral key (RFC 9180 DeriveKeyPair); in use a fresh one is drawn."""
        if mode not in ClientHello.MODES:
            raise LocalProtocolError(f"unknown session mode {mode!r}")
        self.policy = policy
        self.chain_cache = chain_cache
        self.mode = mode
        self.session_id: bytes | None = None
        self.nonce = nonce if nonce is not None else secrets.token_bytes(NONCE_BYTES)
        self.state = ClientState.START
        self._decoder = FrameDecoder(max_bytes=MAX_ATTEST_FRAME_BYTES)
        self._out = bytearray()
        self._transcript = hashlib.sha256()
        self.transcript_hash: bytes | None = None
        self.attestation: VerifiedAttestation | None = None
        self.binding: EnclaveBinding | None = None
        self._channel: ClientChannel | None = None
        self._next_seq = 0
        self._pending: dict[int, tuple[EmbedRequest | GenerateRequest, bytes]] = {}
        self._streams: dict[int, _Stream] = {}
        self._ephemeral_ikm = ephemeral_ikm

    # -- outbound
    def hello(self) -> bytes:
        self._expect_state(ClientState.START)
        frame = encode_frame(ClientHello(PROTOCOL_VERSION, self.nonce, self.mode).to_cbor())
        self._transcript.update(frame)
        self.state = ClientState.AWAIT_ATTEST
        return frame

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def send_request(self, request: EmbedRequest | GenerateRequest) -> tuple[int, bytes]:
        """Seal ``request``; returns its sequence number and the frame to send. A
        :class:`GenerateRequest` is answered by chunks, then its end (§2.8)."""
        self._expect_state(ClientState.READY)
        assert self.binding is not None
        # A model the enclave did not attest is still asked for: the enclave answers
        # (sealed) why it does not serve it, e.g. that its key release was refused.
        if len(self._pending) >= MAX_OUTSTANDING_REQUESTS:
            raise LocalProtocolError("too many requests in flight")
        seq, frame, body = self._seal(request.to_cbor())
        self._pending[seq] = (request, hashlib.sha256(body).digest())
        if isinstance(request, GenerateRequest):
            self._streams[seq] = _Stream()
        return seq, frame

    def cancel(self, seq: int) -> bytes:
        """The frame that asks the enclave to stop the stream answering ``seq``
        (§2.8). The stream still ends with its end and receipt (finish
        ``"cancelled"``, unless it finished first); the cancel has no answer."""
        self._expect_state(ClientState.READY)
        if seq not in self._streams:
            raise LocalProtocolError(f"request {seq} is no stream in flight")
        return self._seal(CancelRequest(seq).to_cbor())[1]

    def _seal(self, body: bytes) -> tuple[int, bytes, bytes]:
        assert self._channel is not None and self.session_id is not None
        seq = self._next_seq
        ct = self._channel.seal_request(seq, body, _aad("req", self.session_id, seq))
        self._next_seq += 1
        return seq, encode_frame(SealedRequest(seq, ct).to_cbor()), body

    # -- inbound
    def receive_data(self, data: bytes) -> None:
        self._decoder.receive_data(data)

    def next_event(
        self, *, now: datetime
    ) -> Attested | ResponseReceived | RequestFailed | ChunkReceived | StreamEnded | None:
        """Process at most one frame; ``now`` is the time attestation is checked at."""
        if self.state is ClientState.ERROR:
            raise LocalProtocolError("session already failed")
        try:
            frame = self._decoder.next_frame()
            if frame is None:
                return None
            msg = decode_message(frame)
            if not isinstance(msg, _CLIENT_ACCEPTS[self.state]):
                raise RemoteProtocolError(
                    f"unexpected {type(msg).__name__} in state {self.state.value}"
                )
            if isinstance(msg, ErrorFrame):
                raise RemoteError(msg.code, msg.message)
            if isinstance(msg, ServerAttest):
                return self._on_attest(frame, msg, now)
            if isinstance(msg, SealedChunk):
                return self._on_chunk(msg)
            assert isinstance(msg, SealedResponse)
            return self._on_response(msg)
        except Error:
            self.state = ClientState.ERROR
            raise
        except Exception as e:
            # Style rule 3: whatever a library raised on the peer's bytes still ends
            # the session in ERROR with one of our errors (issue 7, finding 5).
            self.state = ClientState.ERROR
            raise foreign_error(e, "enclave's frame") from e

    def _on_attest(self, frame: bytes, msg: ServerAttest, now: datetime) -> Attested:
        from ._attestation import verify_attestation

        if msg.version != PROTOCOL_VERSION:
            raise RemoteProtocolError(
                f"enclave speaks protocol {msg.version}, not {PROTOCOL_VERSION}"
            )
        # §3 A1-A9: signature, chain to the pinned root, time, age, nonce, PCRs.
        cached = self.mode == "cached"
        # In cached mode the document is not for our nonce (A7 is replaced by A11).
        verified = verify_attestation(
            msg.attestation,
            self.policy,
            now=now,
            nonce=None if cached else self.nonce,
            chain_cache=self.chain_cache,
        )
        doc = verified.document
        # §3 A8: the document binds an X25519 key and an ephemeralml binding.
        binding = EnclaveBinding.from_user_data(doc.user_data)
        if binding.protocol_version != PROTOCOL_VERSION:
            raise AttestationError(
                f"A8 binding: enclave attests protocol {binding.protocol_version}, "
                f"not {PROTOCOL_VERSION} (downgrade?)"
            )
        if (binding.mode == "mock") != verified.root.is_mock:
            raise AttestationError(
                f"A8 binding: a {binding.mode} enclave under a "
                f"{'mock' if verified.root.is_mock else 'non-mock'} root"
            )
        if cached:
            # §3 A11: a cached document names no session; the proof, signed by the
            # attested receipt key, binds our nonce, the session key and its id.
            if msg.proof is None or binding.session_id != CACHED_SESSION_ID:
                raise AttestationError("A11 proof: cached mode needs a cached document and a proof")
            proof = verify_session_proof(
                msg.proof, binding, nonce=self.nonce, attestation_sha256=doc.sha256
            )
            session_key, self.session_id = proof.public_key, proof.session_id
        else:
            if msg.proof is not None or binding.session_id == CACHED_SESSION_ID:
                raise AttestationError("A8 binding: a cached attestation in a fresh session")
            if doc.public_key is None:
                raise AttestationError("A8 binding: the attestation document has no public_key")
            session_key, self.session_id = doc.public_key, binding.session_id
        self._transcript.update(encode_frame(frame))  # §2.6: framed bytes
        self._channel = ClientChannel(session_key, doc.sha256, ephemeral_ikm=self._ephemeral_ikm)
        open_frame = encode_frame(SessionOpen(self._channel.enc).to_cbor())
        self._transcript.update(open_frame)
        self.transcript_hash = self._transcript.digest()
        self._out += open_frame
        self.attestation, self.binding = verified, binding
        self.state = ClientState.READY
        self._decoder.max_bytes = MAX_FRAME_BYTES
        return Attested(verified, binding)

    def _on_chunk(self, msg: SealedChunk) -> ChunkReceived:
        assert self._channel is not None and self.session_id is not None
        stream = self._streams.get(msg.seq)
        if stream is None:
            raise CiphertextError(f"S1 chunk for answer {msg.seq}, which is no stream in flight")
        # §2.8 S1: chunks come numbered 0, 1, 2, ...; a dropped, repeated or reordered
        # one is named here (and a renumbered one cannot open, S2).
        if msg.k != stream.next_k:
            raise CiphertextError(
                f"S1 chunk {msg.k} of answer {msg.seq} out of order: expected chunk"
                f" {stream.next_k} (dropped, repeated or reordered)"
            )
        body = self._channel.open_chunk(
            msg.seq, msg.k, msg.ciphertext, _chunk_aad(self.session_id, msg.seq, msg.k)
        )
        text = decode_chunk_body(body)
        stream.hash.update(chunk_link(body))
        stream.next_k += 1
        return ChunkReceived(msg.seq, msg.k, text)

    def _on_response(self, msg: SealedResponse) -> ResponseReceived | RequestFailed | StreamEnded:
        assert self._channel is not None and self.binding is not None
        assert self.attestation is not None and self.transcript_hash is not None
        pending = self._pending.pop(msg.seq, None)
        if pending is None:
            raise CiphertextError(f"response {msg.seq} answers no request in flight (replay?)")
        request, request_hash = pending
        stream = self._streams.pop(msg.seq, None)
        body = self._channel.open_response(
            msg.seq, msg.ciphertext, _aad("resp", self.session_id or b"", msg.seq)
        )
        parsed = decode_response_body(
            body, GenerateResult if isinstance(request, GenerateRequest) else EmbedResult
        )
        if isinstance(parsed, RequestError):
            return RequestFailed(msg.seq, parsed.code, parsed.message)
        result, receipt = parsed
        if result.model != request.model:
            raise RemoteProtocolError("response is for a different model than requested")
        if isinstance(result, GenerateResult):
            assert stream is not None
            # §2.8 S3: the end counts and hashes the chunks the enclave sent; ours
            # must be the same, so a chunk dropped at the end is caught here.
            if result.chunks != stream.next_k or result.stream != stream.hash.digest():
                raise CiphertextError(
                    f"S3 the end of answer {msg.seq} covers {result.chunks} chunk(s);"
                    f" {stream.next_k} arrived, or not the same (dropped or altered)"
                )
        # §5 R1-R11: the receipt is the enclave's signed account of this exchange.
        verified = verify_receipt(
            receipt,
            self.attestation,
            expect=ReceiptExpectations(
                seq=msg.seq,
                session_id=self.session_id,
                client_nonce=self.nonce,
                transcript_hash=self.transcript_hash,
                request_hash=request_hash,
                response_hash=hashlib.sha256(result.to_cbor()).digest(),
                model_id=request.model,
                truncate=isinstance(request, EmbedRequest) and request.truncate,
                inputs=len(request.inputs) if isinstance(request, EmbedRequest) else 0,
            ),
        )
        if isinstance(result, GenerateResult):
            assert isinstance(request, GenerateRequest)
            return StreamEnded(msg.seq, request, result, verified)
        assert isinstance(request, EmbedRequest)
        return ResponseReceived(msg.seq, request, result, verified)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def _expect_state(self, state: ClientState) -> None:
        if self.state is not state:
            raise LocalProtocolError(f"cannot do that in state {self.state.value}")


# ---------------------------------------------------------------- enclave


class EnclaveState(Enum):
    AWAIT_HELLO = "await_hello"
    ATTESTING = "attesting"
    AWAIT_OPEN = "await_open"
    READY = "ready"
    ERROR = "error"


_ENCLAVE_ACCEPTS: dict[EnclaveState, tuple[type[Message], ...]] = {
    EnclaveState.AWAIT_HELLO: (ClientHello,),
    EnclaveState.ATTESTING: (),
    EnclaveState.AWAIT_OPEN: (SessionOpen, ErrorFrame),
    EnclaveState.READY: (SealedRequest, ErrorFrame),
    EnclaveState.ERROR: (),
}


@dataclass(frozen=True)
class EnclaveIdentity:
    """What an enclave process holds across sessions."""

    receipt_key: Ed25519PrivateKey
    models: Mapping[str, bytes]
    policy_version: int
    key_releases: Mapping[str, bytes]
    mode: str
    pcrs: Mapping[int, bytes]


class EnclaveSession:
    """The enclave's half of one session."""

    def __init__(
        self,
        identity: EnclaveIdentity,
        *,
        session_id: bytes | None = None,
        key_ikm: bytes | None = None,
    ) -> None:
        """``session_id`` and ``key_ikm`` (the seed of the session's X25519 key, RFC
        9180 DeriveKeyPair): for reproducible test vectors only; in use both are drawn
        fresh."""
        self.identity = identity
        self.session_id = session_id or secrets.token_bytes(SESSION_ID_BYTES)
        self.state = EnclaveState.AWAIT_HELLO
        self._key = EnclaveSessionKey(key_ikm or secrets.token_bytes(32))
        self._decoder = FrameDecoder(max_bytes=MAX_HANDSHAKE_FRAME_BYTES)
        self._transcript = hashlib.sha256()
        self.transcript_hash: bytes | None = None
        self.nonce: bytes | None = None
        self.attestation_hash: bytes | None = None
        self.attestation_time_ms: int | None = None
        self._channel: EnclaveChannel | None = None
        self._pending: set[int] = set()
        self._streams: dict[int, _Stream] = {}

    @property
    def public_key(self) -> bytes:
        """The session's X25519 key: goes into the attestation's ``public_key``."""
        return self._key.public_bytes

    @property
    def binding(self) -> EnclaveBinding:
        return EnclaveBinding(
            protocol_version=PROTOCOL_VERSION,
            session_id=self.session_id,
            receipt_key=self.identity.receipt_key.public_key().public_bytes_raw(),
            models=self.identity.models,
            key_releases=self.identity.key_releases,
            policy_version=self.identity.policy_version,
            mode=self.identity.mode,
        )

    @staticmethod
    def cached_binding(identity: EnclaveIdentity) -> EnclaveBinding:
        """The binding of a cached document: no session of its own (§2.2.1)."""
        return EnclaveBinding(
            protocol_version=PROTOCOL_VERSION,
            session_id=CACHED_SESSION_ID,
            receipt_key=identity.receipt_key.public_key().public_bytes_raw(),
            models=identity.models,
            key_releases=identity.key_releases,
            policy_version=identity.policy_version,
            mode=identity.mode,
        )

    def receive_data(self, data: bytes) -> None:
        self._decoder.receive_data(data)

    def next_event(self) -> HelloReceived | RequestReceived | CancelReceived | None:
        if self.state is EnclaveState.ERROR:
            raise LocalProtocolError("session already failed")
        try:
            while True:
                frame = self._decoder.next_frame()
                if frame is None:
                    return None
                msg = decode_message(frame)
                if not isinstance(msg, _ENCLAVE_ACCEPTS[self.state]):
                    raise RemoteProtocolError(
                        f"unexpected {type(msg).__name__} in state {self.state.value}"
                    )
                if isinstance(msg, ErrorFrame):
                    raise RemoteError(msg.code, msg.message)
                if isinstance(msg, ClientHello):
                    if msg.version != PROTOCOL_VERSION:
                        raise RemoteProtocolError(
                            f"client speaks protocol {msg.version}; this enclave speaks "
                            f"{PROTOCOL_VERSION}"
                        )
                    self._transcript.update(encode_frame(frame))  # §2.6: framed bytes
                    self.nonce = msg.nonce
                    self.state = EnclaveState.ATTESTING
                    return HelloReceived(msg.nonce, msg.mode)
                if isinstance(msg, SessionOpen):
                    assert self.attestation_hash is not None
                    self._channel = self._key.open_channel(msg.enc, self.attestation_hash)
                    self._transcript.update(encode_frame(frame))
                    self.transcript_hash = self._transcript.digest()
                    self.state = EnclaveState.READY
                    self._decoder.max_bytes = MAX_FRAME_BYTES
                    continue
                assert isinstance(msg, SealedRequest)
                return self._on_request(msg)
        except Error:
            self.state = EnclaveState.ERROR
            raise
        except Exception as e:
            self.state = EnclaveState.ERROR
            raise foreign_error(e, "client's frame") from e

    def _on_request(self, msg: SealedRequest) -> RequestReceived | CancelReceived:
        assert self._channel is not None
        if len(self._pending) >= MAX_OUTSTANDING_REQUESTS:
            raise RemoteProtocolError("too many requests in flight")
        body = self._channel.open_request(
            msg.seq, msg.ciphertext, _aad("req", self.session_id, msg.seq)
        )
        digest = hashlib.sha256(body).digest()
        request: EmbedRequest | GenerateRequest | CancelRequest | None = None
        error = None
        try:
            request = decode_request(body)
        except (DecodeError, RemoteProtocolError) as e:
            error = InferenceError(f"bad request: {e}")
        if isinstance(request, CancelRequest):
            # §2.8: a cancel takes a seq (it is sealed in order) but has no answer.
            return CancelReceived(msg.seq, request.seq)
        self._pending.add(msg.seq)
        if isinstance(request, GenerateRequest):
            self._streams[msg.seq] = _Stream()
        return RequestReceived(msg.seq, request, digest, error)

    def attest(self, document: bytes, *, timestamp_ms: int) -> bytes:
        """The attest frame for the document the NSM made for this session."""
        self._expect_state(EnclaveState.ATTESTING)
        frame = encode_frame(ServerAttest(PROTOCOL_VERSION, document).to_cbor())
        self._transcript.update(frame)
        self.attestation_hash = hashlib.sha256(document).digest()
        self.attestation_time_ms = timestamp_ms
        self.state = EnclaveState.AWAIT_OPEN
        return frame

    def attest_cached(self, document: bytes, *, timestamp_ms: int) -> bytes:
        """The attest frame in cached mode: the cached document and this session's proof."""
        self._expect_state(EnclaveState.ATTESTING)
        assert self.nonce is not None
        digest = hashlib.sha256(document).digest()
        proof = SessionProof(self.nonce, self.public_key, self.session_id, digest)
        frame = encode_frame(
            ServerAttest(
                PROTOCOL_VERSION, document, proof.sign(self.identity.receipt_key)
            ).to_cbor()
        )
        self._transcript.update(frame)
        self.attestation_hash = digest
        self.attestation_time_ms = timestamp_ms
        self.state = EnclaveState.AWAIT_OPEN
        return frame

    def respond(
        self,
        event: RequestReceived,
        result: EmbedResult,
        *,
        model_digest: bytes,
        time_ms: int,
        duration_us: int,
        receipt_id: bytes | None = None,
        truncated: tuple[int, ...] = (),
    ) -> bytes:
        """Seal ``result`` with a signed receipt for ``event``'s request; ``truncated``
        names the inputs that were cut (only when the request asked for it)."""
        self._expect_state(EnclaveState.READY)
        self._take(event.seq)
        assert isinstance(event.request, EmbedRequest)
        return self._sealed_result(
            event,
            result,
            model_digest=model_digest,
            time_ms=time_ms,
            duration_us=duration_us,
            receipt_id=receipt_id,
            truncate=event.request.truncate,
            truncated=truncated,
        )

    def chunk(self, event: RequestReceived, text: str) -> bytes:
        """The next chunk of the streamed answer to ``event``'s generate request (§2.8)."""
        self._expect_state(EnclaveState.READY)
        assert self._channel is not None
        stream = self._streams.get(event.seq)  # present until the stream's end or refusal
        if stream is None:
            raise LocalProtocolError(f"request {event.seq} is no stream in progress")
        if not text:
            raise LocalProtocolError("a chunk carries text")
        k, body = stream.next_k, encode_chunk_body(text)
        ct = self._channel.seal_chunk(event.seq, k, body, _chunk_aad(self.session_id, event.seq, k))
        stream.hash.update(chunk_link(body))
        stream.next_k += 1
        return encode_frame(SealedChunk(event.seq, k, ct).to_cbor())

    def end_stream(
        self,
        event: RequestReceived,
        *,
        model_digest: bytes,
        finish: str,
        prompt_tokens: int,
        completion_tokens: int,
        device: str,
        time_ms: int,
        duration_us: int,
        receipt_id: bytes | None = None,
    ) -> bytes:
        """The end of ``event``'s stream: its result (the count and hash of the chunks
        sealed, which this session kept) and the receipt that covers it (§2.8)."""
        self._expect_state(EnclaveState.READY)
        stream = self._streams.get(event.seq)
        if stream is None:
            raise LocalProtocolError(f"request {event.seq} is no stream in progress")
        self._take(event.seq)
        del self._streams[event.seq]
        assert event.request is not None
        result = GenerateResult(
            model=event.request.model,
            finish=finish,
            chunks=stream.next_k,
            stream=stream.hash.digest(),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            device=device,
        )
        return self._sealed_result(
            event,
            result,
            model_digest=model_digest,
            time_ms=time_ms,
            duration_us=duration_us,
            receipt_id=receipt_id,
        )

    def _sealed_result(
        self,
        event: RequestReceived,
        result: EmbedResult | GenerateResult,
        *,
        model_digest: bytes,
        time_ms: int,
        duration_us: int,
        receipt_id: bytes | None,
        truncate: bool = False,
        truncated: tuple[int, ...] = (),
    ) -> bytes:
        assert self._channel is not None and self.nonce is not None
        assert self.attestation_hash is not None and self.transcript_hash is not None
        assert self.attestation_time_ms is not None
        seq = event.seq
        if time_ms > self.attestation_time_ms + MAX_SESSION_S * 1000:
            raise LocalProtocolError("session is older than its maximum lifetime")
        receipt = Receipt(
            receipt_id=receipt_id or secrets.token_bytes(16),
            session_id=self.session_id,
            seq=seq,
            model_id=result.model,
            model_digest=model_digest,
            key_release=self.identity.key_releases[result.model],
            request_hash=event.request_hash,
            response_hash=hashlib.sha256(result.to_cbor()).digest(),
            attestation_hash=self.attestation_hash,
            pcrs={i: self.identity.pcrs[i] for i in RECEIPT_PCRS},
            policy_version=self.identity.policy_version,
            mode=self.identity.mode,
            time_ms=time_ms,
            duration_us=duration_us,
            client_nonce=self.nonce,
            transcript_hash=self.transcript_hash,
            truncate=truncate,
            truncated=truncated,
        )
        body = encode_response_body(result, sign_receipt(receipt, self.identity.receipt_key), None)
        ct = self._channel.seal_response(seq, body, _aad("resp", self.session_id, seq))
        return encode_frame(SealedResponse(seq, ct).to_cbor())

    def respond_error(self, event: RequestReceived, error: Error) -> bytes:
        """A sealed per-request error; the session goes on."""
        self._expect_state(EnclaveState.READY)
        seq = self._take(event.seq)
        self._streams.pop(seq, None)
        assert self._channel is not None
        body = encode_response_body(None, None, RequestError(error.code, error.message[:300]))
        ct = self._channel.seal_response(seq, body, _aad("resp", self.session_id, seq))
        return encode_frame(SealedResponse(seq, ct).to_cbor())

    def fail(self, error: Error) -> bytes:
        """The error frame that ends this session (§6)."""
        self.state = EnclaveState.ERROR
        return encode_frame(ErrorFrame(error.code, error.message).to_cbor())

    def _take(self, seq: int) -> int:
        if seq not in self._pending:
            raise LocalProtocolError(f"no request {seq} to answer")
        self._pending.discard(seq)
        return seq

    def _expect_state(self, state: EnclaveState) -> None:
        if self.state is not state:
            raise LocalProtocolError(f"cannot do that in state {self.state.value}")
