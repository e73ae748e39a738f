"""Model packaging against KMS (moto's KMS: GenerateDataKey and Decrypt without Recipient)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import boto3
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from moto import mock_aws

from ephemeralml.client._package import (
    MANIFEST_FILE,
    MODEL_ENC_FILE,
    MODEL_KEY_FILE,
    Source,
    generate_owner_key,
    load_owner_key,
    package_model,
)
from ephemeralml.common._bundle import BundleDecryptor, owner_key_id, verify_manifest
from ephemeralml.common._errors import ConfigError, KeyReleaseError


@pytest.fixture
def kms():  # type: ignore[no-untyped-def]
    with mock_aws():
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        client = boto3.client("kms", region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t")
        yield client


def _sources() -> list[Source]:
    return [
        Source("model.json", data=b'{"model_id": "tiny"}'),
        Source("tokenizer.json", data=b'{"vocab": {}}'),
        Source("model.onnx", data=os.urandom(3 * 4096 + 5)),
    ]


def test_package_then_decrypt_with_the_released_key(kms, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    owner = Ed25519PrivateKey.generate()
    out = tmp_path / "bundle"
    src = _sources()
    m = package_model(src, model_id="tiny", version="7", kms=kms, kms_key_id=key_id, owner_key=owner, out_dir=out, chunk_size=4096)
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST_FILE, MODEL_KEY_FILE, MODEL_ENC_FILE])
    wrapped = (out / MODEL_KEY_FILE).read_bytes()
    assert m.wrapped_key_sha256 == hashlib.sha256(wrapped).digest()
    assert m.kms_key_id.endswith(key_id)
    pub = owner.public_key().public_bytes_raw()
    v = verify_manifest((out / MANIFEST_FILE).read_bytes(), {owner_key_id(pub): pub}, model_id="tiny")
    assert v.manifest == m and [f.name for f in m.files] == ["model.json", "tokenizer.json", "model.onnx"]
    data_key = kms.decrypt(CiphertextBlob=wrapped)["Plaintext"]
    d = BundleDecryptor(v, data_key)
    d.update((out / MODEL_ENC_FILE).read_bytes())
    files = d.finish()
    assert {k: bytes(v) for k, v in files.items()} == {s.name: s.data for s in src}
    # The ciphertext holds no plaintext.
    assert src[2].data[:64] not in (out / MODEL_ENC_FILE).read_bytes()  # type: ignore[index]


def test_kms_refusal_leaves_nothing_behind(kms, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "bundle"
    with pytest.raises(KeyReleaseError, match=r"^KMS GenerateDataKey failed: NotFoundException"):
        package_model(_sources(), model_id="tiny", version="1", kms=kms, kms_key_id="no-such-key",
                      owner_key=Ed25519PrivateKey.generate(), out_dir=out)  # fmt: skip
    assert list(out.iterdir()) == []


def test_unreadable_source_leaves_nothing_behind(kms, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    out = tmp_path / "bundle"
    with pytest.raises(ConfigError, match=r"^cannot read .*missing\.onnx"):
        package_model([Source("model.onnx", path=tmp_path / "missing.onnx")], model_id="x", version="1",
                      kms=kms, kms_key_id=key_id, owner_key=Ed25519PrivateKey.generate(), out_dir=out)  # fmt: skip
    assert list(out.iterdir()) == []


def test_refuses_to_overwrite_a_bundle(kms, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    out = tmp_path / "bundle"
    args = dict(model_id="tiny", version="1", kms=kms, kms_key_id=key_id, owner_key=Ed25519PrivateKey.generate(), out_dir=out)
    package_model(_sources(), **args)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="already holds a bundle"):
        package_model(_sources(), **args)  # type: ignore[arg-type]


def test_owner_key_files(tmp_path: Path) -> None:
    path = tmp_path / "owner.pem"
    pub = generate_owner_key(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert load_owner_key(path).public_key().public_bytes_raw() == pub
    with pytest.raises(ConfigError, match="exists; refusing to overwrite a key"):
        generate_owner_key(path)
    (tmp_path / "junk.pem").write_text("nope")
    with pytest.raises(ConfigError, match="is not an unencrypted PEM private key"):
        load_owner_key(tmp_path / "junk.pem")
