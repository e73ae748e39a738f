"""Issue 7, finding 4: the host serves an older bundle the same owner signed for the same model.

Anti-rollback in three places (protocol.md §9.3 M11, §8.3 P1): the enclave image carries
a floor per model in a file measured into PCR0, the loader refuses a release below it
before any key is released, and a client that pins the current releases' manifest
digests refuses an older one whatever the enclave does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ephemeralml.client._policy import ClientPolicy
from ephemeralml.common._binding import EnclaveBinding
from ephemeralml.common._bundle import Manifest, owner_key_id
from ephemeralml.common._errors import KeyReleaseError, ManifestError, PolicyError
from ephemeralml.common._store import AwsCredentials
from ephemeralml.enclave import _cli as enclave_cli
from ephemeralml.enclave._keyrelease import KmsKeyRelease
from ephemeralml.enclave._loader import LoadedModel, load_model
from ephemeralml.enclave._measure import NITRO_FLOORS
from ephemeralml.enclave._profile import EnclaveProfile
from ephemeralml.host._store import LocalStore, StoreService
from ephemeralml.mock._kms_tls import ensure_tls_ca
from ephemeralml.mock._nsm import mock_enclave_measurements
from ephemeralml.mock._profiles import enclave_profile as enclave_mock
from ephemeralml.runtime._home import MOCK_FLOORS, MOCK_MEASUREMENTS, MOCK_OWNERS
from ephemeralml.runtime._ports import Ports
from ephemeralml.runtime._transport import Endpoint
from tests.unit.test_bundle import make_bundle

MODEL = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def owner() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _owner_keys(owner: Ed25519PrivateKey) -> dict[bytes, bytes]:
    pub = owner.public_key().public_bytes_raw()
    return {owner_key_id(pub): pub}


def _put(store: Path, raw: bytes, enc: bytes) -> None:
    """What a host holding an old bundle does: put it where the model's bundle goes."""
    d = store / MODEL
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.cose").write_bytes(raw)
    (d / "model.key").write_bytes(b"wrapped")  # make_bundle's wrapped_key_sha256 (M10 passes)
    (d / "model.enc").write_bytes(enc)


class _CountingRelease:
    """Stands in for KMS: counts the key releases the loader asks for, releases nothing."""

    def __init__(self) -> None:
        self.calls = 0

    def release(self, wrapped_key: bytes, *, kms_key_id: str, what: str) -> Any:
        self.calls += 1
        raise KeyReleaseError(f"no key in this test ({what})")


def _load(store: Path, owner: Ed25519PrivateKey, release: _CountingRelease, floor: int) -> LoadedModel:
    async def go() -> LoadedModel:
        svc = StoreService(LocalStore(store), Endpoint.parse("127.0.0.1:0"))
        await svc.start()
        try:
            assert svc.bound is not None
            return await load_model(MODEL, services=svc.bound, owner_keys=_owner_keys(owner),
                                    key_release=cast(KmsKeyRelease, release), min_release=floor)  # fmt: skip
        finally:
            await svc.close()

    return asyncio.run(asyncio.wait_for(go(), 60))


def test_the_loader_refuses_an_older_release_before_any_key_release(owner: Ed25519PrivateKey, tmp_path: Path) -> None:
    raw, enc, _ = make_bundle({"model.onnx": os.urandom(5000)}, key=os.urandom(32), owner=owner,
                              model_id=MODEL, release=1)  # fmt: skip
    _put(tmp_path / "store", raw, enc)
    kms = _CountingRelease()
    # Without a floor the old bundle goes on to key release: the finding.
    with pytest.raises(KeyReleaseError, match=f"^no key in this test \\(model {MODEL}\\)$"):
        _load(tmp_path / "store", owner, kms, floor=0)
    assert kms.calls == 1
    # With the image's floor at 2 it stops at M11, and KMS is never asked.
    with pytest.raises(ManifestError) as info:
        _load(tmp_path / "store", owner, kms, floor=2)
    assert str(info.value) == f"M11 rollback: {MODEL} release 1 is below the floor 2"
    assert kms.calls == 1


