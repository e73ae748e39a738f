"""Message types (protocol.md §2).

Every frame body is the deterministic CBOR of one map with a text key ``"t"`` naming
its type. Each message is a frozen dataclass that checks its invariants when built,
so no half-valid message exists; ``from_map`` parses an untrusted decoded map and
raises only our errors.

Outer messages travel in clear between client and enclave (through the host); the
request and response *bodies* travel only inside HPKE / AEAD ciphertext.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ._cbor import decode_deterministic, encode
from ._errors import LimitError, RemoteProtocolError

__all__ = [
    "MAX_ERROR_MESSAGE_CHARS",
    "NONCE_BYTES",
    "PROTOCOL_VERSION",
    "SESSION_ID_BYTES",
    "CancelRequest",
    "ChatMessage",
    "ClientHello",
    "EmbedRequest",
    "EmbedResult",
    "ErrorFrame",
    "GenerateRequest",
    "GenerateResult",
    "Message",
    "RequestError",
    "SealedChunk",
    "SealedRequest",
    "SealedResponse",
    "ServerAttest",
    "SessionOpen",
    "decode_chunk_body",
    "decode_message",
    "decode_request",
    "encode_chunk_body",
]

#: The one protocol version this code speaks. It is in every hello and is bound
#: into the attestation's user_data, so a downgrade is visible to the client.
PROTOCOL_VERSION = 1

#: The client's freshness nonce: 256 bits, so that a replayed attestation is
#: detected with overwhelming probability.
NONCE_BYTES = 32

#: Session ids are 128-bit random values chosen by the enclave.
SESSION_ID_BYTES = 16

#: Error frames carry one line; longer text is cut so a peer cannot make us log
#: or print arbitrary amounts.
MAX_ERROR_MESSAGE_CHARS = 300

#: An X25519 encapsulated key (RFC 9180 §7.1: Nenc = 32).
_ENC_BYTES = 32


def _field(m: Mapping[Any, Any], key: str, typ: type, what: str) -> Any:
    try:
        value = m[key]
    except KeyError as e:
        raise RemoteProtocolError(f"{what} has no {key!r}") from e
    # bool is an int subclass; never accept it where an int is meant.
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise RemoteProtocolError(f"{what} field {key!r} is not {typ.__name__}")
    return value


def _exact_keys(m: Mapping[Any, Any], keys: set[str], what: str) -> None:
    if set(m.keys()) != keys:
        extra = sorted(map(str, set(m.keys()) - keys))
        missing = sorted(keys - set(m.keys()))
        raise RemoteProtocolError(f"{what} has unexpected fields {extra} or lacks {missing}")


class Message:
    """Base of every outer message."""

    TYPE: ClassVar[str]
    KEYS: ClassVar[set[str]]

    def to_map(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_cbor(self) -> bytes:
        return encode(self.to_map())

    @classmethod
    def from_map(cls, m: Mapping[Any, Any]) -> Message:
        raise NotImplementedError


@dataclass(frozen=True)
class ClientHello(Message):
    """Client → enclave: protocol version and a fresh nonce (protocol.md §2.1)."""

    TYPE: ClassVar[str] = "hello"
    KEYS: ClassVar[set[str]] = {"t", "v", "nonce", "mode"}
    #: Session modes (protocol.md §2.1): "fresh" = a new NSM attestation per session;
    #: "cached" = a recent cached document plus a per-session proof signed by the
    #: attested receipt key over the nonce and a fresh X25519 key (§2.2.1).
    MODES: ClassVar[frozenset[str]] = frozenset({"fresh", "cached"})

    version: int
    nonce: bytes
    mode: str = "fresh"

    def __post_init__(self) -> None:
        if len(self.nonce) != NONCE_BYTES:
            raise RemoteProtocolError(f"hello nonce must be {NONCE_BYTES} bytes")
        if self.mode not in self.MODES:
            raise RemoteProtocolError(f"unsupported session mode {self.mode!r}")

    def to_map(self) -> dict[str, Any]:
        return {"t": self.TYPE, "v": self.version, "nonce": self.nonce, "mode": self.mode}

    @classmethod
    def from_map(cls, m: Mapping[Any, Any]) -> ClientHello:
        _exact_keys(m, cls.KEYS, "hello")
        return cls(
            version=_field(m, "v", int, "hello"),
            nonce=_field(m, "nonce", bytes, "hello"),
            mode=_field(m, "mode", str, "hello"),
        )


@dataclass(frozen=True)
class ServerAttest(Message):
    """Enclave → client: the attestation for this session (protocol.md §2.2).

    ``proof`` is present exactly in cached mode: a COSE_Sign1 by the attested receipt
    key over this session's nonce, X25519 key and session id (§2.2.1).
    """

    TYPE: ClassVar[str] = "attest"
    KEYS: ClassVar[set[str]] = {"t", "v", "doc"}

    version: int
    attestation: bytes
    proof: bytes | None = None

    def to_map(self) -> dict[str, Any]:
        m: dict[str, Any] = {"t": self.TYPE, "v": self.version, "doc": self.attestation}
        if self.proof is not None:
            m["proof"] = self.proof
        return m

    @classmethod
    def from_map(cls, m: Mapping[Any, Any]) -> ServerAttest:
        _exact_keys(m, cls.KEYS | ({"proof"} if "proof" in m else set()), "attest")
        return cls(
            version=_field(m, "v", int, "attest"),
            attestation=_field(m, "doc", bytes, "attest"),
            proof=_field(m, "proof", bytes, "attest") if "proof" in m else None,
        )


@dataclass(frozen=True)
class SessionOpen(Message):
    """Client → enclave: the HPKE encapsulated key (protocol.md §2.3)."""

    TYPE: ClassVar[str] = "open"
    KEYS: ClassVar[set[str]] = {"t", "enc"}

    enc: bytes

    def __post_init__(self) -> None:
        if len(self.enc) != _ENC_BYTES:
            raise RemoteProtocolError(f"open: enc must be {_ENC_BYTES} bytes")

    def to_map(self) -> dict[str, Any]:
        return {"t": self.TYPE, "enc": self.enc}

    @classmethod
    def from_map(cls, m: Mapping[Any, Any]) -> SessionOpen:
        _exact_keys(m, cls.KEYS, "open")
        return cls(enc=_field(m, "enc", bytes, "open"))


@dataclass(frozen=True)
class SealedRequest(Message):
    """Client → enclave: one HPKE-sealed request body (protocol.md §2.4)."""

    TYPE: ClassVar[str] = "req"
    KEYS: ClassVar[set[str]] = {"t", "seq", "ct"}

    seq: int
    ciphertext: bytes

    def __post_init__(self) -> None:
        if self.seq < 0:
            raise RemoteProtocolError("req: negative seq")

    def to_map(self) -> dict[str, Any]:
        return {"t": self.TYPE, "seq": self.seq, "ct": self.ciphertext}

    @classmethod
    def from_map(cls, m: Mapping[Any, Any]) -> SealedRequest:
        _exact_keys(m, cls.KEYS, "req")
        return cls(seq=_field(m, "seq", int, "req"), ciphertext=_field(m, "ct", bytes, "req"))


@dataclass(frozen=True)
class SealedResponse(Message):
    """Enclave → client: one sealed response body (protocol.md §2.5)."""

    TYPE: ClassVar[str] = "resp"
    KEYS: ClassVar[set[str]] = {"t", "seq", "ct"}

    seq: int
    ciphertext: bytes

    def __post_init__(self) -> None:
        if self.seq < 0:
            raise RemoteProtocolError("resp: negative seq")

    def to_map(self) -> dict[str, Any]:
        return {"t": self.TYPE, "seq": self.seq, "ct": self.ciphertext}

    @classmethod
    def from_map(cls, m: Mapping[Any, Any]) -> SealedResponse:
        _exact_keys(m, cls.KEYS, "resp")
        return cls(seq=_field(m, "seq", int, "resp"), ciphertext=_field(m, "ct", bytes, "resp"))


@dataclass(frozen=True)
class SealedChunk(Message):
    """Enclave → client: chunk ``k`` of the streamed answer to request ``seq`` (§2.8)."""

    TYPE: ClassVar[str] = "chunk"
    KEYS: ClassVar[set[str]] = {"t", "seq", "k", "ct"}

    seq: int
    k: int
    ciphertext: bytes

    def __post_init__(self) -> None:
        if self.seq < 0 or self.k < 0:
            raise RemoteProtocolError("chunk: negative seq or k")

    def to_map(self) -> dict[str, Any]:
        return {"t": self.TYPE, "seq": self.seq, "k": self.k, "ct": self.ciphertext}

    @classmethod
    def from_map(cls, m: Mapping[Any, Any]) -> SealedChunk:
        _exact_keys(m, cls.KEYS, "chunk")
        return cls(
            seq=_field(m, "seq", int, "chunk"),
            k=_field(m, "k", int, "chunk"),
            ciphertext=_field(m, "ct", bytes, "chunk"),
        )


@dataclass(frozen=True)
class ErrorFrame(Message):
    """Either side: the session is over, and why (protocol.md §6).

    Not authenticated: it can end a session, never make anyone accept anything.
    """

    TYPE: ClassVar[str] = "error"
    KEYS: ClassVar[set[str]] = {"t", "code", "msg"}

    code: str
    message: str

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "message", " ".join(self.message.split())[:MAX_ERROR_MESSAGE_CHARS]
        )
        object.__setattr__(self, "code", self.code[:40])

    def to_map(self) -> dict[str, Any]:
        return {"t": self.TYPE, "code": self.code, "msg": self.message}

    @classmethod
    def from_map(cls, m: Mapping[Any, Any]) -> ErrorFrame:
        _exact_keys(m, cls.KEYS, "error")
        return cls(code=_field(m, "code", str, "error"), message=_field(m, "msg", str, "error"))


_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        ClientHello,
        ServerAttest,
        SessionOpen,
        SealedRequest,
        SealedResponse,
        SealedChunk,
        ErrorFrame,
    )
}


def decode_message(body: bytes) -> Message:
    """Parse one frame body (protocol.md §1.2, §2)."""
    m = decode_deterministic(body, what="frame")
    if not isinstance(m, dict):
        raise RemoteProtocolError("frame is not a CBOR map")
    t = m.get("t")
    cls = _TYPES.get(t) if isinstance(t, str) else None
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {t!r}")
    return cls.from_map(m)


# ---------------------------------------------------------------------------
# Bodies: these travel only inside ciphertext.


@dataclass(frozen=True)
class EmbedRequest:
    """The plaintext of a sealed request (protocol.md §2.4)."""

    KEYS: ClassVar[set[str]] = {"op", "model", "inputs"}

    model: str
    inputs: tuple[str, ...]
    #: The client's explicit choice that inputs over the model's token limit are cut
    #: to it rather than refused. On the wire only when true (``"truncate": true``),
    #: so that each request has one encoding; the receipt records it (§5).
    truncate: bool = False

    def to_map(self) -> dict[str, Any]:
        m: dict[str, Any] = {"op": "embed", "model": self.model, "inputs": list(self.inputs)}
        if self.truncate:
            m["truncate"] = True
        return m

    def to_cbor(self) -> bytes:
        return encode(self.to_map())

    @classmethod
    def from_cbor(cls, data: bytes) -> EmbedRequest:
        m = decode_deterministic(data, what="request")
        if not isinstance(m, dict):
            raise RemoteProtocolError("request is not a CBOR map")
        return cls.from_map(m)

    @classmethod
    def from_map(cls, m: dict[Any, Any]) -> EmbedRequest:
        truncate = "truncate" in m
        _exact_keys(m, cls.KEYS | ({"truncate"} if truncate else set()), "request")
        if m["op"] != "embed":
            raise RemoteProtocolError(f"unknown operation {m['op']!r}")
        if truncate and m["truncate"] is not True:
            raise RemoteProtocolError("request truncate must be true when present")
        model = _field(m, "model", str, "request")
        inputs = _field(m, "inputs", list, "request")
        if not all(isinstance(x, str) for x in inputs):
            raise RemoteProtocolError("request inputs must all be text")
        return cls(model=model, inputs=tuple(inputs), truncate=truncate)


@dataclass(frozen=True)
class EmbedResult:
    """The result part of a response: ``count`` rows of ``dim`` float32 (little endian)."""

    KEYS: ClassVar[set[str]] = {"model", "dim", "n", "f32le"}

    model: str
    dim: int
    count: int
    vectors: bytes

    def __post_init__(self) -> None:
        if self.dim <= 0 or self.count <= 0 or len(self.vectors) != self.dim * self.count * 4:
            raise RemoteProtocolError("result shape does not match its data")

    def to_map(self) -> dict[str, Any]:
        return {"model": self.model, "dim": self.dim, "n": self.count, "f32le": self.vectors}

    def to_cbor(self) -> bytes:
        """The bytes whose SHA-256 is the receipt's ``response_hash``."""
        return encode(self.to_map())

    @classmethod
    def from_map(cls, m: Any) -> EmbedResult:
        if not isinstance(m, dict):
            raise RemoteProtocolError("result is not a CBOR map")
        _exact_keys(m, cls.KEYS, "result")
        return cls(
            model=_field(m, "model", str, "result"),
            dim=_field(m, "dim", int, "result"),
            count=_field(m, "n", int, "result"),
            vectors=_field(m, "f32le", bytes, "result"),
        )

    @classmethod
    def from_cbor(cls, data: bytes) -> EmbedResult:
        return cls.from_map(decode_deterministic(data, what="result"))


