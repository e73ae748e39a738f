"""``ephemeral model package --mock``: the local KMS of the mock deployment, as its model
owner, with the credentials mock provisioning wrote: no AWS credentials, and a missing
host or stale state is a one-line config/transport error that says what to start."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from ephemeralml.client import _package
from ephemeralml.client._cli import main
from ephemeralml.client._model_show import load_owner_keys_file
from ephemeralml.client._package import (
    MANIFEST_FILE,
    MockKms,
    Source,
    generate_owner_key,
    package_model,
)
from ephemeralml.common._attestation import TrustedRoot
from ephemeralml.common._bundle import verify_manifest
from ephemeralml.common._errors import TransportError
from ephemeralml.mock import _kms_principals, _provision
from ephemeralml.mock._kms import MODEL_OWNER, MockKmsServer
from ephemeralml.mock._provision import ensure_mock_root, provision_mock
from ephemeralml.runtime._home import (
    MOCK_KMS_CREDENTIALS,
    MOCK_KMS_STATE,
    MOCK_OWNER_KEY,
    MOCK_OWNERS,
    MOCK_PROVISION,
    MOCK_STORE,
)
from ephemeralml.runtime._ports import Ports

START = "start `ephemeral-host --mock` first"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Deployment:
    home: Path
    server: MockKmsServer
    kms_key_id: str
    base: int  # the base port whose BASE+9 is the server

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """What `ephemeral-host --mock` leaves in its home: the local KMS (here on a port
    P = BASE+9), the owner's credentials, key and the provisioned KMS key."""
    home = tmp_path_factory.mktemp("mock-home")
    root = ensure_mock_root(home)
    port = free_port()
    with MockKmsServer(home / MOCK_KMS_STATE, trusted_root=TrustedRoot.unsafe_mock(root),
                       listen=("127.0.0.1", port)) as server:  # fmt: skip
        kms = boto3.client("kms", region_name=server.region, endpoint_url=server.url,
                           **server.credentials(MODEL_OWNER).boto3_kwargs())  # fmt: skip
        p = provision_mock(home, kms)
        yield Deployment(home, server, p.kms_key_id, port - 9)


@pytest.fixture(autouse=True)
def _no_aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No dummy credentials anywhere: the environment, the files, a profile."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name.startswith("EPHEMERAL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    for name, data in (("model.json", b'{"model_id": "tiny"}'), ("tokenizer.json", b"{}"),
                       ("model.onnx", os.urandom(10000))):  # fmt: skip
        (d / name).write_bytes(data)
    return d


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), stdout=out), out.getvalue()