def test_a_client_pinning_the_current_release_refuses_the_older_one(owner: Ed25519PrivateKey, tmp_path: Path) -> None:
    _, _, old = make_bundle({"a": b"x"}, key=os.urandom(32), owner=owner, model_id=MODEL, release=1)
    _, _, new = make_bundle({"a": b"y"}, key=os.urandom(32), owner=owner, model_id=MODEL, release=2)
    p = tmp_path / "policy.json"
    p.write_text(json.dumps({"measurements": [{"PCR0": "11" * 48}], "models": {MODEL: [new.digest.hex()]}}))
    policy = ClientPolicy.from_file(p, home=tmp_path)

    def binding(m: Manifest) -> EnclaveBinding:
        return EnclaveBinding(protocol_version=1, session_id=bytes(16), receipt_key=bytes(32),
                              models={MODEL: m.digest}, policy_version=1, mode="nitro")  # fmt: skip

    policy.check_binding(binding(new))
    with pytest.raises(PolicyError) as info:
        policy.check_binding(binding(old))
    assert str(info.value) == (
        f"P1 model: enclave serves {MODEL!r} with digest {old.digest.hex()[:16]}…, "
        f"the policy allows {new.digest.hex()[:16]}…"
    )


# ---------------------------------------------------------------- the enclave program


def test_default_floors_files(tmp_path: Path) -> None:
    def floors(*argv: str) -> Path:
        return enclave_cli._config(enclave_cli._parser().parse_args(list(argv)), enclave_mock).floors

    assert floors("--mock", "--home", str(tmp_path)) == tmp_path / MOCK_FLOORS
    assert floors("--home", str(tmp_path)) == Path(NITRO_FLOORS)
    assert floors("--mock", "--model-floors", str(tmp_path / "f.txt")) == tmp_path / "f.txt"


@pytest.mark.parametrize(
    ("floors_text", "flag", "expected"),
    [
        (None, False, {}),  # no file in the image: no floor, measured as before
        (f"{MODEL} 3\n", False, {MODEL: 3}),
        (f"{MODEL} 3\n", True, {MODEL: 1}),  # another file by flag: measured as what it says
    ],
)
def test_the_enclave_measures_the_floors_it_enforces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    floors_text: str | None, flag: bool, expected: dict[str, int],
) -> None:  # fmt: skip
    home = tmp_path / "home"
    (home / "published").mkdir(parents=True)
    pub = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    (home / MOCK_OWNERS).write_text(pub.hex() + "\n")
    ensure_tls_ca(home)  # what the mock host publishes for the enclave's KMS TLS
    if floors_text is not None:
        (home / MOCK_FLOORS).write_text(floors_text)
    argv = ["--mock", "--home", str(home), "--host-wait", "0"]
    if flag:
        (tmp_path / "lower.txt").write_text(f"{MODEL} 1\n")
        argv += ["--model-floors", str(tmp_path / "lower.txt")]
    seen: dict[str, int] = {}

    async def no_host(*_: Any, **__: Any) -> AwsCredentials:
        return AwsCredentials("ASIAEXAMPLE", "secret")

    async def loader(model_id: str, **kw: Any) -> LoadedModel:
        seen[model_id] = kw["min_release"]
        raise ManifestError(f"M11 rollback: stop here (floor {kw['min_release']})")

    # The PCR0 the enclave's NSM reports (an enclave that does not serve publishes
    # nothing, so it is read from the NSM the enclave made).
    made: list[Any] = []

    def recording_mock(home: Path, ports: Ports) -> EnclaveProfile:
        profile = enclave_mock(home, ports)

        def make_nsm(*a: Any) -> Any:
            made.append(profile.make_nsm(*a))
            return made[-1]

        return dataclasses.replace(profile, make_nsm=make_nsm)

    monkeypatch.setattr(enclave_cli, "fetch_credentials", no_host)
    monkeypatch.setattr(enclave_cli, "load_model", loader)
    assert enclave_cli.main(argv, mock_profile=recording_mock) == 2
    floor = expected.get(MODEL, 0)
    assert seen == {MODEL: floor}  # the floor measured is the floor handed to the loader
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"ephemeral-enclave: error: no model loaded ({MODEL}: M11 rollback: stop here (floor {floor}))"
    )
    assert not (home / MOCK_MEASUREMENTS).exists()
    published = {"0": made[0].describe_pcr(0).hex()}
    assert published["0"] == mock_enclave_measurements([pub], expected)[0].hex()
    if expected:
        assert published["0"] != mock_enclave_measurements([pub])[0].hex()
    if flag:  # a lower floor given by flag is a different PCR0 than the image's own floor
        assert published["0"] != mock_enclave_measurements([pub], {MODEL: 3})[0].hex()