#: Messages in one chat request, and UTF-8 bytes of its prompt or of all its messages'
#: contents together: far beyond any model's context (SmolLM2's 8192 tokens are ~32 KiB
#: of text), so that only a hostile request meets them, before any tokenizing.
MAX_MESSAGES = 256
MAX_PROMPT_BYTES = 256 * 1024
#: Chat roles a request may use (the OpenAI API's, less tools).
CHAT_ROLES = frozenset({"system", "user", "assistant"})
#: Keys of a generate request besides ``op`` and ``model``: exactly one of
#: ``messages`` and ``prompt``, ``max_tokens``, and the sampling keys only when they
#: differ from greedy decoding (one encoding per request, as ``truncate``).
_GENERATE_OPTIONAL = ("temperature", "top_p", "top_k", "seed", "stop")


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True)
class ChatMessage:
    """One message of a chat: its role and its text."""

    role: str
    content: str

    def __post_init__(self) -> None:
        if self.role not in CHAT_ROLES:
            raise RemoteProtocolError(
                f"message role {self.role!r} is not one of {sorted(CHAT_ROLES)}"
            )
        if not isinstance(self.content, str):
            raise RemoteProtocolError("message content must be text")

    def to_map(self) -> dict[str, Any]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class GenerateRequest:
    """The plaintext of a sealed generate request (protocol.md §2.8).

    ``messages`` (a chat, rendered by the model's chat template in the enclave) or
    ``prompt`` (plain text, continued as it is), never both. The sampling fields have
    their greedy defaults and travel only when they differ from them; their ranges
    are the enclave's to check (a sealed ``inference`` refusal).
    """

    model: str
    max_tokens: int
    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise RemoteProtocolError("a generate request has messages or a prompt, not both")
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool):
            raise RemoteProtocolError("generate max_tokens must be an integer")
        if self.messages is not None:
            if not self.messages:
                raise RemoteProtocolError("a chat needs at least one message")
            if len(self.messages) > MAX_MESSAGES:
                raise LimitError(f"{len(self.messages)} messages; the limit is {MAX_MESSAGES}")
            size = sum(_utf8_len(m.content) for m in self.messages)
        else:
            assert self.prompt is not None
            size = _utf8_len(self.prompt)
        if size > MAX_PROMPT_BYTES:
            raise LimitError(f"the prompt is {size} bytes; the limit is {MAX_PROMPT_BYTES}")
        for name, typ in (("temperature", float), ("top_p", float)):
            if not isinstance(getattr(self, name), typ):
                raise RemoteProtocolError(f"generate {name} must be a float")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool):
            raise RemoteProtocolError("generate top_k must be an integer")
        seed = self.seed
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise RemoteProtocolError("generate seed must be an integer")
        if not all(isinstance(x, str) for x in self.stop):
            raise RemoteProtocolError("generate stop must be a list of text")

    def to_map(self) -> dict[str, Any]:
        m: dict[str, Any] = {"op": "generate", "model": self.model, "max_tokens": self.max_tokens}
        if self.messages is not None:
            m["messages"] = [x.to_map() for x in self.messages]
        else:
            m["prompt"] = self.prompt
        for key in _GENERATE_OPTIONAL:
            if (value := self._wire(key)) is not None:
                m[key] = value
        return m

    def _wire(self, key: str) -> Any:
        """A sampling field's wire value, ``None`` when it has its default."""
        value = getattr(self, key)
        default = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "seed": None, "stop": ()}[key]
        if value == default and type(value) is type(default):
            return None
        return list(value) if key == "stop" else value

    def to_cbor(self) -> bytes:
        return encode(self.to_map())

    @classmethod
    def from_map(cls, m: dict[Any, Any]) -> GenerateRequest:
        chat = "messages" in m
        present = {k for k in _GENERATE_OPTIONAL if k in m}
        keys = {"op", "model", "max_tokens", "messages" if chat else "prompt"} | present
        _exact_keys(m, keys, "generate request")
        messages = None
        if chat:
            raw = _field(m, "messages", list, "generate request")
            if len(raw) > MAX_MESSAGES:
                raise LimitError(f"{len(raw)} messages; the limit is {MAX_MESSAGES}")
            parsed = []
            for i, x in enumerate(raw):
                if not isinstance(x, dict):
                    raise RemoteProtocolError(f"message {i} is not a map")
                _exact_keys(x, {"role", "content"}, f"message {i}")
                parsed.append(
                    ChatMessage(
                        _field(x, "role", str, f"message {i}"),
                        _field(x, "content", str, f"message {i}"),
                    )
                )
            messages = tuple(parsed)
        fields: dict[str, Any] = {}
        for key, typ in (
            ("temperature", float), ("top_p", float), ("top_k", int), ("seed", int), ("stop", list)
        ):  # fmt: skip
            if key in m:
                fields[key] = _field(m, key, typ, "generate request")
        if "stop" in fields:
            fields["stop"] = tuple(fields["stop"])
        request = cls(
            model=_field(m, "model", str, "generate request"),
            max_tokens=_field(m, "max_tokens", int, "generate request"),
            messages=messages,
            prompt=None if chat else _field(m, "prompt", str, "generate request"),
            **fields,
        )
        # One encoding per request: a sampling key with its default value is refused.
        if any(request._wire(k) is None for k in present):
            raise RemoteProtocolError(
                f"generate request carries a default value in {sorted(present)}"
                " (a key with its default is left out)"
            )
        return request