def last_err(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def package(home: Path, model_dir: Path, out: Path, *extra: str) -> tuple[int, str]:
    return run("model", "package", "--mock", "--home", str(home), "--model-dir", str(model_dir),
               "--model-id", "tiny", "--release", "2", "--out", str(out), *extra)  # fmt: skip


def copy_home(d: Deployment, dest: Path, *names: Path) -> Path:
    for name in names:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(d.home / name, dest / name)
    return dest


def test_the_client_reads_what_mock_provisioning_writes(deployment: Deployment) -> None:
    """One convention, two sides: the mock writes, the client (which never imports
    the mock) reads, at the paths of runtime/_home.py."""
    assert _package.MOCK_CREDENTIALS_FORMAT == _kms_principals._CREDENTIALS_FORMAT
    assert _package.MOCK_OWNER_PRINCIPAL == _kms_principals.MODEL_OWNER
    assert MOCK_KMS_STATE / _kms_principals._CREDENTIALS_FILE == MOCK_KMS_CREDENTIALS
    assert (_provision.MOCK_STATE, _provision._OWNER_KEY) == (MOCK_PROVISION, MOCK_OWNER_KEY)
    home = deployment.home
    mock = MockKms.find(home, Ports(deployment.base))
    owner = deployment.server.credentials(MODEL_OWNER)
    assert (mock.url, mock.access_key_id, mock.secret_access_key, mock.session_token) == (
        deployment.url, owner.access_key_id, owner.secret_access_key, owner.session_token
    )
    assert mock.kms_key_id() == deployment.kms_key_id
    assert mock.owner_key_path() == home / MOCK_OWNER_KEY
    assert (home / MOCK_STORE / "all-MiniLM-L6-v2" / MANIFEST_FILE).is_file()
    assert owner.secret_access_key not in repr(mock) and owner.session_token not in repr(mock)


def test_package_with_the_base_port_and_no_aws_credentials(deployment: Deployment, model_dir: Path, tmp_path: Path) -> None:
    code, out = package(deployment.home, model_dir, tmp_path / "b", "--base-port", str(deployment.base), "--json")
    assert code == 0, out
    info = json.loads(out)
    assert (info["model_id"], info["release"], info["mock"]) == ("tiny", 2, True)
    assert info["kms_key_id"] == f"arn:aws:kms:us-east-1:111122223333:key/{deployment.kms_key_id}"
    # Signed with the mock owner's key: the one the mock enclave trusts.
    owners = load_owner_keys_file(deployment.home / MOCK_OWNERS)
    v = verify_manifest((tmp_path / "b" / MANIFEST_FILE).read_bytes(), owners, model_id="tiny")
    assert v.digest.hex() == info["manifest_digest"]
    # model show finds the same owner keys by default.
    code, out = run("model", "show", str(tmp_path / "b"), "--home", str(deployment.home), "--json")
    assert code == 0 and json.loads(out)["manifest_digest"] == info["manifest_digest"]


def test_package_with_the_environments_base_port(deployment: Deployment, model_dir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("EPHEMERALML_BASE_PORT", str(deployment.base))
    monkeypatch.setenv("EPHEMERALML_HOME", str(deployment.home))
    code, out = run("model", "package", "--mock", "--model-dir", str(model_dir), "--model-id", "tiny",
                    "--out", str(tmp_path / "b"))  # fmt: skip
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("packaged tiny 1 release 0: 10022 bytes in 1 chunk(s) -> ")
    assert lines[2] == (
        f"  KMS key          arn:aws:kms:us-east-1:111122223333:key/{deployment.kms_key_id} "
        f"(MOCK: the local KMS at {deployment.url})"
    )


def test_kms_endpoint_overrides_the_base_port(deployment: Deployment, model_dir: Path, tmp_path: Path) -> None:
    code, _ = package(deployment.home, model_dir, tmp_path / "b", "--base-port", "1", "--kms-endpoint", deployment.url)
    assert code == 0


def test_no_host_ever_started(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    code, out = package(home, model_dir, tmp_path / "b", "--json")
    line = (f"no mock KMS credentials at {home / MOCK_KMS_CREDENTIALS}: {START} (it makes them), "
            "or set EPHEMERALML_HOME to the host's home")  # fmt: skip
    assert code == 2
    assert last_err(capsys) == f"ephemeral: error: {line}"
    assert json.loads(out) == {"error": {"code": "config", "message": line}}


def test_a_host_that_is_not_running(deployment: Deployment, model_dir: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    home = copy_home(deployment, tmp_path / "home", MOCK_KMS_CREDENTIALS, MOCK_PROVISION, MOCK_OWNER_KEY, MOCK_OWNERS)
    port = free_port()  # nothing listens there
    code, out = package(home, model_dir, tmp_path / "b", "--base-port", str(port - 9), "--json")
    line = (f"mock KMS at http://127.0.0.1:{port} is not reachable: {START} (it serves the local KMS "
            "on 127.0.0.1:BASE+9; give this command the host's --base-port or EPHEMERALML_BASE_PORT)")  # fmt: skip
    assert code == 1
    assert last_err(capsys) == f"ephemeral: transport error: {line}"
    assert json.loads(out) == {"error": {"code": "transport", "message": line}}
    assert list((tmp_path / "b").iterdir()) == []


def test_missing_key_and_owner_key(deployment: Deployment, model_dir: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    home = copy_home(deployment, tmp_path / "home", MOCK_KMS_CREDENTIALS)
    assert package(home, model_dir, tmp_path / "b", "--base-port", str(deployment.base))[0] == 2
    assert last_err(capsys) == (
        f"ephemeral: error: no mock KMS key at {home / MOCK_PROVISION}: {START} (it makes the key), "
        "or give --kms-key-id"
    )
    copy_home(deployment, home, MOCK_PROVISION)
    assert package(home, model_dir, tmp_path / "b", "--base-port", str(deployment.base))[0] == 2
    assert last_err(capsys) == (
        f"ephemeral: error: no mock model-owner key at {home / MOCK_OWNER_KEY}: {START} (it makes it), "
        "or give --owner-key"
    )
    (home / MOCK_PROVISION).write_text("{}")
    assert package(home, model_dir, tmp_path / "b", "--base-port", str(deployment.base))[0] == 2
    assert last_err(capsys) == (
        f"ephemeral: error: cannot read the mock KMS key id from {home / MOCK_PROVISION} ('kms_key_id'): "
        "restart `ephemeral-host --mock`, or give --kms-key-id"
    )


def test_corrupt_or_foreign_credentials(deployment: Deployment, model_dir: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    home = copy_home(deployment, tmp_path / "home", MOCK_KMS_CREDENTIALS, MOCK_PROVISION, MOCK_OWNER_KEY, MOCK_OWNERS)
    creds = home / MOCK_KMS_CREDENTIALS
    data = json.loads(creds.read_text())
    creds.write_text(json.dumps({**data, "principals": {"host": {}}}))
    assert package(home, model_dir, tmp_path / "b", "--base-port", str(deployment.base))[0] == 2
    assert last_err(capsys) == (
        f"ephemeral: error: mock KMS credentials {creds} are unreadable or corrupt (no 'model-owner'): "
        "restart `ephemeral-host --mock`, which checks and keeps them"
    )
    # Another home's credentials: well formed, unknown to this server.
    data["principals"][MODEL_OWNER]["AccessKeyId"] = "ASIA" + "A" * 16
    creds.write_text(json.dumps(data))
    assert package(home, model_dir, tmp_path / "b", "--base-port", str(deployment.base))[0] == 2
    assert last_err(capsys) == (
        f"ephemeral: error: the mock KMS at {deployment.url} does not know the credentials in {creds} "
        f"(UnrecognizedClientException): is it the host of this home? Start `ephemeral-host --mock` "
        f"with EPHEMERALML_HOME={home}"
    )


def test_a_key_the_mock_kms_does_not_have(deployment: Deployment, model_dir: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    code, _ = package(deployment.home, model_dir, tmp_path / "b", "--base-port", str(deployment.base),
                      "--kms-key-id", "1234abcd-12ab-34cd-56ef-1234567890ab")  # fmt: skip
    assert code == 2
    assert last_err(capsys) == (
        f"ephemeral: error: the mock KMS at {deployment.url} has no key 1234abcd-12ab-34cd-56ef-1234567890ab: "
        "restart `ephemeral-host --mock` (it makes the key), or give --kms-key-id"
    )


def test_an_owner_key_the_mock_enclave_does_not_trust_is_flagged(deployment: Deployment, model_dir: Path,
                                                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    mine = tmp_path / "mine.pem"
    generate_owner_key(mine)
    code, _ = package(deployment.home, model_dir, tmp_path / "b", "--base-port", str(deployment.base), "--owner-key", str(mine))
    assert code == 0
    assert capsys.readouterr().err.strip() == (
        f"ephemeral: warning: {mine} is not an owner key the mock enclave trusts "
        "($EPHEMERALML_HOME/published/model-owners.txt): it will refuse this bundle (M2)"
    )


def test_without_mock_the_key_and_owner_are_required(model_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    owner = tmp_path / "owner.pem"
    generate_owner_key(owner)
    common = ("model", "package", "--model-dir", str(model_dir), "--model-id", "tiny", "--out", str(tmp_path / "b"))
    assert run(*common, "--owner-key", str(owner))[0] == 2
    assert last_err(capsys) == (
        "ephemeral: error: model package needs --owner-key and --kms-key-id (or --mock, for the local mock "
        "deployment's)"
    )
    assert run(*common, "--owner-key", str(owner), "--kms-key-id", "k", "--base-port", "6000")[0] == 2
    assert last_err(capsys) == "ephemeral: error: --base-port needs --mock (it finds the mock deployment's local KMS)"


def test_an_unreachable_kms_is_a_transport_error_not_key_release(tmp_path: Path) -> None:
    from botocore.config import Config
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    url = f"http://127.0.0.1:{free_port()}"
    kms: Any = boto3.client("kms", region_name="us-east-1", endpoint_url=url, aws_access_key_id="a",
                            aws_secret_access_key="b", config=Config(retries={"total_max_attempts": 1}))  # fmt: skip
    with pytest.raises(TransportError) as info:
        package_model([Source("m", data=b"x")], model_id="tiny", version="1", kms=kms, kms_key_id="k",
                      owner_key=Ed25519PrivateKey.generate(), out_dir=tmp_path / "b")  # fmt: skip
    assert str(info.value) == (
        f'KMS GenerateDataKey: cannot reach {url}: Could not connect to the endpoint URL: "{url}/"'
    )
