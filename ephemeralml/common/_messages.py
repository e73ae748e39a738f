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
    "ClientHello",
    "EmbedRequest",
    "EmbedResult",
    "ErrorFrame",
    "Message",
    "RequestError",
    "SealedRequest",
    "SealedResponse",
    "ServerAttest",
    "SessionOpen",
    "decode_message",
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
    for cls in (ClientHello, ServerAttest, SessionOpen, SealedRequest, SealedResponse, ErrorFrame)
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


@dataclass(frozen=True)
class RequestError:
    """A per-request failure, sealed like a result: the session goes on."""

    code: str
    message: str

    def __post_init__(self) -> None:
        if len(self.message) > MAX_ERROR_MESSAGE_CHARS:
            raise LimitError("error message too long")


def encode_response_body(
    result: EmbedResult | None, receipt: bytes | None, error: RequestError | None
) -> bytes:
    """The plaintext of a sealed response: ``{result, receipt}`` or ``{error}``."""
    if error is not None:
        return encode({"error": {"code": error.code, "msg": error.message}})
    assert result is not None and receipt is not None
    return encode({"result": result.to_map(), "receipt": receipt})


def decode_response_body(data: bytes) -> tuple[EmbedResult, bytes] | RequestError:
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
    return EmbedResult.from_map(m["result"]), _field(m, "receipt", bytes, "response")