@dataclass(frozen=True)
class CancelRequest:
    """The plaintext of a sealed cancel: stop generating the answer to request ``seq``
    (§2.8). It has no answer of its own; the stream it names ends early, with its
    receipt."""

    seq: int

    def to_map(self) -> dict[str, Any]:
        return {"op": "cancel", "seq": self.seq}

    def to_cbor(self) -> bytes:
        return encode(self.to_map())

    @classmethod
    def from_map(cls, m: dict[Any, Any]) -> CancelRequest:
        _exact_keys(m, {"op", "seq"}, "cancel request")
        seq = _field(m, "seq", int, "cancel request")
        if seq < 0:
            raise RemoteProtocolError("cancel request seq is negative")
        return cls(seq)


def decode_request(data: bytes) -> EmbedRequest | GenerateRequest | CancelRequest:
    """Parse a sealed request's plaintext, by its ``op`` (§2.4, §2.8)."""
    m = decode_deterministic(data, what="request")
    if not isinstance(m, dict):
        raise RemoteProtocolError("request is not a CBOR map")
    op = m.get("op")
    if op == "generate":
        return GenerateRequest.from_map(m)
    if op == "cancel":
        return CancelRequest.from_map(m)
    return EmbedRequest.from_map(m)


#: How a stream ended (§2.8): a stop token or sequence, max_tokens or the context
#: reached, or the client's cancel.
FINISH_REASONS = frozenset({"stop", "length", "cancelled"})


