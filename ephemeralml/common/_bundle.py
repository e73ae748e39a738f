"""Encrypted model bundles: chunked AES-256-GCM and the signed manifest (protocol.md §9).

A model bundle is three files:

* ``model.enc``: the plaintext bundle (the model's files, concatenated in the
  manifest's order) encrypted in chunks of ``chunk_size`` bytes with AES-256-GCM,
  each chunk ``chunk_size + 16`` bytes on disk (the last may be shorter);
* ``model.key``: the data key wrapped by KMS (``GenerateDataKey``'s CiphertextBlob);
* ``manifest.cose``: a COSE_Sign1 (EdDSA) by the model owner over the manifest.

Chunks are sealed like a STREAM construction: the chunk key is
HKDF-SHA256(data key, salt = the bundle's random salt, info = label), each chunk's
nonce is a 12-byte counter, and its AAD binds the bundle id, the chunk index and
whether it is the last chunk. So chunks cannot be reordered, dropped, duplicated,
moved between bundles, or the stream truncated, without failing authentication.
Encrypting or decrypting needs one chunk in memory at a time (plus the output).

Pure: the functions take and return bytes; the programs do the I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ._cbor import decode_deterministic, encode
from ._cose import decode_sign1, eddsa_kid, sign_eddsa, verify_eddsa
from ._errors import DecodeError, Error, LocalProtocolError, ManifestError

__all__ = [
    "BUNDLE_FORMAT",
    "DEFAULT_CHUNK_BYTES",
    "MAX_CHUNK_BYTES",
    "MAX_MANIFEST_BYTES",
    "MAX_RELEASE",
    "BundleFile",
    "ChunkCipher",
    "Manifest",
    "VerifiedManifest",
    "owner_key_id",
    "sign_manifest",
    "verify_manifest",
]

BUNDLE_FORMAT = "ephemeralml-bundle/1"

#: 1 MiB chunks: large enough that the 16-byte tag and per-chunk call cost vanish,
#: small enough that a reader holds one chunk, not the model.
DEFAULT_CHUNK_BYTES = 1024 * 1024
#: A manifest naming bigger chunks is refused: a reader must never be made to hold
#: an arbitrary amount before it can authenticate anything.
MAX_CHUNK_BYTES = 16 * 1024 * 1024
MIN_CHUNK_BYTES = 4096
#: Models up to 64 GiB: a bound so sizes in a manifest cannot overflow anything.
MAX_BUNDLE_BYTES = 64 * 1024**3
#: A manifest lists a handful of files; 16 KiB is generous.
MAX_MANIFEST_BYTES = 16 * 1024
MAX_FILES = 32
#: Releases are counted in a signed 64-bit range, so that every reader (CBOR, JSON,
#: a KMS condition, a database column) holds the number exactly.
MAX_RELEASE = 2**63 - 1

_TAG = 16
_SALT = 32
_BUNDLE_ID = 16
_CHUNK_KEY_LABEL = b"ephemeralml/1 bundle chunk key"
_FILE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


def _sha256(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def owner_key_id(public_key_raw: bytes) -> bytes:
    """The id of a model owner's Ed25519 key: SHA-256 of its 32 raw bytes."""
    return _sha256(public_key_raw)


class ChunkCipher:
    """Seals and opens the chunks of one bundle (§9.2). Holds the chunk key only."""

    def __init__(self, data_key: bytes | bytearray, *, bundle_id: bytes, salt: bytes) -> None:
        if len(data_key) != 32:
            raise LocalProtocolError("bundle data key must be 32 bytes (AES-256)")
        if len(bundle_id) != _BUNDLE_ID or len(salt) != _SALT:
            raise LocalProtocolError("bundle id must be 16 bytes and salt 32 bytes")
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_CHUNK_KEY_LABEL).derive(
            bytes(data_key)
        )
        self._aead = AESGCM(key)
        self._bundle_id = bundle_id

    def _aad(self, index: int, last: bool) -> bytes:
        return encode({"bundle": self._bundle_id, "i": index, "last": last})

    @staticmethod
    def _nonce(index: int) -> bytes:
        if not 0 <= index < 2**64:
            raise LocalProtocolError("chunk index out of range")
        return index.to_bytes(12, "big")

    def seal(self, index: int, plaintext: bytes, *, last: bool) -> bytes:
        return self._aead.encrypt(self._nonce(index), plaintext, self._aad(index, last))

    def open(self, index: int, ciphertext: bytes, *, last: bool) -> bytes:
        try:
            return self._aead.decrypt(self._nonce(index), ciphertext, self._aad(index, last))
        except InvalidTag as e:
            raise ManifestError(
                f"M9 content: chunk {index} of model.enc fails authentication"
            ) from e


