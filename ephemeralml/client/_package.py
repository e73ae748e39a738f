"""Model packaging, on the model owner's machine: ``ephemeral model package``.

Streams the model's files through :class:`BundleEncryptor` under a fresh data key
from KMS ``GenerateDataKey`` and writes the three bundle files of protocol.md §9:
``model.enc``, ``model.key`` (the KMS-wrapped data key) and ``manifest.cose``
(signed by the owner's Ed25519 key). Memory use is one chunk, whatever the model's
size. Everything is written into a temporary folder beside the output and moved
into place at the end, so a failure leaves nothing half-written.

In mock mode (``ephemeral model package --mock``) the KMS is the local one of the mock
deployment, reached as the model owner with the credentials ``ephemeral-host --mock``
made (:class:`MockKms`): no AWS credentials, and a missing host is a one-line
``config``/``transport`` error that says what to start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ephemeralml.common._bundle import (
    DEFAULT_CHUNK_BYTES,
    MAX_RELEASE,
    BundleEncryptor,
    BundleFile,
    Manifest,
    owner_key_id,
    sign_manifest,
)
from ephemeralml.common._errors import ConfigError, Error, KeyReleaseError, TransportError
from ephemeralml.common._modelfiles import MODEL_ID
from ephemeralml.runtime._home import (
    MOCK_KMS_CREDENTIALS,
    MOCK_OWNER_KEY,
    MOCK_OWNERS,
    MOCK_PROVISION,
    write_atomic,
)
from ephemeralml.runtime._ports import Ports
from ephemeralml.runtime._strict import generate_ed25519_key, load_ed25519_key, loads_json

from ._modeldir import default_model_files

__all__ = [
    "BUNDLE_FILES",
    "MANIFEST_FILE",
    "MODEL_ENC_FILE",
    "MODEL_KEY_FILE",
    "MockKms",
    "Source",
    "default_sources",
    "generate_owner_key",
    "load_owner_key",
    "package_model",
]

MODEL_ENC_FILE = "model.enc"
MODEL_KEY_FILE = "model.key"
MANIFEST_FILE = "manifest.cose"
BUNDLE_FILES = (MANIFEST_FILE, MODEL_KEY_FILE, MODEL_ENC_FILE)

_READ_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Source:
    """One file of the model: its name in the bundle, and where its bytes are."""

    name: str
    path: Path | None = None
    data: bytes | None = None

    def open(self) -> Any:
        if self.data is not None:
            import io

            return io.BytesIO(self.data)
        assert self.path is not None
        try:
            return open(self.path, "rb")
        except OSError as e:
            raise ConfigError(f"cannot read {self.path}: {e.strerror}") from e


def model_json(model_id: str, *, dim: int = 384, max_seq_tokens: int = 256) -> bytes:
    meta = {
        "model_id": model_id,
        "dim": dim,
        "max_seq_tokens": max_seq_tokens,
        "pooling": "mean",
        "normalize": True,
    }
    return (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()


def dir_sources(model_dir: Path) -> list[Source]:
    """A model directory as written by ``write_model_dir``: small files first."""
    names = ("model.json", "tokenizer.json", "model.onnx")
    missing = [n for n in names if not (model_dir / n).is_file()]
    if missing:
        raise ConfigError(f"model directory {model_dir} lacks {', '.join(missing)}")
    return [Source(n, path=model_dir / n) for n in names]


def default_sources() -> tuple[str, list[Source]]:
    """The packaged all-MiniLM-L6-v2, read from the installed packages' files."""
    files = default_model_files()  # checks the packages and the pinned ONNX digest
    return MODEL_ID, [
        Source(
            "model.json",
            data=model_json(files.model_id, dim=files.dim, max_seq_tokens=files.max_seq_tokens),
        ),
        Source("tokenizer.json", data=files.tokenizer_json),
        Source("model.onnx", data=files.onnx),
    ]


def generate_owner_key(path: Path) -> bytes:
    """Write a new Ed25519 owner key (PKCS#8 PEM, 0600); returns the raw public key."""
    return generate_ed25519_key(path)


def load_owner_key(path: Path) -> Ed25519PrivateKey:
    return load_ed25519_key(path, what="owner key")


def _generate_data_key(kms: Any, key_id: str) -> tuple[bytearray, bytes, str]:
    from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    try:
        r = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256")
    except (BotoConnectionError, HTTPClientError) as e:
        # No answer at all is the network's fault, not a refusal to release a key.
        where = getattr(getattr(kms, "meta", None), "endpoint_url", None) or "KMS"
        raise TransportError(f"KMS GenerateDataKey: cannot reach {where}: {e}") from e
    except ClientError as e:
        err = e.response.get("Error", {})
        raise KeyReleaseError(
            f"KMS GenerateDataKey failed: {err.get('Code')}: {err.get('Message')}"
        ) from e
    except BotoCoreError as e:
        raise KeyReleaseError(f"KMS GenerateDataKey failed: {e}") from e
    plaintext = bytearray(r["Plaintext"])
    if len(plaintext) != 32:
        raise KeyReleaseError("KMS returned a data key that is not 32 bytes")
    return plaintext, bytes(r["CiphertextBlob"]), str(r["KeyId"])


