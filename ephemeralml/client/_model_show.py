"""``ephemeral model show``: a bundle's signed manifest, verified, for people and pipelines.

What it answers: *which model release is this?* A receipt (and an enclave's
attestation) names a model by its **manifest digest** (SHA-256 of the manifest's
CBOR, protocol.md §9.1); the manifest it digests names the release, the owner's
version label, the files and the KMS key. ``show`` checks the manifest's signature
against the model-owner keys it is given (M1-M4, and M5 with ``--model-id``), then,
for a bundle folder (or a store's ``<store>/<model id>/`` entry, the same three
files), that ``model.key`` and ``model.enc`` are the ones the manifest names (M10,
M6, M7), and prints it. With ``--digest`` it keeps only the bundles whose manifest
digest starts with that hex: point it at a folder of old bundles to find the release
a receipt names.

Owner keys: every ``--owner-key HEX`` (raw Ed25519, what ``ephemeral model keygen``
printed), else ``$EPHEMERALML_HOME/published/model-owners.txt`` (what a mock enclave
trusts; the same format as an enclave image's ``/etc/ephemeralml/model-owners.txt``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ephemeralml.common._bundle import (
    MAX_MANIFEST_BYTES,
    VerifiedManifest,
    owner_key_id,
    verify_manifest,
)
from ephemeralml.common._errors import ConfigError, ManifestError
from ephemeralml.runtime._home import MOCK_OWNERS, read_limited

from ._package import MANIFEST_FILE, MODEL_ENC_FILE, MODEL_KEY_FILE

__all__ = [
    "ShownManifest",
    "load_owner_keys_file",
    "owner_keys_for_show",
    "parse_digest_prefix",
    "show_bundles",
    "show_json",
    "show_lines",
]

_HEX = re.compile(r"^[0-9a-fA-F]+$")
#: The shortest ``--digest`` prefix: what the project's messages print (16 hex + "…").
MIN_DIGEST_PREFIX = 16
_MAX_OWNERS_FILE_BYTES = 64 * 1024
_MAX_WRAPPED_KEY_BYTES = 64 * 1024
_READ_BYTES = 1024 * 1024


def _owner_key(text: str, where: str) -> bytes:
    t = text.strip()
    raw = bytes.fromhex(t) if len(t) == 64 and _HEX.match(t) else b""
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"{where}: a model-owner key is 64 hex digits (raw Ed25519 public key)")
    return raw


def load_owner_keys_file(path: Path) -> dict[bytes, bytes]:
    """A model-owners file: one raw Ed25519 public key (64 hex) a line, ``#`` comments
    and blank lines ignored; owner key id → key. A bad line is an error, never skipped;
    a file with no key is an error (it would trust nothing, silently)."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_OWNERS_FILE_BYTES + 1)
        text = data.decode("ascii")
    except FileNotFoundError as e:
        raise ConfigError(
            f"no model-owner keys at {path}: give --owner-key HEX (the public key "
            "`ephemeral model keygen` printed), or start `ephemeral-host --mock` (it "
            "publishes the mock owner's)"
        ) from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read model-owner keys at {path}: {e}") from e
    if len(data) > _MAX_OWNERS_FILE_BYTES:
        raise ConfigError(f"model-owner keys {path} are over {_MAX_OWNERS_FILE_BYTES} bytes")
    keys: dict[bytes, bytes] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if line:
            raw = _owner_key(line, f"{path} line {n}")
            keys[owner_key_id(raw)] = raw
    if not keys:
        raise ConfigError(f"{path} lists no model-owner key")
    return keys


def owner_keys_for_show(hex_keys: Sequence[str], home: Path) -> tuple[dict[bytes, bytes], str]:
    """``--owner-key`` values if any, else the published owners file; with where they
    came from, for messages."""
    if hex_keys:
        keys = {}
        for text in hex_keys:
            raw = _owner_key(text, f"--owner-key {text.strip()[:16]!r}")
            keys[owner_key_id(raw)] = raw
        return keys, "--owner-key"
    path = home / MOCK_OWNERS
    return load_owner_keys_file(path), str(path)


def parse_digest_prefix(text: str) -> str:
    t = text.strip().lower()
    if not MIN_DIGEST_PREFIX <= len(t) <= 64 or not _HEX.match(t):
        raise ConfigError(
            f"--digest {text!r}: give a manifest digest, {MIN_DIGEST_PREFIX} to 64 hex digits"
        )
    return t


@dataclass(frozen=True)
class ShownManifest:
    """One verified manifest and what was checked about its bundle."""

    manifest_path: Path
    verified: VerifiedManifest
    owner_key: bytes
    #: True when ``model.key`` and ``model.enc`` beside it were checked (M10, M6, M7).
    files_checked: bool


def _manifest_path(path: Path) -> tuple[Path, bool]:
    """A bundle folder (or a store's model folder) → its manifest, files to check;
    a file → that manifest alone."""
    if path.is_dir():
        missing = [f for f in (MANIFEST_FILE, MODEL_KEY_FILE, MODEL_ENC_FILE)
                   if not (path / f).is_file()]  # fmt: skip
        if missing:
            raise ConfigError(f"{path} is not a bundle: it lacks {', '.join(missing)}")
        return path / MANIFEST_FILE, True
    if path.is_file():
        return path, False
    raise ConfigError(f"{path} does not exist (give a bundle folder or a manifest.cose)")


