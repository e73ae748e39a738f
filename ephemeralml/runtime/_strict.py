"""Small strict readers shared by the programs (not part of the protocol core).

* :func:`loads_json` — JSON with no duplicate keys and no NaN/Infinity: a policy or
  a KMS request that says one thing to one parser and another to the next is refused.
* :func:`generate_ed25519_key` / :func:`load_ed25519_key` — the Ed25519 key files of
  model owners and policy signers (PKCS#8 PEM, mode 0600, never overwritten), with
  the one wording of their errors (:class:`ConfigError`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, NoReturn

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ephemeralml.common._errors import ConfigError

from ._home import write_atomic

__all__ = ["generate_ed25519_key", "load_ed25519_key", "loads_json", "parse_s3_url"]

_S3 = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?$")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number")


def loads_json(text: str | bytes) -> Any:
    """``json.loads`` that raises ``ValueError`` on duplicate keys and NaN/Infinity."""
    return json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)


def generate_ed25519_key(path: Path) -> bytes:
    """Write a new Ed25519 private key to ``path``; returns the raw public key.

    Raises :class:`ConfigError` rather than overwrite a key.
    """
    if path.exists():
        raise ConfigError(f"{path} exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomic(path, pem, mode=0o600)
    return key.public_key().public_bytes_raw()


def load_ed25519_key(path: Path, *, what: str) -> Ed25519PrivateKey:
    """The unencrypted Ed25519 PEM key at ``path``; ``what`` names it in the
    :class:`ConfigError` raised if it is unreadable or not such a key ("owner key",
    "policy signing key")."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from e
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (TypeError, ValueError) as e:  # TypeError: an encrypted key without a password
        raise ConfigError(f"{path} is not an unencrypted PEM private key") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 key")
    return key


def parse_s3_url(url: str) -> tuple[str, str]:
    m = _S3.match(url)
    if not m:
        raise ConfigError(f"{url!r} is not s3://bucket[/prefix]")
    return m.group(1), (m.group(2) or "").strip("/")
