"""``ephemeral model show``: a bundle's manifest, verified against the owner keys, printed
as text and as JSON; every failure one line; ``--digest`` finds the release a receipt
names."""

from __future__ import annotations

import io
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ephemeralml.client._cli import main
from ephemeralml.client._model_show import load_owner_keys_file
from ephemeralml.client._package import (
    MANIFEST_FILE,
    MODEL_ENC_FILE,
    MODEL_KEY_FILE,
    Source,
    package_model,
)
from ephemeralml.common._bundle import Manifest, owner_key_id
from ephemeralml.common._errors import ConfigError
from ephemeralml.runtime._home import MOCK_OWNERS

OWNER = Ed25519PrivateKey.generate()
PUB = OWNER.public_key().public_bytes_raw()
KID = owner_key_id(PUB)


class FakeKms:
    def generate_data_key(self, KeyId: str, KeySpec: str) -> dict[str, Any]:
        return {"Plaintext": os.urandom(32), "CiphertextBlob": b"wrapped:" + os.urandom(40),
                "KeyId": f"arn:aws:kms:us-east-1:111122223333:key/{KeyId}"}  # fmt: skip


def bundle(out: Path, *, model_id: str = "tiny", release: int = 3, owner: Ed25519PrivateKey = OWNER) -> Manifest:
    return package_model(
        [Source("model.json", data=b'{"m": 1}'), Source("model.onnx", data=os.urandom(9000))],
        model_id=model_id, version="1.4.2", kms=FakeKms(), kms_key_id="k1", owner_key=owner,
        out_dir=out, chunk_size=4096, release=release, now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )  # fmt: skip


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), stdout=out), out.getvalue()