def _check_files(folder: Path, v: VerifiedManifest) -> None:
    m = v.manifest
    # M10 key: the wrapped data key is the one the signed manifest names.
    key_path = folder / MODEL_KEY_FILE
    wrapped = read_limited(key_path, _MAX_WRAPPED_KEY_BYTES)
    if hashlib.sha256(wrapped).digest() != m.wrapped_key_sha256:
        raise ManifestError(f"M10 key: {key_path} is not the data key its manifest names")
    # M6 size, then M7 ciphertext (streamed: a model may be gigabytes).
    enc_path = folder / MODEL_ENC_FILE
    h, size = hashlib.sha256(), 0
    try:
        with open(enc_path, "rb") as f:
            while size <= m.ciphertext_size and (block := f.read(_READ_BYTES)):
                h.update(block)
                size += len(block)
    except OSError as e:
        raise ConfigError(f"cannot read {enc_path}: {e.strerror}") from e
    if size > m.ciphertext_size:
        raise ManifestError(
            f"M6 size: {enc_path} is longer than the {m.ciphertext_size} bytes the manifest says"
        )
    if size < m.ciphertext_size:
        raise ManifestError(
            f"M6 size: {enc_path} is {size} bytes, the manifest says {m.ciphertext_size}"
        )
    if h.digest() != m.ciphertext_sha256:
        raise ManifestError(f"M7 ciphertext: {enc_path} does not match the manifest's sha256")


def show_bundle(
    path: Path, owner_keys: Mapping[bytes, bytes], where: str, *, model_id: str | None = None
) -> ShownManifest:
    """Verify one bundle (or manifest file); errors name the file and, for M2, the
    owner keys tried."""
    manifest_path, with_files = _manifest_path(path)
    raw = read_limited(manifest_path, MAX_MANIFEST_BYTES)
    try:
        v = verify_manifest(raw, owner_keys, model_id=model_id)
    except ManifestError as e:
        trusted = f"; owner keys from {where}" if e.message.startswith("M2 ") else ""
        raise ManifestError(f"{e.message} ({manifest_path}{trusted})") from e
    if with_files:
        _check_files(path, v)
    return ShownManifest(manifest_path, v, owner_keys[v.manifest.owner], with_files)


def show_bundles(
    paths: Iterable[Path],
    owner_keys: Mapping[bytes, bytes],
    where: str,
    *,
    model_id: str | None = None,
    digest: str | None = None,
) -> list[ShownManifest]:
    """Every bundle verified (any failure is the command's); with ``digest`` (a
    lowercase hex prefix) only those whose manifest digest starts with it, and at
    least one must."""
    paths = list(paths)
    shown = [show_bundle(p, owner_keys, where, model_id=model_id) for p in paths]
    if digest is None:
        return shown
    hits = [s for s in shown if s.verified.digest.hex().startswith(digest)]
    if not hits:
        raise ConfigError(
            f"no manifest with digest {digest[:16]}… among the {len(paths)} bundle(s) given"
        )
    return hits


def show_json(s: ShownManifest) -> dict[str, Any]:
    m = s.verified.manifest
    return {
        "verified": True,
        "manifest": str(s.manifest_path),
        "model_id": m.model_id,
        "release": m.release,
        "version": m.version,
        "manifest_digest": s.verified.digest.hex(),
        "manifest_format": 2 if m.release else 1,
        "owner_key_id": m.owner.hex(),
        "owner_key": s.owner_key.hex(),
        "kms_key_id": m.kms_key_id,
        "created": m.created,
        "files": [{"name": f.name, "size": f.size, "sha256": f.sha256.hex()} for f in m.files],
        "plaintext_size": m.plaintext_size,
        "plaintext_sha256": m.plaintext_sha256.hex(),
        "ciphertext_size": m.ciphertext_size,
        "ciphertext_sha256": m.ciphertext_sha256.hex(),
        "chunk_size": m.chunk_size,
        "chunk_count": m.chunk_count,
        "bundle_id": m.bundle_id.hex(),
        "wrapped_key_sha256": m.wrapped_key_sha256.hex(),
        "bundle_files_checked": s.files_checked,
    }


def show_lines(s: ShownManifest) -> list[str]:
    d = show_json(s)
    release = str(d["release"]) if d["release"] else "0 (unordered: refused by any floor, M11)"
    lines = [
        f"manifest {d['manifest']} VERIFIED: signed by owner {d['owner_key_id'][:16]}…",
        f"  model         {d['model_id']}",
        f"  release       {release}",
        f"  version       {d['version']}",
        f"  digest        {d['manifest_digest']} (receipts carry it, policies pin it)",
        f"  owner key     {d['owner_key']} (id {d['owner_key_id']})",
        f"  KMS key       {d['kms_key_id']}",
        f"  created       {d['created']}",
    ]
    lines += [
        f"  file          {f['name']} {f['size']} bytes sha256 {f['sha256']}" for f in d["files"]
    ]
    lines += [
        f"  plaintext     {d['plaintext_size']} bytes sha256 {d['plaintext_sha256']}",
        f"  ciphertext    {d['ciphertext_size']} bytes in {d['chunk_count']} chunk(s) of "
        f"{d['chunk_size']}, sha256 {d['ciphertext_sha256']}",
        f"  data key      wrapped by KMS, sha256 {d['wrapped_key_sha256']}",
        "  bundle files  model.key and model.enc match the manifest (M10, M6, M7)"
        if d["bundle_files_checked"]
        else "  bundle files  not checked (a manifest file alone was given)",
    ]
    return lines
