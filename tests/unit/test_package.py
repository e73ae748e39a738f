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
from ephemeralml.common._bundle import MAX_RELEASE, BundleDecryptor, owner_key_id, verify_manifest
from ephemeralml.common._errors import ConfigError, KeyReleaseError, ManifestError


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
    onnx = src[2].data
    assert onnx is not None
    assert onnx[:64] not in (out / MODEL_ENC_FILE).read_bytes()


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
    owner = Ed25519PrivateKey.generate()
    package_model(_sources(), model_id="tiny", version="1", kms=kms, kms_key_id=key_id, owner_key=owner, out_dir=out)
    with pytest.raises(ConfigError, match="already holds a bundle"):
        package_model(_sources(), model_id="tiny", version="1", kms=kms, kms_key_id=key_id, owner_key=owner, out_dir=out)


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


def test_upload_to_a_local_store_and_to_s3(kms, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from ephemeralml.client._upload import parse_s3_url, upload_local, upload_s3

    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    bundle = tmp_path / "bundle"
    package_model(_sources(), model_id="tiny", version="1", kms=kms, kms_key_id=key_id,
                  owner_key=Ed25519PrivateKey.generate(), out_dir=bundle)  # fmt: skip
    dest = upload_local(bundle, tmp_path / "store", "tiny")
    assert dest == tmp_path / "store" / "tiny"
    for name in (MANIFEST_FILE, MODEL_KEY_FILE, MODEL_ENC_FILE):
        assert (dest / name).read_bytes() == (bundle / name).read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == sorted([MANIFEST_FILE, MODEL_KEY_FILE, MODEL_ENC_FILE])

    s3 = boto3.client("s3", region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t")
    s3.create_bucket(Bucket="models")
    keys = upload_s3(bundle, "s3://models/prod", "tiny", s3=s3)
    assert keys[-1] == "s3://models/prod/tiny/manifest.cose"
    body = s3.get_object(Bucket="models", Key="prod/tiny/model.enc")["Body"].read()
    assert body == (bundle / MODEL_ENC_FILE).read_bytes()
    assert parse_s3_url("s3://models") == ("models", "")
    with pytest.raises(ConfigError, match="is not s3://bucket"):
        parse_s3_url("http://models")
    with pytest.raises(ConfigError, match=r"model id '\.\./x' must be"):
        upload_local(bundle, tmp_path / "store", "../x")
    with pytest.raises(ConfigError, match="is not a bundle: it lacks manifest.cose, model.key, model.enc"):
        upload_local(tmp_path, tmp_path / "store", "tiny")


def test_model_cli_keygen_package_upload(kms, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import io
    import json

    from ephemeralml.client._cli import main

    def run(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        return main(list(argv), stdout=out), out.getvalue()

    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    owner = tmp_path / "owner.pem"
    code, out = run("model", "keygen", "--out", str(owner))
    assert code == 0 and out.startswith(f"owner key written to {owner}")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for s in _sources():
        (model_dir / s.name).write_bytes(s.data or b"")
    code, out = run("model", "package", "--model-dir", str(model_dir), "--model-id", "tiny", "--version", "2",
                    "--owner-key", str(owner), "--kms-key-id", key_id, "--out", str(tmp_path / "b"), "--json")  # fmt: skip
    assert code == 0
    info = json.loads(out)
    assert info["model_id"] == "tiny" and info["version"] == "2" and len(info["manifest_digest"]) == 64
    assert info["release"] == 0  # no --release: unordered, refused by any enclave floor (M11)
    code, out = run("model", "upload", str(tmp_path / "b"), "--model-id", "tiny", "--to", str(tmp_path / "store"))
    assert code == 0 and out.strip() == f"uploaded tiny to {tmp_path / 'store' / 'tiny'}"
    assert run("model", "package", "--model-dir", str(model_dir), "--owner-key", str(owner),
               "--kms-key-id", key_id, "--out", str(tmp_path / "c"))[0] == 2  # fmt: skip


def test_package_a_release(kms, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    owner = Ed25519PrivateKey.generate()
    pub = owner.public_key().public_bytes_raw()
    m = package_model(_sources(), model_id="tiny", version="1.4.2", kms=kms, kms_key_id=key_id, owner_key=owner,
                      out_dir=tmp_path / "b", chunk_size=4096, release=3)  # fmt: skip
    assert (m.version, m.release) == ("1.4.2", 3)
    raw = (tmp_path / "b" / MANIFEST_FILE).read_bytes()
    assert verify_manifest(raw, {owner_key_id(pub): pub}, model_id="tiny", min_release=3).manifest == m
    with pytest.raises(ManifestError) as info:
        verify_manifest(raw, {owner_key_id(pub): pub}, model_id="tiny", min_release=4)
    assert str(info.value) == "M11 rollback: tiny release 3 is below the floor 4"


@pytest.mark.parametrize("release", [-1, MAX_RELEASE + 1, True])
def test_a_bad_release_packages_nothing(kms, tmp_path: Path, release: int) -> None:  # type: ignore[no-untyped-def]
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    with pytest.raises(ConfigError) as info:
        package_model(_sources(), model_id="tiny", version="1", kms=kms, kms_key_id=key_id,
                      owner_key=Ed25519PrivateKey.generate(), out_dir=tmp_path / "b", release=release)  # fmt: skip
    assert str(info.value) == f"release must be an integer 0..{MAX_RELEASE}"
    assert not (tmp_path / "b").exists()


def test_model_cli_package_release(kms, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import io
    import json

    from ephemeralml.client._cli import main

    def run(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        return main(list(argv), stdout=out), out.getvalue()

    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    owner = tmp_path / "owner.pem"
    generate_owner_key(owner)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for s in _sources():
        (model_dir / s.name).write_bytes(s.data or b"")
    common = ["model", "package", "--model-dir", str(model_dir), "--model-id", "tiny", "--owner-key", str(owner),
              "--kms-key-id", key_id]  # fmt: skip
    code, out = run(*common, "--version", "2026-11", "--release", "5", "--out", str(tmp_path / "b"), "--json")
    assert code == 0
    info = json.loads(out)
    assert (info["version"], info["release"]) == ("2026-11", 5)
    code, out = run(*common, "--release", "6", "--out", str(tmp_path / "c"))
    assert code == 0 and out.startswith("packaged tiny 1 release 6: ")
    assert run(*common, "--release", "-1", "--out", str(tmp_path / "d"))[0] == 2