def last_err(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def expected_json(m: Manifest, manifest: Path, *, checked: bool = True) -> dict[str, Any]:
    return {
        "verified": True,
        "manifest": str(manifest),
        "model_id": m.model_id,
        "release": m.release,
        "version": m.version,
        "manifest_digest": m.digest.hex(),
        "manifest_format": 2 if m.release else 1,
        "owner_key_id": KID.hex(),
        "owner_key": PUB.hex(),
        "kms_key_id": "arn:aws:kms:us-east-1:111122223333:key/k1",
        "created": "2026-01-02T03:04:05Z",
        "files": [{"name": f.name, "size": f.size, "sha256": f.sha256.hex()} for f in m.files],
        "plaintext_size": 9008,
        "plaintext_sha256": m.plaintext_sha256.hex(),
        "ciphertext_size": 9008 + 3 * 16,
        "ciphertext_sha256": m.ciphertext_sha256.hex(),
        "chunk_size": 4096,
        "chunk_count": 3,
        "bundle_id": m.bundle_id.hex(),
        "wrapped_key_sha256": m.wrapped_key_sha256.hex(),
        "bundle_files_checked": checked,
    }


def test_show_a_bundle_as_text(tmp_path: Path) -> None:
    m = bundle(tmp_path / "b")
    code, out = run("model", "show", str(tmp_path / "b"), "--owner-key", PUB.hex())
    assert code == 0
    f0, f1 = m.files
    assert out.splitlines() == [
        f"manifest {tmp_path / 'b' / MANIFEST_FILE} VERIFIED: signed by owner {KID.hex()[:16]}…",
        "  model         tiny",
        "  release       3",
        "  version       1.4.2",
        f"  digest        {m.digest.hex()} (receipts carry it, policies pin it)",
        f"  owner key     {PUB.hex()} (id {KID.hex()})",
        "  KMS key       arn:aws:kms:us-east-1:111122223333:key/k1",
        "  created       2026-01-02T03:04:05Z",
        f"  file          model.json 8 bytes sha256 {f0.sha256.hex()}",
        f"  file          model.onnx 9000 bytes sha256 {f1.sha256.hex()}",
        f"  plaintext     9008 bytes sha256 {m.plaintext_sha256.hex()}",
        f"  ciphertext    9056 bytes in 3 chunk(s) of 4096, sha256 {m.ciphertext_sha256.hex()}",
        f"  data key      wrapped by KMS, sha256 {m.wrapped_key_sha256.hex()}",
        "  bundle files  model.key and model.enc match the manifest (M10, M6, M7)",
    ]


def test_show_json_with_the_published_owner_keys(tmp_path: Path) -> None:
    m = bundle(tmp_path / "b")
    home = tmp_path / "home"
    (home / MOCK_OWNERS).parent.mkdir(parents=True)
    (home / MOCK_OWNERS).write_text(f"# owners\n\n{PUB.hex()}  # the one\n")
    code, out = run("model", "show", str(tmp_path / "b"), "--home", str(home), "--json")
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == [expected_json(m, tmp_path / "b" / MANIFEST_FILE)]


def test_a_manifest_file_alone_is_shown_without_its_files(tmp_path: Path) -> None:
    m = bundle(tmp_path / "b", release=0)
    manifest = tmp_path / "b" / MANIFEST_FILE
    code, out = run("model", "show", str(manifest), "--owner-key", PUB.hex(), "--json")
    assert code == 0 and json.loads(out) == expected_json(m, manifest, checked=False)
    code, out = run("model", "show", str(manifest), "--owner-key", PUB.hex())
    assert "  release       0 (unordered: refused by any floor, M11)" in out.splitlines()
    assert out.splitlines()[-1] == "  bundle files  not checked (a manifest file alone was given)"


def test_an_unknown_owner_and_a_bad_signature_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle(tmp_path / "b")
    manifest = tmp_path / "b" / MANIFEST_FILE
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    code, out = run("model", "show", str(tmp_path / "b"), "--owner-key", other.hex(), "--json")
    assert code == 1
    line = f"M2 owner: signed by an unknown key {KID.hex()[:16]}… ({manifest}; owner keys from --owner-key)"
    assert last_err(capsys) == f"ephemeral: manifest error: {line}"
    assert json.loads(out) == {"error": {"code": "manifest", "message": line}}
    # The published keys: the message names the file.
    home = tmp_path / "home"
    (home / MOCK_OWNERS).parent.mkdir(parents=True)
    (home / MOCK_OWNERS).write_text(other.hex() + "\n")
    assert run("model", "show", str(tmp_path / "b"), "--home", str(home))[0] == 1
    assert last_err(capsys) == (
        f"ephemeral: manifest error: M2 owner: signed by an unknown key {KID.hex()[:16]}… "
        f"({manifest}; owner keys from {home / MOCK_OWNERS})"
    )
    raw = bytearray(manifest.read_bytes())
    raw[-1] ^= 1  # the last byte of the signature
    manifest.write_bytes(bytes(raw))
    assert run("model", "show", str(tmp_path / "b"), "--owner-key", PUB.hex())[0] == 1
    assert last_err(capsys) == (
        f"ephemeral: manifest error: M3 signature: the manifest signature does not verify ({manifest})"
    )


def test_files_that_are_not_the_manifests_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle(tmp_path / "a")
    bundle(tmp_path / "b")
    show = ("model", "show", str(tmp_path / "a"), "--owner-key", PUB.hex())
    key = tmp_path / "a" / MODEL_KEY_FILE
    shutil.copyfile(tmp_path / "b" / MODEL_KEY_FILE, key)
    assert run(*show)[0] == 1
    assert last_err(capsys) == f"ephemeral: manifest error: M10 key: {key} is not the data key its manifest names"
    bundle(tmp_path / "c")
    shutil.rmtree(tmp_path / "a")
    shutil.copytree(tmp_path / "c", tmp_path / "a")
    enc = tmp_path / "a" / MODEL_ENC_FILE
    data = enc.read_bytes()
    enc.write_bytes(data[:-1])
    assert run(*show)[0] == 1
    assert last_err(capsys) == (
        f"ephemeral: manifest error: M6 size: {enc} is {len(data) - 1} bytes, the manifest says {len(data)}"
    )
    enc.write_bytes(data + b"x")
    assert run(*show)[0] == 1
    assert last_err(capsys) == (
        f"ephemeral: manifest error: M6 size: {enc} is longer than the {len(data)} bytes the manifest says"
    )
    enc.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    assert run(*show)[0] == 1
    assert last_err(capsys) == f"ephemeral: manifest error: M7 ciphertext: {enc} does not match the manifest's sha256"


def test_model_id_and_digest_filters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m1 = bundle(tmp_path / "r1", release=1)
    m2 = bundle(tmp_path / "r2", release=2)
    both = (str(tmp_path / "r1"), str(tmp_path / "r2"))
    code, out = run("model", "show", *both, "--owner-key", PUB.hex(), "--json")
    assert code == 0 and [json.loads(x)["release"] for x in out.splitlines()] == [1, 2]
    code, out = run("model", "show", *both, "--owner-key", PUB.hex(), "--digest", m2.digest.hex().upper(), "--json")
    assert code == 0 and [json.loads(x)["manifest_digest"] for x in out.splitlines()] == [m2.digest.hex()]
    code, out = run("model", "show", *both, "--owner-key", PUB.hex(), "--digest", m1.digest.hex()[:16])
    assert code == 0 and out.splitlines()[2] == "  release       1" and out.count("VERIFIED") == 1
    code, out = run("model", "show", *both, "--owner-key", PUB.hex())
    assert code == 0 and out.count("VERIFIED") == 2 and "\n\nmanifest " in out
    assert run("model", "show", *both, "--owner-key", PUB.hex(), "--digest", "ab" * 32)[0] == 2
    assert last_err(capsys) == "ephemeral: error: no manifest with digest abababababababab… among the 2 bundle(s) given"
    assert run("model", "show", *both, "--owner-key", PUB.hex(), "--digest", "abc")[0] == 2
    assert last_err(capsys) == "ephemeral: error: --digest 'abc': give a manifest digest, 16 to 64 hex digits"
    assert run("model", "show", *both, "--owner-key", PUB.hex(), "--model-id", "other")[0] == 1
    assert last_err(capsys) == (
        f"ephemeral: manifest error: M5 model: manifest is for 'tiny', not 'other' ({tmp_path / 'r1' / MANIFEST_FILE})"
    )


def test_owner_keys_and_paths_that_are_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle(tmp_path / "b")
    home = tmp_path / "home"
    assert run("model", "show", str(tmp_path / "b"), "--home", str(home))[0] == 2
    assert last_err(capsys) == (
        f"ephemeral: error: no model-owner keys at {home / MOCK_OWNERS}: give --owner-key HEX (the public "
        "key `ephemeral model keygen` printed), or start `ephemeral-host --mock` (it publishes the mock owner's)"
    )
    (home / MOCK_OWNERS).parent.mkdir(parents=True)
    (home / MOCK_OWNERS).write_text(f"{PUB.hex()}\nnot-a-key\n")
    assert run("model", "show", str(tmp_path / "b"), "--home", str(home))[0] == 2
    assert last_err(capsys) == (
        f"ephemeral: error: {home / MOCK_OWNERS} line 2: a model-owner key is 64 hex digits (raw Ed25519 public key)"
    )
    (home / MOCK_OWNERS).write_text("# nothing\n")
    with pytest.raises(ConfigError) as info:
        load_owner_keys_file(home / MOCK_OWNERS)
    assert str(info.value) == f"{home / MOCK_OWNERS} lists no model-owner key"
    assert run("model", "show", str(tmp_path / "b"), "--owner-key", "12" * 31)[0] == 2
    assert last_err(capsys) == (
        "ephemeral: error: --owner-key '1212121212121212': a model-owner key is 64 hex digits (raw Ed25519 public key)"
    )
    assert run("model", "show", str(tmp_path / "nope"), "--owner-key", PUB.hex())[0] == 2
    assert last_err(capsys) == (
        f"ephemeral: error: {tmp_path / 'nope'} does not exist (give a bundle folder or a manifest.cose)"
    )
    os.remove(tmp_path / "b" / MODEL_ENC_FILE)
    assert run("model", "show", str(tmp_path / "b"), "--owner-key", PUB.hex())[0] == 2
    assert last_err(capsys) == f"ephemeral: error: {tmp_path / 'b'} is not a bundle: it lacks model.enc"
