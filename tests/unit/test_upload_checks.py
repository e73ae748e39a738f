"""``model upload`` reads the bundle as the enclave will before it writes a byte: the
manifest's model id (M5's concern), the wrapped key (M10) and the ciphertext size (M6).
A refused bundle leaves the store, local or S3 (moto), as it was."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from moto import mock_aws

from ephemeralml.client._cli import main
from ephemeralml.client._package import (
    MANIFEST_FILE,
    MODEL_ENC_FILE,
    MODEL_KEY_FILE,
    Source,
    package_model,
)
from ephemeralml.client._upload import check_bundle, upload_local, upload_s3
from ephemeralml.common._bundle import Manifest
from ephemeralml.common._errors import ConfigError

FILES = sorted([MANIFEST_FILE, MODEL_KEY_FILE, MODEL_ENC_FILE])


class FakeKms:
    """GenerateDataKey only: packaging needs nothing else."""

    def generate_data_key(self, KeyId: str, KeySpec: str) -> dict[str, Any]:
        assert KeySpec == "AES_256"
        return {"Plaintext": os.urandom(32), "CiphertextBlob": b"wrapped:" + os.urandom(40),
                "KeyId": f"arn:aws:kms:us-east-1:111122223333:key/{KeyId}"}  # fmt: skip


def bundle(out: Path, model_id: str = "tiny", *, release: int = 1) -> Manifest:
    return package_model(
        [Source("model.json", data=b"{}"), Source("model.onnx", data=os.urandom(5000))],
        model_id=model_id, version="1", kms=FakeKms(), kms_key_id="k1",
        owner_key=Ed25519PrivateKey.generate(), out_dir=out, chunk_size=4096, release=release,
        now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )  # fmt: skip


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), stdout=out), out.getvalue()


def test_a_manifest_for_another_model_is_refused_before_the_local_store_is_touched(tmp_path: Path) -> None:
    bundle(tmp_path / "b", "tiny")
    store = tmp_path / "store"
    with pytest.raises(ConfigError) as info:
        upload_local(tmp_path / "b", store, "other")
    assert str(info.value) == (
        "--model-id 'other' does not match the bundle: its manifest is for 'tiny' "
        f"({tmp_path / 'b' / MANIFEST_FILE}); nothing uploaded"
    )
    assert not store.exists()  # not even the store's folder


def test_a_refusal_leaves_an_existing_entry_as_it_was(tmp_path: Path) -> None:
    bundle(tmp_path / "old", "other")
    store = tmp_path / "store"
    upload_local(tmp_path / "old", store, "other")
    before = {n: (store / "other" / n).read_bytes() for n in FILES}
    bundle(tmp_path / "b", "tiny")
    with pytest.raises(ConfigError, match=r"^--model-id 'other' does not match the bundle: its manifest is for 'tiny'"):
        upload_local(tmp_path / "b", store, "other")
    assert sorted(p.name for p in (store / "other").iterdir()) == FILES
    assert {n: (store / "other" / n).read_bytes() for n in FILES} == before


def test_a_manifest_for_another_model_puts_nothing_into_s3(tmp_path: Path) -> None:
    bundle(tmp_path / "b", "tiny")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t")
        s3.create_bucket(Bucket="models")
        with pytest.raises(ConfigError) as info:
            upload_s3(tmp_path / "b", "s3://models/prod", "other", s3=s3)
        assert str(info.value) == (
            "--model-id 'other' does not match the bundle: its manifest is for 'tiny' "
            f"({tmp_path / 'b' / MANIFEST_FILE}); nothing uploaded"
        )
        assert s3.list_objects_v2(Bucket="models")["KeyCount"] == 0
        # The model id defaults to the manifest's; the manifest goes last.
        keys = upload_s3(tmp_path / "b", "s3://models/prod", s3=s3)
        assert keys == [f"s3://models/prod/tiny/{n}" for n in (MODEL_KEY_FILE, MODEL_ENC_FILE, MANIFEST_FILE)]
        listed = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="models")["Contents"])
        assert listed == [f"prod/tiny/{n}" for n in FILES]


def test_the_model_id_defaults_to_the_manifests(tmp_path: Path) -> None:
    m = bundle(tmp_path / "b", "tiny")
    assert check_bundle(tmp_path / "b") == m
    dest = upload_local(tmp_path / "b", tmp_path / "store")
    assert dest == tmp_path / "store" / "tiny"
    assert sorted(p.name for p in dest.iterdir()) == FILES


def test_a_folder_that_mixes_two_bundles_is_refused(tmp_path: Path) -> None:
    bundle(tmp_path / "a", "tiny")
    bundle(tmp_path / "b", "tiny")
    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "a", mixed)
    shutil.copyfile(tmp_path / "b" / MODEL_KEY_FILE, mixed / MODEL_KEY_FILE)
    with pytest.raises(ConfigError) as info:
        upload_local(mixed, tmp_path / "store", "tiny")
    assert str(info.value) == (
        f"{mixed / MODEL_KEY_FILE} is not the data key its manifest names (M10): the folder "
        "mixes two bundles; nothing uploaded"
    )
    shutil.copyfile(tmp_path / "a" / MODEL_KEY_FILE, mixed / MODEL_KEY_FILE)
    enc = (mixed / MODEL_ENC_FILE).read_bytes()
    (mixed / MODEL_ENC_FILE).write_bytes(enc[:-1])
    with pytest.raises(ConfigError) as info:
        upload_local(mixed, tmp_path / "store", "tiny")
    assert str(info.value) == (
        f"{mixed / MODEL_ENC_FILE} is {len(enc) - 1} bytes, its manifest says {len(enc)} (M6): "
        "the folder mixes two bundles or is truncated; nothing uploaded"
    )
    (mixed / MANIFEST_FILE).write_bytes(b"\xd2junk")
    with pytest.raises(ConfigError, match=rf"^{mixed / MANIFEST_FILE} is not a bundle manifest: "):
        upload_local(mixed, tmp_path / "store", "tiny")
    assert not (tmp_path / "store").exists()


def test_a_failed_copy_leaves_no_half_written_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle(tmp_path / "b", "tiny")
    real = shutil.copyfile
    copied: list[str] = []

    def failing(src: Any, dst: Any, **kw: Any) -> Any:
        if copied:
            raise OSError(28, "No space left on device")
        copied.append(str(src))
        return real(src, dst, **kw)

    monkeypatch.setattr(shutil, "copyfile", failing)
    store = tmp_path / "store"
    with pytest.raises(ConfigError) as info:
        upload_local(tmp_path / "b", store, "tiny")
    assert str(info.value) == f"cannot write to the store {store / 'tiny'}: No space left on device"
    assert list(store.iterdir()) == []  # neither the model's folder nor a temporary one


def test_cli_upload(tmp_path: Path) -> None:
    bundle(tmp_path / "b", "tiny")
    code, out = run("model", "upload", str(tmp_path / "b"), "--model-id", "other", "--to", str(tmp_path / "store"), "--json")
    assert code == 2
    assert out.strip() == (
        '{"error": {"code": "config", "message": "--model-id \'other\' does not match the bundle: its '
        f"manifest is for 'tiny' ({tmp_path / 'b' / MANIFEST_FILE}); nothing uploaded\"}}}}"
    )
    assert not (tmp_path / "store").exists()
    code, out = run("model", "upload", str(tmp_path / "b"), "--to", str(tmp_path / "store"))
    assert (code, out) == (0, f"uploaded tiny to {tmp_path / 'store' / 'tiny'}\n")
    code, out = run("model", "upload", str(tmp_path / "b"), "--to", str(tmp_path / "store"), "--json")
    assert (code, json.loads(out)) == (0, {"model_id": "tiny", "to": str(tmp_path / "store" / "tiny")})
    # --mock: the mock host's store in the home.
    home = tmp_path / "home"
    code, out = run("model", "upload", str(tmp_path / "b"), "--mock", "--home", str(home))
    assert (code, out) == (0, f"uploaded tiny to {home / 'store' / 'tiny'}\n")
    assert hashlib.sha256((home / "store" / "tiny" / MANIFEST_FILE).read_bytes()).digest() == hashlib.sha256(
        (tmp_path / "b" / MANIFEST_FILE).read_bytes()
    ).digest()


def test_cli_upload_needs_one_destination(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle(tmp_path / "b", "tiny")
    for extra in ([], ["--to", str(tmp_path / "s"), "--mock"]):
        code, _ = run("model", "upload", str(tmp_path / "b"), *extra)
        assert code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            "ephemeral: error: give exactly one of --to DIR, --s3 s3://bucket/prefix or --mock "
            "(the mock host's store)"
        )


def test_cli_upload_to_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    bundle(tmp_path / "b", "tiny")
    for name, value in (("AWS_ACCESS_KEY_ID", "t"), ("AWS_SECRET_ACCESS_KEY", "t"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="models")
        assert run("model", "upload", str(tmp_path / "b"), "--model-id", "other", "--s3", "s3://models/p")[0] == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            "ephemeral: error: --model-id 'other' does not match the bundle: its manifest is for 'tiny' "
            f"({tmp_path / 'b' / MANIFEST_FILE}); nothing uploaded"
        )
        assert s3.list_objects_v2(Bucket="models")["KeyCount"] == 0
        code, out = run("model", "upload", str(tmp_path / "b"), "--s3", "s3://models/p")
        assert (code, out) == (0, "uploaded tiny to s3://models/p/tiny/\n")
        code, out = run("model", "upload", str(tmp_path / "b"), "--s3", "s3://models/p", "--json")
        assert code == 0 and json.loads(out) == {
            "model_id": "tiny", "to": "s3://models/p/tiny/",
            "keys": [f"s3://models/p/tiny/{n}" for n in (MODEL_KEY_FILE, MODEL_ENC_FILE, MANIFEST_FILE)],
        }  # fmt: skip
