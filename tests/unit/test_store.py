"""The host's model store service and the enclave's fetch, over loopback."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import boto3
import pytest
from moto import mock_aws

from ephemeralml.common._errors import ConfigError, LimitError, RemoteProtocolError
from ephemeralml.common._store import STORE_CHUNK_BYTES
from ephemeralml.enclave._services import fetch
from ephemeralml.host._store import LocalStore, ModelStore, S3Store, StoreService
from ephemeralml.runtime._transport import Endpoint

LISTEN = Endpoint.parse("127.0.0.1:0")

T = TypeVar("T")


async def _get(store: ModelStore, model: str, name: str, max_bytes: int = 10**9) -> bytes:
    svc = StoreService(store, LISTEN)
    await svc.start()
    try:
        assert svc.bound is not None
        out = bytearray()
        async for chunk in fetch(svc.bound, model, name, max_bytes=max_bytes, timeout=10):
            assert len(chunk) <= STORE_CHUNK_BYTES
            out += chunk
        return bytes(out)
    finally:
        await svc.close()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


@pytest.fixture
def local(tmp_path: Path) -> tuple[LocalStore, bytes]:
    data = os.urandom(3 * STORE_CHUNK_BYTES + 11)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.enc").write_bytes(data)
    (tmp_path / "m" / "manifest.cose").write_bytes(b"signed")
    return LocalStore(tmp_path), data


def test_local_file_streams_exactly(local: tuple[LocalStore, bytes]) -> None:
    store, data = local
    assert run(_get(store, "m", "model.enc")) == data
    assert run(_get(store, "m", "manifest.cose")) == b"signed"


def test_missing_file_is_a_clear_error(local: tuple[LocalStore, bytes]) -> None:
    store, _ = local
    with pytest.raises(ConfigError, match=r"^host model store: model store has no m/model.key$"):
        run(_get(store, "m", "model.key"))


def test_no_more_than_the_manifest_size(local: tuple[LocalStore, bytes]) -> None:
    store, data = local
    with pytest.raises(
        LimitError, match=f"host sent more than {len(data) - 1} bytes of m/model.enc"
    ):
        run(_get(store, "m", "model.enc", max_bytes=len(data) - 1))


@pytest.mark.parametrize(
    ("model", "name"), [("../etc", "model.enc"), ("m", "passwd"), ("m", "../model.enc")]
)
def test_only_bundle_files_are_served(
    local: tuple[LocalStore, bytes], model: str, name: str
) -> None:
    store, _ = local
    with pytest.raises(RemoteProtocolError):
        run(_get(store, model, name))


def test_s3_store_streams_from_moto() -> None:
    with mock_aws():
        s3 = boto3.client(
            "s3", region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t"
        )
        s3.create_bucket(Bucket="models")
        data = os.urandom(2 * STORE_CHUNK_BYTES + 5)
        s3.put_object(Bucket="models", Key="prod/m/model.enc", Body=data)
        store = S3Store("models", "prod", s3)
        assert run(_get(store, "m", "model.enc")) == data
        with pytest.raises(
            ConfigError,
            match=r"^host model store: model store has no s3://models/prod/m/model.key$",
        ):
            run(_get(store, "m", "model.key"))


def test_credentials_are_handed_over_and_parsed(local: tuple[LocalStore, bytes]) -> None:
    from ephemeralml.common._store import AwsCredentials
    from ephemeralml.enclave._services import fetch_credentials

    store, _ = local
    creds = AwsCredentials("AKIAEXAMPLE", "secret", "token", "eu-west-1")

    async def go() -> AwsCredentials:
        svc = StoreService(store, LISTEN, credentials=lambda: creds)
        await svc.start()
        try:
            assert svc.bound is not None
            return await fetch_credentials(svc.bound, timeout=10)
        finally:
            await svc.close()

    got = run(go())
    assert got == creds
    assert "secret" not in repr(got) and "token" not in repr(got)


def test_no_credentials_configured(local: tuple[LocalStore, bytes]) -> None:
    from ephemeralml.enclave._services import fetch_credentials

    store, _ = local

    async def go() -> None:
        svc = StoreService(store, LISTEN)
        await svc.start()
        try:
            assert svc.bound is not None
            await fetch_credentials(svc.bound, timeout=10)
        finally:
            await svc.close()

    with pytest.raises(ConfigError, match=r"^host services: this host hands out no AWS credentials$"):
        run(go())
