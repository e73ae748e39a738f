"""The host's model store and the service that serves it to the enclave (protocol.md §10).

The store is a local directory (the default) or ``s3://bucket/prefix`` (boto3,
streamed: an object is never held whole in memory). It holds ciphertext and signed
metadata, which the host cannot read or forge undetected. The messages are
:mod:`ephemeralml.common._store`; this module owns the host's loop. One request per
connection. The host logs model ids, file names and byte counts, never content.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ephemeralml.common._errors import ConfigError, Error, RemoteProtocolError, TransportError
from ephemeralml.common._frame import FrameDecoder, encode_frame
from ephemeralml.common._store import (
    MAX_REQUEST_BYTES,
    STORE_CHUNK_BYTES,
    AwsCredentials,
    check_store_name,
    decode_request,
    encode_data,
    encode_end,
    encode_store_error,
)
from ephemeralml.runtime._strict import parse_s3_url
from ephemeralml.runtime._transport import Endpoint, Listener, set_nodelay

__all__ = [
    "LocalStore",
    "ModelStore",
    "S3Store",
    "StoreService",
    "instance_credentials",
    "store_from_url",
]

log = logging.getLogger("ephemeralml.host.store")

_REQUEST_TIMEOUT_S = 30.0


class ModelStore(ABC):
    """Where bundles rest. Implementations stream; they never parse content."""

    @abstractmethod
    def open(self, model_id: str, name: str) -> Iterator[bytes]:
        """Chunks of one file; raises ConfigError if it does not exist."""

    @staticmethod
    def check(model_id: str, name: str) -> None:
        check_store_name(model_id, name)


@dataclass(frozen=True)
class LocalStore(ModelStore):
    root: Path

    def open(self, model_id: str, name: str) -> Iterator[bytes]:
        self.check(model_id, name)
        path = self.root / model_id / name
        try:
            f = open(path, "rb")
        except FileNotFoundError as e:
            raise ConfigError(f"model store has no {model_id}/{name}") from e
        except OSError as e:
            raise ConfigError(f"cannot read {model_id}/{name} from the store: {e.strerror}") from e

        def chunks() -> Iterator[bytes]:
            with f:
                while block := f.read(STORE_CHUNK_BYTES):
                    yield block

        return chunks()

    def __str__(self) -> str:
        return str(self.root)


@dataclass(frozen=True)
class S3Store(ModelStore):
    bucket: str
    prefix: str
    s3: Any

    def open(self, model_id: str, name: str) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError, ClientError

        self.check(model_id, name)
        key = "/".join(p for p in (self.prefix, model_id, name) if p)
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in {"NoSuchKey", "404", "NoSuchBucket"}:
                raise ConfigError(f"model store has no s3://{self.bucket}/{key}") from e
            raise TransportError(f"S3 get of s3://{self.bucket}/{key} failed: {code}") from e
        except BotoCoreError as e:
            raise TransportError(f"S3 get of s3://{self.bucket}/{key} failed: {e}") from e

        def chunks() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(STORE_CHUNK_BYTES)
            except (ClientError, BotoCoreError) as e:
                raise TransportError(f"S3 read of s3://{self.bucket}/{key} failed: {e}") from e
            finally:
                body.close()

        return chunks()

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def store_from_url(url: str, *, s3: Any = None) -> ModelStore:
    """``s3://bucket/prefix`` or a directory path."""
    if url.startswith("s3://"):
        bucket, prefix = parse_s3_url(url)
        if s3 is None:
            import boto3

            s3 = boto3.client("s3")
        return S3Store(bucket, prefix, s3)
    return LocalStore(Path(url))


def instance_credentials(region: str | None = None) -> Callable[[], AwsCredentials]:
    """The host's own AWS credentials (instance role), read fresh at each request."""

    def get() -> AwsCredentials:
        import boto3

        session = boto3.Session()
        creds = session.get_credentials()
        if creds is None:
            raise ConfigError("the host has no AWS credentials to hand to the enclave")
        frozen = creds.get_frozen_credentials()
        return AwsCredentials(
            frozen.access_key,
            frozen.secret_key,
            frozen.token,
            region or session.region_name or "us-east-1",
        )

    return get


class StoreService:
    """Serves a :class:`ModelStore` to enclaves (§10)."""

    def __init__(
        self,
        store: ModelStore,
        listen: Endpoint,
        *,
        credentials: Callable[[], AwsCredentials] | None = None,
    ) -> None:
        self.store = store
        self.listen = listen
        self.credentials = credentials
        self._listener = Listener(listen, self._on_connection)
        self.bound: Endpoint | None = None

    async def start(self) -> None:
        self.bound = await self._listener.start()

    async def close(self) -> None:
        await self._listener.close()

    async def _send_credentials(self, writer: asyncio.StreamWriter) -> None:
        if self.credentials is None:
            raise ConfigError("this host hands out no AWS credentials")
        loop = asyncio.get_running_loop()
        c = await loop.run_in_executor(None, self.credentials)
        writer.write(encode_frame(c.to_cbor()))
        await writer.drain()
        # Which credentials, never their secret parts.
        log.info("handed credentials %s… to the enclave", c.access_key_id[:4])

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        set_nodelay(writer)
        try:
            request = await asyncio.wait_for(_read_request(reader), _REQUEST_TIMEOUT_S)
            if request is None:
                await self._send_credentials(writer)
                return
            model_id, name = request
            sent = 0
            loop = asyncio.get_running_loop()
            chunks = await loop.run_in_executor(None, self.store.open, model_id, name)
            while (block := await loop.run_in_executor(None, next, chunks, None)) is not None:
                writer.write(encode_frame(encode_data(block)))
                sent += len(block)
                await writer.drain()  # backpressure: one chunk in flight per read
            writer.write(encode_frame(encode_end(sent)))
            await writer.drain()
            log.info("served %s/%s (%d bytes)", model_id, name, sent)
        except Error as e:
            log.warning("store request failed: %s", e)
            with contextlib.suppress(Exception):
                writer.write(encode_frame(encode_store_error(e.code, e.message)))
                await writer.drain()
        except TimeoutError:
            log.warning("store request timed out")
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str] | None:
    """A get request's (model, file), or None for a credentials request."""
    dec = FrameDecoder(max_bytes=MAX_REQUEST_BYTES)
    while (frame := dec.next_frame()) is None:
        data = await reader.read(MAX_REQUEST_BYTES)
        if not data:
            raise RemoteProtocolError("store request: connection closed before a request")
        dec.receive_data(data)
    return decode_request(frame)
