"""The enclave's model load path against a hostile host: real store service, real KMS server."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ephemeralml.client._package import default_sources, load_owner_key, package_model
from ephemeralml.client._upload import upload_local
from ephemeralml.common._attestation import TrustedRoot
from ephemeralml.common._bundle import owner_key_id
from ephemeralml.common._errors import ConfigError, KeyReleaseError, ManifestError
from ephemeralml.enclave._keyrelease import KmsKeyRelease
from ephemeralml.enclave._loader import LoadedModel, load_model
from ephemeralml.enclave._measure import load_owner_keys
from ephemeralml.host._store import LocalStore, StoreService
from ephemeralml.mock._kms import ENCLAVE, MODEL_OWNER, MockKmsServer
from ephemeralml.mock._nsm import MockNsm
from ephemeralml.mock._provision import ensure_mock_root, provision_mock
from ephemeralml.runtime._home import MOCK_OWNERS
from ephemeralml.runtime._transport import Endpoint

MODEL = "all-MiniLM-L6-v2"


class World:
    def __init__(self, home: Path, kms: Any, pcrs: dict[int, bytes], *, owner_kms: Any, kms_key_id: str) -> None:
        self.home, self.kms, self.pcrs = home, kms, pcrs  # kms: the enclave role's client
        self.owner_kms, self.kms_key_id = owner_kms, kms_key_id  # the model owner's
        self.owner_keys = load_owner_keys(home / MOCK_OWNERS)

    def nsm(self, pcrs: dict[int, bytes] | None = None) -> MockNsm:
        return MockNsm.load_or_create(self.home / "mock-nsm", pcrs or self.pcrs)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("loader-home")
    root = ensure_mock_root(home)
    with MockKmsServer(home / "mock-kms", trusted_root=TrustedRoot.unsafe_mock(root)) as server:
        def client(principal: str) -> Any:
            return boto3.client("kms", region_name=server.region, endpoint_url=server.url,
                                **server.credentials(principal).boto3_kwargs())  # fmt: skip

        owner_kms = client(MODEL_OWNER)
        p = provision_mock(home, owner_kms)
        yield World(home, client(ENCLAVE), p.pcrs, owner_kms=owner_kms, kms_key_id=p.kms_key_id)


@pytest.fixture
def store(world: World, tmp_path: Path) -> Path:
    """A private copy of the provisioned store that a test may tamper with."""
    dest = tmp_path / "store"
    shutil.copytree(world.home / "store", dest)
    return dest


def load(world: World, store: Path, model: str = MODEL, *, nsm: MockNsm | None = None,
         owner_keys: dict[bytes, bytes] | None = None, min_release: int = 0) -> LoadedModel:  # fmt: skip
    async def go() -> LoadedModel:
        svc = StoreService(LocalStore(store), Endpoint.parse("127.0.0.1:0"))
        await svc.start()
        try:
            assert svc.bound is not None
            return await load_model(
                model, services=svc.bound, owner_keys=owner_keys or world.owner_keys,
                key_release=KmsKeyRelease(nsm or world.nsm(), world.kms, attempts=1),
                min_release=min_release,
            )  # fmt: skip
        finally:
            await svc.close()

    return asyncio.run(asyncio.wait_for(go(), 120))


def test_loads_verifies_and_embeds(world: World, store: Path) -> None:
    m = load(world, store)
    manifest = (store / MODEL / "manifest.cose").read_bytes()
    assert m.model_id == MODEL and len(m.key_release_digest) == 32
    assert m.timings.bytes == (store / MODEL / "model.enc").stat().st_size
    assert m.embedder is not None
    v = m.embedder.embed(["hello world"])
    assert v.shape == (1, 384) and abs(float(np.linalg.norm(v[0])) - 1) < 1e-5
    assert hashlib.sha256(manifest).digest() != m.manifest_digest  # digest of the payload, not the envelope


def test_flipped_wrapped_key(world: World, store: Path) -> None:
    key = bytearray((store / MODEL / "model.key").read_bytes())
    key[10] ^= 1
    (store / MODEL / "model.key").write_bytes(bytes(key))
    with pytest.raises(ManifestError, match=f"^M10 key: model.key for {MODEL} is not the one its manifest names$"):
        load(world, store)


def test_truncated_model(world: World, store: Path) -> None:
    enc = store / MODEL / "model.enc"
    enc.write_bytes(enc.read_bytes()[:-100])
    with pytest.raises(ManifestError, match=r"^M6 size: model.enc is \d+ bytes; the manifest says \d+$"):
        load(world, store)


def test_flipped_model_byte(world: World, store: Path) -> None:
    enc = store / MODEL / "model.enc"
    data = bytearray(enc.read_bytes())
    data[5_000_000] ^= 0x80
    enc.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"^M9 content: chunk 4 of model.enc fails authentication$"):
        load(world, store)


def test_host_serves_another_model_under_the_asked_name(world: World, store: Path) -> None:
    shutil.copytree(store / MODEL, store / "other-model")
    with pytest.raises(ManifestError, match=f"^M5 model: manifest is for '{MODEL}', not 'other-model'$"):
        load(world, store, "other-model")


def test_manifest_signed_by_a_key_the_image_does_not_carry(world: World, store: Path) -> None:
    stranger = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    with pytest.raises(ManifestError, match=r"^M2 owner: signed by an unknown key"):
        load(world, store, owner_keys={owner_key_id(stranger): stranger})


def test_enclave_with_other_measurements_gets_no_key(world: World, store: Path) -> None:
    other = {i: bytes([i + 1]) * 48 for i in (0, 1, 2)}
    with pytest.raises(KeyReleaseError, match=f"^KMS refused to release the key for model {MODEL}: AccessDeniedException: "):
        load(world, store, nsm=world.nsm(other))


def test_missing_store_object(world: World, store: Path) -> None:
    (store / MODEL / "model.enc").unlink()
    with pytest.raises(ConfigError, match=f"^host model store: model store has no {MODEL}/model.enc$"):
        load(world, store)


def test_nothing_plaintext_is_written(world: World, store: Path, tmp_path: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    load(world, store)
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert after == before


# ---------------------------------------------------------------- M11: model anti-rollback


@pytest.fixture(scope="module")
def releases(world: World, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Bundles of the model at releases 0 (a v1 manifest), 1 and 2, all signed by the
    provisioned owner."""
    out: dict[int, Path] = {}
    model_id, sources = default_sources()
    for release in (0, 1, 2):
        out[release] = tmp_path_factory.mktemp(f"release-{release}") / "bundle"
        package_model(sources, model_id=model_id, version=f"r{release}", kms=world.owner_kms,
                      kms_key_id=world.kms_key_id, owner_key=load_owner_key(world.home / "mock-owner.pem"),
                      out_dir=out[release], release=release)  # fmt: skip
    return out