@dataclass(frozen=True)
class GenerateResult:
    """The end of a streamed answer (§2.8): how it finished, the token counts, and the
    number and hash of its chunks. Its CBOR is what the receipt's ``response_hash``
    covers, so the receipt covers every chunk's exact bytes, in order, through
    ``stream``."""

    KEYS: ClassVar[set[str]] = {
        "model", "finish", "chunks", "stream", "prompt_tokens", "completion_tokens",
        "device",
    }  # fmt: skip

    model: str
    finish: str
    chunks: int
    stream: bytes
    prompt_tokens: int
    completion_tokens: int
    #: Where the model ran: ONNX Runtime's execution provider (e.g. ``CPUExecutionProvider``).
    device: str

    def __post_init__(self) -> None:
        if self.finish not in FINISH_REASONS:
            raise RemoteProtocolError(f"result finish {self.finish!r} is not a finish reason")
        if len(self.stream) != 32:
            raise RemoteProtocolError("result stream hash is not 32 bytes")
        if min(self.chunks, self.prompt_tokens, self.completion_tokens) < 0:
            raise RemoteProtocolError("result counts must not be negative")

    def to_map(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "finish": self.finish,
            "chunks": self.chunks,
            "stream": self.stream,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "device": self.device,
        }

    def to_cbor(self) -> bytes:
        """The bytes whose SHA-256 is the receipt's ``response_hash``."""
        return encode(self.to_map())

    @classmethod
    def from_map(cls, m: Any) -> GenerateResult:
        if not isinstance(m, dict):
            raise RemoteProtocolError("result is not a CBOR map")
        _exact_keys(m, cls.KEYS, "result")
        return cls(
            model=_field(m, "model", str, "result"),
            finish=_field(m, "finish", str, "result"),
            chunks=_field(m, "chunks", int, "result"),
            stream=_field(m, "stream", bytes, "result"),
            prompt_tokens=_field(m, "prompt_tokens", int, "result"),
            completion_tokens=_field(m, "completion_tokens", int, "result"),
            device=_field(m, "device", str, "result"),
        )


