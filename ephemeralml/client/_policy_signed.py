"""P3 (protocol.md §8): the signed-policy envelope and the policy signers.

* the signers: their ids (:func:`policy_signer_kid`), the ones a client trusts
  (``--policy-signer``, :data:`POLICY_SIGNERS_FILE` in the home), their key files;
* :func:`open_policy` — a policy file's bytes in, P3 checked over the bytes received,
  the JSON payload out; no JSON is parsed before P3 has passed;
* :func:`sign_policy` — a policy's JSON bytes, checked as a signed policy, signed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ephemeralml.common._cose import decode_sign1, eddsa_kid, sign_eddsa, verify_eddsa
from ephemeralml.common._errors import ConfigError, DecodeError, PolicyError
from ephemeralml.runtime._strict import generate_ed25519_key, load_ed25519_key

from ._policy_document import PolicyDocument, ed25519_public

__all__ = [
    "MAX_POLICY_BYTES",
    "POLICY_SIGNERS_FILE",
    "checked_signers",
    "generate_signer_key",
    "load_policy_signers",
    "load_signer_key",
    "open_policy",
    "parse_signer_keys",
    "policy_signer_kid",
    "sign_policy",
]

#: A policy file (signed or not) is small; anything bigger is a mistake.
MAX_POLICY_BYTES = 64 * 1024
#: Relative to the home: trusted policy signers, one raw Ed25519 public key (64 hex)
#: a line. When it names any key, unsigned policies are refused (P3).
POLICY_SIGNERS_FILE = Path("policy-signers")
#: First byte of a COSE_Sign1: tag 18 (0xd2) or, untagged, an array of 4 (0x84).
#: Any other file is read as an unsigned JSON policy.
_COSE_FIRST_BYTES = frozenset({0xD2, 0x84})


def policy_signer_kid(public_key: bytes) -> bytes:
    """The id of a policy signer: SHA-256 of its 32 raw Ed25519 public-key bytes."""
    return hashlib.sha256(public_key).digest()


def parse_signer_keys(
    hex_keys: Iterable[str], *, where: str = "--policy-signer"
) -> dict[bytes, bytes]:
    """Raw Ed25519 public keys as hex → ``{kid: key}``, the form ``from_file`` takes."""
    out: dict[bytes, bytes] = {}
    for text in hex_keys:
        key = ed25519_public(text.strip(), f"{where} {text.strip()[:16]!r}")
        out[policy_signer_kid(key)] = key
    return out


def load_policy_signers(home: Path) -> dict[bytes, bytes]:
    """The signers listed in ``home/policy-signers`` (absent file: none).

    One 64-hex raw Ed25519 public key a line; blank lines and ``#`` comments are
    ignored. A line that is not a key is an error, never skipped.
    """
    path = home / POLICY_SIGNERS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read policy signers {path}: {e}") from e
    out: dict[bytes, bytes] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if line:
            out.update(parse_signer_keys([line], where=f"{path} line {n}:"))
    return out


def checked_signers(trusted: Mapping[bytes, bytes]) -> Mapping[bytes, bytes]:
    """``trusted`` as a caller gave it, once each key is 32 bytes under its own kid."""
    for kid, key in trusted.items():
        if not isinstance(key, bytes) or len(key) != 32:
            raise ConfigError("policy signers: each key must be 32 raw Ed25519 bytes")
        if not isinstance(kid, bytes) or not hmac.compare_digest(kid, policy_signer_kid(key)):
            raise ConfigError(
                "policy signers: map kid -> key, with kid = SHA-256 of the raw public key"
            )
    return trusted


def generate_signer_key(path: Path) -> bytes:
    """Write a new Ed25519 policy-signing key (PKCS#8 PEM, 0600); returns the raw public key."""
    return generate_ed25519_key(path)


def load_signer_key(path: Path) -> Ed25519PrivateKey:
    return load_ed25519_key(path, what="policy signing key")


# ---------------------------------------------------------------- P3: the envelope


def open_policy(
    raw: bytes, *, where: str, trusted_signers: Mapping[bytes, bytes]
) -> tuple[bytes, bytes | None]:
    """Check P3 on a policy file's bytes; return ``(json_payload, signer_kid or None)``.

    A file whose first byte opens a COSE_Sign1 (tag 18, or an untagged array of 4) is
    a signed policy: its envelope and EdDSA signature are checked against
    ``trusted_signers`` (kid → raw public key) over the bytes received, and only then
    is the payload handed back. Any other file is an unsigned policy, refused when
    any signer is trusted. Does not parse or check the JSON itself.
    """
    if len(raw) > MAX_POLICY_BYTES:
        raise ConfigError(f"policy {where} is over {MAX_POLICY_BYTES} bytes")
    if not raw or raw[0] not in _COSE_FIRST_BYTES:
        # P3: once a signer is configured, only its signature makes a policy.
        if trusted_signers:
            raise PolicyError(
                f"P3 policy signature: policy is not signed but signers are configured ({where})"
            )
        return raw, None
    try:
        env = decode_sign1(raw, what=f"policy {where}", max_bytes=MAX_POLICY_BYTES)
    except DecodeError as e:
        raise PolicyError(f"P3 policy signature: {e}") from e
    # P3: protected header exactly {alg: EdDSA, kid: 32 bytes}, as for receipts (R1).
    try:
        kid = eddsa_kid(env)
    except DecodeError as e:
        raise PolicyError(f"P3 policy signature: {where}: {e}") from e
    public = trusted_signers.get(kid)
    if public is None:
        hint = "" if trusted_signers else "; no policy signers are configured (--policy-signer)"
        raise PolicyError(
            f"P3 policy signature: signed by an unknown key {kid.hex()[:16]}… ({where}){hint}"
        )
    try:
        ok = verify_eddsa(env, public)
    except DecodeError as e:
        raise PolicyError(f"P3 policy signature: {where}: {e}") from e
    if not ok:
        raise PolicyError(
            f"P3 policy signature: the signature on {where} does not verify "
            f"with signer {kid.hex()[:16]}…"
        )
    return env.payload, kid


def sign_policy(
    payload: bytes, key: Ed25519PrivateKey, *, where: str
) -> tuple[bytes, PolicyDocument]:
    """Sign a policy's JSON bytes, unchanged, after checking them as a signed policy."""
    doc = PolicyDocument.from_json(payload, where=where, signed=True)
    kid = policy_signer_kid(key.public_key().public_bytes_raw())
    signed = sign_eddsa(payload, key, kid=kid)
    if len(signed) > MAX_POLICY_BYTES:
        raise ConfigError(f"signed policy {where} would be over {MAX_POLICY_BYTES} bytes")
    return signed, doc