def test_the_release_at_the_floor_loads(world: World, store: Path, releases: dict[int, Path]) -> None:
    upload_local(releases[2], store, MODEL)
    m = load(world, store, min_release=2)
    assert m.embedder is not None
    assert m.release == 2 and m.embedder.embed(["hello"]).shape == (1, 384)
    assert load(world, store, min_release=1).release == 2  # above the floor: fine too


def test_an_older_release_by_the_same_owner_is_refused(world: World, store: Path, releases: dict[int, Path]) -> None:
    # The host still holds release 1 (a genuine, owner-signed bundle) and serves it
    # to an enclave whose image carries the floor 2.
    upload_local(releases[1], store, MODEL)
    assert load(world, store).release == 1  # without a floor it loads: the finding
    with pytest.raises(ManifestError) as info:
        load(world, store, min_release=2)
    assert str(info.value) == f"M11 rollback: {MODEL} release 1 is below the floor 2"


def test_a_v1_bundle_is_below_any_floor(world: World, store: Path, releases: dict[int, Path]) -> None:
    # A bundle without a release (a v1 manifest, release 0).
    upload_local(releases[0], store, MODEL)
    assert load(world, store).release == 0
    with pytest.raises(ManifestError) as info:
        load(world, store, min_release=1)
    assert str(info.value) == f"M11 rollback: {MODEL} release 0 is below the floor 1"