#: Every chunk's plaintext is padded to a multiple of this many bytes, so that the
#: size of a sealed chunk does not tell the host how long its token was (the
#: token-length side channel of streamed LLM traffic). One piece of text is one token's
#: worth almost always, far under 64 bytes.
CHUNK_PAD_BYTES = 64


def encode_chunk_body(text: str) -> bytes:
    """The plaintext of a chunk: ``{"pad": zeros, "text": t}``, ``t`` not empty, its
    length a multiple of :data:`CHUNK_PAD_BYTES` (§2.8)."""
    base = len(encode({"pad": b"", "text": text}))
    # A byte string of 24 or more bytes has a head one byte longer (256: two).
    for n in range(2 * CHUNK_PAD_BYTES):
        if (base + n + (n >= 24) + (n >= 256)) % CHUNK_PAD_BYTES == 0:
            break
    body = encode({"pad": bytes(n), "text": text})
    assert len(body) % CHUNK_PAD_BYTES == 0
    return body


def decode_chunk_body(data: bytes) -> str:
    if len(data) % CHUNK_PAD_BYTES:
        raise RemoteProtocolError(f"chunk is not padded to a multiple of {CHUNK_PAD_BYTES} bytes")
    m = decode_deterministic(data, what="chunk")
    if not isinstance(m, dict):
        raise RemoteProtocolError("chunk is not a CBOR map")
    _exact_keys(m, {"pad", "text"}, "chunk")
    text: str = _field(m, "text", str, "chunk")
    _field(m, "pad", bytes, "chunk")
    if not text:
        raise RemoteProtocolError("chunk text is empty")
    # One encoding per chunk: the padding is the shortest run of zero bytes that fits.
    if encode_chunk_body(text) != data:
        raise RemoteProtocolError("chunk padding is not the shortest run of zero bytes")
    return text


