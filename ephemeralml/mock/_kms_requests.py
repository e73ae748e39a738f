"""The mock KMS's side of the KMS JSON 1.1 protocol: errors as KMS reports them, checked fields.

A :class:`_KmsError` is one error response (``__type`` and ``message``, and its HTTP
status); :func:`_validation` and :func:`_serialization` make the two kinds AWS sends for
a malformed request, in AWS's words. :class:`_Body` reads one JSON object of a request
with botocore's shapes checked (types, lengths, enums, the KMS API model's bounds below),
so an operation sees only well-formed fields. No I/O, no keys, no policy here.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

from ephemeralml.runtime._strict import loads_json

__all__ = [
    "_DATA_KEY_SPECS",
    "_ENCRYPTION_ALGORITHMS",
    "_KEY_ENCRYPTION_ALGORITHMS",
    "_KEY_SPECS",
    "_KEY_USAGES",
    "_MAX_ATTESTATION_DOCUMENT",
    "_MAX_CIPHERTEXT_BLOB",
    "_MAX_DESCRIPTION",
    "_MAX_KEY_ID",
    "_MAX_NUMBER_OF_BYTES",
    "_MAX_PLAINTEXT",
    "_ORIGINS",
    "_Body",
    "_KmsError",
    "_load_json",
    "_serialization",
    "_validation",
]


# KMS API model bounds (botocore kms 2014-11-01 service-2.json), in bytes or characters.
_MAX_CIPHERTEXT_BLOB = 6144
_MAX_PLAINTEXT = 4096
_MAX_ATTESTATION_DOCUMENT = 262144
_MAX_KEY_ID = 2048
_MAX_DESCRIPTION = 8192
_MAX_NUMBER_OF_BYTES = 1024


_KEY_SPECS = (
    "RSA_2048", "RSA_3072", "RSA_4096", "ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521",
    "ECC_SECG_P256K1", "SYMMETRIC_DEFAULT", "HMAC_224", "HMAC_256", "HMAC_384", "HMAC_512",
    "SM2", "ML_DSA_44", "ML_DSA_65", "ML_DSA_87", "ECC_NIST_EDWARDS25519", "ML_KEM_512",
    "ML_KEM_768", "ML_KEM_1024",
)  # fmt: skip
_KEY_USAGES = (
    "SIGN_VERIFY", "ENCRYPT_DECRYPT", "GENERATE_VERIFY_MAC", "KEY_AGREEMENT",
    "ENCAPSULATE_DECAPSULATE",
)  # fmt: skip
_ORIGINS = ("AWS_KMS", "EXTERNAL", "AWS_CLOUDHSM", "EXTERNAL_KEY_STORE")
_ENCRYPTION_ALGORITHMS = ("SYMMETRIC_DEFAULT", "RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "SM2PKE")
_DATA_KEY_SPECS = {"AES_256": 32, "AES_128": 16}
_KEY_ENCRYPTION_ALGORITHMS = ("RSAES_OAEP_SHA_256",)


def _load_json(text: str | bytes) -> Any:
    return loads_json(text)


# ---------------------------------------------------------------------------
# Errors as KMS reports them
# ---------------------------------------------------------------------------


class _KmsError(Exception):
    """A KMS error response: ``code`` becomes ``__type``, ``message`` the message."""

    def __init__(self, code: str, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def _validation(field: str, value: object, constraint: str) -> _KmsError:
    # The shape of AWS's own constraint messages.
    shown = "null" if value is None else f"'{value}'"
    # AWS names members in camelCase, nested ones dotted: 'recipient.keyEncryptionAlgorithm'.
    path = ".".join(part[:1].lower() + part[1:] for part in field.split("."))
    return _KmsError(
        "ValidationException",
        f"1 validation error detected: Value {shown} at '{path}' "
        f"failed to satisfy constraint: {constraint}",
    )


def _serialization(message: str) -> _KmsError:
    return _KmsError("SerializationException", message)


# ---------------------------------------------------------------------------
# Request bodies
# ---------------------------------------------------------------------------


class _Body:
    """Typed access to one JSON object of a request (botocore's shapes, checked)."""

    def __init__(self, data: Mapping[str, Any], *, prefix: str = "") -> None:
        self._data = data
        self._prefix = prefix

    def _name(self, name: str) -> str:
        return f"{self._prefix}{name}"

    def _get(self, name: str, required: bool) -> Any:
        value = self._data.get(name)
        if value is None and required:
            raise _validation(self._name(name), None, "Member must not be null")
        return value

    def string(
        self,
        name: str,
        *,
        required: bool = False,
        min_len: int = 0,
        max_len: int | None = None,
        enum: Sequence[str] | None = None,
    ) -> str | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise _serialization(f"{self._name(name)}: expected a string")
        if len(value) < min_len:
            raise _validation(
                self._name(name),
                value,
                f"Member must have length greater than or equal to {min_len}",
            )
        if max_len is not None and len(value) > max_len:
            raise _validation(
                self._name(name),
                value[:64],
                f"Member must have length less than or equal to {max_len}",
            )
        if enum is not None and value not in enum:
            raise _validation(
                self._name(name), value, f"Member must satisfy enum value set: [{', '.join(enum)}]"
            )
        return value

    def blob(self, name: str, *, required: bool = False, max_len: int) -> bytes | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise _serialization(f"{self._name(name)}: expected a base64 string")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as e:
            raise _serialization(f"{self._name(name)}: not valid base64") from e
        if not 1 <= len(data) <= max_len:
            raise _validation(
                self._name(name),
                "<binary>",
                f"Member must have length between 1 and {max_len}",
            )
        return data

    def integer(self, name: str, *, minimum: int, maximum: int) -> int | None:
        value = self._get(name, False)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise _serialization(f"{self._name(name)}: expected an integer")
        if not minimum <= value <= maximum:
            raise _validation(
                self._name(name), value, f"Member must have value between {minimum} and {maximum}"
            )
        return value

    def boolean(self, name: str) -> bool:
        value = self._get(name, False)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise _serialization(f"{self._name(name)}: expected a boolean")
        return value

    def string_map(self, name: str) -> dict[str, str]:
        value = self._get(name, False)
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise _serialization(f"{self._name(name)}: expected a map of strings to strings")
        return dict(value)

    def string_list(self, name: str, *, max_items: int) -> list[str]:
        value = self._get(name, False)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _serialization(f"{self._name(name)}: expected a list of strings")
        if len(value) > max_items:
            raise _validation(
                self._name(name),
                "<list>",
                f"Member must have length less than or equal to {max_items}",
            )
        return list(value)

    def any_list(self, name: str) -> list[Any]:
        value = self._get(name, False)
        if value is None:
            return []
        if not isinstance(value, list):
            raise _serialization(f"{self._name(name)}: expected a list")
        return value

    def struct(self, name: str) -> _Body | None:
        value = self._get(name, False)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise _serialization(f"{self._name(name)}: expected an object")
        return _Body(value, prefix=f"{self._name(name)}.")
