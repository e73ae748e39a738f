"""The host-services protocol, sans-IO: what the enclave and the host say about bundles.

The enclave has no network and no disk it trusts, so it asks the host for the three
files of a bundle (manifest.cose, model.key, model.enc) and for the instance role's
credentials (protocol.md §10). Both sides speak the same framing as the client
protocol (§1); this module holds the messages and their checks, and the programs own
the loops that move them:

* request (enclave → host): ``{"t": "get", "model": id, "file": name}`` or
  ``{"t": "creds"}``; one request per connection;
* answer to ``get``: ``{"t": "data", "b": bytes}`` frames of at most
  :data:`STORE_CHUNK_BYTES`, then ``{"t": "end", "size": n}``, or
  ``{"t": "error", "code", "msg"}``;
* answer to ``creds``: one ``{"t": "creds", ...}`` frame (:class:`AwsCredentials`) or
  an error frame.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ._cbor import decode_deterministic, decode_strict, encode
from ._errors import ConfigError, RemoteProtocolError

__all__ = [
    "MAX_REQUEST_BYTES",
    "STORE_CHUNK_BYTES",
    "STORE_FILES",
    "AwsCredentials",
    "StoreData",
    "StoreEnd",
    "check_store_name",
    "decode_credentials",
    "decode_request",
    "decode_store_frame",
    "encode_creds_request",
    "encode_data",
    "encode_end",
    "encode_get",
    "encode_store_error",
    "is_model_id",
]

#: Bytes per data frame: big enough that per-frame costs (an executor hop for the
#: file read, one frame encode and decode) vanish, far below MAX_FRAME_BYTES.
STORE_CHUNK_BYTES = 1024 * 1024
#: The only files a store serves.
STORE_FILES = frozenset({"manifest.cose", "model.key", "model.enc"})
#: A request is a few dozen bytes.
MAX_REQUEST_BYTES = 1024
#: Longest error message carried in an error frame.
_MAX_MESSAGE = 300
_MODEL_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def is_model_id(text: str) -> bool:
    """1-128 of ``A-Z a-z 0-9 . _ -``, not ``.`` or ``..``: a model id that names a
    store folder and cannot leave it (the store, uploads and policies share the rule)."""
    return bool(_MODEL_ID.match(text)) and text not in {".", ".."}


def check_store_name(model_id: str, name: str) -> None:
    """A model id that cannot leave its folder, and one of :data:`STORE_FILES`."""
    if not is_model_id(model_id):
        raise RemoteProtocolError(f"bad model id {model_id!r}")
    if name not in STORE_FILES:
        raise RemoteProtocolError(f"the store serves only {sorted(STORE_FILES)}, not {name!r}")


@dataclass(frozen=True)
class AwsCredentials:
    """The instance role's temporary credentials, handed to the enclave (§10.2).

    Not secret from the host (it has them anyway): the key policy, which demands the
    enclave's attestation for Decrypt, is what protects the model key.
    """

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    region: str = "us-east-1"

    def to_cbor(self) -> bytes:
        return encode(
            {
                "t": "creds",
                "access_key_id": self.access_key_id,
                "secret_access_key": self.secret_access_key,
                "session_token": self.session_token,
                "region": self.region,
            }
        )

    @classmethod
    def from_map(cls, m: Any) -> AwsCredentials:
        keys = {"t", "access_key_id", "secret_access_key", "session_token", "region"}
        if not isinstance(m, dict) or set(m) != keys or m["t"] != "creds":
            raise RemoteProtocolError("host sent a malformed credentials frame")
        for k in ("access_key_id", "secret_access_key", "region"):
            if not isinstance(m[k], str) or not m[k] or len(m[k]) > 4096:
                raise RemoteProtocolError(f"credentials: bad {k}")
        if m["session_token"] is not None and not isinstance(m["session_token"], str):
            raise RemoteProtocolError("credentials: bad session_token")
        return cls(m["access_key_id"], m["secret_access_key"], m["session_token"], m["region"])


def encode_get(model_id: str, name: str) -> bytes:
    check_store_name(model_id, name)
    return encode({"t": "get", "model": model_id, "file": name})


def encode_creds_request() -> bytes:
    return encode({"t": "creds"})


def decode_request(frame: bytes) -> tuple[str, str] | None:
    """The host's side: a get request's (model, file), or None for a credentials request."""
    m = decode_deterministic(frame, what="store request")
    if isinstance(m, dict) and m == {"t": "creds"}:
        return None
    if not isinstance(m, dict) or set(m) != {"t", "model", "file"} or m["t"] != "get":
        raise RemoteProtocolError("host request must be {t: get, model, file} or {t: creds}")
    if not isinstance(m["model"], str) or not isinstance(m["file"], str):
        raise RemoteProtocolError("store request: model and file must be text")
    check_store_name(m["model"], m["file"])
    return m["model"], m["file"]


def encode_data(block: bytes) -> bytes:
    return encode({"t": "data", "b": block})


def encode_end(size: int) -> bytes:
    return encode({"t": "end", "size": size})


def encode_store_error(code: str, message: str) -> bytes:
    return encode({"t": "error", "code": code, "msg": message[:_MAX_MESSAGE]})


@dataclass(frozen=True)
class StoreData:
    data: bytes


@dataclass(frozen=True)
class StoreEnd:
    size: int


def decode_store_frame(frame: bytes) -> StoreData | StoreEnd:
    """The enclave's side: one frame of a get answer.

    Strict but not re-encoded: a data frame carries a megabyte that the manifest
    authenticates anyway (M7-M9); re-encoding it would copy it again. An error frame
    from the host raises :class:`ConfigError` with its message.
    """
    m = decode_strict(frame, what="store frame")
    t = m.get("t") if isinstance(m, dict) else None
    if t == "data" and set(m) == {"t", "b"} and isinstance(m["b"], bytes):
        return StoreData(m["b"])
    if t == "end" and set(m) == {"t", "size"} and isinstance(m["size"], int):
        return StoreEnd(m["size"])
    if t == "error" and set(m) == {"t", "code", "msg"}:
        raise ConfigError(f"host model store: {str(m['msg'])[:_MAX_MESSAGE]}")
    raise RemoteProtocolError("unexpected frame in the store stream")


def decode_credentials(frame: bytes) -> AwsCredentials:
    """The enclave's side: the answer to a credentials request."""
    m = decode_deterministic(frame, what="credentials")
    if isinstance(m, dict) and m.get("t") == "error":
        raise ConfigError(f"host services: {str(m.get('msg'))[:_MAX_MESSAGE]}")
    return AwsCredentials.from_map(m)
