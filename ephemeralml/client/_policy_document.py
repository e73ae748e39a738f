"""A policy file's JSON, parsed: :class:`PolicyDocument` (protocol.md §8). No I/O.

Every field, its type and its range, checked before anything the policy names (a
root file, the rollback state) is read; the helpers that check a PCR set, a raw
Ed25519 public key and pinned model digests serve the rest of the policy modules.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ephemeralml.common._attestation import MAX_ATTESTATION_AGE_S, PcrAllowlist
from ephemeralml.common._bundle import owner_key_id
from ephemeralml.common._errors import ConfigError, Error
from ephemeralml.runtime._strict import loads_json

__all__ = [
    "MAX_PINNED_DIGESTS",
    "PemRoot",
    "PolicyDocument",
    "ed25519_public",
    "pcr_set",
    "pinned_models",
]

#: Manifest digests one policy may pin for one model (P1): a rolling upgrade needs
#: the old and the new release, a staged one a few more; a longer list is a mistake.
MAX_PINNED_DIGESTS = 16

_FIELDS = frozenset(
    {
        "version",
        "root",
        "max_age_s",
        "measurements",
        "allow_debug",
        "models",
        "owner_keys",
        "min_enclave_policy_version",
        "session_mode",
    }
)


def _hex(value: Any, what: str, length: int) -> bytes:
    try:
        b = bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        b = None
    if b is None or len(b) != length:
        raise ConfigError(f"{what} must be {length * 2} hex digits")
    return b


def pcr_set(obj: Any, where: str) -> dict[int, bytes]:
    if not isinstance(obj, dict) or not obj:
        raise ConfigError(f"{where}: a measurement set is a non-empty object of PCRn: hex")
    out: dict[int, bytes] = {}
    for k, v in obj.items():
        name = str(k).upper().removeprefix("PCR")
        if not name.isdigit() or not 0 <= int(name) <= 31:
            raise ConfigError(f"{where}: {k!r} is not a PCR name (PCR0..PCR31)")
        if int(name) in out:
            raise ConfigError(f"{where}: PCR{int(name)} is named twice")
        out[int(name)] = _hex(v, f"{where}: {k}", 48)
    return out


def ed25519_public(value: Any, what: str) -> bytes:
    raw = _hex(value, what, 32)
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as e:
        raise ConfigError(f"{what} is not an Ed25519 public key") from e
    return raw


@dataclass(frozen=True)
class PemRoot:
    """``{"pem": path, "sha256": hex}``: a root read from a file beside the policy."""

    path: str
    #: SHA-256 of the certificate's DER; required in a signed policy (the file is
    #: not covered by the signature, the pin is).
    sha256: bytes | None = None


def _digest_pins(value: Any, what: str) -> frozenset[bytes]:
    """A model's pinned manifest digests: one 64-hex string, or a list of them (P1)."""
    if isinstance(value, str):
        return frozenset({_hex(value, what, 32)})
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_PINNED_DIGESTS:
        raise ConfigError(
            f"{what} must be a manifest digest (64 hex) or a list of 1..{MAX_PINNED_DIGESTS}"
        )
    return frozenset(_hex(v, f"{what}[{i}]", 32) for i, v in enumerate(value))


def pinned_models(
    models: Mapping[str, bytes | Iterable[bytes]] | None,
) -> Mapping[str, frozenset[bytes]] | None:
    """Models as code gives them (id → digest, or → digests), as P1 reads them."""
    if models is None:
        return None
    out: dict[str, frozenset[bytes]] = {}
    for model_id, pins in models.items():
        try:
            digests = frozenset({pins} if isinstance(pins, bytes) else pins)
        except TypeError as e:  # not iterable, or unhashable items
            raise ConfigError(f"models: {model_id!r}: give a digest or a list of digests") from e
        if not isinstance(model_id, str) or not 1 <= len(digests) <= MAX_PINNED_DIGESTS:
            raise ConfigError(f"models: {model_id!r} needs 1..{MAX_PINNED_DIGESTS} digests")
        if not all(isinstance(d, bytes) and len(d) == 32 for d in digests):
            raise ConfigError(f"models: {model_id!r}: a manifest digest is 32 bytes (SHA-256)")
        out[model_id] = digests
    return MappingProxyType(out)


def _int_field(doc: Mapping[str, Any], name: str, where: str) -> int:
    value = doc.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"policy {where}: {name} must be a non-negative integer")
    return value


