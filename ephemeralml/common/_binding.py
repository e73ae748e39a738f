"""What an enclave binds into its attestation's ``user_data`` (protocol.md §2.2).

The NSM signs ``user_data`` verbatim, so everything here is vouched for by the
attestation: the session id, the receipt-signing key, the models the enclave has
loaded (id → manifest digest), the policy version it enforces, the protocol version
and whether it runs as a real Nitro enclave or in mock mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ._cbor import decode_deterministic, encode
from ._errors import AttestationError, DecodeError, RemoteProtocolError
from ._messages import SESSION_ID_BYTES

__all__ = ["MAX_USER_DATA_BYTES", "MODES", "EnclaveBinding"]

#: AWS documents allow 512 or 1024 bytes of user_data depending on the page; we
#: keep to the stricter bound so a binding always fits a real NSM.
MAX_USER_DATA_BYTES = 512

#: Security modes a receipt and binding may name.
MODES = frozenset({"nitro", "mock"})

_KEYS = {"v", "sid", "rk", "models", "kr", "pv", "mode"}


@dataclass(frozen=True)
class EnclaveBinding:
    protocol_version: int
    session_id: bytes
    receipt_key: bytes  # Ed25519 public key, raw 32 bytes
    models: Mapping[str, bytes]  # model id -> manifest digest (SHA-256)
    policy_version: int
    mode: str
    #: model id -> digest of the evidence of its key's release (KMS request id,
    #: CiphertextForRecipient and attestation digests); receipts repeat it.
    key_releases: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.session_id) != SESSION_ID_BYTES:
            raise RemoteProtocolError("binding: session id must be 16 bytes")
        if len(self.receipt_key) != 32:
            raise RemoteProtocolError("binding: receipt key must be a 32-byte Ed25519 key")
        if self.mode not in MODES:
            raise RemoteProtocolError(f"binding: unknown mode {self.mode!r}")
        if self.policy_version < 0:
            raise RemoteProtocolError("binding: negative policy version")
        for k, v in self.models.items():
            if not isinstance(k, str) or not isinstance(v, bytes) or len(v) != 32:
                raise RemoteProtocolError("binding: models must map text ids to 32-byte digests")
        for k, v in self.key_releases.items():
            if k not in self.models or not isinstance(v, bytes) or len(v) != 32:
                raise RemoteProtocolError("binding: key releases must map loaded models to digests")
        object.__setattr__(self, "models", MappingProxyType(dict(self.models)))
        object.__setattr__(self, "key_releases", MappingProxyType(dict(self.key_releases)))

    def to_cbor(self) -> bytes:
        data = encode(
            {
                "v": self.protocol_version,
                "sid": self.session_id,
                "rk": self.receipt_key,
                "models": dict(self.models),
                "kr": dict(self.key_releases),
                "pv": self.policy_version,
                "mode": self.mode,
            }
        )
        if len(data) > MAX_USER_DATA_BYTES:
            raise RemoteProtocolError(
                f"binding is {len(data)} bytes; user_data holds at most {MAX_USER_DATA_BYTES}"
            )
        return data

    @classmethod
    def from_user_data(cls, user_data: bytes | None) -> EnclaveBinding:
        """Parse the ``user_data`` of a *verified* attestation document (check A8)."""
        if user_data is None:
            raise AttestationError("A8 binding: the attestation document has no user_data")
        try:
            m: Any = decode_deterministic(
                user_data, what="user_data", max_bytes=MAX_USER_DATA_BYTES
            )
            if not isinstance(m, dict) or set(m) != _KEYS:
                raise AttestationError("A8 binding: user_data is not an ephemeralml binding")
            models, kr = m["models"], m["kr"]
            if not isinstance(models, dict) or not isinstance(kr, dict):
                raise AttestationError("A8 binding: models and kr must be maps")
            for name in ("v", "pv"):
                if not isinstance(m[name], int) or isinstance(m[name], bool):
                    raise AttestationError(f"A8 binding: {name} is not an integer")
            for name in ("sid", "rk"):
                if not isinstance(m[name], bytes):
                    raise AttestationError(f"A8 binding: {name} is not bytes")
            if not isinstance(m["mode"], str):
                raise AttestationError("A8 binding: mode is not text")
            return cls(
                protocol_version=m["v"],
                session_id=m["sid"],
                receipt_key=m["rk"],
                models=models,
                key_releases=kr,
                policy_version=m["pv"],
                mode=m["mode"],
            )
        except (DecodeError, RemoteProtocolError) as e:
            raise AttestationError(f"A8 binding: {e}") from e