def package_model(
    sources: Sequence[Source],
    *,
    model_id: str,
    version: str,
    kms: Any,
    kms_key_id: str,
    owner_key: Ed25519PrivateKey,
    out_dir: Path,
    chunk_size: int = DEFAULT_CHUNK_BYTES,
    now: datetime | None = None,
    release: int = 0,
) -> Manifest:
    """Encrypt ``sources`` into ``out_dir`` (created; must not hold a bundle yet).

    ``version`` is a free-text label; ``release`` orders this model's bundles
    (protocol.md §9.1, M11): raise it with every bundle that may have to retire an
    older one. 0 (the default) is unordered, and any enclave floor refuses it.
    """
    if isinstance(release, bool) or not isinstance(release, int) or not 0 <= release <= MAX_RELEASE:
        raise ConfigError(f"release must be an integer 0..{MAX_RELEASE}")
    if any((out_dir / f).exists() for f in BUNDLE_FILES):
        raise ConfigError(f"{out_dir} already holds a bundle; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    data_key, wrapped, key_arn = _generate_data_key(kms, kms_key_id)
    tmp = Path(tempfile.mkdtemp(prefix=".package-", dir=out_dir))
    try:
        bundle_id, salt = secrets.token_bytes(16), secrets.token_bytes(32)
        enc = BundleEncryptor(data_key, chunk_size=chunk_size, bundle_id=bundle_id, salt=salt)
        files: list[BundleFile] = []
        with open(tmp / MODEL_ENC_FILE, "wb") as out:
            for src in sources:
                h, size = hashlib.sha256(), 0
                with src.open() as f:
                    while block := f.read(_READ_BYTES):
                        h.update(block)
                        size += len(block)
                        out.write(enc.update(block))
                files.append(BundleFile(src.name, size, h.digest()))
            out.write(enc.finish())
            out.flush()
            os.fsync(out.fileno())
        manifest = Manifest(
            model_id=model_id,
            version=version,
            files=tuple(files),
            plaintext_size=enc.plaintext_size,
            plaintext_sha256=enc.plaintext_sha256,
            ciphertext_size=enc.ciphertext_size,
            ciphertext_sha256=enc.ciphertext_sha256,
            chunk_size=chunk_size,
            bundle_id=bundle_id,
            salt=salt,
            kms_key_id=key_arn,
            wrapped_key_sha256=hashlib.sha256(wrapped).digest(),
            created=(now or datetime.now(UTC)).isoformat(timespec="seconds").replace("+00:00", "Z"),
            owner=owner_key_id(owner_key.public_key().public_bytes_raw()),
            release=release,
        )
        write_atomic(tmp / MODEL_KEY_FILE, wrapped)
        write_atomic(tmp / MANIFEST_FILE, sign_manifest(manifest, owner_key))
        # Move into place; the manifest last, so its presence means a whole bundle.
        for name in (MODEL_ENC_FILE, MODEL_KEY_FILE, MANIFEST_FILE):
            os.replace(tmp / name, out_dir / name)
        return manifest
    finally:
        # Best effort: Python cannot promise the key bytes leave no copy, but the
        # buffer we own is zeroed as soon as the encryptor no longer needs it.
        data_key[:] = bytes(len(data_key))
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)


# ---------------------------------------------------------------- mock mode

#: What ``mock/_kms_principals.py`` writes in :data:`MOCK_KMS_CREDENTIALS` (the client
#: never imports the mock package; a unit test holds the two to the same values).
MOCK_CREDENTIALS_FORMAT = "ephemeralml-mock-kms-credentials/1"
#: The model owner's entry in that file (the mock's ``MODEL_OWNER``).
MOCK_OWNER_PRINCIPAL = "model-owner"
#: What every mock-mode error tells the user to start.
START_MOCK_HOST = "start `ephemeral-host --mock` first"
#: KMS error codes that mean "these credentials are not that server's".
_CREDENTIAL_CODES = frozenset(
    {"UnrecognizedClientException", "InvalidSignatureException", "MissingAuthenticationToken",
     "MissingAuthenticationTokenException"}
)  # fmt: skip


