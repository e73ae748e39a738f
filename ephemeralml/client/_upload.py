"""Put a packaged bundle into a model store: a local directory or S3.

Store layout (both kinds): ``<root>/<model id>/{manifest.cose, model.key, model.enc}``;
for S3 the root is ``s3://bucket/prefix``. Only ciphertext and signed metadata go
into a store. Uploads stream (boto3's managed transfer for S3), and a local copy is
made under temporary names and moved into place, manifest last.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ephemeralml.common._errors import ConfigError, TransportError
from ephemeralml.runtime._strict import parse_s3_url

from ._package import BUNDLE_FILES, MANIFEST_FILE

__all__ = ["parse_s3_url", "upload_local", "upload_s3"]

_MODEL_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def _check(bundle: Path, model_id: str) -> None:
    if not _MODEL_ID.match(model_id) or model_id in {".", ".."}:
        raise ConfigError(f"model id {model_id!r} must be 1-128 of A-Z a-z 0-9 . _ -")
    missing = [f for f in BUNDLE_FILES if not (bundle / f).is_file()]
    if missing:
        raise ConfigError(f"{bundle} is not a bundle: it lacks {', '.join(missing)}")


def upload_local(bundle: Path, store: Path, model_id: str) -> Path:
    _check(bundle, model_id)
    dest = store / model_id
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".upload-", dir=dest))
    try:
        for name in BUNDLE_FILES:
            shutil.copyfile(bundle / name, tmp / name)
        # The manifest last: a reader that finds it finds the files it names.
        for name in (*[n for n in BUNDLE_FILES if n != MANIFEST_FILE], MANIFEST_FILE):
            os.replace(tmp / name, dest / name)
    except OSError as e:
        raise ConfigError(f"cannot write to the store {dest}: {e.strerror}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def upload_s3(bundle: Path, url: str, model_id: str, *, s3: Any) -> list[str]:
    from botocore.exceptions import BotoCoreError, ClientError

    _check(bundle, model_id)
    bucket, prefix = parse_s3_url(url)
    keys = []
    for name in (*[n for n in BUNDLE_FILES if n != MANIFEST_FILE], MANIFEST_FILE):
        key = "/".join(p for p in (prefix, model_id, name) if p)
        try:
            s3.upload_file(str(bundle / name), bucket, key)
        except (ClientError, BotoCoreError) as e:
            raise TransportError(f"S3 upload of s3://{bucket}/{key} failed: {e}") from e
        keys.append(f"s3://{bucket}/{key}")
    return keys
