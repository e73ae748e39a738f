"""The mock KMS's keys: the key store on disk and the ciphertext blobs sealed under them.

A :class:`_Key` is one symmetric key (256-bit AES material, metadata, policy), kept in
``state_dir/keys/<key id>.json`` (folder 0700, files 0600, written atomically) by the
:class:`_KeyStore`, which loads them all at start. Ciphertext blobs are the mock's own
format (:data:`BLOB_VERSION`)::

    0x01 | key id (16 bytes, the key's UUID) | nonce (12 bytes) | AES-256-GCM ciphertext+tag

with AAD = ``b"ephemeralml-mock-kms-blob"`` | version | key id | canonical JSON of the
encryption context (sorted keys): :func:`_seal` makes one, :func:`_blob_key_id` reads
the key it names and :func:`_open` opens it, or fails with ``InvalidCiphertextException``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ephemeralml.runtime._home import write_atomic

from ..common._errors import ConfigError
from ._kms_policy import MalformedPolicyError, validate_policy
from ._kms_principals import ACCOUNT_ID, REGION
from ._kms_requests import _KmsError, _load_json

__all__ = [
    "BLOB_VERSION",
    "_KEY_MATERIAL_BYTES",
    "_Key",
    "_KeyStore",
    "_blob_key_id",
    "_invalid_ciphertext",
    "_open",
    "_seal",
]


#: The one ciphertext-blob format version this mock writes and reads.
BLOB_VERSION = 1


_BLOB_AAD_LABEL = b"ephemeralml-mock-kms-blob"
_NONCE_BYTES = 12
_KEY_ID_BYTES = 16
_TAG_BYTES = 16
_BLOB_HEADER_BYTES = 1 + _KEY_ID_BYTES + _NONCE_BYTES
_KEY_MATERIAL_BYTES = 32

_KEY_FILE_FORMAT = "ephemeralml-mock-kms-key/1"
_KEYS_DIR = "keys"


# ---------------------------------------------------------------------------
# Keys and their files
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    key_id: str
    material: bytes = dataclasses.field(repr=False)
    created: float
    description: str
    policy: str
    region: str = REGION  # not stored: the server's region names the key

    @property
    def arn(self) -> str:
        return f"arn:aws:kms:{self.region}:{ACCOUNT_ID}:key/{self.key_id}"

    @property
    def id_bytes(self) -> bytes:
        return uuid.UUID(self.key_id).bytes

    def metadata(self) -> dict[str, Any]:
        return {
            "AWSAccountId": ACCOUNT_ID,
            "KeyId": self.key_id,
            "Arn": self.arn,
            "CreationDate": self.created,
            "Enabled": True,
            "Description": self.description,
            "KeyUsage": "ENCRYPT_DECRYPT",
            "KeyState": "Enabled",
            "Origin": "AWS_KMS",
            "KeyManager": "CUSTOMER",
            "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT",
            "KeySpec": "SYMMETRIC_DEFAULT",
            "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"],
            "MultiRegion": False,
        }

    def to_file(self) -> bytes:
        return json.dumps(
            {
                "format": _KEY_FILE_FORMAT,
                "KeyId": self.key_id,
                "CreationDate": self.created,
                "Description": self.description,
                "KeySpec": "SYMMETRIC_DEFAULT",
                "KeyUsage": "ENCRYPT_DECRYPT",
                "KeyMaterial": base64.b64encode(self.material).decode("ascii"),
                "Policy": self.policy,
            },
            indent=2,
        ).encode("utf-8")

    @classmethod
    def from_file(cls, path: Path) -> _Key:
        try:
            data = _load_json(path.read_bytes())
            if not isinstance(data, dict) or data.get("format") != _KEY_FILE_FORMAT:
                raise ValueError(f"not a {_KEY_FILE_FORMAT} file")
            key_id = data["KeyId"]
            if not isinstance(key_id, str) or str(uuid.UUID(key_id)) != key_id:
                raise ValueError("KeyId is not a lowercase UUID")
            if path.name != f"{key_id}.json":
                raise ValueError(f"file name does not match KeyId {key_id}")
            material = base64.b64decode(data["KeyMaterial"], validate=True)
            if len(material) != _KEY_MATERIAL_BYTES:
                raise ValueError("KeyMaterial is not 32 bytes")
            created = data["CreationDate"]
            description = data["Description"]
            policy = data["Policy"]
            if isinstance(created, bool) or not isinstance(created, int | float):
                raise ValueError("CreationDate is not a number")
            if not isinstance(description, str) or not isinstance(policy, str):
                raise ValueError("Description and Policy must be strings")
            validate_policy(_load_json(policy))
        except (
            OSError,
            KeyError,
            ValueError,
            TypeError,
            binascii.Error,
            MalformedPolicyError,
        ) as e:
            raise ConfigError(f"mock KMS: key file {path} is unreadable or corrupt ({e})") from e
        return cls(
            key_id=key_id,
            material=material,
            created=float(created),
            description=description,
            policy=policy,
        )


class _KeyStore:
    """Keys in memory, each also in ``<state_dir>/keys/<id>.json`` (0600, atomic)."""

    def __init__(self, state_dir: Path, region: str = REGION) -> None:
        self._dir = Path(state_dir) / _KEYS_DIR
        self._lock = threading.Lock()
        self._keys: dict[str, _Key] = {}
        try:
            Path(state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
            self._dir.mkdir(mode=0o700, exist_ok=True)
            os.chmod(self._dir, 0o700)
            paths = sorted(p for p in self._dir.glob("*.json") if not p.name.startswith("."))
        except OSError as e:
            raise ConfigError(f"mock KMS: cannot use state folder {state_dir}: {e}") from e
        for path in paths:
            key = dataclasses.replace(_Key.from_file(path), region=region)
            self._keys[key.key_id] = key
        self.region = region

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)

    def get(self, key_id: str) -> _Key | None:
        with self._lock:
            return self._keys.get(key_id)

    def save(self, key: _Key) -> None:
        with self._lock:
            try:
                write_atomic(self._dir / f"{key.key_id}.json", key.to_file(), mode=0o600)
            except OSError as e:
                raise _KmsError(
                    "KMSInternalException", "The key could not be stored", status=500
                ) from e
            self._keys[key.key_id] = key


# ---------------------------------------------------------------------------
# Ciphertext blobs
# ---------------------------------------------------------------------------


def _blob_aad(id_bytes: bytes, encryption_context: Mapping[str, str]) -> bytes:
    # The encryption context is bound exactly (AWS: "an exact case-sensitive match").
    canonical = json.dumps(encryption_context, sort_keys=True, separators=(",", ":"))
    return _BLOB_AAD_LABEL + bytes([BLOB_VERSION]) + id_bytes + canonical.encode("utf-8")


def _seal(key: _Key, plaintext: bytes, encryption_context: Mapping[str, str]) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    sealed = AESGCM(key.material).encrypt(
        nonce, plaintext, _blob_aad(key.id_bytes, encryption_context)
    )
    return bytes([BLOB_VERSION]) + key.id_bytes + nonce + sealed


def _invalid_ciphertext() -> _KmsError:
    return _KmsError("InvalidCiphertextException", "The ciphertext is invalid or corrupted")


def _blob_key_id(blob: bytes) -> str:
    if len(blob) < _BLOB_HEADER_BYTES + _TAG_BYTES or blob[0] != BLOB_VERSION:
        raise _invalid_ciphertext()
    return str(uuid.UUID(bytes=blob[1 : 1 + _KEY_ID_BYTES]))


def _open(key: _Key, blob: bytes, encryption_context: Mapping[str, str]) -> bytes:
    nonce = blob[1 + _KEY_ID_BYTES : _BLOB_HEADER_BYTES]
    try:
        return AESGCM(key.material).decrypt(
            nonce, blob[_BLOB_HEADER_BYTES:], _blob_aad(key.id_bytes, encryption_context)
        )
    except InvalidTag as e:
        raise _invalid_ciphertext() from e