@dataclass(frozen=True)
class PolicyDocument:
    """A parsed policy (protocol.md §8), before any file it names is read."""

    version: int
    root: str | PemRoot  # "aws-nitro", "mock" or a PemRoot
    max_age_s: float
    measurements: PcrAllowlist
    #: Model id → the manifest digests P1 accepts for it; None: any attested model.
    models: Mapping[str, frozenset[bytes]] | None
    #: Model-owner keys (kid → raw Ed25519 key), as ``verify_manifest`` takes them.
    owner_keys: Mapping[bytes, bytes] | None
    min_enclave_policy_version: int
    #: "fresh" (a new attestation per session) or "cached" (protocol.md §2.2.1).
    session_mode: str = "fresh"

    @classmethod
    def from_json(cls, raw: bytes, *, where: str, signed: bool = False) -> PolicyDocument:
        """Parse a policy's JSON bytes (UTF-8, no duplicate keys). No I/O.

        ``signed``: the bytes came out of a verified signature; then a ``{"pem"}``
        root must carry its ``sha256``.
        """
        try:
            doc = loads_json(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ConfigError(f"policy {where} is not JSON: {e}") from e
        try:
            return cls._from_obj(doc, where, signed)
        except Error:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"policy {where}: {e}") from e

    @classmethod
    def _from_obj(cls, doc: Any, where: str, signed: bool) -> PolicyDocument:
        if not isinstance(doc, dict):
            raise ConfigError(f"policy {where}: not a JSON object")
        if unknown := set(doc) - _FIELDS:
            raise ConfigError(f"policy {where}: unknown fields {sorted(unknown)}")
        version = _int_field(doc, "version", where)
        min_pv = _int_field(doc, "min_enclave_policy_version", where)
        root_spec = doc.get("root", "aws-nitro")
        root: str | PemRoot
        if root_spec in ("aws-nitro", "mock"):
            root = root_spec
        elif (
            isinstance(root_spec, dict)
            and "pem" in root_spec
            and set(root_spec) <= {"pem", "sha256"}
            and isinstance(root_spec["pem"], str)
        ):
            pin = root_spec.get("sha256")
            root = PemRoot(
                root_spec["pem"],
                None if pin is None else _hex(pin, f"policy {where}: root.sha256", 32),
            )
            if signed and root.sha256 is None:
                raise ConfigError(
                    f"policy {where}: a signed policy must pin its root: "
                    '{"pem": PATH, "sha256": HEX}'
                )
        else:
            raise ConfigError(
                f'policy {where}: root must be "aws-nitro", "mock" or {{"pem": PATH}}'
            )
        sets = doc.get("measurements")
        if not isinstance(sets, list) or not sets:
            raise ConfigError(f"policy {where}: measurements must be a non-empty list")
        allow_debug = doc.get("allow_debug", False)
        if not isinstance(allow_debug, bool):
            raise ConfigError(f"policy {where}: allow_debug must be true or false")
        allowlist = PcrAllowlist(
            [pcr_set(s, f"policy {where} measurements[{i}]") for i, s in enumerate(sets)],
            allow_debug=allow_debug,
        )
        max_age = doc.get("max_age_s", MAX_ATTESTATION_AGE_S)
        if (
            isinstance(max_age, bool)
            or not isinstance(max_age, int | float)
            or not math.isfinite(max_age)
            or max_age <= 0
        ):
            raise ConfigError(f"policy {where}: max_age_s must be a positive number of seconds")
        models = doc.get("models")
        if models is not None:
            if not isinstance(models, dict):
                raise ConfigError(f"policy {where}: models must be an object of id: digest hex")
            models = {k: _digest_pins(v, f"policy {where}: models.{k}") for k, v in models.items()}
        owners = doc.get("owner_keys")
        owner_keys: dict[bytes, bytes] | None = None
        if owners is not None:
            if not isinstance(owners, list):
                raise ConfigError(f"policy {where}: owner_keys must be a list of 64-hex keys")
            keys = [
                ed25519_public(k, f"policy {where}: owner_keys[{i}]") for i, k in enumerate(owners)
            ]
            owner_keys = {owner_key_id(k): k for k in keys}
        return cls(
            version=version,
            root=root,
            max_age_s=max_age,
            measurements=allowlist,
            models=MappingProxyType(models) if models is not None else None,
            owner_keys=MappingProxyType(owner_keys) if owner_keys is not None else None,
            min_enclave_policy_version=min_pv,
            session_mode=_session_mode(doc, where),
        )


def _session_mode(doc: Mapping[str, Any], where: str) -> str:
    mode = doc.get("session_mode", "fresh")
    if mode not in ("fresh", "cached"):
        raise ConfigError(f'policy {where}: session_mode must be "fresh" or "cached"')
    return str(mode)