@dataclass(frozen=True)
class RequestError:
    """A per-request failure, sealed like a result: the session goes on."""

    code: str
    message: str

    def __post_init__(self) -> None:
        if len(self.message) > MAX_ERROR_MESSAGE_CHARS:
            raise LimitError("error message too long")


def encode_response_body(
    result: EmbedResult | GenerateResult | None, receipt: bytes | None, error: RequestError | None
) -> bytes:
    """The plaintext of a sealed response: ``{result, receipt}`` or ``{error}``."""
    if error is not None:
        return encode({"error": {"code": error.code, "msg": error.message}})
    assert result is not None and receipt is not None
    return encode({"result": result.to_map(), "receipt": receipt})


def decode_response_body(
    data: bytes, result_type: type[EmbedResult] | type[GenerateResult] = EmbedResult
) -> tuple[EmbedResult | GenerateResult, bytes] | RequestError:
    m = decode_deterministic(data, what="response")
    if not isinstance(m, dict):
        raise RemoteProtocolError("response is not a CBOR map")
    if set(m) == {"error"}:
        e = m["error"]
        if not isinstance(e, dict):
            raise RemoteProtocolError("response error is not a map")
        _exact_keys(e, {"code", "msg"}, "response error")
        return RequestError(
            code=_field(e, "code", str, "response error")[:40],
            message=_field(e, "msg", str, "response error")[:MAX_ERROR_MESSAGE_CHARS],
        )
    _exact_keys(m, {"result", "receipt"}, "response")
    return result_type.from_map(m["result"]), _field(m, "receipt", bytes, "response")