@dataclass(frozen=True)
class MockKms:
    """The local KMS of a mock deployment, as the model owner reaches it.

    ``url`` is the local KMS server (``http://127.0.0.1:BASE+9``); the credentials are
    the model owner's, from ``$EPHEMERALML_HOME/mock-kms/credentials.json`` (made by
    ``ephemeral-host --mock``). Nothing here asks for AWS credentials.
    """

    home: Path
    url: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)

    @property
    def credentials_path(self) -> Path:
        return self.home / MOCK_KMS_CREDENTIALS

    @classmethod
    def find(cls, home: Path, ports: Ports, *, url: str | None = None) -> MockKms:
        """The model owner's credentials in ``home``; ``url`` defaults to the base
        port's local KMS. Raises :class:`ConfigError` saying what to start."""
        path = home / MOCK_KMS_CREDENTIALS
        try:
            raw = path.read_bytes()
        except FileNotFoundError as e:
            raise ConfigError(
                f"no mock KMS credentials at {path}: {START_MOCK_HOST} (it makes them), "
                "or set EPHEMERALML_HOME to the host's home"
            ) from e
        except OSError as e:
            raise ConfigError(f"cannot read mock KMS credentials {path}: {e.strerror}") from e
        try:
            data = loads_json(raw)
            if not isinstance(data, dict) or data.get("format") != MOCK_CREDENTIALS_FORMAT:
                raise ValueError(f"not a {MOCK_CREDENTIALS_FORMAT} file")
            entry = data["principals"][MOCK_OWNER_PRINCIPAL]
            fields = [entry[k] for k in ("AccessKeyId", "SecretAccessKey", "SessionToken")]
            if not all(isinstance(f, str) and f for f in fields):
                raise ValueError(f"the entry for {MOCK_OWNER_PRINCIPAL} is malformed")
        except (KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
            detail = f"no {e}" if isinstance(e, KeyError) else str(e)
            raise ConfigError(
                f"mock KMS credentials {path} are unreadable or corrupt ({detail}): "
                "restart `ephemeral-host --mock`, which checks and keeps them"
            ) from e
        return cls(home, url or f"http://127.0.0.1:{ports.mock_kms}", *fields)

    def kms_key_id(self) -> str:
        """The KMS key mock provisioning made (``mock-provision.json``)."""
        path = self.home / MOCK_PROVISION
        try:
            key_id = loads_json(path.read_bytes())["kms_key_id"]
            if not isinstance(key_id, str) or not key_id:
                raise ValueError("kms_key_id is not a key id")
        except FileNotFoundError as e:
            raise ConfigError(
                f"no mock KMS key at {path}: {START_MOCK_HOST} (it makes the key), "
                "or give --kms-key-id"
            ) from e
        except (OSError, KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
            raise ConfigError(
                f"cannot read the mock KMS key id from {path} ({e}): restart "
                "`ephemeral-host --mock`, or give --kms-key-id"
            ) from e
        return key_id

    def owner_key_path(self) -> Path:
        """The mock model owner's signing key: the only one a mock enclave trusts."""
        path = self.home / MOCK_OWNER_KEY
        if not path.is_file():
            raise ConfigError(
                f"no mock model-owner key at {path}: {START_MOCK_HOST} (it makes it), "
                "or give --owner-key"
            )
        return path

    def trusts_owner(self, public_key: bytes) -> bool:
        """Whether a mock enclave of this home would accept manifests signed by that
        key (it is listed in ``published/model-owners.txt``)."""
        try:
            text = (self.home / MOCK_OWNERS).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError):
            return False
        return public_key.hex() in {ln.split("#", 1)[0].strip().lower() for ln in text.splitlines()}

    def client(self, region: str) -> Any:
        """A boto3 KMS client of the local server, signed as the model owner. One try
        per call and a short connect timeout: a missing server fails at once."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "kms", region_name=region, endpoint_url=self.url,
            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key,
            aws_session_token=self.session_token,
            config=Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=30),
        )  # fmt: skip

    def explain(self, e: Error, kms_key_id: str) -> Error:
        """A packaging error from this KMS, said as what to do about it."""
        if isinstance(e, TransportError):
            return TransportError(
                f"mock KMS at {self.url} is not reachable: {START_MOCK_HOST} (it serves the "
                "local KMS on 127.0.0.1:BASE+9; give this command the host's --base-port "
                "or EPHEMERALML_BASE_PORT)"
            )
        code = kms_error_code(e)
        if code in _CREDENTIAL_CODES:
            return ConfigError(
                f"the mock KMS at {self.url} does not know the credentials in "
                f"{self.credentials_path} ({code}): is it the host of this home? Start "
                f"`ephemeral-host --mock` with EPHEMERALML_HOME={self.home}"
            )
        if code == "NotFoundException":
            return ConfigError(
                f"the mock KMS at {self.url} has no key {kms_key_id}: restart "
                "`ephemeral-host --mock` (it makes the key), or give --kms-key-id"
            )
        return e


def kms_error_code(e: BaseException) -> str | None:
    """The AWS error code behind one of our errors (its ``__cause__``), if any."""
    response = getattr(e.__cause__, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code")
    return str(code) if code else None
