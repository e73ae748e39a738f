"""Put a packaged bundle into a model store: a local directory or S3.

Store layout (both kinds): ``<root>/<model id>/{manifest.cose, model.key, model.enc}``;
for S3 the root is ``s3://bucket/prefix``. Only ciphertext and signed metadata go
into a store. Uploads stream (boto3's managed transfer for S3), and a local copy is
made under temporary names and moved into place, manifest last.

Before a byte is written, the bundle is read as the enclave will read it
(:func:`check_bundle`): its manifest must parse and name the model id it is uploaded
as (an enclave asked for ``X`` refuses a manifest for ``Y``, M5, so such an upload
could only break the store's entry for ``X``), its ``model.key`` must be the key the
manifest names (M10) and its ``model.enc`` the size the manifest says (M6): a folder
that mixes files of two bundles is refused here rather than at the enclave. The
signature is not checked (the uploader need not hold the owner keys; the enclave
checks it, M2-M3, and ``ephemeral model show`` does on request).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ephemeralml.common._bundle import MAX_MANIFEST_BYTES, Manifest
from ephemeralml.common._cose import decode_sign1
from ephemeralml.common._errors import (
    ConfigError,
    ManifestError,
    RemoteProtocolError,
    TransportError,
)
from ephemeralml.common._store import is_model_id
from ephemeralml.runtime._home import read_limited
from ephemeralml.runtime._strict import parse_s3_url

from ._package import BUNDLE_FILES, MANIFEST_FILE, MODEL_ENC_FILE, MODEL_KEY_FILE

__all__ = ["check_bundle", "parse_s3_url", "upload_local", "upload_s3"]

#: A KMS CiphertextBlob is a few hundred bytes; anything this big is not a model.key.
_MAX_WRAPPED_KEY_BYTES = 64 * 1024


def _check_model_id(model_id: str) -> None:
    if not is_model_id(model_id):
        raise ConfigError(f"model id {model_id!r} must be 1-128 of A-Z a-z 0-9 . _ -")


def check_bundle(bundle: Path, model_id: str | None = None) -> Manifest:
    """The bundle's manifest, once the bundle is whole and is for ``model_id``.

    ``model_id`` None: the manifest's own. Raises :class:`ConfigError` (one line) for
    a model id the store cannot hold, a missing file, a manifest that does not parse,
    a manifest for another model, and files that are not the manifest's.
    """
    if model_id is not None:
        _check_model_id(model_id)
    missing = [f for f in BUNDLE_FILES if not (bundle / f).is_file()]
    if missing:
        raise ConfigError(f"{bundle} is not a bundle: it lacks {', '.join(missing)}")
    path = bundle / MANIFEST_FILE
    try:
        env = decode_sign1(
            read_limited(path, MAX_MANIFEST_BYTES), what="manifest", max_bytes=MAX_MANIFEST_BYTES
        )
        manifest = Manifest.from_cbor(env.payload)
    except (RemoteProtocolError, ManifestError) as e:
        raise ConfigError(f"{path} is not a bundle manifest: {e}") from e
    if model_id is not None and manifest.model_id != model_id:
        raise ConfigError(
            f"--model-id {model_id!r} does not match the bundle: its manifest is for "
            f"{manifest.model_id!r} ({path}); nothing uploaded"
        )
    _check_model_id(manifest.model_id)
    wrapped = read_limited(bundle / MODEL_KEY_FILE, _MAX_WRAPPED_KEY_BYTES)
    if hashlib.sha256(wrapped).digest() != manifest.wrapped_key_sha256:
        raise ConfigError(
            f"{bundle / MODEL_KEY_FILE} is not the data key its manifest names (M10): "
            "the folder mixes two bundles; nothing uploaded"
        )
    size = (bundle / MODEL_ENC_FILE).stat().st_size
    if size != manifest.ciphertext_size:
        raise ConfigError(
            f"{bundle / MODEL_ENC_FILE} is {size} bytes, its manifest says "
            f"{manifest.ciphertext_size} (M6): the folder mixes two bundles or is "
            "truncated; nothing uploaded"
        )
    return manifest


def _in_order() -> tuple[str, ...]:
    # The manifest last: a reader that finds it finds the files it names.
    return (*[n for n in BUNDLE_FILES if n != MANIFEST_FILE], MANIFEST_FILE)


def upload_local(bundle: Path, store: Path, model_id: str | None = None) -> Path:
    """Copy ``bundle`` to ``store/<model id>/``; returns that folder.

    Checked first (:func:`check_bundle`), so a refused bundle writes nothing; the
    copy is made in a temporary folder there and moved into place file by file,
    manifest last. On a failure the temporary folder is removed, and so is the
    model's folder if this upload made it.
    """
    manifest = check_bundle(bundle, model_id)
    dest = store / manifest.model_id
    made = not dest.exists()
    try:
        dest.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".upload-", dir=dest))
    except OSError as e:
        raise ConfigError(f"cannot write to the store {dest}: {e.strerror}") from e
    ok = False
    try:
        for name in BUNDLE_FILES:
            shutil.copyfile(bundle / name, tmp / name)
        for name in _in_order():
            os.replace(tmp / name, dest / name)
        ok = True
    except OSError as e:
        raise ConfigError(f"cannot write to the store {dest}: {e.strerror}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not ok and made:
            shutil.rmtree(dest, ignore_errors=True)
    return dest


def upload_s3(bundle: Path, url: str, model_id: str | None = None, *, s3: Any) -> list[str]:
    """Upload ``bundle`` to ``s3://bucket/prefix/<model id>/``, manifest last; returns
    the object URLs. Checked first (:func:`check_bundle`): a refused bundle puts nothing."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = parse_s3_url(url)
    manifest = check_bundle(bundle, model_id)
    keys = []
    for name in _in_order():
        key = "/".join(p for p in (prefix, manifest.model_id, name) if p)
        try:
            s3.upload_file(str(bundle / name), bucket, key)
        except (ClientError, BotoCoreError) as e:
            raise TransportError(f"S3 upload of s3://{bucket}/{key} failed: {e}") from e
        keys.append(f"s3://{bucket}/{key}")
    return keys