@dataclass(frozen=True)
class BundleFile:
    """One file of the plaintext bundle, in order."""

    name: str
    size: int
    sha256: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _FILE_NAME.match(self.name):
            raise ManifestError(f"M4 format: bad file name {self.name!r}")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 0:
            raise ManifestError("M4 format: file size must be a non-negative integer")
        if not isinstance(self.sha256, bytes) or len(self.sha256) != 32:
            raise ManifestError("M4 format: file sha256 must be 32 bytes")

    def to_map(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


_KEYS = {
    "v", "format", "model_id", "version", "files", "plaintext_size", "plaintext_sha256",
    "ciphertext_size", "ciphertext_sha256", "chunk_size", "bundle_id", "salt",
    "kms_key_id", "wrapped_key_sha256", "created", "owner",
}  # fmt: skip
#: Manifest v2 (protocol.md §9.1) adds the ordered ``release``; v1 has none (release 0).
_KEYS_BY_VERSION = {1: _KEYS, 2: _KEYS | {"release"}}


@dataclass(frozen=True)
class Manifest:
    """What the model owner signs about one encrypted bundle.

    ``version`` is the owner's free-text label (``"1.4.2"``, ``"2026-11 int8"``): shown
    to people, never compared. ``release`` is the order (protocol.md §9.1): an integer
    the owner raises with every bundle it may want to retire, which an enclave's floor
    (M11) and anti-rollback compare. Integers because their order is total and their
    encoding canonical: "1.10" against "1.9", or two labels that semver ranks equal,
    would let one floor mean different things to different readers. Release 0 means
    "not ordered": it is what a v1 manifest (signed before releases existed) reads as,
    and any floor of 1 or more refuses it. A manifest of release ≥ 1 is v2; release 0
    is always written as v1, so each manifest has exactly one encoding and digest.
    """

    model_id: str
    version: str
    files: tuple[BundleFile, ...]
    plaintext_size: int
    plaintext_sha256: bytes
    ciphertext_size: int
    ciphertext_sha256: bytes
    chunk_size: int
    bundle_id: bytes
    salt: bytes
    kms_key_id: str
    wrapped_key_sha256: bytes
    created: str
    owner: bytes  # owner_key_id of the signing key
    format: str = BUNDLE_FORMAT
    #: The order of this model's bundles (M11); 0: unordered (a v1 manifest).
    release: int = 0

    def __post_init__(self) -> None:
        def bad(msg: str) -> ManifestError:
            return ManifestError(f"M4 format: {msg}")

        if self.format != BUNDLE_FORMAT:
            raise bad(f"unknown bundle format {self.format!r}")
        for name in ("model_id", "version", "kms_key_id", "created"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v or len(v) > 256:
                raise bad(f"{name} must be non-empty text")
        for name, n in (
            ("plaintext_sha256", 32), ("ciphertext_sha256", 32), ("bundle_id", _BUNDLE_ID),
            ("salt", _SALT), ("wrapped_key_sha256", 32), ("owner", 32),
        ):  # fmt: skip
            v = getattr(self, name)
            if not isinstance(v, bytes) or len(v) != n:
                raise bad(f"{name} must be {n} bytes")
        for name in ("plaintext_size", "ciphertext_size", "chunk_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise bad(f"{name} must be a non-negative integer")
        r = self.release
        if not isinstance(r, int) or isinstance(r, bool) or not 0 <= r <= MAX_RELEASE:
            raise bad(f"release must be an integer 0..{MAX_RELEASE}")
        if not MIN_CHUNK_BYTES <= self.chunk_size <= MAX_CHUNK_BYTES:
            raise bad(f"chunk_size {self.chunk_size} outside {MIN_CHUNK_BYTES}..{MAX_CHUNK_BYTES}")
        if not 0 < self.plaintext_size <= MAX_BUNDLE_BYTES:
            raise bad("plaintext_size out of range")
        if not self.files or len(self.files) > MAX_FILES:
            raise bad(f"a bundle holds 1..{MAX_FILES} files")
        if len({f.name for f in self.files}) != len(self.files):
            raise bad("file names repeat")
        if sum(f.size for f in self.files) != self.plaintext_size:
            raise bad("file sizes do not add up to plaintext_size")
        if self.ciphertext_size != self.expected_ciphertext_size:
            raise bad("ciphertext_size does not match plaintext_size and chunk_size")
        object.__setattr__(self, "files", tuple(self.files))

    @property
    def chunk_count(self) -> int:
        return -(-self.plaintext_size // self.chunk_size)

    @property
    def expected_ciphertext_size(self) -> int:
        return self.plaintext_size + _TAG * (-(-self.plaintext_size // self.chunk_size))

    @property
    def file_map(self) -> Mapping[str, BundleFile]:
        return MappingProxyType({f.name: f for f in self.files})

    def to_map(self) -> dict[str, Any]:
        m: dict[str, Any] = {
            "v": 2 if self.release else 1,
            "format": self.format,
            "model_id": self.model_id,
            "version": self.version,
            "files": [f.to_map() for f in self.files],
            "plaintext_size": self.plaintext_size,
            "plaintext_sha256": self.plaintext_sha256,
            "ciphertext_size": self.ciphertext_size,
            "ciphertext_sha256": self.ciphertext_sha256,
            "chunk_size": self.chunk_size,
            "bundle_id": self.bundle_id,
            "salt": self.salt,
            "kms_key_id": self.kms_key_id,
            "wrapped_key_sha256": self.wrapped_key_sha256,
            "created": self.created,
            "owner": self.owner,
        }
        if self.release:
            m["release"] = self.release
        return m

    def to_cbor(self) -> bytes:
        return encode(self.to_map())

    @property
    def digest(self) -> bytes:
        """The manifest digest: what the enclave attests and receipts carry."""
        return _sha256(self.to_cbor())

    @classmethod
    def from_cbor(cls, data: bytes) -> Manifest:
        try:
            m = decode_deterministic(data, what="manifest", max_bytes=MAX_MANIFEST_BYTES)
        except DecodeError as e:
            raise ManifestError(f"M4 format: {e}") from e
        # type() is: True and 1.0 compare equal to 1, and would re-encode differently.
        if not isinstance(m, dict) or type(m.get("v")) is not int or m["v"] not in _KEYS_BY_VERSION:
            raise ManifestError("M4 format: not a version 1 or 2 manifest")
        if set(m) != _KEYS_BY_VERSION[m["v"]]:
            raise ManifestError(f"M4 format: not a version {m['v']} manifest (wrong fields)")
        release = m.get("release", 0)
        # M4: a v2 manifest names a release ≥ 1; release 0 is written only as v1, so
        # one manifest has one encoding (and one digest).
        if m["v"] == 2 and (
            not isinstance(release, int) or isinstance(release, bool) or release < 1
        ):
            raise ManifestError("M4 format: a version 2 manifest has a release of 1 or more")
        files = m["files"]
        if not isinstance(files, list) or not all(
            isinstance(f, dict) and set(f) == {"name", "size", "sha256"} for f in files
        ):
            raise ManifestError("M4 format: files must be a list of {name, size, sha256}")
        try:
            return cls(
                format=m["format"],
                model_id=m["model_id"],
                version=m["version"],
                files=tuple(BundleFile(f["name"], f["size"], f["sha256"]) for f in files),
                plaintext_size=m["plaintext_size"],
                plaintext_sha256=m["plaintext_sha256"],
                ciphertext_size=m["ciphertext_size"],
                ciphertext_sha256=m["ciphertext_sha256"],
                chunk_size=m["chunk_size"],
                bundle_id=m["bundle_id"],
                salt=m["salt"],
                kms_key_id=m["kms_key_id"],
                wrapped_key_sha256=m["wrapped_key_sha256"],
                created=m["created"],
                owner=m["owner"],
                release=release,
            )
        except ManifestError:
            raise
        except (TypeError, ValueError) as e:
            raise ManifestError(f"M4 format: {e}") from e


def sign_manifest(manifest: Manifest, owner_key: Ed25519PrivateKey) -> bytes:
    """``manifest.cose``: COSE_Sign1, EdDSA, kid = the owner's key id."""
    kid = owner_key_id(owner_key.public_key().public_bytes_raw())
    if kid != manifest.owner:
        raise LocalProtocolError("manifest.owner must be the signing key's id")
    return sign_eddsa(manifest.to_cbor(), owner_key, kid=kid)


@dataclass(frozen=True)
class VerifiedManifest:
    manifest: Manifest
    raw: bytes

    @property
    def digest(self) -> bytes:
        return self.manifest.digest

    def __bool__(self) -> bool:
        raise TypeError("a VerifiedManifest has no truth value; read its fields")


def verify_manifest(
    raw: bytes,
    owner_keys: Mapping[bytes, bytes],
    *,
    model_id: str | None = None,
    min_release: int = 0,
) -> VerifiedManifest:
    """Verify ``manifest.cose`` against the owner keys the verifier carries.

    ``owner_keys`` maps owner key id → raw Ed25519 public key. Checks M1-M5 and M11 of
    protocol.md §9; the payload is decoded only after the signature passed.
    ``min_release`` is the verifier's floor for this model (M11; 0: none). Does
    not check the files themselves (M6-M9 happen as the bundle is read), nor that
    this is the *newest* release: only that it is not below the floor.
    """
    if (
        isinstance(min_release, bool)
        or not isinstance(min_release, int)
        or not (0 <= min_release <= MAX_RELEASE)
    ):
        raise LocalProtocolError(f"min_release must be an integer 0..{MAX_RELEASE}")
    try:
        env = decode_sign1(raw, what="manifest", max_bytes=MAX_MANIFEST_BYTES)
    except DecodeError as e:
        raise ManifestError(f"M1 envelope: {e}") from e
    # M1: protected header exactly {alg: EdDSA, kid: 32 bytes}, a 64-byte signature.
    try:
        kid = eddsa_kid(env)
    except DecodeError as e:
        raise ManifestError(f"M1 envelope: {e}") from e
    # M2: signed by an owner key the verifier trusts.
    public = owner_keys.get(kid)
    if public is None:
        raise ManifestError(f"M2 owner: signed by an unknown key {kid.hex()[:16]}…")
    # M3: the signature, over the bytes received.
    try:
        ok = verify_eddsa(env, public)
    except Error as e:
        raise ManifestError(f"M3 signature: {e}") from e
    if not ok:
        raise ManifestError("M3 signature: the manifest signature does not verify")
    # M4: the payload (decoded only now).
    manifest = Manifest.from_cbor(env.payload)
    if not hmac.compare_digest(manifest.owner, kid):
        raise ManifestError("M4 format: manifest.owner differs from the signing key")
    # M5: the model the verifier asked for.
    if model_id is not None and manifest.model_id != model_id:
        raise ManifestError(f"M5 model: manifest is for {manifest.model_id!r}, not {model_id!r}")
    # M11: no rollback below the verifier's floor (an older bundle the same owner
    # signed for the same model is otherwise as valid as the newest).
    if manifest.release < min_release:
        raise ManifestError(
            f"M11 rollback: {manifest.model_id} release {manifest.release} is below "
            f"the floor {min_release}"
        )
    return VerifiedManifest(manifest, bytes(raw))


class BundleEncryptor:
    """Streams plaintext in, ciphertext out (§9.2); one chunk buffered at a time."""

    def __init__(
        self, data_key: bytes | bytearray, *, chunk_size: int, bundle_id: bytes, salt: bytes
    ) -> None:
        if not MIN_CHUNK_BYTES <= chunk_size <= MAX_CHUNK_BYTES:
            raise LocalProtocolError(f"chunk size must be {MIN_CHUNK_BYTES}..{MAX_CHUNK_BYTES}")
        self._cipher = ChunkCipher(data_key, bundle_id=bundle_id, salt=salt)
        self.chunk_size = chunk_size
        self._buf = bytearray()
        self._index = 0
        self._pt = hashlib.sha256()
        self._ct = hashlib.sha256()
        self.plaintext_size = 0
        self.ciphertext_size = 0
        self._done = False

    def update(self, data: bytes) -> bytes:
        """Feed plaintext; returns the ciphertext of every chunk now complete.

        A full chunk is held back until more data (or :meth:`finish`) shows whether
        it is the last one.
        """
        if self._done:
            raise LocalProtocolError("encryptor already finished")
        self._pt.update(data)
        self.plaintext_size += len(data)
        self._buf += data
        out = bytearray()
        while len(self._buf) > self.chunk_size:
            out += self._seal(bytes(self._buf[: self.chunk_size]), last=False)
            del self._buf[: self.chunk_size]
        return bytes(out)

    def finish(self) -> bytes:
        if self._done:
            raise LocalProtocolError("encryptor already finished")
        if not self.plaintext_size:
            raise LocalProtocolError("refusing to encrypt an empty bundle")
        self._done = True
        out = self._seal(bytes(self._buf), last=True)
        self._buf.clear()
        return out

    def _seal(self, chunk: bytes, *, last: bool) -> bytes:
        ct = self._cipher.seal(self._index, chunk, last=last)
        self._index += 1
        self._ct.update(ct)
        self.ciphertext_size += len(ct)
        return ct

    @property
    def plaintext_sha256(self) -> bytes:
        return self._pt.digest()

    @property
    def ciphertext_sha256(self) -> bytes:
        return self._ct.digest()


class BundleDecryptor:
    """Streams ``model.enc`` in and decrypts it into memory, chunk by chunk (§9.3).

    The plaintext lands in one preallocated buffer of ``plaintext_size`` bytes; the
    ciphertext is never held whole. :meth:`finish` runs M6-M9 and returns each file
    as a memoryview into that buffer.
    """

    def __init__(self, verified: VerifiedManifest, data_key: bytes | bytearray) -> None:
        m = verified.manifest
        self._m = m
        self._cipher = ChunkCipher(data_key, bundle_id=m.bundle_id, salt=m.salt)
        self._out = bytearray(m.plaintext_size)
        self._filled = 0
        # M8 hashes, fed as chunks decrypt (no second pass over the plaintext). The
        # files partition the plaintext, so their hashes cover every byte of it.
        self._file_index = 0
        self._file_left = m.files[0].size
        self._file_hashes = [hashlib.sha256() for _ in m.files]
        self._pending = bytearray()
        self._index = 0
        self._ct = hashlib.sha256()
        self._received = 0
        self._done = False

    def update(self, data: bytes) -> None:
        if self._done:
            raise LocalProtocolError("decryptor already finished")
        self._received += len(data)
        # M6: never more ciphertext than the manifest says.
        if self._received > self._m.ciphertext_size:
            raise ManifestError("M6 size: model.enc is longer than the manifest says")
        self._ct.update(data)
        self._pending += data
        step = self._m.chunk_size + _TAG
        while len(self._pending) >= step and self._index < self._m.chunk_count - 1:
            self._open(bytes(self._pending[:step]), last=False)
            del self._pending[:step]

    def _open(self, ct: bytes, *, last: bool) -> None:
        pt = self._cipher.open(self._index, ct, last=last)
        end = self._filled + len(pt)
        if end > len(self._out):
            raise ManifestError("M6 size: model.enc decrypts to more than the manifest says")
        self._out[self._filled : end] = pt
        self._filled = end
        self._index += 1
        view = memoryview(pt)
        while view:
            while self._file_left == 0 and self._file_index < len(self._m.files) - 1:
                self._file_index += 1
                self._file_left = self._m.files[self._file_index].size
            take = min(self._file_left, len(view))
            if take == 0:  # more plaintext than the files add up to (M8 below says so)
                break
            self._file_hashes[self._file_index].update(view[:take])
            self._file_left -= take
            view = view[take:]

    def finish(self) -> dict[str, memoryview]:
        if self._done:
            raise LocalProtocolError("decryptor already finished")
        self._done = True
        m = self._m
        # M6: exactly the ciphertext size the manifest names.
        if self._received != m.ciphertext_size:
            raise ManifestError(
                f"M6 size: model.enc is {self._received} bytes; "
                f"the manifest says {m.ciphertext_size}"
            )
        # M7: the ciphertext is the one the owner signed (before the last chunk opens).
        if not hmac.compare_digest(self._ct.digest(), m.ciphertext_sha256):
            raise ManifestError("M7 ciphertext: model.enc does not match the manifest's sha256")
        self._open(bytes(self._pending), last=True)
        self._pending.clear()
        # M8: the plaintext, whole and per file.
        if self._filled != m.plaintext_size:
            raise ManifestError("M8 plaintext: decrypted size differs from the manifest")
        view = memoryview(self._out)
        files: dict[str, memoryview] = {}
        offset = 0
        for f, h in zip(m.files, self._file_hashes, strict=True):
            if not hmac.compare_digest(h.digest(), f.sha256):
                raise ManifestError(f"M8 plaintext: {f.name} does not match the manifest")
            files[f.name] = view[offset : offset + f.size]
            offset += f.size
        return files
